//! The primary's lease and the coordinator's side of it: lease renewal, the failover
//! controller loop, switchover and forced failover. The safety argument for all of this is
//! in `raft/DESIGN.md` ("Fencing"); the rules the coordinator follows are in
//! [`crate::cluster::failover::decide`].
//!
//! - Every node runs [`renew_task`]: when the cluster state names it primary, it first runs
//!   the catch-up step, then renews its lease every `lease/3` with the coordinator. The lease
//!   ends at *send time of the last granted request* + lease, on this node's monotonic clock.
//! - The coordinator grants in [`Coordinator::grant`] only after `ensure_linearizable()` and
//!   only if the committed state still names that node and epoch.
//! - Every node runs [`controller_task`]; it acts only while the node is the Raft leader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::state::{PrimaryRecord, Request};
use keel_raft::NodeId;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::admin::{self, member_views};
use crate::cluster::error::{ClusterError, RemoteError};
use crate::cluster::failover::{self, Candidate, ClusterView, Decision, FailoverReason};
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

// The lease arithmetic as pure functions, so the fencing model (`node/tests/fencing_model.rs`)
// checks the code that runs rather than a copy of it.

/// The lease a primary uses: the configured `lease_ms`, capped at 3/4 of `election_timeout_max_ms`.
pub fn lease_len_ms(lease_ms: u64, election_timeout_max_ms: u64) -> u64 {
    lease_ms.min(election_timeout_max_ms * 3 / 4)
}

/// When a granted lease ends: `sent` is when the renewal request was *sent* (taken before the
/// request, on the primary's monotonic clock), never when the grant arrived — the coordinator's
/// quorum confirmation happened after `sent`, and that is what the lease is counted from.
pub fn lease_deadline<T: std::ops::Add<Duration, Output = T>>(sent: T, lease: Duration) -> T {
    sent + lease
}

/// Before this instant (coordinator's clock) no lease for a *newer* epoch is granted: the
/// previous primary's lease, counted from a send time before `last_grant`, has ended by then
/// (`lease_ms` is the configured lease, which bounds every node's effective lease).
pub fn fence_deadline<T: std::ops::Add<Duration, Output = T>>(last_grant: T, lease_ms: u64) -> T {
    last_grant + Duration::from_millis(lease_ms)
}

/// This node's lease as primary.
#[derive(Debug, Default)]
pub struct Lease {
    inner: Mutex<LeaseInner>,
    /// `Some(epoch)` while a lease is held; watched by the role tracker.
    holding: watch::Sender<Option<u64>>,
}

