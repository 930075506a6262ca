//! The duty loop, for any [`DrivenService`]: every [`DUTY_INTERVAL`] and on every state or lease
//! change it samples this node's service and keeps it in the role the cluster state and the lease
//! give it. The lease holder's service is promoted and unfenced; every other node's is fenced if it
//! was a master and follows the primary's. A lease holder whose service exited, or has not answered
//! for [`GIVE_UP_AFTER`], or was restarted, hands the primary role over (a switchover to the member
//! whose service is healthy and most advanced).
//!
//! One tick is [`decide`] (pure: what to do with this sample), then [`act`]: the datastore's own
//! checks (the [`DrivenService`] hooks, which may hold the step back) and the [`ManagedService`]
//! calls. Only a hand-over (a switchover asked of the coordinator) is left to the loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use keel_raft::NodeId;
use keel_replication::service::{ManagedService, ServiceHealth, ServiceRole, Upstream};
use tracing::{info, warn};

use super::{leased_epoch, DrivenService};
use crate::cluster::admin::{self, AdminOp};
use crate::cluster::failover::ServiceView;
use crate::cluster::ClusterError;
use crate::state::Node;

/// How often the duty loop samples the service and re-checks its role.
pub const DUTY_INTERVAL: Duration = Duration::from_millis(100);
/// A lease holder whose service does not answer for this long gives up the primary role (at once
/// when its process exited).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(1);

/// What one tick of the duty loop does with this node's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Duty {
    /// The lease holder does nothing this tick: it handed the role over and waits to lose it, or
    /// its service is down for less than [`GIVE_UP_AFTER`].
    Hold,
    /// The lease holder hands the primary role over (its service died, was restarted, or does not
    /// answer).
    HandOver { epoch: u64 },
    /// The lease holder's service must be the unfenced master (`check_peers`: make sure no
    /// replica holds more before it takes writes).
    Lead { epoch: u64, check_peers: bool },
    /// Not the lease holder: fence the service (a master Keel has not fenced yet), then follow the
    /// primary's (`upstream`, when known and not followed yet).
    Follow { fence: bool, upstream: Option<Upstream> },
}

/// What [`decide`] reads: one sample and what the node knows now.
#[derive(Debug, Clone)]
pub(super) struct Tick<'a> {
    pub me: NodeId,
    /// The epoch of this node's valid lease, if it holds one.
    pub leased: Option<u64>,
    pub health: &'a ServiceHealth,
    /// Is the service's process running (false from its exit until the restart)?
    pub running: bool,
    /// Is Keel's own fence set on it?
    pub fenced: bool,
    /// The primary's service, as the cluster state and the directory name it.
    pub primary: Option<Upstream>,
    pub now: Instant,
}

/// The duty loop's memory across ticks.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Since when the lease holder's service has not answered.
    down_since: Option<Instant>,
    /// Restarts of the service seen when this epoch's lease began: (epoch, restarts).
    restarts_at_lease: Option<(u64, u64)>,
    handing: Handing,
}

/// The duty loop's memory of handing the primary role over in this epoch.
#[derive(Debug, Default)]
struct Handing {
    /// The epoch whose role this node tried to hand over (and, accepted, waits to lose).
    gave_up: Option<u64>,
    /// A switchover away from this epoch's primary was refused for want of a candidate: it keeps
    /// the role and takes writes.
    alone: bool,
}

/// What to do with this tick's sample. Pure apart from `mem`.
pub(super) fn decide(t: &Tick<'_>, mem: &mut Memory) -> Duty {
    let h = t.health;
    let Some(epoch) = t.leased else {
        mem.down_since = None;
        let upstream = t
            .primary
            .clone()
            .filter(|p| p.node != t.me && h.healthy && h.following.as_deref() != Some(p.addr.as_str()));
        return Duty::Follow {
            fence: h.role != ServiceRole::Replica && !t.fenced,
            upstream,
        };
    };
    let base = match mem.restarts_at_lease {
        Some((e, r)) if e == epoch => r,
        _ => {
            mem.restarts_at_lease = Some((epoch, h.restarts));
            mem.handing.alone = false;
            h.restarts
        }
    };
    let handing = &mem.handing;
    if h.restarts > base && h.healthy && handing.gave_up != Some(epoch) && !handing.alone {
        // A restarted master has lost whatever it had not saved, and replicas that followed it
        // would resync to that: hand over to a replica that has the data. Only when no switchover
        // is possible (no other candidate) does it take writes. (After a failed try, again next
        // tick; the restarted service stays fenced meanwhile.)
        Duty::HandOver { epoch }
    } else if handing.gave_up == Some(epoch) && !handing.alone {
        Duty::Hold
    } else if !h.healthy {
        let since = *mem.down_since.get_or_insert(t.now);
        // A server that exited is not waited for: its restart (after a backoff) comes back
        // fenced and hands over anyway.
        let died = !t.running;
        if (died || t.now.duration_since(since) >= GIVE_UP_AFTER) && handing.gave_up != Some(epoch) {
            Duty::HandOver { epoch }
        } else {
            Duty::Hold
        }
    } else {
        mem.down_since = None;
        Duty::Lead {
            epoch,
            check_peers: !handing.alone,
        }
    }
}

