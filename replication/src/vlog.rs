//! Datastore format 3: large values in an append-only values log, next to the redb file.
//!
//! In format 2 a large value is written once, into redb's `values` table in leaf-sized chunks.
//! That still costs redb's full write path for every byte: leaves built through a cursor, a
//! checksum per page, the write buffer, and a `pwrite` per dirty page. A profile of the 16 KiB
//! write benchmark put about half of each node's CPU per write there. In format 3 a value longer
//! than [`crate::values::INLINE_MAX`] is appended once to a segment file of
//! `<datastore>.values/` (its bytes copied once, sequentially, into the page cache), and redb
//! keeps only a 12-byte location under `(seq, LOC_CHUNK)` in `values`. Everything that names a
//! value by its seq (the `kv` record, log entries, before-images) is unchanged, and so are the
//! lifetime rules of `values.rs`: a location is removed (and its bytes counted dead) exactly when
//! format 2 would have removed the chunks.
//!
//! **Segments.** `NNNNNNNNNN.seg`: an 8-byte magic, then records `crc: u32 LE, len: u32 LE,
//! seq: u64 LE, value` (the CRC-32C covers `len`, `seq` and the value). A node appends to one
//! active segment, starts a new one at [`SEGMENT_MAX`] and at every open (so a torn tail after a
//! crash is never appended to), and never writes to a sealed one again. The `value_segments`
//! table holds each segment's live bytes (records that a location names), updated in the same
//! transaction as the locations: so after a crash it agrees with the locations redb has.
//!
//! **Durability.** A transaction's records are written (`pwritev`, cut at 16 KiB file offsets as
//! `backend.rs` does) before its commit, so a reader that sees a location can read its bytes.
//! They are fdatasynced by [`ValuesLog::sync`], which the datastore file's backend calls at the
//! start of every `sync_data`: every durable redb commit (and so every checkpoint) has the values
//! it names on disk before its own pages and header. A non-durable commit's values are covered by
//! the datastore journal, like its pages (`journal.rs`): a restart applies the journal again,
//! which appends them again. Segment files that `value_segments` does not know (written by a
//! transaction that never became durable) are removed at open.
//!
//! **Compaction.** After a batch, when a sealed segment's live bytes are under half its size, its
//! live records are copied to the active segment ([`COMPACT_STEP`] bytes per transaction, so no
//! write waits long) and their locations moved; the segment is removed after the durable commit
//! that moved its last record. A segment with no live bytes is removed without copying.
//!
//! **Readers.** A reader pins the log ([`ValuesLog::pin`]) before it begins its read transaction:
//! a segment retired after that is unlinked only once every older pin is gone, so a long
//! snapshot stream still reads the locations its transaction sees. Segment files are opened when
//! read and at most [`OPEN_MAX`] stay open.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::backend::write_runs_at;
use crate::crc::crc32c;
use crate::store::Ctx;
use crate::DataError;

/// The chunk index under which `values` holds a format-3 value's location (chunks of format 2
/// count from 0, so both kinds read through the same range of keys).
pub(crate) const LOC_CHUNK: u32 = u32::MAX;
/// Live bytes of each segment (records and their headers that a location names).
pub(crate) const SEGMENTS: TableDefinition<u32, u64> = TableDefinition::new("value_segments");

/// A segment is sealed once it holds this many bytes.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;
/// Most live bytes one compaction step copies (one transaction).
const COMPACT_STEP: u64 = 4 << 20;
/// What a segment read at a time during compaction holds at most (besides a larger record).
const SCAN_WINDOW: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"KEELVAL1";
/// Record header: crc, len, seq.
pub(crate) const HEADER: usize = 16;

/// Where a value's record is: its segment and the offset of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u32,
    pub offset: u64,
}

