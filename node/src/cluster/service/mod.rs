//! Managed datastores, the node's side (issue 19): this node's datastore is kept in step with the
//! cluster's roles. The lease holder's service is the unfenced master; every other node's is fenced
//! if it was a master and follows the primary's. The datastore itself is a
//! [`keel_replication::service::ManagedService`]; this module decides, from the cluster state and
//! the lease, which of its operations to run. Today that is managed Redis (`--redis-port`,
//! [`ManagedRedis`]). (The built-in store is the other `ManagedService`; its roles are not driven
//! here but by the lease and replication tasks, see [`crate::cluster::kv`] and node/DESIGN.md,
//! "Managed datastores".)
//!
//! The layout, datastore-neutral first:
//! - [`DrivenService`] (here): what the loop needs from a datastore on the node side: its
//!   `ManagedService`, its advertised address, the [`Directory`], Keel's own fence flag, fresh
//!   positions of the other members' services, a direct fence of another member's, and optional
//!   hooks for datastore-specific steps (all no-ops by default).
//! - `duty.rs`: the duty loop ([`duty::DUTY_INTERVAL`], every state or lease change): a pure
//!   decision per sample (lease holder: promote and unfence; others: fence a master, follow the
//!   primary's; a lease holder whose service died, was restarted or does not answer for
//!   [`duty::GIVE_UP_AFTER`] hands the role over), then the hooks, then the `ManagedService` calls.
//! - `directory.rs`: the other members' service addresses and health from their `/v1/status`
//!   (`service` object), and this node's latest sample.
//! - `redis.rs`: [`ManagedRedis`], the Redis implementation of [`DrivenService`] and the
//!   Sentinel listener's view ([`master_addr`], [`primary_watch_task`]); `fence.rs`: the Redis-only
//!   steps over RESP (write quorum, direct fences, fresh offsets, catch-up, loss on demotion).
//!
//! Tasks (started in `start.rs`, stopped by `node.cancel`): [`supervise_task`], [`duty_task`],
//! [`directory_task`], [`primary_watch_task`]. The functions taking a `&Node` below are what the
//! rest of the node reads (`/v1/status`, `/primary`, `/replica`, the Sentinel listener, the
//! failover controller); they read `node.service`.
//!
//! A third datastore: see node/DESIGN.md, "How a third datastore plugs in".

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use keel_raft::NodeId;
use keel_replication::service::{ManagedService, ServiceHealth, ServiceRole, Upstream};
use serde::Serialize;

mod directory;
mod duty;
mod fence;
mod lost;
mod redis;

pub use directory::{Directory, PeerService};
pub use duty::{DUTY_INTERVAL, GIVE_UP_AFTER};
pub use fence::{fence_others, write_quorum};
pub use fence::{FENCE_OTHERS_TIMEOUT, PEER_INFO_TIMEOUT};
pub use lost::{LostReport, LostWrites};
pub use redis::{master_addr, primary_redis, primary_watch_task, ManagedRedis, PROBE_FRESH, PROBE_INTERVAL};

use crate::cluster::failover::ServiceView;
use crate::state::Node;

