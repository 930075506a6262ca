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
//! - `values`: `(seq, chunk)` → bytes of the large values of format 2 (`values.rs`).
//! - `meta` also holds `format`, the datastore format this file is written in (absent: 1).
//!
//! Locks: `Inner::meta` (a mutex) is taken by every write transaction of this store, for the
//! whole transaction, and the in-memory caches are updated under it right after the commit. So
//! the cached [`Meta`] is always what the last commit wrote, and the writer thread, `apply`,
//! `trim`, `rollback_to` and snapshot install never interleave. Readers (`get`, `list`,
//! `read_log`, `snapshot`) take no lock: each uses one redb read transaction (MVCC) and reads the
//! meta it needs from that same transaction, so what it returns is consistent.

use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::journal::{Journal, JOURNAL_BATCH_MAX};
use crate::values::{hold, release, resolve, Held, StoredEntry, StoredKv, NEWEST_FORMAT, VALUES};
use crate::writer::WriterHandle;
use crate::{
    validate_key, validate_value, DataError, Entry, ListItem, ListPage, LogRead, Position, ValueMeta, WriteOp,
    WriteResult, MAX_LIST_LIMIT,
};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Where a snapshot is installed before it is swapped in for `kv` in one transaction.
pub(crate) const KV_STAGING: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_staging");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const DIVERGED: TableDefinition<u64, &[u8]> = TableDefinition::new("diverged");

const META_POSITION: &str = "position";
const META_NEWEST_EPOCH: &str = "newest_epoch";
const META_LOG_START: &str = "log_start";
const META_FORMAT: &str = "format";

/// Encoding of an inline `kv` record (format 1): `{pos, value}`, borrowing the value.
#[derive(Serialize)]
pub(crate) struct StoredValueRef<'a> {
    pub pos: Position,
    #[serde(with = "serde_bytes")]
    pub value: &'a [u8],
}

pub(crate) fn encode_value(pos: Position, value: &[u8]) -> Vec<u8> {
    encode(&StoredValueRef { pos, value })
}

/// The `kv` record of `key`, if any.
pub(crate) fn read_kv(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<StoredKv>, DataError> {
    match kv.get(key).ctx("read key")? {
        Some(g) => Ok(Some(StoredKv::decode(key, g.value())?)),
        None => Ok(None),
    }
}

/// A rolled-back entry in the `diverged` table.
#[derive(Debug, Serialize, Deserialize)]
struct DivergedRecord {
    at_ms: u64,
    entry: Entry,
}

/// Attach a verb phrase to a redb (or other) error.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, DataError>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, DataError> {
        self.map_err(|e| DataError::Storage(format!("{what}: {e}")))
    }
}

/// The persisted bookkeeping of the store (the `meta` table), cached in [`Inner::meta`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub position: Position,
    pub newest_epoch: u64,
    pub log_start: Position,
}

