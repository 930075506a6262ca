//! Managed Redis (`--redis-port`, issue 19): this node's `redis-server` is kept in step with the
//! cluster's roles. The lease holder's Redis is the unfenced master; every other node's Redis is
//! fenced if it was a master and replicates from the primary's. The datastore itself is
//! [`keel_replication::service::redis::RedisService`]; this module decides, from the cluster state
//! and the lease, which of its operations to run. (The built-in store is the other
//! `ManagedService`; its roles are not driven here but by the lease and replication tasks, see
//! [`crate::cluster::kv`] and node/DESIGN.md, "Managed datastores".)
//!
//! Tasks (started in `start.rs`, stopped by `node.cancel`):
//! - [`supervise_task`]: runs and restarts the `redis-server` child.
//! - [`duty_task`]: every [`DUTY_INTERVAL`] and on every state or lease change: promote/unfence on
//!   the lease holder, fence at once when the lease lapses, follow the primary's Redis otherwise.
//!   A lease holder whose Redis exited, or has not answered for [`GIVE_UP_AFTER`], gives up the
//!   primary role (a switchover to the member whose Redis is healthy and most advanced).
//! - [`directory_task`]: learns the other members' Redis addresses and health from their
//!   `/v1/status` (`service` object). Nothing is added to the Raft state or the peer messages, so
//!   a mixed-version cluster decodes everything as before; a member of an older release simply has
//!   no Redis address.
//!
//! `fence.rs`: the write quorum (`min-replicas-to-write`, the Redis-side backstop), fencing other
//! members' Redis directly, fresh offsets for failover ranking, catching up with a fenced old master
//! before promotion, and the count of what a demoted old master loses.
//!
//! For the Sentinel listener: [`service_addrs`] (every member's Redis address) and [`master_addr`]
//! (the one to name as master, only while it is the unfenced master of the lease-holding primary).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::NodeId;
use keel_replication::service::redis::{self as redis_svc, RedisConfig, RedisService};
use keel_replication::service::{Loss, ManagedService, ServiceHealth, ServiceRole, Upstream};
use serde::Serialize;
use tracing::{info, warn};

mod fence;

use fence::{account_demotion, catch_up, more_advanced_replica};
pub use fence::{fence_member, fence_others, fresh_service_views, write_quorum, LostReport, LostWrites};
pub use fence::{FENCE_OTHERS_TIMEOUT, PEER_INFO_TIMEOUT};

use crate::cluster::admin::{self, AdminOp};
use crate::cluster::ClusterError;
use crate::config::Config;
use crate::state::Node;

/// How often the duty loop samples Redis and re-checks its role.
pub const DUTY_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a replica waits in one go for the primary's Redis to be a master before following it.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// A lease holder whose Redis does not answer for this long gives up the primary role (at once
/// when the `redis-server` process exited).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(1);
/// How often the directory asks the other members for their Redis address.
const DIRECTORY_INTERVAL: Duration = Duration::from_millis(500);
const DIRECTORY_TIMEOUT: Duration = Duration::from_millis(400);
/// How often another node's listener probes the primary's Redis, and how old (at most) a probe it
/// trusts may be. The time runs across a pause of this process, so a probe taken before it is stale
/// after it.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(25);
pub const PROBE_FRESH: Duration = Duration::from_millis(75);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// A health sample older than this is not trusted by `/primary`.
const SAMPLE_FRESH: Duration = Duration::from_secs(1);
/// The `service` object of `/v1/status`: the latest sample and the lost writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub health: ServiceHealth,
    pub lost: LostWrites,
}

/// What another member said about its Redis in its `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerService {
    pub addr: String,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub offset: Option<u64>,
    /// `master`, `replica`, `fenced` or `down`, as the member last reported it.
    #[serde(default)]
    pub role: Option<String>,
}

/// This node's managed Redis and what the node knows about the others'.
#[derive(Debug)]
pub struct ManagedRedis {
    pub redis: Arc<RedisService>,
    /// Where the other nodes reach this Redis (the advertised API host at `--redis-port`).
    pub advertise_addr: String,
    last: Mutex<Option<(Instant, ServiceHealth)>>,
    peers: Mutex<BTreeMap<NodeId, PeerService>>,
    /// The primary's Redis as [`primary_watch_task`] last found it, asked directly: when, which
    /// member, and whether it took writes (the unfenced master with enough acknowledging replicas).
    primary_probe: Mutex<Option<(Instant, NodeId, bool)>>,
    /// The directory finished its first round since start: the other members' Redis addresses
    /// that can be known are known. This node's Redis is not promoted before (it could not see
    /// whether a replica holds more).
    directory_ready: std::sync::atomic::AtomicBool,
    lost: Mutex<LostWrites>,
}

