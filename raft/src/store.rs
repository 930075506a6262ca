//! Durable Raft storage on redb: the log store (vote, committed id, entries, purge marker)
//! and the state machine store (cluster state, last applied id, membership, snapshot).
//!
//! Two database files in the node's data dir, so that log appends (on openraft's log I/O
//! path) and state-machine applies never wait on each other's write transaction:
//! `raft-log.redb` and `raft-state.redb`.
//!
//! Durability point: every method that changes disk state commits its redb write
//! transaction with `Durability::Immediate` (redb's default: one fdatasync) *before* it
//! returns or signals completion. In particular `save_vote` returns only after the vote is on
//! disk, and `append` calls `LogFlushed::log_io_completed` only after the entries are.
//!
//! redb calls block, so they run on tokio's blocking pool, never on the Raft loop's thread.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::{decode, encode};
use crate::state::{ClusterState, Response};
use crate::{BasicNode, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SM: &str = "state";
const KEY_SNAPSHOT: &str = "snapshot";

/// Errors opening the stores (runtime errors are openraft's `StorageError`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    #[error("initialise {path}: {message}")]
    Init { path: String, message: String },
    #[error("decode stored state in {path}: {source}")]
    Decode {
        path: String,
        source: crate::codec::CodecError,
    },
}

type SResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::new(&e)).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// Run a blocking redb operation on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> SResult<T> + Send + 'static) -> SResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(write_err(e)),
    }
}

/// Page-cache budget of each of the two Raft store files (the log is purged to about a
/// thousand entries and the state is small, so this is mostly headroom).
pub const CACHE_BYTES: usize = 8 << 20;

