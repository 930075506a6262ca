//! The write path's decisions, on the primary: a datastore write is accepted only under a valid
//! lease for the current epoch; once it is durable here the lease is checked *again* before it
//! counts as acknowledged (a primary paused mid-write whose lease ran out must not answer
//! success); in sync mode it also waits for `min_acks` replicas to hold it durably. The HTTP
//! edge (`http::kv`) forwards writes from replicas and turns [`WriteError`] into its answer.

use std::time::Duration;

use keel_raft::state::ReplicationMode;
use keel_replication::{DataError, WriteOp, WriteResult};

use crate::repl::ReplCounters;
use crate::state::Node;

/// How long a sync-mode write waits for replica acknowledgements before answering
/// `outcome_unknown`. Replicas acknowledge within one round trip of applying, so this only
/// runs out when they are down or partitioned.
pub const SYNC_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write on the primary waits for a lapsed lease to be renewed before 503.
const LEASE_WAIT: Duration = Duration::from_secs(1);

/// TEST ONLY — NEVER SET IN PRODUCTION. With `KEEL_UNSAFE_TEST_ACK_EARLY=1` in its environment a
/// node that believes it is the primary accepts a write without holding a lease and
/// acknowledges it as soon as it is durable *locally*: no lease check before or after, and in
/// sync mode no wait for the replicas' acknowledgements (nor before answering a primary read).
/// Acknowledged writes can then be lost on failover. It exists only so the chaos harness can
/// prove that it catches a deliberately broken build (`node/tests/chaos_weakened.rs`);
/// `keel serve` logs it loudly at start.
pub const UNSAFE_TEST_ACK_EARLY_ENV: &str = "KEEL_UNSAFE_TEST_ACK_EARLY";

/// Whether the unsafe test-only switch above is on (read once per process).
pub fn unsafe_test_ack_early() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(UNSAFE_TEST_ACK_EARLY_ENV).is_ok_and(|v| v == "1"))
}

/// Log the unsafe test-only switch at start, loudly, if it is on.
pub fn warn_unsafe_test_switches() {
    if unsafe_test_ack_early() {
        for _ in 0..3 {
            tracing::error!(
                "{UNSAFE_TEST_ACK_EARLY_ENV}=1: UNSAFE TEST-ONLY BUILD BEHAVIOUR: writes are acknowledged without a \
                 lease and before replica acks; acknowledged writes WILL be lost on failover. Never use in production."
            );
        }
    }
}

/// A write acknowledged by this primary.
#[derive(Debug)]
pub struct Written {
    pub epoch: u64,
    pub result: WriteResult,
}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This node is named primary but holds no valid lease: nothing was written.
    #[error("this node is the primary but holds no valid lease")]
    NoLease,
    /// Durable here, but the lease lapsed meanwhile: the outcome is unknown.
    #[error("the lease lapsed while the write was being made durable")]
    LeaseLapsed,
    /// Durable here, but not confirmed by enough replicas in time (sync mode): outcome unknown.
    #[error("not confirmed by {min_acks} replica(s) within {timeout:?}")]
    NotConfirmed { min_acks: u32, timeout: Duration },
    /// The datastore refused the write (bad key, CAS mismatch, stale epoch, closed).
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The epoch this node may write in right now (primary with a valid lease), if any.
pub fn write_epoch(node: &Node) -> Option<u64> {
    let p = node.view().state.primary?;
    (p.node == node.id && node.lease.valid_epoch() == Some(p.epoch)).then_some(p.epoch)
}

pub fn is_named_primary(node: &Node) -> bool {
    node.view().state.primary.is_some_and(|p| p.node == node.id)
}

/// Wait up to `LEASE_WAIT` for this primary's lease (a renewal in flight, or a new primary
/// still catching up) rather than failing a write at once.
pub async fn wait_write_epoch(node: &Node) -> Option<u64> {
    let mut holding = node.lease.subscribe();
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    loop {
        if let Some(e) = write_epoch(node) {
            return Some(e);
        }
        if !is_named_primary(node) {
            return None;
        }
        if tokio::time::timeout_at(deadline, holding.changed()).await.is_err() {
            return None;
        }
    }
}

/// Write on this node as the primary: under a valid lease, durable here, the lease checked again
/// after, and in sync mode confirmed by `min_acks` replicas.
pub async fn write(node: &Node, op: WriteOp) -> Result<Written, WriteError> {
    let epoch = if unsafe_test_ack_early() {
        // UNSAFE, test only: no lease needed, the epoch this node last learned will do.
        node.view().state.primary.filter(|p| p.node == node.id).map(|p| p.epoch)
    } else {
        wait_write_epoch(node).await
    };
    let Some(epoch) = epoch else {
        return Err(WriteError::NoLease);
    };
    // Sync mode ships each batch to the replicas before this node's own fsync (see
    // `DataStore::set_early_visibility`); the answer below still waits for both.
    let sync_mode = node.view().state.config.replication_mode == ReplicationMode::Sync;
    node.repl.store.set_early_visibility(sync_mode);
    let res = node.repl.store.write(epoch, op).await.map_err(WriteError::Data)?;
    // Durable on the primary. Re-check the lease before acknowledging: if it lapsed while the
    // write was in flight, another node may already be primary. (The unsafe test-only switch
    // skips this and the sync-mode wait below.)
    let ack_early = unsafe_test_ack_early();
    // `keel_replication_sync_writes_total`: every sync-mode write made durable here ends as one
    // of the two outcomes.
    let count_sync = |confirmed: bool| {
        if sync_mode {
            let c = &node.repl.counters;
            ReplCounters::add(
                if confirmed {
                    &c.sync_acknowledged
                } else {
                    &c.sync_unconfirmed
                },
                1,
            );
        }
    };
    if !ack_early && write_epoch(node) != Some(epoch) {
        count_sync(false);
        return Err(WriteError::LeaseLapsed);
    }
    let cfg = node.view().state.config.clone();
    if cfg.replication_mode == ReplicationMode::Sync && !ack_early {
        let timeout = SYNC_ACK_TIMEOUT;
        if !node.repl.wait_acks(res.pos, cfg.min_acks, timeout).await {
            count_sync(false);
            return Err(WriteError::NotConfirmed {
                min_acks: cfg.min_acks,
                timeout,
            });
        }
    }
    count_sync(true);
    Ok(Written { epoch, result: res })
}
