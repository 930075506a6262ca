//! Keel's replicated datastore: the key–value store with its change log on redb, and the
//! replication protocol that carries the change log from the primary to the replicas.
//!
//! **Storage** ([`DataStore`]): hold the data (keys ≤ 1 KiB, values ≤ 1 MiB, prefix listing,
//! compare-and-set) and a change log of every write at a [`Position`] `(epoch, seq)`: read the log
//! after a position ([`DataStore::read_log`]), apply a primary's entries on a replica
//! ([`DataStore::apply`]), roll back entries that diverged after a failover
//! ([`DataStore::rollback_to`], kept in a `diverged` table, never dropped silently), stream a
//! consistent snapshot ([`DataStore::snapshot`], [`DataStore::begin_install`]), and trim the log
//! ([`DataStore::trim`]). Owns one redb file (e.g. `<data_dir>/data.redb`) with the tables `kv`,
//! `log`, `meta`, `diverged`, `values` (large values of datastore format 2, their locations in
//! format 3), `value_segments` and the staging tables of a snapshot install; next to it its
//! journal (`data.redb.journal`) and, in format 3, the values log (`data.redb.values/`).
//!
//! **Protocol** (see DESIGN.md, "Replication protocol"): the primary's pull serving with long poll
//! and sync-mode acknowledgements ([`serve_pull`], [`serve_stream`], [`Repl::wait_acks`]), the
//! replica's apply worker and its pull-stream client ([`Replica::run`], [`PullStream`]), a new
//! primary's catch-up ([`Replica::catch_up`]), fork detection and rollback, snapshot resync
//! ([`serve_snapshot`] and the replica's installer), position reports and log retention
//! ([`report_worker`], [`retention_worker`]). The messages, limits and frames are in
//! [`protocol`]; their bytes are a wire contract with other releases.
//!
//! **What it must not touch**: no Raft (keel-raft, openraft), no HTTP framework or client (axum,
//! hyper, reqwest), no roles or lease. The node feeds a [`PrimaryView`] (who is primary at which
//! epoch, the newest epoch, the replication mode) through [`Repl::publish_view`], and implements
//! [`ReplicationPeers`] (peer calls by node id, errors as [`PeerCallError`]) on its peer client.
//! The node decides who may write and passes the epoch in; this crate only refuses epochs older
//! than the newest it has seen.
//!
//! Key types: [`DataStore`] (a cheap `Clone` handle), [`WriteOp`] / [`WriteResult`], [`Entry`]
//! (a change-log entry with the before-image that makes rollback possible), [`LogRead`],
//! [`DataError`]; [`Repl`] (a node's replication state: store, acks, replica status, counters,
//! view), [`Replica`], [`PullRequest`] / [`PullReply`], [`ReplicationPeers`], [`PrimaryView`],
//! [`ReplError`].
//!
//! Durability point: primary writes are group-committed by one writer thread (`writer.rs`):
//! every caller waiting in its queue shares one redb transaction (data, log entries and the new
//! position together) and one fsync, and is answered only after it. That fsync is the append of
//! the batch's entries to the datastore journal (`journal.rs`); the redb commit is not fsynced,
//! a checkpoint makes it durable later and a restart applies the journal again. A batch over
//! 64 KiB commits with `Durability::Immediate` instead. A replica's `apply` is durable the same
//! way. `rollback_to`, `trim`, `observe_epoch` and snapshot install commit with
//! `Durability::Immediate` before they return. Every persisted or peer-sent structure goes through
//! the versioned codec (`codec.rs`).

mod backend;
pub mod codec;
mod crc;
mod error;
mod journal;
pub mod peers;
pub mod protocol;
mod recent;
mod replica;
mod serve;
pub mod service;
mod snapshot;
mod state;
mod store;
mod values;
mod vlog;
mod writer;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use snapshot::{SnapshotInstaller, SnapshotReader, SNAPSHOT_CHUNK_BYTES};
pub use store::{journaled_batch, recent_bytes, DataStats, DataStore, StoreOptions, DEFAULT_CACHE_BYTES, RECENT_MAX};
pub use values::{CHUNK_MAX, INLINE_MAX, NEWEST_FORMAT};

