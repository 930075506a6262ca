//! The primary's lease and the coordinator's side of it: lease renewal, the failover
//! controller loop, switchover and forced failover. The safety argument for all of this is
//! in `raft/DESIGN.md` ("Fencing"); the rules the coordinator follows are in
//! [`crate::cluster::failover::decide`].
//!
//! - Every node runs [`renew_task`]: when the cluster state names it primary, it first runs
//!   the catch-up step, then renews its lease every `lease/3` with the coordinator. The lease
//!   ends at *send time of the last granted request* + lease, on this node's monotonic clock.
//! - The coordinator grants in [`grant`] only after `ensure_linearizable()` and
//!   only if the committed state still names that node and epoch.
//! - Every node runs [`controller_task`]; it acts only while the node is the Raft leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::state::{PrimaryRecord, Request};
use keel_raft::NodeId;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::cluster::error::{ClusterError, RemoteError};
use crate::cluster::failover::{self, Candidate, ClusterView, Decision, FailoverReason};
use crate::cluster::lease::{fence_deadline, lease_deadline, lease_len_ms, CoordInner};
use crate::cluster::members::{self, member_views};
use crate::state::Node;
use crate::util::unix_ms;

/// The lease must end well before any follower may vote again (openraft's leader lease on a
/// follower is `election_timeout_max`): we use at most 3/4 of it, leaving 25 % for clock-rate
/// drift between machines and scheduling delay.
pub fn effective_lease(node: &Node) -> Duration {
    Duration::from_millis(lease_len_ms(
        node.view().state.config.lease_ms,
        node.config.raft.election_timeout_max_ms,
    ))
}

/// Longest the controller waits for a promotion to commit.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Origin for the controller's millisecond clock.
fn ms_since(origin: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(origin).as_millis() as u64
}

/// Grant (renew) the lease of `node` for `epoch`. Runs on the leader.
pub async fn grant(node: &Node, who: NodeId, epoch: u64) -> Result<(), ClusterError> {
    {
        let c = node.coordinator.lock();
        if c.refused_epoch == Some(epoch) {
            return Err(ClusterError::SteppedDown(epoch));
        }
        if let Some(f) = c.fence_until {
            if Instant::now() < f {
                return Err(ClusterError::PreviousLeaseRunning);
            }
        }
    }
    // Leadership confirmed by a quorum *after* the primary sent its request: no other
    // coordinator can be elected for election_timeout_max from here (raft/DESIGN.md).
    node.raft
        .ensure_linearizable()
        .await
        .map_err(|e| ClusterError::NotLeader(format!("cannot confirm leadership: {e}")))?;
    let primary = node.view().state.primary;
    if primary != Some(PrimaryRecord { node: who, epoch }) {
        return Err(ClusterError::NotPrimary(format!(
            "node {who} epoch {epoch} is not the primary (committed primary: {})",
            primary
                .map(|p| format!("node {} epoch {}", p.node, p.epoch))
                .unwrap_or_else(|| "none".into())
        )));
    }
    node.coordinator.lock().last_grant = Some((who, epoch, Instant::now()));
    Ok(())
}

/// Peer request: renew my lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub node: NodeId,
    pub epoch: u64,
}

/// Peer request: stop accepting writes for `epoch` now (switchover).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepDown {
    pub epoch: u64,
}

/// The step a new primary runs before it accepts writes: pull whatever entries it lacks from
/// the most advanced reachable member (see [`crate::repl::catch_up`]).
pub async fn catch_up(node: &Node, epoch: u64) -> Result<(), keel_replication::ReplError> {
    crate::repl::catch_up(node, epoch).await
}

