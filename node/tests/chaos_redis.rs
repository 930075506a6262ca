//! The Redis chaos workload in CI (issue 19, Chaos): three `keel serve` nodes managing a real
//! `redis-server` each, clients that find the master through Keel's Sentinel-protocol listeners
//! and write with `WAIT` (sync mode), under kill -9 of the primary and SIGSTOP of a node's Keel
//! alone, its Redis alone and both. Every acknowledged RPUSH must be in the final lists, the
//! registers must be linearizable and the lists pass the append checker. How often discovery named
//! a fenced server is printed, not asserted yet: this workload found two ways it still happens
//! (docs/measurements.md, "Redis under chaos"), a listener answering from a stale view right after
//! its keel process was paused, and the other nodes' listeners naming a primary during a short
//! lapse of its lease; neither is fixed yet.
//!
//! The long run and the Sentinel baseline are `keel-jepsen run --workload redis [--baseline
//! sentinel]` (docs/testing.md). Skipped with a message when redis-server is not installed,
//! except in CI, where that fails.

use std::time::Duration;

use keel_jepsen::runner::redis::run_redis;
use keel_jepsen::runner::{RunConfig, RunOptions, Workload};
use keel_testkit::have_redis;

#[test]
fn chaos_redis_sync_loses_no_acknowledged_write() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        keel: env!("CARGO_BIN_EXE_keel").into(),
        out: dir.path().join("redis-sync"),
        nodes: 3,
        time: Duration::from_secs(24),
        clients: 4,
        keys: 3,
        nemesis: [
            "kill-primary",
            "pause-keel:primary",
            "pause-redis:primary",
            "pause-both:primary",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        fault_every: Duration::from_millis(4000),
        fault_for: Duration::from_millis(2000),
        mode: "sync".into(),
        seed: 20,
        quiet: Duration::from_secs(2),
    };
    let opts = RunOptions {
        workload: Workload::Redis,
        ..RunOptions::default()
    };
    let r = run_redis(&cfg, &opts).unwrap_or_else(|e| panic!("run failed: {e}"));
    println!("{}", r.summary());
    for f in &r.faults {
        println!("  fault {f}");
    }
    let faults_hit = r
        .faults
        .iter()
        .filter(|f| f["nodes"].as_array().is_some_and(|n| !n.is_empty()))
        .count();
    let valid = keel_jepsen::Verdict::Valid;
    if r.lost.lost != 0 || !r.lost.keys_unread.is_empty() || r.linearizable != valid || r.append != valid {
        let keep = dir.keep();
        panic!(
            "redis-sync failed; report kept in {}",
            keep.join("redis-sync").display()
        );
    }
    assert!(
        r.lost.acknowledged > 100,
        "too few acknowledged writes: {}",
        r.lost.acknowledged
    );
    assert!(faults_hit >= 3, "too few faults applied: {:?}", r.faults);
}