pub use error::ReplError;
pub use peers::{
    sync_guarantee_warning, ByteStream, CallResult, PeerCallError, PeerRpc, PrimaryRef, PrimaryView, ReplicationMode,
    ReplicationPeers,
};
pub use protocol::{PullReply, PullRequest};
pub use replica::{feed_view, report_worker, retention_worker, PullStream, Replica};
pub use serve::{serve_pull, serve_snapshot, serve_stream};
pub use state::{Repl, ReplCounters, ReplicaStatus};

/// A cluster member's id (the node's Raft id, a plain `u64` here).
pub type NodeId = u64;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most items one [`DataStore::list`] call returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Position in the change log. Ordered by (epoch, seq). `seq` is one global counter that never
/// resets (a new primary continues from its own last seq), so the same seq can exist with two
/// epochs on two nodes after a failover: that is how a fork is detected.
///
/// `Position::default()` (0, 0) is "before the first entry".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Position { epoch, seq }
    }
}

/// `epoch:seq`, e.g. `2:1041`.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// One write on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Write only if the key's current version is `expected_version` (0 = the key must not exist).
    Cas {
        key: String,
        expected_version: u64,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            WriteOp::Put { value, .. } | WriteOp::Cas { value, .. } => value.len(),
            WriteOp::Delete { .. } => 0,
        }
    }
}

/// Outcome of a committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// Position of the write's change-log entry.
    pub pos: Position,
    /// The key's new version (= `pos.seq`), 0 after a delete.
    pub version: u64,
    /// Whether the key existed before this write.
    pub existed: bool,
}

/// A change-log entry, carrying the before-image so it can be rolled back.
///
/// The version of a key is the seq of the entry that last wrote it; 0 means absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pos: Position,
    pub key: String,
    /// The new value; `None` = delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The key's value and the position of the write that produced it, before this entry
    /// (`None` = absent). The version before is `prev.1.seq`. The whole position, not only the
    /// version, so that a rollback restores [`ValueMeta::pos`] exactly.
    #[serde(with = "prev_bytes")]
    pub prev: Option<(Vec<u8>, Position)>,
}

/// `Entry::prev` with its value as a byte string (see `serde_bytes` in Cargo.toml).
mod prev_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Position;

    pub fn serialize<S: Serializer>(prev: &Option<(Vec<u8>, Position)>, s: S) -> Result<S::Ok, S::Error> {
        prev.as_ref()
            .map(|(value, pos)| (serde_bytes::Bytes::new(value), pos))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(Vec<u8>, Position)>, D::Error> {
        let prev = Option::<(serde_bytes::ByteBuf, Position)>::deserialize(d)?;
        Ok(prev.map(|(value, pos)| (value.into_vec(), pos)))
    }
}

/// Metadata of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMeta {
    /// = `pos.seq`.
    pub version: u64,
    /// Position of the entry that wrote the value.
    pub pos: Position,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListItem {
    pub key: String,
    pub version: u64,
    /// Value size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    pub items: Vec<ListItem>,
    /// Pass as `after` to get the next page; `None` when this page is the last.
    pub next: Option<String>,
}

/// Answer of [`DataStore::read_log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRead {
    /// Entries strictly after the requested position, in order (empty when caught up).
    Entries(Vec<Entry>),
    /// `from` is older than the retained log: the reader needs a snapshot.
    Trimmed { oldest_retained: Option<Position> },
}