/// Renew this node's lease while it is the primary.
pub async fn renew_task(node: Arc<Node>) {
    let mut state = node.state.clone();
    let mut caught_up: Option<u64> = None;
    loop {
        let round = Instant::now();
        let lease_len = effective_lease(&node);
        let primary = node.view().state.primary;
        match primary {
            Some(p) if p.node == node.id => {
                if caught_up != Some(p.epoch) {
                    match catch_up(&node, p.epoch).await {
                        Ok(()) => caught_up = Some(p.epoch),
                        Err(e) => warn!(epoch = p.epoch, error = %e, "catch-up failed; not accepting writes yet"),
                    }
                }
                if caught_up == Some(p.epoch) {
                    renew_once(&node, p.epoch, lease_len).await;
                }
            }
            _ => {
                if node.lease.valid_epoch().is_some() {
                    info!("no longer the primary in the committed state: dropping the lease");
                }
                node.lease.drop_now(None);
            }
        }
        // Renew every lease/3 measured from the start of the last round, so a slow round trip
        // (a busy machine) does not push the next renewal towards the end of the lease.
        let wait = (lease_len / 3).saturating_sub(round.elapsed());
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Ask the coordinator (or grant locally, as the coordinator) for this node's lease in `epoch`;
/// bounded by `lease_len / 3`.
pub(crate) async fn renew_once(node: &Node, epoch: u64, lease_len: Duration) {
    let sent = Instant::now();
    let m = node.metrics();
    let res = match m.current_leader {
        Some(l) if l == node.id && m.state == ServerState::Leader => grant(node, node.id, epoch).await,
        Some(l) => match node.peer_addr_of(l) {
            Some(addr) => {
                let req = LeaseRequest { node: node.id, epoch };
                let answer: Result<Result<(), RemoteError>, _> = node
                    .peers
                    .call(Some(l), &addr, "/peer/lease", &req, lease_len / 3)
                    .await;
                match answer {
                    Ok(r) => r.map_err(ClusterError::from_remote),
                    Err(e) => Err(ClusterError::CoordinatorUnreachable(e.to_string())),
                }
            }
            None => Err(ClusterError::NoLeader),
        },
        None => Err(ClusterError::NoLeader),
    };
    match res {
        Ok(()) => {
            let had = node.lease.valid_epoch();
            if node.lease.extend(epoch, lease_deadline(sent, lease_len)) && had.is_none() {
                info!(
                    epoch,
                    lease_ms = lease_len.as_millis() as u64,
                    "lease granted: accepting writes as primary"
                );
            }
        }
        Err(e) => debug!(epoch, error = %e, "lease renewal refused"),
    }
}

/// Wake when the lease deadline passes so the role tracker sees the expiry promptly.
pub async fn lease_expiry_task(node: Arc<Node>) {
    loop {
        let wait = node
            .lease
            .remaining()
            .unwrap_or(Duration::from_millis(50))
            .max(Duration::from_millis(1));
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        node.lease.expire_if_due();
    }
}

/// The failover controller: acts only while this node is the Raft leader.
pub async fn controller_task(node: Arc<Node>) {
    let origin = Instant::now();
    let mut tick = crate::util::Ticker::new(Duration::from_millis(50), node.cancel.clone());
    while tick.tick().await {
        let m = node.metrics();
        if m.state != ServerState::Leader {
            let mut c = node.coordinator.lock();
            if c.term.is_some() {
                *c = CoordInner::default();
            }
            continue;
        }
        let view_state = node.view();
        // Became leader (or a new term): reset, and probe the primary once.
        let new_term = node.coordinator.lock().term != Some(m.current_term);
        if new_term {
            let lost = match view_state.state.primary {
                Some(p) if p.node != node.id => !crate::cluster::probe::alive(&node, p.node).await,
                _ => false,
            };
            let mut c = node.coordinator.lock();
            *c = CoordInner {
                term: Some(m.current_term),
                leader_since: Some(Instant::now()),
                primary_lost_at_election: lost,
                ..Default::default()
            };
            info!(term = m.current_term, primary = ?view_state.state.primary, primary_lost = lost, "coordinator: leading");
        }
        let c = node.coordinator.lock().clone();
        let primary = view_state.state.primary;
        let last_renewal_ms = match (c.last_grant, primary) {
            (Some((n, e, t)), Some(p)) if n == p.node && e == p.epoch => Some(ms_since(origin, t)),
            _ => None,
        };
        let positions = node.repl.reported_positions(node.id);
        // This node's own through the store's `ManagedService::position` (the same seq the others report).
        let mine = crate::cluster::kv::position(&node).await;
        let services = crate::cluster::service::service_views(&node);
        let members = member_views(&node)
            .into_iter()
            .map(|m| Candidate {
                service: services.get(&m.id).copied(),
                id: m.id,
                voter: m.voter,
                reachable: m.reachable,
                nofailover: m.tags.nofailover,
                priority: m.tags.priority,
                position: if m.id == node.id {
                    Some(mine)
                } else {
                    positions.get(&m.id).map(|p| p.seq)
                },
            })
            .collect();
        let view = ClusterView {
            me: node.id,
            now_ms: ms_since(origin, Instant::now()),
            leader_since_ms: c
                .leader_since
                .max(c.last_promotion)
                .map(|t| ms_since(origin, t))
                .unwrap_or(0),
            primary,
            last_renewal_ms,
            primary_lost_at_election: c.primary_lost_at_election,
            maintenance: view_state.state.maintenance,
            config: view_state.state.config.clone(),
            members,
            last_auto_failover_ms: c.last_auto_failover.map(|t| ms_since(origin, t)),
        };
        let mut decision = failover::decide(&view);
        if matches!(decision, Decision::Promote { .. }) && node.service.is_some() {
            decision = decide_with_fresh_services(&node, view).await;
        }
        match decision {
            Decision::Healthy => {
                let mut c = node.coordinator.lock();
                c.blocked = None;
            }
            Decision::Blocked { reason } => {
                let mut c = node.coordinator.lock();
                if c.blocked.as_deref() != Some(reason.as_str()) {
                    warn!(%reason, "failover needed but blocked");
                }
                c.blocked = Some(reason);
            }
            Decision::Promote {
                node: to,
                epoch,
                reason,
            } => {
                let automatic = primary.is_some();
                // Bounded: a coordinator cut off from its quorum cannot commit, and must not
                // stay stuck here once it is deposed.
                let res = tokio::time::timeout(PROMOTE_TIMEOUT, promote(&node, to, epoch, &reason))
                    .await
                    .unwrap_or_else(|_| Err(ClusterError::Timeout("promotion not committed in time".into())));
                match res {
                    Ok(()) => {
                        let mut c = node.coordinator.lock();
                        c.blocked = None;
                        c.last_decision = Some(reason.to_string());
                        if automatic {
                            c.last_auto_failover = Some(Instant::now());
                        }
                    }
                    Err(e) => warn!(error = %e, to, epoch, "promotion failed"),
                }
            }
        }
    }
}

/// A promotion is due with managed Redis: stop the old primary's Redis (directly, a short bounded
/// try: it is dead or its lease lapsed, so its own node would fence it too), then rank the candidates
/// by their Redis offsets asked just now rather than by the directory's half-second-old samples.
async fn decide_with_fresh_services(node: &Node, view: ClusterView) -> Decision {
    if let Some(p) = view.primary {
        crate::cluster::service::fence_member(node, p.node).await;
    }
    let fresh = crate::cluster::service::fresh_service_views(node, &failover::recheck_ids(&view)).await;
    failover::decide(&failover::with_fresh_services(view, &fresh))
}

/// Commit `Promote`, fencing the new epoch's first lease behind the old one's end.
async fn promote(node: &Node, to: NodeId, epoch: u64, reason: &FailoverReason) -> Result<(), ClusterError> {
    let lease_ms = node.view().state.config.lease_ms;
    {
        let mut c = node.coordinator.lock();
        if let Some((_, _, t)) = c.last_grant {
            // The old primary's lease ends before last grant + lease (it was measured from an
            // earlier send time); the configured lease_ms bounds every node's effective lease.
            let until = fence_deadline(t, lease_ms);
            if c.fence_until.is_none_or(|f| f < until) {
                c.fence_until = Some(until);
            }
        }
    }
    members::write(
        node,
        Request::Promote {
            node: to,
            epoch,
            reason: reason.to_string(),
            at_ms: unix_ms(),
        },
    )
    .await?;
    {
        let mut c = node.coordinator.lock();
        c.last_promotion = Some(Instant::now());
        // The probe at election was about the primary of that time. The one just promoted has not
        // renewed yet and must not be taken for lost: its silence counts from `last_promotion`.
        c.primary_lost_at_election = false;
    }
    crate::metrics::failover(reason);
    info!(to, epoch, %reason, "promoted a new primary");
    Ok(())
}

/// Validate a switchover/failover target.
fn check_target(node: &Node, to: NodeId) -> Result<(), ClusterError> {
    let members = member_views(node);
    let Some(m) = members.iter().find(|m| m.id == to) else {
        return Err(ClusterError::NotFound(format!("no member {to}")));
    };
    if !m.voter {
        return Err(ClusterError::BadTarget(format!(
            "member {to} is a learner; promote it to voter first"
        )));
    }
    if m.tags.nofailover {
        return Err(ClusterError::BadTarget(format!("member {to} has the nofailover tag")));
    }
    if !m.reachable {
        return Err(ClusterError::BadTarget(format!(
            "member {to} is unreachable from the coordinator"
        )));
    }
    Ok(())
}

/// Result of a switchover or failover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promoted {
    pub from: Option<NodeId>,
    pub to: NodeId,
    pub epoch: u64,
}

/// Planned switchover, on the coordinator: stop the old primary's writes, wait until the
/// target has caught up, promote it.
pub async fn switchover(node: &Node, to: Option<NodeId>) -> Result<Promoted, ClusterError> {
    let state = node.view().state.clone();
    let Some(old) = state.primary else {
        return Err(ClusterError::NoPrimary);
    };
    let to = match to {
        Some(t) => t,
        None => {
            let mut c: Vec<_> = member_views(node)
                .into_iter()
                .filter(|m| m.voter && m.reachable && !m.tags.nofailover && m.id != old.node)
                .collect();
            c.sort_by_key(|m| (std::cmp::Reverse(m.tags.priority), m.id));
            c.first().map(|m| m.id).ok_or(ClusterError::NoCandidate)?
        }
    };
    if to == old.node {
        return Err(ClusterError::BadTarget(format!("member {to} is already the primary")));
    }
    check_target(node, to)?;
    // 1. Stop the old primary: refuse its renewals, ask it to drop its lease now.
    node.coordinator.lock().refused_epoch = Some(old.epoch);
    let acked = if old.node == node.id {
        node.lease.drop_now(Some(old.epoch));
        true
    } else {
        match node.peer_addr_of(old.node) {
            Some(addr) => {
                let r: Result<Result<(), RemoteError>, _> = node
                    .peers
                    .call(
                        Some(old.node),
                        &addr,
                        "/peer/stepdown",
                        &StepDown { epoch: old.epoch },
                        Duration::from_secs(1),
                    )
                    .await;
                matches!(r, Ok(Ok(())))
            }
            None => false,
        }
    };
    // 2. Catch-up of the target: nothing to replicate until the datastore exists.
    // 3. Promote; the new epoch's first lease waits for the old lease unless it was dropped.
    let epoch = old.epoch + 1;
    let res = promote(node, to, epoch, &FailoverReason::Switchover { from: old.node, to }).await;
    if acked {
        node.coordinator.lock().fence_until = None;
    }
    res.map(|()| Promoted {
        from: Some(old.node),
        to,
        epoch,
    })
}

/// Forced failover to `to`, for when the primary is dead. Refused while the primary renews.
pub async fn failover(node: &Node, to: NodeId, force: bool) -> Result<Promoted, ClusterError> {
    let state = node.view().state.clone();
    check_target(node, to)?;
    if state.primary.is_some_and(|p| p.node == to) {
        return Err(ClusterError::BadTarget(format!("member {to} is already the primary")));
    }
    if let (Some(p), Some(since)) = (state.primary, node.coordinator.since_last_grant(state.primary)) {
        if since.as_millis() < state.config.failover_timeout_ms as u128 && !force {
            return Err(ClusterError::PrimaryHealthy(format!(
                "primary {} renewed its lease {} ms ago; use switchover for a planned change, or force=true",
                p.node,
                since.as_millis()
            )));
        }
    }
    if let Some(p) = state.primary {
        node.coordinator.lock().refused_epoch = Some(p.epoch);
    }
    let epoch = state.epoch() + 1;
    let from = state.primary.map(|p| p.node);
    promote(node, to, epoch, &FailoverReason::Manual { to }).await?;
    Ok(Promoted { from, to, epoch })
}
