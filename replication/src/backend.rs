//! The datastore file's redb storage backend: redb's own file backend, except that page writes are
//! held until the next sync (or a read that needs them) and then written in file order, every
//! contiguous run of pages with one `pwritev`.
//!
//! Why: redb writes a durable commit's dirty pages one `pwrite` per page, in the order of its
//! write buffer's hash stripes. A 16 KiB-value batch is hundreds of 4 KiB pages, most of them
//! next to each other in the file (a batch's new leaves are allocated together), and on Linux
//! with ext4 a 4 KiB write costs several times the CPU per byte of a large one: each page is its
//! own page-cache folio to allocate, charge, mark dirty, reserve a block for and later write back,
//! where a large write gets large folios. Measured on the reference VM (256 MiB, then fdatasync,
//! `dd`): 0.21-0.24 s of system time in 4 KiB writes, 0.09 in 16 KiB writes, 0.06 in 64 KiB
//! writes. With this backend a batch of 660-1,190 page writes became 74-83 writes.
//!
//! Nothing about the file changes: the same bytes land at the same offsets, before the same
//! fdatasync. redb makes a commit durable by writing its pages and syncing (`sync_data`), then
//! writing the header and syncing again; every held write is on the file before `sync_data`
//! syncs, so a commit redb reports durable is exactly as durable as before. Between syncs the
//! file may miss writes it would otherwise have had, which changes nothing after a crash: redb
//! only trusts what a sync covered (non-durable commits are made durable by a later durable
//! commit, and the datastore journal covers them meanwhile, see `journal.rs`).
//!
//! Reads: a read that overlaps a held write first writes everything held (so it reads what
//! redb wrote), as do `set_len` and `close`. Writes held at once are bounded by [`HOLD_MAX`].
//!
//! Errors: a failure writing held pages is returned by the call that wrote them out (a sync, a
//! read, ...), not by the `write` that handed them over. redb latches any backend error, so from
//! then on it refuses every operation on the file, as after a failed `pwrite` before: nothing
//! is acknowledged on top of pages that did not reach the file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::vlog::ValuesLog;

/// More bytes than this held are written at once (redb's write buffer flushes a few MiB at a
/// durable commit; this bounds what cache evictions between syncs can pile up).
const HOLD_MAX: usize = 32 << 20;
/// A run of contiguous pages is cut where the file offset crosses a multiple of this, so that a
/// `pwritev` fills one naturally aligned page-cache folio of this size. Larger folios cost more
/// CPU per byte on the reference VM, whose page cache is full (a fresh 1 GiB file, `dd` with
/// fdatasync, system time: 4 KiB writes 1.15-1.35 s, 8 KiB 0.56-0.67, 16 KiB 0.37-0.85, 32 KiB
/// 0.81-1.56, 64 KiB 0.93-1.00; noisy, other work shared the machine).
const RUN_BYTES: u64 = 16 << 10;
/// The file's first page, where redb's header is.
const HEADER_PAGE: u64 = 4096;
/// Most buffers one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The datastore file's backend (see the module doc).
#[derive(Debug)]
pub(crate) struct CoalescingFile {
    /// redb's backend on the file: locks, length, reads, syncs.
    inner: FileBackend,
    /// The same open file (a duplicate descriptor) for the held writes.
    file: File,
    held: Mutex<Held>,
    /// Synced first in every `sync_data`: the values log (`vlog.rs`), whose records the pages
    /// being made durable may name.
    values: Option<Arc<ValuesLog>>,
}

/// Writes not yet on the file: their bytes one after another in `bytes`, and by file offset
/// where each one's bytes are. No two overlap.
#[derive(Debug, Default)]
struct Held {
    bytes: Vec<u8>,
    /// File offset → (start in `bytes`, length).
    at: BTreeMap<u64, (usize, usize)>,
}

