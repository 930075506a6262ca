//! Replication between nodes: the primary's change-log stream, the apply worker on replicas,
//! the new primary's catch-up step, divergence handling, position reports to the coordinator,
//! and the acknowledgements sync mode waits for.
//!
//! Data flow: a replica *pulls* from the primary of the newest epoch it knows, asking for
//! entries after its durable position: over its pull stream (`repl_stream`: one long-lived
//! connection, a request and an answer per frame), or with one `/peer/repl/pull` request each
//! from a primary of an older release. The pull itself is the replica's
//! acknowledgement: asking for entries after `p` means everything up to `p` is durably
//! applied, so the primary counts sync-mode acks from pulls. When nothing is new, the primary
//! holds the pull open (long poll) until a write lands or `wait_ms` passes, so an idle replica
//! learns of a write within one round trip. Memory stays bounded on both sides: a pull answers
//! at most [`MAX_BATCH_ENTRIES`] / [`MAX_BATCH_BYTES`], and a slow replica just pulls later
//! (the primary keeps nothing per replica but its last acknowledged position).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::NodeId;
use keel_replication::{DataError, DataStore, Entry, LogRead, Position};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::repl_stream::PullStream;
use crate::state::Node;

pub const MAX_BATCH_ENTRIES: usize = 1000;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long the primary holds an idle pull open.
pub const PULL_WAIT: Duration = Duration::from_millis(500);
/// In async mode, how long a replica that just applied entries waits before its next pull. Under
/// load the primary commits every few ms; pulling at once would fetch one commit's worth per pull
/// and pay a pull round trip and a replica fsync for each. Waiting lets a pull carry several commits.
/// It adds at most this much replication lag (the half-load lag goal is 100 ms). kv_bench,
/// 128-byte values, 64 clients, 5 s cells alternated on one machine: 8,186 and 9,360 writes/s without
/// the wait, 10,732 and 10,079 with 3 ms. Later, with the servers' CPU per write measured
/// (`--only async:128:64 --secs 5`, alternated): each replica 16-17 µs of CPU per write with 3 ms,
/// 12 with 10 ms, 10 with 25 ms; 14,592-15,571 writes/s with 3 ms, 15,672-16,593 with 10 ms.
pub const ASYNC_PULL_GAP: Duration = Duration::from_millis(10);
/// A pull at most this many entries behind the head is read on the serving task's thread directly.
const SMALL_READ_ENTRIES: u64 = 64;
/// Positions older than this are not used to rank failover candidates.
const REPORT_FRESH: Duration = Duration::from_secs(2);
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// A replica asks for entries after `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullRequest {
    pub node: NodeId,
    pub after: Position,
    /// Newest epoch the replica knows: a server of an older epoch is deposed.
    pub newest_epoch: u64,
    pub wait_ms: u64,
    /// Catch-up of a new primary: served by any member, not only the primary.
    pub catch_up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PullReply {
    /// Entries after the requested position (empty when caught up), sent by the primary of
    /// `epoch`; `head` is the server's position.
    Entries {
        epoch: u64,
        head: Position,
        entries: Vec<Entry>,
    },
    /// The requested position is older than the server's retained log.
    Trimmed { head: Position },
    /// The requester has entries the server never had (or another epoch at that seq).
    Fork { at: Position, ours: Option<Position> },
    /// The server is not the primary of the epoch the requester expects.
    NotPrimary { primary: Option<NodeId> },
}

/// What the replica side knows, for status and lag.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    pub source: Option<NodeId>,
    pub source_head: Option<String>,
    /// How this replica pulls from `source`: `stream` (one long-lived connection, see
    /// `repl_stream`) or `pull` (an HTTP request each, from a primary without the stream).
    pub transport: Option<&'static str>,
    /// `source_head` as a position (for the lag in entries).
    #[serde(skip)]
    pub source_head_pos: Option<Position>,
    #[serde(skip)]
    pub last_contact: Option<Instant>,
    #[serde(skip)]
    pub caught_up_at: Option<Instant>,
    pub last_error: Option<String>,
    pub rolled_back: u64,
}

/// Replication state of one node.
pub struct Repl {
    pub store: DataStore,
    /// Primary side: each replica's acknowledged (durably applied) position.
    acks: Mutex<BTreeMap<NodeId, (Position, Instant)>>,
    ack_notify: Notify,
    /// Coordinator side: positions members reported.
    reported: Mutex<BTreeMap<NodeId, (Position, Instant)>>,
    replica: Mutex<ReplicaStatus>,
    /// Operator pause of this node's apply worker (like PostgreSQL's pg_wal_replay_pause).
    paused: watch::Sender<bool>,
    pub counters: ReplCounters,
}

