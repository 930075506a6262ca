//! The runner: a cluster of real `keel serve` processes, concurrent clients running the
//! register or the append workload, a nemesis on a seeded schedule ([`crate::nemesis`]), a
//! `/primary` sampler, and a report directory.
//!
//! Two modes. *Loopback* (any user): every node on 127.0.0.1 with its own ports; faults are
//! kill -9, SIGSTOP/SIGCONT, clock skew and data-dir wipes. *Namespaces* (`--netns`, root): each
//! node in its own network namespace on a bridge ([`crate::netns::NetLab`]), which adds
//! partitions and link degradation. The harness itself stays in the root namespace, so its
//! clients reach every node, partitioned or not.
//!
//! Every loop is bounded by the run's duration and stops by itself; every process started is
//! killed when the cluster drops (panics included), and the namespaces are removed after it.
//!
//! Modules: `preflight` checks the machine for what the chosen nemeses run (before any node
//! starts), `cluster` starts and signals the `keel serve` processes, `client` runs the
//! workloads and records the history, `faults` plays the nemesis schedule, `probe` watches
//! `/primary` and checks convergence, and `report` writes the report directory.

mod client;
mod cluster;
mod faults;
mod partition;
mod preflight;
mod probe;
mod progress;
pub mod redis;
mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::history::History;
use crate::nemesis::{self, Step};

use client::{spawn_clients, Recorder};
use cluster::Cluster;
use faults::{run_schedule, Nemesis};
use probe::{converge, new_http, primaries, spawn_sampler, Shared};
use progress::Progress;

pub use crate::rng::Rng;
pub use cluster::faketime_lib;
pub use report::RunReport;

/// What to run. The fields of the original loopback runner; the newer switches are in
/// [`RunOptions`] (see [`run_with`]).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub keel: PathBuf,
    pub out: PathBuf,
    pub nodes: u64,
    pub time: Duration,
    pub clients: u64,
    pub keys: u64,
    /// Nemesis kinds ([`nemesis::ALL`], or `all`).
    pub nemesis: Vec<String>,
    /// Time between fault steps, and how long each lasts.
    pub fault_every: Duration,
    pub fault_for: Duration,
    /// `async` or `sync`.
    pub mode: String,
    pub seed: u64,
    pub quiet: Duration,
}

/// Which operations the clients run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workload {
    /// read / write / cas on per-key registers (linearizability checker).
    #[default]
    Register,
    /// append unique elements to per-key lists, read whole lists (append checker).
    Append,
    /// Managed Redis found through Keel's Sentinel-protocol listeners ([`redis::run_redis`]):
    /// SET / GET registers and RPUSH / LRANGE lists, mixed.
    Redis,
    /// The Redis workload with registers only.
    RedisRegister,
    /// The Redis workload with lists only.
    RedisAppend,
}

impl Workload {
    /// One of the Redis workloads (run by [`redis::run_redis`], not [`run_with`]).
    pub fn is_redis(self) -> bool {
        matches!(self, Workload::Redis | Workload::RedisRegister | Workload::RedisAppend)
    }
}

/// Switches beyond [`RunConfig`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Each node in its own network namespace (needs root); enables `partition` and `netem`.
    pub netns: bool,
    pub workload: Workload,
    /// Force the clock rate of the `skew` nemesis (default: one of [`nemesis::SKEW_RATES`],
    /// all inside the lease's drift margin). A rate outside the margin is for showing that the
    /// checkers catch a broken assumption, not for passing runs.
    pub skew_rate: Option<f64>,
    /// Sync mode's `--min-acks`. Default: `nodes / 2`, so that the primary and the replicas
    /// that acknowledged a write form a majority, which any later primary's side intersects
    /// (the condition under which Keel promises no lost acknowledged write; with 1 on five
    /// nodes, a primary cut off with one replica acknowledges writes the majority never sees).
    pub min_acks: Option<u64>,
    /// Operations per second of all clients together (each client paced to `rate / clients`);
    /// `None` = as fast as the cluster answers (closed loop).
    pub rate: Option<f64>,
    /// Print a progress line on stdout at the start of each fault and every 10 s (operations so
    /// far, failures, the current primary). The `keel-jepsen` binary turns it on.
    pub progress: bool,
    /// Redis workloads: run Redis's own Sentinel (3 sentinels, 1 s down-after) instead of Keel.
    pub sentinel_baseline: bool,
}

/// Run one test in loopback mode with the register workload (see [`run_with`]).
pub fn run(cfg: &RunConfig) -> Result<RunReport, String> {
    run_with(cfg, &RunOptions::default())
}