impl ManagedRedis {
    /// The managed Redis of `config`, when `--redis-port` is set. Data under `<data-dir>/redis/`.
    pub fn open(config: &Config) -> Option<Arc<ManagedRedis>> {
        let r = config.redis.as_ref()?;
        let host = match config.api_addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "0.0.0.0".to_string(),
            ip => ip.to_string(),
        };
        let redis = RedisService::new(RedisConfig {
            server: r.server.clone(),
            host,
            port: r.port,
            // Absolute: redis-server runs inside this directory, where a relative path names nothing.
            dir: std::path::absolute(config.data_dir.join("redis")).unwrap_or_else(|_| config.data_dir.join("redis")),
            include: r.conf.clone(),
            min_replicas: 0,
        });
        Some(Arc::new(ManagedRedis {
            redis: Arc::new(redis),
            advertise_addr: r.advertise_addr(&config.advertise_api_addr),
            last: Mutex::new(None),
            peers: Mutex::new(BTreeMap::new()),
            primary_probe: Mutex::new(None),
            directory_ready: std::sync::atomic::AtomicBool::new(false),
            lost: Mutex::new(LostWrites::default()),
        }))
    }

    /// The latest health sample, if fresh.
    pub fn health(&self) -> Option<ServiceHealth> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < SAMPLE_FRESH)
            .map(|(_, h)| h.clone())
    }

    fn record(&self, h: ServiceHealth) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), h));
    }

    /// Did a direct probe of `member`'s Redis, at most [`PROBE_FRESH`] ago, find it taking writes?
    fn probed_taking_writes(&self, member: NodeId) -> bool {
        let probe = self.primary_probe.lock().unwrap_or_else(|e| e.into_inner());
        probe.is_some_and(|(at, id, takes)| id == member && takes && at.elapsed() <= PROBE_FRESH)
    }

    fn peers(&self) -> BTreeMap<NodeId, PeerService> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What demotions of this node's Redis lost so far.
    pub fn lost(&self) -> LostWrites {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record_loss(&self, master: &str, offset: u64, loss: Loss) {
        let mut l = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        match loss {
            Loss::None => return,
            Loss::Bytes(b) => l.bytes += b,
            Loss::Unknown(_) => l.unknown += 1,
        }
        l.events += 1;
        l.last = Some(LostReport {
            at_ms: crate::util::unix_ms(),
            master: master.to_string(),
            offset,
            loss,
        });
    }
}

/// Each member's managed Redis address (`host:port`), this node's included, for the members whose
/// address is known (learned from their `/v1/status`; empty without `--redis-port`). Which one is
/// the master: the entry of `node.view().state.primary`, and only while [`primary_redis`] says so.
pub fn service_addrs(node: &Node) -> BTreeMap<NodeId, String> {
    let Some(s) = &node.service else {
        return BTreeMap::new();
    };
    let members = node.view().state.members.clone();
    let mut out: BTreeMap<NodeId, String> = s
        .peers()
        .into_iter()
        .filter(|(id, _)| members.contains_key(id))
        .map(|(id, p)| (id, p.addr))
        .collect();
    out.insert(node.id, s.advertise_addr.clone());
    out
}

/// Every member's managed Redis as this node last saw it (its own included), for ranking failover
/// candidates; empty without `--redis-port`. Other members' come from the directory (polled every
/// 500 ms), so an offset may be that much behind.
pub fn service_views(node: &Node) -> BTreeMap<NodeId, crate::cluster::failover::ServiceView> {
    use crate::cluster::failover::ServiceView;
    let Some(s) = &node.service else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<NodeId, ServiceView> = s
        .peers()
        .into_iter()
        .map(|(id, p)| {
            (
                id,
                ServiceView {
                    healthy: p.healthy,
                    offset: p.offset,
                },
            )
        })
        .collect();
    if let Some(h) = s.health() {
        out.insert(node.id, ServiceView::of(&h));
    }
    out
}

