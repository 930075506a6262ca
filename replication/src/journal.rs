//! The datastore journal: where a primary's write batch and a replica's apply become durable.
//!
//! Both used to be made durable by a redb commit: redb writes every B-tree page the batch touched
//! and the pages of its own bookkeeping (about a dozen scattered 4 KiB pages even for one small
//! entry), then fdatasyncs. On the reference VM that commit took 0.5-0.65 ms, against 0.16-0.22 ms
//! for the fsync of one sequential 4 KiB append. On a replica in sync mode it sits on the
//! acknowledgement path of every write; on the primary it is the group commit's cycle.
//!
//! Now the primary's writer appends each batch's change-log entries, and a replica each batch it
//! applies, to this journal (`<datastore>.journal`: one write and one fdatasync, the DURABILITY
//! POINT of both) and commits it to redb without fsync. A *checkpoint* makes redb durable again
//! (an empty `Durability::Immediate` commit, which also makes every earlier non-durable commit
//! durable) and then empties the journal. It runs after a batch once the journal holds
//! [`CHECKPOINT_BYTES`] or is older than [`CHECKPOINT_EVERY`], and always before anything that
//! moves the position back or replaces the data (a rollback, a snapshot install): so the journal
//! only ever holds batches that extend redb's durable state, never ones a rollback removed.
//!
//! On open, the store applies the journal's batches again (`DataStore::open`): after a crash,
//! redb is back at its last durable commit and the journal holds everything written or applied
//! since. Entries redb already has are skipped after checking they are the same entries. A
//! record cut short by a crash during its append (its fsync never returned, so it was never
//! acknowledged) ends the journal. A journal that does not fit the store is not applied and not
//! deleted: it is renamed to `<datastore>.journal.rejected-<unix ms>` and the node logs an error
//! (a replica then pulls what it lacks from the primary).
//!
//! File layout. The file is reused, never truncated: it is zero-filled ahead of the records (in
//! steps of [`PREALLOCATE`]), so an append overwrites blocks the file already has and its
//! fdatasync flushes data only. An append that grows the file also changes its size, which ext4
//! commits through its own journal: measured with a 5,000-byte write + fdatasync next to a
//! running kv_bench (128 B x 64 clients), p50 370-460 us growing the file against 190-240 us
//! overwriting (idle: 195 against 140 us). So emptying the journal starts a new *cycle* instead
//! of truncating: a 24-byte header at offset 0 (`KEELJNL2`, a generation (u64 LE), the CRC-32
//! of both (u32 LE), 4 zero bytes), then records. A record is `len: u32 LE`, `crc: u32 LE` over
//! the cycle's generation (u64 LE) and the payload, then `payload` = the codec encoding of
//! `(source_epoch, entries)`: what `DataStore::apply` was given, or the entries of a primary batch
//! (their before-images carry the position only: a replay takes the bytes from the store). The
//! journal ends at the first record that is zero, cut short or does not check against this
//! cycle's generation, so the records of earlier cycles still in the file after it are never
//! read. A file without the header is a journal of the previous release (records from offset 0,
//! CRC over the payload): it is read the same way and replaced by a new cycle after the replay.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::codec::{decode, encode};
use crate::crc::{crc32, crc32_update};
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
/// The journal file is zero-filled ahead of the records in steps of this size, so that an append
/// overwrites blocks the file already has: its fdatasync then flushes data only, with no change
/// of the file's size or block map to commit to the file system's own journal.
const PREALLOCATE: u64 = 1 << 20;
/// First bytes of a journal file in this layout (older journals start with a record).
const MAGIC: &[u8; 8] = b"KEELJNL2";
/// Header of a journal cycle: magic, generation (u64 LE), CRC-32 of the two (u32 LE), 4 zeros.
const HEADER_LEN: u64 = 24;

