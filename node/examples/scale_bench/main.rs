//! Scale benchmark: how a three-node Keel cluster's costs grow with the data it holds.
//!
//! For each size (default 10k, 100k and 1M values of 1 KiB; `--sizes` takes any list, e.g.
//! `--sizes 10000,100000,1000000,5000000` where the disk allows) it starts a fresh local
//! three-node cluster of `keel serve` processes (data dirs in `TMPDIR`, default settings plus
//! `--cache-mb` if given) and measures:
//! - **load rate**: the values written to the primary by `--clients` closed-loop clients (new keys,
//!   async mode), until every replica has them all;
//! - **disk bytes per value**: the blocks allocated to each node's data dir after the load
//!   (every file: redb stores, journals, Raft), divided by the values; the mean of the nodes;
//! - **RSS per node**: the peak of all three nodes' resident memory (`/proc/<pid>/status`, every
//!   100 ms during the load and every phase after it), and the steady figure, the largest node's
//!   after the load and a 2 s settle;
//! - **time to ready** after a clean stop (SIGTERM, every node exits 0) and after a kill -9 of all
//!   three: from starting the processes again until every node answers `/readyz` 200 and the
//!   primary answers a read of the first key written. The largest RSS right then is printed too;
//! - **snapshot resync**: the primary's log retention is set to 1,000 entries, the log trimmed, a
//!   replica killed and its data dir removed, and it is started again: the time from the start
//!   until its position equals the primary's, and the rate in MB/s of values (size x value bytes)
//!   over that time. It checks in the replica's log that it did resync by snapshot.
//!
//! It prints one table row per size, and writes an SVG with one plot per figure against size
//! (`--svg`, default `scale_bench.svg` in the current dir). Every process it starts is killed
//! (panics included) and every temp dir removed.
//!
//!   cargo build --release --bins --examples && target/release/examples/scale_bench
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel), or
//! `KEEL_BIN`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_testkit::{blocking_client, get_json, load_average, node_addrs, serve_command};

mod plot;
#[path = "../kv_bench/raw_http.rs"]
mod raw_http;

type Http = reqwest::blocking::Client;

/// Per request of the load (connecting included), and the raw client's own bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a cluster to come up, catch up or resync.
const WAIT: Duration = Duration::from_secs(600);

/// The command line.
#[derive(clap::Parser)]
#[command(
    name = "scale_bench",
    about = "How a three-node Keel cluster's load rate, disk use, memory, restart and resync times grow with its data"
)]
struct Args {
    /// Data sizes, in values, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000], value_parser = clap::value_parser!(u64).range(1..))]
    sizes: Vec<u64>,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    value_bytes: u64,
    /// Concurrent writers during the load.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// Passed to every node as `--cache-mb` (default: the nodes' own default).
    #[arg(long, value_name = "MIB")]
    cache_mb: Option<u64>,
    /// Where to write the SVG plots.
    #[arg(long, default_value = "scale_bench.svg")]
    svg: PathBuf,
}

/// The figures of one size.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub values: u64,
    pub load_per_s: f64,
    pub disk_bytes_per_value: f64,
    pub rss_peak_mb: f64,
    pub rss_steady_mb: f64,
    pub ready_clean_s: f64,
    pub rss_after_clean_mb: f64,
    pub ready_kill_s: f64,
    pub rss_after_kill_mb: f64,
    pub resync_s: f64,
    pub resync_mb_s: f64,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let http = blocking_client(Duration::from_secs(5));
    let started = Instant::now();
    println!(
        "scale_bench: sizes {:?}, {} B values, {} clients, cache {}, {} cpus, load {}",
        args.sizes,
        args.value_bytes,
        args.clients,
        args.cache_mb.map_or("default".to_string(), |m| format!("{m} MiB")),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average()
    );
    let mut rows = Vec::new();
    for &values in &args.sizes {
        let row = run_size(&http, &args, values);
        println!("  {values} values done: {row:?}");
        rows.push(row);
    }
    print_table(&rows);
    let svg = plot::render(&rows, args.value_bytes);
    match std::fs::write(&args.svg, svg) {
        Ok(()) => println!("plots: {}", args.svg.display()),
        Err(e) => eprintln!("cannot write {}: {e}", args.svg.display()),
    }
    println!(
        "total {:.0} s, load after {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "values",
        "load w/s",
        "disk B/v",
        "rss peak",
        "rss stdy",
        "rdy clean",
        "rss",
        "rdy kill9",
        "rss",
        "resync s",
        "resync MB/s"
    );
    for r in rows {
        println!(
            "{:>9} {:>9.0} {:>8.0} {:>7.0}MB {:>7.0}MB {:>8.2}s {:>7.0}MB {:>8.2}s {:>7.0}MB {:>9.2} {:>9.1}",
            r.values,
            r.load_per_s,
            r.disk_bytes_per_value,
            r.rss_peak_mb,
            r.rss_steady_mb,
            r.ready_clean_s,
            r.rss_after_clean_mb,
            r.ready_kill_s,
            r.rss_after_kill_mb,
            r.resync_s,
            r.resync_mb_s
        );
    }
    println!("(rss: the largest of the three nodes; rss after a restart: at the moment the cluster was ready)");
}

