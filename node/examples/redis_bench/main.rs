//! Redis failover benchmark (issue 19): Keel managing Redis against Redis Sentinel tuned to 1 s,
//! on the same machine, in one run.
//!
//! Four scenarios, `--runs` failovers each (default 10):
//! - **keel, node**: kill -9 of the primary's whole `keel serve` process; its `redis-server` dies
//!   with it (Keel spawns it with `PR_SET_PDEATHSIG`), and so does that node's Sentinel listener.
//!   The node is started again on its data dir after the run.
//! - **keel, redis**: kill -9 of the primary's `redis-server` alone; Keel is still alive, and
//!   restarts it itself.
//! - **sentinel, node**: three plain `redis-server`s (one master, two replicas) and three
//!   Sentinels (`redis-server <conf> --sentinel`, quorum 2, `down-after-milliseconds` 1000,
//!   `failover-timeout` 2000); "node i" is Redis i plus Sentinel i, deployed side by side: kill -9
//!   of the master's Redis and its Sentinel.
//! - **sentinel, redis**: kill -9 of the master's `redis-server` alone (all three Sentinels live).
//!   After a Sentinel run the killed Redis is started again as a replica of the new master (as a
//!   supervisor would), and a killed Sentinel on its own config.
//!
//! Each run starts from a steady setup (Keel: one node answers `/primary` 200, the two others
//! `/replica` 200, every listener names the primary's Redis; Sentinel: every Sentinel names the
//! same master, which has two online replicas, and sees both replicas and the two other Sentinels
//! up), waits `--settle-ms`, and has the client write to the master. Then it kills, and the same
//! client keeps writing: the failover time runs from just before the kill to the first write
//! acknowledged (`+OK`) by a master other than the killed one, found through the Sentinel
//! addresses. The client ([`client::Discovering`]) asks one Sentinel address
//! `SENTINEL get-master-addr-by-name`, keeps a connection to the master it names, and `SET`s
//! there; every connect, read and write has a `--timeout-ms` timeout (default 200), and on any
//! failure it drops the connection, waits 5 ms, and asks the next Sentinel in turn. The run line
//! also gives the attempts that got no acknowledgement (which Sentinel or master failed, and how),
//! and for Keel, when the nodes' logs say the steps of the failover happened.
//!
//! Then the throughput lines, in three rounds that take the targets in turn (the median round is
//! printed, and every round): `--clients` (default 8) closed-loop clients, one connection each, no
//! pipelining, `SET` new keys with 16-byte values for `--secs` (default 3), against the master
//! Keel's discovery names (two replicas attached), the master Sentinel names (a plain
//! `redis-server`, two replicas attached), and a standalone plain `redis-server`. Keel only names
//! the address; the writes go to Redis directly. Next to each rate: the CPU the three Keel nodes
//! (or the three Sentinels) used meanwhile, in % of one core (`/proc/<pid>/stat`, 10 ms ticks),
//! which on a small machine the clients and Redis do not get.
//!
//! It prints a line per run, then the table (median, p90 and max per scenario, the goals),
//! then the throughput. Every process is killed when it ends (panics included; by their own
//! pids), every temp dir removed; with `KEEL_BENCH_LOG_DIR=DIR` the logs are copied there first.
//!
//!   cargo build --release -p keel-node --bin keel --example redis_bench
//!   target/release/examples/redis_bench --runs 10
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel), or
//! `KEEL_BIN`, and `redis-server` from PATH (Debian's `redis-server`, 7.x).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod client;
mod keel;
mod sentinel;

use client::{Conn, Discovering, Miss};
use keel_replication::service::resp::Reply;

/// Deadline of every wait for a steady setup, and of a failover.
const WAIT: Duration = Duration::from_secs(60);
/// Timeout of the setup's own calls (INFO, probes, steady checks).
pub const CALL: Duration = Duration::from_millis(500);
/// Throughput rounds: every target once per round.
const TPUT_ROUNDS: usize = 3;
/// The client's pause after a failed attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    keel_testkit::wait_for(what, WAIT, Duration::from_millis(20), f)
}

