//! Replication, as the node wires it: the protocol itself (pull serving, the apply worker,
//! catch-up, fork handling, snapshots, acknowledgements) lives in `keel-replication`; this module
//! connects it to the node.
//!
//! - [`NodePeers`] implements [`ReplicationPeers`] on the node's peer client: the protocol's peer
//!   calls by node id become requests to `/peer/repl/*` on the member's peer address (from the
//!   Raft membership), and the pull stream is the HTTP/1.1 upgrade of `crate::peer::stream` (path [`STREAM_PATH`]).
//! - The view feeder publishes a [`PrimaryView`] derived from the node's Raft state watch
//!   (`node.state`) into [`Repl`], which the protocol reads.
//! - The functions below keep the names the rest of the node calls (`serve_pull`, `replicate`,
//!   `catch_up`, ...) and delegate.

use std::sync::Arc;
use std::time::Duration;

use keel_raft::network::{error_chain, PeerError};
use keel_raft::store::StateView;
use keel_raft::NodeId;
use keel_replication::{
    ByteStream, PeerCallError, PeerRpc, PrimaryRef, PrimaryView, ReplError, Replica, ReplicationMode, ReplicationPeers,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use keel_replication::protocol::{ASYNC_PULL_GAP, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, PULL_WAIT};
/// Where replicas open the pull stream on the peer port.
pub const STREAM_PATH: &str = "/peer/repl/stream";
/// The `Upgrade` protocol of the pull stream.
pub use keel_replication::protocol::STREAM_PROTOCOL;

pub use keel_replication::{PullReply, PullRequest, Repl, ReplCounters, ReplicaStatus};

use crate::state::Node;

/// The replication protocol's peer calls, made with the node's peer client.
pub struct NodePeers<'a> {
    node: &'a Node,
}

impl<'a> NodePeers<'a> {
    pub fn new(node: &'a Node) -> Self {
        NodePeers { node }
    }

    fn addr(&self, peer: NodeId) -> Result<String, PeerCallError> {
        self.node
            .peer_addr_of(peer)
            .ok_or(PeerCallError::NoAddress { node: peer })
    }
}

/// The peer-port endpoint of each call.
fn rpc_path(rpc: PeerRpc) -> &'static str {
    match rpc {
        PeerRpc::Pull => "/peer/repl/pull",
        PeerRpc::Position => "/peer/repl/position",
        PeerRpc::PositionAt => "/peer/repl/position_at",
        PeerRpc::Report => "/peer/repl/report",
    }
}

fn peer_error(e: PeerError) -> PeerCallError {
    match e {
        PeerError::Unreachable { addr, message } => PeerCallError::Unreachable { addr, message },
        PeerError::Network { addr, message } => PeerCallError::Network { addr, message },
        PeerError::ClusterMismatch { addr, message } => PeerCallError::Refused {
            addr,
            message: format!("it belongs to another cluster: {message}"),
        },
        PeerError::Unauthorized { addr } => PeerCallError::Refused {
            addr,
            message: "it refused the cluster token (401)".to_string(),
        },
        PeerError::Status { addr, status, body } => PeerCallError::Status { addr, status, body },
        PeerError::Decode { addr, message } => PeerCallError::Decode { addr, message },
    }
}

/// A snapshot answer's body.
pub struct SnapshotResponse {
    addr: String,
    resp: reqwest::Response,
}

impl ByteStream for SnapshotResponse {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, PeerCallError> {
        match self.resp.chunk().await {
            Ok(Some(bytes)) => {
                buf.extend_from_slice(&bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(PeerCallError::Network {
                addr: self.addr.clone(),
                message: error_chain(&e),
            }),
        }
    }
}

impl ReplicationPeers for NodePeers<'_> {
    type Stream = reqwest::Upgraded;
    type Snapshot = SnapshotResponse;

