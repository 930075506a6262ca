//! The redb file, its tables, the cached position, and every operation except the group-committed
//! primary write path (in `writer.rs`) and snapshots (in `snapshot.rs`).
//!
//! Tables:
//! - `kv`: key → encoded `StoredKv` `{pos, value}` (version = `pos.seq`); a large value is only
//!   referenced here and lives in `values` (datastore format 2, see `values.rs`).
//! - `log`: seq → encoded [`Entry`]. Always contiguous: it holds exactly the seqs
//!   `log_start.seq + 1 ..= position.seq` (appends at the back, trim at the front, rollback at
//!   the back). Empty iff `log_start == position`.
//! - `meta`: `position` (last entry written or applied), `newest_epoch` (newest epoch seen),
//!   `log_start` (position of the last trimmed entry, or of the installed snapshot: the log
//!   starts right after it, and its epoch is kept so a fork is still detected at that seq).
//! - `diverged`: record id → encoded `{at_ms, entry}` for every rolled-back entry (values inline).
//! - `values`: `(seq, chunk)` → bytes of the large values of format 2 (`values.rs`); in format 3
//!   one location per value under `(seq, u32::MAX)`, its bytes in the values log (`vlog.rs`).
//! - `value_segments`: live bytes of each values-log segment (format 3, `vlog.rs`).
//! - `meta` also holds `format`, the datastore format this file is written in (absent: 1).
//!
//! Locks: `Inner::meta` (a mutex) is taken by every write transaction of this store, for the
//! whole transaction, and the in-memory caches are updated under it right after the commit. So
//! the cached [`Meta`] is always what the last commit wrote, and the writer thread, `apply`,
//! `trim`, `rollback_to` and snapshot install never interleave. Readers (`get`, `list`,
//! `read_log`, `snapshot`) take no lock: each uses one redb read transaction (MVCC) and reads the
//! meta it needs from that same transaction, so what it returns is consistent.
//!
//! Files: this one opens the store (format choice, journal replay) and holds the [`DataStore`]
//! handle with its cheap accessors; `tables.rs` the table definitions and the `meta` bookkeeping;
//! `inner.rs` the shared state ([`Inner`]: the lock, the caches, the journal, the counters);
//! `read.rs` `get` and `list`; `log.rs` `read_log`, `position_at` and `trim`; `apply.rs` a
//! replica's `apply` and one primary write inside the writer's batch; `rollback.rs` `rollback_to`
//! and the `diverged` table; `tests.rs` the tests.

mod apply;
mod inner;
mod log;
mod read;
mod rollback;
mod tables;
#[cfg(test)]
pub(crate) mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::backend::CoalescingFile;
use crate::codec::{decode, encode};
use crate::journal::Journal;
use crate::recent::RecentLog;
use crate::values::{NEWEST_FORMAT, VALUES};
use crate::vlog::{read_live, ValuesLog, SEGMENTS, SEGMENT_MAX};
use crate::writer::WriterHandle;
use crate::{DataError, Entry, Position, WriteOp, WriteResult};
use log::entry_position;
use tables::{check_log_shape, load_meta, META_FORMAT};

pub(crate) use apply::apply_write;
pub use apply::journaled_batch;
pub use inner::DataStats;
pub(crate) use inner::{Inner, Stats};
pub(crate) use tables::{
    begin_write, encode_value, now_ms, read_meta, write_meta, Ctx, Meta, DIVERGED, KV, KV_STAGING, LOG, META,
};

/// How to open a [`DataStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Datastore format to write (see [`DataStore::open_with`]); `None` keeps or picks the newest.
    pub format: Option<u8>,
    /// Memory budget in bytes: redb's page cache (reads and the write buffer together) and the
    /// newest change-log entries kept for the replicas' pulls ([`recent_bytes`]).
    pub cache_bytes: usize,
    /// Size at which a values-log segment is sealed (format 3, `vlog.rs`); tests make it small.
    pub segment_bytes: u64,
}

/// Most bytes of newest change-log entries a store keeps for the replicas' pulls (`recent.rs`).
pub const RECENT_MAX: usize = 32 << 20;

/// The part of a store's memory budget `cache_bytes` that keeps the newest change-log entries:
/// an eighth, at most [`RECENT_MAX`] (14 MiB of the default). redb's page cache gets the rest.
pub fn recent_bytes(cache_bytes: usize) -> usize {
    (cache_bytes / 8).min(RECENT_MAX)
}

