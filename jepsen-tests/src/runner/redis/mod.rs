//! The Redis workloads (issue 19, Chaos): clients find the master through Sentinel-protocol
//! discovery and run registers (SET / GET) and lists (RPUSH / LRANGE) on it, `WAIT`ing for
//! replicas in sync mode, while the nemesis kills and pauses nodes, Keel alone, Redis alone, or
//! both, and (`--netns`, each node's Keel and Redis in its own network namespace) cuts nodes off
//! from each other (`partition.rs`). Afterwards every fault is healed, every list is read once more through the master, and
//! the report gives the lost acknowledged writes ([`crate::redis_check::lost_writes`]), the
//! linearizability of the registers, the append checker's verdict, what discovery named
//! ([`crate::redis_check::judge_namings`]), the rounds with two writable masters, and failovers.
//!
//! The system is Keel managing Redis (`backend.rs`, `Backend::Keel`) or, with
//! [`RunOptions::sentinel_baseline`], Redis's own Sentinel over plain `redis-server`s, on the same
//! seeded schedule, so the two reports compare side by side ([`side_by_side`]).

mod backend;
mod clients;
mod watch;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::client::{Pacer, Recorder};
use super::cluster::Cluster;
use super::probe::Shared as ProbeShared;
use super::progress::Progress;
use super::{RunConfig, RunOptions, Workload};
use crate::history::History;
use crate::nemesis::{self, Planned, Step};
use crate::redis_check::{judge_namings, lost_writes, LostWrites, NamingReport, Seen};
use crate::Verdict;
use backend::{Backend, Baseline};
use clients::Shared;

/// The master name both systems are asked for.
pub const MASTER_NAME: &str = "keel";

/// The figures of one Redis run (also `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RedisReport {
    /// `keel` or `sentinel`.
    pub system: String,
    pub mode: String,
    pub seed: u64,
    pub ops: crate::OpCounts,
    /// Acknowledged appends missing from the final lists.
    pub lost: LostWrites,
    /// The registers' linearizability.
    pub linearizable: Verdict,
    /// The lists' append checker (lost, reordered, diverged, ...).
    pub append: Verdict,
    pub append_lost: u64,
    pub naming: NamingReport,
    pub watch_rounds: u64,
    /// Watcher rounds in which more than one Redis was a master taking writes.
    pub split_brain_rounds: u64,
    /// Changes of the master discovery names.
    pub failovers: u64,
    /// Per fault that hit the primary: ms until discovery named another master that was up.
    pub failover_ms: Vec<u64>,
    pub faults: Vec<Value>,
    /// Register values a sync-mode run reads must be linearizable and no acknowledged write lost.
    pub check: crate::Report,
}

impl RedisReport {
    /// What sync mode promises: no acknowledged write lost, linearizable registers, a clean
    /// append history, and discovery never naming a fenced server (async: only the last).
    pub fn ok(&self) -> bool {
        let naming = self.naming.named_fenced == 0;
        if self.mode == "sync" {
            naming
                && self.lost.lost == 0
                && self.lost.keys_unread.is_empty()
                && self.linearizable == Verdict::Valid
                && self.append == Verdict::Valid
        } else {
            naming
        }
    }

    /// `PASS` / `FAIL` in sync mode; in async mode, where losing writes is the documented
    /// trade-off, `measured` unless discovery named a fenced master.
    pub fn verdict(&self) -> &'static str {
        match (self.ok(), self.mode.as_str()) {
            (false, _) => "FAIL",
            (true, "sync") => "PASS",
            (true, _) => "measured",
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ({} mode): {} — lost acknowledged writes {} of {} (unread lists {}); linearizable {:?}; append {:?}; \
             discovery named a fenced/replica master {} times (a replica {}; racy {}, unreachable {}, nil {}) in {} answers; \
             split-brain rounds {} of {}; failovers {} (ms {:?}); ops ok {} fail {} info {}",
            self.system,
            self.mode,
            self.verdict(),
            self.lost.lost,
            self.lost.acknowledged,
            self.lost.keys_unread.len(),
            self.linearizable,
            self.append,
            self.naming.named_fenced,
            self.naming.named_replica,
            self.naming.named_fenced_racy,
            self.naming.named_unreachable,
            self.naming.named_nobody,
            self.naming.answers,
            self.split_brain_rounds,
            self.watch_rounds,
            self.failovers,
            self.failover_ms,
            self.ops.ok,
            self.ops.fail,
            self.ops.info,
        )
    }
}

