//! The Redis Sentinel-compatible discovery listener (`--sentinel-addr`): enough of the Sentinel
//! protocol for unmodified clients' Sentinel support to find the Redis master Keel names. An
//! edge like `http/` and `peer/`: it reads the node's state; nothing in `cluster/` imports it.
//!
//! - [`view`]: what it tells clients ([`SentinelView`]), computed by a pure function.
//! - [`resp`]: the wire protocol (RESP2 and RESP3), pure.
//! - [`commands`]: the answers, pure.
//! - here: [`view_task`] recomputes the view from the node on every change; [`serve`] runs the
//!   TCP listener, one task per connection, and publishes `+switch-master` when the master moves.

pub mod commands;
pub mod resp;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_raft::NodeId;
use keel_replication::service::redis as redis_svc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::SentinelConfig;
use crate::state::Node;
pub use view::{answer_master, confirm_by_probe, Addr, Confirm, LiveState, ManagedNow, SentinelView, ViewInputs};

/// A connection that is not subscribed and sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a reply (or a pushed event) may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 1024;
/// How often the view is recomputed when nothing else changed (the primary's liveness is a
/// matter of time passing, and the managed Redis's health samples change without a signal). It
/// bounds how long after a new primary's Redis is promoted and unfenced the listener names it: at
/// 100 ms that was a tenth of a second on every failover (redis_bench); a computation is a few
/// map lookups.
const REFRESH: Duration = Duration::from_millis(20);

/// Longest each call of the direct probe of the master's Redis (this node's or another member's)
/// may take before an answer that names it (`confirm_by_probe`); no answer in time, no master named.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(100);

/// The channel Sentinel announces a new master on.
pub const SWITCH_MASTER: &str = "+switch-master";

/// One pub/sub message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub channel: String,
    pub message: String,
}

/// Each member's Redis address as discovery names it.
///
/// With managed Redis (`--redis-port`) these are the members' managed Redis addresses
/// ([`crate::cluster::service::service_addrs`]), and the primary's is kept only while
/// [`crate::cluster::service::master_addr`] names it (its Redis up, the unfenced master), so a
/// fenced or down Redis is never named master. Otherwise, the `--sentinel-redis-addrs` map, for a
/// Redis Keel does not start itself.
pub fn redis_addrs(node: &Node, config: &SentinelConfig) -> BTreeMap<NodeId, String> {
    if node.service.is_none() {
        return config.redis_addrs.clone();
    }
    let mut addrs = crate::cluster::service::service_addrs(node);
    if let Some(p) = node.view().state.primary {
        if crate::cluster::service::master_addr(node).map(|(id, _)| id) != Some(p.node) {
            addrs.remove(&p.node);
        }
    }
    addrs
}

/// The members whose replicas count as healthy: reachable, and with managed Redis, whose Redis
/// was last seen healthy.
fn healthy_members(node: &Node, members: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
    let services = crate::cluster::service::service_views(node);
    members
        .iter()
        .copied()
        .filter(|id| node.reachable(*id))
        .filter(|id| node.service.is_none() || services.get(id).is_some_and(|s| s.healthy))
        .collect()
}

/// The other members' Sentinel listeners: each member's API host at this node's Sentinel port
/// (as with Redis's own port, every node is expected to listen on the same one). A member whose
/// address would be this node's own listener is left out.
pub fn sentinel_peers(me: NodeId, api_addrs: &BTreeMap<NodeId, String>, port: u16) -> Vec<String> {
    let own = api_addrs.get(&me).and_then(|a| Addr::parse(a)).map(|a| a.host);
    api_addrs
        .iter()
        .filter(|(id, _)| **id != me)
        .filter_map(|(_, a)| Addr::parse(a))
        .filter(|a| Some(&a.host) != own.as_ref())
        .map(|a| Addr { host: a.host, port }.to_string())
        .collect()
}

/// The view inputs as the node knows them now.
fn inputs(node: &Node, config: &SentinelConfig) -> ViewInputs {
    let state = node.view();
    let primary = state.state.primary;
    let primary_seen = primary.is_some_and(|p| {
        let r = node.repl.replica_status();
        let streamed = r.source == Some(p.node)
            && r.last_contact
                .is_some_and(|t| t.elapsed() <= crate::state::REACHABLE_WITHIN);
        // A node that does not reach a majority may hold a stale state: it names nobody else.
        (node.reachable(p.node) || streamed) && crate::state::quorum_reachable(node)
    });
    let members: BTreeSet<NodeId> = state.state.members.keys().copied().collect();
    let api_addrs: BTreeMap<NodeId, String> = state
        .state
        .members
        .iter()
        .filter(|(_, m)| !m.api_addr.is_empty())
        .map(|(id, m)| (*id, m.api_addr.clone()))
        .collect();
    ViewInputs {
        name: config.name.clone(),
        me: node.id,
        primary,
        own_lease: node.lease.valid_epoch(),
        primary_seen,
        reachable: healthy_members(node, &members),
        members,
        redis_addrs: redis_addrs(node, config),
        sentinels: sentinel_peers(node.id, &api_addrs, config.addr.port()),
    }
}

