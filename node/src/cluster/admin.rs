//! Admin operations that must run on the coordinator (the Raft leader), and the routing that
//! gets them there from any node.
//!
//! An HTTP handler on any node calls [`submit`]. If this node is the leader the operation
//! runs here; otherwise it is sent to the leader over the peer port (`/peer/admin`, whose
//! address is always known from the Raft membership, even before members announced their
//! API addresses). The leader never forwards again, so there are no loops; a leader change
//! mid-flight answers `not_leader` and `submit` retries until its deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_raft::state::{Request, Response};
use keel_raft::{BasicNode, NodeId};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::cluster::error::{ClusterError, RemoteError};
use crate::cluster::members::{map_write_error, member_view, member_views, write, MemberView};
use crate::state::Node;

/// An operation that needs the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminOp {
    /// Propose a state-machine command.
    Write(Request),
    AddMember {
        id: NodeId,
        api_addr: String,
        peer_addr: String,
    },
    PromoteMember {
        id: NodeId,
    },
    RemoveMember {
        id: NodeId,
        force: bool,
    },
    Switchover {
        to: Option<NodeId>,
    },
    Failover {
        to: NodeId,
        force: bool,
    },
    /// Merge a partial config update into the newest committed config.
    PatchConfig(ConfigPatch),
    /// Renew the lease of `node` for `epoch` (sent by the primary every lease/3).
    Lease {
        node: NodeId,
        epoch: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    Applied(Response),
    Member(MemberView),
    Removed(NodeId),
    Promoted(crate::cluster::primary::Promoted),
    Granted,
    Config(keel_raft::state::DynamicConfig),
}

/// A voter counts as live for the quorum check of a removal if heard from this recently.
const QUORUM_CHECK_WITHIN: Duration = Duration::from_millis(1000);