fn open_db(path: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// Begin a write transaction (durable on commit, redb's default) that also saves redb's allocator
/// state, so that opening the file after a crash does not walk every page to rebuild it.
fn begin_write(db: &Database) -> Result<redb::WriteTransaction, redb::TransactionError> {
    let mut tx = db.begin_write()?;
    tx.set_quick_repair(true);
    Ok(tx)
}

/// Create the tables so that readers never see "table does not exist".
fn init_tables(
    db: &Database,
    path: &Path,
    tables: &[TableDefinition<'_, &str, &[u8]>],
    log: bool,
) -> Result<(), StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Init {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let tx = begin_write(db).map_err(|e| err(&e))?;
    for t in tables {
        tx.open_table(*t).map_err(|e| err(&e))?;
    }
    if log {
        tx.open_table(LOG).map_err(|e| err(&e))?;
    }
    tx.commit().map_err(|e| err(&e))?;
    Ok(())
}

/// Open (creating if needed) both stores in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let log_path = dir.join("raft-log.redb");
    let log_db = open_db(&log_path)?;
    init_tables(&log_db, &log_path, &[LOG_META], true)?;
    let sm_path = dir.join("raft-state.redb");
    let sm_db = open_db(&sm_path)?;
    init_tables(&sm_db, &sm_path, &[SM], false)?;
    let sm = StateMachineStore::load(Arc::new(sm_db), &sm_path)?;
    Ok((LogStore { db: Arc::new(log_db) }, sm))
}

// ---------------------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------------------

/// The Raft log, vote and committed id. Cheap to clone (it is its own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn get_meta<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> SResult<Option<T>> {
        let tx = db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG_META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> SResult<()> {
        let tx = begin_write(db).map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG_META).map_err(write_err)?;
            t.insert(key, encode(value).as_slice()).map_err(write_err)?;
        }
        // Durability point: fdatasync before returning.
        tx.commit().map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for item in t.range::<u64>((start, end)).map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                out.push(decode(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId<NodeId>> = Self::get_meta(&db, KEY_PURGED)?;
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOG).map_err(read_err)?;
            let last = match t.last().map_err(read_err)? {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value()).map_err(read_err)?.log_id),
                None => None,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id: last.or(last_purged_log_id),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || Self::put_meta(&db, KEY_VOTE, &vote)).await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        let db = self.db.clone();
        blocking(move || Self::get_meta(&db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        let db = self.db.clone();
        blocking(move || Self::put_meta(&db, KEY_COMMITTED, &committed)).await
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        let db = self.db.clone();
        blocking(move || Ok(Self::get_meta::<Option<LogId<NodeId>>>(&db, KEY_COMMITTED)?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let encoded: Vec<(u64, Vec<u8>)> = entries.into_iter().map(|e| (e.log_id.index, encode(&e))).collect();
        let res = blocking(move || {
            let tx = begin_write(&db).map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                for (idx, bytes) in &encoded {
                    t.insert(*idx, bytes.as_slice()).map_err(write_err)?;
                }
            }
            // Durability point: the entries are on disk before the callback fires.
            tx.commit().map_err(write_err)
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let tx = begin_write(&db).map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let tx = begin_write(&db).map_err(write_err)?;
            {
                // Record the purge marker first, in the same transaction: a crash can never
                // leave entries missing without the marker that explains their absence.
                let mut m = tx.open_table(LOG_META).map_err(write_err)?;
                m.insert(KEY_PURGED, encode(&log_id).as_slice()).map_err(write_err)?;
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// State machine store
// ---------------------------------------------------------------------------------------

/// What the state machine holds; also what the rest of the node observes through
/// [`StateMachineStore::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub state: ClusterState,
}

/// A stored snapshot: its metadata and the encoded [`StateView`] it was built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The persistent state machine. Every `apply` batch is committed to disk (with the new
/// last-applied id) before it returns, so a snapshot never has to be replayed at start-up.
pub struct StateMachineStore {
    db: Arc<Database>,
    view: StateView,
    tx: watch::Sender<Arc<StateView>>,
}

impl StateMachineStore {
    fn load(db: Arc<Database>, path: &Path) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Init {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let view = {
            let tx = db.begin_read().map_err(|e| err(&e))?;
            let t = tx.open_table(SM).map_err(|e| err(&e))?;
            match t.get(KEY_SM).map_err(|e| err(&e))? {
                Some(v) => decode(v.value()).map_err(|source| StoreError::Decode {
                    path: path.display().to_string(),
                    source,
                })?,
                None => StateView::default(),
            }
        };
        let (tx, _) = watch::channel(Arc::new(view.clone()));
        Ok(StateMachineStore { db, view, tx })
    }

    /// Observe every change of the applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StateView>> {
        self.tx.subscribe()
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.view.clone()));
    }

    async fn persist(&self, snapshot: Option<StoredSnapshot>) -> SResult<()> {
        let db = self.db.clone();
        let bytes = encode(&self.view);
        blocking(move || {
            let tx = begin_write(&db).map_err(write_err)?;
            {
                let mut t = tx.open_table(SM).map_err(write_err)?;
                t.insert(KEY_SM, bytes.as_slice()).map_err(write_err)?;
                if let Some(s) = snapshot {
                    t.insert(KEY_SNAPSHOT, encode(&s).as_slice()).map_err(write_err)?;
                }
            }
            // Durability point: applied state and last-applied id together, one fdatasync.
            tx.commit().map_err(write_err)
        })
        .await
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was created.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    view: StateView,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let data = encode(&self.view);
        let last = self.view.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, unix_ms()),
            None => format!("none-{}", unix_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.view.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let db = self.db.clone();
        blocking(move || {
            let tx = begin_write(&db).map_err(write_err)?;
            {
                let mut t = tx.open_table(SM).map_err(write_err)?;
                t.insert(KEY_SNAPSHOT, encode(&stored).as_slice()).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.view.last_applied, self.view.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.view.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Response::None),
                EntryPayload::Normal(req) => out.push(self.view.state.apply(&req)),
                EntryPayload::Membership(m) => {
                    self.view.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Response::None)
                }
            }
        }
        self.persist(None).await?;
        self.publish();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            view: self.view.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let data = snapshot.into_inner();
        let mut view: StateView = decode(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))
        })?;
        // The snapshot's metadata is authoritative for what it covers.
        view.last_applied = meta.last_log_id;
        view.membership = meta.last_membership.clone();
        self.view = view;
        self.persist(Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        }))
        .await?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let stored: Option<StoredSnapshot> = blocking(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(SM).map_err(read_err)?;
            match t.get(KEY_SNAPSHOT).map_err(read_err)? {
                Some(v) => Ok(Some(decode(v.value()).map_err(read_err)?)),
                None => Ok(None),
            }
        })
        .await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> SResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let (log, sm) = open(dir.path()).map_err(write_err)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage test suite against the redb stores. It starts its own
    /// runtimes, so this is a plain `#[test]`.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
        Suite::test_all(Builder)?;
        Ok(())
    }
}