/// The command line.
#[derive(clap::Parser)]
#[command(
    name = "redis_bench",
    about = "Redis failover: Keel managing Redis (kill -9 of the primary node, of its redis-server) against Redis Sentinel tuned to 1 s"
)]
struct Args {
    /// Failovers per scenario.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    runs: usize,
    /// The client's timeout for every connect, read and write, in ms.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    timeout_ms: u64,
    /// Pause between a steady setup and the kill, in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    settle_ms: u64,
    /// Clients of the throughput line.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    clients: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 3.0, value_parser = positive_secs)]
    secs: f64,
    /// Only this system (`keel` or `sentinel`); both by default.
    #[arg(long, value_parser = ["keel", "sentinel"])]
    only: Option<String>,
}

fn at_least_one(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "expected N >= 1".to_string())
}

fn positive_secs(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .ok_or_else(|| "expected seconds, more than 0 and at most 3600, e.g. 3 or 0.5".to_string())
}

/// What to kill.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kill {
    /// The master's whole node.
    Node,
    /// The master's `redis-server` alone.
    Redis,
}

/// What a kill took down, for the run line.
pub struct Killed {
    pub who: String,
}

/// A system under test: Keel managing Redis, or Redis Sentinel.
pub trait Setup {
    fn system(&self) -> &'static str;
    /// The master name to ask the Sentinel addresses for.
    fn name(&self) -> &str;
    fn sentinels(&self) -> Vec<String>;
    /// A short name for the Redis at `addr` (`n2`, `redis3`).
    fn who(&self, addr: &str) -> String;
    /// The master's address once the setup is steady, else None.
    fn steady(&mut self) -> Option<String>;
    fn kill(&mut self, how: Kill, master: &str) -> Killed;
    /// Start again what the last kill took down (if it is not the system's to restart).
    fn restore(&mut self);
    /// The pids of the processes that decide and tell clients where the master is (Keel nodes,
    /// Sentinels), not the Redis servers: their CPU use during the throughput run is reported.
    fn control_pids(&self) -> Vec<String>;
    /// What the system's own logs say happened since `kill_ms` (Unix ms), for the run line.
    fn phases(&self, _kill_ms: u64) -> Option<String> {
        None
    }
}

/// One failover.
struct Run {
    took: Duration,
    new_master: String,
    /// Attempts that got no acknowledgement.
    misses: usize,
}

