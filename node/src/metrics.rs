//! Prometheus text exposition for `GET /metrics`, rendered from the node's live state plus a
//! few process-wide counters. Hand-rendered (a dozen series) rather than through the
//! `metrics` crates: it keeps the dependency tree small and every series is read from the
//! same source of truth the API uses.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::cluster::failover::FailoverReason;
use crate::state::Node;

static FAILOVERS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);
static ROLE_CHANGES: AtomicU64 = AtomicU64::new(0);

/// Count a promotion committed by this node.
pub fn failover(reason: &FailoverReason) {
    let mut m = FAILOVERS.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(reason.label()).or_default() += 1;
}

pub fn leader_changed() {
    LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
}

pub fn role_changed() {
    ROLE_CHANGES.fetch_add(1, Ordering::Relaxed);
}

/// The exposition being written: `# HELP`, `# TYPE` and the samples of each series in turn.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn labelled(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let out = &mut self.0;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.labelled(name, "gauge", help, &[(String::new(), value)]);
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.labelled(name, "counter", help, &[(String::new(), value)]);
    }
}

/// Render every series.
pub fn render(node: &Node) -> String {
    let mut out = Exposition::default();
    node_series(&mut out, node);
    replication_series(&mut out, node);
    datastore_series(&mut out, node);
    gitsync_series(&mut out, node);
    redis_series(&mut out, node);
    out.counter(
        "keel_datastore_rolled_back_total",
        "Divergent entries this node rolled back.",
        node.repl.replica_status().rolled_back as f64,
    );
    out.0
}

/// This node's role, lease and Raft view, and the failovers it committed as coordinator.
fn node_series(out: &mut Exposition, node: &Node) {
    let m = node.metrics();
    let view = node.view();
    let role = crate::state::role(node);
    let roles = ["primary", "replica", "candidate", "learner", "fenced"];
    let samples: Vec<(String, f64)> = roles
        .iter()
        .map(|r| (format!("{{role=\"{r}\"}}"), if *r == role { 1.0 } else { 0.0 }))
        .collect();
    out.labelled("keel_role", "gauge", "1 for this node's current role.", &samples);
    out.gauge("keel_epoch", "Epoch of the current primary.", view.state.epoch() as f64);
    // Prometheus base units: seconds, not milliseconds (promtool's lint flags `_ms`).
    let lease = node.lease.remaining().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    out.gauge(
        "keel_lease_remaining_seconds",
        "Seconds left on this node's primary write lease (0 when it holds none).",
        lease,
    );
    let failovers = FAILOVERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut samples: Vec<(String, f64)> = Vec::new();
    for r in [
        "bootstrap",
        "lease_expired",
        "primary_lost",
        "primary_removed",
        "switchover",
        "manual",
        "other",
    ] {
        samples.push((format!("{{reason=\"{r}\"}}"), *failovers.get(r).unwrap_or(&0) as f64));
    }
    out.labelled(
        "keel_failovers_total",
        "counter",
        "Promotions committed by this node as coordinator, by reason.",
        &samples,
    );
    out.gauge("keel_raft_term", "Current Raft term.", m.current_term as f64);
    let leader = m.current_leader.map(|l| l as f64).unwrap_or(0.0);
    out.gauge(
        "keel_raft_leader",
        "Id of the Raft leader this node knows (0: none).",
        leader,
    );
    out.counter(
        "keel_raft_leader_changes_total",
        "Times this node saw the Raft leader change.",
        LEADER_CHANGES.load(Ordering::Relaxed) as f64,
    );
    out.counter(
        "keel_role_changes_total",
        "Times this node's role changed.",
        ROLE_CHANGES.load(Ordering::Relaxed) as f64,
    );
    let applied = m.last_applied.map(|l| l.index as f64).unwrap_or(0.0);
    out.gauge(
        "keel_raft_last_applied",
        "Index of the last applied Raft log entry.",
        applied,
    );
    out.gauge(
        "keel_maintenance",
        "1 while maintenance mode (automatic failover paused) is on.",
        if view.state.maintenance { 1.0 } else { 0.0 },
    );
}

/// Where this node's change log stands, its lag behind the primary, and what it streamed.
fn replication_series(out: &mut Exposition, node: &Node) {
    let pos = node.repl.position();
    out.gauge(
        "keel_replication_position",
        "Sequence number of the last change-log entry on this node.",
        pos.seq as f64,
    );
    out.gauge(
        "keel_replication_position_epoch",
        "Epoch of the last change-log entry on this node.",
        pos.epoch as f64,
    );
    let is_primary = node.view().state.primary.is_some_and(|p| p.node == node.id);
    let lag = if is_primary { Some(0) } else { node.repl.lag_ms() };
    if let Some(lag) = lag {
        out.gauge(
            "keel_replication_lag_seconds",
            "Replication lag of this node behind the primary (0 on the primary; absent until a replica hears from it).",
            lag as f64 / 1000.0,
        );
    }
    let lag_entries = if is_primary { Some(0) } else { node.repl.lag_entries() };
    if let Some(n) = lag_entries {
        out.gauge("keel_replication_lag_entries", "Change-log entries this node is behind the primary's position as of the primary's last answer (0 on the primary; absent until a replica hears from it).", n as f64);
    }
    let c = &node.repl.counters;
    let get = crate::repl::ReplCounters::get;
    out.counter(
        "keel_replication_applied_entries_total",
        "Change-log entries this node applied as a replica; rate() of it is the apply rate.",
        get(&c.applied_entries) as f64,
    );
    out.labelled(
        "keel_replication_streamed_bytes_total",
        "counter",
        "Bytes of change-log batches (encoded pull answers) this node sent as primary or received as replica.",
        &[
            ("{direction=\"sent\"}".to_string(), get(&c.sent_bytes) as f64),
            ("{direction=\"received\"}".to_string(), get(&c.received_bytes) as f64),
        ],
    );
    out.labelled("keel_replication_sync_writes_total", "counter", "Sync-mode writes made durable on this node as primary, by answer: acknowledged (min_acks replicas confirmed in time) or outcome_unknown (503: not confirmed in time, or the lease lapsed meanwhile).", &[
            ("{outcome=\"acknowledged\"}".to_string(), get(&c.sync_acknowledged) as f64),
            ("{outcome=\"outcome_unknown\"}".to_string(), get(&c.sync_unconfirmed) as f64),
        ]);
}