/// Keep this node's service in the role the cluster state and the lease give it, until shutdown.
pub(super) async fn run<D: DrivenService>(node: &Node, d: &D) {
    let mut state = node.state.clone();
    let mut lease = node.lease.subscribe();
    let mut mem = Memory::default();
    let kind = d.service().kind();
    loop {
        let mut h = d.service().health().await;
        h.addr = d.advertise_addr().to_string();
        d.directory().record(h.clone());
        let tick = Tick {
            me: node.id,
            leased: leased_epoch(node),
            health: &h,
            running: d.is_running(),
            fenced: d.is_fenced(),
            primary: super::primary_upstream(node, d),
            now: Instant::now(),
        };
        let duty = decide(&tick, &mut mem);
        let acted = match act(d, &Bound { node, d }, duty, &h).await {
            Outcome::Done(acted) => acted,
            Outcome::HandOver { epoch } => {
                mem.handing.hand_over(node, d, epoch).await;
                false
            }
            Outcome::Behind { epoch, peer, offset } => {
                warn!(
                    epoch,
                    peer,
                    peer_offset = offset,
                    offset = h.offset,
                    "a replica's {kind} holds more than this node's: handing the primary role over instead of promoting"
                );
                mem.handing.hand_over(node, d, epoch).await;
                false
            }
        };
        if acted {
            // Sample again at once, so /v1/status and /primary show the new role without a tick's delay.
            continue;
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(DUTY_INTERVAL) => {}
            r = state.changed() => if r.is_err() { return },
            r = lease.changed() => if r.is_err() { return },
        }
    }
}

impl Handing {
    /// Hand the role over ([`give_up`]): accepted, wait for the lease to move; no candidate, keep
    /// the role (`alone`); anything else, try again on the next tick.
    async fn hand_over<D: DrivenService>(&mut self, node: &Node, d: &D, epoch: u64) {
        self.gave_up = Some(epoch);
        match give_up(node, d, epoch).await {
            Handover::Accepted => {}
            Handover::NoCandidate => self.alone = true,
            Handover::Failed => self.gave_up = None,
        }
    }
}

/// The datastore's hooks ([`DrivenService`]'s provided methods) for one tick, bound to the node:
/// [`Bound`] in the loop; the tests use their own, without a node.
pub(super) trait Hooks: Sync {
    fn on_lead(&self);
    fn before_writes(&self, h: &ServiceHealth, check_peers: bool)
        -> impl Future<Output = Option<(NodeId, u64)>> + Send;
    fn keep_leading(&self) -> impl Future<Output = bool> + Send;
    fn before_follow(&self, h: &ServiceHealth, primary: &Upstream) -> impl Future<Output = bool> + Send;
}

/// A [`DrivenService`]'s hooks with the node they run on.
struct Bound<'a, D> {
    node: &'a Node,
    d: &'a D,
}

impl<D: DrivenService> Hooks for Bound<'_, D> {
    fn on_lead(&self) {
        self.d.on_lead(self.node)
    }
    async fn before_writes(&self, h: &ServiceHealth, check_peers: bool) -> Option<(NodeId, u64)> {
        self.d.before_writes(self.node, h, check_peers).await
    }
    async fn keep_leading(&self) -> bool {
        self.d.keep_leading(self.node).await
    }
    async fn before_follow(&self, h: &ServiceHealth, primary: &Upstream) -> bool {
        self.d.before_follow(self.node, h, primary).await
    }
}

/// What [`act`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Whether it changed anything that succeeded.
    Done(bool),
    /// The lease holder is to hand the primary role over (the loop asks the coordinator).
    HandOver { epoch: u64 },
    /// Not promoted: `peer`'s service, a replica, holds more (`offset`); hand the role over.
    Behind { epoch: u64, peer: NodeId, offset: u64 },
}

/// Carry out `duty` (decided on the sample `h`): the hooks and the [`ManagedService`] calls.
pub(super) async fn act<D: DrivenService, H: Hooks>(d: &D, hooks: &H, duty: Duty, h: &ServiceHealth) -> Outcome {
    match duty {
        Duty::Hold => Outcome::Done(false),
        Duty::HandOver { epoch } => Outcome::HandOver { epoch },
        Duty::Lead { epoch, check_peers } => lead(d, hooks, h, epoch, check_peers).await,
        Duty::Follow { fence, upstream } => Outcome::Done(follow(d, hooks, h, fence, upstream).await),
    }
}

/// The lease holder: its service must be the unfenced master. Before a promotion or an unfence the
/// datastore's own checks run ([`DrivenService::before_writes`]), once the directory knows the
/// other members' services.
async fn lead<D: DrivenService, H: Hooks>(
    d: &D,
    hooks: &H,
    h: &ServiceHealth,
    epoch: u64,
    check_peers: bool,
) -> Outcome {
    hooks.on_lead();
    if h.role == ServiceRole::Replica || d.is_fenced() {
        if !d.directory().is_ready() {
            // Just started: the other members' services are not known yet. Next tick.
            return Outcome::Done(false);
        }
        if let Some((peer, offset)) = hooks.before_writes(h, check_peers).await {
            return Outcome::Behind { epoch, peer, offset };
        }
    }
    let (acted, was_unfenced) = become_master(d, h).await;
    if was_unfenced {
        let kept = hooks.keep_leading().await;
        return Outcome::Done(acted || kept);
    }
    Outcome::Done(acted)
}

