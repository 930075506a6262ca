//! The replica journal: where a replica's apply becomes durable.
//!
//! A replica used to make each pulled batch durable with a redb commit: redb writes every B-tree
//! page the batch touched and the pages of its own bookkeeping (about a dozen scattered 4 KiB
//! pages even for one small entry), then fdatasyncs. On the reference VM that commit took
//! 0.5-0.65 ms, against 0.16-0.22 ms for the fsync of one sequential 4 KiB append, and in sync
//! mode it sits on the acknowledgement path of every write.
//!
//! Now a replica appends each batch it applies to this journal (`<datastore>.journal`: one
//! sequential write and one fdatasync, the DURABILITY POINT of a replica apply) and commits it to
//! redb without fsync. A *checkpoint* makes redb durable again (an empty `Durability::Immediate`
//! commit, which also makes every earlier non-durable commit durable) and then empties the
//! journal. It runs after an apply once the journal holds [`CHECKPOINT_BYTES`] or is older than
//! [`CHECKPOINT_EVERY`], and always before anything that moves the position back or replaces the
//! data (a rollback, a snapshot install): so the journal only ever holds batches that extend
//! redb's durable state, never ones a rollback removed.
//!
//! On open, the store applies the journal's batches again (`DataStore::open`): after a crash,
//! redb is back at its last durable commit and the journal holds everything applied since. Entries
//! redb already has are skipped after checking they are the same entries. A record cut short by a
//! crash during its append (its fsync never returned, so it was never acknowledged) ends the
//! journal. A journal that does not fit the store is not applied and not deleted: it is renamed to
//! `<datastore>.journal.rejected-<unix ms>` and the node logs an error (the replica then pulls
//! what it lacks from the primary).
//!
//! Record format: `len: u32 LE`, `crc32(payload): u32 LE`, `payload` = the codec encoding of
//! `(source_epoch, entries)`, exactly what `DataStore::apply` was given.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::codec::{decode, encode};
use crate::Entry;

/// Batches whose keys and values (before-images included) add up to more than this are not
/// journaled: their redb commit is made durable directly, as before the journal. Their bytes would
/// otherwise be written twice (journal, then checkpoint), and their fsync is shared by many bytes
/// anyway. kv_bench, 16 KiB values x 16 clients (batches of about six values), alternated 5 s runs:
/// journaling every batch raised p99 from 12-15 ms to 30-49 ms (the checkpoints' bursts of writes).
pub(crate) const JOURNAL_BATCH_MAX: usize = 64 << 10;
/// A checkpoint runs once the journal holds this many bytes...
pub(crate) const CHECKPOINT_BYTES: u64 = 4 << 20;
/// ... or once its oldest batch is this old. Bounds how much redb holds non-durably (its freed
/// pages are reused only after a durable commit), how much one checkpoint writes at once, and
/// how much a restart applies again.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Larger records are garbage (a pull carries a few MiB at most).
const MAX_RECORD: u32 = 1 << 30;

pub(crate) struct Journal {
    path: PathBuf,
    /// Opened (created) on the first append.
    file: Option<File>,
    len: u64,
    /// When the oldest batch in the journal was appended.
    since: Option<Instant>,
}

/// What [`Journal::read`] found.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// The file's length; `None` when there is no journal file.
    pub len: Option<u64>,
    pub batches: Vec<(u64, Vec<Entry>)>,
    /// Bytes after the last whole record (a record cut short by a crash).
    pub torn_bytes: u64,
}

impl Journal {
    pub fn path_for(store: &Path) -> PathBuf {
        let mut p = store.as_os_str().to_owned();
        p.push(".journal");
        PathBuf::from(p)
    }