/// The primary's Redis address and id, as the cluster state names the primary (whether its lease is
/// valid right now is only known on the primary itself: its `/primary` answers that).
pub fn primary_redis(node: &Node) -> Option<(NodeId, String)> {
    let p = node.view().state.primary?;
    service_addrs(node).remove(&p.node).map(|a| (p.node, a))
}

/// The Redis a client should write to, if any: the primary of the cluster state, when it is this
/// node holding its lease with its Redis the unfenced master, or another member whose Redis this
/// node's [`primary_watch_task`] found taking writes at most 75 ms ago. A fenced or down Redis is
/// never named. For the Sentinel listener (`get-master-addr-by-name`).
pub fn master_addr(node: &Node) -> Option<(NodeId, String)> {
    let s = node.service.as_ref()?;
    let p = node.view().state.primary?;
    if p.node == node.id {
        return (leased_epoch(node).is_some() && master_ok(node)).then(|| (node.id, s.advertise_addr.clone()));
    }
    // The address from the directory (it rarely changes), the state from the direct probe (at most
    // 75 ms old, where the directory's may be 500 ms old).
    let peer = s.peers().remove(&p.node)?;
    s.probed_taking_writes(p.node).then_some((p.node, peer.addr))
}

/// Probe the primary's Redis directly every [`PROBE_INTERVAL`] (when the primary is another node):
/// does it take writes? [`master_addr`] names another node's Redis only while the latest probe,
/// at most [`PROBE_FRESH`] old, said so. The directory's samples come from the members' own
/// `/v1/status` every 500 ms, and a listener answering from one taken before the primary's lease
/// lapsed, or before this node was paused, would name a fenced master.
pub async fn primary_watch_task(node: Arc<Node>) {
    let Some(s) = node.service.clone() else {
        return;
    };
    let mut tick = crate::util::Ticker::new(PROBE_INTERVAL, node.cancel.clone());
    while tick.tick().await {
        let probe = match primary_redis(&node) {
            Some((id, addr)) if id != node.id => {
                let takes = redis_svc::takes_writes_at(&addr, PROBE_TIMEOUT).await.unwrap_or(false);
                Some((Instant::now(), id, takes))
            }
            _ => None,
        };
        *s.primary_probe.lock().unwrap_or_else(|e| e.into_inner()) = probe;
    }
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

/// [`replica_check`] for this node (`Ok` without managed Redis).
pub fn replica_ok(node: &Node) -> Result<(), NotReplica> {
    let Some(s) = &node.service else { return Ok(()) };
    let primary = primary_redis(node).map(|(_, a)| a);
    replica_check(s.health().as_ref(), primary.as_deref())
}

/// Is this node's Redis up and the unfenced master? (`true` without managed Redis.) `/primary` needs it.
pub fn master_ok(node: &Node) -> bool {
    match &node.service {
        None => true,
        Some(s) => s.health().is_some_and(|h| h.healthy && h.role == ServiceRole::Master),
    }
}

/// The `service` object of `/v1/status`; `None` without managed Redis.
pub fn status(node: &Node) -> Option<ServiceStatus> {
    let s = node.service.as_ref()?;
    let health = s.health().unwrap_or_else(|| {
        ServiceHealth::down(
            "redis",
            s.advertise_addr.clone(),
            Some("no recent health sample".into()),
            0,
        )
    });
    Some(ServiceStatus { health, lost: s.lost() })
}

/// Run and restart this node's `redis-server` until shutdown (then stop it).
pub async fn supervise_task(node: Arc<Node>) {
    if let Some(s) = node.service.clone() {
        s.redis.clone().run(node.cancel.clone()).await;
    }
}

/// Is this node the primary with a valid lease right now? Returns the epoch.
fn leased_epoch(node: &Node) -> Option<u64> {
    let p = node.view().state.primary?;
    (p.node == node.id && node.lease.valid_epoch() == Some(p.epoch)).then_some(p.epoch)
}

/// Keep this node's Redis in the role the cluster state and the lease give it.
pub async fn duty_task(node: Arc<Node>) {
    let Some(s) = node.service.clone() else {
        return;
    };
    let mut state = node.state.clone();
    let mut lease = node.lease.subscribe();
    let mut down_since: Option<Instant> = None;
    let mut handing = Handing::default();
    let mut restarts_at_lease: Option<(u64, u64)> = None;
    loop {
        let mut h = s.redis.health().await;
        h.addr = s.advertise_addr.clone();
        s.record(h.clone());
        let acted = match leased_epoch(&node) {
            Some(epoch) => {
                // Restarts of Redis seen when this epoch's lease began.
                let base = match restarts_at_lease {
                    Some((e, r)) if e == epoch => r,
                    _ => {
                        restarts_at_lease = Some((epoch, h.restarts));
                        handing.alone = false;
                        h.restarts
                    }
                };
                if h.restarts > base && h.healthy && handing.gave_up != Some(epoch) && !handing.alone {
                    // A restarted master has lost whatever it had not saved, and replicas that
                    // followed it would resync to that: hand over to a replica that has the data.
                    // Only when no switchover is possible (no other candidate) does it take writes.
                    // (After a failed try, again next tick; the restarted Redis stays fenced meanwhile.)
                    handing.hand_over(&node, &s, epoch).await;
                    false
                } else if handing.gave_up == Some(epoch) && !handing.alone {
                    false
                } else if !h.healthy {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    // A server that exited is not waited for: its restart (after a backoff that
                    // doubles up to 5 s) comes back a replica of itself and hands over anyway.
                    let died = !s.redis.is_running();
                    if (died || since.elapsed() >= GIVE_UP_AFTER) && handing.gave_up != Some(epoch) {
                        handing.hand_over(&node, &s, epoch).await;
                    }
                    false
                } else {
                    down_since = None;
                    match lead(&node, &s, &h, !handing.alone).await {
                        Lead::Done(acted) => acted,
                        Lead::Behind(peer, offset) => {
                            warn!(
                                epoch,
                                peer,
                                peer_offset = offset,
                                offset = h.offset,
                                "a replica's redis holds more than this node's: handing the primary role over instead of promoting"
                            );
                            handing.hand_over(&node, &s, epoch).await;
                            false
                        }
                    }
                }
            }
            None => {
                down_since = None;
                follow(&node, &s, &h).await
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

/// The duty loop's memory of handing the primary role over in this epoch.
#[derive(Default)]
struct Handing {
    /// The epoch whose role this node tried to hand over (and, accepted, waits to lose).
    gave_up: Option<u64>,
    /// A switchover away from this epoch's primary was refused for want of a candidate: it keeps
    /// the role and takes writes.
    alone: bool,
}

impl Handing {
    /// Hand the role over ([`give_up`]): accepted, wait for the lease to move; no candidate, keep
    /// the role (`alone`); anything else, try again on the next tick.
    async fn hand_over(&mut self, node: &Node, s: &ManagedRedis, epoch: u64) {
        self.gave_up = Some(epoch);
        match give_up(node, s, epoch).await {
            Handover::Accepted => {}
            Handover::NoCandidate => self.alone = true,
            Handover::Failed => self.gave_up = None,
        }
    }
}

/// The write quorum this node's Redis should have as the unfenced master now.
fn wanted_quorum(node: &Node) -> u32 {
    let view = node.view();
    // Every member runs a managed Redis (`--redis-port` on all nodes): count the members, not the
    // addresses the directory learned so far, so a new cluster's first master does not take writes
    // without a replica during its first half second.
    let members = view.state.members.len().max(service_addrs(node).len());
    write_quorum(view.state.config.replication_mode, node.voters().len(), members)
}

/// What [`lead`] did.
enum Lead {
    /// Whether it changed anything.
    Done(bool),
    /// Not promoted: this member's Redis, a replica, holds more (its id and offset).
    Behind(NodeId, u64),
}

/// The lease holder: its Redis must be the unfenced master, with the write quorum of the moment.
/// Before a promotion or an unfence it fences the other members' Redis, catches up with the old
/// master, and (with `check_peers`) makes sure no replica holds more than this one.
async fn lead(node: &Node, s: &ManagedRedis, h: &ServiceHealth, check_peers: bool) -> Lead {
    let mut acted = false;
    let want = wanted_quorum(node);
    s.redis.set_write_quorum(want);
    if h.role == ServiceRole::Replica || s.redis.is_fenced() {
        if !s.directory_ready.load(std::sync::atomic::Ordering::SeqCst) {
            // Just started: the other members' Redis are not known yet. Next tick.
            return Lead::Done(false);
        }
        // Before this Redis takes writes (and before it leaves the old master's history):
        // stop any old master that is still running unfenced.
        let n = fence_others(node).await;
        info!(fenced = n, "fenced the other members' redis before taking writes");
        if h.role == ServiceRole::Replica {
            if let Some(master) = &h.following {
                catch_up(s, master).await;
            }
        }
        if check_peers {
            let mine = s.redis.info().await.ok().and_then(|i| i.offset()).unwrap_or(0);
            if let Some((peer, offset)) = more_advanced_replica(node, mine).await {
                return Lead::Behind(peer, offset);
            }
        }
    }
    if h.role == ServiceRole::Replica {
        match s.redis.promote().await {
            Ok(()) => {
                acted = true;
                info!(addr = %s.advertise_addr, "redis promoted to master")
            }
            Err(e) => warn!(error = %e, "promote redis"),
        }
    }
    if s.redis.is_fenced() {
        match s.redis.unfence().await {
            Ok(()) => {
                acted = true;
                info!(addr = %s.advertise_addr, min_replicas_to_write = want, "redis unfenced: taking writes as master")
            }
            Err(e) => warn!(error = %e, "unfence redis"),
        }
    } else {
        // Keep the setting in step with the membership, and undo a direct fence by another node
        // that believed this one was an old master (its lease is valid: it is not).
        match s.redis.min_replicas_to_write().await {
            Ok(n) if n != want => match s.redis.unfence().await {
                Ok(()) => {
                    acted = true;
                    info!(was = n, min_replicas_to_write = want, "redis write quorum updated")
                }
                Err(e) => warn!(error = %e, "update redis write quorum"),
            },
            Ok(_) => {}
            Err(e) => warn!(error = %e, "read redis min-replicas-to-write"),
        }
    }
    Lead::Done(acted)
}

/// Not the lease holder: fence a master at once, then follow the primary's Redis when known.
/// Returns whether it changed anything that succeeded.
async fn follow(node: &Node, s: &ManagedRedis, h: &ServiceHealth) -> bool {
    let mut acted = false;
    if h.role != ServiceRole::Replica && !s.redis.is_fenced() {
        match s.redis.fence().await {
            Ok(()) => {
                acted = h.role != ServiceRole::Down;
                info!(addr = %s.advertise_addr, "redis fenced: not the lease holder")
            }
            Err(e) => warn!(error = %e, "fence redis"),
        }
    }
    let Some((primary, addr)) = primary_redis(node) else {
        return acted;
    };
    if primary == node.id || !h.healthy || h.following.as_deref() == Some(addr.as_str()) {
        return acted;
    }
    if matches!(h.role, ServiceRole::Master | ServiceRole::Fenced) && !account_demotion(s, &addr).await {
        return acted;
    }
    if h.role == ServiceRole::Replica && !master_ready(node, &addr).await {
        return acted;
    }
    let epoch = node.view().state.primary.map_or(0, |p| p.epoch);
    let upstream = Upstream {
        node: primary,
        epoch,
        addr: addr.clone(),
    };
    match s.redis.follow(&upstream).await {
        Ok(()) => {
            info!(primary, master = %addr, "redis now replicates from the primary's");
            true
        }
        Err(e) => {
            warn!(error = %e, master = %addr, "redis follow");
            acted
        }
    }
}

/// Wait (at most [`FOLLOW_WAIT`], polling every 20 ms) until the Redis at `addr`, the primary's,
/// is a master, while it stays the primary's. A replica told to follow a new primary's Redis that
/// is not promoted yet is refused the stream (`-NOMASTERLINK`) and asks again only on Redis's
/// once-a-second replication cron; until a replica is attached the new master, whose write quorum
/// needs one, refuses writes. So attach only once it is the master. `false`: not yet (next tick).
async fn master_ready(node: &Node, addr: &str) -> bool {
    let deadline = Instant::now() + FOLLOW_WAIT;
    loop {
        if redis_svc::info_at(addr, PEER_INFO_TIMEOUT)
            .await
            .is_ok_and(|i| i.is_master())
        {
            return true;
        }
        let still = primary_redis(node).is_some_and(|(_, a)| a == addr);
        if !still || Instant::now() >= deadline || node.cancel.is_cancelled() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a hand-over of the primary role went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    Accepted,
    /// No other member can take the role: this node keeps it and takes writes again.
    NoCandidate,
    /// Anything else (the coordinator did not answer in time, saw the target unreachable, ...):
    /// try again rather than take writes on a Redis that lost data.
    Failed,
}

/// The lease holder's Redis is down or was restarted: stop taking writes and hand the primary role
/// to the member whose Redis is healthy and most advanced (a planned switchover, run by the
/// coordinator).
async fn give_up(node: &Node, s: &ManagedRedis, epoch: u64) -> Handover {
    let to = healthy_peer(node, s).await;
    warn!(epoch, to = ?to, "giving up the primary role: this node's redis died, was restarted, does not answer, or holds less than a replica");
    match admin::submit(node, AdminOp::Switchover { to }, Duration::from_secs(3)).await {
        Ok(_) => Handover::Accepted,
        Err(e) => {
            warn!(error = %e, "switchover away from a primary whose redis died");
            match &e {
                ClusterError::NoCandidate => Handover::NoCandidate,
                ClusterError::Remote(r) if r.code == "no_candidate" => Handover::NoCandidate,
                _ => Handover::Failed,
            }
        }
    }
}

/// The other member whose Redis is healthy and most advanced (highest offset, then lowest id),
/// skipping `nofailover` members. Offsets are asked of each Redis now ([`fresh_service_views`]):
/// the directory's may be half a second old, older than the last writes a replica acknowledged.
async fn healthy_peer(node: &Node, s: &ManagedRedis) -> Option<NodeId> {
    let members = node.view().state.members.clone();
    let ids: Vec<NodeId> = s
        .peers()
        .into_keys()
        .filter(|id| *id != node.id && members.get(id).is_some_and(|m| !m.tags.nofailover))
        .collect();
    most_advanced(fresh_service_views(node, &ids).await)
}

/// The healthy service with the highest offset (then the lowest id).
fn most_advanced(views: BTreeMap<NodeId, crate::cluster::failover::ServiceView>) -> Option<NodeId> {
    views
        .into_iter()
        .filter(|(_, v)| v.healthy)
        .max_by_key(|(id, v)| (v.offset, std::cmp::Reverse(*id)))
        .map(|(id, _)| id)
}

/// Learn the other members' Redis addresses and health from their `/v1/status`.
pub async fn directory_task(node: Arc<Node>) {
    let Some(s) = node.service.clone() else {
        return;
    };
    let mut tick = crate::util::Ticker::new(DIRECTORY_INTERVAL, node.cancel.clone());
    while tick.tick().await {
        let mut set = tokio::task::JoinSet::new();
        for (id, m) in node.view().state.members.iter() {
            if *id == node.id || m.api_addr.is_empty() {
                continue;
            }
            let (id, url, http) = (
                *id,
                format!("{}/v1/status", node.api_url(&m.api_addr)),
                node.http.clone(),
            );
            set.spawn(async move {
                let r: Result<serde_json::Value, reqwest::Error> =
                    match http.get(&url).timeout(DIRECTORY_TIMEOUT).send().await {
                        Ok(resp) => resp.json().await,
                        Err(e) => Err(e),
                    };
                (
                    id,
                    r.ok()
                        .and_then(|v| serde_json::from_value::<PeerService>(v["service"].clone()).ok()),
                )
            });
        }
        while let Some(r) = set.join_next().await {
            let Ok((id, found)) = r else { continue };
            let mut peers = s.peers.lock().unwrap_or_else(|e| e.into_inner());
            match found {
                Some(p) => {
                    peers.insert(id, p);
                }
                // Unreachable: keep the address (it rarely changes), but not its health.
                None => {
                    if let Some(p) = peers.get_mut(&id) {
                        p.healthy = false;
                    }
                }
            }
        }
        s.directory_ready.store(true, std::sync::atomic::Ordering::SeqCst);
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
    fn the_most_advanced_healthy_service_wins() {
        use crate::cluster::failover::ServiceView;
        let v = |healthy, offset| ServiceView { healthy, offset };
        let views = |list: &[(NodeId, ServiceView)]| list.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(
            most_advanced(views(&[(2, v(true, Some(10))), (3, v(true, Some(12)))])),
            Some(3)
        );
        assert_eq!(
            most_advanced(views(&[(2, v(true, Some(10))), (3, v(false, Some(12)))])),
            Some(2)
        );
        assert_eq!(
            most_advanced(views(&[(2, v(true, Some(10))), (3, v(true, Some(10)))])),
            Some(2)
        );
        assert_eq!(most_advanced(views(&[(2, v(false, None))])), None);
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