/// Cache budget of a store opened without one: the node's default (`--cache-mb 128`) less what
/// it gives the Raft stores.
pub const DEFAULT_CACHE_BYTES: usize = 112 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            format: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            segment_bytes: SEGMENT_MAX,
        }
    }
}

/// Handle to the datastore. Cheap to clone; every clone shares one redb database and one writer
/// thread. The writer thread stops (after its current batch) when the last clone is dropped.
#[derive(Clone)]
pub struct DataStore {
    // Dropped first: stopping the writer releases its reference to `inner` (and the file).
    writer: Arc<WriterHandle>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStore")
            .field("path", &self.inner.path)
            .field("position", &self.position())
            .field("newest_epoch", &self.newest_epoch())
            .finish()
    }
}

impl DataStore {
    /// Open (creating if needed) the datastore file at `path`, e.g. `<data_dir>/data.redb`.
    ///
    /// Takes no lock of its own: the node already holds the data-dir lock. (redb still locks the
    /// file itself, so opening the same file twice fails instead of corrupting it.)
    pub fn open(path: &Path) -> Result<DataStore, DataError> {
        DataStore::open_with(path, &StoreOptions::default())
    }

    /// [`DataStore::open_with`] with only a datastore format (see there) and the default cache.
    pub fn open_with_format(path: &Path, format: Option<u8>) -> Result<DataStore, DataError> {
        DataStore::open_with(
            path,
            &StoreOptions {
                format,
                ..StoreOptions::default()
            },
        )
    }

