//! The state a lease lives in, with no I/O: this node's [`Lease`] as primary, the coordinator's
//! memory of its grants ([`Coordinator`]), and the lease arithmetic as pure functions. The tasks and
//! RPCs that renew, grant, expire and fence leases are in [`super::primary`]; the safety argument
//! is `raft/DESIGN.md` ("Fencing").

use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_raft::state::PrimaryRecord;
use keel_raft::NodeId;
use tokio::sync::watch;

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

    pub(crate) fn extend(&self, epoch: u64, until: Instant) -> bool {
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
    pub(crate) fn expire_if_due(&self) {
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
    pub(crate) inner: Mutex<CoordInner>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct CoordInner {
    /// Term in which this node leads, and since when.
    pub(crate) term: Option<u64>,
    pub(crate) leader_since: Option<Instant>,
    /// Last grant: to whom, which epoch, when (after ensure_linearizable returned).
    pub(crate) last_grant: Option<(NodeId, u64, Instant)>,
    /// No lease for a *newer* epoch before this instant (the previous primary's lease may
    /// still run until then).
    pub(crate) fence_until: Option<Instant>,
    /// Epoch whose renewals are refused (switchover in progress or done).
    pub(crate) refused_epoch: Option<u64>,
    /// The primary did not answer the probe when this node became leader (the fast path). Cleared
    /// when this node promotes a new primary: the probe said nothing about that one.
    pub(crate) primary_lost_at_election: bool,
    pub(crate) last_auto_failover: Option<Instant>,
    /// Last promotion committed here: the new primary's silence is counted from it, since it
    /// cannot have renewed before it was promoted.
    pub(crate) last_promotion: Option<Instant>,
    /// Why a due failover cannot happen, for status.
    pub(crate) blocked: Option<String>,
    pub(crate) last_decision: Option<String>,
}

impl Coordinator {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, CoordInner> {
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
}
