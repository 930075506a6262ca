//! Managed Redis, the consistency side: the write quorum the unfenced master runs with (the
//! Redis-side backstop), fencing other members' Redis directly before this node's takes writes, the
//! fresh offsets failover ranks by, catching up with a fenced old master before promotion, and the
//! count of what a demoted old master loses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_raft::state::ReplicationMode;
use keel_raft::NodeId;
use keel_replication::service::redis as redis_svc;
use keel_replication::service::{lost_on_demotion, Loss, ReplicationInfo, ServiceError, Upstream};
use tracing::{info, warn};

use super::redis::ManagedRedis;
use super::service_addrs;
use crate::state::Node;

/// Budget for fencing the other members' Redis directly before this node's Redis takes writes:
/// short, because promotion must not wait on an old master that is gone or cut off (its own
/// `min-replicas-to-write` backstop stops it then).
pub const FENCE_OTHERS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a new primary waits for the rest of the old master's stream before promoting.
const CATCH_UP_MAX: Duration = Duration::from_secs(1);
/// Budget for asking another member's Redis its replication state (fresh offsets for ranking,
/// the new master's history before a demotion).
pub const PEER_INFO_TIMEOUT: Duration = Duration::from_millis(200);

/// `min-replicas-to-write` for the unfenced master. Sync mode: floor(voters / 2), so the master and
/// the replicas that acknowledged a write (`WAIT floor(voters/2)`) are a majority of the voters.
/// Async mode: 1 once the cluster has a second member (the backstop: a master cut off from
/// every replica stops taking writes within `min-replicas-max-lag` + 2 s), else 0 (a lone node).
pub fn write_quorum(mode: ReplicationMode, voters: usize, redis_members: usize) -> u32 {
    match mode {
        ReplicationMode::Sync => (voters / 2) as u32,
        ReplicationMode::Async => u32::from(redis_members >= 2),
    }
}

/// `INFO replication` of each of `ids`' managed Redis, asked directly, just now (in parallel,
/// within [`PEER_INFO_TIMEOUT`]); a member whose address is unknown is left out.
async fn infos(
    node: &Node,
    ids: impl IntoIterator<Item = NodeId>,
) -> BTreeMap<NodeId, Result<ReplicationInfo, ServiceError>> {
    let addrs = service_addrs(node);
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let Some(addr) = addrs.get(&id).cloned() else { continue };
        set.spawn(async move { (id, redis_svc::info_at(&addr, PEER_INFO_TIMEOUT).await) });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((id, r)) = r {
            out.insert(id, r);
        }
    }
    out
}

/// Each of `ids`' managed Redis asked directly (`infos`), for the failover decision: the
/// directory's samples may be half a second old. A Redis that does not answer is reported
/// unhealthy; a member whose address is unknown is left out.
pub(super) async fn fresh_views(
    node: &Node,
    ids: &[NodeId],
) -> BTreeMap<NodeId, crate::cluster::failover::ServiceView> {
    use crate::cluster::failover::ServiceView;
    infos(node, ids.iter().copied())
        .await
        .into_iter()
        .map(|(id, r)| {
            let view = match r {
                Ok(i) => ServiceView {
                    healthy: true,
                    offset: i.offset(),
                },
                Err(_) => ServiceView {
                    healthy: false,
                    offset: None,
                },
            };
            (id, view)
        })
        .collect()
}

/// Fence `member`'s Redis directly (the old primary's, when the coordinator decides to replace it),
/// within [`FENCE_OTHERS_TIMEOUT`]: its offset stops moving before the candidates are ranked. Its own
/// node restores the setting if it turns out to hold a valid lease after all.
pub(super) async fn fence_member(node: &Node, member: NodeId) {
    if member == node.id {
        return;
    }
    let Some(addr) = service_addrs(node).remove(&member) else {
        return;
    };
    if let Err(e) = redis_svc::fence_at(&addr, FENCE_OTHERS_TIMEOUT).await {
        info!(member, redis = %addr, error = %e, "could not fence the old primary's redis directly");
    }
}

/// Fence every other member's Redis directly (in parallel, within [`FENCE_OTHERS_TIMEOUT`]): an old
/// master whose node is paused or cut off from the cluster but whose Redis this node reaches stops
/// taking writes before this node's Redis starts. Replicas are unaffected. Failures are logged
/// and do not block: the old master's own backstop (`min-replicas-to-write` with
/// `min-replicas-max-lag`) stops it once its replicas have left it.
pub async fn fence_others(node: &Node) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for (id, addr) in service_addrs(node) {
        if id == node.id {
            continue;
        }
        set.spawn(async move { (id, redis_svc::fence_at(&addr, FENCE_OTHERS_TIMEOUT).await, addr) });
    }
    let mut fenced = 0;
    while let Some(r) = set.join_next().await {
        let Ok((id, r, addr)) = r else { continue };
        match r {
            Ok(()) => fenced += 1,
            Err(e) => info!(member = id, redis = %addr, error = %e, "could not fence another member's redis directly"),
        }
    }
    fenced
}

