//! The shared state of a running node ([`Node`]): its identity and config, the Raft handle
//! and the watched cluster state, the peer client, the lease and coordinator memory, the
//! datastore and its replication state, the Git Sync agent. Every request handler and background
//! task holds an `Arc<Node>`; the answers about this node that several layers need (its role,
//! whether it reaches a quorum) live here, so no layer has to ask another for them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::network::{PeerClient, PeerHealth};
use keel_raft::store::StateView;
use keel_raft::{BasicNode, NodeId, Raft};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A peer counts as reachable when a request to it succeeded this recently.
pub const REACHABLE_WITHIN: Duration = Duration::from_millis(2000);

/// Shared state of a running node, handed to every request handler and background task.
pub struct Node {
    pub id: NodeId,
    pub config: Config,
    pub raft: Raft,
    pub state: watch::Receiver<Arc<StateView>>,
    pub peers: PeerClient,
    pub started: Instant,
    pub cancel: CancellationToken,
    /// Local address the API listener is bound to (useful with port 0 in tests).
    pub api_bound: SocketAddr,
    pub peer_bound: SocketAddr,
    /// Set when the node stopped itself because it cannot go on (e.g. refused to join).
    pub fatal: std::sync::Mutex<Option<String>>,
    /// This node's write lease as primary.
    pub lease: crate::cluster::lease::Lease,
    /// Coordinator memory (used while this node is the Raft leader).
    pub coordinator: crate::cluster::lease::Coordinator,
    /// Runs the role-change hook.
    pub hook: crate::cluster::hook::HookRunner,
    /// The datastore and its replication state.
    pub repl: keel_replication::Repl,
    /// HTTP client for API-to-API calls (forwarded writes).
    pub http: reqwest::Client,
    /// The Git Sync agent, when `--gitsync-repo` is set.
    pub gitsync: Option<Arc<keel_gitsync::GitSync>>,
    /// Certificates and TLS settings, when `--tls-cert` is set.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The API tokens in force: the config's at start, swapped on SIGHUP (`auth::reload_task`).
    pub tokens: Arc<crate::auth::TokenStore>,
    /// The managed Redis (`--redis-port`), when configured.
    pub service: Option<Arc<crate::cluster::service::ManagedRedis>>,
}

impl Node {
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn view(&self) -> Arc<StateView> {
        self.state.borrow().clone()
    }

    pub fn health(&self) -> &PeerHealth {
        self.peers.health()
    }

    /// Reachability of a member from this node's point of view.
    pub fn reachable(&self, id: NodeId) -> bool {
        id == self.id || self.health().reachable(id, REACHABLE_WITHIN)
    }

    /// Ids of voters in the current membership config.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics().membership_config.membership().voter_ids().collect()
    }

    /// Peer address of a member, from the Raft membership config.
    pub fn peer_addr_of(&self, id: NodeId) -> Option<String> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// After start, this node neither votes nor campaigns for this long (raft/DESIGN.md).
    pub fn vote_quiet_period(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_timeout_max_ms)
    }

    /// Still inside [`Node::vote_quiet_period`].
    pub fn in_vote_quiet_period(&self) -> bool {
        self.started.elapsed() < self.vote_quiet_period()
    }

    /// Stop the node because it cannot go on; `keel serve` then exits non-zero with `reason`.
    pub fn fail(&self, reason: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.cancel.cancel();
    }

    /// Base URL of another member's API from its advertised `host:port` (https when TLS is on).
    pub fn api_url(&self, api_addr: &str) -> String {
        format!("{}://{api_addr}", crate::tls::scheme(self.tls.as_ref()))
    }

    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A member that answered "another cluster", if any (shown in status and readyz).
    pub fn cluster_mismatch(&self) -> Option<(NodeId, String)> {
        self.health()
            .snapshot()
            .into_iter()
            .find_map(|(id, s)| s.cluster_mismatch.map(|m| (id, m)))
    }
}

/// Can this node reach a majority of voters (itself included) right now?
pub fn quorum_reachable(node: &Node) -> bool {
    let voters = node.voters();
    let live = voters.iter().filter(|v| node.reachable(**v)).count();
    live > voters.len() / 2
}

/// This node's role as the contract names it.
pub fn role(node: &Node) -> &'static str {
    let m = node.metrics();
    let voter = m.membership_config.membership().voter_ids().any(|v| v == node.id);
    if !voter {
        return "learner";
    }
    if m.state == ServerState::Candidate {
        return "candidate";
    }
    match node.view().state.primary {
        Some(p) if p.node == node.id => match node.lease.valid_epoch() {
            Some(e) if e == p.epoch => "primary",
            // Named primary in the (possibly stale) state, but no valid lease: not writing.
            _ => "fenced",
        },
        _ => "replica",
    }
}

/// The role the hook and the logs talk about: `primary` only while holding a lease.
pub fn hook_role(node: &Node) -> &'static str {
    match role(node) {
        "primary" => "primary",
        "learner" => "learner",
        _ => "replica",
    }
}
