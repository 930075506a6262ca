//! The Raft side of cluster operations that every other part of the decision layer builds on:
//! propose a command and wait until it is applied ([`write()`], with openraft's errors turned into
//! [`ClusterError`]s), and the members as the API shows them ([`member_views`]).

use std::collections::{BTreeMap, BTreeSet};

use keel_raft::state::{Request, Response, Tags};
use keel_raft::{BasicNode, NodeId};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::cluster::error::ClusterError;
use crate::state::Node;

/// A member as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub api_addr: String,
    pub peer_addr: String,
    pub voter: bool,
    pub reachable: bool,
    pub tags: Tags,
}

/// Propose a command and wait until it is committed and applied.
pub async fn write(node: &Node, req: Request) -> Result<Response, ClusterError> {
    match node.raft.client_write(req).await {
        Ok(r) => match r.data {
            Response::Rejected { reason } => Err(ClusterError::Rejected(reason)),
            other => Ok(other),
        },
        Err(e) => Err(map_write_error(e)),
    }
}

pub(crate) fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader(format!(
            "leadership moved to {} during the request",
            crate::util::opt(f.leader_id)
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => ClusterError::MembershipChangeInProgress(p.to_string()),
            ChangeMembershipError::EmptyMembership(_) => ClusterError::EmptyMembership,
            ChangeMembershipError::LearnerNotFound(l) => {
                ClusterError::NotFound(format!("node {} is not a learner of this cluster", l.node_id))
            }
        },
        RaftError::Fatal(f) => ClusterError::ShuttingDown(f.to_string()),
    }
}

/// Every member of the current membership, with metadata and reachability.
pub fn member_views(node: &Node) -> Vec<MemberView> {
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let view = node.view();
    membership
        .nodes()
        .map(|(id, n)| {
            let meta = view.state.members.get(id).cloned().unwrap_or_default();
            MemberView {
                id: *id,
                api_addr: meta.api_addr,
                peer_addr: n.addr.clone(),
                voter: voters.contains(id),
                reachable: node.reachable(*id),
                tags: meta.tags,
            }
        })
        .collect()
}

pub(crate) fn member_view(node: &Node, id: NodeId) -> Option<MemberView> {
    member_views(node).into_iter().find(|m| m.id == id)
}

/// Used by `/v1/cluster` to expose the leader's view of learners' progress.
pub fn matched_indexes(node: &Node) -> BTreeMap<NodeId, u64> {
    node.metrics()
        .replication
        .map(|r| r.into_iter().filter_map(|(id, l)| l.map(|l| (id, l.index))).collect())
        .unwrap_or_default()
}