pub(crate) fn read_meta(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Meta, DataError> {
    fn get<T: for<'de> Deserialize<'de> + Default>(
        t: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<T, DataError> {
        match t.get(key).ctx("read meta")? {
            Some(v) => decode(v.value()).map_err(|e| DataError::Corrupt(format!("decode meta {key}: {e}"))),
            None => Ok(T::default()),
        }
    }
    Ok(Meta {
        position: get(t, META_POSITION)?,
        newest_epoch: get(t, META_NEWEST_EPOCH)?,
        log_start: get(t, META_LOG_START)?,
    })
}

pub(crate) fn write_meta(tx: &WriteTransaction, meta: &Meta) -> Result<(), DataError> {
    let mut t = tx.open_table(META).ctx("open meta table")?;
    t.insert(META_POSITION, encode(&meta.position).as_slice())
        .ctx("write position")?;
    t.insert(META_NEWEST_EPOCH, encode(&meta.newest_epoch).as_slice())
        .ctx("write newest epoch")?;
    t.insert(META_LOG_START, encode(&meta.log_start).as_slice())
        .ctx("write log start")?;
    Ok(())
}

/// Begin a write transaction that is durable on commit.
pub(crate) fn begin_write(db: &Database) -> Result<WriteTransaction, DataError> {
    let mut tx = db.begin_write().ctx("begin write transaction")?;
    // redb's default, stated so nobody has to look it up: commit() returns only after fdatasync.
    tx.set_durability(Durability::Immediate).ctx("set durability")?;
    Ok(tx)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

pub(crate) struct Inner {
    pub db: Database,
    pub path: PathBuf,
    /// Write lock and source of truth for the bookkeeping: see the module doc. Held for the whole
    /// of every write transaction; updated only after a successful commit.
    meta: Mutex<Meta>,
    /// Copy of `meta.position` for lock-free [`DataStore::position`], which must not wait for a
    /// batch's fsync. Written under `meta` after each commit.
    position: RwLock<Position>,
    /// Copy of `meta.newest_epoch`, same rule.
    newest_epoch: AtomicU64,
    /// Highest position a reader may see: `position`, or ahead of it while a write batch is visible
    /// but not yet durable (early visibility, see `writer.rs`). Raised before that batch's commit.
    visible: RwLock<Position>,
    /// Make write batches visible before they are durable (sync mode: see `writer.rs`).
    pub early_visibility: AtomicBool,
    /// `meta.position` for async waiters (replication long polls): sent right after each commit,
    /// from the committing thread, so a waiting pull wakes without waiting for the writer's
    /// caller to be scheduled first.
    head: tokio::sync::watch::Sender<Position>,
    pub stats: Stats,
    /// The datastore format this file is written in: 2 stores large values once (`values.rs`).
    pub format: u8,
    /// At most one snapshot install at a time (they share the staging table).
    pub installing: AtomicBool,
    /// Where replica applies become durable (`journal.rs`). Locked only under `meta`.
    journal: Mutex<Journal>,
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

fn load_meta(db: &Database) -> Result<Meta, DataError> {
    let rtx = db.begin_read().ctx("begin read transaction")?;
    let t = rtx.open_table(META).ctx("open meta table")?;
    read_meta(&t)
}

/// Check the log-shape invariant (see the module doc) so a broken file fails at open, not later.
fn check_log_shape(db: &Database, meta: &Meta) -> Result<(), DataError> {
    let rtx = db.begin_read().ctx("begin read transaction")?;
    let log = rtx.open_table(LOG).ctx("open log table")?;
    let first = log.first().ctx("read first log entry")?.map(|(k, _)| k.value());
    let last = log.last().ctx("read last log entry")?.map(|(k, _)| k.value());
    let len = log.len().ctx("count log entries")?;
    let ok = match (first, last) {
        (None, None) => meta.log_start == meta.position,
        (Some(f), Some(l)) => f == meta.log_start.seq + 1 && l == meta.position.seq && len == l - f + 1,
        _ => false,
    };
    if !ok || meta.log_start > meta.position || meta.position.epoch > meta.newest_epoch {
        return Err(DataError::Corrupt(format!(
            "change log holds seqs {first:?}..={last:?} ({len} entries) but meta says log start {} and position {} \
             (newest epoch {})",
            meta.log_start, meta.position, meta.newest_epoch
        )));
    }
    Ok(())
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
        DataStore::open_with_format(path, None)
    }

    /// [`DataStore::open`] with a datastore format (1 or 2, see `values.rs`). `None`: a new file
    /// gets [`NEWEST_FORMAT`], an existing one keeps the format it has (a file without a recorded
    /// format was written by a release that knew only format 1). `Some(2)` moves a format-1 file
    /// to format 2 (its old records stay as they are); `Some(1)` is refused for a format-2 file,
    /// which may already hold records a format-1 release cannot read.
    pub fn open_with_format(path: &Path, format: Option<u8>) -> Result<DataStore, DataError> {
        if let Some(f) = format {
            if !(1..=NEWEST_FORMAT).contains(&f) {
                return Err(DataError::Storage(format!(
                    "datastore format {f} is not supported (this build writes formats 1 to {NEWEST_FORMAT})"
                )));
            }
        }
        let existed = path.exists();
        let db = Database::create(path).ctx(&format!("open datastore {}", path.display()))?;
        // Create every table so that readers never see "table does not exist".
        let tx = begin_write(&db)?;
        tx.open_table(KV).ctx("create kv table")?;
        tx.open_table(LOG).ctx("create log table")?;
        tx.open_table(DIVERGED).ctx("create diverged table")?;
        tx.open_table(VALUES).ctx("create values table")?;
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
        tracing::info!(path = %path.display(), position = %meta.position, log_start = %meta.log_start,
            newest_epoch = meta.newest_epoch, format, "opened datastore");
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

    /// The value of `key` and its metadata, or `None` if absent.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ValueMeta)>, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let kv = rtx.open_table(KV).ctx("open kv table")?;
        let Some(stored) = read_kv(&kv, key)? else {
            return Ok(None);
        };
        let meta = ValueMeta {
            version: stored.pos.seq,
            pos: stored.pos,
        };
        let values = rtx.open_table(VALUES).ctx("open values table")?;
        Ok(Some((resolve(&values, stored.pos.seq, stored.held)?, meta)))
    }

    /// Keys starting with `prefix`, in byte order, strictly after `after` if given. `limit` is
    /// clamped to `1..=MAX_LIST_LIMIT`. `next` is set when more keys follow.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage, DataError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let kv = rtx.open_table(KV).ctx("open kv table")?;
        let range = match after {
            Some(a) if a >= prefix => kv.range::<&str>((Bound::Excluded(a), Bound::Unbounded)),
            _ => kv.range::<&str>(prefix..),
        }
        .ctx("list keys")?;
        let mut items = Vec::new();
        let mut more = false;
        for item in range {
            let (k, v) = item.ctx("list keys")?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let (pos, size) = StoredKv::meta(key, v.value())?;
            items.push(ListItem {
                key: key.to_string(),
                version: pos.seq,
                size,
            });
        }
        let next = if more {
            items.last().map(|i| i.key.clone())
        } else {
            None
        };
        Ok(ListPage { items, next })
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

    /// Entries strictly after `after`, at most `max_entries` and `max_bytes` (encoded size) but at
    /// least one entry if there is any. `Position::default()` means from the start.
    ///
    /// - `Trimmed` when `after` is older than the retained log (the reader needs a snapshot);
    /// - `Err(Fork)` when this node's entry at `after.seq` has another epoch, or when `after` is
    ///   beyond this node's position (the reader has entries this node never had);
    /// - `Entries(vec![])` when the reader is caught up.
    pub fn read_log(&self, after: Position, max_entries: usize, max_bytes: usize) -> Result<LogRead, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let meta = read_meta(&rtx.open_table(META).ctx("open meta table")?)?;
        let log = rtx.open_table(LOG).ctx("open log table")?;
        if after.seq < meta.log_start.seq {
            let oldest_retained = match log.first().ctx("read first log entry")? {
                Some((k, v)) => Some(StoredEntry::position(k.value(), v.value())?),
                None => None,
            };
            return Ok(LogRead::Trimmed { oldest_retained });
        }
        if after.seq > meta.position.seq {
            return Err(DataError::Fork { at: after, ours: None });
        }
        let ours = entry_position(&log, &meta, after.seq)?;
        if ours != Some(after) {
            return Err(DataError::Fork { at: after, ours });
        }
        let values = rtx.open_table(VALUES).ctx("open values table")?;
        let max_entries = max_entries.max(1);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in log.range(after.seq + 1..).ctx("read log")? {
            let (k, v) = item.ctx("read log")?;
            let stored = StoredEntry::decode(k.value(), v.value())?;
            // The size as sent (external values included), so a batch stays within max_bytes.
            let size = v.value().len()
                + [stored.value.as_ref(), stored.prev.as_ref().map(|p| &p.0)]
                    .into_iter()
                    .flatten()
                    .filter(|h| matches!(h, Held::External { .. }))
                    .map(|h| h.len() as usize)
                    .sum::<usize>();
            if entries.len() >= max_entries || (!entries.is_empty() && bytes + size > max_bytes) {
                break;
            }
            entries.push(stored.resolve(&values)?);
            bytes += size;
        }
        Ok(LogRead::Entries(entries))
    }

    /// Position of this node's log entry at `seq`: `Some` for the retained entries and for the
    /// log start (last trimmed entry or snapshot position), `None` otherwise. Lets the node walk
    /// back to the last common position after a [`DataError::Fork`].
    pub fn position_at(&self, seq: u64) -> Result<Option<Position>, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let meta = read_meta(&rtx.open_table(META).ctx("open meta table")?)?;
        let log = rtx.open_table(LOG).ctx("open log table")?;
        entry_position(&log, &meta, seq)
    }

    /// Replica apply of entries read from the primary of `source_epoch` (the epoch of the frame
    /// that carried them, i.e. the sender's primary epoch).
    ///
    /// Refuses a `source_epoch` older than the newest epoch seen (`StaleEpoch`: fencing rule 4),
    /// and entries from an epoch newer than `source_epoch`. Entries already applied (same
    /// position as this node's entry at that seq) are skipped, so re-delivery is a no-op; an
    /// entry whose seq this node has with another epoch is a `Fork`. The rest must continue
    /// exactly from `position()` (`Gap` otherwise) and be contiguous. One transaction for the
    /// whole batch together with the new position; durable before returning, through the replica
    /// journal for a batch up to `JOURNAL_BATCH_MAX` bytes, else through a durable commit
    /// (`journal.rs`). Blocking: run it off the async executor. Returns the new position.
    pub fn apply(&self, source_epoch: u64, entries: &[Entry]) -> Result<Position, DataError> {
        let mut guard = self.inner.lock_meta();
        // Small batches go through the journal; a large one is committed durably as before (its
        // bytes would be written twice, and its fsync is shared by many bytes anyway).
        let journaled = journaled_batch(entries);
        let (pos, committed) = self.apply_locked(&mut guard, source_epoch, entries, journaled)?;
        if !journaled && committed {
            // That durable commit made every journaled apply before it durable in redb too.
            self.inner.journal_superseded();
        } else {
            self.inner.checkpoint_if_due(&guard);
        }
        Ok(pos)
    }

    /// [`DataStore::apply`] under the write lock. `journaled`: durable through the journal (a
    /// small replica batch); else through a durable redb commit (a large batch, and the journal's
    /// own replay at open). Also says whether it committed (false: nothing new to apply).
    fn apply_locked(
        &self,
        guard: &mut MutexGuard<'_, Meta>,
        source_epoch: u64,
        entries: &[Entry],
        journaled: bool,
    ) -> Result<(Position, bool), DataError> {
        let meta = **guard;
        if source_epoch < meta.newest_epoch {
            return Err(DataError::StaleEpoch {
                epoch: source_epoch,
                current: meta.newest_epoch,
            });
        }
        check_batch(source_epoch, entries)?;

        let mut tx = begin_write(&self.inner.db)?;
        let mut new = meta;
        new.newest_epoch = source_epoch;
        // Skip what this node already has, checking that it really is the same entry.
        let mut skip = 0;
        {
            let mut kv = tx.open_table(KV).ctx("open kv table")?;
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            for e in entries.iter().take_while(|e| e.pos.seq <= meta.position.seq) {
                match entry_position(&log, &meta, e.pos.seq)? {
                    Some(ours) if ours != e.pos => {
                        return Err(DataError::Fork {
                            at: e.pos,
                            ours: Some(ours),
                        })
                    }
                    // Trimmed: cannot compare, but an epoch newer than all of ours cannot match.
                    None if e.pos.epoch > meta.position.epoch => return Err(DataError::Fork { at: e.pos, ours: None }),
                    _ => skip += 1,
                }
            }
            let rest = &entries[skip..];
            if let Some(first) = rest.first() {
                if first.pos.seq != meta.position.seq + 1 {
                    return Err(DataError::Gap {
                        expected: meta.position.seq + 1,
                        found: first.pos.seq,
                        position: meta.position,
                    });
                }
                if first.pos.epoch < meta.position.epoch {
                    // The sender's entry at our last seq has an epoch <= first.pos.epoch, so not ours.
                    return Err(DataError::Fork {
                        at: first.pos,
                        ours: Some(meta.position),
                    });
                }
            }
            let external = self.inner.format >= 2;
            for e in rest {
                let current = read_kv(&kv, &e.key)?;
                // The before-image is this node's own state: it is what a rollback here must
                // restore. (Compared by position: the position names the write, hence the value.)
                if current.as_ref().map(|c| c.pos) != e.prev.as_ref().map(|p| p.1) {
                    tracing::warn!(pos = %e.pos, key = %e.key,
                        "replica state differs from the primary's before-image; keeping the local one for rollback");
                }
                let prev = current.map(|c| (c.held, c.pos));
                let value = match &e.value {
                    Some(v) => {
                        let held = hold(&mut values, external, e.pos.seq, v.clone())?;
                        let record = StoredKv { pos: e.pos, held };
                        kv.insert(e.key.as_str(), record.encode().as_slice()).ctx("write key")?;
                        Some(record.held)
                    }
                    None => {
                        kv.remove(e.key.as_str()).ctx("delete key")?;
                        None
                    }
                };
                let entry = StoredEntry {
                    pos: e.pos,
                    key: e.key.clone(),
                    value,
                    prev,
                };
                log.insert(e.pos.seq, entry.encode().as_slice())
                    .ctx("append log entry")?;
                new.position = e.pos;
            }
        }
        if new == meta {
            return Ok((meta.position, false));
        }
        write_meta(&tx, &new)?;
        let mark = if journaled {
            // DURABILITY POINT of a replica apply: the new entries, appended to the journal and
            // fdatasynced (`journal.rs`). The redb commit below is not fsynced; a checkpoint makes
            // it durable later, and a restart before that applies the journal again.
            let mark = self
                .inner
                .journal_append(source_epoch, &entries[skip..], "applied entries")?;
            tx.set_durability(Durability::None).ctx("set durability")?;
            Some(mark)
        } else {
            // A durable commit, as before the journal.
            None
        };
        if let Err(e) = tx.commit() {
            if let Some(mark) = mark {
                // Not applied after all: the journal must not hold it either (best effort: a
                // batch left there is the primary's own entries, skipped or re-pulled later).
                let _ = self.inner.journal().truncate_to(mark);
            }
            self.inner.reload_meta(guard);
            return Err(DataError::Storage(format!("commit applied entries: {e}")));
        }
        self.inner.publish(guard, new);
        Ok((new.position, true))
    }

    /// Remember `epoch` as the newest epoch known, if it is newer (persisted before returning), so
    /// that writes and applies from older epochs are refused.
    pub fn observe_epoch(&self, epoch: u64) -> Result<(), DataError> {
        let mut guard = self.inner.lock_meta();
        if epoch <= guard.newest_epoch {
            return Ok(());
        }
        let new = Meta {
            newest_epoch: epoch,
            ..*guard
        };
        let tx = begin_write(&self.inner.db)?;
        write_meta(&tx, &new)?;
        tx.commit().ctx("commit newest epoch")?;
        self.inner.publish(&mut guard, new);
        Ok(())
    }

    /// Keep at most `keep` newest entries of the change log; returns how many were dropped.
    pub fn trim(&self, keep: u64) -> Result<u64, DataError> {
        let mut guard = self.inner.lock_meta();
        let meta = *guard;
        let len = meta.position.seq - meta.log_start.seq;
        if len <= keep {
            return Ok(0);
        }
        let cutoff = meta.position.seq - keep;
        let tx = begin_write(&self.inner.db)?;
        let mut new = meta;
        let mut dropped = 0u64;
        {
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            let cut = log
                .get(cutoff)
                .ctx("read log entry")?
                .ok_or_else(|| DataError::Corrupt(format!("log has no entry at seq {cutoff}")))?;
            new.log_start = StoredEntry::position(cutoff, cut.value())?;
            drop(cut);
            // A trimmed entry's before-image is needed by nobody now (see `values.rs`): release
            // its chunks. Only format-2 entries can name external values.
            let mut released = Vec::new();
            for item in log.range(..=cutoff).ctx("read log")? {
                let (k, v) = item.ctx("read log")?;
                if v.value().first() == Some(&crate::codec::FORMAT_EXTERNAL) {
                    if let Some((held, p)) = StoredEntry::decode(k.value(), v.value())?.prev {
                        released.push((p.seq, held));
                    }
                }
            }
            for (seq, held) in &released {
                release(&mut values, *seq, held)?;
            }
            log.retain_in(..=cutoff, |_, _| {
                dropped += 1;
                false
            })
            .ctx("trim log")?;
        }
        write_meta(&tx, &new)?;
        if let Err(e) = tx.commit() {
            self.inner.reload_meta(&mut guard);
            return Err(DataError::Storage(format!("commit log trim: {e}")));
        }
        self.inner.publish(&mut guard, new);
        tracing::debug!(dropped, log_start = %new.log_start, "trimmed datastore change log");
        Ok(dropped)
    }

    /// Divergence: roll back every entry after `fork` (newest first) using the before-images,
    /// move them to the `diverged` table (stamped with the time, unix ms), set the position to
    /// `fork`. One transaction. Returns the rolled-back entries in log order. `fork` must be a
    /// position this node has (its entry at `fork.seq`, or its log start); else `NotInLog`.
    pub fn rollback_to(&self, fork: Position) -> Result<Vec<Entry>, DataError> {
        let mut guard = self.inner.lock_meta();
        let meta = *guard;
        let not_in_log = || DataError::NotInLog {
            pos: fork,
            log_start: meta.log_start,
            position: meta.position,
        };
        if fork == meta.position {
            return Ok(Vec::new());
        }
        // The journal must not hold the entries rolled back here (a restart would apply them
        // again): checkpoint first, so it is empty.
        self.inner.checkpoint(&guard)?;
        let tx = begin_write(&self.inner.db)?;
        let at_ms = now_ms();
        let mut rolled = Vec::new();
        {
            let mut kv = tx.open_table(KV).ctx("open kv table")?;
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut diverged = tx.open_table(DIVERGED).ctx("open diverged table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            if entry_position(&log, &meta, fork.seq)? != Some(fork) {
                return Err(not_in_log());
            }
            // Record ids: ascending in log order within one rollback, after every earlier record.
            let base = match diverged.last().ctx("read diverged table")? {
                Some((k, _)) => k.value() + 1,
                None => 1,
            };
            for seq in (fork.seq + 1..=meta.position.seq).rev() {
                let stored = match log.remove(seq).ctx("remove log entry")? {
                    Some(v) => StoredEntry::decode(seq, v.value())?,
                    None => return Err(DataError::Corrupt(format!("log has no entry at seq {seq}"))),
                };
                // Newest first, so the key's current value must be exactly what this entry wrote.
                let current = read_kv(&kv, &stored.key)?.map(|c| c.pos);
                let entry = stored.clone().resolve(&values)?;
                let expected = entry.value.as_ref().map(|_| entry.pos);
                if current != expected {
                    return Err(DataError::Corrupt(format!(
                        "rolling back {}: key {:?} was last written at {current:?}, not by this entry",
                        entry.pos, entry.key
                    )));
                }
                match stored.prev {
                    Some((held, pos)) => kv
                        .insert(entry.key.as_str(), StoredKv { pos, held }.encode().as_slice())
                        .ctx("restore key")?,
                    None => kv.remove(entry.key.as_str()).ctx("restore key")?,
                };
                // This entry's own value is now only in the diverged record.
                if let Some(held) = &stored.value {
                    release(&mut values, seq, held)?;
                }
                let record = DivergedRecord { at_ms, entry };
                diverged
                    .insert(base + (seq - fork.seq - 1), encode(&record).as_slice())
                    .ctx("write diverged entry")?;
                rolled.push(record.entry);
            }
        }
        let new = Meta { position: fork, ..meta };
        write_meta(&tx, &new)?;
        // Durability point: the rollback and the kept copies of the rolled-back entries, together.
        if let Err(e) = tx.commit() {
            self.inner.reload_meta(&mut guard);
            return Err(DataError::Storage(format!("commit rollback: {e}")));
        }
        self.inner.publish(&mut guard, new);
        rolled.reverse();
        tracing::warn!(fork = %fork, from = %meta.position, entries = rolled.len(),
            "rolled back diverged datastore entries; they are kept in the diverged table");
        Ok(rolled)
    }

    /// Rolled-back entries with the time they were rolled back (unix ms), newest first.
    pub fn diverged(&self, limit: usize) -> Result<Vec<(u64, Entry)>, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let t = rtx.open_table(DIVERGED).ctx("open diverged table")?;
        let mut out = Vec::new();
        for item in t.iter().ctx("read diverged table")?.rev().take(limit) {
            let (k, v) = item.ctx("read diverged table")?;
            let r: DivergedRecord = decode(v.value())
                .map_err(|e| DataError::Corrupt(format!("decode diverged record {}: {e}", k.value())))?;
            out.push((r.at_ms, r.entry));
        }
        Ok(out)
    }
}