/// One scenario's runs.
struct Scenario {
    system: &'static str,
    kill: Kill,
    runs: Vec<Run>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile `q` of `v` (sorted here).
fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn failover(setup: &mut dyn Setup, how: Kill, run: usize, args: &Args) -> Run {
    let master = wait(&format!("{}: a steady setup", setup.system()), || setup.steady());
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut client = Discovering::new(setup.sentinels(), setup.name(), timeout);
    let key = format!("failover-{}-{how:?}-{run}", setup.system());
    // The client is connected to the master and writing when the kill comes.
    wait("a write acknowledged by the master before the kill", || {
        client.set(&key, "before").ok().filter(|a| a.master == master)
    });
    let (t0, kill_ms) = (Instant::now(), keel_testkit::unix_ms());
    let killed = setup.kill(how, &master);
    let mut misses: BTreeMap<Miss, usize> = BTreeMap::new();
    let mut n = 0u64;
    let ack = loop {
        assert!(
            t0.elapsed() < WAIT,
            "{}: no write acknowledged by a new master {WAIT:?} after the kill",
            setup.system()
        );
        n += 1;
        match client.set(&key, &n.to_string()) {
            Ok(ack) if ack.master != master => break ack,
            // The old master (a write that got in before the kill landed): not a failover.
            Ok(_) => {}
            Err(m) => {
                *misses.entry(m).or_default() += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    };
    let took = ack.at - t0;
    let summary: Vec<String> = misses
        .iter()
        .map(|(m, n)| {
            let what = match m {
                Miss::SentinelDown => "sentinel down".to_string(),
                Miss::NoMaster => "no master named".to_string(),
                Miss::MasterDown(a) => format!("{} down", setup.who(a)),
                Miss::Refused(a, e) => format!("{} refused ({e})", setup.who(a)),
            };
            format!("{n} {what}")
        })
        .collect();
    println!(
        "{:8} {:5} run {run:2}: killed {}; first write acknowledged by {} after {:5.0} ms; misses: {}{}",
        setup.system(),
        format!("{how:?}").to_lowercase(),
        killed.who,
        setup.who(&ack.master),
        ms(took),
        if summary.is_empty() {
            "none".into()
        } else {
            summary.join(", ")
        },
        setup.phases(kill_ms).map_or(String::new(), |p| format!("; {p}")),
    );
    setup.restore();
    Run {
        took,
        new_master: setup.who(&ack.master),
        misses: misses.values().sum(),
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far: `utime` and `stime` of
/// `/proc/<pid>/stat`, in clock ticks of 10 ms (Linux's USER_HZ is 100). Zero once it is gone.
fn proc_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, may hold spaces): utime is field 14, stime 15.
    let ticks: u64 = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(10 * ticks)
}

/// One throughput measurement.
struct Tput {
    what: String,
    rate: f64,
    failed: u64,
    /// CPU the control processes (`control_pids`) used during it, in % of one core, and how many.
    control: Option<(f64, usize)>,
}

/// `clients` closed-loop writers for `dur` against `addr`, while the CPU of `control` is measured.
fn throughput(what: &str, addr: &str, clients: usize, dur: Duration, control: &[String]) -> Tput {
    let cpu = || control.iter().map(|p| proc_cpu(p)).sum::<Duration>();
    let cpu0 = cpu();
    let start = Instant::now();
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let mut conn = Conn::open(addr, Duration::from_secs(1)).expect("connect for the throughput run");
                    let value = "0123456789abcdef";
                    while start.elapsed() < dur {
                        let key = format!("tput:{c}:{ok}");
                        match conn.call(&["SET", &key, value]) {
                            Ok(Reply::Status(r)) if r == "OK" => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer")).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let used = cpu().saturating_sub(cpu0);
    Tput {
        what: what.to_string(),
        rate: results.iter().map(|r| r.0).sum::<u64>() as f64 / secs,
        failed: results.iter().map(|r| r.1).sum(),
        control: (!control.is_empty()).then(|| (used.as_secs_f64() * 100.0 / secs, control.len())),
    }
}

/// The runs of both kill modes on `setup`.
fn scenarios(setup: &mut dyn Setup, args: &Args, out: &mut Vec<Scenario>) {
    for how in [Kill::Node, Kill::Redis] {
        let runs = (1..=args.runs).map(|run| failover(setup, how, run, args)).collect();
        out.push(Scenario {
            system: setup.system(),
            kill: how,
            runs,
        });
    }
}

/// A throughput target: what it is, the master's address (checked against what discovery names),
/// and the control processes to measure.
fn target(setup: &mut dyn Setup) -> (&'static str, String, Vec<String>) {
    let master = wait("a steady setup for the throughput run", || setup.steady());
    let discovered = client::ask_master(&setup.sentinels()[0], setup.name(), CALL).expect("discovery names a master");
    assert_eq!(discovered, master);
    let what = match setup.system() {
        "keel" => "master named by Keel's discovery (Keel-managed redis-server, 2 replicas)",
        _ => "master named by Sentinel (plain redis-server, 2 replicas)",
    };
    (what, master, setup.control_pids())
}

fn main() {
    let args: Args = keel_testkit::parse_args();
    if keel_testkit::which("redis-server").is_none() {
        eprintln!("error: redis-server is not installed (apt-get install redis-server)");
        std::process::exit(1);
    }
    let want = |s: &str| args.only.as_deref().is_none_or(|o| o == s);
    let mut out = Vec::new();
    let load_before = keel_testkit::load_average();
    // Both setups stay up until the throughput rounds at the end (the idle Keel cluster during the
    // Sentinel runs: a few % of one core).
    let mut k = want("keel").then(|| {
        keel_testkit::keel_bin();
        keel::Keel::start()
    });
    if let Some(k) = k.as_mut() {
        scenarios(k, &args, &mut out);
    }
    let mut s = want("sentinel").then(sentinel::Sentinels::start);
    if let Some(s) = s.as_mut() {
        scenarios(s, &args, &mut out);
    }
    let mut procs = keel_testkit::Procs::new("redis-bench-standalone-", None);
    let mut targets = Vec::new();
    if let Some(k) = k.as_mut() {
        targets.push(target(k));
    }
    if let Some(s) = s.as_mut() {
        targets.push(target(s));
    }
    targets.push((
        "standalone plain redis-server (no replicas)",
        sentinel::standalone(&mut procs),
        Vec::new(),
    ));
    // Rounds in turn, so that a change of the machine's load falls on every target alike.
    let dur = Duration::from_secs_f64(args.secs);
    let rounds: Vec<Vec<Tput>> = (0..TPUT_ROUNDS)
        .map(|_| {
            targets
                .iter()
                .map(|(what, addr, pids)| throughput(what, addr, args.clients, dur, pids))
                .collect()
        })
        .collect();
    drop((k, s, procs));
    report(&args, &out, &rounds, &load_before);
}

fn goal(s: &Scenario, median: Duration, max: Duration) -> String {
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    match (s.system, s.kill) {
        ("keel", Kill::Node) => format!(
            "median <= 1000 ms {}, max <= 2000 ms {}",
            ok(ms(median) <= 1000.0),
            ok(ms(max) <= 2000.0)
        ),
        ("keel", Kill::Redis) => format!("median <= 1500 ms {}", ok(ms(median) <= 1500.0)),
        _ => "-".into(),
    }
}

fn report(args: &Args, out: &[Scenario], rounds: &[Vec<Tput>], load_before: &str) {
    println!();
    println!(
        "redis_bench: {} runs per scenario, client timeout {} ms, settle {} ms; {} cores, load average before {}, after {}",
        args.runs,
        args.timeout_ms,
        args.settle_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        keel_testkit::load_average()
    );
    if out.iter().any(|s| s.system == "sentinel") {
        println!("{}", sentinel::about());
    }
    println!(
        "failover: from kill -9 to the first write acknowledged by the new master, found through the Sentinel addresses"
    );
    println!();
    println!(
        "| {:8} | {:33} | {:>4} | {:>9} | {:>6} | {:>6} | {:17} | goal |",
        "system", "kill -9 of", "runs", "median ms", "p90 ms", "max ms", "new masters"
    );
    println!("|{}|", ["---"; 8].join("|"));
    for s in out {
        let mut took: Vec<Duration> = s.runs.iter().map(|r| r.took).collect();
        let (median, p90, max) = (pct(&mut took, 0.5), pct(&mut took, 0.9), pct(&mut took, 1.0));
        let mut masters: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &s.runs {
            *masters.entry(r.new_master.as_str()).or_default() += 1;
        }
        let masters: Vec<String> = masters.iter().map(|(m, n)| format!("{m}×{n}")).collect();
        let what = match (s.system, s.kill) {
            ("keel", Kill::Node) => "the primary node (keel + redis)",
            ("keel", Kill::Redis) => "the primary's redis-server",
            (_, Kill::Node) => "the master's redis + its sentinel",
            (_, Kill::Redis) => "the master's redis-server",
        };
        println!(
            "| {:8} | {:33} | {:>4} | {:>9.0} | {:>6.0} | {:>6.0} | {:17} | {} |",
            s.system,
            what,
            s.runs.len(),
            ms(median),
            ms(p90),
            ms(max),
            masters.join(" "),
            goal(s, median, max)
        );
    }
    let misses: usize = out.iter().flat_map(|s| &s.runs).map(|r| r.misses).sum();
    println!();
    println!("client attempts that got no acknowledgement during the failovers: {misses}");
    println!();
    println!(
        "write throughput, {} clients, one connection each, no pipelining, SET of 16-byte values, {} s per target, \
         {} rounds in turn (median round; every round):",
        args.clients,
        args.secs,
        rounds.len()
    );
    for (i, t) in rounds[0].iter().enumerate() {
        let mine: Vec<&Tput> = rounds.iter().map(|r| &r[i]).collect();
        let mut rates: Vec<f64> = mine.iter().map(|t| t.rate).collect();
        let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        rates.sort_by(f64::total_cmp);
        let mut notes = vec![each.join(" / ")];
        let failed: u64 = mine.iter().map(|t| t.failed).sum();
        if failed > 0 {
            notes.push(format!("{failed} failed"));
        }
        if let Some((_, n)) = t.control {
            let mut pcts: Vec<f64> = mine.iter().filter_map(|t| t.control.map(|c| c.0)).collect();
            pcts.sort_by(f64::total_cmp);
            let who = if t.what.contains("Keel") {
                "keel processes"
            } else {
                "Sentinels"
            };
            notes.push(format!(
                "the {n} {who} used {:.0} % of one core meanwhile",
                pcts[pcts.len() / 2]
            ));
        }
        println!(
            "  {:>9.0} writes/s  {} ({})",
            rates[rates.len() / 2],
            t.what,
            notes.join("; ")
        );
    }
}
