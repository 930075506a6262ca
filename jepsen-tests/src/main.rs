//! `keel-jepsen`: run a chaos test against real Keel processes, or check a recorded history.
//!
//! ```text
//! keel-jepsen run [--nodes 3] [--time 60] [--clients 5] [--keys 5] [--workload register|append|redis|redis-register|redis-append]
//!                 [--baseline sentinel (Redis workloads: then Redis's own Sentinel on the same schedule, side by side)]
//!                 [--nemesis kill,kill-primary,pause,partition,netem,skew,wipe|all] [--netns]
//!                 [--fault-every-ms 4000] [--fault-for-ms 2000] [--mode async|sync] [--seed N]
//!                 [--min-acks N (sync; default nodes/2)] [--skew-rate R] [--quiet-ms 3000] [--keel target/release/keel] [--out report/<run>]
//!                 [--rate OPS_PER_SEC (all clients together; default: closed loop, as fast as answered)]
//! keel-jepsen check history.jsonl
//! ```
//! Exit code: 0 every checker passed, 1 a checker failed, 2 bad usage or the run could not start.

use std::path::PathBuf;
use std::time::Duration;

use keel_jepsen::runner::redis::{run_redis, side_by_side};
use keel_jepsen::runner::{run_with, RunConfig, RunOptions, Workload};

fn usage() -> ! {
    eprintln!(
        "usage: keel-jepsen run [--nodes N] [--time SECS] [--clients N] [--keys N] \
         [--workload register|append|redis|redis-register|redis-append] [--baseline sentinel] \
         [--nemesis kill,kill-primary,pause,partition,netem,skew,wipe|all (Redis: kill,kill-primary,pause-keel,pause-redis,pause-both,partition (--netns)|all)] [--netns] [--fault-every-ms MS] \
         [--fault-for-ms MS] [--mode async|sync] [--min-acks N] [--seed N] [--skew-rate R] [--quiet-ms MS] [--keel PATH] \
         [--rate OPS_PER_SEC] [--out DIR]\n       \
         keel-jepsen check HISTORY.jsonl"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("check") => check(args),
        // Hidden helper for the faketime test: how much time this process's monotonic clock
        // (std's `Instant`, what tokio and Keel's lease use) sees across a sleep of N ms.
        Some("clock-probe") => {
            let ms: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
            let t = std::time::Instant::now();
            std::thread::sleep(Duration::from_millis(ms));
            println!("{}", t.elapsed().as_millis());
            std::process::exit(0);
        }
        Some("run") => run(args),
        _ => usage(),
    }
}

/// The value, or the error printed and exit code 2.
fn or_exit<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    })
}

/// `keel-jepsen check HISTORY.jsonl`: the report as JSON; exit 0 only if valid.
fn check(mut args: impl Iterator<Item = String>) -> ! {
    let Some(path) = args.next() else { usage() };
    let h = or_exit(keel_jepsen::History::load(&path));
    let report = or_exit(keel_jepsen::check(&h));
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    std::process::exit(if report.verdict == keel_jepsen::Verdict::Valid {
        0
    } else {
        1
    });
}

/// `keel-jepsen run ...`: one chaos run, its verdict and where the report is.
fn run(args: impl Iterator<Item = String>) -> ! {
    let (cfg, opts) = parse_run(args);
    if opts.workload.is_redis() {
        run_redis_cmd(&cfg, &opts);
    }
    println!("{}", banner(&cfg, &opts, ""));
    let r = or_exit(run_with(&cfg, &opts));
    println!("{}", r.summary());
    let kinds: std::collections::BTreeMap<&str, usize> = r.faults.iter().fold(Default::default(), |mut m, f| {
        *m.entry(f["kind"].as_str().unwrap_or("?")).or_default() += 1;
        m
    });
    println!("faults: {kinds:?}");
    println!("report: {}", cfg.out.join("index.html").display());
    std::process::exit(if r.ok() { 0 } else { 1 });
}

/// The line a run starts with: seed, length, where the nodes run, workload, nemesis, mode (and
/// `then`, what follows the run), and the report directory.
fn banner(cfg: &RunConfig, opts: &RunOptions, then: &str) -> String {
    let place = if opts.netns {
        "in network namespaces"
    } else {
        "on loopback"
    };
    format!(
        "keel-jepsen: seed {} ({} s, {} nodes {place}, {:?} workload, nemesis {:?}, mode {}{then}), report in {}",
        cfg.seed,
        cfg.time.as_secs(),
        cfg.nodes,
        opts.workload,
        cfg.nemesis,
        cfg.mode,
        cfg.out.display()
    )
}

