//! The short fixed chaos suite that CI runs (issue: chaos harness): real processes, clients on
//! a few registers or lists, faults every few seconds, then the linearizability (sync mode) or
//! append checker, the one-primary-per-round and epoch checkers, and convergence. In async mode
//! the test reports, but does not fail on, lost acknowledged writes. Scenarios:
//! - loopback: kill -9 / SIGSTOP / kill of the primary, sync and async;
//! - network namespaces (root; CI): kill, pause and partitions (isolated primary or coordinator,
//!   halves, bridge), sync mode;
//! - append workload under clock skew (libfaketime), data-dir wipes and kills.
//!
//! The long suite is `keel-jepsen run` (see docs/testing.md).

use std::time::Duration;

use keel_jepsen::runner::{run_with, RunConfig, RunOptions, Workload};

/// `linearizable`: whether the register history must be linearizable. Sync mode promises it;
/// async mode does not (a write acknowledged by the primary alone can be lost on failover, and
/// the checker then finds the register going back in time — the documented trade-off).
fn scenario(name: &str, mode: &str, nemesis: &[&str], seed: u64, linearizable: bool) {
    scenario_with(name, mode, nemesis, seed, linearizable, (3, 20), &RunOptions::default());
}

/// `size`: (nodes, seconds).
fn scenario_with(
    name: &str,
    mode: &str,
    nemesis: &[&str],
    seed: u64,
    linearizable: bool,
    size: (u64, u64),
    opts: &RunOptions,
) {
    scenario_tweaked(name, mode, nemesis, seed, linearizable, size, opts, |_| {});
}

/// As [`scenario_with`], with the run's config adjusted by `tweak` (clients, keys, timings).
#[allow(clippy::too_many_arguments)]
fn scenario_tweaked(
    name: &str,
    mode: &str,
    nemesis: &[&str],
    seed: u64,
    linearizable: bool,
    size: (u64, u64),
    opts: &RunOptions,
    tweak: impl FnOnce(&mut RunConfig),
) {
    let (nodes, secs) = size;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RunConfig {
        keel: env!("CARGO_BIN_EXE_keel").into(),
        out: dir.path().join(name),
        nodes,
        time: Duration::from_secs(secs),
        clients: 4,
        keys: 4,
        nemesis: nemesis.iter().map(|s| s.to_string()).collect(),
        fault_every: Duration::from_millis(4000),
        fault_for: Duration::from_millis(2000),
        mode: mode.into(),
        seed,
        quiet: Duration::from_secs(2),
    };
    tweak(&mut cfg);
    let r = match run_with(&cfg, opts) {
        Ok(r) => r,
        // Namespaces need root, skew needs libfaketime: skip locally, never in CI.
        Err(e)
            if std::env::var_os("CI").is_none()
                && (e.contains("not root") || e.contains("apt-get install faketime")) =>
        {
            println!("SKIPPED {name}: {e}");
            return;
        }
        Err(e) => panic!("{name}: run failed: {e}"),
    };
    println!(
        "{name}: linearizable {:?}, append {:?}, ops ok {} fail {} info {}, double-primary rounds {} of {}, converged {}, failovers ms {:?}",
        r.check.linearizable.verdict,
        r.check.append.verdict,
        r.check.ops.ok,
        r.check.ops.fail,
        r.check.ops.info,
        r.double_primary_rounds,
        r.primary_samples,
        r.converged,
        r.failover_ms
    );
    for f in &r.faults {
        println!("  fault {f}");
    }
    let ok = if linearizable {
        r.ok()
    } else {
        r.double_primary_rounds == 0
            && r.epochs_monotonic
            && r.converged
            && r.check.append.verdict == keel_jepsen::Verdict::Valid
    };
    if !ok {
        // Keep the evidence: the report directory survives the failed test.
        let keep = dir.keep();
        panic!("{name} failed; report kept in {}", keep.join(name).display());
    }
    assert!(r.check.ops.ok > 100, "{name}: too few successful operations");
}

#[test]
fn chaos_sync_kill_pause() {
    scenario("sync-kill-pause", "sync", &["kill", "pause", "kill-primary"], 7, true);
}

#[test]
fn chaos_async_kill_primary() {
    scenario("async-kill-primary", "async", &["kill-primary"], 11, false);
}

/// Each node in its own network namespace: kill, pause and partitions (isolate the primary or
/// the coordinator, majority/minority halves, bridge), sync mode: every checker must pass.
#[test]
fn chaos_sync_netns_partition() {
    scenario_with(
        "sync-netns-partition",
        "sync",
        &["kill", "pause", "partition"],
        5,
        true,
        (3, 24),
        &RunOptions {
            netns: true,
            ..RunOptions::default()
        },
    );
}

/// The append workload (lists grown by CAS) under clock skew and drift on one node
/// (libfaketime, rates inside the lease's margin, the primary switched to it), data-dir wipes
/// (remove, wipe, rejoin, promote) and kills, sync mode: no lost, duplicated or reordered
/// element, one primary, converged (the wiped node included).
#[test]
fn chaos_append_skew_wipe() {
    scenario_with(
        "append-skew-wipe",
        "sync",
        &["skew", "wipe", "kill"],
        9,
        true,
        (3, 24),
        &RunOptions {
            workload: Workload::Append,
            ..RunOptions::default()
        },
    );
}

/// Regression (found by the 10-minute run, seed 20261126): five nodes in sync mode with
/// `min_acks` 1, a partition that leaves the primary with one replica on the small side: that
/// replica acknowledges writes the majority never sees, the majority promotes a new primary, and
/// acknowledged writes are lost (the checker finds the register going back). Keel promises no
/// loss only when the primary and `min_acks` replicas make a majority; the harness now runs
/// sync mode with `min_acks = nodes / 2`, and this scenario (the primary always on the minority
/// side) must pass every checker. `keel-jepsen run --netns --nodes 5 --time 20 --nemesis
/// partition:primary-minority --min-acks 1 --seed 4` reproduces the loss.
#[test]
fn chaos_regression_sync_primary_in_minority() {
    scenario_with(
        "sync-primary-minority",
        "sync",
        &["partition:primary-minority"],
        4,
        true,
        (5, 16),
        &RunOptions {
            netns: true,
            ..RunOptions::default()
        },
    );
}

/// Regression (found by the harness, seed 8 of `--nemesis skew,partition:isolate-primary`): in
/// sync mode a primary read (`?consistency=primary`) answered with a write that was durable on
/// the primary but still waiting for its replica acks. When the primary was then cut off, that
/// write was lost in the failover and the register went back: a dirty read. Primary reads now
/// wait until everything up to the head is on `min_acks` replicas (and re-check the lease).
/// Ten clients on one register make reads of in-flight writes on the isolated primary likely:
/// without the fix both seeds tried failed (`keel-jepsen run --netns --nodes 3 --time 16
/// --clients 10 --keys 1 --nemesis partition:isolate-primary --fault-every-ms 3000
/// --fault-for-ms 2000 --seed 1`).
#[test]
fn chaos_regression_sync_read_of_unacked_write() {
    scenario_tweaked(
        "sync-read-of-unacked-write",
        "sync",
        &["partition:isolate-primary"],
        1,
        true,
        (3, 16),
        &RunOptions {
            netns: true,
            ..RunOptions::default()
        },
        |c| {
            c.clients = 10;
            c.keys = 1;
            c.fault_every = Duration::from_millis(3000);
        },
    );
}