/// This node's position at `seq`, from the log or the log start (see [`DataStore::position_at`]).
fn entry_position(
    log: &impl ReadableTable<u64, &'static [u8]>,
    meta: &Meta,
    seq: u64,
) -> Result<Option<Position>, DataError> {
    if seq == meta.log_start.seq {
        return Ok(Some(meta.log_start));
    }
    if seq < meta.log_start.seq || seq > meta.position.seq {
        return Ok(None);
    }
    match log.get(seq).ctx("read log entry")? {
        Some(v) => Ok(Some(StoredEntry::position(seq, v.value())?)),
        None => Err(DataError::Corrupt(format!(
            "log has no entry at seq {seq} though it should hold {}..={}",
            meta.log_start.seq + 1,
            meta.position.seq
        ))),
    }
}

/// Shape checks of a replication batch that need no disk: contiguous, epochs non-decreasing and
/// not newer than the sender's, keys and values within limits.
fn check_batch(source_epoch: u64, entries: &[Entry]) -> Result<(), DataError> {
    let invalid = |m: String| Err(DataError::InvalidEntries(m));
    for w in entries.windows(2) {
        if w[1].pos.seq != w[0].pos.seq + 1 || w[1].pos.epoch < w[0].pos.epoch {
            return invalid(format!(
                "entry {} follows {}: entries must be contiguous",
                w[1].pos, w[0].pos
            ));
        }
    }
    for e in entries {
        if e.pos.seq == 0 {
            return invalid(format!("entry at {} has seq 0", e.pos));
        }
        if e.pos.epoch > source_epoch {
            return invalid(format!(
                "entry {} is from an epoch newer than its sender's ({source_epoch})",
                e.pos
            ));
        }
        validate_key(&e.key).map_err(|err| DataError::InvalidEntries(format!("entry {}: {err}", e.pos)))?;
        let len = e.value.as_ref().map_or(0, Vec::len);
        validate_value(len).map_err(|err| DataError::InvalidEntries(format!("entry {}: {err}", e.pos)))?;
    }
    Ok(())
}