/// Keep `tx` at the view the node's state gives: recomputed and sent on every cluster-state change,
/// every change of this node's lease, and every `REFRESH`, stamped with the time.
pub async fn view_task(node: Arc<Node>, config: SentinelConfig, tx: watch::Sender<SentinelView>) {
    let mut state = node.state.clone();
    let mut lease = node.lease.subscribe();
    loop {
        let mut new = view::compute(&inputs(&node, &config));
        new.computed_at = Some(std::time::Instant::now());
        // Sent every time: connections check the view's age and the node's live state (`answer_master`).
        tx.send_replace(new);
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = state.changed() => if r.is_err() { return },
            _ = lease.changed() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// Reads the node's state at the instant a connection answers ([`LiveState`]).
pub type LiveFn = Arc<dyn Fn() -> LiveState + Send + Sync>;

/// The node's state now, as a connection checks it before naming a master: the lease, Keel's fence
/// flag on the managed Redis, and the master [`crate::cluster::service::master_addr`] names now.
pub fn live_state(node: &Node) -> LiveState {
    LiveState {
        me: node.id,
        own_lease: node.lease.valid_epoch(),
        managed: node.service.as_ref().map(|s| ManagedNow {
            fenced: s.redis.is_fenced(),
            master: crate::cluster::service::master_addr(node).map(|(id, _)| id),
        }),
    }
}

/// Start the listener's tasks on `listener`: the view feeder and the server.
pub fn spawn(node: &Arc<Node>, config: SentinelConfig, listener: TcpListener) -> Vec<(&'static str, JoinHandle<()>)> {
    let (tx, rx) = watch::channel(SentinelView {
        name: config.name.clone(),
        ..SentinelView::default()
    });
    let live: LiveFn = {
        let node = node.clone();
        Arc::new(move || live_state(&node))
    };
    vec![
        ("sentinel view", tokio::spawn(view_task(node.clone(), config, tx))),
        ("sentinel", tokio::spawn(serve(listener, rx, live, node.cancel.clone()))),
    ]
}

/// The `+switch-master` message for a move from `old` to `new`.
pub fn switch_master_message(name: &str, old: &Addr, new: &Addr) -> String {
    format!("{name} {} {} {} {}", old.host, old.port, new.host, new.port)
}

/// Publish `+switch-master` whenever the named master changes to another address (from the last
/// one named, also across a time with none).
async fn publish_task(
    mut views: watch::Receiver<SentinelView>,
    live: LiveFn,
    events: broadcast::Sender<Event>,
    cancel: CancellationToken,
) {
    let mut last: Option<Addr> = views.borrow_and_update().master.clone().map(|m| m.1);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = views.changed() => if r.is_err() { return },
        }
        let v = views.borrow_and_update().clone();
        // Announced only once a connection could name it too (the lease and the fence as they are
        // now, [`answer_master`]); until then a later view announces it.
        let Some((node, new)) = answer_master(&v, &live(), std::time::Instant::now()).cloned() else {
            continue;
        };
        if let Some(old) = last.as_ref().filter(|old| **old != new) {
            let message = switch_master_message(&v.name, old, &new);
            info!(%message, node, epoch = v.epoch, "sentinel: +switch-master");
            // No subscriber is not an error.
            let _ = events.send(Event {
                channel: SWITCH_MASTER.into(),
                message,
            });
        }
        last = Some(new);
    }
}

