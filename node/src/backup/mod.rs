//! Backup and restore: `GET /v1/backup`, `keel backup --out FILE` and `keel restore --from FILE`.
//!
//! A backup is one consistent snapshot of a live node: its view of the cluster state (members,
//! dynamic config, failover history, primary and epoch, cluster id, Raft membership) and its whole
//! datastore at ONE replication position, streamed end to end (the datastore is read from one redb
//! read transaction by keel-replication's [`keel_replication::SnapshotReader`], the same machinery a
//! replica behind the retained log resyncs with), never held in memory.
//!
//! File format (version [`BACKUP_FORMAT`]):
//!
//! ```text
//! MAGIC "KEELBKUP" (8 bytes) | format version (1 byte)
//! frames: kind (1 byte) | payload length (u32 big-endian) | payload
//!   'H' header: keel_raft codec (format byte + postcard) of BackupHeader   (first, once)
//!   'D' datastore snapshot chunk, as keel-replication encodes it           (zero or more, in order)
//!   'E' end: keel_raft codec of BackupEnd (chunk and record counts)        (last, once)
//! trailer: SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! Restore checks the magic, the format version and the checksum before it writes anything, then
//! builds the data dir in a staging directory next to the target and renames it into place, so a
//! corrupt, truncated or foreign file leaves the target untouched. How the restored cluster starts
//! (same positions and epoch, a new cluster id, Raft membership from `--peers`) is described in
//! docs/operations.md, "Backup and restore".

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use keel_raft::state::ClusterState;
use keel_raft::store::StateView;
use keel_raft::{BasicNode, NodeId};
use keel_replication::Position;
use openraft::storage::RaftStateMachine;
use openraft::{LogId, Membership, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::cli::{ClientOpts, OutputFormat};
use crate::http::error::ApiError;
use crate::state::Node;
use crate::util::unix_ms;

mod client;
mod format;
mod restore;
mod serve;
pub use client::*;
pub use format::*;
pub use restore::*;
pub use serve::*;

#[cfg(test)]
mod tests;
