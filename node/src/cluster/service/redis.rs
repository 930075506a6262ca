//! Managed Redis (`--redis-port`): the node's side of
//! [`keel_replication::service::redis::RedisService`]. [`ManagedRedis`] is its
//! [`DrivenService`]: the generic duty loop drives it, and the Redis-only steps are its hooks and
//! the functions here and in `fence.rs`:
//! - the write quorum (`min-replicas-to-write`, the Redis-side backstop, at the sync-mode floor):
//!   set on every lead tick ([`DrivenService::on_lead`]) and re-checked while unfenced
//!   ([`DrivenService::keep_leading`], which also undoes a direct fence by another node);
//! - before this node's Redis takes writes ([`DrivenService::before_writes`]): fence the other
//!   members' Redis directly over RESP, catch up with a fenced old master, refuse to promote over a
//!   replica that holds more;
//! - before following ([`DrivenService::before_follow`]): count what a demoted master loses
//!   ([`keel_replication::service::lost_on_demotion`]), and let a replica attach only once the new
//!   primary's Redis is a master ([`master_ready`]);
//! - the Sentinel listener's view: [`primary_watch_task`] probes the primary's Redis directly and
//!   [`master_addr`] names it only while that probe says it takes writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::NodeId;
use keel_replication::service::redis::{self as redis_svc, RedisConfig, RedisService};
use keel_replication::service::{Loss, ManagedService, ServiceHealth, ServiceRole, Upstream};
use tracing::{info, warn};

use super::directory::Directory;
use super::fence::{
    self, account_demotion, catch_up, fence_others, more_advanced_replica, write_quorum, PEER_INFO_TIMEOUT,
};
use super::lost::{LostLog, LostReport, LostWrites};
use super::{leased_epoch, master_ok, primary_upstream, service_addrs, DrivenService};
use crate::cluster::failover::ServiceView;
use crate::config::Config;
use crate::state::Node;

/// Longest a replica waits in one go for the primary's Redis to be a master before following it.
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// How often another node's listener probes the primary's Redis, and how old (at most) a probe it
/// trusts may be. The time runs across a pause of this process, so a probe taken before it is stale
/// after it.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(25);
pub const PROBE_FRESH: Duration = Duration::from_millis(75);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// This node's managed Redis and what the node knows about the others'.
#[derive(Debug)]
pub struct ManagedRedis {
    pub redis: Arc<RedisService>,
    /// Where the other nodes reach this Redis (the advertised API host at `--redis-port`).
    pub advertise_addr: String,
    dir: Directory,
    /// The primary's Redis as [`primary_watch_task`] last found it, asked directly: when, which
    /// member, and whether it took writes (the unfenced master with enough acknowledging replicas).
    primary_probe: Mutex<Option<(Instant, NodeId, bool)>>,
    lost: Mutex<LostLog>,
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
            dir: Directory::default(),
            primary_probe: Mutex::new(None),
            lost: Mutex::new(LostLog::open(config.data_dir.join("redis-lost.jsonl"))),
        }))
    }

    /// The latest health sample, if fresh.
    pub fn health(&self) -> Option<ServiceHealth> {
        self.dir.health()
    }

    /// Did a direct probe of `member`'s Redis, at most [`PROBE_FRESH`] ago, find it taking writes?
    fn probed_taking_writes(&self, member: NodeId) -> bool {
        let probe = self.primary_probe.lock().unwrap_or_else(|e| e.into_inner());
        probe.is_some_and(|(at, id, takes)| id == member && takes && at.elapsed() <= PROBE_FRESH)
    }

    /// What demotions of this node's Redis lost, since its data dir was made.
    pub fn lost(&self) -> LostWrites {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).totals()
    }

    /// The newest of those demotions, oldest first.
    pub fn lost_records(&self) -> Vec<LostReport> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).records()
    }

    /// Record (on disk, then in memory) what the demotion to a replica of `primary`'s Redis lost.
    pub(super) fn record_loss(&self, primary: &Upstream, offset: u64, loss: Loss) {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).record(LostReport {
            at_ms: crate::util::unix_ms(),
            epoch: primary.epoch,
            primary: primary.node,
            master: primary.addr.clone(),
            offset,
            loss,
        });
    }
}

impl DrivenService for ManagedRedis {
    type Service = RedisService;

    fn service(&self) -> &Arc<RedisService> {
        &self.redis
    }

    fn advertise_addr(&self) -> &str {
        &self.advertise_addr
    }

    fn directory(&self) -> &Directory {
        &self.dir
    }

    fn is_fenced(&self) -> bool {
        self.redis.is_fenced()
    }

    fn is_running(&self) -> bool {
        self.redis.is_running()
    }

    async fn fresh_views(&self, node: &Node, ids: &[NodeId]) -> std::collections::BTreeMap<NodeId, ServiceView> {
        fence::fresh_views(node, ids).await
    }

    async fn fence_member(&self, node: &Node, member: NodeId) {
        fence::fence_member(node, member).await
    }

    fn on_lead(&self, node: &Node) {
        self.redis.set_write_quorum(wanted_quorum(node));
    }

    async fn before_writes(&self, node: &Node, h: &ServiceHealth, check_peers: bool) -> Option<(NodeId, u64)> {
        // Before this Redis takes writes (and before it leaves the old master's history):
        // stop any old master that is still running unfenced.
        let n = fence_others(node).await;
        info!(fenced = n, "fenced the other members' redis before taking writes");
        if h.role == ServiceRole::Replica {
            if let Some(master) = &h.following {
                catch_up(self, master).await;
            }
        }
        if !check_peers {
            return None;
        }
        let mine = self.redis.info().await.ok().and_then(|i| i.offset()).unwrap_or(0);
        more_advanced_replica(node, mine).await
    }

    async fn keep_leading(&self, _node: &Node) -> bool {
        // Keep the setting in step with the membership, and undo a direct fence by another node
        // that believed this one was an old master (its lease is valid: it is not).
        let want = self.redis.write_quorum();
        match self.redis.min_replicas_to_write().await {
            Ok(n) if n != want => match self.redis.unfence().await {
                Ok(()) => {
                    info!(was = n, min_replicas_to_write = want, "redis write quorum updated");
                    true
                }
                Err(e) => {
                    warn!(error = %e, "update redis write quorum");
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                warn!(error = %e, "read redis min-replicas-to-write");
                false
            }
        }
    }

    async fn before_follow(&self, node: &Node, h: &ServiceHealth, primary: &Upstream) -> bool {
        if matches!(h.role, ServiceRole::Master | ServiceRole::Fenced) && !account_demotion(self, primary).await {
            return false;
        }
        if h.role == ServiceRole::Replica && !master_ready(node, &primary.addr).await {
            return false;
        }
        true
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

/// The primary's Redis address and id, as the cluster state names the primary (whether its lease is
/// valid right now is only known on the primary itself: its `/primary` answers that).
pub fn primary_redis(node: &Node) -> Option<(NodeId, String)> {
    let s = node.service.as_ref()?;
    primary_upstream(node, &**s).map(|u| (u.node, u.addr))
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
    let peer = s.dir.peers().remove(&p.node)?;
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