/// Serve Sentinel clients on `listener` until `cancel`, from the views `views` carries, naming a
/// master only when `live` (read at each answer) agrees ([`answer_master`]).
pub async fn serve(
    listener: TcpListener,
    views: watch::Receiver<SentinelView>,
    live: LiveFn,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, "sentinel-compatible discovery listening");
    }
    let (events, _) = broadcast::channel(64);
    let publisher = tokio::spawn(publish_task(
        views.clone(),
        live.clone(),
        events.clone(),
        cancel.clone(),
    ));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let ids = AtomicU64::new(1);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "sentinel: accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    conns.spawn(async move {
                        let msg = resp::Reply::err("ERR max number of clients reached").to_bytes(false);
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&msg)).await;
                    });
                    continue;
                };
                let id = ids.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, id, "sentinel: connection");
                let (views, events, cancel) = (views.clone(), events.subscribe(), cancel.clone());
                let live = live.clone();
                conns.spawn(async move {
                    connection(stream, id, views, live, events, cancel).await;
                    drop(permit);
                });
            }
        }
    }
    // Every connection watches `cancel` too: they end at once.
    while conns.join_next().await.is_some() {}
    let _ = publisher.await;
}

/// Probe the Redis at `addr` as `how` says (within [`CONFIRM_TIMEOUT`] per call; no answer: no).
async fn confirmed(how: Confirm, addr: &str) -> bool {
    match how {
        Confirm::TakesWrites => redis_svc::takes_writes_at(addr, CONFIRM_TIMEOUT).await.unwrap_or(false),
        Confirm::Unfenced => redis_svc::unfenced_master_at(addr, CONFIRM_TIMEOUT)
            .await
            .is_ok_and(|m| m.is_some()),
    }
}

/// Does this request's answer name the master (so that it is confirmed first)?
fn names_master(args: &[Vec<u8>]) -> bool {
    let word = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).to_lowercase());
    match word(0).as_deref() {
        Some("info") => true,
        Some("sentinel") => matches!(
            word(1).as_deref(),
            Some("get-master-addr-by-name" | "master" | "masters" | "replicas" | "slaves" | "ckquorum")
        ),
        _ => false,
    }
}

/// Write `out` (and clear it); false when the peer is gone or too slow.
async fn flush(w: &mut tokio::net::tcp::OwnedWriteHalf, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, w.write_all(out)).await, Ok(Ok(())));
    out.clear();
    ok
}

/// One client connection: answer requests in order, and push events while subscribed.
async fn connection(
    stream: TcpStream,
    id: u64,
    views: watch::Receiver<SentinelView>,
    live: LiveFn,
    mut events: broadcast::Receiver<Event>,
    cancel: CancellationToken,
) {
    let (mut r, mut w) = stream.into_split();
    let mut conn = commands::Conn {
        id,
        ..commands::Conn::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle_until = tokio::time::Instant::now().checked_add(IDLE_TIMEOUT);
    loop {
        // Answer every complete request received so far.
        loop {
            match resp::parse_request(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    if args.is_empty() {
                        continue;
                    }
                    let mut view = views.borrow().clone();
                    // Checked at the answer, not only when the view was computed: a view computed
                    // before a pause of this process (or a stalled task), or before the lease
                    // lapsed and Keel fenced the Redis it names, names no master. The client asks
                    // again, by then from a fresh view.
                    let now = live();
                    view.master = answer_master(&view, &now, std::time::Instant::now()).cloned();
                    if let Some((node, addr)) = view.master.clone() {
                        if let Some(how) = confirm_by_probe(node, &now).filter(|_| names_master(&args)) {
                            if !confirmed(how, &addr.to_string()).await {
                                debug!(node, %addr, ?how, "sentinel: the primary's redis is not the master to name now");
                                view.master = None;
                            }
                        }
                    }
                    let outcome = commands::handle(&args, &mut conn, &view);
                    outcome.replies.iter().for_each(|r| r.encode(conn.resp3, &mut out));
                    if outcome.close {
                        flush(&mut w, &mut out).await;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    resp::Reply::err(format!("ERR {e}")).encode(conn.resp3, &mut out);
                    flush(&mut w, &mut out).await;
                    return;
                }
            }
        }
        if !flush(&mut w, &mut out).await {
            return;
        }
        // A subscribed connection may stay quiet for as long as it likes; another one is closed
        // after IDLE_TIMEOUT without a byte from the client.
        let deadline = idle_until.filter(|_| conn.subscriptions() == 0);
        let idle_wait = async move {
            match deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = idle_wait => return,
            read = r.read(&mut chunk) => match read {
                Ok(n) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    idle_until = tokio::time::Instant::now().checked_add(IDLE_TIMEOUT);
                }
                // Closed or failed.
                _ => return,
            },
            ev = events.recv() => match ev {
                Ok(e) => conn
                    .deliveries(&e.channel, &e.message)
                    .iter()
                    .for_each(|r| r.encode(conn.resp3, &mut out)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests;