/// One node process and how to start it again.
struct Node {
    id: u64,
    api: String,
    data: PathBuf,
    command: Box<dyn Fn() -> Command>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = (self.command)()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn keel");
        self.child = Some(child);
    }

    /// SIGTERM; true if it exited 0 within 30 s (else it is killed).
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn rss_mb(&self) -> f64 {
        let Some(child) = &self.child else { return 0.0 };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// A three-node cluster in its own temp dir; dropping it kills the nodes and removes the dir.
struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

impl Cluster {
    fn start(cache_mb: Option<u64>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("keel-scale-bench")
            .tempdir()
            .expect("temp dir");
        let (addrs, peers) = node_addrs(3, "127.0.0.1");
        let nodes = addrs
            .into_iter()
            .enumerate()
            .map(|(i, (api, peer))| {
                let id = i as u64 + 1;
                let data = dir.path().join(format!("n{id}"));
                let (a, d, p) = (api.clone(), data.clone(), peers.clone());
                let command = Box::new(move || {
                    let mut c = serve_command(id, &a, &peer, &d, &p);
                    if let Some(mb) = cache_mb {
                        c.args(["--cache-mb", &mb.to_string()]);
                    }
                    c
                });
                Node {
                    id,
                    api,
                    data,
                    command,
                    log: dir.path().join(format!("n{id}.log")),
                    child: None,
                }
            })
            .collect();
        let mut c = Cluster { nodes, _dir: dir };
        for n in &mut c.nodes {
            n.start();
        }
        c
    }

    fn max_rss_mb(&self) -> f64 {
        self.nodes.iter().map(Node::rss_mb).fold(0.0, f64::max)
    }

    /// The API address of the node answering 200 on `/primary`, waiting for one.
    fn primary(&self, http: &Http) -> String {
        wait("a primary", || {
            self.nodes
                .iter()
                .find(|n| {
                    http.get(format!("http://{}/primary", n.api))
                        .timeout(Duration::from_millis(500))
                        .send()
                        .is_ok_and(|r| r.status() == 200)
                })
                .map(|n| n.api.clone())
        })
    }

    /// Every node answers `/readyz` 200 and the primary serves `key`.
    fn ready(&self, http: &Http, key: &str) -> bool {
        let ok = |url: String| {
            http.get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .is_ok_and(|r| r.status() == 200)
        };
        self.nodes.iter().all(|n| ok(format!("http://{}/readyz", n.api)))
            && self
                .nodes
                .iter()
                .any(|n| ok(format!("http://{}/primary", n.api)) && ok(format!("http://{}/v1/kv/{key}", n.api)))
    }
}

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    keel_testkit::wait_for(what, WAIT, Duration::from_millis(10), f)
}

fn position(http: &Http, api: &str) -> Option<String> {
    get_json(http, &format!("http://{api}/v1/status"))
        .and_then(|v| v["replication"]["position"].as_str().map(String::from))
}

fn key(i: u64) -> String {
    format!("s{i:09}")
}