/// Run one test: start the cluster, run clients and the nemesis schedule for `time`, heal
/// every fault, wait `quiet`, check, and write the report directory.
pub fn run_with(cfg: &RunConfig, opts: &RunOptions) -> Result<RunReport, String> {
    if opts.workload.is_redis() {
        return Err("the Redis workloads run with runner::redis::run_redis".into());
    }
    let kinds = nemesis::parse_kinds(&cfg.nemesis, opts.netns)?;
    // Before anything is written or started: every tool the nemeses need is here.
    preflight::check(&kinds, opts.netns, &cfg.keel)?;
    let steps = prepare_out_dir(cfg, &kinds)?;
    let mut cluster = Cluster::start(cfg, opts, kinds.iter().any(|k| k == "skew"))?;
    let http = new_http();
    let apis = cluster.apis();
    wait_for_primary(&http, &apis, Duration::from_secs(60))?;
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let bad_values = Arc::new(AtomicU64::new(0));
    let clients = spawn_clients(cfg, opts, &apis, &rec, &stop, &bad_values);
    let shared = Arc::new(Shared::default());
    let sampler = spawn_sampler(apis.clone(), stop.clone(), rec.start, shared.clone());
    let progress = Arc::new(Progress::new(&rec, &shared, opts.progress));
    let ticker = opts.progress.then(|| progress.spawn_ticker(stop.clone()));
    // The nemesis, on this thread.
    let mut faults = Vec::new();
    let mut failover_ms = Vec::new();
    let end = rec.start + cfg.time;
    let mut nem = Nemesis::new(&mut cluster, &apis, opts, &shared, rec.start, cfg.fault_for);
    let result = run_schedule(&mut nem, &steps, end, &mut faults, &mut failover_ms, &|e| {
        progress.say(e)
    });
    stop_clients_at(end, &stop, clients, ticker);
    progress.say("clients stopped");
    let samples = sampler.join().map_err(|_| "sampler panicked")?;
    result?;
    cluster.heal_all()?;
    Nemesis::new(&mut cluster, &apis, opts, &shared, rec.start, cfg.fault_for).promote_unfinished(&mut faults);
    // Quiet period, then every node must hold the same contents.
    std::thread::sleep(cfg.quiet);
    let converged = converge(&http, &apis, Duration::from_secs(30));

    let history = History::new(rec.take());
    history.save(cfg.out.join("history.jsonl")).map_err(|e| e.to_string())?;
    let check = crate::check(&history).map_err(|e| e.to_string())?;
    let report = RunReport {
        out: cfg.out.clone(),
        seed: cfg.seed,
        check,
        primary_samples: samples.rounds,
        double_primary_rounds: samples.doubles,
        epochs_monotonic: samples.monotonic,
        converged,
        faults,
        failover_ms,
        bad_values: bad_values.load(Ordering::Relaxed),
    };
    report::write_report(cfg, &report, &history, &samples.timeline)?;
    drop(cluster);
    Ok(report)
}

/// Wait until `end`, tell the clients to stop, and wait for them and the progress ticker.
pub(super) fn stop_clients_at<T, U>(
    end: Instant,
    stop: &AtomicBool,
    clients: Vec<std::thread::JoinHandle<T>>,
    ticker: Option<std::thread::JoinHandle<U>>,
) {
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    if let Some(t) = ticker {
        let _ = t.join();
    }
}

/// Make the report directory fresh for this run (a directory used before loses its nodes'
/// data, whose membership names the old run's addresses, and logs), and write the schedule
/// drawn from the seed to `schedule.json`.
pub(super) fn prepare_out_dir(cfg: &RunConfig, kinds: &[String]) -> Result<Vec<Step>, String> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("create {}: {e}", cfg.out.display()))?;
    let data = cfg.out.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("remove old {}: {e}", data.display()))?;
    }
    for id in 1..=cfg.nodes {
        let _ = std::fs::remove_file(cfg.out.join(format!("n{id}.log")));
    }
    let steps = nemesis::schedule(
        kinds,
        cfg.seed,
        cfg.time.as_millis() as u64,
        cfg.fault_every.as_millis() as u64,
        cfg.fault_for.as_millis() as u64,
    );
    std::fs::write(
        cfg.out.join("schedule.json"),
        serde_json::to_string_pretty(&steps).unwrap_or_default(),
    )
    .map_err(|e| format!("write schedule.json: {e}"))?;
    Ok(steps)
}

/// Exactly one node answering 200 on `/primary`, polled every 50 ms.
fn wait_for_primary(http: &reqwest::blocking::Client, apis: &[(u64, String)], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while primaries(http, apis).len() != 1 {
        if Instant::now() > deadline {
            return Err("no primary within 60 s of start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