pub(crate) struct Journal {
    path: PathBuf,
    /// Opened (created, with its header) on the first append.
    file: Option<File>,
    /// Generation of the current cycle (the header's); every record's CRC covers it.
    generation: u64,
    /// Bytes of whole records in the current cycle (after the header).
    len: u64,
    /// The file is zero-filled (or written) up to here.
    allocated: u64,
    /// When the oldest batch in the journal was appended.
    since: Option<Instant>,
}

/// What [`Journal::read`] found.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// Bytes of the whole records found; `None` when there is no journal file.
    pub len: Option<u64>,
    /// Generation of the cycle found (0: an older journal without a header).
    pub generation: u64,
    pub batches: Vec<(u64, Vec<Entry>)>,
    /// Older journals only (records up to the end of the file): bytes after the last whole
    /// record, a record cut short by a crash. In the current layout the bytes after the last
    /// record are zeros or records of an earlier cycle, and such a record is not told apart.
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
            generation: 0,
            len: 0,
            allocated: 0,
            since: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in the journal (whole records of the current cycle).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// A checkpoint is due (see the module doc).
    pub fn due(&self) -> bool {
        self.len >= CHECKPOINT_BYTES || self.since.is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY)
    }

    /// Every whole record of the journal file's current cycle, if there is a file.
    pub fn read(path: &Path) -> std::io::Result<Contents> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
            Err(e) => return Err(e),
        };
        let mut out = Contents {
            len: Some(0),
            ..Contents::default()
        };
        let (generation, mut at) = if bytes.starts_with(MAGIC) {
            match parse_header(&bytes) {
                Some(g) => (Some(g), HEADER_LEN as usize),
                // A header cut short or corrupt: a crash while a new cycle began, after the
                // checkpoint that emptied the journal. Nothing to apply.
                None => return Ok(out),
            }
        } else {
            (None, 0)
        };
        out.generation = generation.unwrap_or(0);
        let start = at;
        while let Some(head) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_RECORD {
                break;
            }
            let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
                break;
            };
            if record_crc(generation, payload) != crc {
                break;
            }
            match decode::<(u64, Vec<Entry>)>(payload) {
                Ok(batch) => out.batches.push(batch),
                Err(_) => break,
            }
            at += 8 + len as usize;
        }
        out.len = Some((at - start) as u64);
        if generation.is_none() {
            out.torn_bytes = (bytes.len() - at) as u64;
        }
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
        self.file()?; // open (and start a cycle), so that `self.generation` is set
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&record_crc(Some(self.generation), &payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let before = self.len;
        let at = HEADER_LEN + before;
        let end = at + record.len() as u64;
        let result = self.preallocate(end).and_then(|()| {
            let file = self.file.as_ref().expect("opened above");
            file.write_all_at(&record, at).and_then(|()| file.sync_data())
        });
        if let Err(e) = result {
            // Leave no whole record behind for a replay (its bytes may be partly written).
            let _ = self.invalidate(at);
            return Err(e);
        }
        self.len = before + record.len() as u64;
        self.since.get_or_insert_with(Instant::now);
        Ok(before)
    }

    /// Cut the journal back to `len` bytes of records (0 after a checkpoint) and fdatasync that.
    /// Emptying starts a new cycle (a new header); cutting a record off overwrites its start.
    pub fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        self.file()?;
        if len == 0 {
            self.new_cycle()?;
        } else {
            self.invalidate(HEADER_LEN + len)?;
        }
        self.len = len;
        if len == 0 {
            self.since = None;
        }
        Ok(())
    }

    /// The journal file, opened on first use. A missing file, or one without a current cycle
    /// (an older journal, an empty file), gets a new cycle: a header, then zeros.
    fn file(&mut self) -> std::io::Result<&File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            if !existed {
                // The new file's name must survive a crash, or its records would vanish with it.
                if let Some(dir) = self.path.parent() {
                    File::open(dir)?.sync_all()?;
                }
            }
            self.allocated = f.metadata()?.len();
            let mut head = [0u8; HEADER_LEN as usize];
            let n = f.read_at(&mut head, 0)?;
            let found = (n == head.len() && head.starts_with(MAGIC))
                .then(|| parse_header(&head))
                .flatten();
            self.file = Some(f);
            match found {
                // Its records were learnt by `found` (at open, before the replay): append after.
                Some(g) if self.len > 0 => self.generation = g,
                // Otherwise start over: appending into a cycle whose records this handle does not
                // know could leave older records of the same cycle readable after the new ones.
                _ => {
                    self.len = 0;
                    self.new_cycle()?;
                }
            }
        }
        Ok(self.file.as_ref().expect("opened above"))
    }

    /// Start a new cycle: a header with a new generation at the start of the file, fdatasynced.
    /// Records of earlier cycles after it no longer count: their CRCs cover their generation.
    fn new_cycle(&mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.generation = now.max(self.generation + 1);
        let mut head = Vec::with_capacity(HEADER_LEN as usize);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&self.generation.to_le_bytes());
        head.extend_from_slice(&crc32(&head).to_le_bytes());
        head.extend_from_slice(&[0u8; 4]);
        self.preallocate(HEADER_LEN)?;
        let file = self.file.as_ref().expect("opened by the caller");
        file.write_all_at(&head, 0)?;
        file.sync_data()
    }

    /// Zero-fill the file up to at least `end` (in steps of [`PREALLOCATE`]), without syncing:
    /// the fdatasync of the write that needs it follows.
    fn preallocate(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.div_ceil(PREALLOCATE) * PREALLOCATE;
        let file = self.file.as_ref().expect("opened by the caller");
        let zeros = vec![0u8; (target - self.allocated).min(PREALLOCATE) as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.allocated = target;
        Ok(())
    }

    /// Overwrite the record header at `at` with zeros and fdatasync: the journal ends there.
    fn invalidate(&mut self, at: u64) -> std::io::Result<()> {
        let file = self.file.as_ref().expect("opened by the caller");
        file.write_all_at(&[0u8; 8], at)?;
        file.sync_data()
    }

    /// Learn the journal found at open (before it is applied again): its records' length.
    pub fn found(&mut self, contents: &Contents) {
        self.len = contents.len.unwrap_or(0);
        if self.len > 0 {
            self.since = Some(Instant::now());
        }
        // An older journal (no header) is not appended to: opening it starts a new cycle.
    }

    /// Move a journal that does not fit the store aside (kept, never deleted); returns where.
    pub fn reject(&mut self) -> std::io::Result<PathBuf> {
        self.file = None;
        let mut to = self.path.as_os_str().to_owned();
        to.push(format!(".rejected-{}", crate::store::now_ms()));
        let to = PathBuf::from(to);
        std::fs::rename(&self.path, &to)?;
        self.len = 0;
        self.allocated = 0;
        self.since = None;
        Ok(to)
    }
}