fn run_size(http: &Http, args: &Args, values: u64) -> Row {
    let mut c = Cluster::start(args.cache_mb);
    let primary = c.primary(http);
    let mut row = Row {
        values,
        ..Row::default()
    };
    let peak = Arc::new(AtomicU64::new(0));
    // What the readiness check reads after each restart.
    let probe = "scale-bench-probe";
    let r = http
        .put(format!("http://{primary}/v1/kv/{probe}"))
        .body("1")
        .send()
        .expect("PUT the probe key");
    assert!(r.status().is_success(), "PUT the probe key: {}", r.status());

    // Load, sampling RSS meanwhile.
    let t0 = Instant::now();
    let pids: Vec<u32> = c.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect();
    let sampler = rss_sampler(pids, peak.clone());
    load(&primary, values, args.value_bytes, args.clients);
    let head = position(http, &primary).expect("primary position");
    wait("replicas to catch up after the load", || {
        c.nodes
            .iter()
            .all(|n| position(http, &n.api).as_ref() == Some(&head))
            .then_some(())
    });
    row.load_per_s = values as f64 / t0.elapsed().as_secs_f64();
    row.disk_bytes_per_value = c
        .nodes
        .iter()
        .map(|n| keel_testkit::dir_disk_bytes(&n.data))
        .sum::<u64>() as f64
        / 3.0
        / values as f64;
    std::thread::sleep(Duration::from_secs(2));
    row.rss_steady_mb = c.max_rss_mb();
    sampler.stop();

    // Clean stop, then kill -9, each followed by a start of all three.
    let first = probe;
    for n in &mut c.nodes {
        assert!(n.stop(), "node {} did not exit 0 on SIGTERM", n.id);
    }
    (row.ready_clean_s, row.rss_after_clean_mb) = restart_until_ready(http, &mut c, first);
    let pids: Vec<u32> = c.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect();
    let sampler = rss_sampler(pids, peak.clone());
    std::thread::sleep(Duration::from_millis(500));
    sampler.stop();
    for n in &mut c.nodes {
        n.kill();
    }
    (row.ready_kill_s, row.rss_after_kill_mb) = restart_until_ready(http, &mut c, first);

    // Snapshot resync of an emptied replica.
    let primary = c.primary(http);
    let r = http
        .patch(format!("http://{primary}/v1/config"))
        .json(&serde_json::json!({"log_retention_entries": 1000}))
        .send()
        .expect("PATCH /v1/config");
    assert!(r.status().is_success(), "set log retention: {}", r.status());
    // The retention worker trims every 2 s.
    std::thread::sleep(Duration::from_secs(5));
    let replica = c.nodes.iter().position(|n| n.api != primary).expect("a replica");
    c.nodes[replica].kill();
    std::fs::remove_dir_all(&c.nodes[replica].data).expect("remove the replica's data dir");
    let head = position(http, &primary).expect("primary position");
    let log_before = std::fs::metadata(&c.nodes[replica].log).map_or(0, |m| m.len());
    let t0 = Instant::now();
    c.nodes[replica].start();
    let pids = vec![c.nodes[replica].child.as_ref().map_or(0, Child::id)];
    let sampler = rss_sampler(pids, peak.clone());
    wait("the emptied replica to resync", || {
        (position(http, &c.nodes[replica].api).as_ref() == Some(&head)).then_some(())
    });
    row.resync_s = t0.elapsed().as_secs_f64();
    sampler.stop();
    row.resync_mb_s = (values * args.value_bytes) as f64 / 1e6 / row.resync_s;
    let log = std::fs::read_to_string(&c.nodes[replica].log).unwrap_or_default();
    let installed = log
        .get(log_before as usize..)
        .and_then(|l| l.lines().find(|l| l.contains("snapshot installed")).map(String::from));
    match installed {
        Some(line) => println!(
            "  resync at {values} values: the replica's own install took {} ms",
            keel_testkit::strip_ansi(&line)
                .split_whitespace()
                .find_map(|f| f.strip_prefix("elapsed_ms="))
                .unwrap_or("?")
        ),
        None => println!("  note: at {values} values the replica caught up from the log, not by snapshot"),
    }
    row.rss_peak_mb = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    row
}

/// Start every node again and wait until the cluster is ready: (seconds, largest RSS then).
fn restart_until_ready(http: &Http, c: &mut Cluster, first: &str) -> (f64, f64) {
    let t0 = Instant::now();
    for n in &mut c.nodes {
        n.start();
    }
    wait("the cluster to be ready after a restart", || {
        c.ready(http, first).then_some(())
    });
    (t0.elapsed().as_secs_f64(), c.max_rss_mb())
}

/// Samples the processes' RSS (KiB) every 100 ms into `peak` until stopped.
struct Sampler {
    stop: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn stop(mut self) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rss_sampler(pids: Vec<u32>, peak: Arc<AtomicU64>) -> Sampler {
    let stop = Arc::new(AtomicUsize::new(0));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while flag.load(Ordering::Relaxed) == 0 {
            for pid in &pids {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Sampler {
        stop,
        thread: Some(thread),
    }
}

/// Write `values` new keys of `value_bytes` to `primary` with `clients` closed-loop writers on one
/// single-threaded runtime; prints progress every 10 s. Panics if more than 1 % fail.
fn load(primary: &str, values: u64, value_bytes: u64, clients: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = Arc::new(raw_http::Client::new(primary));
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let value: Arc<Vec<u8>> = Arc::new((0..value_bytes).map(|i| b'a' + (i % 26) as u8).collect());
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, next, failed, value) = (client.clone(), next.clone(), failed.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= values {
                        return;
                    }
                    let path = format!("/v1/kv/{}", key(i));
                    match client.request("PUT", &path, None, &value).await {
                        Ok((s, _)) if (200..300).contains(&s) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let done = next.load(Ordering::Relaxed).min(values);
                println!(
                    "  loading: {done}/{values} in {:.0} s ({} failed)",
                    t0.elapsed().as_secs_f64(),
                    failed.load(Ordering::Relaxed)
                );
            }
        };
        tokio::select! {
            _ = futures_join(tasks) => {}
            _ = progress => {}
        }
    });
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed * 100 <= values, "{failed} of {values} writes failed");
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