/// The datastore's write path: writes, commits, the journal.
fn datastore_series(out: &mut Exposition, node: &Node) {
    let stats = node.repl.store.stats();
    out.counter(
        "keel_datastore_writes_total",
        "Writes committed by this node as primary.",
        stats.writes as f64,
    );
    out.counter(
        "keel_datastore_commits_total",
        "Durable commits (fsyncs) of the primary write path; writes/commits is the group-commit batching factor.",
        stats.commits as f64,
    );
    out.counter(
        "keel_datastore_journal_appends_total",
        "Primary write batches and replica applies made durable through the datastore journal (one fdatasync each).",
        stats.journal_appends as f64,
    );
    out.counter(
        "keel_datastore_checkpoints_total",
        "Durable datastore commits that emptied the datastore journal.",
        stats.checkpoints as f64,
    );
    let (cache_used, cache_budget) = node.repl.store.cache_use();
    out.gauge(
        "keel_datastore_cache_used_bytes",
        "Bytes in the datastore's cache: redb's page cache (reads and the write buffer) and the newest change-log entries kept for the replicas' pulls; at most keel_datastore_cache_bytes.",
        cache_used as f64,
    );
    out.gauge(
        "keel_datastore_cache_bytes",
        "The datastore's cache budget: --cache-mb less the Raft stores' share (an eighth of it, at most 32 MiB, keeps the newest change-log entries).",
        cache_budget as f64,
    );
    if let Some(rss) = crate::util::rss_bytes() {
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory of this keel process (VmRSS).",
            rss as f64,
        );
    }
    out.gauge(
        "keel_datastore_journal_bytes",
        "Bytes in the datastore journal: entries written or applied, not yet in a durable datastore commit.",
        stats.journal_bytes as f64,
    );
}

/// Git Sync, when it is configured.
/// The managed Redis (`--redis-port`), from the duty loop's latest sample.
fn redis_series(out: &mut Exposition, node: &Node) {
    let Some(status) = crate::cluster::service::status(node) else {
        return;
    };
    let h = status.health;
    out.counter(
        "keel_redis_lost_bytes_total",
        "Bytes of the replication stream this node's Redis had as master that the new master did not, dropped when it was demoted.",
        status.lost.bytes as f64,
    );
    out.counter(
        "keel_redis_lost_events_total",
        "Demotions of this node's Redis that lost data (bytes known or not).",
        status.lost.events as f64,
    );
    let role = serde_json::to_value(h.role).unwrap_or_default();
    let samples: Vec<(String, f64)> = ["master", "replica", "fenced", "down"]
        .iter()
        .map(|r| (format!("{{role=\"{r}\"}}"), if role == *r { 1.0 } else { 0.0 }))
        .collect();
    out.labelled(
        "keel_redis_role",
        "gauge",
        "1 for the managed Redis's current role.",
        &samples,
    );
    out.gauge(
        "keel_redis_offset_bytes",
        "Replication offset of the managed Redis (0 while unknown).",
        h.offset.unwrap_or(0) as f64,
    );
    out.counter(
        "keel_redis_restarts_total",
        "Times keel restarted the managed redis-server after it died.",
        h.restarts as f64,
    );
    if let Some(lag) = h.lag {
        out.gauge(
            "keel_redis_lag_seconds",
            "Seconds since the managed Redis replica last heard from its master.",
            lag as f64,
        );
    }
}

fn gitsync_series(out: &mut Exposition, node: &Node) {
    let Some(g) = &node.gitsync else { return };
    let s = serde_json::to_value(g.status()).unwrap_or_default();
    let n = |k: &str| s[k].as_u64().unwrap_or(0) as f64;
    out.labelled(
        "keel_gitsync_syncs_total",
        "counter",
        "Git Sync runs by outcome.",
        &[
            ("{outcome=\"ok\"}".to_string(), n("syncs_ok")),
            ("{outcome=\"failed\"}".to_string(), n("syncs_failed")),
            ("{outcome=\"conflict\"}".to_string(), n("syncs_conflict")),
        ],
    );
    out.gauge(
        "keel_gitsync_last_duration_seconds",
        "Duration of the last Git Sync run.",
        n("last_duration_ms") / 1000.0,
    );
    if let Some(t) = s["commit_time_ms"].as_i64() {
        let age = (crate::util::unix_ms() as i64 - t).max(0) as f64 / 1000.0;
        out.gauge(
            "keel_gitsync_commit_age_seconds",
            "Age of the served commit (committer time).",
            age,
        );
    }
}