    /// [`DataStore::open`] with options. `options.format` is the datastore format (1, 2 or 3, see
    /// `values.rs` and `vlog.rs`). `None`: a new file
    /// gets [`NEWEST_FORMAT`], an existing one keeps the format it has (a file without a recorded
    /// format was written by a release that knew only format 1). `Some(f)` moves an older file up
    /// to format `f` (its old records stay as they are and read as before); going back to an older
    /// format is refused, as the file may already hold records that format cannot read.
    ///
    /// `options.cache_bytes` bounds redb's page cache (reads and the write buffer together), so
    /// the memory this store holds stays flat however large the file grows.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<DataStore, DataError> {
        let format = options.format;
        if let Some(f) = format {
            if !(1..=NEWEST_FORMAT).contains(&f) {
                return Err(DataError::Storage(format!(
                    "datastore format {f} is not supported (this build writes formats 1 to {NEWEST_FORMAT})"
                )));
            }
        }
        let existed = path.exists();
        let opened = Instant::now();
        let recent = recent_bytes(options.cache_bytes);
        let vlog_dir = ValuesLog::path_for(path);
        let vlog = Arc::new(
            ValuesLog::open(vlog_dir.clone(), options.segment_bytes).ctx(&format!("open {}", vlog_dir.display()))?,
        );
        let file = CoalescingFile::open(path, Some(vlog.clone())).ctx(&format!("open datastore {}", path.display()))?;
        let db = Database::builder()
            .set_cache_size(options.cache_bytes - recent)
            .create_with_backend(file)
            .ctx(&format!("open datastore {}", path.display()))?;
        // Create every table so that readers never see "table does not exist".
        let tx = begin_write(&db)?;
        tx.open_table(KV).ctx("create kv table")?;
        tx.open_table(LOG).ctx("create log table")?;
        tx.open_table(DIVERGED).ctx("create diverged table")?;
        tx.open_table(VALUES).ctx("create values table")?;
        tx.open_table(SEGMENTS).ctx("create value segments table")?;
        let format = {
            let mut t = tx.open_table(META).ctx("create meta table")?;
            let stored: Option<u8> = match t.get(META_FORMAT).ctx("read meta")? {
                Some(v) => Some(decode(v.value()).map_err(|e| DataError::Corrupt(format!("decode meta format: {e}")))?),
                None => None,
            };
            let had = stored.unwrap_or(if existed { 1 } else { 0 });
            let chosen = match (had, format) {
                (0, f) => f.unwrap_or(NEWEST_FORMAT),
                (had, Some(f)) if f < had => {
                    return Err(DataError::Storage(format!(
                        "datastore {} is in format {had} and may hold records that format {f} cannot read; \
                         to go back to format {f}, remove the file and let the node resync from the primary",
                        path.display()
                    )))
                }
                (had, f) => f.unwrap_or(had).max(had),
            };
            if stored != Some(chosen) && chosen > 1 {
                t.insert(META_FORMAT, encode(&chosen).as_slice()).ctx("write format")?;
            }
            chosen
        };
        tx.commit().ctx("commit table creation")?;
        let meta = load_meta(&db)?;
        check_log_shape(&db, &meta)?;
        // Segment files no durable commit names (the module doc of `vlog.rs`).
        let live = {
            let rtx = db.begin_read().ctx("begin read transaction")?;
            read_live(&rtx.open_table(SEGMENTS).ctx("open value segments table")?)?
        };
        let dropped = vlog
            .drop_unknown(&live)
            .ctx(&format!("remove unnamed segments of {}", vlog_dir.display()))?;
        if dropped > 0 {
            tracing::info!(dir = %vlog_dir.display(), segments = dropped,
                "removed values segments that no durable commit names (written before a crash, or of a removed datastore)");
        }
        tracing::info!(path = %path.display(), position = %meta.position, log_start = %meta.log_start,
            newest_epoch = meta.newest_epoch, format, cache_mib = options.cache_bytes >> 20,
            open_ms = opened.elapsed().as_millis() as u64, "opened datastore");
        let inner = Arc::new(Inner {
            db,
            path: path.to_path_buf(),
            meta: Mutex::new(meta),
            position: RwLock::new(meta.position),
            visible: RwLock::new(meta.position),
            early_visibility: AtomicBool::new(false),
            newest_epoch: AtomicU64::new(meta.newest_epoch),
            head: tokio::sync::watch::channel(meta.position).0,
            stats: Stats::default(),
            format,
            installing: AtomicBool::new(false),
            journal: Mutex::new(Journal::new(path)),
            cache_bytes: options.cache_bytes,
            recent: RecentLog::new(recent),
            vlog,
            last_compact_check: Mutex::new(None),
        });
        let writer = Arc::new(WriterHandle::spawn(inner.clone())?);
        let store = DataStore { writer, inner };
        store.replay_journal()?;
        Ok(store)
    }

    /// Apply the journal's batches again (see `journal.rs`), then checkpoint.
    fn replay_journal(&self) -> Result<(), DataError> {
        let path = Journal::path_for(&self.inner.path);
        let found = Journal::read(&path).map_err(|e| DataError::Storage(format!("read {}: {e}", path.display())))?;
        if found.len.is_none() {
            return Ok(());
        }
        let mut guard = self.inner.lock_meta();
        self.inner.journal().found(&found);
        let before = guard.position;
        let (mut applied, batches) = (0usize, found.batches.len());
        for (source_epoch, entries) in found.batches {
            // Entries redb already has (made durable by a later commit) are checked to be the same
            // entries and skipped; only the rest must extend the position. A record redb has in
            // full is not applied again at all: its epoch may be older than the newest one known
            // since (`apply_locked` would refuse it as stale).
            let known = entries.iter().take_while(|e| e.pos.seq <= guard.position.seq).count();
            let result = self.check_known(&guard, &entries[..known]).and_then(|()| {
                if known == entries.len() {
                    return Ok(());
                }
                self.apply_locked(&mut guard, source_epoch, &entries[known..], false)
                    .map(|_| ())
            });
            if let Err(e) = result {
                let aside = self.inner.journal().reject();
                tracing::error!(journal = %path.display(), error = %e, moved_to = ?aside, position = %guard.position,
                    "the datastore journal does not fit the datastore; it was not applied (kept aside) and this node \
                     will pull what it lacks from the primary");
                return Ok(());
            }
            applied += entries.len() - known;
        }
        self.inner.checkpoint(&guard)?;
        tracing::info!(journal = %path.display(), batches, applied, from = %before, to = %guard.position,
            torn_bytes = found.torn_bytes, "applied the datastore journal again after a restart");
        Ok(())
    }

    /// The entries (all at or below the position) are this store's own: same position at each seq.
    fn check_known(&self, meta: &Meta, entries: &[Entry]) -> Result<(), DataError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let log = rtx.open_table(LOG).ctx("open log table")?;
        for e in entries {
            match entry_position(&log, meta, e.pos.seq)? {
                Some(ours) if ours != e.pos => {
                    return Err(DataError::Fork {
                        at: e.pos,
                        ours: Some(ours),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Primary write. Validates sizes, then hands the write to the group-commit writer, which
    /// assigns the next position in `epoch` (refused with `StaleEpoch` if an epoch newer than
    /// `epoch` has been seen) and applies data + change-log entry in one transaction shared with
    /// the other waiting writes. Returns once that transaction is durable. A failed batch fails
    /// every write in it; a CAS mismatch fails only its own write.
    ///
    /// Dropping the returned future does not cancel a write already queued: its outcome is then
    /// unknown to the caller.
    pub async fn write(&self, epoch: u64, op: WriteOp) -> Result<WriteResult, DataError> {
        crate::validate_op(&op)?;
        self.writer.submit(&self.inner, epoch, op).await
    }

    /// Last entry written or applied (or rolled back to, or installed by a snapshot).
    pub fn position(&self) -> Position {
        *self.inner.position.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Highest position a read may have seen: [`DataStore::position`], or more while a write batch
    /// is visible but not yet durable (see [`DataStore::set_early_visibility`]). A sync-mode primary
    /// read waits for the replicas' acknowledgements up to this, read after the read.
    pub fn visible_position(&self) -> Position {
        *self.inner.visible.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Early visibility of primary writes (for sync mode): each write batch is committed twice,
    /// first without fsync (readable, so replication pulls ship it at once and the replicas' fsyncs
    /// overlap this node's), then durably. A write is still answered only after the durable commit.
    /// Reads may then see a batch that a crash before the durable commit would lose: a sync-mode
    /// primary read waits for replica acknowledgements up to [`DataStore::visible_position`].
    pub fn set_early_visibility(&self, on: bool) {
        self.inner.early_visibility.store(on, Ordering::Relaxed);
    }

    /// Watch of the visible position: changes right after every commit that moves it (a write
    /// batch, early-visible or durable, an apply, a rollback, a snapshot install).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.head.subscribe()
    }

    /// Newest epoch this store has seen (through writes, applies or [`DataStore::observe_epoch`]).
    pub fn newest_epoch(&self) -> u64 {
        self.inner.newest_epoch.load(Ordering::Acquire)
    }

    /// Checkpoint now (see `journal.rs`): a durable commit, then the datastore journal is emptied.
    /// A node calls it when it shuts down.
    pub fn checkpoint(&self) -> Result<(), DataError> {
        let guard = self.inner.lock_meta();
        self.inner.checkpoint(&guard)
    }

    /// The store's memory budget: `(bytes in use, budget)`; in use = redb's page cache and the
    /// newest change-log entries kept for the replicas' pulls.
    pub fn cache_use(&self) -> (usize, usize) {
        (
            self.inner.db.cache_stats().used_bytes() + self.inner.recent.bytes(),
            self.inner.cache_bytes,
        )
    }

    /// Run values-log compaction until it has nothing to do; the steps it took.
    #[cfg(test)]
    pub(crate) fn compact_all(&self) -> usize {
        let guard = self.inner.lock_meta();
        let mut steps = 0;
        while self.inner.compact_step(&guard).unwrap() {
            steps += 1;
            assert!(steps < 10_000, "compaction does not finish");
        }
        steps
    }

    /// Bytes of the newest change-log entries held in memory now.
    #[cfg(test)]
    pub(crate) fn recent_held(&self) -> usize {
        self.inner.recent.bytes()
    }

    /// Entries after `after` from the newest ones kept in memory (`recent.rs`), or `None` when
    /// they cannot tell: then [`DataStore::read_log`] answers.
    pub(crate) fn read_recent(
        &self,
        after: Position,
        max_entries: usize,
        max_bytes: usize,
    ) -> Option<Vec<Arc<crate::recent::Encoded>>> {
        self.inner.recent.read(after, max_entries, max_bytes)
    }

    /// Counters of the group-commit writer.
    pub fn stats(&self) -> DataStats {
        let s = &self.inner.stats;
        DataStats {
            commits: s.commits.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            journal_appends: s.journal_appends.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            journal_bytes: self.inner.journal().len(),
        }
    }
}