/// Counters for `/metrics`, since the process started.
#[derive(Default)]
pub struct ReplCounters {
    /// Change-log entries this node applied as a replica (pulled from its primary).
    pub applied_entries: AtomicU64,
    /// Bytes of pull answers (change-log batches) this node sent as primary and received as replica.
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Sync-mode writes made durable on this node as primary, by answer: confirmed by `min_acks`
    /// replicas in time, or `outcome_unknown` (not confirmed in time, or the lease lapsed).
    pub sync_acknowledged: AtomicU64,
    pub sync_unconfirmed: AtomicU64,
}

impl ReplCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Repl {
    pub fn new(store: DataStore) -> Repl {
        Repl {
            store,
            acks: Mutex::default(),
            ack_notify: Notify::new(),
            reported: Mutex::default(),
            replica: Mutex::default(),
            paused: watch::channel(false).0,
            counters: ReplCounters::default(),
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn position(&self) -> Position {
        self.store.position()
    }

    fn record_ack(&self, node: NodeId, pos: Position) {
        lock(&self.acks).insert(node, (pos, Instant::now()));
        self.ack_notify.notify_waiters();
    }

    /// Wait until `min_acks` replicas acknowledged `pos`, at most `timeout`. Sync mode.
    pub async fn wait_acks(&self, pos: Position, min_acks: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.ack_notify.notified();
            let n = lock(&self.acks).values().filter(|(p, _)| *p >= pos).count();
            if n >= min_acks as usize {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    pub fn record_report(&self, node: NodeId, pos: Position) {
        lock(&self.reported).insert(node, (pos, Instant::now()));
    }

    /// Fresh positions reported by members (the coordinator's own included).
    pub fn reported_positions(&self, me: NodeId) -> BTreeMap<NodeId, Position> {
        let mut out: BTreeMap<NodeId, Position> = lock(&self.reported)
            .iter()
            .filter(|(_, (_, t))| t.elapsed() < REPORT_FRESH)
            .map(|(id, (p, _))| (*id, *p))
            .collect();
        out.insert(me, self.position());
        out
    }

    pub fn replica_status(&self) -> ReplicaStatus {
        lock(&self.replica).clone()
    }

    /// Replication lag in milliseconds as a replica: 0 while caught up with the primary as of
    /// its last answer (within two long-poll periods), else the time since it last was.
    pub fn lag_ms(&self) -> Option<u64> {
        let r = lock(&self.replica);
        let contact = r.last_contact?;
        match r.caught_up_at {
            Some(c) if contact.elapsed() < PULL_WAIT * 2 + Duration::from_millis(500) && c >= contact => Some(0),
            Some(c) => Some(c.elapsed().as_millis() as u64),
            None => Some(contact.elapsed().as_millis() as u64),
        }
    }

    /// How many entries this replica is behind its primary's position as of the primary's last
    /// answer (None before the first one).
    pub fn lag_entries(&self) -> Option<u64> {
        let head = lock(&self.replica).source_head_pos?;
        Some(head.seq.saturating_sub(self.position().seq))
    }

    pub fn acks_view(&self) -> BTreeMap<NodeId, String> {
        lock(&self.acks)
            .iter()
            .map(|(id, (p, _))| (*id, p.to_string()))
            .collect()
    }
}

/// Serve a pull (`/peer/repl/pull`, or one request on a pull stream).
pub async fn serve_pull(node: &Node, req: PullRequest) -> PullReply {
    let repl = &node.repl;
    let view = node.view();
    let state = &view.state;
    let epoch = match state.primary {
        Some(p) if p.node == node.id => p.epoch,
        _ if req.catch_up => state.epoch(),
        other => {
            return PullReply::NotPrimary {
                primary: other.map(|p| p.node),
            }
        }
    };
    if !req.catch_up {
        if req.newest_epoch > epoch {
            return PullReply::NotPrimary { primary: None };
        }
        repl.record_ack(req.node, req.after);
    }
    // The store signals every commit itself (from the committing thread).
    let mut head = repl.store.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(5000));
    loop {
        head.borrow_and_update();
        // A redb read, on this worker thread. A replica close to the head (sync mode: usually one
        // commit behind) reads a few entries from the page cache, cheaper than anything that
        // moves work between threads: read right here. A longer read (a replica that waited, or
        // is catching up: up to MAX_BATCH_ENTRIES) first has tokio move this worker's other tasks
        // away (`block_in_place`), not the blocking pool and back. kv_bench `--only sync:128:1
        // --only async:128:64 --secs 4`, three alternated runs each: sync p50 0.62-0.63 ms and
        // 357-377 µs of the primary's CPU per write reading here, 0.69-0.70 ms and 433-454 µs
        // with block_in_place for every read; the 64-client rate was no better reading here.
        let behind = repl.store.visible_position().seq.saturating_sub(req.after.seq);
        let read = || repl.store.read_log(req.after, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
        let read = if behind <= SMALL_READ_ENTRIES {
            read()
        } else {
            tokio::task::block_in_place(read)
        };
        match read {
            Ok(LogRead::Entries(entries)) if entries.is_empty() && tokio::time::Instant::now() < deadline => {
                if tokio::time::timeout_at(deadline, head.changed()).await.is_err() {
                    return PullReply::Entries {
                        epoch,
                        head: repl.store.visible_position(),
                        entries,
                    };
                }
            }
            Ok(LogRead::Entries(entries)) => {
                return PullReply::Entries {
                    epoch,
                    head: repl.store.visible_position(),
                    entries,
                }
            }
            Ok(LogRead::Trimmed { .. }) => {
                return PullReply::Trimmed {
                    head: repl.store.visible_position(),
                }
            }
            Err(DataError::Fork { at, ours }) => return PullReply::Fork { at, ours },
            Err(e) => {
                warn!(error = %e, "serve pull: read change log");
                return PullReply::NotPrimary { primary: None };
            }
        }
    }
}

/// A pull answer in the peer codec, counted in `keel_replication_streamed_bytes_total` as sent
/// (both transports: `/peer/repl/pull` and the pull stream).
pub fn encode_reply(node: &Node, reply: &PullReply) -> Vec<u8> {
    let bytes = keel_raft::codec::encode(reply);
    ReplCounters::add(&node.repl.counters.sent_bytes, bytes.len() as u64);
    bytes
}

/// The replica apply worker: pull from the primary, apply, repeat.
pub async fn apply_task(node: Arc<Node>) {
    let mut backoff = Duration::from_millis(50);
    let mut paused = node.repl.paused.subscribe();
    // One receiver for the whole loop: `borrow_and_update` below marks what was read as seen, so
    // `changed()` waits for the next state. (A fresh clone of `node.state` each round would report the
    // node's first state change as new every time, and this loop would spin on a primary.)
    let mut state_rx = node.state.clone();
    // The connection to the primary the pulls go over (see `repl_stream`).
    let mut stream = PullStream::default();
    loop {
        if node.cancel.is_cancelled() {
            return;
        }
        if *paused.borrow_and_update() {
            stream.close();
            tokio::select! {
                _ = node.cancel.cancelled() => return,
                _ = paused.changed() => {}
            }
            continue;
        }
        let primary = state_rx.borrow_and_update().state.primary;
        let primary = match primary {
            Some(p) if p.node != node.id => p,
            _ => {
                // Primary (or none yet): nothing to pull. Wait for a state change.
                stream.close();
                tokio::select! {
                    _ = node.cancel.cancelled() => return,
                    _ = state_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let before = node.repl.position();
        match pull_once(&node, primary.node, primary.epoch, Some(&mut stream)).await {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                // Async mode: after applying entries, let more accumulate before the next pull
                // (see ASYNC_PULL_GAP). Sync mode pulls at once: the next pull is the ack.
                let asynchronous =
                    state_rx.borrow().state.config.replication_mode == keel_raft::state::ReplicationMode::Async;
                if asynchronous && node.repl.position() != before {
                    tokio::select! {
                        _ = node.cancel.cancelled() => return,
                        _ = tokio::time::sleep(ASYNC_PULL_GAP) => {}
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, primary = primary.node, "replication pull failed");
                lock(&node.repl.replica).last_error = Some(e);
                tokio::select! {
                    _ = node.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One pull from `source` and the apply of what it returns: over `stream` when given (the
/// replica's apply loop), else over plain HTTP (a new primary's catch-up, from any member).
async fn pull_once(node: &Node, source: NodeId, epoch: u64, stream: Option<&mut PullStream>) -> Result<(), String> {
    let catch_up = stream.is_none();
    let repl = &node.repl;
    let addr = node
        .peer_addr_of(source)
        .ok_or_else(|| format!("no peer address for node {source}"))?;
    let req = PullRequest {
        node: node.id,
        after: repl.position(),
        newest_epoch: epoch.max(repl.store.newest_epoch()),
        wait_ms: if catch_up { 0 } else { PULL_WAIT.as_millis() as u64 },
        catch_up,
    };
    let timeout = PULL_WAIT + Duration::from_millis(node.config.request_timeout_ms.min(5000));
    let streamed = match stream {
        Some(s) => s.pull(node, source, &addr, &req, timeout).await?,
        None => None,
    };
    let transport = if streamed.is_some() { "stream" } else { "pull" };
    let (reply, size): (PullReply, usize) = match streamed {
        Some(answer) => answer,
        None => node
            .peers
            .call_sized(Some(source), &addr, "/peer/repl/pull", &req, timeout)
            .await
            .map_err(|e| e.to_string())?,
    };
    ReplCounters::add(&repl.counters.received_bytes, size as u64);
    match reply {
        PullReply::Entries {
            epoch: frame_epoch,
            head,
            entries,
        } => {
            if !catch_up && frame_epoch < node.view().state.epoch() {
                return Err(format!("refused a frame of epoch {frame_epoch} from a deposed primary"));
            }
            if !catch_up && repl.paused() {
                // Paused while this pull was in flight: drop the batch, apply nothing.
                return Ok(());
            }
            {
                // Contact first: a reader that sees the applied entries must also see a contact
                // (the `Keel-Lag-Ms` header is absent until the first one).
                let mut r = lock(&repl.replica);
                r.source = Some(source);
                r.source_head = Some(head.to_string());
                r.source_head_pos = Some(head);
                if !catch_up {
                    r.transport = Some(transport);
                }
                r.last_contact = Some(Instant::now());
            }
            if !entries.is_empty() {
                let n = entries.len();
                let source_epoch = if catch_up {
                    entries.iter().map(|e| e.pos.epoch).max().unwrap_or(0)
                } else {
                    frame_epoch
                };
                // The apply's fsync is on the sync-mode acknowledgement path. A small batch (one
                // journal append, usually well under a millisecond) is applied right here: handing
                // this worker's other tasks to another thread first (`block_in_place`) cost more
                // than it saved. kv_bench `--only sync:128:1 --only sync:16384:1 --secs 3`, five
                // alternated runs each: p50 0.85-1.01 and 1.10-1.29 ms applied here, 0.90-0.96
                // and 1.26-1.34 ms with block_in_place. (A checkpoint may run in it every 100 ms:
                // a durable commit of what those 100 ms dirtied, a few ms at most.) A large batch
                // (a durable redb commit of all its pages) still moves the other tasks away first.
                let apply = || repl.store.apply(source_epoch, &entries);
                if keel_replication::journaled_batch(&entries) {
                    apply()
                } else {
                    tokio::task::block_in_place(apply)
                }
                .map_err(|e| format!("apply {n} entries: {e}"))?;
                ReplCounters::add(&repl.counters.applied_entries, n as u64);
            }
            let mut r = lock(&repl.replica);
            let now = Instant::now();
            r.last_error = None;
            if repl.position() >= head {
                r.caught_up_at = Some(now);
            }
            Ok(())
        }
        PullReply::Fork { at, ours } => {
            info!(%at, ours = %ours.map(|p| p.to_string()).unwrap_or_else(|| "none".into()), source, "change log diverges from the primary's: finding the fork point");
            match find_fork_point(node, source, &addr).await? {
                Some(fork) => roll_back(node, fork).await,
                None if catch_up => Err(format!("the fork with node {source} lies in trimmed history")),
                None => {
                    // Keep what we still retain, then start over from a snapshot.
                    let start = repl
                        .store
                        .position_at(log_start_seq(&repl.store))
                        .map_err(|e| e.to_string())?;
                    roll_back(node, start.unwrap_or_default()).await?;
                    resync(node, source, &addr).await
                }
            }
        }
        PullReply::Trimmed { head } => {
            if catch_up {
                return Err(format!(
                    "node {source} no longer retains the entries after {}",
                    repl.position()
                ));
            }
            debug!(%head, "behind the retained log");
            resync(node, source, &addr).await
        }
        PullReply::NotPrimary { primary } => Err(format!(
            "node {source} is not the primary (it names {})",
            primary.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
        )),
    }
}

/// Seq of this node's log start: entries up to it were trimmed (or came in a snapshot).
fn log_start_seq(store: &DataStore) -> u64 {
    match store.read_log(Position::default(), 1, 1) {
        Ok(LogRead::Trimmed {
            oldest_retained: Some(p),
        }) => p.seq.saturating_sub(1),
        Ok(LogRead::Trimmed { oldest_retained: None }) => store.position().seq,
        _ => 0,
    }
}

/// The highest position both this node and `source` have, by bisecting over seq with
/// `/peer/repl/position_at` (our log and theirs agree up to the fork and differ after it).
/// `None` when even the oldest entry this node retains differs (or `source` no longer has it):
/// the fork lies in trimmed history and only a snapshot can bring this node back.
async fn find_fork_point(node: &Node, source: NodeId, addr: &str) -> Result<Option<Position>, String> {
    let store = node.repl.store.clone();
    let agrees = |seq: u64| {
        let store = store.clone();
        async move {
            let ours = store.position_at(seq).map_err(|e| e.to_string())?;
            let theirs: Option<Position> = node
                .peers
                .call(
                    Some(source),
                    addr,
                    "/peer/repl/position_at",
                    &seq,
                    Duration::from_secs(2),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<bool, String>(ours.is_some() && ours == theirs)
        }
    };
    // lo always agrees, hi never does. Seq 0 is the empty prefix, which everyone shares.
    let mut lo = log_start_seq(&store);
    if lo > 0 && !agrees(lo).await? {
        return Ok(None);
    }
    let mut hi = node.repl.position().seq + 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if agrees(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Ok(Some(Position::default()));
    }
    store
        .position_at(lo)
        .map_err(|e| e.to_string())
        .map(|p| p.or(Some(Position::default())))
}

/// Roll back everything after `fork` into the diverged table.
async fn roll_back(node: &Node, fork: Position) -> Result<(), String> {
    let repl = &node.repl;
    if fork >= repl.position() {
        return Ok(());
    }
    let store = repl.store.clone();
    let rolled = tokio::task::spawn_blocking(move || store.rollback_to(fork))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("roll back to {fork}: {e}"))?;
    warn!(%fork, entries = rolled.len(), "rolled back entries the primary never had; they are kept in the diverged table (GET /v1/diverged)");
    lock(&repl.replica).rolled_back += rolled.len() as u64;
    Ok(())
}

/// The new primary's catch-up step: pull whatever it lacks from the most advanced reachable
/// member before accepting writes. With sync replication, a majority of survivors includes a
/// member holding every acknowledged write, so none is lost.
pub async fn catch_up(node: &Node, epoch: u64) -> Result<(), String> {
    let members: Vec<NodeId> = node.voters().into_iter().filter(|v| *v != node.id).collect();
    let mut best: Option<(NodeId, Position)> = None;
    for id in members {
        let Some(addr) = node.peer_addr_of(id) else { continue };
        let r: Result<Position, _> = node
            .peers
            .call(Some(id), &addr, "/peer/repl/position", &(), Duration::from_millis(500))
            .await;
        if let Ok(p) = r {
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((id, p));
            }
        }
    }
    let mine = node.repl.position();
    if let Some((source, target)) = best.filter(|(_, p)| *p > mine) {
        info!(source, from = %mine, to = %target, epoch, "catch-up: pulling entries this new primary lacks");
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.repl.position() < target {
            if Instant::now() > deadline {
                return Err(format!("catch-up from node {source} did not reach {target} in time"));
            }
            pull_once(node, source, epoch, None).await?;
        }
    }
    let store = node.repl.store.clone();
    tokio::task::spawn_blocking(move || store.observe_epoch(epoch))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    debug!(epoch, position = %node.repl.position(), "catch-up done");
    Ok(())
}

/// Report this node's position to the coordinator, for failover ranking.
pub async fn report_task(node: Arc<Node>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = node.metrics();
        let Some(leader) = m.current_leader.filter(|l| *l != node.id) else {
            continue;
        };
        let Some(addr) = node.peer_addr_of(leader) else {
            continue;
        };
        let r: Result<(), _> = node
            .peers
            .call(
                Some(leader),
                &addr,
                "/peer/repl/report",
                &(node.id, node.repl.position()),
                REPORT_EVERY,
            )
            .await;
        if let Err(e) = r {
            debug!(error = %e, "report position to the coordinator");
        }
    }
}

/// A response body fed from a channel (the snapshot stream).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Serve a full snapshot (`/peer/repl/snapshot`): length-prefixed chunks (u32 big-endian)
/// read from one consistent read transaction on a blocking thread, with a bounded channel in
/// between so a slow reader holds back the producer instead of growing memory.
pub fn serve_snapshot(node: &Node) -> axum::response::Response {
    let store = node.repl.store.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match store.snapshot() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        info!(position = %reader.position(), "streaming a datastore snapshot to a replica");
        loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    let mut framed = Vec::with_capacity(chunk.len() + 4);
                    framed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&chunk);
                    if tx.blocking_send(Ok(bytes::Bytes::from(framed))).is_err() {
                        return; // the replica went away
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
    });
    axum::response::Response::new(axum::body::Body::from_stream(ChannelBody(rx)))
}

/// Replace this replica's contents with the primary's snapshot, then continue from its
/// position. Entries only this node has are rolled back into `diverged` first.
async fn resync(node: &Node, source: NodeId, addr: &str) -> Result<(), String> {
    let repl = &node.repl;
    // Keep anything only this node has: roll back to the last position both logs share.
    if repl.position() > Position::default() {
        if let Ok(Some(fork)) = find_fork_point(node, source, addr).await {
            roll_back(node, fork).await?;
        }
    }
    info!(source, from = %repl.position(), "replica is behind the primary's retained log: installing a snapshot");
    let started = Instant::now();
    let mut resp = node
        .peers
        .call_raw(addr, "/peer/repl/snapshot", &(), Duration::from_secs(3600))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let store = repl.store.clone();
    let installer = tokio::task::spawn_blocking(move || {
        let mut inst = store.begin_install().map_err(|e| e.to_string())?;
        let mut chunks = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            inst.push_chunk(&chunk).map_err(|e| e.to_string())?;
            chunks += 1;
        }
        inst.finish().map(|p| (p, chunks)).map_err(|e| e.to_string())
    });
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                buf.extend_from_slice(&bytes);
                while buf.len() >= 4 {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    let chunk = buf[4..4 + len].to_vec();
                    buf.drain(..4 + len);
                    tx.send(chunk)
                        .await
                        .map_err(|_| "snapshot installer stopped".to_string())?;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("snapshot stream from node {source}: {e}")),
        }
    }
    drop(tx);
    let (pos, chunks) = installer.await.map_err(|e| e.to_string())??;
    info!(%pos, chunks, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot installed");
    Ok(())
}

/// Trim the change log to the configured retention, every few seconds.
pub async fn retention_task(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let keep = node.view().state.config.log_retention_entries;
        let store = node.repl.store.clone();
        match tokio::task::spawn_blocking(move || store.trim(keep)).await {
            Ok(Ok(n)) if n > 0 => debug!(dropped = n, keep, "trimmed the change log"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "trim the change log"),
            Err(e) => warn!(error = %e, "trim task"),
        }
    }
}

/// Why sync mode does not guarantee what it promises with these settings, if it does not: an
/// acknowledged write survives a failover only while the primary and the `min_acks` replicas that
/// acknowledged it include a node of every majority, i.e. when `1 + min_acks` is a majority of the voters.
/// Otherwise a primary cut off together with its acknowledging replicas loses writes that the majority
/// never saw (found by the chaos harness with five nodes and `min_acks` 1).
pub fn sync_guarantee_warning(mode: keel_raft::state::ReplicationMode, min_acks: u32, voters: usize) -> Option<String> {
    let majority = voters / 2 + 1;
    (mode == keel_raft::state::ReplicationMode::Sync && 1 + (min_acks as usize) < majority).then(|| {
        format!(
            "sync mode with min_acks {min_acks} on {voters} voters: the primary and {min_acks} replica(s) are not a \
             majority, so a failover can lose acknowledged writes; set min_acks to at least {0} \
             (PATCH /v1/config {{\"min_acks\": {0}}})",
            majority - 1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::sync_guarantee_warning;
    use keel_raft::state::ReplicationMode::{Async, Sync};

    #[test]
    fn sync_guarantee_needs_a_majority() {
        assert_eq!(sync_guarantee_warning(Sync, 1, 3), None);
        assert_eq!(sync_guarantee_warning(Sync, 1, 1), None);
        assert_eq!(sync_guarantee_warning(Sync, 2, 5), None);
        assert_eq!(sync_guarantee_warning(Async, 1, 5), None);
        let w = sync_guarantee_warning(Sync, 1, 5).unwrap();
        assert!(w.contains("at least 2"), "{w}");
        assert!(sync_guarantee_warning(Sync, 2, 7).unwrap().contains("at least 3"));
        assert!(sync_guarantee_warning(Sync, 0, 3).is_some());
    }
}
