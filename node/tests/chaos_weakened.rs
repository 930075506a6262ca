//! Acceptance 3 of the chaos-harness issue: the harness catches a deliberately weakened build.
//!
//! The nodes run with `KEEL_UNSAFE_TEST_ACK_EARLY=1` (see `node/src/cluster/write.rs`): a node that
//! believes it is the primary accepts writes without a lease and acknowledges them as soon as
//! they are durable locally, without waiting for the sync-mode replica acknowledgements. Under a
//! schedule that pauses or kills the primary every 3 s, the checkers must report a violation;
//! `chaos_primary_fault_schedule_passes` runs the same schedule against the normal build, where
//! every checker must pass (it is also the regression scenario of a bug this schedule found: a
//! sync-mode primary read could return a write still waiting for its replica acks).
//!
//! The switch reaches only the nodes of this run: the runner starts a small wrapper script (its
//! `keel` path) that sets the variable and `exec`s the real binary, so the test process's own
//! environment is never changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_jepsen::runner::{run, RunConfig};
use keel_jepsen::Verdict;

/// The schedule both tests run: sync mode, twelve clients, every 3 s the primary paused
/// (SIGSTOP) or killed for 2 s, sometimes both kinds at once (six steps in 20 s). A paused
/// primary resumes after another node was promoted; `chaos_sync_kill_pause` in chaos.rs (faults
/// every 4 s on any node) hits the primary too rarely to catch the weakened build every time.
fn primary_fault_schedule(keel: PathBuf, out: PathBuf) -> RunConfig {
    RunConfig {
        keel,
        out,
        nodes: 3,
        time: Duration::from_secs(20),
        // Many clients: the more writes in flight when the primary stops, the surer one of
        // them is acknowledged but never reaches the next primary.
        clients: 12,
        keys: 4,
        nemesis: vec!["pause:primary".to_string(), "kill-primary".to_string()],
        fault_every: Duration::from_millis(3000),
        fault_for: Duration::from_millis(2000),
        mode: "sync".into(),
        seed: 7,
        quiet: Duration::from_secs(2),
    }
}

/// A `keel` that runs the real binary with the unsafe test-only switch on.
fn weakened_keel(dir: &Path) -> PathBuf {
    let path = dir.join("keel-weakened");
    let script = format!(
        "#!/bin/sh\nKEEL_UNSAFE_TEST_ACK_EARLY=1 exec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_keel")
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Seeds tried in turn, stopping at the first run that catches the weakened build. One run has
/// caught it every time we tried (several invalid keys each); the other seeds only guard
/// against a run whose pauses all end before a failover completes.
const SEEDS: [u64; 3] = [7, 8, 9];

#[test]
fn chaos_weakened_ack_early_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let keel = weakened_keel(dir.path());
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for seed in SEEDS {
        let out = dir.path().join(format!("weakened-seed-{seed}"));
        let mut cfg = primary_fault_schedule(keel.clone(), out.clone());
        cfg.seed = seed;
        let r = run(&cfg).unwrap_or_else(|e| panic!("run failed: {e}"));
        let invalid_keys = r
            .check
            .linearizable
            .keys
            .iter()
            .filter(|k| k.result.verdict() == Verdict::Invalid)
            .count();
        println!(
            "weakened seed {seed}: checkers' verdict {:?}, invalid keys {invalid_keys}, faults {}, {:.1} s since start; {}",
            r.check.verdict,
            r.faults.len(),
            started.elapsed().as_secs_f64(),
            r.summary()
        );
        // The switch really was on: every node logged the warning at start.
        for id in 1..=cfg.nodes {
            let log = std::fs::read_to_string(out.join(format!("n{id}.log"))).unwrap_or_default();
            assert!(
                log.contains("KEEL_UNSAFE_TEST_ACK_EARLY=1: UNSAFE TEST-ONLY"),
                "node {id} did not log the unsafe switch; log:\n{log}"
            );
        }
        assert!(r.check.ops.ok > 100, "too few successful operations to judge");
        // Caught means a checker found a violation: the register history is not linearizable
        // (an acknowledged write was lost, or a read saw a value go back in time).
        if r.check.verdict == Verdict::Invalid {
            return;
        }
        runs.push(format!("seed {seed}: verdict {:?}", r.check.verdict));
    }
    let keep = dir.keep();
    panic!(
        "the harness did not catch the weakened build in {} runs ({}); reports kept in {}",
        SEEDS.len(),
        runs.join(", "),
        keep.display()
    );
}

/// The control: the same schedule against the normal build passes every checker.
#[test]
fn chaos_primary_fault_schedule_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sync-kill-primary");
    let cfg = primary_fault_schedule(env!("CARGO_BIN_EXE_keel").into(), out);
    let r = run(&cfg).unwrap_or_else(|e| panic!("run failed: {e}"));
    println!("normal: {}", r.summary());
    if !r.ok() {
        let keep = dir.keep();
        panic!(
            "the normal build failed the schedule; report kept in {}",
            keep.join("sync-kill-primary").display()
        );
    }
    assert!(r.check.ops.ok > 100, "too few successful operations");
}
