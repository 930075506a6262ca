//! A node's replication state: its datastore, the acknowledgements sync mode waits for (primary
//! side), the positions members reported (coordinator side), the replica's status and lag, the
//! operator pause, the `/metrics` counters, and the [`PrimaryView`] the node feeds in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::protocol::{PullReply, PULL_WAIT, REPORT_FRESH};
use crate::{DataStore, NodeId, Position, PrimaryView};

/// What the replica side knows, for status and lag.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    pub source: Option<NodeId>,
    pub source_head: Option<String>,
    /// How this replica pulls from `source`: `stream` (one long-lived connection) or `pull` (a
    /// request each, from a primary without the stream).
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
    pub(crate) replica: Mutex<ReplicaStatus>,
    /// Operator pause of this node's apply worker (like PostgreSQL's pg_wal_replay_pause).
    pub(crate) paused: watch::Sender<bool>,
    /// The node's view of the primary, fed by the node from its cluster state.
    view: watch::Sender<PrimaryView>,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            view: watch::channel(PrimaryView::default()).0,
            counters: ReplCounters::default(),
        }
    }

    /// Publish the node's current view (a no-op when it did not change, so callers may publish
    /// on every cluster-state change and before acting on a fresh one).
    pub fn publish_view(&self, view: PrimaryView) {
        if *self.view.borrow() != view {
            self.view.send_replace(view);
        }
    }

    /// The last published view.
    pub fn view(&self) -> PrimaryView {
        *self.view.borrow()
    }

    /// A receiver of every published view.
    pub fn subscribe_view(&self) -> watch::Receiver<PrimaryView> {
        self.view.subscribe()
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

    pub(crate) fn record_ack(&self, node: NodeId, pos: Position) {
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

    /// A pull answer in the peer codec, counted in `sent_bytes` (both transports: the plain
    /// pull and the pull stream).
    pub fn encode_reply(&self, reply: &PullReply) -> Vec<u8> {
        let bytes = crate::codec::encode(reply);
        ReplCounters::add(&self.counters.sent_bytes, bytes.len() as u64);
        bytes
    }
}