/// A datastore the duty loop drives, the node's side of it: its [`ManagedService`] plus what the
/// loop needs that the trait does not say. The required methods are datastore-neutral in meaning;
/// the provided ones are hooks for a datastore's own steps around the loop's, no-ops by default.
/// Implemented by [`ManagedRedis`].
pub trait DrivenService: Send + Sync + 'static {
    type Service: ManagedService + 'static;
    fn service(&self) -> &Arc<Self::Service>;
    /// Where the other nodes (and clients) reach this node's service.
    fn advertise_addr(&self) -> &str;
    fn directory(&self) -> &Directory;
    /// Is Keel's own fence set on the service (set by `fence`, at start and on a restart, cleared
    /// by `unfence`)?
    fn is_fenced(&self) -> bool;
    /// Is the service's process running? `false` from its exit until the restart: a lease holder
    /// hands the role over at once rather than after [`GIVE_UP_AFTER`].
    fn is_running(&self) -> bool;
    /// Each of `ids`' service asked directly for its health and position now, for the failover
    /// decision (a service that does not answer is unhealthy; one whose address is unknown is left
    /// out). Bounded in time.
    fn fresh_views(&self, node: &Node, ids: &[NodeId]) -> impl Future<Output = BTreeMap<NodeId, ServiceView>> + Send;
    /// Fence `member`'s service directly (the old primary's, when the coordinator replaces it), so
    /// its position stops moving before the candidates are ranked. Bounded in time; a failure is
    /// logged.
    fn fence_member(&self, node: &Node, member: NodeId) -> impl Future<Output = ()> + Send;

    /// Hook: every tick on the lease holder, before anything else (Redis: set the write quorum).
    fn on_lead(&self, _node: &Node) {}
    /// Hook: before the lease holder's service is promoted or unfenced. Returns another member
    /// whose service holds more (its id and position) to hand the role to instead; checked only
    /// with `check_peers`. (Redis: fence the others directly, catch up with the old master.)
    fn before_writes(
        &self,
        _node: &Node,
        _health: &ServiceHealth,
        _check_peers: bool,
    ) -> impl Future<Output = Option<(NodeId, u64)>> + Send {
        async { None }
    }
    /// Hook: on the lease holder whose service Keel has not fenced: keep it taking writes (Redis:
    /// re-apply the write quorum when it changed or another node fenced it). Whether it changed
    /// anything.
    fn keep_leading(&self, _node: &Node) -> impl Future<Output = bool> + Send {
        async { false }
    }
    /// Hook: just before this node's service follows `primary` (after it was fenced). `false`: not
    /// yet, next tick. (Redis: count what a demoted master loses, wait for the new master.)
    fn before_follow(
        &self,
        _node: &Node,
        _health: &ServiceHealth,
        _primary: &Upstream,
    ) -> impl Future<Output = bool> + Send {
        async { true }
    }
}

/// The `service` object of `/v1/status`: the latest sample and the lost writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub health: ServiceHealth,
    pub lost: LostWrites,
}

/// Each member's managed service address (`host:port`), this node's included, for the members
/// whose address is known (learned from their `/v1/status`; empty without a managed service).
/// Which one is the master: the entry of `node.view().state.primary`, and only while
/// [`master_addr`] says so.
pub fn service_addrs(node: &Node) -> BTreeMap<NodeId, String> {
    match &node.service {
        Some(s) => directory::addrs(node, s.directory(), s.advertise_addr()),
        None => BTreeMap::new(),
    }
}

/// Every member's managed service as this node last saw it (its own included), for ranking
/// failover candidates; empty without a managed service. Other members' come from the directory
/// (polled every 500 ms), so an offset may be that much behind.
pub fn service_views(node: &Node) -> BTreeMap<NodeId, ServiceView> {
    match &node.service {
        Some(s) => directory::views(node, s.directory()),
        None => BTreeMap::new(),
    }
}

/// Each of `ids`' managed service asked directly ([`DrivenService::fresh_views`]), for the failover
/// decision: the directory's samples may be half a second old. Empty without a managed service.
pub async fn fresh_service_views(node: &Node, ids: &[NodeId]) -> BTreeMap<NodeId, ServiceView> {
    match &node.service {
        Some(s) => s.fresh_views(node, ids).await,
        None => BTreeMap::new(),
    }
}

/// Fence `member`'s managed service directly ([`DrivenService::fence_member`]); nothing for this
/// node itself or without a managed service.
pub async fn fence_member(node: &Node, member: NodeId) {
    if member == node.id {
        return;
    }
    if let Some(s) = &node.service {
        s.fence_member(node, member).await;
    }
}