impl Loc {
    pub fn encode(self) -> [u8; 12] {
        let mut b = [0; 12];
        b[..4].copy_from_slice(&self.segment.to_le_bytes());
        b[4..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    pub fn decode(seq: u64, b: &[u8]) -> Result<Loc, DataError> {
        let b: [u8; 12] = b.try_into().map_err(|_| {
            DataError::Corrupt(format!("location of value {seq}: {} bytes, a location has 12", b.len()))
        })?;
        Ok(Loc {
            segment: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(b[4..].try_into().expect("8 bytes")),
        })
    }
}

/// Bytes a record of a `len`-byte value takes in its segment.
pub(crate) fn record_len(len: u64) -> u64 {
    HEADER as u64 + len
}

fn header(seq: u64, value: &[u8]) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
    h[8..].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::finish(crc32c::update(crc32c::update(!0, &h[4..]), value));
    h[..4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The active segment: where the next record goes.
#[derive(Debug)]
struct Active {
    /// `None` until the first record after an open (or after a write error sealed the last one).
    file: Option<(u32, Arc<File>)>,
    /// Bytes in the active segment (its magic included).
    len: u64,
    next_id: u32,
}

#[derive(Debug, Default)]
struct Pins {
    /// Bumped by every retire.
    generation: u64,
    /// Pins alive, by the generation they were taken at.
    alive: BTreeMap<u64, usize>,
    /// Segments retired (no location names them in any commit from then on), with the generation
    /// at retirement: unlinked once no pin of that generation or older is alive.
    retired: Vec<(u64, u32)>,
}

/// The values log of one datastore (see the module doc).
#[derive(Debug)]
pub(crate) struct ValuesLog {
    dir: PathBuf,
    segment_max: u64,
    active: Mutex<Active>,
    /// Every segment file that may still be read, and the ones open now.
    files: Mutex<Files>,
    /// Segments written since the last [`ValuesLog::sync`].
    dirty: Mutex<Vec<Arc<File>>>,
    any_dirty: AtomicBool,
    /// A segment was created since the last sync: the directory needs one too.
    new_segment: AtomicBool,
    pins: Mutex<Pins>,
    /// Segments compaction found it could not empty (a live count the records do not explain):
    /// left alone until the next open, with an error logged once.
    stuck: Mutex<Vec<u32>>,
    /// The segment being compacted and the offset its next step starts at.
    compacting: Mutex<Option<(u32, u64)>>,
}

/// Segment files: which exist, and an open handle for the most recently used of them (at most
/// [`OPEN_MAX`]: a large store has thousands of segments, and each open file counts against the
/// process's descriptor limit). A handle a reader holds stays valid when it leaves the cache.
#[derive(Debug, Default)]
struct Files {
    known: std::collections::BTreeSet<u32>,
    /// id → (handle, last use).
    open: BTreeMap<u32, (Arc<File>, u64)>,
    tick: u64,
}

/// Most segment files kept open for reads (the active one is held by the writer besides).
const OPEN_MAX: usize = 64;

impl Files {
    fn cached(&mut self, id: u32) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(&id).map(|(f, used)| {
            *used = tick;
            f.clone()
        })
    }

    fn insert(&mut self, id: u32, file: Arc<File>) {
        self.tick += 1;
        self.open.insert(id, (file, self.tick));
        while self.open.len() > OPEN_MAX {
            let Some(oldest) = self.open.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id) else {
                break;
            };
            self.open.remove(&oldest);
        }
    }

    fn forget(&mut self, id: u32) {
        self.known.remove(&id);
        self.open.remove(&id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_name(id: u32) -> String {
    format!("{id:010}.seg")
}

impl ValuesLog {
    /// The values log of the datastore at `store` (`<store>.values/`), without touching the disk.
    pub fn path_for(store: &Path) -> PathBuf {
        let mut p = store.as_os_str().to_owned();
        p.push(".values");
        PathBuf::from(p)
    }

    /// List the segments found at `dir` (none if it does not exist; files are opened when read).
    /// Which of them are live is decided later by [`ValuesLog::drop_unknown`], once redb is open.
    pub fn open(dir: PathBuf, segment_max: u64) -> io::Result<ValuesLog> {
        let mut files = Files::default();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(id) = name
                        .to_str()
                        .and_then(|n| n.strip_suffix(".seg"))
                        .and_then(|n| n.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    files.known.insert(id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let next_id = files.known.iter().next_back().map_or(1, |id| id + 1);
        Ok(ValuesLog {
            dir,
            segment_max,
            active: Mutex::new(Active {
                file: None,
                len: 0,
                next_id,
            }),
            files: Mutex::new(files),
            dirty: Mutex::new(Vec::new()),
            any_dirty: AtomicBool::new(false),
            new_segment: AtomicBool::new(false),
            pins: Mutex::new(Pins::default()),
            stuck: Mutex::new(Vec::new()),
            compacting: Mutex::new(None),
        })
    }

    /// Remove the segment files that `live` (the `value_segments` table) does not name: written by
    /// transactions that never became durable, or left by a removed datastore file. Call at open,
    /// before any reader.
    pub fn drop_unknown(&self, live: &BTreeMap<u32, u64>) -> io::Result<usize> {
        let mut files = lock(&self.files);
        let unknown: Vec<u32> = files
            .known
            .iter()
            .filter(|id| !live.contains_key(id))
            .copied()
            .collect();
        for id in &unknown {
            files.forget(*id);
            remove_file(&self.dir.join(segment_name(*id)))?;
        }
        Ok(unknown.len())
    }

    /// A handle on segment `segment`, if it exists: from the cache, else opened now.
    fn file(&self, segment: u32) -> Option<Arc<File>> {
        {
            let mut files = lock(&self.files);
            if !files.known.contains(&segment) {
                return None;
            }
            if let Some(f) = files.cached(segment) {
                return Some(f);
            }
        }
        // Opened outside the lock. It cannot be unlinked meanwhile: only a retired segment is,
        // and only once no reader that may name it is left (the module doc).
        let file = Arc::new(File::open(self.dir.join(segment_name(segment))).ok()?);
        lock(&self.files).insert(segment, file.clone());
        Some(file)
    }

    /// Read the value of write `seq`, `len` bytes, at `loc`.
    pub fn read(&self, seq: u64, len: u64, loc: Loc) -> Result<Vec<u8>, DataError> {
        let corrupt =
            |m: String| DataError::Corrupt(format!("value of write {seq} in values segment {}: {m}", loc.segment));
        let file = self
            .file(loc.segment)
            .ok_or_else(|| corrupt("the segment file is missing".into()))?;
        let mut head = [0u8; HEADER];
        let mut value = vec![0u8; len as usize];
        read_exact_at2(&file, &mut head, &mut value, loc.offset)
            .map_err(|e| DataError::Storage(format!("read values segment {}: {e}", loc.segment)))?;
        check_record(seq, &head, &value).map_err(corrupt)?;
        Ok(value)
    }

    /// The value length the record at `loc` says it has (checks only the header's place).
    #[cfg(test)]
    pub fn record_value_len(&self, loc: Loc) -> Result<u64, DataError> {
        let file = self
            .file(loc.segment)
            .ok_or_else(|| DataError::Corrupt("segment missing".into()))?;
        let mut head = [0u8; HEADER];
        file.read_exact_at(&mut head, loc.offset).ctx("read record header")?;
        Ok(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as u64)
    }

    /// Start the values-log part of a write transaction: call inside the redb write transaction
    /// (redb runs one at a time, so only one `VlogTx` is ever open) and [`VlogTx::finish`] it
    /// before the commit.
    pub fn begin(&self) -> VlogTx<'_> {
        VlogTx {
            log: self,
            active: lock(&self.active),
            buf: Vec::new(),
            delta: BTreeMap::new(),
        }
    }

    /// Make every record written so far durable (fdatasync of the segments written since the last
    /// call). The datastore file's backend calls this first in each `sync_data`.
    pub fn sync(&self) -> io::Result<()> {
        if !self.any_dirty.swap(false, Ordering::AcqRel) && !self.new_segment.load(Ordering::Acquire) {
            return Ok(());
        }
        let files = std::mem::take(&mut *lock(&self.dirty));
        for (i, f) in files.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                // Still dirty: the next sync tries again (redb latches the error meanwhile).
                lock(&self.dirty).extend(files[i..].iter().cloned());
                self.any_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        if self.new_segment.swap(false, Ordering::AcqRel) {
            // A new segment's directory entry must be durable with its bytes.
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.new_segment.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    fn mark_dirty(&self, file: &Arc<File>) {
        let mut dirty = lock(&self.dirty);
        if !dirty.iter().any(|f| Arc::ptr_eq(f, file)) {
            dirty.push(file.clone());
        }
        self.any_dirty.store(true, Ordering::Release);
    }

    /// Pin the segments a read transaction begun after this call may name (the module doc).
    pub fn pin(&self) -> Pin<'_> {
        let mut pins = lock(&self.pins);
        let generation = pins.generation;
        *pins.alive.entry(generation).or_default() += 1;
        Pin { log: self, generation }
    }

    /// `segment` is named by no location in any commit from now on (call after the durable commit
    /// that emptied it): unlink it once every reader that may have begun before is done.
    pub fn retire(&self, segment: u32) {
        let mut pins = lock(&self.pins);
        let generation = pins.generation;
        pins.retired.push((generation, segment));
        pins.generation += 1;
        self.unlink_released(&mut pins);
    }

    fn unlink_released(&self, pins: &mut Pins) {
        let oldest = pins.alive.keys().next().copied().unwrap_or(u64::MAX);
        let (gone, keep): (Vec<_>, Vec<_>) = pins.retired.drain(..).partition(|(g, _)| *g < oldest);
        pins.retired = keep;
        for (_, id) in gone {
            lock(&self.files).forget(id);
            let path = self.dir.join(segment_name(id));
            if let Err(e) = remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a compacted values segment");
            }
        }
    }

    /// Segments (with their sizes) that compaction may take: sealed, not stuck.
    fn sealed(&self) -> Vec<(u32, u64)> {
        let active = lock(&self.active).file.as_ref().map(|(id, _)| *id);
        let stuck = lock(&self.stuck).clone();
        let retired: Vec<u32> = lock(&self.pins).retired.iter().map(|(_, id)| *id).collect();
        let ids: Vec<u32> = lock(&self.files)
            .known
            .iter()
            .filter(|id| Some(**id) != active && !stuck.contains(id) && !retired.contains(id))
            .copied()
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let m = std::fs::metadata(self.dir.join(segment_name(id))).ok()?;
                Some((id, m.len()))
            })
            .collect()
    }
}

/// A reader's pin (see [`ValuesLog::pin`]).
pub(crate) struct Pin<'a> {
    log: &'a ValuesLog,
    generation: u64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = lock(&self.log.pins);
        if let Some(n) = pins.alive.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                pins.alive.remove(&self.generation);
            }
        }
        if !pins.retired.is_empty() {
            self.log.unlink_released(&mut pins);
        }
    }
}

