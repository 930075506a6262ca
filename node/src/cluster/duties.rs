//! The small duties every node runs in the background: announce its API address in the cluster
//! state, probe peers it has not heard from, give a new cluster its id (leader only), and track
//! role and leader changes (logs, counters, the role-change hook).

use std::sync::Arc;
use std::time::Duration;

use keel_raft::state::Request;
use openraft::ServerState;
use tracing::{debug, info};

use crate::cluster::admin::{self, AdminOp};
use crate::state::{hook_role, Node};

/// How often followers probe peers they have not heard from (the leader's heartbeats already do).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Record this node's advertised API address in the cluster state whenever it differs (first
/// start, or restart with a new address).
pub async fn announce_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut state = node.state.clone();
    loop {
        let want = node.config.advertise_api_addr.clone();
        let is_member = node
            .metrics()
            .membership_config
            .membership()
            .get_node(&node.id)
            .is_some();
        let current = node.view().state.members.get(&node.id).map(|m| m.api_addr.clone());
        let leader = node.metrics().current_leader;
        if is_member && leader.is_some() && current.as_deref() != Some(want.as_str()) {
            let op = AdminOp::Write(Request::UpsertMember {
                id: node.id,
                api_addr: Some(want.clone()),
                tags: None,
            });
            match admin::submit(&node, op, Duration::from_secs(3)).await {
                Ok(_) => info!(api_addr = %want, "announced API address"),
                Err(e) => debug!(error = %e, "announce API address (will retry)"),
            }
            tokio::select! {
                _ = node.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            continue;
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Followers hear from the leader but not from each other: ping members not heard from
/// recently, so every node can say which members are reachable.
pub async fn probe_task(node: Arc<Node>) {
    let mut tick = crate::util::Ticker::new(PROBE_INTERVAL, node.cancel.clone());
    while tick.tick().await {
        let m = node.metrics();
        let mut set = tokio::task::JoinSet::new();
        for (id, n) in m.membership_config.membership().nodes() {
            if *id == node.id || node.health().reachable(*id, PROBE_INTERVAL) {
                continue;
            }
            let (id, addr, client) = (*id, n.addr.clone(), node.peers.clone());
            set.spawn(async move {
                let r: Result<crate::cluster::probe::Ping, _> =
                    client.call(Some(id), &addr, "/peer/ping", &(), PROBE_INTERVAL).await;
                if let Err(e) = r {
                    debug!(peer = id, error = %e, "probe failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Work only the leader does: give a new cluster its id.
pub async fn leader_duties_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        if node.cancel.is_cancelled() {
            return;
        }
        let m = metrics.borrow_and_update().clone();
        if m.state == ServerState::Leader && node.view().state.cluster_id.is_none() {
            // A new cluster: seed the cluster-wide replication settings from this node's
            // `--replication-mode` / `--min-acks` (later changes go through PATCH /v1/config).
            let mut cfg = node.view().state.config.clone();
            cfg.replication_mode = node.config.replication.mode;
            cfg.min_acks = node.config.replication.min_acks;
            if cfg != node.view().state.config {
                if let Err(e) = admin::submit(
                    &node,
                    AdminOp::Write(Request::SetConfig { config: cfg }),
                    Duration::from_secs(3),
                )
                .await
                {
                    debug!(error = %e, "seed replication settings (will retry)");
                    continue;
                }
            }
            let id = random_cluster_id();
            let op = AdminOp::Write(Request::InitClusterId { cluster_id: id });
            match admin::submit(&node, op, Duration::from_secs(3)).await {
                Ok(_) => info!(cluster_id = %crate::util::opt(node.view().state.cluster_id.clone()), "cluster id set"),
                Err(e) => debug!(error = %e, "set cluster id (will retry)"),
            }
            continue;
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

fn random_cluster_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

/// Track role and leader changes: log them, count them, run the role-change hook.
pub async fn role_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut state = node.state.clone();
    let mut lease = node.lease.subscribe();
    let mut role = hook_role(&node);
    let mut leader = node.metrics().current_leader;
    info!(role, "initial role");
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
            r = lease.changed() => if r.is_err() { return },
        }
        let l = node.metrics().current_leader;
        if l != leader {
            crate::metrics::leader_changed();
            leader = l;
        }
        let now = hook_role(&node);
        if now != role {
            let epoch = node.view().state.epoch();
            info!(from = role, to = now, epoch, "role changed");
            crate::metrics::role_changed();
            node.hook.role_changed(role, now, epoch);
            role = now;
        }
    }
}
