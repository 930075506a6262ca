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

fn series(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Render every series.
pub fn render(node: &Node) -> String {
    let m = node.metrics();
    let view = node.view();
    let role = crate::state::role(node);
    let mut out = String::new();
    let roles = ["primary", "replica", "candidate", "learner", "fenced"];
    let samples: Vec<(String, f64)> = roles
        .iter()
        .map(|r| (format!("{{role=\"{r}\"}}"), if *r == role { 1.0 } else { 0.0 }))
        .collect();
    series(
        &mut out,
        "keel_role",
        "gauge",
        "1 for this node's current role.",
        &samples,
    );
    series(
        &mut out,
        "keel_epoch",
        "gauge",
        "Epoch of the current primary.",
        &[(String::new(), view.state.epoch() as f64)],
    );
    // Prometheus base units: seconds, not milliseconds (promtool's lint flags `_ms`).
    let lease = node.lease.remaining().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    series(
        &mut out,
        "keel_lease_remaining_seconds",
        "gauge",
        "Seconds left on this node's primary write lease (0 when it holds none).",
        &[(String::new(), lease)],
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
    series(
        &mut out,
        "keel_failovers_total",
        "counter",
        "Promotions committed by this node as coordinator, by reason.",
        &samples,
    );
    series(
        &mut out,
        "keel_raft_term",
        "gauge",
        "Current Raft term.",
        &[(String::new(), m.current_term as f64)],
    );
    let leader = m.current_leader.map(|l| l as f64).unwrap_or(0.0);
    series(
        &mut out,
        "keel_raft_leader",
        "gauge",
        "Id of the Raft leader this node knows (0: none).",
        &[(String::new(), leader)],
    );
    series(
        &mut out,
        "keel_raft_leader_changes_total",
        "counter",
        "Times this node saw the Raft leader change.",
        &[(String::new(), LEADER_CHANGES.load(Ordering::Relaxed) as f64)],
    );
    series(
        &mut out,
        "keel_role_changes_total",
        "counter",
        "Times this node's role changed.",
        &[(String::new(), ROLE_CHANGES.load(Ordering::Relaxed) as f64)],
    );
    let applied = m.last_applied.map(|l| l.index as f64).unwrap_or(0.0);
    series(
        &mut out,
        "keel_raft_last_applied",
        "gauge",
        "Index of the last applied Raft log entry.",
        &[(String::new(), applied)],
    );
    series(
        &mut out,
        "keel_maintenance",
        "gauge",
        "1 while maintenance mode (automatic failover paused) is on.",
        &[(String::new(), if view.state.maintenance { 1.0 } else { 0.0 })],
    );
    let pos = node.repl.position();
    series(
        &mut out,
        "keel_replication_position",
        "gauge",
        "Sequence number of the last change-log entry on this node.",
        &[(String::new(), pos.seq as f64)],
    );
    series(
        &mut out,
        "keel_replication_position_epoch",
        "gauge",
        "Epoch of the last change-log entry on this node.",
        &[(String::new(), pos.epoch as f64)],
    );
    let is_primary = view.state.primary.is_some_and(|p| p.node == node.id);
    let lag = if is_primary { Some(0) } else { node.repl.lag_ms() };
    if let Some(lag) = lag {
        series(
            &mut out,
            "keel_replication_lag_seconds",
            "gauge",
            "Replication lag of this node behind the primary (0 on the primary; absent until a replica hears from it).",
            &[(String::new(), lag as f64 / 1000.0)],
        );
    }
    let lag_entries = if is_primary { Some(0) } else { node.repl.lag_entries() };
    if let Some(n) = lag_entries {
        series(
            &mut out,
            "keel_replication_lag_entries",
            "gauge",
            "Change-log entries this node is behind the primary's position as of the primary's last answer (0 on the primary; absent until a replica hears from it).",
            &[(String::new(), n as f64)],
        );
    }
    let c = &node.repl.counters;
    let get = crate::repl::ReplCounters::get;
    series(
        &mut out,
        "keel_replication_applied_entries_total",
        "counter",
        "Change-log entries this node applied as a replica; rate() of it is the apply rate.",
        &[(String::new(), get(&c.applied_entries) as f64)],
    );
    series(
        &mut out,
        "keel_replication_streamed_bytes_total",
        "counter",
        "Bytes of change-log batches (encoded pull answers) this node sent as primary or received as replica.",
        &[
            ("{direction=\"sent\"}".to_string(), get(&c.sent_bytes) as f64),
            ("{direction=\"received\"}".to_string(), get(&c.received_bytes) as f64),
        ],
    );
    series(
        &mut out,
        "keel_replication_sync_writes_total",
        "counter",
        "Sync-mode writes made durable on this node as primary, by answer: acknowledged (min_acks replicas confirmed in time) or outcome_unknown (503: not confirmed in time, or the lease lapsed meanwhile).",
        &[
            ("{outcome=\"acknowledged\"}".to_string(), get(&c.sync_acknowledged) as f64),
            ("{outcome=\"outcome_unknown\"}".to_string(), get(&c.sync_unconfirmed) as f64),
        ],
    );
    let stats = node.repl.store.stats();
    series(
        &mut out,
        "keel_datastore_writes_total",
        "counter",
        "Writes committed by this node as primary.",
        &[(String::new(), stats.writes as f64)],
    );
    series(
        &mut out,
        "keel_datastore_commits_total",
        "counter",
        "Durable commits (fsyncs) of the primary write path; writes/commits is the group-commit batching factor.",
        &[(String::new(), stats.commits as f64)],
    );
    series(
        &mut out,
        "keel_datastore_journal_appends_total",
        "counter",
        "Primary write batches and replica applies made durable through the datastore journal (one fdatasync each).",
        &[(String::new(), stats.journal_appends as f64)],
    );
    series(
        &mut out,
        "keel_datastore_checkpoints_total",
        "counter",
        "Durable datastore commits that emptied the datastore journal.",
        &[(String::new(), stats.checkpoints as f64)],
    );
    series(
        &mut out,
        "keel_datastore_journal_bytes",
        "gauge",
        "Bytes in the datastore journal: entries written or applied, not yet in a durable datastore commit.",
        &[(String::new(), stats.journal_bytes as f64)],
    );
    if let Some(g) = &node.gitsync {
        let s = serde_json::to_value(g.status()).unwrap_or_default();
        let n = |k: &str| s[k].as_u64().unwrap_or(0) as f64;
        series(
            &mut out,
            "keel_gitsync_syncs_total",
            "counter",
            "Git Sync runs by outcome.",
            &[
                ("{outcome=\"ok\"}".to_string(), n("syncs_ok")),
                ("{outcome=\"failed\"}".to_string(), n("syncs_failed")),
                ("{outcome=\"conflict\"}".to_string(), n("syncs_conflict")),
            ],
        );
        series(
            &mut out,
            "keel_gitsync_last_duration_seconds",
            "gauge",
            "Duration of the last Git Sync run.",
            &[(String::new(), n("last_duration_ms") / 1000.0)],
        );
        if let Some(t) = s["commit_time_ms"].as_i64() {
            let age = (crate::util::unix_ms() as i64 - t).max(0) as f64 / 1000.0;
            series(
                &mut out,
                "keel_gitsync_commit_age_seconds",
                "gauge",
                "Age of the served commit (committer time).",
                &[(String::new(), age)],
            );
        }
    }
    series(
        &mut out,
        "keel_datastore_rolled_back_total",
        "counter",
        "Divergent entries this node rolled back.",
        &[(String::new(), node.repl.replica_status().rolled_back as f64)],
    );
    out
}