/// A cycle header's generation, if its CRC holds.
fn parse_header(head: &[u8]) -> Option<u64> {
    let head = head.get(..HEADER_LEN as usize)?;
    let crc = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    (crc32(&head[..16]) == crc).then(|| u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")))
}

/// A record's CRC: over its cycle's generation and its payload (older journals: the payload).
fn record_crc(generation: Option<u64>, payload: &[u8]) -> u32 {
    match generation {
        Some(g) => crc32_update(crc32_update(!0, &g.to_le_bytes()), payload) ^ !0,
        None => crc32(payload),
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Overwrite `n` bytes at `at` in the file with `byte`.
    pub(crate) fn scribble(path: &Path, at: u64, n: usize, byte: u8) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![byte; n], at).unwrap();
    }

    impl Journal {
        /// Where the current cycle's records end in the file.
        pub(crate) fn end_offset(&self) -> u64 {
            HEADER_LEN + self.len
        }
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
        assert_eq!(
            std::fs::metadata(j.path()).unwrap().len(),
            PREALLOCATE,
            "the file is zero-filled ahead of the records"
        );
        let got = Journal::read(j.path()).unwrap();
        assert_eq!(got.len, Some(j.len()));
        assert_eq!(got.batches.len(), 2);
        assert_eq!(got.batches[0].0, 1);
        assert_eq!(got.batches[0].1.len(), 2);
        assert_eq!(got.batches[0].1[1].value.as_deref(), Some(&[7u8; 5000][..]));
        assert_eq!(got.batches[1].1[0].key, "c");

        // A crash in the middle of the second append: its last bytes never reached the file
        // (they are still the zeros of the preallocation).
        let end = j.end_offset();
        scribble(j.path(), end - 3, 3, 0);
        let got = Journal::read(j.path()).unwrap();
        assert_eq!(got.batches.len(), 1, "the cut record is not returned");
        assert_eq!(got.len, Some(mid));

        // A flipped bit in a record's payload ends the journal there too.
        let mut j = Journal::new(&store);
        j.truncate_to(0).unwrap();
        j.append(1, &a).unwrap();
        let mid = j.append(1, &b).unwrap();
        scribble(j.path(), HEADER_LEN + mid + 12, 1, 0x10);
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);

        // Cutting the last record off, then emptying.
        let mut j = Journal::new(&store);
        j.append(1, &a).unwrap();
        let mid = j.append(1, &b).unwrap();
        j.truncate_to(mid).unwrap();
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);
        j.truncate_to(0).unwrap();
        assert!(j.is_empty() && !j.due());
        assert!(Journal::read(j.path()).unwrap().batches.is_empty());
        // Appending after emptying starts at the beginning again.
        assert_eq!(j.append(1, &b).unwrap(), 0);
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);
    }

    #[test]
    fn records_of_an_earlier_cycle_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data.redb");
        let mut j = Journal::new(&store);
        let one = vec![entry(1, "a", b"1")];
        // Three equal records, then a checkpoint (new cycle) and one record of the same size: the
        // second and third records of the first cycle are still in the file, right after it.
        for _ in 0..3 {
            j.append(1, &one).unwrap();
        }
        j.truncate_to(0).unwrap();
        j.append(1, &one).unwrap();
        let got = Journal::read(j.path()).unwrap();
        assert_eq!(got.batches.len(), 1, "only the current cycle's record");
        assert_eq!(got.len, Some(j.len()));
        // An emptied journal, nothing appended since: no records at all.
        j.truncate_to(0).unwrap();
        assert!(Journal::read(j.path()).unwrap().batches.is_empty());
        // A corrupt header (a crash while a cycle began) means an empty journal too.
        j.append(1, &one).unwrap();
        scribble(j.path(), 9, 1, 0xff);
        let got = Journal::read(j.path()).unwrap();
        assert!(got.batches.is_empty() && got.len == Some(0));
        // A new handle never appends into a cycle it did not learn: it starts a new one.
        let mut j = Journal::new(&store);
        j.append(1, &one).unwrap();
        assert_eq!(Journal::read(j.path()).unwrap().batches.len(), 1);
    }

    #[test]
    fn an_older_journal_without_a_header_is_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data.redb");
        let path = Journal::path_for(&store);
        // The previous layout: records from the start of the file, CRC over the payload only.
        let mut bytes = Vec::new();
        for seq in 1..=2 {
            let payload = encode(&(1u64, vec![entry(seq, "k", b"v")]));
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes.extend_from_slice(&[1, 2, 3]); // a torn third record
        std::fs::write(&path, &bytes).unwrap();
        let got = Journal::read(&path).unwrap();
        assert_eq!((got.batches.len(), got.generation, got.torn_bytes), (2, 0, 3));
        let mut j = Journal::new(&store);
        j.found(&got);
        assert_eq!(j.len(), bytes.len() as u64 - 3);
        // The checkpoint after the replay starts a cycle in the new layout.
        j.truncate_to(0).unwrap();
        let got = Journal::read(&path).unwrap();
        assert!(got.batches.is_empty() && got.generation > 0);
        j.append(1, &[entry(3, "k", b"v")]).unwrap();
        assert_eq!(Journal::read(&path).unwrap().batches.len(), 1);
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