/// Whether [`DataStore::apply`] makes `entries` durable through the journal (keys, values and
/// before-images up to 64 KiB): one small write and fdatasync, a short call that a caller may make
/// on an async worker thread. A larger batch is a durable redb commit of all its pages.
pub fn journaled_batch(entries: &[Entry]) -> bool {
    let bytes: usize = entries
        .iter()
        .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len) + e.prev.as_ref().map_or(0, |p| p.0.len()))
        .sum();
    bytes <= JOURNAL_BATCH_MAX
}

/// Apply one primary write inside the writer's batch transaction. `Ok(Err(..))` is a refusal of
/// this write only (CAS mismatch, stale epoch); `Err(..)` fails the whole batch. With `journal`,
/// the change-log entry of an applied write is also pushed there, for the journal record of the
/// batch (`writer.rs`); its before-image carries the position only, no bytes (a replay reads the
/// before-image from the store itself, see `apply_locked`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_write(
    kv: &mut Table<'_, &'static str, &'static [u8]>,
    log: &mut Table<'_, u64, &'static [u8]>,
    values: &mut Table<'_, (u64, u32), &'static [u8]>,
    external: bool,
    meta: &mut Meta,
    epoch: u64,
    op: WriteOp,
    journal: Option<&mut Vec<Entry>>,
) -> Result<Result<WriteResult, DataError>, DataError> {
    if epoch < meta.newest_epoch {
        return Ok(Err(DataError::StaleEpoch {
            epoch,
            current: meta.newest_epoch,
        }));
    }
    let current = read_kv(kv, op.key())?;
    // Reads inside the batch transaction see the batch's own earlier writes, so a CAS is checked
    // against them too.
    let current_version = current.as_ref().map_or(0, |c| c.pos.seq);
    let (key, value) = match op {
        WriteOp::Put { key, value } => (key, Some(value)),
        WriteOp::Delete { key } => (key, None),
        WriteOp::Cas {
            key,
            expected_version,
            value,
        } => {
            if expected_version != current_version {
                return Ok(Err(DataError::CasMismatch {
                    key,
                    expected: expected_version,
                    current: current_version,
                }));
            }
            (key, Some(value))
        }
    };
    let pos = Position {
        epoch,
        seq: meta.position.seq + 1,
    };
    if let Some(journal) = journal {
        journal.push(Entry {
            pos,
            key: key.clone(),
            value: value.clone(),
            prev: current.as_ref().map(|c| (Vec::new(), c.pos)),
        });
    }
    let value = match value {
        Some(v) => {
            let record = StoredKv {
                pos,
                held: hold(values, external, pos.seq, v)?,
            };
            kv.insert(key.as_str(), record.encode().as_slice()).ctx("write key")?;
            Some(record.held)
        }
        None => {
            kv.remove(key.as_str()).ctx("delete key")?;
            None
        }
    };
    let entry = StoredEntry {
        pos,
        key,
        value,
        prev: current.map(|c| (c.held, c.pos)),
    };
    log.insert(pos.seq, entry.encode().as_slice()).ctx("append log entry")?;
    meta.position = pos;
    meta.newest_epoch = epoch;
    Ok(Ok(WriteResult {
        pos,
        version: if entry.value.is_some() { pos.seq } else { 0 },
        existed: entry.prev.is_some(),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

    pub(crate) fn open_temp() -> (tempfile::TempDir, DataStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(&dir.path().join("data.redb")).unwrap();
        (dir, store)
    }

    pub(crate) fn put(key: &str, value: &[u8]) -> WriteOp {
        WriteOp::Put {
            key: key.to_string(),
            value: value.to_vec(),
        }
    }

    /// Everything a client can observe: every key (through paginated `list`) with `get`.
    pub(crate) fn dump(store: &DataStore) -> Vec<(String, Vec<u8>, ValueMeta)> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list("", after.as_deref(), 1000).unwrap();
            for item in &page.items {
                let (value, meta) = store.get(&item.key).unwrap().expect("listed key exists");
                assert_eq!(meta.version, item.version);
                assert_eq!(value.len() as u64, item.size);
                out.push((item.key.clone(), value, meta));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }

    /// Write many keys concurrently (group commit keeps this fast).
    pub(crate) async fn put_many(store: &DataStore, epoch: u64, items: Vec<(String, Vec<u8>)>) {
        let mut tasks = Vec::new();
        for (key, value) in items {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(epoch, WriteOp::Put { key, value }).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    fn entries(read: LogRead) -> Vec<Entry> {
        match read {
            LogRead::Entries(e) => e,
            other => panic!("expected entries, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn put_get_delete_cas() {
        let (_dir, s) = open_temp();
        assert_eq!(s.get("a").unwrap(), None);
        assert_eq!(s.position(), Position::default());

        let r = s.write(1, put("a", b"one")).await.unwrap();
        assert_eq!(
            r,
            WriteResult {
                pos: Position::new(1, 1),
                version: 1,
                existed: false
            }
        );
        let (v, m) = s.get("a").unwrap().unwrap();
        assert_eq!(
            (v.as_slice(), m),
            (
                &b"one"[..],
                ValueMeta {
                    version: 1,
                    pos: Position::new(1, 1)
                }
            )
        );

        let r = s.write(1, put("a", b"two")).await.unwrap();
        assert_eq!((r.version, r.existed), (2, true));
        assert_eq!(s.get("a").unwrap().unwrap().0, b"two");

        // CAS: 0 = must not exist.
        let err = s
            .write(
                1,
                WriteOp::Cas {
                    key: "a".into(),
                    expected_version: 0,
                    value: b"x".to_vec(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DataError::CasMismatch {
                key: "a".into(),
                expected: 0,
                current: 2
            }
        );
        let err = s
            .write(
                1,
                WriteOp::Cas {
                    key: "a".into(),
                    expected_version: 1,
                    value: b"x".to_vec(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DataError::CasMismatch {
                key: "a".into(),
                expected: 1,
                current: 2
            }
        );
        assert_eq!(s.get("a").unwrap().unwrap().0, b"two", "a failed CAS changes nothing");
        assert_eq!(s.position(), Position::new(1, 2), "a failed CAS takes no position");
        let r = s
            .write(
                1,
                WriteOp::Cas {
                    key: "a".into(),
                    expected_version: 2,
                    value: b"three".to_vec(),
                },
            )
            .await
            .unwrap();
        assert_eq!((r.pos, r.version, r.existed), (Position::new(1, 3), 3, true));
        let r = s
            .write(
                1,
                WriteOp::Cas {
                    key: "b".into(),
                    expected_version: 0,
                    value: b"new".to_vec(),
                },
            )
            .await
            .unwrap();
        assert_eq!((r.version, r.existed), (4, false));
        let err = s
            .write(
                1,
                WriteOp::Cas {
                    key: "c".into(),
                    expected_version: 7,
                    value: b"x".to_vec(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DataError::CasMismatch {
                key: "c".into(),
                expected: 7,
                current: 0
            }
        );

        let r = s.write(1, WriteOp::Delete { key: "a".into() }).await.unwrap();
        assert_eq!(
            r,
            WriteResult {
                pos: Position::new(1, 5),
                version: 0,
                existed: true
            }
        );
        assert_eq!(s.get("a").unwrap(), None);
        let r = s.write(1, WriteOp::Delete { key: "a".into() }).await.unwrap();
        assert!(!r.existed);

        // Epochs: a newer epoch is adopted, an older one refused afterwards.
        let r = s.write(3, put("b", b"e3")).await.unwrap();
        assert_eq!(r.pos, Position::new(3, 7));
        assert_eq!(s.newest_epoch(), 3);
        assert_eq!(
            s.write(2, put("b", b"e2")).await.unwrap_err(),
            DataError::StaleEpoch { epoch: 2, current: 3 }
        );
        s.observe_epoch(5).unwrap();
        assert_eq!(
            s.write(4, put("b", b"e4")).await.unwrap_err(),
            DataError::StaleEpoch { epoch: 4, current: 5 }
        );
        assert_eq!(
            s.get("b").unwrap().unwrap().1,
            ValueMeta {
                version: 7,
                pos: Position::new(3, 7)
            }
        );
    }

    #[tokio::test]
    async fn size_limits_and_empty_key() {
        let (_dir, s) = open_temp();
        let k1024 = "k".repeat(MAX_KEY_BYTES);
        let k1025 = "k".repeat(MAX_KEY_BYTES + 1);
        s.write(1, put(&k1024, b"v")).await.unwrap();
        assert_eq!(s.get(&k1024).unwrap().unwrap().0, b"v");
        assert_eq!(
            s.write(1, put(&k1025, b"v")).await.unwrap_err(),
            DataError::KeyTooLarge { len: 1025, max: 1024 }
        );
        assert_eq!(
            s.write(1, WriteOp::Delete { key: k1025.clone() }).await.unwrap_err(),
            DataError::KeyTooLarge { len: 1025, max: 1024 }
        );

        let big = vec![7u8; MAX_VALUE_BYTES];
        s.write(1, put("big", &big)).await.unwrap();
        assert_eq!(s.get("big").unwrap().unwrap().0, big);
        let too_big = vec![7u8; MAX_VALUE_BYTES + 1];
        assert_eq!(
            s.write(1, put("big", &too_big)).await.unwrap_err(),
            DataError::ValueTooLarge {
                len: MAX_VALUE_BYTES + 1,
                max: MAX_VALUE_BYTES
            }
        );
        assert_eq!(
            s.write(
                1,
                WriteOp::Cas {
                    key: "c".into(),
                    expected_version: 0,
                    value: too_big
                }
            )
            .await
            .unwrap_err(),
            DataError::ValueTooLarge {
                len: MAX_VALUE_BYTES + 1,
                max: MAX_VALUE_BYTES
            }
        );

        assert_eq!(s.write(1, put("", b"v")).await.unwrap_err(), DataError::EmptyKey);
        assert_eq!(
            s.write(1, WriteOp::Delete { key: String::new() }).await.unwrap_err(),
            DataError::EmptyKey
        );
        assert_eq!(s.position(), Position::new(1, 2), "refused writes take no position");
        let page = s.list("", None, 10).unwrap();
        let sizes: Vec<_> = page.items.iter().map(|i| (i.key.len(), i.size)).collect();
        assert_eq!(sizes, vec![(3, MAX_VALUE_BYTES as u64), (1024, 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn list_prefix_after_limit_and_pagination() {
        let (_dir, s) = open_temp();
        let mut items: Vec<(String, Vec<u8>)> = (0..2500).map(|i| (format!("a/{i:05}"), vec![1; i % 7])).collect();
        items.push(("a".into(), b"bare".to_vec()));
        items.push(("a0".into(), b"after the prefix".to_vec()));
        items.push(("b/1".into(), b"other".to_vec()));
        items.push(("0".into(), b"before".to_vec()));
        put_many(&s, 1, items).await;

        // Pagination with the default cap: 1000 + 1000 + 500, in byte order, no duplicates.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s.list("a/", after.as_deref(), 5000).unwrap();
            assert!(page.items.len() <= 1000, "limit is capped at 1000");
            pages += 1;
            seen.extend(page.items.iter().map(|i| i.key.clone()));
            match page.next {
                Some(n) => {
                    assert_eq!(Some(&n), seen.last());
                    after = Some(n);
                }
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let expected: Vec<String> = (0..2500).map(|i| format!("a/{i:05}")).collect();
        assert_eq!(seen, expected);

        // Small limit, `after` inside the prefix, sizes and versions.
        let page = s.list("a/", Some("a/00010"), 3).unwrap();
        let keys: Vec<_> = page.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["a/00011", "a/00012", "a/00013"]);
        assert_eq!(page.next.as_deref(), Some("a/00013"));
        assert_eq!(page.items[0].size, (11 % 7) as u64);
        assert_eq!(page.items[0].version, s.get("a/00011").unwrap().unwrap().1.version);

        // The last page has no `next`, even when it is exactly full.
        let page = s.list("a/", Some("a/02497"), 2).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next, None);

        // `after` before the prefix starts at the prefix; after past it gives nothing.
        let page = s.list("a/", Some("0"), 1).unwrap();
        assert_eq!(page.items[0].key, "a/00000");
        assert!(s.list("a/", Some("a0"), 10).unwrap().items.is_empty());
        let all: Vec<_> = s
            .list("a", Some("a/02499"), 10)
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(all, ["a0"]);
        let b: Vec<_> = s
            .list("b", None, 10)
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(b, ["b/1"]);
        assert_eq!(s.list("", None, 1).unwrap().items[0].key, "0");
        assert!(s.list("zzz", None, 10).unwrap().items.is_empty());
    }

    #[tokio::test]
    async fn reopen_keeps_contents_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.redb");
        let (before, pos, epoch) = {
            let s = DataStore::open(&path).unwrap();
            for i in 0..20 {
                s.write(2, put(&format!("k{i}"), format!("v{i}").as_bytes()))
                    .await
                    .unwrap();
            }
            s.write(2, WriteOp::Delete { key: "k3".into() }).await.unwrap();
            s.observe_epoch(4).unwrap();
            (dump(&s), s.position(), s.newest_epoch())
        };
        assert_eq!(pos, Position::new(2, 21));
        let s = DataStore::open(&path).unwrap();
        assert_eq!(s.position(), pos);
        assert_eq!(s.newest_epoch(), epoch);
        assert_eq!(dump(&s), before);
        assert_eq!(before.len(), 19);
        // The log survived too, and writing continues from the persisted position.
        assert_eq!(
            entries(s.read_log(Position::default(), 100, usize::MAX).unwrap()).len(),
            21
        );
        assert_eq!(s.write(4, put("k", b"v")).await.unwrap().pos, Position::new(4, 22));
    }

    #[tokio::test]
    async fn read_log_pages_trims_and_detects_forks() {
        let (_dir, s) = open_temp();
        for i in 1..=10u8 {
            s.write(1, put(&format!("k{i}"), &[i; 100])).await.unwrap();
        }
        // Empty log read from the start and a caught-up reader.
        let all = entries(s.read_log(Position::default(), 100, usize::MAX).unwrap());
        assert_eq!(all.len(), 10);
        assert_eq!(
            all.iter().map(|e| e.pos.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(all[3].value.as_deref(), Some(&[4u8; 100][..]));
        assert!(entries(s.read_log(Position::new(1, 10), 100, usize::MAX).unwrap()).is_empty());

        // Pagination by count.
        let page = entries(s.read_log(Position::new(1, 2), 3, usize::MAX).unwrap());
        assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3, 4, 5]);
        // Pagination by bytes: each entry encodes to a bit over 100 bytes, so 250 holds two.
        let page = entries(s.read_log(Position::new(1, 2), 100, 250).unwrap());
        assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3, 4]);
        // At least one entry even when it alone exceeds max_bytes.
        let page = entries(s.read_log(Position::new(1, 2), 100, 1).unwrap());
        assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3]);
        // max_entries 0 still makes progress.
        assert_eq!(
            entries(s.read_log(Position::new(1, 2), 0, usize::MAX).unwrap()).len(),
            1
        );

        // Fork: same seq, another epoch; and a reader ahead of us.
        assert_eq!(
            s.read_log(Position::new(2, 5), 10, usize::MAX).unwrap_err(),
            DataError::Fork {
                at: Position::new(2, 5),
                ours: Some(Position::new(1, 5))
            }
        );
        assert_eq!(
            s.read_log(Position::new(1, 11), 10, usize::MAX).unwrap_err(),
            DataError::Fork {
                at: Position::new(1, 11),
                ours: None
            }
        );

        // Trim to the 4 newest entries: seqs 7..=10 remain, 6 is the log start.
        assert_eq!(s.trim(4).unwrap(), 6);
        assert_eq!(s.trim(4).unwrap(), 0);
        assert_eq!(
            s.read_log(Position::default(), 10, usize::MAX).unwrap(),
            LogRead::Trimmed {
                oldest_retained: Some(Position::new(1, 7))
            }
        );
        assert_eq!(
            s.read_log(Position::new(1, 5), 10, usize::MAX).unwrap(),
            LogRead::Trimmed {
                oldest_retained: Some(Position::new(1, 7))
            }
        );
        // after = oldest retained - 1 still works, and a fork at that seq is still detected.
        let page = entries(s.read_log(Position::new(1, 6), 10, usize::MAX).unwrap());
        assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert_eq!(
            s.read_log(Position::new(2, 6), 10, usize::MAX).unwrap_err(),
            DataError::Fork {
                at: Position::new(2, 6),
                ours: Some(Position::new(1, 6))
            }
        );
        assert_eq!(s.position_at(6).unwrap(), Some(Position::new(1, 6)));
        assert_eq!(s.position_at(5).unwrap(), None);
        assert_eq!(s.position_at(8).unwrap(), Some(Position::new(1, 8)));
        assert_eq!(s.get("k2").unwrap().unwrap().0, [2u8; 100], "trim keeps the data");

        // Trim everything; survives reopen (log start persisted) and writes continue.
        assert_eq!(s.trim(0).unwrap(), 4);
        assert_eq!(
            s.read_log(Position::new(1, 9), 10, usize::MAX).unwrap(),
            LogRead::Trimmed { oldest_retained: None }
        );
        assert!(entries(s.read_log(Position::new(1, 10), 10, usize::MAX).unwrap()).is_empty());
        s.write(1, put("k11", b"x")).await.unwrap();
        let page = entries(s.read_log(Position::new(1, 10), 10, usize::MAX).unwrap());
        assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [11]);
    }

    /// A primary with `n` writes, its entries, and an empty replica file next to it.
    async fn journal_fixture(n: usize) -> (tempfile::TempDir, DataStore, Vec<Entry>, PathBuf) {
        let (dir, primary) = open_temp();
        for i in 0..n {
            let value = if i % 3 == 0 {
                vec![i as u8; 3000]
            } else {
                format!("v{i}").into_bytes()
            };
            primary.write(1, put(&format!("k{}", i % 4), &value)).await.unwrap();
        }
        let all = entries(primary.read_log(Position::default(), 100, usize::MAX).unwrap());
        let replica = dir.path().join("replica.redb");
        (dir, primary, all, replica)
    }

    #[tokio::test]
    async fn replica_applies_are_journaled_and_checkpointed() {
        let (_dir, primary, all, path) = journal_fixture(6).await;
        let replica = DataStore::open(&path).unwrap();
        let journal = Journal::path_for(&path);
        replica.apply(1, &all[..2]).unwrap();
        replica.apply(1, &all[2..4]).unwrap();
        let held = Journal::read(&journal).unwrap();
        assert_eq!(held.batches.len(), 2, "each apply is one journal record");
        assert_eq!(held.batches[1].1, all[2..4].to_vec());
        // Re-delivered entries are not journaled again.
        replica.apply(1, &all[3..5]).unwrap();
        let held = Journal::read(&journal).unwrap();
        assert_eq!(held.batches.len(), 3);
        assert_eq!(held.batches[2].1, all[4..5].to_vec());
        // Once CHECKPOINT_EVERY has passed, the next apply checkpoints: the journal is emptied.
        std::thread::sleep(crate::journal::CHECKPOINT_EVERY + std::time::Duration::from_millis(20));
        replica.apply(1, &all[5..]).unwrap();
        assert!(Journal::read(&journal).unwrap().batches.is_empty());
        assert_eq!(dump(&replica), dump(&primary));

        // A large batch is committed durably instead, which also empties the journal.
        primary.write(1, put("small", b"s")).await.unwrap();
        primary
            .write(1, put("large", &vec![9u8; crate::journal::JOURNAL_BATCH_MAX + 1]))
            .await
            .unwrap();
        let more = entries(primary.read_log(replica.position(), 10, usize::MAX).unwrap());
        replica.apply(1, &more[..1]).unwrap();
        assert_eq!(Journal::read(&journal).unwrap().batches.len(), 1);
        replica.apply(1, &more[1..]).unwrap();
        assert!(Journal::read(&journal).unwrap().batches.is_empty());
        drop(replica);
        let replica = DataStore::open(&path).unwrap();
        assert_eq!(dump(&replica), dump(&primary));
    }

    #[tokio::test]
    async fn the_journal_is_applied_again_at_open() {
        let (_dir, primary, all, path) = journal_fixture(8).await;
        let replica = DataStore::open(&path).unwrap();
        replica.apply(1, &all[..3]).unwrap();
        drop(replica);
        // What a crash leaves behind when redb lost the non-durable commits of two applies that
        // the journal has: a record redb already has (before the crash a later durable commit
        // took it along), one it lacks, and one cut short while it was appended.
        let journal = Journal::path_for(&path);
        let mut j = Journal::new(&path);
        j.append(1, &all[1..3]).unwrap();
        j.append(1, &all[3..6]).unwrap();
        j.append(1, &all[6..]).unwrap();
        crate::journal::tests::scribble(&journal, j.end_offset() - 5, 5, 0);

        let replica = DataStore::open(&path).unwrap();
        assert_eq!(
            replica.position(),
            all[5].pos,
            "the whole records are applied, the cut one is not"
        );
        assert_eq!(
            entries(replica.read_log(Position::default(), 100, usize::MAX).unwrap()),
            all[..6].to_vec()
        );
        assert!(
            Journal::read(&journal).unwrap().batches.is_empty(),
            "checkpointed after the replay"
        );
        replica.apply(1, &all[6..]).unwrap();
        assert_eq!(dump(&replica), dump(&primary));
        // A newer epoch became known after those applies (a durable commit): the journal's
        // records, all in redb now, are of an older epoch. They are skipped, not refused.
        replica.observe_epoch(2).unwrap();
        assert!(!Journal::read(&journal).unwrap().batches.is_empty());
        drop(replica);
        // Opening again applies nothing twice.
        let replica = DataStore::open(&path).unwrap();
        assert_eq!(replica.position(), primary.position());
        assert_eq!(dump(&replica), dump(&primary));
        let rejected = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("rejected"))
            .count();
        assert_eq!(rejected, 0, "a journal of known entries is not rejected");
    }

    #[tokio::test]
    async fn a_journal_that_does_not_fit_is_kept_aside_not_applied() {
        let (_dir, _primary, all, path) = journal_fixture(6).await;
        let replica = DataStore::open(&path).unwrap();
        replica.apply(1, &all[..2]).unwrap();
        let before = dump(&replica);
        drop(replica);
        // A record that skips entries (a gap after seq 2), and one that names another entry at
        // a seq this store has (a fork): neither may be applied.
        for bad in [all[3..5].to_vec(), {
            let mut e = all[1].clone();
            e.pos = Position::new(2, e.pos.seq);
            vec![e]
        }] {
            let mut j = Journal::new(&path);
            j.append(1, &bad).unwrap();
            let replica = DataStore::open(&path).unwrap();
            assert_eq!(replica.position(), all[1].pos);
            assert_eq!(dump(&replica), before);
            assert!(!Journal::path_for(&path).exists(), "moved aside");
            drop(replica);
        }
        let aside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("replica.redb.journal.rejected-"))
            .collect();
        assert!(!aside.is_empty(), "the rejected journals are kept: {aside:?}");
    }

    #[tokio::test]
    async fn rollback_and_snapshot_install_empty_the_journal_first() {
        let (_dir, primary, all, path) = journal_fixture(6).await;
        let replica = DataStore::open(&path).unwrap();
        replica.apply(1, &all).unwrap();
        let journal = Journal::path_for(&path);
        assert!(!Journal::read(&journal).unwrap().batches.is_empty());
        replica.rollback_to(all[2].pos).unwrap();
        assert!(
            Journal::read(&journal).unwrap().batches.is_empty(),
            "a restart must not apply the rolled-back entries again"
        );
        drop(replica);
        let replica = DataStore::open(&path).unwrap();
        assert_eq!(replica.position(), all[2].pos);

        replica.apply(1, &all[3..]).unwrap();
        assert!(!Journal::read(&journal).unwrap().batches.is_empty());
        let mut inst = replica.begin_install().unwrap();
        let mut reader = primary.snapshot().unwrap();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            inst.push_chunk(&chunk).unwrap();
        }
        inst.finish().unwrap();
        assert!(Journal::read(&journal).unwrap().batches.is_empty());
        assert_eq!(dump(&replica), dump(&primary));
    }

    #[tokio::test]
    async fn replica_apply_matches_primary() {
        let (_d1, primary) = open_temp();
        let (_d2, replica) = open_temp();
        for i in 0..30 {
            primary
                .write(1, put(&format!("k{}", i % 12), format!("v{i}").as_bytes()))
                .await
                .unwrap();
        }
        primary.write(1, WriteOp::Delete { key: "k5".into() }).await.unwrap();
        primary
            .write(
                1,
                WriteOp::Cas {
                    key: "k6".into(),
                    expected_version: 19,
                    value: b"cas".to_vec(),
                },
            )
            .await
            .unwrap();
        primary.write(2, put("k7", b"epoch2")).await.unwrap();

        // Stream it in small batches, as the apply worker would.
        let mut batches = Vec::new();
        loop {
            let batch = entries(primary.read_log(replica.position(), 7, usize::MAX).unwrap());
            if batch.is_empty() {
                break;
            }
            let pos = replica.apply(2, &batch).unwrap();
            assert_eq!(pos, batch.last().unwrap().pos);
            batches.push(batch);
        }
        assert!(batches.len() > 1);
        assert_eq!(replica.position(), primary.position());
        assert_eq!(replica.position(), Position::new(2, 33));
        assert_eq!(dump(&replica), dump(&primary));
        assert_eq!(dump(&replica).len(), 11);
        // The replica's log is the primary's log (so it can serve it after a failover).
        assert_eq!(
            replica.read_log(Position::default(), 100, usize::MAX).unwrap(),
            primary.read_log(Position::default(), 100, usize::MAX).unwrap()
        );

        // Re-delivery is a no-op, also when it overlaps new entries.
        let before = dump(&replica);
        assert_eq!(replica.apply(2, &batches[1]).unwrap(), Position::new(2, 33));
        assert_eq!(dump(&replica), before);
        primary.write(2, put("k8", b"new")).await.unwrap();
        let mut overlap = batches.last().unwrap().clone();
        overlap.extend(entries(primary.read_log(Position::new(2, 33), 10, usize::MAX).unwrap()));
        assert_eq!(replica.apply(2, &overlap).unwrap(), Position::new(2, 34));
        assert_eq!(dump(&replica), dump(&primary));

        // A gap is refused.
        primary.write(2, put("k9", b"a")).await.unwrap();
        primary.write(2, put("k9", b"b")).await.unwrap();
        let tail = entries(primary.read_log(Position::new(2, 35), 10, usize::MAX).unwrap());
        assert_eq!(
            replica.apply(2, &tail).unwrap_err(),
            DataError::Gap {
                expected: 35,
                found: 36,
                position: Position::new(2, 34)
            }
        );
        // Non-contiguous batches are refused before touching disk.
        let all = entries(primary.read_log(Position::new(2, 34), 10, usize::MAX).unwrap());
        let holey = vec![all[0].clone(), all[1].clone(), all[0].clone()];
        assert!(matches!(replica.apply(2, &holey), Err(DataError::InvalidEntries(_))));
        // A stale epoch (a deposed primary's frame) is refused, and so is an entry claiming an
        // epoch newer than its sender's.
        replica.observe_epoch(3).unwrap();
        assert_eq!(
            replica.apply(2, &all).unwrap_err(),
            DataError::StaleEpoch { epoch: 2, current: 3 }
        );
        assert_eq!(replica.position(), Position::new(2, 34));
        let mut future = all.clone();
        future[0].pos.epoch = 4;
        future[1].pos.epoch = 4;
        assert!(matches!(replica.apply(3, &future), Err(DataError::InvalidEntries(_))));
        // The primary of epoch 3 may still send entries of epoch 2 (written before the failover).
        assert_eq!(replica.apply(3, &all).unwrap(), Position::new(2, 36));
        assert_eq!(dump(&replica), dump(&primary));
        // A replica that already has another epoch at that seq reports a fork.
        let mut forked = all.clone();
        forked[1].pos.epoch = 3;
        assert_eq!(
            replica.apply(3, &forked[1..]).unwrap_err(),
            DataError::Fork {
                at: Position::new(3, 36),
                ours: Some(Position::new(2, 36))
            }
        );
        assert_eq!(replica.newest_epoch(), 3);
    }

    #[tokio::test]
    async fn divergence_rollback_keeps_diverged_entries() {
        let (_da, a) = open_temp();
        let (_db, b) = open_temp();
        // A, primary of epoch 1, writes (1,1)..(1,5); B applies (1,1)..(1,3).
        a.write(1, put("x", b"x1")).await.unwrap();
        a.write(1, put("y", b"y2")).await.unwrap();
        a.write(1, put("z", b"z3")).await.unwrap();
        a.write(1, put("x", b"x4-lost")).await.unwrap();
        a.write(1, put("w", b"w5-lost")).await.unwrap();
        let a_log = entries(a.read_log(Position::default(), 100, usize::MAX).unwrap());
        assert_eq!(a_log.len(), 5);
        b.apply(1, &a_log[..3]).unwrap();
        let b_at_fork = dump(&b);
        assert_eq!(b.position(), Position::new(1, 3));

        // A dies. B becomes primary of epoch 2 and writes (2,4), (2,5).
        b.observe_epoch(2).unwrap();
        b.write(2, put("x", b"x-b")).await.unwrap();
        b.write(2, put("v", b"v-b")).await.unwrap();
        assert_eq!(b.position(), Position::new(2, 5));

        // A comes back and reads from B: fork detected at its position.
        a.observe_epoch(2).unwrap();
        assert_eq!(
            b.read_log(a.position(), 100, usize::MAX).unwrap_err(),
            DataError::Fork {
                at: Position::new(1, 5),
                ours: Some(Position::new(2, 5))
            }
        );
        assert_eq!(b.position_at(3).unwrap(), a.position_at(3).unwrap());
        assert_ne!(b.position_at(4).unwrap(), a.position_at(4).unwrap());

        // Rolling back to a position A does not have is refused.
        assert!(matches!(
            a.rollback_to(Position::new(2, 3)),
            Err(DataError::NotInLog { .. })
        ));
        let rolled = a.rollback_to(Position::new(1, 3)).unwrap();
        assert_eq!(rolled, a_log[3..].to_vec());
        assert_eq!(a.position(), Position::new(1, 3));
        assert_eq!(dump(&a), b_at_fork, "A equals B's state at the fork point");
        assert_eq!(
            a.get("x").unwrap().unwrap(),
            (
                b"x1".to_vec(),
                ValueMeta {
                    version: 1,
                    pos: Position::new(1, 1)
                }
            )
        );
        assert_eq!(a.get("w").unwrap(), None);

        // The diverged table holds A's entries 4 and 5 with their values, newest first.
        let div = a.diverged(100).unwrap();
        let div_entries: Vec<_> = div.iter().rev().map(|(_, e)| e.clone()).collect();
        assert_eq!(div_entries, a_log[3..].to_vec());
        assert_eq!(div[1].1.pos, Position::new(1, 4));
        assert_eq!(div[1].1.value.as_deref(), Some(&b"x4-lost"[..]));
        assert_eq!(div[0].1.value.as_deref(), Some(&b"w5-lost"[..]));
        assert!(div.iter().all(|(at, _)| *at > 1_600_000_000_000));
        assert_eq!(a.diverged(1).unwrap().len(), 1);

        // A now follows B and converges.
        let from_b = entries(b.read_log(a.position(), 100, usize::MAX).unwrap());
        assert_eq!(
            from_b.iter().map(|e| e.pos).collect::<Vec<_>>(),
            [Position::new(2, 4), Position::new(2, 5)]
        );
        a.apply(2, &from_b).unwrap();
        assert_eq!(a.position(), b.position());
        assert_eq!(dump(&a), dump(&b));

        // The log after the fork was replaced, not appended to.
        assert_eq!(
            a.read_log(Position::default(), 100, usize::MAX).unwrap(),
            b.read_log(Position::default(), 100, usize::MAX).unwrap()
        );
        // A no-op rollback to the current position.
        assert!(a.rollback_to(a.position()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn rollback_restores_overwritten_and_deleted_keys_in_order() {
        let (_d, s) = open_temp();
        s.write(1, put("k", b"1")).await.unwrap();
        let base = dump(&s);
        s.write(1, put("k", b"2")).await.unwrap();
        s.write(1, WriteOp::Delete { key: "k".into() }).await.unwrap();
        s.write(1, put("k", b"4")).await.unwrap();
        s.write(1, put("j", b"5")).await.unwrap();
        s.rollback_to(Position::new(1, 1)).unwrap();
        assert_eq!(dump(&s), base);
        // Cannot roll back behind the retained log.
        s.write(1, put("k", b"6")).await.unwrap();
        s.write(1, put("k", b"7")).await.unwrap();
        s.trim(1).unwrap();
        assert!(matches!(
            s.rollback_to(Position::new(1, 1)),
            Err(DataError::NotInLog { .. })
        ));
        // To the log start itself is fine.
        let rolled = s.rollback_to(Position::new(1, 2)).unwrap();
        assert_eq!(rolled.len(), 1);
        assert_eq!(s.get("k").unwrap().unwrap().0, b"6");
        assert_eq!(s.diverged(100).unwrap().len(), 5);
    }

    /// Distinct seqs with chunks in the `values` table.
    fn value_chunks(store: &DataStore) -> Vec<u64> {
        let rtx = store.inner.db.begin_read().unwrap();
        let t = rtx.open_table(VALUES).unwrap();
        let mut seqs: Vec<u64> = t.iter().unwrap().map(|r| r.unwrap().0.value().0).collect();
        seqs.dedup();
        seqs
    }

    fn big(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
    }

    #[tokio::test]
    async fn large_values_are_stored_once_and_released() {
        let (_d1, p) = open_temp();
        let (_d2, r) = open_temp();
        assert_eq!(p.inner.format, NEWEST_FORMAT);
        let (a1, a2, b1) = (big(1, 16 * 1024), big(2, 5000), big(3, 100_000));
        p.write(1, put("a", &a1)).await.unwrap();
        p.write(1, put("small", b"tiny")).await.unwrap();
        p.write(1, put("b", &b1)).await.unwrap();
        p.write(1, put("a", &a2)).await.unwrap();
        p.write(1, WriteOp::Delete { key: "b".into() }).await.unwrap();
        p.write(1, put("c", &a1)).await.unwrap();
        // 1 and 3 are overwritten or deleted but still named by the before-images of 4 and 5.
        assert_eq!(value_chunks(&p), vec![1, 3, 4, 6]);
        assert_eq!(p.get("a").unwrap().unwrap().0, a2);
        assert_eq!(p.get("b").unwrap(), None);
        assert_eq!(p.get("c").unwrap().unwrap().0, a1);
        let sizes: Vec<(String, u64)> = p
            .list("", None, 10)
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.key, i.size))
            .collect();
        assert_eq!(
            sizes,
            vec![("a".into(), 5000), ("c".into(), 16 * 1024), ("small".into(), 4)]
        );

        // The log carries the bytes, before-images included.
        let log = entries(p.read_log(Position::default(), 100, usize::MAX).unwrap());
        assert_eq!(log.len(), 6);
        assert_eq!(log[3].value.as_deref(), Some(&a2[..]));
        assert_eq!(log[3].prev, Some((a1.clone(), Position::new(1, 1))));
        assert_eq!(log[4].prev, Some((b1.clone(), Position::new(1, 3))));
        // max_bytes counts the external bytes: the 100,000-byte value does not join the batch.
        assert_eq!(entries(p.read_log(Position::default(), 100, 20_000).unwrap()).len(), 2);

        // A replica stores them the same way and serves the same log.
        r.apply(1, &log).unwrap();
        assert_eq!(dump(&r), dump(&p));
        assert_eq!(value_chunks(&r), vec![1, 3, 4, 6]);
        assert_eq!(
            r.read_log(Position::default(), 100, usize::MAX).unwrap(),
            p.read_log(Position::default(), 100, usize::MAX).unwrap()
        );

        // Trimming an entry releases its before-image (and nothing else).
        let before = dump(&p);
        assert_eq!(p.trim(2).unwrap(), 4);
        assert_eq!(value_chunks(&p), vec![3, 4, 6]);
        assert_eq!(p.trim(1).unwrap(), 1);
        assert_eq!(value_chunks(&p), vec![4, 6]);
        assert_eq!(dump(&p), before);

        // A rollback restores external before-images and keeps the rolled-back bytes.
        let rolled = r.rollback_to(Position::new(1, 3)).unwrap();
        assert_eq!(rolled, log[3..].to_vec());
        assert_eq!(r.get("a").unwrap().unwrap().0, a1);
        assert_eq!(r.get("b").unwrap().unwrap().0, b1);
        assert_eq!(r.get("c").unwrap(), None);
        assert_eq!(value_chunks(&r), vec![1, 3]);
        let diverged: Vec<Entry> = r.diverged(10).unwrap().into_iter().map(|d| d.1).collect();
        assert_eq!(diverged.iter().rev().cloned().collect::<Vec<_>>(), log[3..].to_vec());

        // A snapshot carries the bytes; the installer stores the large ones in chunks again, and
        // the target's old chunks go.
        let (_d3, t) = open_temp();
        t.write(1, put("old", &b1)).await.unwrap();
        let mut reader = p.snapshot().unwrap();
        let mut installer = t.begin_install().unwrap();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            installer.push_chunk(&chunk).unwrap();
        }
        installer.finish().unwrap();
        assert_eq!(dump(&t), dump(&p));
        assert_eq!(value_chunks(&t), vec![4, 6]);
        // And they are released as usual later: overwriting c and trimming drops c's chunks.
        t.write(1, put("c", b"short")).await.unwrap();
        t.trim(0).unwrap();
        assert_eq!(value_chunks(&t), vec![4]);
        assert_eq!(dump(&t).len(), 3);
    }

    #[tokio::test]
    async fn datastore_format_is_kept_raised_on_request_and_never_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.redb");
        let value = big(7, 9000);
        {
            let s = DataStore::open_with_format(&path, Some(1)).unwrap();
            s.write(1, put("v1", &value)).await.unwrap();
            assert_eq!(value_chunks(&s), Vec::<u64>::new(), "format 1 keeps values inline");
        }
        {
            // No format recorded (as in a file of an older release): it stays format 1.
            let s = DataStore::open(&path).unwrap();
            assert_eq!(s.inner.format, 1);
            s.write(1, put("v2", &value)).await.unwrap();
            assert_eq!(value_chunks(&s), Vec::<u64>::new());
        }
        {
            let s = DataStore::open_with_format(&path, Some(2)).unwrap();
            s.write(1, put("v3", &value)).await.unwrap();
            assert_eq!(value_chunks(&s), vec![3]);
            for k in ["v1", "v2", "v3"] {
                assert_eq!(s.get(k).unwrap().unwrap().0, value, "{k}");
            }
        }
        assert_eq!(DataStore::open(&path).unwrap().inner.format, 2);
        let e = DataStore::open_with_format(&path, Some(1)).unwrap_err().to_string();
        assert!(e.contains("format 2") && e.contains("resync"), "{e}");
        let e = DataStore::open_with_format(&path, Some(3)).unwrap_err().to_string();
        assert!(e.contains("format 3 is not supported"), "{e}");
        assert_eq!(DataStore::open(&path).unwrap().get("v3").unwrap().unwrap().0, value);
    }

    /// The node shares the store across tasks, awaits writes in axum handlers and streams
    /// snapshots from `spawn_blocking`.
    #[test]
    fn handles_are_thread_safe() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let (_dir, s) = open_temp();
        send_sync(&s);
        send(&s.write(1, put("k", b"v")));
        send(&s.snapshot().unwrap());
        send(&s.begin_install().unwrap());
    }

    #[test]
    fn stored_value_encodings_agree() {
        let pos = Position::new(3, 99);
        let bytes = encode_value(pos, b"hello");
        let owned = StoredKv::decode("k", &bytes).unwrap();
        assert_eq!((owned.pos, owned.held), (pos, Held::Inline(b"hello".to_vec())));
        assert_eq!(StoredKv::meta("k", &bytes).unwrap(), (pos, 5));
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(matches!(StoredKv::meta("k", &bad), Err(DataError::Corrupt(_))));
        assert!(matches!(StoredKv::decode("k", &bad[..4]), Err(DataError::Corrupt(_))));
    }
}