/// The primary's service as the cluster state and the directory name it.
fn primary_upstream<D: DrivenService>(node: &Node, d: &D) -> Option<Upstream> {
    let p = node.view().state.primary?;
    directory::addrs(node, d.directory(), d.advertise_addr())
        .remove(&p.node)
        .map(|addr| Upstream {
            node: p.node,
            epoch: p.epoch,
            addr,
        })
}

/// Why this node's managed Redis is not a healthy replica of the primary's (`/replica` answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReplica {
    #[error("the managed Redis has not been sampled yet or is down: {0}")]
    Down(String),
    #[error("the managed Redis is {0}, not a replica")]
    Role(&'static str),
    #[error("the managed Redis follows {following}, not the primary's Redis {primary}")]
    WrongMaster { following: String, primary: String },
    #[error("the managed Redis's link to its master {0} is down")]
    LinkDown(String),
}

impl NotReplica {
    /// The probe's 503 code.
    pub fn code(&self) -> &'static str {
        match self {
            NotReplica::Down(_) => "service_down",
            NotReplica::Role(_) => "service_not_replica",
            NotReplica::WrongMaster { .. } | NotReplica::LinkDown(_) => "service_not_following",
        }
    }
}

/// Is `health` a healthy replica of `primary` (the primary's Redis address)? Pure, for `/replica`.
pub fn replica_check(health: Option<&ServiceHealth>, primary: Option<&str>) -> Result<(), NotReplica> {
    let h = health.ok_or_else(|| NotReplica::Down("no sample yet".into()))?;
    if !h.healthy {
        return Err(NotReplica::Down(
            h.last_error.clone().unwrap_or_else(|| "not answering".into()),
        ));
    }
    if h.role != ServiceRole::Replica {
        return Err(NotReplica::Role(role_name(h.role)));
    }
    let following = h.following.clone().unwrap_or_default();
    if let Some(p) = primary {
        if following != p {
            return Err(NotReplica::WrongMaster {
                following,
                primary: p.to_string(),
            });
        }
    }
    if !h.link_up {
        return Err(NotReplica::LinkDown(following));
    }
    Ok(())
}

fn role_name(r: ServiceRole) -> &'static str {
    match r {
        ServiceRole::Master => "master",
        ServiceRole::Replica => "replica",
        ServiceRole::Down => "down",
        ServiceRole::Fenced => "fenced",
    }
}

/// [`replica_check`] for this node (`Ok` without a managed service).
pub fn replica_ok(node: &Node) -> Result<(), NotReplica> {
    let Some(s) = &node.service else { return Ok(()) };
    let primary = primary_upstream(node, &**s).map(|u| u.addr);
    replica_check(s.directory().health().as_ref(), primary.as_deref())
}

/// Is this node's service up and the unfenced master? (`true` without a managed service.)
/// `/primary` needs it.
pub fn master_ok(node: &Node) -> bool {
    match &node.service {
        None => true,
        Some(s) => s
            .directory()
            .health()
            .is_some_and(|h| h.healthy && h.role == ServiceRole::Master),
    }
}

/// The `service` object of `/v1/status`; `None` without a managed service.
pub fn status(node: &Node) -> Option<ServiceStatus> {
    let s = node.service.as_ref()?;
    let health = s.directory().health().unwrap_or_else(|| {
        ServiceHealth::down(
            s.service().kind(),
            s.advertise_addr().to_string(),
            Some("no recent health sample".into()),
            0,
        )
    });
    Some(ServiceStatus { health, lost: s.lost() })
}

/// Path of the peer RPC that answers this node's Redis lost-writes records.
pub const LOST_PATH: &str = "/peer/redis/lost";
/// How long `lost_everywhere` waits for each member.
const LOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// This node's lost-writes records as the peer RPC answers them (JSON, so that the record can
/// grow fields without a wire format change); `None` without managed Redis.
pub fn lost_records_json(node: &Node) -> Option<String> {
    let s = node.service.as_ref()?;
    serde_json::to_string(&s.lost_records()).ok()
}