/// Errors of the datastore. Messages are lowercase and say what to do.
///
/// Retry policy by variant: `CasMismatch` and `Gap` are answered by reading again; `StaleEpoch`
/// means the writer or sender is deposed (follow the newer primary); `Fork` means one side must
/// roll back; `Storage` and `Corrupt` are disk faults (stop serving); `Closed` means shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("key is empty: give a non-empty key")]
    EmptyKey,
    #[error("key is {len} bytes, over the {max}-byte limit: use a shorter key")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, over the {max}-byte limit: store a smaller value")]
    ValueTooLarge { len: usize, max: usize },
    #[error(
        "compare-and-set on {key:?} failed: expected version {expected}, current version is {current} \
         (0 = absent); read the key and retry"
    )]
    CasMismatch { key: String, expected: u64, current: u64 },
    #[error(
        "epoch {epoch} is older than the newest epoch {current} this store has seen: it comes from a deposed \
         primary; follow the primary of the newest epoch"
    )]
    StaleEpoch { epoch: u64, current: u64 },
    #[error(
        "change logs diverge: the other side has {at}, this node has {}; the node holding entries the primary \
         never had must roll back to the last common position",
        fmt_ours(.ours)
    )]
    Fork {
        /// The other side's position where the mismatch showed (the reader's `after` in
        /// `read_log`, the first mismatching entry in `apply`).
        at: Position,
        /// This node's entry at (or, in `apply`, just before) that seq, if it has one.
        ours: Option<Position>,
    },
    #[error("entries do not continue this store's log: expected seq {expected}, got seq {found}; read again after position {position}")]
    Gap {
        expected: u64,
        found: u64,
        position: Position,
    },
    #[error("invalid replication batch: {0}")]
    InvalidEntries(String),
    #[error(
        "position {pos} is not in this node's retained log (it holds entries after {log_start} up to \
         {position}): roll back to a position this node has, or install a snapshot"
    )]
    NotInLog {
        pos: Position,
        log_start: Position,
        position: Position,
    },
    #[error("invalid snapshot stream: {0}; start the transfer again")]
    InvalidSnapshot(String),
    #[error("a snapshot install is already in progress: finish or drop it first")]
    InstallInProgress,
    #[error("corrupt datastore: {0}; restore this node from a replica")]
    Corrupt(String),
    #[error("datastore storage error: {0}")]
    Storage(String),
    #[error("datastore is closed: the node is shutting down")]
    Closed,
}

fn fmt_ours(ours: &Option<Position>) -> String {
    match ours {
        Some(p) => p.to_string(),
        None => "no entry at that seq".to_string(),
    }
}

pub(crate) fn validate_key(key: &str) -> Result<(), DataError> {
    if key.is_empty() {
        return Err(DataError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(DataError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn validate_value(len: usize) -> Result<(), DataError> {
    if len > MAX_VALUE_BYTES {
        return Err(DataError::ValueTooLarge {
            len,
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn validate_op(op: &WriteOp) -> Result<(), DataError> {
    validate_key(op.key())?;
    validate_value(op.value_len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    /// The byte-string encoding of values is the same postcard bytes as the plain `Vec<u8>` the first
    /// release used, so nodes of both versions read each other's change log and frames.
    #[test]
    fn byte_fields_encode_as_before() {
        // The first release's `WriteOp` had plain `Vec<u8>` values; postcard writes an enum as its
        // variant index (a varint) followed by the fields, so its bytes are those of these tuples.
        #[derive(Serialize)]
        struct OldEntry {
            pos: Position,
            key: String,
            value: Option<Vec<u8>>,
            prev: Option<(Vec<u8>, Position)>,
        }
        let value: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pos = Position { epoch: 3, seq: 77 };
        let pairs = [
            (
                encode(&WriteOp::Put {
                    key: "k".into(),
                    value: value.clone(),
                }),
                encode(&(0u32, "k", &value)),
            ),
            (encode(&WriteOp::Delete { key: "k".into() }), encode(&(1u32, "k"))),
            (
                encode(&WriteOp::Cas {
                    key: "k".into(),
                    expected_version: 9,
                    value: vec![],
                }),
                encode(&(2u32, "k", 9u64, Vec::<u8>::new())),
            ),
        ];
        for (new, old) in &pairs {
            assert_eq!(new, old);
        }
        for (v, prev) in [
            (Some(value.clone()), Some((vec![1, 2, 3], pos))),
            (None, None),
            (Some(vec![]), None),
            (None, Some((value.clone(), pos))),
        ] {
            let entry = Entry {
                pos,
                key: "key".into(),
                value: v.clone(),
                prev: prev.clone(),
            };
            let old = OldEntry {
                pos,
                key: "key".into(),
                value: v,
                prev,
            };
            let bytes = encode(&entry);
            assert_eq!(bytes, encode(&old));
            assert_eq!(decode::<Entry>(&bytes).unwrap(), entry);
        }
    }
}