/// How long a learner may take to catch up before `promote` gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Run `op` on the leader, wherever it is, retrying across leader changes until `timeout`.
pub async fn submit(node: &Node, op: AdminOp, timeout: Duration) -> Result<AdminReply, ClusterError> {
    let deadline = Instant::now() + timeout;
    let mut metrics = node.raft.metrics();
    loop {
        let m = metrics.borrow_and_update().clone();
        let attempt = match m.current_leader {
            Some(l) if l == node.id && m.state == ServerState::Leader => execute(node, op.clone()).await,
            Some(l) => match node.peer_addr_of(l) {
                Some(addr) => forward(node, l, &addr, &op, deadline).await,
                None => Err(ClusterError::NotLeader(format!("leader {l} has no known peer address"))),
            },
            None => Err(ClusterError::NoLeader),
        };
        match attempt {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                // Wait for the leadership to settle (or a short pause), then try again.
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                let _ = tokio::time::timeout(wait, metrics.changed()).await;
                if wait < Duration::from_millis(200) {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

async fn forward(
    node: &Node,
    leader: NodeId,
    addr: &str,
    op: &AdminOp,
    deadline: Instant,
) -> Result<AdminReply, ClusterError> {
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let res: Result<Result<AdminReply, RemoteError>, _> =
        node.peers.call(Some(leader), addr, "/peer/admin", op, timeout).await;
    match res {
        Ok(r) => r.map_err(ClusterError::from_remote),
        Err(e) => Err(ClusterError::LeaderUnreachable {
            leader,
            reason: e.to_string(),
        }),
    }
}

/// Execute on this node, which must be the leader.
pub async fn execute(node: &Node, op: AdminOp) -> Result<AdminReply, ClusterError> {
    let m = node.metrics();
    if m.state != ServerState::Leader {
        return Err(ClusterError::NotLeader(format!(
            "node {} is not the leader (leader: {})",
            node.id,
            crate::util::opt(m.current_leader)
        )));
    }
    match op {
        AdminOp::Write(req) => write(node, req).await.map(AdminReply::Applied),
        AdminOp::AddMember {
            id,
            api_addr,
            peer_addr,
        } => add_member(node, id, api_addr, peer_addr).await,
        AdminOp::PromoteMember { id } => promote_member(node, id).await,
        AdminOp::RemoveMember { id, force } => remove_member(node, id, force).await,
        AdminOp::PatchConfig(p) => patch_config(node, p).await,
        AdminOp::Switchover { to } => crate::cluster::primary::switchover(node, to)
            .await
            .map(AdminReply::Promoted),
        AdminOp::Failover { to, force } => crate::cluster::primary::failover(node, to, force)
            .await
            .map(AdminReply::Promoted),
        AdminOp::Lease { node: who, epoch } => crate::cluster::primary::grant(node, who, epoch)
            .await
            .map(|()| AdminReply::Granted),
    }
}

async fn patch_config(node: &Node, p: ConfigPatch) -> Result<AdminReply, ClusterError> {
    // Read the newest committed config: confirm leadership and wait for the state machine.
    node.raft
        .ensure_linearizable()
        .await
        .map_err(|e| ClusterError::NotLeader(format!("cannot confirm leadership: {e}")))?;
    let c = p.apply(node.view().state.config.clone());
    validate_dynamic(&c, node.config.raft.election_timeout_max_ms)?;
    write(node, Request::SetConfig { config: c.clone() }).await?;
    Ok(AdminReply::Config(c))
}

/// Validate a `host:port` address given to the admin API.
fn check_addr(field: &str, addr: &str) -> Result<(), ClusterError> {
    crate::config::check_host_port(addr, true)
        .map_err(|reason| ClusterError::Invalid(format!("{field} {addr:?} is not a valid host:port: {reason}")))
}

async fn add_member(node: &Node, id: NodeId, api_addr: String, peer_addr: String) -> Result<AdminReply, ClusterError> {
    if id == 0 {
        return Err(ClusterError::Invalid("member id must be a positive integer".into()));
    }
    check_addr("api_addr", &api_addr)?;
    check_addr("peer_addr", &peer_addr)?;
    let members = member_views(node);
    if let Some(existing) = members.iter().find(|m| m.id == id) {
        // Idempotent: the same node asking again (a joining node retrying) gets its record.
        if existing.peer_addr == peer_addr && (existing.api_addr == api_addr || existing.api_addr.is_empty()) {
            return Ok(AdminReply::Member(existing.clone()));
        }
        return Err(ClusterError::DuplicateId(format!(
            "member {id} already exists (peer {})",
            existing.peer_addr
        )));
    }
    if let Some(other) = members.iter().find(|m| m.peer_addr == peer_addr) {
        return Err(ClusterError::DuplicateAddress(format!(
            "peer address {peer_addr} is already used by member {}",
            other.id
        )));
    }
    if let Some(other) = members.iter().find(|m| m.api_addr == api_addr) {
        return Err(ClusterError::DuplicateAddress(format!(
            "API address {api_addr} is already used by member {}",
            other.id
        )));
    }
    // Metadata first, so the member never appears without its API address.
    write(
        node,
        Request::UpsertMember {
            id,
            api_addr: Some(api_addr),
            tags: None,
        },
    )
    .await?;
    node.raft
        .add_learner(id, BasicNode { addr: peer_addr }, false)
        .await
        .map_err(map_write_error)?;
    info!(member = id, "added learner");
    member_answer(node, id, "add")
}

/// The answer to a membership change that just committed: member `id` as it is now.
fn member_answer(node: &Node, id: NodeId, change: &str) -> Result<AdminReply, ClusterError> {
    member_view(node, id)
        .map(AdminReply::Member)
        .ok_or_else(|| ClusterError::Internal(format!("member {id} missing after {change}")))
}

async fn promote_member(node: &Node, id: NodeId) -> Result<AdminReply, ClusterError> {
    let Some(member) = member_view(node, id) else {
        return Err(ClusterError::NotFound(format!("no member {id}")));
    };
    if member.voter {
        return Err(ClusterError::AlreadyVoter(id));
    }
    // Wait until the learner has replicated what the leader had when we were asked.
    let target = node.metrics().last_log_index.unwrap_or(0);
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let mut metrics = node.raft.metrics();
    loop {
        let matched = metrics
            .borrow_and_update()
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index);
        if matched.is_some_and(|i| i >= target) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClusterError::NotCaughtUp(format!(
                    "learner {id} has replicated up to {} of {target} after {}s; is it running and reachable? retry when it has caught up",
                    crate::util::opt(matched),
                    CATCH_UP_TIMEOUT.as_secs()
            )));
        }
        let _ = tokio::time::timeout(left, metrics.changed()).await;
    }
    node.raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
        .await
        .map_err(map_write_error)?;
    info!(member = id, "promoted learner to voter");
    member_answer(node, id, "promote")
}

/// Would removing `id` leave fewer reachable voters than the new configuration's quorum?
/// Pure, so the rule is tested as a table.
pub fn removal_risk(voters: &BTreeSet<NodeId>, reachable: &BTreeSet<NodeId>, id: NodeId) -> Option<String> {
    if !voters.contains(&id) {
        return None;
    }
    let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Some(format!(
            "member {id} is the last voter; a cluster cannot run without voters"
        ));
    }
    let live = remaining.iter().filter(|v| reachable.contains(v)).count();
    let quorum = remaining.len() / 2 + 1;
    if live < quorum {
        return Some(format!(
            "removing voter {id} would leave {live} reachable voter(s) of {} (quorum {quorum}); bring the unreachable voters back first, or pass force=true",
            remaining.len()
        ));
    }
    None
}