/// Every member's Redis lost-writes records (this node's read locally, the others' asked over the
/// peer port in parallel, `LOST_TIMEOUT` (1 s) each), and the members that did not answer (down, cut
/// off, or a release without the RPC). `None` without managed Redis.
pub async fn lost_everywhere(node: &Node) -> Option<(BTreeMap<NodeId, Vec<LostReport>>, Vec<NodeId>)> {
    let s = node.service.as_ref()?;
    let mut found = BTreeMap::from([(node.id, s.lost_records())]);
    let mut set = tokio::task::JoinSet::new();
    for id in node.view().state.members.keys().copied().filter(|id| *id != node.id) {
        let (peers, addr) = (node.peers.clone(), node.peer_addr_of(id));
        set.spawn(async move {
            let answer = match addr {
                Some(a) => peers
                    .call::<(), Option<String>>(None, &a, LOST_PATH, &(), LOST_TIMEOUT)
                    .await
                    .ok(),
                None => None,
            };
            let records = answer
                .flatten()
                .and_then(|j| serde_json::from_str::<Vec<LostReport>>(&j).ok());
            (id, records)
        });
    }
    let mut silent = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((id, Some(records))) => {
                found.insert(id, records);
            }
            Ok((id, None)) => silent.push(id),
            Err(_) => {}
        }
    }
    silent.sort_unstable();
    Some((found, silent))
}

/// Is this node the primary with a valid lease right now? Returns the epoch.
fn leased_epoch(node: &Node) -> Option<u64> {
    let p = node.view().state.primary?;
    (p.node == node.id && node.lease.valid_epoch() == Some(p.epoch)).then_some(p.epoch)
}

/// Run and restart this node's managed service until shutdown (then stop it).
pub async fn supervise_task(node: Arc<Node>) {
    if let Some(s) = node.service.clone() {
        s.service().clone().run(node.cancel.clone()).await;
    }
}

/// Keep this node's managed service in the role the cluster state and the lease give it
/// (the duty loop, `duty.rs`).
pub async fn duty_task(node: Arc<Node>) {
    if let Some(s) = node.service.clone() {
        duty::run(&node, &*s).await;
    }
}

/// Learn the other members' service addresses and health from their `/v1/status`
/// (`directory.rs`).
pub async fn directory_task(node: Arc<Node>) {
    if let Some(s) = node.service.clone() {
        directory::run(&node, &*s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(following: &str, link_up: bool) -> ServiceHealth {
        ServiceHealth {
            kind: "redis",
            addr: "10.0.0.2:6379".into(),
            role: ServiceRole::Replica,
            offset: Some(10),
            lag: Some(0),
            following: Some(following.into()),
            link_up,
            healthy: true,
            last_error: None,
            restarts: 0,
        }
    }

    #[test]
    fn replica_check_cases() {
        let p = Some("10.0.0.1:6379");
        assert_eq!(replica_check(Some(&replica("10.0.0.1:6379", true)), p), Ok(()));
        let code = |h: Option<&ServiceHealth>, p: Option<&str>| replica_check(h, p).unwrap_err().code();
        assert_eq!(code(None, p), "service_down");
        let mut down = replica("10.0.0.1:6379", true);
        down.healthy = false;
        assert_eq!(code(Some(&down), p), "service_down");
        let mut master = replica("", true);
        master.role = ServiceRole::Master;
        assert_eq!(code(Some(&master), p), "service_not_replica");
        master.role = ServiceRole::Fenced;
        assert_eq!(code(Some(&master), p), "service_not_replica");
        assert_eq!(code(Some(&replica("10.0.0.3:6379", true)), p), "service_not_following");
        assert_eq!(code(Some(&replica("10.0.0.1:6379", false)), p), "service_not_following");
        // No primary known: following anything with the link up is not checked against it.
        assert_eq!(replica_check(Some(&replica("10.0.0.3:6379", true)), None), Ok(()));
    }
}