impl Held {
    /// The held write overlapping `offset..offset + len`, if any: its offset.
    fn overlapping(&self, offset: u64, len: u64) -> Option<u64> {
        let (&start, &(_, l)) = self.at.range(..offset + len).next_back()?;
        (start + l as u64 > offset).then_some(start)
    }

    /// One past the last byte held, 0 when nothing is.
    fn end(&self) -> u64 {
        self.at.last_key_value().map_or(0, |(&o, &(_, l))| o + l as u64)
    }

    /// Write everything held, in file order, then forget it.
    fn write_out(&mut self, file: &File) -> io::Result<()> {
        if self.at.is_empty() {
            return Ok(());
        }
        let result = self.write_runs(file);
        self.at.clear();
        self.bytes.clear();
        if self.bytes.capacity() > HOLD_MAX {
            self.bytes.shrink_to(HOLD_MAX);
        }
        result
    }

    fn write_runs(&self, file: &File) -> io::Result<()> {
        let mut run: Vec<&[u8]> = Vec::new();
        let (mut run_start, mut run_end) = (0u64, 0u64);
        for (&offset, &(start, len)) in &self.at {
            let next_block = offset / RUN_BYTES != run_start / RUN_BYTES;
            if !run.is_empty() && (offset != run_end || next_block || run.len() == IOV_MAX) {
                write_vectored_at(file, run_start, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = offset;
            }
            run.push(&self.bytes[start..start + len]);
            run_end = offset + len as u64;
        }
        write_vectored_at(file, run_start, &run)
    }
}

/// Write `bytes` at `offset` the way held pages are written: one write per piece, cut where the
/// file offset crosses a multiple of [`RUN_BYTES`], so each fills one aligned page-cache folio
/// (the values log appends this way; see [`RUN_BYTES`] for why not larger).
pub(crate) fn write_runs_at(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let (mut at, mut rest) = (offset, bytes);
    while !rest.is_empty() {
        let room = (RUN_BYTES - at % RUN_BYTES) as usize;
        let (piece, tail) = rest.split_at(room.min(rest.len()));
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
        rest = tail;
    }
    Ok(())
}

/// Write `bufs` one after another at `offset` (`pwritev`, again for what a short write left).
fn write_vectored_at(file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let offset_arg = libc::off_t::try_from(offset).map_err(|_| io::Error::other("file offset out of range"))?;
    // SAFETY: every iovec points into a slice borrowed for the duration of the call, and the
    // descriptor belongs to `file`, which is alive.
    let written = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, offset_arg) };
    if written < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let mut done = written.max(0) as usize;
    if done == total {
        return Ok(());
    }
    // A short (or interrupted) write: the rest a buffer at a time.
    let mut at = offset;
    for b in bufs {
        let skip = done.min(b.len());
        done -= skip;
        if skip < b.len() {
            file.write_all_at(&b[skip..], at + skip as u64)?;
        }
        at += b.len() as u64;
    }
    Ok(())
}

impl CoalescingFile {
    /// Open (creating if needed) the file at `path` the way redb's `Builder::create` does.
    pub fn open(path: &Path, values: Option<Arc<ValuesLog>>) -> io::Result<CoalescingFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let writes = file.try_clone()?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(CoalescingFile {
            inner,
            file: writes,
            held: Mutex::new(Held::default()),
            values,
        })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic under the lock leaves `held` as it was before or after a whole operation.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write everything held.
    fn write_out(&self) -> io::Result<()> {
        self.write_out_held(&mut self.held())
    }

    /// Write everything `held` holds. When that includes the first page (redb's header, which
    /// makes a commit durable), the values log is synced first: a header on the file must never
    /// name values that a crash could still lose (`vlog.rs`).
    fn write_out_held(&self, held: &mut Held) -> io::Result<()> {
        if let Some(values) = &self.values {
            if held.overlapping(0, HEADER_PAGE).is_some() {
                values.sync()?;
            }
        }
        held.write_out(&self.file)
    }
}