/// An owned pin, for a reader that outlives the borrow (a snapshot stream).
pub(crate) struct OwnedPin {
    log: Arc<crate::store::Inner>,
    generation: u64,
}

impl OwnedPin {
    pub fn new(inner: Arc<crate::store::Inner>) -> OwnedPin {
        let pin = inner.vlog.pin();
        let generation = pin.generation;
        std::mem::forget(pin);
        OwnedPin { log: inner, generation }
    }
}

impl Drop for OwnedPin {
    fn drop(&mut self) {
        drop(Pin {
            log: &self.log.vlog,
            generation: self.generation,
        });
    }
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Read `head` then `value` from `offset` on (one `preadv`, again for what a short read left).
fn read_exact_at2(file: &File, head: &mut [u8], value: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let iov = [
        libc::iovec {
            iov_base: head.as_mut_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: value.as_mut_ptr() as *mut libc::c_void,
            iov_len: value.len(),
        },
    ];
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("file offset out of range"))?;
    // SAFETY: both iovecs point into buffers borrowed mutably for the call; the descriptor
    // belongs to `file`, which is alive.
    let n = unsafe { libc::preadv(file.as_raw_fd(), iov.as_ptr(), 2, off) };
    // A failed or short read: the rest one buffer at a time (which reports any error).
    let n = usize::try_from(n).unwrap_or(0);
    let h = head.len();
    if n < h {
        file.read_exact_at(&mut head[n..], offset + n as u64)?;
    }
    let done = n.saturating_sub(h).min(value.len());
    file.read_exact_at(&mut value[done..], offset + (h + done) as u64)
}