/// Promote a replica, unfence a fenced master. Returns whether a call succeeded, and whether the
/// service was unfenced already (nothing to unfence).
async fn become_master<D: DrivenService>(d: &D, h: &ServiceHealth) -> (bool, bool) {
    let s = d.service();
    let kind = s.kind();
    let mut acted = false;
    if h.role == ServiceRole::Replica {
        match s.promote().await {
            Ok(()) => {
                acted = true;
                info!(addr = %d.advertise_addr(), "{kind} promoted to master")
            }
            Err(e) => warn!(error = %e, "promote {kind}"),
        }
    }
    if !d.is_fenced() {
        return (acted, true);
    }
    match s.unfence().await {
        Ok(()) => {
            acted = true;
            info!(addr = %d.advertise_addr(), "{kind} unfenced: taking writes as master")
        }
        Err(e) => warn!(error = %e, "unfence {kind}"),
    }
    (acted, false)
}

/// Not the lease holder: fence a master at once, then follow the primary's service when known.
/// Returns whether it changed anything that succeeded.
async fn follow<D: DrivenService, H: Hooks>(
    d: &D,
    hooks: &H,
    h: &ServiceHealth,
    fence: bool,
    upstream: Option<Upstream>,
) -> bool {
    let acted = fence && fence_master(d, h).await;
    let Some(up) = upstream else { return acted };
    if !hooks.before_follow(h, &up).await {
        return acted;
    }
    follow_upstream(d, &up).await || acted
}

/// Fence this node's service. Returns whether that changed a running service.
async fn fence_master<D: DrivenService>(d: &D, h: &ServiceHealth) -> bool {
    let kind = d.service().kind();
    match d.service().fence().await {
        Ok(()) => {
            info!(addr = %d.advertise_addr(), "{kind} fenced: not the lease holder");
            h.role != ServiceRole::Down
        }
        Err(e) => {
            warn!(error = %e, "fence {kind}");
            false
        }
    }
}

/// Point this node's service at the primary's. Returns whether that succeeded.
async fn follow_upstream<D: DrivenService>(d: &D, up: &Upstream) -> bool {
    let kind = d.service().kind();
    match d.service().follow(up).await {
        Ok(()) => {
            info!(primary = up.node, master = %up.addr, "{kind} now replicates from the primary's");
            true
        }
        Err(e) => {
            warn!(error = %e, master = %up.addr, "{kind} follow");
            false
        }
    }
}

/// How a hand-over of the primary role went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    Accepted,
    /// No other member can take the role: this node keeps it and takes writes again.
    NoCandidate,
    /// Anything else (the coordinator did not answer in time, saw the target unreachable, ...):
    /// try again rather than take writes on a service that lost data.
    Failed,
}

/// The lease holder's service is down or was restarted: stop taking writes and hand the primary
/// role to the member whose service is healthy and most advanced (a planned switchover, run by the
/// coordinator).
async fn give_up<D: DrivenService>(node: &Node, d: &D, epoch: u64) -> Handover {
    let kind = d.service().kind();
    let to = healthy_peer(node, d).await;
    warn!(epoch, to = ?to, "giving up the primary role: this node's {kind} died, was restarted, does not answer, or holds less than a replica");
    match admin::submit(node, AdminOp::Switchover { to }, Duration::from_secs(3)).await {
        Ok(_) => Handover::Accepted,
        Err(e) => {
            warn!(error = %e, "switchover away from a primary whose {kind} died");
            match &e {
                ClusterError::NoCandidate => Handover::NoCandidate,
                ClusterError::Remote(r) if r.code == "no_candidate" => Handover::NoCandidate,
                _ => Handover::Failed,
            }
        }
    }
}

/// The other member whose service is healthy and most advanced (highest offset, then lowest id),
/// skipping `nofailover` members. Offsets are asked of each service now
/// ([`DrivenService::fresh_views`]): the directory's may be half a second old, older than the last
/// writes a replica acknowledged.
async fn healthy_peer<D: DrivenService>(node: &Node, d: &D) -> Option<NodeId> {
    let members = node.view().state.members.clone();
    let ids: Vec<NodeId> = d
        .directory()
        .peers()
        .into_keys()
        .filter(|id| *id != node.id && members.get(id).is_some_and(|m| !m.tags.nofailover))
        .collect();
    most_advanced(d.fresh_views(node, &ids).await)
}

/// The healthy service with the highest offset (then the lowest id).
fn most_advanced(views: BTreeMap<NodeId, ServiceView>) -> Option<NodeId> {
    views
        .into_iter()
        .filter(|(_, v)| v.healthy)
        .max_by_key(|(id, v)| (v.offset, std::cmp::Reverse(*id)))
        .map(|(id, _)| id)
}

#[cfg(test)]
mod tests;
