//! The seam between the replication protocol and the node: what this crate needs from outside,
//! defined here and implemented by `keel-node` (house rule: the lower crate defines the small
//! trait it consumes).
//!
//! - [`PrimaryView`], fed by the node through a `tokio::sync::watch` channel ([`crate::Repl::publish_view`]):
//!   who is primary at which epoch, the newest epoch, the replication mode. The node derives it
//!   from its Raft state; this crate never sees Raft.
//! - [`ReplicationPeers`]: the calls to other members (by node id; the node resolves addresses,
//!   carries the bytes over its peer port and records peer health). Errors come back as
//!   [`PeerCallError`], whose variant decides the retry policy.
//!
//! Both are datastore-neutral: the messages are whatever the datastore's protocol sends
//! (`Serialize` in, `DeserializeOwned` out; the built-in store's are in [`crate::protocol`]), so a
//! second datastore can reuse the view, the transport and the error type.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{NodeId, ReplError};

/// When a write counts as acknowledged (the cluster's dynamic config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplicationMode {
    /// When the primary has it durably.
    #[default]
    Async,
    /// When the primary and `min_acks` replicas have it durably.
    Sync,
}

/// Why sync mode does not guarantee what it promises with these settings, if it does not: an
/// acknowledged write survives a failover only while the primary and the `min_acks` replicas that
/// acknowledged it include a node of every majority, i.e. when `1 + min_acks` is a majority of the voters.
/// Otherwise a primary cut off together with its acknowledging replicas loses writes that the majority
/// never saw (found by the chaos harness with five nodes and `min_acks` 1).
pub fn sync_guarantee_warning(mode: ReplicationMode, min_acks: u32, voters: usize) -> Option<String> {
    let majority = voters / 2 + 1;
    (mode == ReplicationMode::Sync && 1 + (min_acks as usize) < majority).then(|| {
        format!(
            "sync mode with min_acks {min_acks} on {voters} voters: the primary and {min_acks} replica(s) are not a \
             majority, so a failover can lose acknowledged writes; set min_acks to at least {0} \
             (PATCH /v1/config {{\"min_acks\": {0}}})",
            majority - 1
        )
    })
}

/// Which node may accept writes, and in which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryRef {
    pub node: NodeId,
    pub epoch: u64,
}

/// This node's current view of the cluster, as far as replication needs it. The node publishes
/// a new one whenever its cluster state changes; the default (no primary, epoch 0, keep the whole
/// log) is the view before the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryView {
    /// The primary of the newest epoch, if any was ever chosen.
    pub primary: Option<PrimaryRef>,
    /// The newest epoch the cluster state knows (the primary's epoch when there is one).
    pub newest_epoch: u64,
    pub mode: ReplicationMode,
    /// Replicas that must hold a write durably before a sync-mode write is acknowledged.
    pub min_acks: u32,
    /// How many change-log entries every node keeps (a datastore without a log ignores it);
    /// `u64::MAX` keeps everything.
    pub log_retention_entries: u64,
}

impl Default for PrimaryView {
    fn default() -> Self {
        PrimaryView {
            primary: None,
            newest_epoch: 0,
            mode: ReplicationMode::Async,
            min_acks: 0,
            // Nothing is trimmed before the node said how much to keep.
            log_retention_entries: u64::MAX,
        }
    }
}

impl PrimaryView {
    /// Whether `node` is the primary in this view.
    pub fn is_primary(&self, node: NodeId) -> bool {
        self.primary.is_some_and(|p| p.node == node)
    }
}

/// The peer calls replication makes. The node maps each to an endpoint on its peer port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRpc {
    /// One pull: a `PullRequest`, answered with a `PullReply` (the primary, or any member for a
    /// new primary's catch-up).
    Pull,
    /// The member's replication position: `()`, answered with a `Position`.
    Position,
    /// The position of the member's entry at a seq: `u64`, answered with `Option<Position>`.
    PositionAt,
    /// This node's position for failover ranking: `(NodeId, Position)` to the coordinator,
    /// answered with `()`.
    Report,
}

/// Why a call to a peer failed. The variant says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The node knows no address for that member (not, or no longer, in the membership): try
    /// again when the membership changed.
    #[error("no peer address for node {node}")]
    NoAddress { node: NodeId },
    /// Could not connect: back off.
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// Connected, then the exchange failed (reset, timeout): retry.
    #[error("peer {addr}: {message}")]
    Network { addr: String, message: String },
    /// The peer refused this node (cluster token, another cluster): retrying does not help until
    /// an operator fixes the configuration.
    #[error("peer {addr} refused the call: {message}")]
    Refused { addr: String, message: String },
    /// The peer answered with another HTTP status. 404 means the peer predates the call (an
    /// older release during a rolling upgrade): fall back, do not retry the same call.
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    /// The answer did not decode.
    #[error("decode answer from {addr}: {message}")]
    Decode { addr: String, message: String },
}

impl PeerCallError {
    /// Whether the peer told us it does not offer the call at all (an older release).
    pub fn is_not_offered(&self) -> bool {
        matches!(self, PeerCallError::Status { status: 404, .. })
    }
}

/// What [`ReplicationPeers::call`] returns: the decoded answer and its size in bytes (as encoded),
/// or why the call failed.
pub type CallResult<Resp> = Result<(Resp, usize), PeerCallError>;

/// A streamed answer (a datastore snapshot), read piece by piece.
pub trait ByteStream: Send {
    /// Append the next piece of the body to `buf`; `false` at the end of the body.
    fn read_into(&mut self, buf: &mut Vec<u8>) -> impl Future<Output = Result<bool, PeerCallError>> + Send;
}

/// Calls to other members, implemented by the node on its peer client.
pub trait ReplicationPeers: Send + Sync {
    /// A pull stream's connection.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// A snapshot's body.
    type Snapshot: ByteStream;

    /// One request to `peer`, answered with its decoded answer and the answer's size in bytes
    /// (as encoded). Records the outcome in the node's peer health.
    fn call<Req, Resp>(
        &self,
        peer: NodeId,
        rpc: PeerRpc,
        req: &Req,
        timeout: Duration,
    ) -> impl Future<Output = CallResult<Resp>> + Send
    where
        Req: Serialize + Sync,
        Resp: DeserializeOwned + Send;

    /// Open the long-lived pull stream to `peer` ([`crate::protocol::STREAM_PROTOCOL`]);
    /// `timeout` bounds the opening only. `Status { status: 404 }`: the peer does not offer it.
    fn open_stream(
        &self,
        peer: NodeId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Stream, PeerCallError>> + Send;

    /// Ask `peer` for a full snapshot of its datastore (the frames of
    /// [`crate::serve_snapshot`]).
    fn snapshot(
        &self,
        peer: NodeId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Snapshot, PeerCallError>> + Send;

    /// The member that ranks failover candidates (the coordinator), if known.
    fn coordinator(&self) -> Option<NodeId>;

    /// The outcome of one exchange on a pull stream, for the node's peer health (calls record
    /// their own outcome).
    fn record_exchange(&self, peer: NodeId, outcome: Result<(), &ReplError>) {
        let _ = (peer, outcome);
    }
}