impl StorageBackend for CoalescingFile {
    fn len(&self) -> Result<u64, io::Error> {
        let held_end = self.held().end();
        Ok(self.inner.len()?.max(held_end))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        {
            let mut held = self.held();
            if held.overlapping(offset, out.len() as u64).is_some() {
                self.write_out_held(&mut held)?;
            }
        }
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.write_out()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if let Some(values) = &self.values {
            values.sync()?;
        }
        self.write_out()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut held = self.held();
        if let Some(o) = held.overlapping(offset, data.len() as u64) {
            let (start, len) = held.at[&o];
            if o == offset && len == data.len() {
                // The same page again: replace its bytes.
                held.bytes[start..start + len].copy_from_slice(data);
                return Ok(());
            }
            self.write_out_held(&mut held)?;
        }
        let start = held.bytes.len();
        held.bytes.extend_from_slice(data);
        held.at.insert(offset, (start, data.len()));
        if held.bytes.len() > HOLD_MAX {
            self.write_out_held(&mut held)?;
        }
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        if let Some(values) = &self.values {
            values.sync()?;
        }
        let written = self.write_out();
        self.inner.close()?;
        written
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &CoalescingFile, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        b.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn held_writes_are_read_back_and_land_in_file_order_at_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let b = CoalescingFile::open(&path, None).unwrap();
        b.set_len(5 * 4096).unwrap();
        // Out of order, two contiguous runs (pages 3-4 and 0-1), and page 1 written twice.
        b.write(3 * 4096, &[3; 4096]).unwrap();
        b.write(0, &[9; 4096]).unwrap();
        b.write(4096, &[1; 4096]).unwrap();
        b.write(4 * 4096, &[4; 4096]).unwrap();
        b.write(0, &[0; 4096]).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![0; 5 * 4096],
            "held until a sync or a read"
        );
        assert_eq!(read(&b, 4096 + 100, 10), vec![1; 10], "a read sees held writes");
        b.write(2 * 4096 + 10, &[2; 20]).unwrap();
        b.sync_data().unwrap();
        let file = std::fs::read(&path).unwrap();
        let mut want = vec![0; 4096];
        want.extend([1; 4096]);
        want.extend([0; 10]);
        want.extend([2; 20]);
        want.extend(vec![0; 4096 - 30]);
        want.extend([3; 4096]);
        want.extend([4; 4096]);
        assert_eq!(file, want);
    }

    #[test]
    fn an_overlapping_write_of_another_size_keeps_the_order_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let b = CoalescingFile::open(&path, None).unwrap();
        b.set_len(8192).unwrap();
        b.write(0, &[1; 8192]).unwrap();
        b.write(4096, &[2; 100]).unwrap();
        assert_eq!(b.len().unwrap(), 8192);
        b.close().unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[..4096], &[1; 4096][..]);
        assert_eq!(&file[4096..4196], &[2; 100][..]);
        assert_eq!(&file[4196..], &[1; 8192 - 4196][..]);
    }

    #[test]
    fn a_database_on_it_reopens_with_what_was_committed() {
        use redb::{ReadableDatabase, TableDefinition};
        const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let db = redb::Database::builder()
                .create_with_backend(CoalescingFile::open(&path, None).unwrap())
                .unwrap();
            for round in 0..3u64 {
                let tx = db.begin_write().unwrap();
                {
                    let mut t = tx.open_table(T).unwrap();
                    for i in 0..500u64 {
                        t.insert(round * 1000 + i, vec![(i % 251) as u8; 3000].as_slice())
                            .unwrap();
                    }
                }
                tx.commit().unwrap();
            }
        }
        let db = redb::Database::open(&path).unwrap();
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(T).unwrap();
        for round in 0..3u64 {
            for i in (0..500u64).step_by(37) {
                assert_eq!(
                    t.get(round * 1000 + i).unwrap().unwrap().value(),
                    vec![(i % 251) as u8; 3000]
                );
            }
        }
    }
}