#[derive(Debug, Default)]
struct LeaseInner {
    epoch: u64,
    until: Option<Instant>,
    /// Epoch this node was told to step down from (switchover): never renew it again.
    stepped_down: Option<u64>,
}

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch of a lease that is valid right now.
    pub fn valid_epoch(&self) -> Option<u64> {
        let l = self.lock();
        match l.until {
            Some(u) if Instant::now() < u => Some(l.epoch),
            _ => None,
        }
    }

    pub fn remaining(&self) -> Option<Duration> {
        self.lock()
            .until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn extend(&self, epoch: u64, until: Instant) -> bool {
        let mut l = self.lock();
        if l.stepped_down == Some(epoch) {
            return false;
        }
        l.epoch = epoch;
        l.until = Some(until);
        drop(l);
        self.holding.send_if_modified(|h| {
            let changed = *h != Some(epoch);
            *h = Some(epoch);
            changed
        });
        true
    }

    /// Give up the lease at once.
    pub fn drop_now(&self, step_down_epoch: Option<u64>) {
        let mut l = self.lock();
        l.until = None;
        if step_down_epoch.is_some() {
            l.stepped_down = step_down_epoch;
        }
        drop(l);
        self.holding.send_if_modified(|h| h.take().is_some());
    }

    /// Mark expiry in the watch channel once the deadline passed (the deadline task calls it).
    fn expire_if_due(&self) {
        if self.valid_epoch().is_none() {
            self.holding.send_if_modified(|h| h.take().is_some());
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.holding.subscribe()
    }
}

/// The coordinator's memory. Reset whenever this node becomes leader: leases granted before
/// an election have all ended by the time it completes (raft/DESIGN.md).
#[derive(Debug, Default)]
pub struct Coordinator {
    inner: Mutex<CoordInner>,
}

#[derive(Debug, Default, Clone)]
struct CoordInner {
    /// Term in which this node leads, and since when.
    term: Option<u64>,
    leader_since: Option<Instant>,
    /// Last grant: to whom, which epoch, when (after ensure_linearizable returned).
    last_grant: Option<(NodeId, u64, Instant)>,
    /// No lease for a *newer* epoch before this instant (the previous primary's lease may
    /// still run until then).
    fence_until: Option<Instant>,
    /// Epoch whose renewals are refused (switchover in progress or done).
    refused_epoch: Option<u64>,
    primary_lost_at_election: bool,
    last_auto_failover: Option<Instant>,
    /// Last promotion committed here: the new primary's silence is counted from it, since it
    /// cannot have renewed before it was promoted.
    last_promotion: Option<Instant>,
    /// Why a due failover cannot happen, for status.
    blocked: Option<String>,
    last_decision: Option<String>,
}

/// Longest the controller waits for a promotion to commit.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Origin for the controller's millisecond clock.
fn ms_since(origin: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(origin).as_millis() as u64
}

impl Coordinator {
    fn lock(&self) -> std::sync::MutexGuard<'_, CoordInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn blocked_reason(&self) -> Option<String> {
        self.lock().blocked.clone()
    }

    /// Milliseconds since the current primary's epoch was last granted a lease here.
    pub fn since_last_grant(&self, primary: Option<PrimaryRecord>) -> Option<Duration> {
        let g = self.lock().last_grant?;
        let p = primary?;
        (g.0 == p.node && g.1 == p.epoch).then(|| g.2.elapsed())
    }

    /// Time since this node last granted any lease as coordinator (its own included).
    pub fn since_any_grant(&self) -> Option<Duration> {
        self.lock().last_grant.map(|(_, _, t)| t.elapsed())
    }

    /// Grant (renew) the lease of `node` for `epoch`. Runs on the leader.
    pub async fn grant(&self, node: &Node, who: NodeId, epoch: u64) -> Result<(), ClusterError> {
        {
            let c = self.lock();
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
        self.lock().last_grant = Some((who, epoch, Instant::now()));
        Ok(())
    }
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

async fn renew_once(node: &Node, epoch: u64, lease_len: Duration) {
    let sent = Instant::now();
    let m = node.metrics();
    let res = match m.current_leader {
        Some(l) if l == node.id && m.state == ServerState::Leader => node.coordinator.grant(node, node.id, epoch).await,
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
                Some(p) if p.node != node.id => !probe(&node, p.node).await,
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
        let members = member_views(&node)
            .into_iter()
            .map(|m| Candidate {
                id: m.id,
                voter: m.voter,
                reachable: m.reachable,
                nofailover: m.tags.nofailover,
                priority: m.tags.priority,
                position: positions.get(&m.id).map(|p| p.seq),
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
        match failover::decide(&view) {
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

/// Is `peer` alive? One quick ping (used only to decide whether to wait, never for safety).
async fn probe(node: &Node, peer: NodeId) -> bool {
    let Some(addr) = node.peer_addr_of(peer) else {
        return false;
    };
    let r: Result<crate::cluster::duties::Ping, _> = node
        .peers
        .call(Some(peer), &addr, "/peer/ping", &(), Duration::from_millis(300))
        .await;
    r.is_ok()
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
    admin::write(
        node,
        Request::Promote {
            node: to,
            epoch,
            reason: reason.to_string(),
            at_ms: unix_ms(),
        },
    )
    .await?;
    node.coordinator.lock().last_promotion = Some(Instant::now());
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