/// A table of the figures of several runs, one column per run.
pub fn side_by_side(reports: &[&RedisReport]) -> String {
    type Row = (&'static str, Box<dyn Fn(&RedisReport) -> String>);
    let rows: Vec<Row> = vec![
        ("system", Box::new(|r| format!("{} ({})", r.system, r.mode))),
        ("verdict", Box::new(|r| r.verdict().into())),
        (
            "acknowledged writes (lists)",
            Box::new(|r| r.lost.acknowledged.to_string()),
        ),
        ("lost acknowledged writes", Box::new(|r| r.lost.lost.to_string())),
        (
            "indeterminate writes kept / dropped",
            Box::new(|r| format!("{} / {}", r.lost.indeterminate_present, r.lost.indeterminate_absent)),
        ),
        ("registers linearizable", Box::new(|r| format!("{:?}", r.linearizable))),
        ("lists (append checker)", Box::new(|r| format!("{:?}", r.append))),
        (
            "named a fenced/replica master",
            Box::new(|r| r.naming.named_fenced.to_string()),
        ),
        (
            "  … on one side of the answer only",
            Box::new(|r| r.naming.named_fenced_racy.to_string()),
        ),
        (
            "named an unreachable master",
            Box::new(|r| r.naming.named_unreachable.to_string()),
        ),
        (
            "split-brain watcher rounds",
            Box::new(|r| format!("{} of {}", r.split_brain_rounds, r.watch_rounds)),
        ),
        ("failovers", Box::new(|r| r.failovers.to_string())),
        (
            "failover ms (primary hit)",
            Box::new(|r| format!("{:?}", r.failover_ms)),
        ),
        (
            "ops ok / fail / info",
            Box::new(|r| format!("{} / {} / {}", r.ops.ok, r.ops.fail, r.ops.info)),
        ),
    ];
    let mut out = String::new();
    for (name, f) in rows {
        out.push_str(&format!("{name:<38}"));
        for r in reports {
            out.push_str(&format!(" | {:<28}", f(r)));
        }
        out.push('\n');
    }
    out
}

/// Run one Redis test (see the module docs).
pub fn run_redis(cfg: &RunConfig, opts: &RunOptions) -> Result<RedisReport, String> {
    let kinds = nemesis::parse_redis_kinds(&cfg.nemesis, opts.netns)?;
    if opts.sentinel_baseline && opts.netns {
        return Err("the Sentinel baseline runs on loopback: it cannot be combined with --netns".into());
    }
    preflight(cfg, opts)?;
    let steps = super::prepare_out_dir(cfg, &kinds)?;
    let write =
        |name: &str, text: String| std::fs::write(cfg.out.join(name), text).map_err(|e| format!("write {name}: {e}"));
    let need = (cfg.nodes / 2).max(1);
    let mut backend = if opts.sentinel_baseline {
        Backend::Sentinel(Baseline::start(&cfg.out, cfg.nodes, MASTER_NAME)?)
    } else {
        // Keel's sync mode keeps min-replicas-to-write in step with --min-acks.
        let o = RunOptions {
            min_acks: Some(opts.min_acks.unwrap_or(need)),
            ..opts.clone()
        };
        Backend::Keel(Box::new(Cluster::start(cfg, &o, false)?))
    };
    let (redis, listeners) = (backend.redis_addrs(), backend.listeners());
    wait_ready(&redis, &listeners, Duration::from_secs(60))?;

    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let sh = Arc::new(Shared {
        rec: rec.clone(),
        listeners: listeners.clone(),
        redis: redis.clone(),
        name: MASTER_NAME.into(),
        sync: cfg.mode == "sync",
        need: opts.min_acks.unwrap_or(need),
        keys: cfg.keys.max(1),
        registers: opts.workload != Workload::RedisAppend,
        lists: opts.workload != Workload::RedisRegister,
        counts: (0..cfg.keys.max(1)).map(|_| AtomicU64::new(0)).collect(),
        list_keys: Mutex::new(BTreeSet::new()),
        values: AtomicU64::new(1),
        discoveries: Mutex::new(Vec::new()),
    });
    let clients: Vec<_> = (0..cfg.clients)
        .map(|p| {
            let sh = sh.clone();
            let pacer = Pacer::new(opts.rate, cfg.clients, stop.clone());
            let seed = cfg.seed;
            std::thread::spawn(move || clients::client(p, seed, sh, pacer))
        })
        .collect();
    let probe_shared = Arc::new(ProbeShared::default());
    let watcher = watch::spawn_watcher(
        redis.clone(),
        listeners.clone(),
        MASTER_NAME.into(),
        rec.start,
        stop.clone(),
        probe_shared.clone(),
    );
    let progress = Arc::new(Progress::new(&rec, &probe_shared, opts.progress));
    let ticker = opts.progress.then(|| progress.spawn_ticker(stop.clone()));

    let end = rec.start + cfg.time;
    let mut faults = Vec::new();
    let mut failover_ms = Vec::new();
    let played = play(
        &mut backend,
        &steps,
        &sh,
        rec.start,
        end,
        &mut faults,
        &mut failover_ms,
        &|e| progress.say(e),
    );
    super::stop_clients_at(end, &stop, clients, ticker);
    let watched = watcher.join().map_err(|_| "watcher panicked")?;
    progress.say("clients stopped");
    played?;
    backend.heal_all()?;
    std::thread::sleep(cfg.quiet);
    let finals = clients::final_reads(&sh, 1_000_000, Duration::from_secs(30));

    let history = History::new(rec.take());
    history.save(cfg.out.join("history.jsonl")).map_err(|e| e.to_string())?;
    let check = crate::check(&history).map_err(|e| e.to_string())?;
    let pairs = history.pair().map_err(|e| e.to_string())?;
    let naming = judge_namings(&watched.namings);
    let report = RedisReport {
        system: backend.name().into(),
        mode: cfg.mode.clone(),
        seed: cfg.seed,
        ops: check.ops.clone(),
        lost: lost_writes(&pairs, &finals),
        linearizable: check.linearizable.verdict,
        append: check.append.verdict,
        append_lost: check.append.totals.lost.count,
        naming,
        watch_rounds: watched.rounds,
        split_brain_rounds: watched.split_rounds,
        failovers: watched.failovers,
        failover_ms,
        faults,
        check,
    };
    write(
        "summary.json",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )?;
    let namings: String = watched
        .namings
        .iter()
        .map(|n| serde_json::to_string(n).unwrap_or_default() + "\n")
        .collect();
    write("namings.jsonl", namings)?;
    let discoveries: String = sh
        .discoveries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|d| serde_json::to_string(d).unwrap_or_default() + "\n")
        .collect();
    write("discoveries.jsonl", discoveries)?;
    write(
        "master_timeline.json",
        serde_json::to_string(&watched.timeline).unwrap_or_default(),
    )?;
    drop(backend);
    Ok(report)
}