fn check_record(seq: u64, head: &[u8; HEADER], value: &[u8]) -> Result<(), String> {
    let crc = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let at = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if at != seq || len as usize != value.len() {
        return Err(format!("the record there is of write {at}, {len} bytes"));
    }
    if crc32c::finish(crc32c::update(crc32c::update(!0, &head[4..]), value)) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// The values-log part of one write transaction: records to append, live-byte changes.
pub(crate) struct VlogTx<'a> {
    log: &'a ValuesLog,
    active: MutexGuard<'a, Active>,
    /// Records not yet written, to go at `active.len` in the active segment.
    buf: Vec<u8>,
    /// Change of live bytes per segment.
    delta: BTreeMap<u32, i64>,
}

impl VlogTx<'_> {
    /// Append the value of write `seq`; where it is.
    pub fn put(&mut self, seq: u64, value: &[u8]) -> Result<Loc, DataError> {
        let rec = record_len(value.len() as u64);
        let end = self.active.len + self.buf.len() as u64;
        if self.active.file.is_none() || (end + rec > self.log.segment_max && end > MAGIC.len() as u64) {
            self.roll()?;
        }
        let (segment, _) = self.active.file.as_ref().expect("rolled above");
        let loc = Loc {
            segment: *segment,
            offset: self.active.len + self.buf.len() as u64,
        };
        self.buf.extend_from_slice(&header(seq, value));
        self.buf.extend_from_slice(value);
        *self.delta.entry(loc.segment).or_default() += rec as i64;
        Ok(loc)
    }

    /// The record of a `len`-byte value at `loc` is no longer named.
    pub fn release(&mut self, len: u64, loc: Loc) {
        *self.delta.entry(loc.segment).or_default() -= record_len(len) as i64;
    }

    /// Write what is buffered to the active segment (not synced).
    fn write_buf(&mut self) -> Result<(), DataError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some((id, file)) = self.active.file.clone() else {
            return Ok(());
        };
        if let Err(e) = write_runs_at(&file, self.active.len, &self.buf) {
            // Whatever part landed is garbage no location will name; never append there again.
            self.active.file = None;
            return Err(DataError::Storage(format!("write values segment {id}: {e}")));
        }
        self.active.len += self.buf.len() as u64;
        self.buf.clear();
        self.log.mark_dirty(&file);
        Ok(())
    }

    /// Seal the active segment (writing what is buffered for it) and start the next one.
    fn roll(&mut self) -> Result<(), DataError> {
        self.write_buf()?;
        let id = self.active.next_id;
        let dir = &self.log.dir;
        std::fs::create_dir_all(dir).ctx(&format!("create {}", dir.display()))?;
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(&format!("create values segment {}", path.display()))?;
        // Taken even if the magic cannot be written: the next roll must not try this name again.
        self.active.next_id = id + 1;
        file.write_all_at(MAGIC, 0)
            .ctx(&format!("write values segment {}", path.display()))?;
        let file = Arc::new(file);
        {
            let mut files = lock(&self.log.files);
            files.known.insert(id);
            files.insert(id, file.clone());
        }
        self.log.mark_dirty(&file);
        self.log.new_segment.store(true, Ordering::Release);
        self.active.file = Some((id, file));
        self.active.len = MAGIC.len() as u64;
        Ok(())
    }

    /// Write the records and record the live bytes in `value_segments` (opened only when they
    /// changed: most batches hold no large value). Call before the commit.
    pub fn finish(mut self, tx: &WriteTransaction) -> Result<(), DataError> {
        self.write_buf()?;
        if self.delta.values().all(|d| *d == 0) {
            return Ok(());
        }
        apply_delta(
            &mut tx.open_table(SEGMENTS).ctx("open value segments table")?,
            &self.delta,
        )
    }

    /// Write the records and return the live bytes they add, for a snapshot being staged (its
    /// live bytes replace the table's when it is swapped in).
    pub fn finish_staged(mut self, staged: &mut BTreeMap<u32, i64>) -> Result<(), DataError> {
        self.write_buf()?;
        for (id, d) in &self.delta {
            *staged.entry(*id).or_default() += d;
        }
        Ok(())
    }
}