async fn remove_member(node: &Node, id: NodeId, force: bool) -> Result<AdminReply, ClusterError> {
    let members = member_views(node);
    let Some(member) = members.iter().find(|m| m.id == id) else {
        return Err(ClusterError::NotFound(format!("no member {id}")));
    };
    let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    // Stricter than the displayed `reachable`: the leader hears from live voters every
    // heartbeat, so a voter silent for a second is counted as down. A removal that needs a
    // dead voter to commit would leave the cluster stuck in a joint configuration.
    let reachable: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| m.id == node.id || node.health().reachable(m.id, QUORUM_CHECK_WITHIN))
        .map(|m| m.id)
        .collect();
    if let Some(risk) = removal_risk(&voters, &reachable, id) {
        if !force || voters.len() == 1 {
            return Err(ClusterError::QuorumAtRisk(risk));
        }
    }
    let change = if member.voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    // retain = false: a removed voter does not linger as a learner.
    node.raft
        .change_membership(change, false)
        .await
        .map_err(map_write_error)?;
    // The old leader may have stepped down if it removed itself; the metadata cleanup is then
    // done best-effort by whoever leads next time an operator looks (it is harmless).
    if node.metrics().state == ServerState::Leader {
        write(node, Request::RemoveMember { id }).await?;
    }
    info!(member = id, force, "removed member");
    Ok(AdminReply::Removed(id))
}

/// A partial update of the dynamic config; the result is validated as a whole.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    lease_ms: Option<u64>,
    failover_timeout_ms: Option<u64>,
    min_failover_interval_ms: Option<u64>,
    replication_mode: Option<keel_raft::state::ReplicationMode>,
    min_acks: Option<u32>,
    max_lag_on_failover: Option<u64>,
    log_retention_entries: Option<u64>,
}

impl ConfigPatch {
    /// The config with this patch applied.
    pub fn apply(&self, c: keel_raft::state::DynamicConfig) -> keel_raft::state::DynamicConfig {
        keel_raft::state::DynamicConfig {
            lease_ms: self.lease_ms.unwrap_or(c.lease_ms),
            failover_timeout_ms: self.failover_timeout_ms.unwrap_or(c.failover_timeout_ms),
            min_failover_interval_ms: self.min_failover_interval_ms.unwrap_or(c.min_failover_interval_ms),
            replication_mode: self.replication_mode.unwrap_or(c.replication_mode),
            min_acks: self.min_acks.unwrap_or(c.min_acks),
            max_lag_on_failover: self.max_lag_on_failover.unwrap_or(c.max_lag_on_failover),
            log_retention_entries: self.log_retention_entries.unwrap_or(c.log_retention_entries),
        }
    }
}

/// Check a dynamic config against this node's Raft timings (raft/DESIGN.md, "Fencing").
pub fn validate_dynamic(c: &keel_raft::state::DynamicConfig, election_timeout_max_ms: u64) -> Result<(), ClusterError> {
    if c.lease_ms < 50 {
        return Err(ClusterError::Invalid(format!(
            "lease_ms = {} is too short (minimum 50)",
            c.lease_ms
        )));
    }
    if c.failover_timeout_ms * 2 < c.lease_ms * 3 {
        return Err(ClusterError::Invalid(format!(
            "failover_timeout_ms = {} must be at least 1.5 x lease_ms = {}",
            c.failover_timeout_ms,
            c.lease_ms * 3 / 2
        )));
    }
    if c.lease_ms * 4 > election_timeout_max_ms * 3 {
        // Not unsafe (the node caps its lease at 3/4 of election_timeout_max), but say so.
        return Err(ClusterError::Invalid(format!(
            "lease_ms = {} exceeds 3/4 of election_timeout_max_ms = {election_timeout_max_ms}; the lease must end before followers may vote again",
            c.lease_ms
        )));
    }
    if c.log_retention_entries < 10 {
        return Err(ClusterError::Invalid(format!(
            "log_retention_entries = {} is too small (minimum 10)",
            c.log_retention_entries
        )));
    }
    if c.min_acks == 0 {
        return Err(ClusterError::Invalid("min_acks must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_risk_table() {
        let s = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // (voters, reachable, remove, refused?)
        let cases = [
            (s(&[1, 2, 3]), s(&[1, 2, 3]), 3, false), // healthy: 2 of 2 remain
            (s(&[1, 2, 3]), s(&[1, 2]), 3, false),    // removing the dead one
            (s(&[1, 2, 3]), s(&[1, 2]), 2, true),     // leaves 1 live of 2
            (s(&[1, 2, 3, 4]), s(&[1, 2, 3]), 4, false),
            (s(&[1, 2, 3, 4]), s(&[1, 2]), 3, false), // 3 remain, 2 live, quorum 2
            (s(&[1, 2, 3, 4]), s(&[1]), 3, true),     // 3 remain, 1 live
            (s(&[1]), s(&[1]), 1, true),              // last voter
            (s(&[1, 2, 3]), s(&[1]), 9, false),       // not a voter (learner): no quorum effect
        ];
        for (i, (voters, reachable, id, refused)) in cases.into_iter().enumerate() {
            let got = removal_risk(&voters, &reachable, id);
            assert_eq!(got.is_some(), refused, "case {i}: {got:?}");
        }
    }
}
