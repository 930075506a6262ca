//! `/peer/ping`: the answer a node gives ([`Ping`]), and one quick "is it alive?" ([`alive`]).
//! Used by the reachability probes and by a new coordinator deciding whether to wait for the
//! primary; never for safety.

use std::time::Duration;

use keel_raft::NodeId;

use crate::state::Node;

/// Answer to `/peer/ping`: who answers, and for which cluster (a member of another cluster is
/// shown as such in status and `/readyz`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ping {
    pub node_id: keel_raft::NodeId,
    pub cluster_id: Option<String>,
}

/// Is `peer` alive? One quick ping (used only to decide whether to wait, never for safety).
pub async fn alive(node: &Node, peer: NodeId) -> bool {
    let Some(addr) = node.peer_addr_of(peer) else {
        return false;
    };
    let r: Result<Ping, _> = node
        .peers
        .call(Some(peer), &addr, "/peer/ping", &(), Duration::from_millis(300))
        .await;
    r.is_ok()
}