/// `redis-server` and `kill` on PATH, and the keel binary unless this is the baseline.
fn preflight(cfg: &RunConfig, opts: &RunOptions) -> Result<(), String> {
    let path = std::env::var_os("PATH");
    let mut missing: Vec<String> = ["redis-server", "kill"]
        .iter()
        .filter(|p| !super::preflight::on_path(p, path.as_deref()))
        .map(|p| {
            format!(
                "  {p} (not on PATH{})",
                if *p == "kill" {
                    "; Debian package procps"
                } else {
                    "; Debian package redis-server"
                }
            )
        })
        .collect();
    if !opts.sentinel_baseline && !cfg.keel.exists() {
        missing.push(format!(
            "  the keel binary at {} (build it, or pass --keel PATH)",
            cfg.keel.display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this machine lacks what the run needs (no node was started):\n{}",
            missing.join("\n")
        ))
    }
}

/// Until discovery names a master that is up and has every other node as a connected replica.
fn wait_ready(redis: &[(u64, String)], listeners: &[(u64, String)], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let named = listeners
            .iter()
            .find_map(|(_, l)| clients::ask(l, MASTER_NAME).ok().flatten());
        if let Some(m) = &named {
            let replicas = crate::resp::call(m, &["INFO", "replication"], Duration::from_millis(300))
                .ok()
                .and_then(|r| r.text())
                .map(|t| crate::resp::info_fields(&t))
                .and_then(|f| f.get("connected_slaves").and_then(|v| v.parse::<usize>().ok()));
            if watch::probe(m, redis.len() as u64) == Seen::Master && replicas == Some(redis.len() - 1) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no writable master with every replica connected within {within:?} (discovery named {named:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node discovery names as master now (asking every listener; the first answer).
fn named_master(sh: &Shared, from: &[u64]) -> Option<u64> {
    sh.listeners
        .iter()
        .filter(|(id, _)| from.is_empty() || from.contains(id))
        .find_map(|(_, l)| clients::ask(l, &sh.name).ok().flatten())
        .and_then(|a| sh.node_of(&a))
}

/// How a fault is undone.
enum Heal {
    Restart(Vec<usize>),
    ResumeControl(usize),
    ResumeRedis(usize),
    ResumeBoth(usize),
    /// Remove every network cut.
    Network,
    Nothing,
}

/// Start one planned fault: (nodes hit, whether the primary was among them, how to heal).
///
/// A step never kills a majority of the Redis servers (`killed`: how many this step killed so far;
/// a `kill:majority` drawn by the schedule, or a kill on top of another, is cut down to a
/// minority): Redis keeps its data in memory, and a kill -9 of a majority at once loses what only
/// their memory held, which no failover can bring back.
fn apply(
    backend: &mut Backend,
    f: &Planned,
    sh: &Shared,
    taken: &BTreeSet<u64>,
    killed: &mut usize,
) -> (Vec<u64>, bool, Heal) {
    let primary = named_master(sh, &[]);
    let ids: Vec<u64> = sh.redis.iter().map(|(id, _)| *id).collect();
    let free: Vec<u64> = ids.iter().copied().filter(|i| !taken.contains(i)).collect();
    let pick_one = |pick: u64| -> Option<u64> {
        if free.is_empty() {
            None
        } else {
            Some(free[(pick % free.len() as u64) as usize])
        }
    };
    let target = match (f.kind.as_str(), f.variant.as_str()) {
        ("kill-primary", _) | (_, "primary") => primary.filter(|p| !taken.contains(p)),
        _ => pick_one(f.pick),
    };
    let nodes: Vec<u64> = match (f.kind.as_str(), f.variant.as_str()) {
        ("kill", "majority") => {
            let mut v = free.clone();
            let mut rng = crate::rng::Rng::new(f.pick);
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i as u64 + 1) as usize);
            }
            v.truncate(ids.len() / 2 + 1);
            v
        }
        _ => target.into_iter().collect(),
    };
    let mut nodes = nodes;
    if f.kind.starts_with("kill") {
        nodes.truncate(((ids.len() - 1) / 2).saturating_sub(*killed));
        *killed += nodes.len();
    }
    if f.kind == "partition" {
        return apply_partition(backend, f, primary, &ids);
    }
    let hit_primary = primary.is_some_and(|p| nodes.contains(&p));
    let idx = |id: u64| (id - 1) as usize;
    let heal = match (f.kind.as_str(), nodes.first()) {
        (_, None) => Heal::Nothing,
        ("kill" | "kill-primary", _) => {
            for id in &nodes {
                backend.kill(idx(*id));
            }
            Heal::Restart(nodes.iter().map(|id| idx(*id)).collect())
        }
        ("pause-keel", Some(id)) => {
            backend.pause_control(idx(*id));
            Heal::ResumeControl(idx(*id))
        }
        ("pause-redis", Some(id)) => {
            backend.pause_redis(idx(*id));
            Heal::ResumeRedis(idx(*id))
        }
        ("pause-both", Some(id)) => {
            backend.pause_redis(idx(*id));
            backend.pause_control(idx(*id));
            Heal::ResumeBoth(idx(*id))
        }
        _ => Heal::Nothing,
    };
    (nodes, hit_primary, heal)
}

/// A network partition ([`super::partition::sides`]): the nodes on the small side (or the left one of a
/// bridge) are the ones hit. Without a lab (no `--netns`; the kinds check refuses that first),
/// nothing is cut.
fn apply_partition(backend: &mut Backend, f: &Planned, primary: Option<u64>, ids: &[u64]) -> (Vec<u64>, bool, Heal) {
    let Some(lab) = backend.lab() else {
        return (Vec::new(), false, Heal::Nothing);
    };
    let coordinator = (f.variant == "isolate-coordinator")
        .then(|| super::probe::coordinator(&super::probe::new_http(), &backend.apis()))
        .flatten();
    let sides = super::partition::sides(&f.variant, f.pick, ids, primary, coordinator);
    super::partition::cut(lab, &sides);
    let nodes: Vec<u64> = sides.small.iter().copied().collect();
    let hit_primary = primary.is_some_and(|p| nodes.contains(&p));
    (nodes, hit_primary, Heal::Network)
}

fn heal(backend: &mut Backend, h: Heal) -> Result<(), String> {
    match h {
        Heal::Restart(v) => {
            for i in v {
                backend.restart(i)?;
            }
        }
        Heal::ResumeControl(i) => backend.resume_control(i),
        Heal::ResumeRedis(i) => backend.resume_redis(i),
        Heal::ResumeBoth(i) => {
            backend.resume_control(i);
            backend.resume_redis(i);
        }
        Heal::Network => {
            if let Some(lab) = backend.lab() {
                lab.heal();
            }
        }
        Heal::Nothing => {}
    }
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Play the schedule (each step's faults start together and are healed together); for a step
/// that hit the primary, time until a listener of another node names a master that is up.
#[allow(clippy::too_many_arguments)]
fn play(
    backend: &mut Backend,
    steps: &[Step],
    sh: &Shared,
    start: Instant,
    end: Instant,
    faults: &mut Vec<Value>,
    failover_ms: &mut Vec<u64>,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    let ms = || start.elapsed().as_millis() as u64;
    let nodes = sh.redis.len() as u64;
    for step in steps {
        let at = start + Duration::from_millis(step.at_ms);
        if at + Duration::from_millis(step.for_ms) > end {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t0 = Instant::now();
        let mut taken = BTreeSet::new();
        let mut killed = 0;
        let mut active = Vec::new();
        for f in &step.faults {
            let start_ms = ms();
            let (hit, was_primary, h) = apply(backend, f, sh, &taken, &mut killed);
            taken.extend(hit.iter().copied());
            let on = if hit.is_empty() {
                "skipped".to_string()
            } else {
                hit.iter().map(|n| format!("n{n}")).collect::<Vec<_>>().join(" ")
            };
            progress(&format!(
                "fault {} ({}) {on}{}",
                f.kind,
                f.variant,
                if was_primary { " (primary)" } else { "" }
            ));
            active.push((f, hit, was_primary, h, start_ms));
        }
        let hit: Vec<u64> = active
            .iter()
            .filter(|a| a.2)
            .flat_map(|a| a.1.iter().copied())
            .collect();
        let until = at + Duration::from_millis(step.for_ms);
        if !hit.is_empty() {
            let others: Vec<u64> = sh
                .redis
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !hit.contains(id))
                .collect();
            while Instant::now() < until {
                let named = named_master(sh, &others);
                if let Some(n) = named.filter(|n| !hit.contains(n)) {
                    let addr = &sh.redis[(n - 1) as usize].1;
                    if watch::probe(addr, nodes) == Seen::Master {
                        failover_ms.push(t0.elapsed().as_millis() as u64);
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        for (f, hit, was_primary, h, start_ms) in active {
            heal(backend, h)?;
            faults.push(json!({
                "kind": f.kind,
                "variant": f.variant,
                "nodes": hit,
                "start_ms": start_ms,
                "end_ms": ms(),
                // Wall clock, to find the fault in the nodes' logs.
                "start_unix_ms": unix_ms().saturating_sub(ms().saturating_sub(start_ms)),
                "was_primary": was_primary,
            }));
        }
    }
    Ok(())
}