/// Add `delta` to the live bytes in `segments`.
pub(crate) fn apply_delta(segments: &mut Table<'_, u32, u64>, delta: &BTreeMap<u32, i64>) -> Result<(), DataError> {
    for (id, d) in delta {
        if *d == 0 {
            continue;
        }
        let now = segments
            .get(*id)
            .ctx("read segment live bytes")?
            .map_or(0, |v| v.value());
        let new = now as i64 + d;
        if new < 0 {
            return Err(DataError::Corrupt(format!(
                "values segment {id}: {now} live bytes, {} released",
                -d
            )));
        }
        segments.insert(*id, new as u64).ctx("write segment live bytes")?;
    }
    Ok(())
}

/// Every segment's live bytes.
pub(crate) fn read_live(segments: &impl ReadableTable<u32, u64>) -> Result<BTreeMap<u32, u64>, DataError> {
    let mut out = BTreeMap::new();
    for item in segments.iter().ctx("read segment live bytes")? {
        let (k, v) = item.ctx("read segment live bytes")?;
        out.insert(k.value(), v.value());
    }
    Ok(out)
}

/// What a compaction step should do next, from each sealed segment's size and live bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CompactPlan {
    Nothing,
    /// No live bytes: remove it (and its `value_segments` row).
    Drop(u32),
    /// Copy its live records on, from this offset.
    Copy(u32, u64),
}