    /// The journal of the datastore at `store`; nothing is created until the first append.
    pub fn new(store: &Path) -> Journal {
        Journal {
            path: Journal::path_for(store),
            file: None,
            len: 0,
            since: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in the journal (whole records).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// A checkpoint is due (see the module doc).
    pub fn due(&self) -> bool {
        self.len >= CHECKPOINT_BYTES || self.since.is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Every whole record of the journal file, if there is one.
    pub fn read(path: &Path) -> std::io::Result<Contents> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
            Err(e) => return Err(e),
        };
        let mut out = Contents {
            len: Some(bytes.len() as u64),
            ..Contents::default()
        };
        let mut at = 0usize;
        while let Some(header) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            if len > MAX_RECORD {
                break;
            }
            let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
                break;
            };
            if crc32(payload) != crc {
                break;
            }
            match decode::<(u64, Vec<Entry>)>(payload) {
                Ok(batch) => out.batches.push(batch),
                Err(_) => break,
            }
            at += 8 + len as usize;
        }
        out.torn_bytes = (bytes.len() - at) as u64;
        Ok(out)
    }

    /// Append one applied batch and fdatasync it. Returns the journal's length before, for
    /// [`Journal::truncate_to`] if the redb commit that follows fails.
    pub fn append(&mut self, source_epoch: u64, entries: &[Entry]) -> std::io::Result<u64> {
        let payload = encode(&(source_epoch, entries));
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| {
                std::io::Error::other(format!("a batch of {} bytes is too large to journal", payload.len()))
            })?;
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        self.file()?; // open, so that `self.len` is the file's length
        let before = self.len;
        let file = self.file.as_mut().expect("opened above");
        let result = file.write_all(&record).and_then(|()| file.sync_data());
        if let Err(e) = result {
            // Leave no partial record behind for the next append to follow.
            let _ = file.set_len(before);
            return Err(e);
        }
        self.len = before + record.len() as u64;
        self.since.get_or_insert_with(Instant::now);
        Ok(before)
    }

    /// Cut the journal back to `len` bytes (0 after a checkpoint) and fdatasync that.
    pub fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        let file = self.file()?;
        file.set_len(len)?;
        file.sync_data()?;
        self.len = len;
        if len == 0 {
            self.since = None;
        }
        Ok(())
    }

    /// The journal file, opened (created) for appending on first use; its length is learnt then.
    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Learn the length of a journal file found at open (before it is applied again).
    pub fn found(&mut self, len: u64) {
        self.len = len;
        if len > 0 {
            self.since = Some(Instant::now());
        }
    }

    /// Move a journal that does not fit the store aside (kept, never deleted); returns where.
    pub fn reject(&mut self) -> std::io::Result<PathBuf> {
        self.file = None;
        let mut to = self.path.as_os_str().to_owned();
        to.push(format!(".rejected-{}", crate::store::now_ms()));
        let to = PathBuf::from(to);
        std::fs::rename(&self.path, &to)?;
        self.len = 0;
        self.since = None;
        Ok(to)
    }
}

/// CRC-32 (IEEE 802.3, the zlib/PNG one) of `data`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Position;

    fn entry(seq: u64, key: &str, value: &[u8]) -> Entry {
        Entry {
            pos: Position::new(1, seq),
            key: key.into(),
            value: Some(value.to_vec()),
            prev: None,
        }
    }

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data.redb");
        let mut j = Journal::new(&store);
        assert!(j.is_empty());
        assert!(!j.path().exists(), "nothing is created before the first append");
        let a = vec![entry(1, "a", b"1"), entry(2, "b", &[7u8; 5000])];
        let b = vec![entry(3, "c", b"3")];
        assert_eq!(j.append(1, &a).unwrap(), 0);
        let mid = j.append(1, &b).unwrap();
        assert!(mid > 0 && !j.is_empty());
        let got = Journal::read(j.path()).unwrap();
        assert_eq!(got.torn_bytes, 0);
        assert_eq!(got.batches.len(), 2);
        assert_eq!(got.batches[0].0, 1);
        assert_eq!(got.batches[0].1.len(), 2);
        assert_eq!(got.batches[0].1[1].value.as_deref(), Some(&[7u8; 5000][..]));
        assert_eq!(got.batches[1].1[0].key, "c");

        // A crash in the middle of the second append: only part of it reached the file.
        let full = std::fs::metadata(j.path()).unwrap().len();
        let f = OpenOptions::new().write(true).open(j.path()).unwrap();
        f.set_len(full - 3).unwrap();
        let got = Journal::read(j.path()).unwrap();
        assert_eq!(got.batches.len(), 1, "the cut record is not returned");
        assert_eq!(got.torn_bytes, full - 3 - mid);

        // A flipped bit in a record's payload ends the journal there too.
        f.set_len(full).unwrap();
        let mut bytes = std::fs::read(j.path()).unwrap();
        bytes[mid as usize + 12] ^= 0x10;
        std::fs::write(j.path(), &bytes).unwrap();
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);

        // Truncation: back to the first record, then empty.
        let mut j = Journal::new(&store);
        j.found(full);
        j.truncate_to(mid).unwrap();
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);
        j.truncate_to(0).unwrap();
        assert!(j.is_empty() && !j.due());
        assert!(Journal::read(j.path()).unwrap().batches.is_empty());
        // Appending after a truncation starts at the beginning again.
        assert_eq!(j.append(1, &b).unwrap(), 0);
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);
    }

    #[test]
    fn a_rejected_journal_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data.redb");
        let mut j = Journal::new(&store);
        j.append(1, &[entry(1, "a", b"1")]).unwrap();
        let aside = j.reject().unwrap();
        assert!(!j.path().exists());
        assert!(j.is_empty());
        assert_eq!(Journal::read(&aside).unwrap().batches.len(), 1);
    }
}