    async fn call<Req, Resp>(
        &self,
        peer: NodeId,
        rpc: PeerRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<(Resp, usize), PeerCallError>
    where
        Req: Serialize + Sync,
        Resp: DeserializeOwned + Send,
    {
        let addr = self.addr(peer)?;
        self.node
            .peers
            .call_sized(Some(peer), &addr, rpc_path(rpc), req, timeout)
            .await
            .map_err(peer_error)
    }

    async fn open_stream(&self, peer: NodeId, timeout: Duration) -> Result<reqwest::Upgraded, PeerCallError> {
        let addr = self.addr(peer)?;
        let (path, protocol) = (STREAM_PATH, STREAM_PROTOCOL);
        self.node
            .peers
            .open_stream(Some(peer), &addr, path, protocol, timeout)
            .await
            .map_err(peer_error)
    }

    async fn snapshot(&self, peer: NodeId, timeout: Duration) -> Result<SnapshotResponse, PeerCallError> {
        let addr = self.addr(peer)?;
        let resp = self
            .node
            .peers
            .call_raw(&addr, "/peer/repl/snapshot", &(), timeout)
            .await
            .map_err(peer_error)?;
        Ok(SnapshotResponse { addr, resp })
    }

    fn coordinator(&self) -> Option<NodeId> {
        self.node.metrics().current_leader
    }

    fn record_exchange(&self, peer: NodeId, outcome: Result<(), &ReplError>) {
        let health = self.node.peers.health();
        match outcome {
            Ok(()) => health.record_ok(peer),
            Err(e) => health.record_err(peer, e.to_string(), None),
        }
    }
}

/// What replication needs of the node's cluster state.
pub fn primary_view(view: &StateView) -> PrimaryView {
    let state = &view.state;
    PrimaryView {
        primary: state.primary.map(|p| PrimaryRef {
            node: p.node,
            epoch: p.epoch,
        }),
        newest_epoch: state.epoch(),
        mode: replication_mode(state.config.replication_mode),
        min_acks: state.config.min_acks,
        log_retention_entries: state.config.log_retention_entries,
    }
}

fn replication_mode(mode: keel_raft::state::ReplicationMode) -> ReplicationMode {
    match mode {
        keel_raft::state::ReplicationMode::Async => ReplicationMode::Async,
        keel_raft::state::ReplicationMode::Sync => ReplicationMode::Sync,
    }
}

/// Publish the node's current cluster state to replication now (the feeder does it on every
/// change; this makes it exact before acting on a state the caller just read).
fn refresh_view(node: &Node) {
    node.repl.publish_view(primary_view(&node.view()));
}

fn replica<'a>(node: &'a Node, peers: &'a NodePeers<'a>) -> Replica<'a, NodePeers<'a>> {
    Replica {
        me: node.id,
        repl: &node.repl,
        peers,
        request_timeout: Duration::from_millis(node.config.request_timeout_ms),
    }
}

/// Serve a pull (`/peer/repl/pull`; the pull stream calls the crate directly).
pub async fn serve_pull(node: &Node, req: PullRequest) -> PullReply {
    refresh_view(node);
    keel_replication::serve_pull(&node.repl, node.id, req).await
}

/// A pull answer in the peer codec, counted in `keel_replication_streamed_bytes_total` as sent
/// (both transports: `/peer/repl/pull` and the pull stream).
pub fn encode_reply(node: &Node, reply: &PullReply) -> Vec<u8> {
    node.repl.encode_reply(reply)
}

/// The replica apply worker, and the feeder of its view from the node's cluster state, until
/// `cancel`: the built-in store's `ManagedService::run` (started by `cluster::kv::apply_task`).
pub async fn replicate(node: &Node, cancel: tokio_util::sync::CancellationToken) {
    refresh_view(node);
    let feed = keel_replication::feed_view(
        &node.repl,
        node.state.clone(),
        |view| primary_view(view),
        cancel.clone(),
    );
    let peers = NodePeers::new(node);
    let replica = replica(node, &peers);
    tokio::join!(feed, replica.run(cancel));
}

/// The new primary's catch-up step: pull whatever it lacks from the most advanced reachable
/// voter before accepting writes (see [`Replica::catch_up`]).
pub async fn catch_up(node: &Node, epoch: u64) -> Result<(), ReplError> {
    refresh_view(node);
    let peers = NodePeers::new(node);
    replica(node, &peers).catch_up(epoch, node.voters()).await
}

/// Report this node's position to the coordinator, for failover ranking.
pub async fn report_task(node: Arc<Node>) {
    let peers = NodePeers::new(&node);
    keel_replication::report_worker(&node.repl, &peers, node.id, node.cancel.clone()).await
}

/// Trim the change log to the configured retention, every few seconds.
pub async fn retention_task(node: Arc<Node>) {
    refresh_view(&node);
    keel_replication::retention_worker(&node.repl, node.cancel.clone()).await
}

/// Why sync mode does not guarantee what it promises with these settings, if it does not (see
/// [`keel_replication::sync_guarantee_warning`]).
pub fn sync_guarantee_warning(mode: keel_raft::state::ReplicationMode, min_acks: u32, voters: usize) -> Option<String> {
    keel_replication::sync_guarantee_warning(replication_mode(mode), min_acks, voters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::state::ReplicationMode::{Async, Sync};

    #[test]
    fn sync_guarantee_needs_a_majority() {
        assert_eq!(sync_guarantee_warning(Sync, 1, 3), None);
        assert_eq!(sync_guarantee_warning(Sync, 1, 1), None);
        assert_eq!(sync_guarantee_warning(Sync, 2, 5), None);
        assert_eq!(sync_guarantee_warning(Async, 1, 5), None);
        let w = sync_guarantee_warning(Sync, 1, 5).unwrap();
        assert!(w.contains("at least 2"), "{w}");
        assert!(sync_guarantee_warning(Sync, 2, 7).unwrap().contains("at least 3"));
        assert!(sync_guarantee_warning(Sync, 0, 3).is_some());
    }
}