/// Pick the work: a segment already being compacted first, then empty segments, then the one
/// with the lowest live share under one half, then a small one (under an eighth of
/// `segment_max`: every open starts a segment, so restarts would otherwise leave many small ones,
/// each an open file).
pub(crate) fn plan(
    sealed: &[(u32, u64)],
    live: &BTreeMap<u32, u64>,
    current: Option<(u32, u64)>,
    segment_max: u64,
) -> CompactPlan {
    if let Some((id, offset)) = current {
        if sealed.iter().any(|(s, _)| *s == id) {
            return CompactPlan::Copy(id, offset);
        }
    }
    let mut best: Option<(u32, f64)> = None;
    for &(id, size) in sealed {
        let l = live.get(&id).copied().unwrap_or(0);
        if l == 0 {
            return CompactPlan::Drop(id);
        }
        let share = l as f64 / size.max(1) as f64;
        if share < 0.5 && best.is_none_or(|(_, s)| share < s) {
            best = Some((id, share));
        }
    }
    if let Some((id, _)) = best {
        return CompactPlan::Copy(id, MAGIC.len() as u64);
    }
    match sealed.iter().find(|(_, size)| *size < segment_max / 8) {
        Some((id, _)) => CompactPlan::Copy(*id, MAGIC.len() as u64),
        None => CompactPlan::Nothing,
    }
}