/// Another member's Redis that is a replica holding more than `mine` (this node's offset), asked
/// directly now (in parallel, within [`PEER_INFO_TIMEOUT`]): the member and its offset, the most
/// advanced first. Masters are left out: an old master still answering is fenced and waited for by
/// [`catch_up`]. This is what keeps a lease holder whose Redis came back empty or older (its node
/// restarted after a crash and got the lease again in the same epoch) from becoming the master that
/// the replicas would then resync to, dropping what they hold.
pub(super) async fn more_advanced_replica(node: &Node, mine: u64) -> Option<(NodeId, u64)> {
    let others = service_addrs(node).into_keys().filter(|id| *id != node.id);
    infos(node, others)
        .await
        .into_iter()
        .filter_map(|(id, r)| {
            let info = r.ok()?;
            info.offset().filter(|_| !info.is_master()).map(|offset| (id, offset))
        })
        .filter(|(_, offset)| *offset > mine)
        .max_by_key(|(id, offset)| (*offset, std::cmp::Reverse(*id)))
}

/// Before promoting this node's Redis (a replica of `master`, the old master, just fenced): if the
/// old master still answers, wait (at most [`CATCH_UP_MAX`]) until this Redis has received all of
/// its stream. A write the old master took before the fence and a replica acknowledged (`WAIT`) may
/// still be in flight to this one; promoting before it arrives would drop it. A dead or unreachable
/// old master is not waited for (nothing more can arrive from it).
pub(super) async fn catch_up(s: &ManagedRedis, master: &str) {
    let Ok(m) = redis_svc::info_at(master, PEER_INFO_TIMEOUT).await else {
        return;
    };
    let Some(target) = m.master_repl_offset.filter(|_| m.is_master()) else {
        return;
    };
    // Only the same history: a replica carries its master's replication id. A restarted old master
    // has a new one, and nothing it has is coming this way.
    let mine = s.redis.info().await.ok();
    if mine.as_ref().and_then(|i| i.master_replid.as_deref()) != m.master_replid.as_deref() {
        return;
    }
    let deadline = Instant::now() + CATCH_UP_MAX;
    loop {
        let mine = s.redis.info().await.ok().and_then(|i| i.offset()).unwrap_or(0);
        if mine >= target {
            info!(master, offset = mine, "caught up with the old master before promotion");
            return;
        }
        if Instant::now() >= deadline {
            warn!(
                master,
                offset = mine,
                target,
                "promoting without the old master's last {} bytes",
                target - mine
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// This node's Redis is a (fenced) master about to follow the new master at `master`: count what it
/// loses (its bytes past the history the new master shares with it), never silently. Returns
/// false when it should not follow yet (the new master does not answer or is not a master yet).
pub(super) async fn account_demotion(s: &ManagedRedis, primary: &Upstream) -> bool {
    let master = primary.addr.as_str();
    let (mine, theirs) = tokio::join!(s.redis.info(), redis_svc::info_at(master, PEER_INFO_TIMEOUT));
    let Ok(mine) = mine else { return false };
    if !mine.is_master() {
        return true;
    }
    let theirs = match theirs {
        Ok(t) if t.is_master() => t,
        Ok(_) => return false,
        Err(e) => {
            info!(master, error = %e, "new master's redis not answering yet; following later");
            return false;
        }
    };
    let offset = mine.offset().unwrap_or(0);
    let loss = lost_on_demotion(&mine, &theirs);
    match loss {
        Loss::None => info!(master, offset, "redis demoted: the new master has everything it had"),
        Loss::Bytes(b) => {
            warn!(
                master,
                offset,
                lost_bytes = b,
                "redis demoted: {b} bytes of its replication stream are not on the new master and are lost"
            )
        }
        Loss::Unknown(o) => warn!(
            master,
            offset, "redis demoted: its history is unrelated to the new master's; up to {o} bytes may be lost"
        ),
    }
    s.record_loss(primary, offset, loss);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_quorum_is_a_majority_in_sync_mode_and_a_backstop_in_async() {
        use ReplicationMode::*;
        // Sync: the master plus floor(voters/2) replicas are a majority of the voters.
        for (voters, want) in [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (7, 3)] {
            let n = write_quorum(Sync, voters, voters);
            assert_eq!(n, want, "{voters} voters");
            assert!(
                2 * (n as usize + 1) > voters,
                "master + {n} replicas is a majority of {voters}"
            );
        }
        // Async: one replica once there is a second Redis, none for a lone server.
        assert_eq!(write_quorum(Async, 3, 3), 1);
        assert_eq!(write_quorum(Async, 5, 2), 1);
        assert_eq!(write_quorum(Async, 3, 1), 0);
        assert_eq!(write_quorum(Async, 1, 1), 0);
    }
}
