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

/// One scenario of the suite: 3 nodes for 20 s on loopback with the register workload, unless
/// changed with [`Scenario::size`] and [`Scenario::opts`].
struct Scenario {
    name: &'static str,
    mode: &'static str,
    nemesis: &'static [&'static str],
    seed: u64,
    /// Whether the register history must be linearizable. Sync mode promises it; async mode
    /// does not (a write acknowledged by the primary alone can be lost on failover, and the
    /// checker then finds the register going back in time — the documented trade-off).
    linearizable: bool,
    nodes: u64,
    secs: u64,
    opts: RunOptions,
}

impl Scenario {
    fn new(
        name: &'static str,
        mode: &'static str,
        nemesis: &'static [&'static str],
        seed: u64,
        linearizable: bool,
    ) -> Self {
        Scenario {
            name,
            mode,
            nemesis,
            seed,
            linearizable,
            nodes: 3,
            secs: 20,
            opts: RunOptions::default(),
        }
    }

    fn size(self, nodes: u64, secs: u64) -> Self {
        Scenario { nodes, secs, ..self }
    }

    fn opts(self, opts: RunOptions) -> Self {
        Scenario { opts, ..self }
    }

    fn run(self) {
        self.run_tweaked(|_| {});
    }

    /// Runs the scenario with the run's config adjusted by `tweak` (clients, keys, timings) and
    /// fails the test (keeping the report) unless every checker it must pass passed.
    fn run_tweaked(self, tweak: impl FnOnce(&mut RunConfig)) {
        let name = self.name;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RunConfig {
            keel: env!("CARGO_BIN_EXE_keel").into(),
            out: dir.path().join(name),
            nodes: self.nodes,
            time: Duration::from_secs(self.secs),
            clients: 4,
            keys: 4,
            nemesis: self.nemesis.iter().map(|s| s.to_string()).collect(),
            fault_every: Duration::from_millis(4000),
            fault_for: Duration::from_millis(2000),
            mode: self.mode.into(),
            seed: self.seed,
            quiet: Duration::from_secs(2),
        };
        tweak(&mut cfg);
        let r = match run_with(&cfg, &self.opts) {
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
        // Async mode may show FAIL here (a lost acknowledged write): reported, not failed on.
        let note = if self.linearizable {
            ""
        } else {
            " (async: not linearizable is allowed)"
        };
        println!("{name}: {}{note}", r.summary());
        for f in &r.faults {
            println!("  fault {f}");
        }
        let ok = if self.linearizable {
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
}

/// Each node in its own network namespace.
fn netns() -> RunOptions {
    RunOptions {
        netns: true,
        ..RunOptions::default()
    }
}

#[test]
fn chaos_sync_kill_pause() {
    Scenario::new("sync-kill-pause", "sync", &["kill", "pause", "kill-primary"], 7, true).run();
}

#[test]
fn chaos_async_kill_primary() {
    Scenario::new("async-kill-primary", "async", &["kill-primary"], 11, false).run();
}

/// Each node in its own network namespace: kill, pause and partitions (isolate the primary or
/// the coordinator, majority/minority halves, bridge), sync mode: every checker must pass.
#[test]
fn chaos_sync_netns_partition() {
    Scenario::new("sync-netns-partition", "sync", &["kill", "pause", "partition"], 5, true)
        .size(3, 24)
        .opts(netns())
        .run();
}

/// The append workload (lists grown by CAS) under clock skew and drift on one node
/// (libfaketime, rates inside the lease's margin, the primary switched to it), data-dir wipes
/// (remove, wipe, rejoin, promote) and kills, sync mode: no lost, duplicated or reordered
/// element, one primary, converged (the wiped node included).
#[test]
fn chaos_append_skew_wipe() {
    Scenario::new("append-skew-wipe", "sync", &["skew", "wipe", "kill"], 9, true)
        .size(3, 24)
        .opts(RunOptions {
            workload: Workload::Append,
            ..RunOptions::default()
        })
        .run();
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
    Scenario::new(
        "sync-primary-minority",
        "sync",
        &["partition:primary-minority"],
        4,
        true,
    )
    .size(5, 16)
    .opts(netns())
    .run();
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
    Scenario::new(
        "sync-read-of-unacked-write",
        "sync",
        &["partition:isolate-primary"],
        1,
        true,
    )
    .size(3, 16)
    .opts(netns())
    .run_tweaked(|c| {
        c.clients = 10;
        c.keys = 1;
        c.fault_every = Duration::from_millis(3000);
    });
}
