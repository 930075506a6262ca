//! What every handle of one datastore shares ([`Inner`]): the redb database, the write lock with
//! the bookkeeping it guards, the lock-free copies of the position for readers, the journal, and
//! the writer's counters.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use redb::Database;
use serde::{Deserialize, Serialize};

use super::tables::{begin_write, load_meta, Ctx, Meta};
use crate::journal::Journal;
use crate::recent::RecentLog;
use crate::values::VALUES;
use crate::vlog::{read_live, ValuesLog, VlogTx, SEGMENTS};
use crate::{DataError, Entry, Position};

/// Counters of the group-commit writer (exported by the node as metrics).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    pub failed_batches: AtomicU64,
    pub largest_batch: AtomicU64,
    pub queued: AtomicU64,
    pub journal_appends: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// Snapshot of the writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    /// redb commits made by the primary write path (one per group-committed batch).
    pub commits: u64,
    /// Primary writes committed (CAS mismatches and refused writes are not counted).
    pub writes: u64,
    /// Batches whose transaction failed (every write in them failed).
    pub failed_batches: u64,
    /// Most writes committed in one batch.
    pub largest_batch: u64,
    /// Writes submitted and not yet answered.
    pub queued: u64,
    /// Primary batches and replica applies made durable through the journal (one fdatasync
    /// each; `journal.rs`).
    pub journal_appends: u64,
    /// Checkpoints: durable redb commits that emptied the journal.
    pub checkpoints: u64,
    /// Bytes in the journal now (applied, not yet in a durable redb commit).
    pub journal_bytes: u64,
}

/// How often a store without compaction in progress looks for values-log segments to compact.
const COMPACT_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct Inner {
    pub db: Database,
    pub path: PathBuf,
    /// Write lock and source of truth for the bookkeeping: see the module doc. Held for the whole
    /// of every write transaction; updated only after a successful commit.
    pub(super) meta: Mutex<Meta>,
    /// Copy of `meta.position` for lock-free [`DataStore::position`], which must not wait for a
    /// batch's fsync. Written under `meta` after each commit.
    pub(super) position: RwLock<Position>,
    /// Copy of `meta.newest_epoch`, same rule.
    pub(super) newest_epoch: AtomicU64,
    /// Highest position a reader may see: `position`, or ahead of it while a write batch is visible
    /// but not yet durable (early visibility, see `writer.rs`). Raised before that batch's commit.
    pub(super) visible: RwLock<Position>,
    /// Make write batches visible before they are durable (sync mode: see `writer.rs`).
    pub early_visibility: AtomicBool,
    /// `meta.position` for async waiters (replication long polls): sent right after each commit,
    /// from the committing thread, so a waiting pull wakes without waiting for the writer's
    /// caller to be scheduled first.
    pub(super) head: tokio::sync::watch::Sender<Position>,
    pub stats: Stats,
    /// The datastore format this file is written in: 2 stores large values once (`values.rs`), 3
    /// in the values log (`vlog.rs`).
    pub format: u8,
    /// At most one snapshot install at a time (they share the staging table).
    pub installing: AtomicBool,
    /// Where replica applies become durable (`journal.rs`). Locked only under `meta`.
    pub(super) journal: Mutex<Journal>,
    /// The memory budget of this store (see [`crate::StoreOptions`]): redb's page cache and
    /// `recent` together.
    pub cache_bytes: usize,
    /// The newest change-log entries as pulls carry them (`recent.rs`): the primary serves its
    /// replicas from here. Follows every commit through [`Inner::publish`].
    pub recent: RecentLog,
    /// The values log (format 3, `vlog.rs`): large values, appended.
    pub vlog: Arc<ValuesLog>,
    /// When compaction last looked for work (`Inner::compact_if_due`).
    pub(super) last_compact_check: Mutex<Option<Instant>>,
}

impl Inner {
    pub fn lock_meta(&self) -> MutexGuard<'_, Meta> {
        // A panic while holding the lock happens before a commit (the transaction is then
        // dropped, i.e. aborted) or after the cache update: the value is never half-updated.
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install `new` as the committed bookkeeping. Call with the `meta` guard, after commit.
    pub fn publish(&self, guard: &mut MutexGuard<'_, Meta>, new: Meta) {
        **guard = new;
        self.recent.sync(&new);
        *self.position.write().unwrap_or_else(|e| e.into_inner()) = new.position;
        *self.visible.write().unwrap_or_else(|e| e.into_inner()) = new.position;
        self.newest_epoch.store(new.newest_epoch, Ordering::Release);
        self.head
            .send_if_modified(|h| std::mem::replace(h, new.position) != new.position);
    }

    /// Early visibility: `pos` may be read from now on (call before the commit that shows it).
    pub fn raise_visible(&self, pos: Position) {
        *self.visible.write().unwrap_or_else(|e| e.into_inner()) = pos;
    }

    /// Wake the waiters of [`DataStore::subscribe`] for a batch that is visible, not yet durable.
    pub fn signal_visible(&self, pos: Position) {
        self.head.send_if_modified(|h| std::mem::replace(h, pos) != pos);
    }