impl ValuesLog {
    /// One compaction step, inside the write transaction `tx` (the caller commits it durably).
    /// `values` is the `values` table of `tx`. Returns a segment to retire after that commit.
    pub fn compact_step(
        &self,
        values: &mut Table<'_, (u64, u32), &'static [u8]>,
        segments: &mut Table<'_, u32, u64>,
    ) -> Result<Option<u32>, DataError> {
        let live = read_live(segments)?;
        let current = *lock(&self.compacting);
        match plan(&self.sealed(), &live, current, self.segment_max) {
            CompactPlan::Nothing => Ok(None),
            CompactPlan::Drop(id) => {
                segments.remove(id).ctx("remove segment live bytes")?;
                *lock(&self.compacting) = None;
                Ok(Some(id))
            }
            CompactPlan::Copy(id, from) => {
                let file = self
                    .file(id)
                    .ok_or_else(|| DataError::Corrupt(format!("values segment {id} is missing")))?;
                let size = file.metadata().ctx("read values segment size")?.len();
                let mut tx = self.begin();
                let mut offset = from;
                let mut moved = 0u64;
                let mut window = Vec::new();
                'scan: while offset + HEADER as u64 <= size && moved < COMPACT_STEP {
                    let want = (SCAN_WINDOW as u64).min(size - offset) as usize;
                    window.resize(want, 0);
                    file.read_exact_at(&mut window, offset)
                        .ctx(&format!("read values segment {id}"))?;
                    let mut at = 0usize;
                    while at + HEADER <= window.len() && moved < COMPACT_STEP {
                        let head: [u8; HEADER] = window[at..at + HEADER].try_into().expect("HEADER bytes");
                        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
                        let seq = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
                        if at + HEADER + len > window.len() {
                            if at == 0 {
                                // One record larger than the window: read it alone.
                                if offset + (HEADER + len) as u64 > size {
                                    break 'scan; // a torn tail
                                }
                                window.resize(HEADER + len, 0);
                                file.read_exact_at(&mut window, offset)
                                    .ctx(&format!("read values segment {id}"))?;
                                continue;
                            }
                            break;
                        }
                        let value = &window[at + HEADER..at + HEADER + len];
                        if check_record(seq, &head, value).is_err() {
                            // A torn tail (records are never written after a failed write).
                            offset = size;
                            break 'scan;
                        }
                        let here = Loc {
                            segment: id,
                            offset: offset + at as u64,
                        };
                        let named = values
                            .get((seq, LOC_CHUNK))
                            .ctx("read value location")?
                            .map(|g| Loc::decode(seq, g.value()))
                            .transpose()?;
                        if named == Some(here) {
                            let to = tx.put(seq, value)?;
                            values
                                .insert((seq, LOC_CHUNK), to.encode().as_slice())
                                .ctx("move value location")?;
                            tx.release(len as u64, here);
                            moved += record_len(len as u64);
                        }
                        at += HEADER + len;
                    }
                    offset += at as u64;
                    if at == 0 {
                        break;
                    }
                }
                tx.write_buf()?;
                apply_delta(segments, &tx.delta)?;
                drop(tx);
                if offset + HEADER as u64 <= size && moved >= COMPACT_STEP {
                    *lock(&self.compacting) = Some((id, offset));
                    return Ok(None);
                }
                *lock(&self.compacting) = None;
                let left = segments
                    .get(id)
                    .ctx("read segment live bytes")?
                    .map_or(0, |v| v.value());
                if left != 0 {
                    tracing::error!(
                        segment = id,
                        live_bytes = left,
                        "values segment: its records do not account for its live bytes; leaving it in place"
                    );
                    lock(&self.stuck).push(id);
                    return Ok(None);
                }
                segments.remove(id).ctx("remove segment live bytes")?;
                Ok(Some(id))
            }
        }
    }

    /// A compaction is part way through a segment.
    pub fn compacting(&self) -> bool {
        lock(&self.compacting).is_some()
    }

    /// Whether a compaction step would do anything, given every segment's live bytes.
    pub fn has_work(&self, live: &BTreeMap<u32, u64>) -> bool {
        plan(&self.sealed(), live, None, self.segment_max) != CompactPlan::Nothing
    }

    /// Forget an unfinished compaction (its transaction failed).
    pub fn reset_compaction(&self) {
        *lock(&self.compacting) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_prefers_the_running_step_then_empty_then_the_emptiest_under_half() {
        let max = 800;
        let live = BTreeMap::from([(1, 100), (2, 10), (3, 0), (4, 60), (5, 90)]);
        let sealed = [(1, 1000), (2, 1000), (4, 100)];
        assert_eq!(plan(&sealed, &live, Some((4, 500)), max), CompactPlan::Copy(4, 500));
        assert_eq!(plan(&sealed, &live, None, max), CompactPlan::Copy(2, 8));
        let with_empty = [(1, 1000), (3, 1000)];
        assert_eq!(plan(&with_empty, &live, None, max), CompactPlan::Drop(3));
        // Half or more live and not small: left alone.
        assert_eq!(plan(&[(4, 100)], &live, None, max), CompactPlan::Nothing);
        // Small (under max / 8) even if all live: merged into the active segment.
        assert_eq!(plan(&[(4, 100), (5, 95)], &live, None, max), CompactPlan::Copy(5, 8));
        // A step of a segment that is no longer sealed-and-known is dropped.
        assert_eq!(plan(&[(4, 100)], &live, Some((9, 50)), max), CompactPlan::Nothing);
    }

    #[test]
    fn records_round_trip_and_damage_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValuesLog::open(dir.path().join("v"), 1 << 20).unwrap();
        let value: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let loc = {
            let mut tx = log.begin();
            let loc = tx.put(7, &value).unwrap();
            tx.write_buf().unwrap();
            loc
        };
        log.sync().unwrap();
        assert_eq!(log.read(7, value.len() as u64, loc).unwrap(), value);
        assert!(matches!(
            log.read(8, value.len() as u64, loc),
            Err(DataError::Corrupt(_))
        ));
        // Flip one byte of the value on disk.
        let path = dir.path().join("v").join(segment_name(loc.segment));
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[0xAA], loc.offset + HEADER as u64 + 100).unwrap();
        assert!(matches!(
            log.read(7, value.len() as u64, loc),
            Err(DataError::Corrupt(_))
        ));
    }

    #[test]
    fn segments_roll_at_the_limit_and_a_reopen_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValuesLog::open(dir.path().join("v"), 64 << 10).unwrap();
        let mut tx = log.begin();
        let locs: Vec<Loc> = (0..10).map(|s| tx.put(s, &[s as u8; 10_000]).unwrap()).collect();
        tx.write_buf().unwrap();
        drop(tx);
        let segs: std::collections::BTreeSet<u32> = locs.iter().map(|l| l.segment).collect();
        assert_eq!(segs.len(), 2, "{locs:?}");
        for (s, l) in locs.iter().enumerate() {
            assert_eq!(log.read(s as u64, 10_000, *l).unwrap(), vec![s as u8; 10_000]);
        }
        drop(log);
        let log = ValuesLog::open(dir.path().join("v"), 64 << 10).unwrap();
        let mut tx = log.begin();
        let l = tx.put(99, b"x").unwrap();
        assert_eq!(l.segment, 3, "a reopened log never appends to an old segment");
        drop(tx);
        // Unknown segments are removed (at open: here with the new one named too).
        let removed = log.drop_unknown(&BTreeMap::from([(1, 5), (3, 17)])).unwrap();
        assert_eq!(removed, 1);
        assert!(log.file(1).is_some() && log.file(2).is_none() && log.file(3).is_some());
        assert!(!dir.path().join("v").join(segment_name(2)).exists());
    }

    /// Thousands of segments, a bounded number of open files: every value still reads back.
    #[test]
    fn open_segment_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValuesLog::open(dir.path().join("v"), 1024).unwrap();
        let locs: Vec<Loc> = (0..(3 * OPEN_MAX) as u64)
            .map(|s| {
                let mut tx = log.begin();
                let l = tx.put(s, &[s as u8; 1000]).unwrap();
                tx.write_buf().unwrap();
                l
            })
            .collect();
        assert_eq!(lock(&log.files).known.len(), 3 * OPEN_MAX, "one segment each");
        for (s, l) in locs.iter().enumerate() {
            assert_eq!(log.read(s as u64, 1000, *l).unwrap(), vec![s as u8; 1000]);
        }
        assert!(lock(&log.files).open.len() <= OPEN_MAX);
    }

    #[test]
    fn a_retired_segment_stays_readable_for_older_pins_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValuesLog::open(dir.path().join("v"), 64 << 10).unwrap();
        let mut tx = log.begin();
        let loc = tx.put(1, &[1; 1000]).unwrap();
        tx.write_buf().unwrap();
        drop(tx);
        let old = log.pin();
        log.retire(loc.segment);
        let newer = log.pin();
        assert!(log.read(1, 1000, loc).is_ok(), "an older pin keeps it");
        drop(newer);
        assert!(log.file(loc.segment).is_some());
        drop(old);
        assert!(log.file(loc.segment).is_none(), "unlinked once the older pin is gone");
        assert!(!dir.path().join("v").join(segment_name(loc.segment)).exists());
    }
}