/// A Redis workload: Keel managing Redis, and with `--baseline sentinel` Redis's own Sentinel on
/// the same schedule after it (reports in `<out>/keel` and `<out>/sentinel`), then the figures side
/// by side.
fn run_redis_cmd(cfg: &RunConfig, opts: &RunOptions) -> ! {
    let then = if opts.sentinel_baseline {
        ", then the Sentinel baseline"
    } else {
        ""
    };
    println!("{}", banner(cfg, opts, then));
    let keel_cfg = RunConfig {
        out: if opts.sentinel_baseline {
            cfg.out.join("keel")
        } else {
            cfg.out.clone()
        },
        ..cfg.clone()
    };
    let keel = or_exit(run_redis(
        &keel_cfg,
        &RunOptions {
            sentinel_baseline: false,
            ..opts.clone()
        },
    ));
    println!("{}", keel.summary());
    let mut ok = keel.ok();
    if opts.sentinel_baseline {
        let base_cfg = RunConfig {
            out: cfg.out.join("sentinel"),
            ..cfg.clone()
        };
        let base = or_exit(run_redis(&base_cfg, opts));
        println!("{}", base.summary());
        println!("\n{}", side_by_side(&[&keel, &base]));
        // The baseline is measured, not judged.
        ok = keel.ok();
    }
    println!("report: {}", cfg.out.display());
    std::process::exit(if ok { 0 } else { 1 });
}

/// The flags of `run` over the defaults; bad usage exits 2.
fn parse_run(mut args: impl Iterator<Item = String>) -> (RunConfig, RunOptions) {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let mut cfg = RunConfig {
        keel: exe_dir.join("keel"),
        out: PathBuf::new(),
        nodes: 3,
        time: Duration::from_secs(60),
        clients: 5,
        keys: 5,
        nemesis: vec!["kill".into(), "pause".into(), "kill-primary".into()],
        fault_every: Duration::from_millis(4000),
        fault_for: Duration::from_millis(2000),
        mode: "sync".into(),
        seed,
        quiet: Duration::from_secs(3),
    };
    let mut opts = RunOptions {
        progress: true,
        ..RunOptions::default()
    };
    let num = |v: Option<String>, name: &str| -> u64 {
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("error: {name} needs a number");
            usage()
        })
    };
    // A rate that `ok` accepts, or the error and usage.
    let rate = |v: Option<String>, ok: fn(f64) -> bool, error: &str| -> f64 {
        v.and_then(|v| v.parse::<f64>().ok())
            .filter(|r| ok(*r))
            .unwrap_or_else(|| {
                eprintln!("error: {error}");
                usage()
            })
    };
    let mut nemesis_given = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nodes" => cfg.nodes = num(args.next(), "--nodes"),
            "--time" => cfg.time = Duration::from_secs(num(args.next(), "--time")),
            "--clients" => cfg.clients = num(args.next(), "--clients"),
            "--keys" => cfg.keys = num(args.next(), "--keys"),
            "--fault-every-ms" => cfg.fault_every = Duration::from_millis(num(args.next(), "--fault-every-ms")),
            "--fault-for-ms" => cfg.fault_for = Duration::from_millis(num(args.next(), "--fault-for-ms")),
            "--seed" => cfg.seed = num(args.next(), "--seed"),
            "--mode" => cfg.mode = args.next().unwrap_or_else(|| usage()),
            "--quiet-ms" => cfg.quiet = Duration::from_millis(num(args.next(), "--quiet-ms")),
            "--netns" => opts.netns = true,
            "--baseline" => match args.next().as_deref() {
                Some("sentinel") => opts.sentinel_baseline = true,
                _ => {
                    eprintln!("error: --baseline takes sentinel");
                    usage()
                }
            },
            "--min-acks" => opts.min_acks = Some(num(args.next(), "--min-acks")),
            "--rate" => {
                opts.rate = Some(rate(
                    args.next(),
                    |r| r.is_finite() && r > 0.0,
                    "--rate needs operations per second of all clients together, such as 200",
                ))
            }
            "--workload" => {
                opts.workload = match args.next().as_deref() {
                    Some("register") => Workload::Register,
                    Some("append") => Workload::Append,
                    Some("redis") => Workload::Redis,
                    Some("redis-register") => Workload::RedisRegister,
                    Some("redis-append") => Workload::RedisAppend,
                    _ => {
                        eprintln!("error: --workload is register, append, redis, redis-register or redis-append");
                        usage()
                    }
                }
            }
            "--skew-rate" => {
                opts.skew_rate = Some(rate(
                    args.next(),
                    |r| r > 0.0 && r < 100.0,
                    "--skew-rate needs a clock rate such as 0.9",
                ))
            }
            "--keel" => cfg.keel = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--out" => cfg.out = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--nemesis" => {
                nemesis_given = true;
                cfg.nemesis = args
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            _ => usage(),
        }
    }
    if cfg.nodes < 3 || !matches!(cfg.mode.as_str(), "async" | "sync") {
        eprintln!("error: --nodes must be at least 3 and --mode async or sync");
        usage();
    }
    if opts.sentinel_baseline && !opts.workload.is_redis() {
        eprintln!(
            "error: --baseline sentinel needs a Redis workload (--workload redis, redis-register or redis-append)"
        );
        usage();
    }
    if opts.sentinel_baseline && opts.netns {
        eprintln!("error: --baseline sentinel runs on loopback: it cannot be combined with --netns");
        usage();
    }
    if opts.workload.is_redis() && !nemesis_given {
        // Every Redis kind this mode supports (partitions only with --netns).
        cfg.nemesis = vec!["all".to_string()];
    }
    if cfg.out.as_os_str().is_empty() {
        cfg.out = PathBuf::from(format!("report/run-{}", cfg.seed));
    }
    (cfg, opts)
}