    pub(crate) fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checkpoint (see `journal.rs`): make redb durable, then empty the journal. Call with the
    /// `meta` guard; a no-op when the journal is empty.
    pub fn checkpoint(&self, _held: &MutexGuard<'_, Meta>) -> Result<(), DataError> {
        let mut journal = self.journal();
        if journal.is_empty() {
            return Ok(());
        }
        // An empty durable commit: redb makes every earlier non-durable commit durable with it.
        begin_write(&self.db)?
            .commit()
            .ctx("checkpoint: durable commit of the journaled batches")?;
        self.empty_journal(&mut journal)
    }

    /// [`Inner::checkpoint`] once the journal is old or large enough (`journal.rs`), after a
    /// batch that is durable already (journal): a failed checkpoint is only logged and retried
    /// after the next batch, and the journal keeps everything meanwhile.
    pub fn checkpoint_if_due(&self, held: &MutexGuard<'_, Meta>) {
        if self.journal().due() {
            if let Err(e) = self.checkpoint(held) {
                tracing::warn!(error = %e, "datastore checkpoint failed; the journal keeps every batch since the last one");
            }
        }
        self.compact_if_due(held);
    }

    /// The values log's part of a write transaction, for `hold`: `Some` in format 3.
    pub fn vlog_for_hold<'a, 'v>(&self, tx: &'a mut VlogTx<'v>) -> Option<&'a mut VlogTx<'v>> {
        (self.format >= 3).then_some(tx)
    }

    /// One step of values-log compaction (`vlog.rs`) if there is work: looked for at most every
    /// [`COMPACT_EVERY`], at once while a segment is being compacted. Call with the `meta` guard,
    /// after a batch; a failure is logged and the step tried again later.
    pub fn compact_if_due(&self, held: &MutexGuard<'_, Meta>) {
        if self.format < 3 || self.installing.load(Ordering::Acquire) {
            return;
        }
        {
            let mut last = self.last_compact_check.lock().unwrap_or_else(|e| e.into_inner());
            if !self.vlog.compacting() && last.is_some_and(|t| t.elapsed() < COMPACT_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.compact_step(held).map(drop) {
            self.vlog.reset_compaction();
            tracing::warn!(error = %e, "values log compaction step failed; it is tried again later");
        }
    }

    /// One compaction step; false when there was nothing to do.
    pub(super) fn compact_step(&self, _held: &MutexGuard<'_, Meta>) -> Result<bool, DataError> {
        if !self.vlog.compacting() {
            // Cheap look first: most of the time there is nothing to do, and a write transaction
            // would cost a durable commit.
            let rtx = redb::ReadableDatabase::begin_read(&self.db).ctx("begin read transaction")?;
            let live = read_live(&rtx.open_table(SEGMENTS).ctx("open value segments table")?)?;
            if !self.vlog.has_work(&live) {
                return Ok(false);
            }
        }
        // Durable: the copies (synced first by the backend, `vlog.rs`) and their new locations
        // are on disk before the emptied segment is removed.
        let tx = begin_write(&self.db)?;
        if self.installing.load(Ordering::Acquire) {
            // An install began while this waited for the write lock: its staged values are in
            // no books yet, so no segment may be judged by them now.
            tx.abort().ctx("abort values log compaction step")?;
            return Ok(false);
        }
        let retire = {
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            let mut segments = tx.open_table(SEGMENTS).ctx("open value segments table")?;
            self.vlog.compact_step(&mut values, &mut segments)?
        };
        tx.commit().ctx("commit values log compaction step")?;
        if let Some(segment) = retire {
            self.vlog.retire(segment);
        }
        Ok(true)
    }

    /// Append a batch (a primary's write batch, a replica's applied entries: `what`) to the
    /// journal and fdatasync it, and count it. Returns the journal's length before, to cut the
    /// batch out again if the redb commit that follows fails.
    pub fn journal_append(&self, source_epoch: u64, entries: &[Entry], what: &str) -> Result<u64, DataError> {
        let mut journal = self.journal();
        let mark = journal
            .append(source_epoch, entries)
            .map_err(|e| DataError::Storage(format!("journal {what} in {}: {e}", journal.path().display())))?;
        self.stats.journal_appends.fetch_add(1, Ordering::Relaxed);
        Ok(mark)
    }

    /// Truncate the journal after a durable commit, and count the checkpoint.
    fn empty_journal(&self, journal: &mut Journal) -> Result<(), DataError> {
        journal
            .truncate_to(0)
            .map_err(|e| DataError::Storage(format!("checkpoint: empty {}: {e}", journal.path().display())))?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A durable commit just made everything journaled durable in redb: empty the journal (not
    /// needed for correctness, a replay would skip those entries; a failure is only logged).
    pub fn journal_superseded(&self) {
        let mut journal = self.journal();
        if !journal.is_empty() {
            if let Err(e) = self.empty_journal(&mut journal) {
                tracing::warn!(error = %e, "could not empty the datastore journal");
            }
        }
    }

    /// After a failed commit, redb's state is what the last successful commit wrote: reload it.
    pub fn reload_meta(&self, guard: &mut MutexGuard<'_, Meta>) {
        match load_meta(&self.db) {
            Ok(m) => self.publish(guard, m),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "reload datastore meta after a failed commit")
            }
        }
    }
}
