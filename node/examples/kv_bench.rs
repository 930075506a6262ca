//! Datastore write benchmark: a local three-node Keel cluster, with the same load generator
//! optionally pointed at a local three-member etcd.
//!
//! In one run it measures:
//! - the disk's raw fsync rate: 4 KiB appends, each followed by `fdatasync`, for 2 s in the
//!   directory the data dirs live in (the physical floor for a durable acknowledgement);
//! - throughput and p50/p99 write latency for 1, 16 and 64 concurrent clients, in async and sync
//!   mode (`PATCH /v1/config {"replication_mode": ..., "min_acks": 1}` on the primary), with
//!   128-byte and 16-KiB values: one short run per cell (`--secs`, default 5). Each client
//!   writes new keys to the primary in a closed loop (next write as soon as the previous one is
//!   answered), after one warm-up write before the clock starts. Writes per fsync come from the
//!   primary's `/metrics` (writes and commits of its group commit). After each cell it waits
//!   until both replicas have every write (column `catch-up s`: the replicas' backlog);
//! - replication lag p99 at half load (row `async½`): in async mode, a rate-limited generator
//!   (open loop: a fixed schedule spread over 64 clients, a late write sent at once) writes at
//!   half the best async throughput measured above, with that cell's value size. About 200
//!   writes a second are sampled: after the primary's 2xx the writing client reads the key from
//!   a replica (`?consistency=local`, the two replicas in turn) at once and then every 2 ms
//!   (tokio's timer: 2-3 ms) until it is there; the lag is the time from the 2xx to the answer
//!   that has the key (an upper bound, by at most one poll interval plus one read).
//!   A key not there within 5 s counts as 5 s. The replicas' own `replication.lag_ms` (from
//!   `/v1/status`, every 50 ms) is printed next to it;
//! - the no-disk control (rows `tmpfs`): async, one client and 64, both value sizes, with the
//!   data dirs on tmpfs (`/dev/shm`, skipped when no tmpfs is mounted there), where writes and
//!   fsyncs reach no disk. Whatever the disk adds, many clients cannot write faster than they do
//!   here, so "tmpfs 64 clients / disk one client" is the highest group-commit ratio any
//!   implementation could reach on this machine at this CPU cost per write; the goal check prints
//!   it next to the measured ratio, with the share of its no-disk rate each disk cell reaches.
//!   (`--only` cells take their data dirs from `TMPDIR`: `TMPDIR=/dev/shm` runs them on tmpfs.)
//! - with `--compare etcd`: the same load generator against a three-member etcd with its
//!   default timings (the `etcd` binary from PATH, on Debian the `etcd-server` package), through
//!   its JSON gateway (`POST /v3/kv/put`, base64 key and value) on the leader, with the same
//!   client counts and value sizes. etcd acknowledges a put after a quorum of members has it in
//!   its fsynced WAL: one mode only, shown in the table as `quorum`; writes per fsync from the
//!   leader's WAL fsync count.
//!
//! The load generator is cheap, so that on a small machine it takes little CPU from the servers
//! it measures (Keel and etcd alike): every client is a task on one single-threaded tokio
//! runtime, and the measured writes of a cell share one minimal HTTP/1.1 client (`raw_http`
//! below: keep-alive connections, one per write in flight, a 10 s timeout per request); the
//! latency of a write is measured per request, from sending it to having read its whole answer.
//! The lag probe's reads use one async reqwest client. Setup and
//! management calls (status, metrics, config) use a blocking client from the main thread,
//! outside the runtime. Column `gen cpu %` is the CPU time (user + system, all threads, from
//! `/proc/self/stat` at 10 ms resolution) this benchmark process used during the cell's run, in
//! percent of one core: the generator's own cost. (Before, each client was an OS thread with its
//! own blocking client, two threads per client: 128 B x 64 async took 76 % of a core and
//! reached 9,976 writes/s; as tasks, 32 % and 14,134 writes/s, same cluster, back to back.)
//! Column `srv µs/w` is the CPU time (user + system, all threads, from `/proc/<pid>/stat` at
//! 10 ms resolution) the three server processes (Keel nodes or etcd members) used during the
//! run, per acknowledged write: what a write costs the cluster, and on a machine whose cores the
//! servers share, what bounds the many-client cells. `--only` lines split it into the primary's
//! and each replica's.
//!
//! It prints one table row per cell, then the goal checks, then the failed writes by kind, any
//! change of primary (or etcd leader) during a run, and the WARN/ERROR lines the Keel nodes
//! logged. Every process it starts is killed (panics included) and every temp dir removed;
//! with `KEEL_BENCH_LOG_DIR=DIR` the processes' logs are copied there first.
//!
//!   cargo build --release --bins --examples && target/release/examples/kv_bench --secs 5 --compare etcd
//!
//! Every cell runs on a fresh cluster (empty data dirs; etcd too), so no cell inherits the data
//! and dirty pages of the cells before it, and each async cell is followed at once by the sync
//! cell of the same size and clients. `--rounds N` runs every cell N times and pools the
//! rounds: a row's throughput is all its writes over all its run time, its percentiles are over
//! all its latencies, and the throughput of each round is printed below the table. On a small
//! shared VM one 5 s cell can differ from the next by 10-20 %.
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel).
//! `--only MODE:SIZE:CLIENTS` (repeatable, e.g. `--only async:16384:64`) runs just those Keel
//! cells and prints one line each (no etcd, no half-load run, no goal checks), e.g. to profile
//! one cell.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_testkit::etcd::{self, EtcdMember};
use keel_testkit::{b64, blocking_client, get_json, load_average, node_addrs, serve_command, Procs};

/// The blocking client of the setup and management calls (status, metrics, config), made from
/// the main thread, never from inside the load generator's runtime.
type Http = reqwest::blocking::Client;

/// Deadline of every wait (a primary, a mode change, an etcd leader).
const WAIT: Duration = Duration::from_secs(30);
/// Timeout of every benchmark request (a sync-mode write gives up after 2 s on its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENTS: [usize; 3] = [1, 16, 64];
const SIZES: [usize; 2] = [128, 16 * 1024];
/// Replication lag sampling: how many writes a second, how often a replica is polled, and when
/// a key that never shows up is given up on.
const LAG_SAMPLES_PER_SEC: f64 = 200.0;
const LAG_POLL: Duration = Duration::from_millis(2);
const LAG_GIVE_UP: Duration = Duration::from_secs(5);
/// How long the replicas get to catch up after a run.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The load generator: one tokio runtime and one async HTTP client (one connection pool) that
/// every simulated client of every cell shares, Keel and etcd alike.
struct Gen {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Gen {
    fn new() -> Gen {
        keel_raft::network::install_crypto_provider();
        // One thread: measured against a multi-thread runtime with one worker (with
        // `--only async:128:64 --only async:16384:64 --secs 3`, twice each), this used 32-33 %
        // of a core at 128 B x 64 clients and 13 % at 16 KiB, the worker runtime 36-38 % and 13-14 %.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Built inside the runtime: its connections' background tasks are spawned there.
        let http = rt.block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .pool_max_idle_per_host(2 * CLIENTS[CLIENTS.len() - 1])
                .build()
                .expect("async http client")
        });
        Gen { rt, http }
    }
}

/// CPU time (user + system) this process has used so far, all its threads.
fn self_cpu() -> Duration {
    proc_cpu("self")
}

/// CPU time (user + system) process `pid` ("self": this one) has used so far, all its threads:
/// `utime` and `stime` of `/proc/<pid>/stat`, in clock ticks of 10 ms (Linux's USER_HZ is 100).
/// Zero once the process is gone.
fn proc_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses: the state is
    // field 3, utime 14, stime 15.
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Duration::from_millis(10 * fields.iter().sum::<u64>())
}

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    keel_testkit::wait_for(what, WAIT, Duration::from_millis(20), f)
}

/// A metric's value from a Prometheus text page (`name value` lines), 0 if absent.
fn metric(http: &Http, url: &str, name: &str) -> f64 {
    let text = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The disk's raw fsync rate: 4 KiB appends, each followed by fdatasync, for `dur` in `dir`;
/// also the latencies of the fdatasyncs, sorted.
fn fsync_rate(dir: &Path, dur: Duration) -> (f64, Vec<Duration>) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("fsync probe file");
    let block = [0x5au8; 4096];
    let (start, mut lat) = (Instant::now(), Vec::new());
    while start.elapsed() < dur {
        f.write_all(&block).expect("write fsync probe");
        let t = Instant::now();
        f.sync_data().expect("fdatasync fsync probe");
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    lat.sort();
    (rate, lat)
}

/// The file system's write bandwidth: 1 MiB appends, each followed by `fdatasync`, for `dur` or
/// 512 MiB, whichever comes first (the floor for large values: every node writes each one).
fn write_bandwidth(dir: &Path, dur: Duration) -> f64 {
    let path = dir.join("bandwidth-probe");
    let mut f = std::fs::File::create(&path).expect("bandwidth probe file");
    let block = vec![0xa5u8; 1 << 20];
    let (start, mut written) = (Instant::now(), 0usize);
    while start.elapsed() < dur && written < 512 << 20 {
        f.write_all(&block).expect("write bandwidth probe");
        f.sync_data().expect("fdatasync bandwidth probe");
        written += block.len();
    }
    let rate = written as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
}

/// What one load run measured.
#[derive(Default)]
struct Outcome {
    elapsed: Duration,
    /// Latencies of the acknowledged writes, sorted.
    lat: Vec<Duration>,
    /// Failed writes by kind ("HTTP 503 outcome_unknown", "timeout", ...).
    errors: BTreeMap<String, u64>,
    /// CPU time the benchmark process itself used during the run (the load generator's cost).
    cpu: Duration,
    /// CPU time each server process used during the run, in start order.
    server_cpu: Vec<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The generator's CPU use during the run, in percent of one core.
    fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// The CPU time all server processes used per acknowledged write, in µs.
    fn server_us_per_write(&self) -> f64 {
        let total: Duration = self.server_cpu.iter().sum();
        total.as_secs_f64() * 1e6 / self.lat.len() as f64
    }
}

/// Nearest-rank percentile of sorted durations, in ms (NaN when empty).
fn pct_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// Which write of a client: the warm-up write (before the clock starts, not counted) or write
/// number `i`. Displayed as the last part of its key: `warm-up`, `0`, `1`, ...
#[derive(Clone, Copy)]
enum Step {
    WarmUp,
    Write(u64),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::WarmUp => f.write_str("warm-up"),
            Step::Write(i) => write!(f, "{i}"),
        }
    }
}

/// Runs `clients` simulated clients for `dur`, each a task on the generator's runtime. Each
/// first sends its warm-up write `write(client, Step::WarmUp)` (all of them concurrently, before
/// the clock starts; its outcome is not counted), then writes `write(client, Step::Write(i))`
/// for i = 0, 1, 2, ...: in a closed loop (the next write as soon as the previous one is
/// answered), or, with `rate`, on a fixed schedule that spreads `rate` writes/s evenly over the
/// clients (open loop: a late write is sent at once, the schedule is kept). A write returns its
/// latency or the kind of its failure. Also measures the CPU time this process and each of
/// `servers` (process ids) used meanwhile.
fn run_load<W, F>(gen: &Gen, servers: Vec<u32>, clients: usize, dur: Duration, rate: Option<f64>, write: W) -> Outcome
where
    W: Fn(usize, Step) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Duration, String>> + Send + 'static,
{
    let write = Arc::new(write);
    gen.rt.block_on(async move {
        let warm_ups: Vec<_> = (0..clients).map(|t| tokio::spawn(write(t, Step::WarmUp))).collect();
        for w in warm_ups {
            let _ = w.await.expect("warm-up write task");
        }
        let server_cpu = || servers.iter().map(|p| proc_cpu(&p.to_string())).collect::<Vec<_>>();
        let (cpu, servers0) = (self_cpu(), server_cpu());
        let start = Instant::now();
        let deadline = start + dur;
        let period = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        let tasks: Vec<_> = (0..clients)
            .map(|t| {
                let write = write.clone();
                tokio::spawn(async move {
                    let (mut lat, mut errors) = (Vec::new(), BTreeMap::<String, u64>::new());
                    for i in 0.. {
                        if let Some(p) = period {
                            let at = start + p.mul_f64(i as f64 + t as f64 / clients as f64);
                            if at >= deadline {
                                break;
                            }
                            if at > Instant::now() {
                                tokio::time::sleep_until(at.into()).await;
                            }
                        } else if Instant::now() >= deadline {
                            break;
                        }
                        match write(t, Step::Write(i)).await {
                            Ok(d) => lat.push(d),
                            Err(e) => *errors.entry(e).or_default() += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut out = Outcome::default();
        for task in tasks {
            let (lat, errors) = task.await.expect("client task");
            out.lat.extend(lat);
            for (k, n) in errors {
                *out.errors.entry(k).or_default() += n;
            }
        }
        out.elapsed = start.elapsed();
        out.cpu = self_cpu().saturating_sub(cpu);
        out.server_cpu = server_cpu()
            .iter()
            .zip(servers0)
            .map(|(b, a)| b.saturating_sub(a))
            .collect();
        out.lat.sort();
        out
    })
}

/// Ok (the body) for a 2xx, else the kind of error: status and error code (Keel:
/// `{"error": {"code": ...}}`, etcd's gateway: `{"error": "..."}`).
fn check(r: Result<(u16, Vec<u8>), String>) -> Result<String, String> {
    let (status, body) = r?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let code = v["error"]["code"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("")
        .chars()
        .take(60)
        .collect::<String>();
    Err(format!("HTTP {status} {code}"))
}

/// One table row.
struct Row {
    system: &'static str,
    mode: &'static str,
    size: usize,
    clients: usize,
    out: Outcome,
    writes_per_fsync: f64,
    /// Keel: time after the run until both replicas had every write (None: not within `CATCH_UP`).
    catch_up: Option<Option<Duration>>,
    /// Throughput of each round, when the cell ran in several (`--rounds`).
    round_rates: Vec<f64>,
}

impl Row {
    /// One row for a cell that ran in several rounds: the rounds' writes taken together (their
    /// latencies pooled, throughput = all writes / all run time), writes per fsync averaged, the
    /// slowest catch-up.
    fn merge(rounds: Vec<Row>) -> Row {
        let mut it = rounds.into_iter();
        let mut row = it.next().expect("at least one round");
        row.round_rates = vec![row.out.rate()];
        let mut wpf = vec![row.writes_per_fsync];
        for r in it {
            row.round_rates.push(r.out.rate());
            row.out.elapsed += r.out.elapsed;
            row.out.cpu += r.out.cpu;
            for (sum, c) in row.out.server_cpu.iter_mut().zip(r.out.server_cpu) {
                *sum += c;
            }
            row.out.lat.extend(r.out.lat);
            for (k, n) in r.out.errors {
                *row.out.errors.entry(k).or_default() += n;
            }
            wpf.push(r.writes_per_fsync);
            row.catch_up = match (row.catch_up, r.catch_up) {
                (Some(Some(a)), Some(Some(b))) => Some(Some(a.max(b))),
                (Some(None), _) | (_, Some(None)) => Some(None),
                (a, b) => a.or(b),
            };
        }
        row.out.lat.sort();
        let known: Vec<f64> = wpf.into_iter().filter(|w| !w.is_nan()).collect();
        row.writes_per_fsync = if known.is_empty() {
            f64::NAN
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        row
    }
}

/// Rows of the same cells from several rounds (in the same order each round), merged per cell.
fn merge_rounds(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let mut cells: Vec<Vec<Row>> = Vec::new();
    for round in rounds {
        for (i, row) in round.into_iter().enumerate() {
            if cells.len() <= i {
                cells.push(Vec::new());
            }
            cells[i].push(row);
        }
    }
    cells.into_iter().map(Row::merge).collect()
}

/// Where the no-disk control keeps its data dirs: /dev/shm, when a tmpfs is mounted there.
fn tmpfs_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.get(1) == Some(&"/dev/shm") && f.get(2) == Some(&"tmpfs"))
        .then(|| PathBuf::from("/dev/shm"))
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn find<'a>(rows: &'a [Row], system: &str, mode: &str, size: usize, clients: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.mode == mode && r.size == size && r.clients == clients)
}

// ---------------------------------------------------------------- Keel

struct Keel {
    cluster: Procs,
    /// API address of each node, in start order (the order of `cluster.procs`).
    apis: Vec<String>,
    primary: String,
    replicas: Vec<String>,
}

/// A Keel cluster with its data dirs in the system's temp dir (`root` None), or under `root`.
fn start_keel(http: &Http, root: Option<&Path>) -> Keel {
    let mut cluster = Procs::new("keel-kv-bench", root);
    let (addrs, peers) = node_addrs(3, "127.0.0.1");
    for (i, (api, peer)) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let data = cluster.path().join(format!("n{id}"));
        cluster.spawn(&format!("n{id}"), serve_command(id, api, peer, &data, &peers));
    }
    let apis: Vec<String> = addrs.into_iter().map(|(api, _)| api).collect();
    let primary = wait("a Keel primary", || {
        apis.iter()
            .find(|api| {
                http.get(format!("http://{api}/primary"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            })
            .cloned()
    });
    let replicas = apis.iter().filter(|a| **a != primary).cloned().collect();
    cluster.mark();
    Keel {
        cluster,
        apis,
        primary,
        replicas,
    }
}

impl Keel {
    /// The primary (node, epoch) as the nodes see it: the newest epoch any of them reports.
    fn primary_record(&self, http: &Http) -> Option<(u64, u64)> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .filter_map(|api| get_json(http, &format!("http://{api}/v1/status")))
            .filter_map(|v| Some((v["primary"]["node"].as_u64()?, v["primary"]["epoch"].as_u64()?)))
            .max_by_key(|p| p.1)
    }

    /// After a run: how long until both replicas have every write the primary has (their
    /// backlog), or None if they do not within `CATCH_UP`.
    fn catch_up(&self, http: &Http) -> Option<Duration> {
        let position = |api: &str| {
            get_json(http, &format!("http://{api}/v1/status"))
                .and_then(|v| v["replication"]["position"].as_str().map(String::from))
        };
        let start = Instant::now();
        let head = position(&self.primary)?;
        while start.elapsed() < CATCH_UP {
            if self.replicas.iter().all(|r| position(r).as_ref() == Some(&head)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// Sets the replication mode (min_acks 1) and waits until the primary runs with it.
fn set_mode(http: &Http, primary: &str, mode: &str) {
    let r = http
        .patch(format!("http://{primary}/v1/config"))
        .json(&serde_json::json!({"replication_mode": mode, "min_acks": 1}))
        .send()
        .expect("PATCH /v1/config");
    let status = r.status();
    assert!(
        status.is_success(),
        "set mode {mode}: {status} {}",
        r.text().unwrap_or_default()
    );
    wait(&format!("replication mode {mode} on the primary"), || {
        get_json(http, &format!("http://{primary}/v1/status"))
            .filter(|v| v["replication"]["mode"] == mode)
            .map(|_| ())
    });
}

/// One write: `PUT path` with `value`; its latency (until the whole answer is read) or the kind
/// of its failure.
async fn keel_put(http: &raw_http::Client, path: &str, value: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    check(http.request("PUT", path, None, value).await).map(|_| t0.elapsed())
}

/// One closed-loop cell against the primary; writes per fsync from its group-commit counters.
fn keel_cell(
    http: &Http,
    gen: &Gen,
    keel: &Keel,
    mode: &'static str,
    size: usize,
    clients: usize,
    dur: Duration,
) -> Row {
    eprintln!("keel {mode} {} × {clients} clients ...", size_label(size));
    let value = Bytes::from(vec![b'k'; size]);
    let metrics = format!("http://{}/metrics", keel.primary);
    let counters = || {
        (
            metric(http, &metrics, "keel_datastore_writes_total"),
            metric(http, &metrics, "keel_datastore_commits_total"),
        )
    };
    let (w0, c0) = counters();
    let base: Arc<str> = format!("/v1/kv/bench/{mode}-{size}-{clients}").into();
    let client = Arc::new(raw_http::Client::new(&keel.primary));
    let out = run_load(gen, keel.cluster.pids(), clients, dur, None, move |t, step| {
        let (http, path, value) = (client.clone(), format!("{base}/{t}/{step}"), value.clone());
        async move { keel_put(&http, &path, &value).await }
    });
    let (w1, c1) = counters();
    Row {
        system: "keel",
        mode,
        size,
        clients,
        out,
        writes_per_fsync: (w1 - w0) / (c1 - c0).max(1.0),
        catch_up: Some(keel.catch_up(http)),
        round_rates: Vec::new(),
    }
}

/// What the half-load run measured.
struct Lag {
    target_rate: f64,
    achieved_rate: f64,
    size: usize,
    /// Time from the primary's 2xx until a replica served the key, sorted: all of them, and
    /// those of each replica.
    samples: Vec<Duration>,
    per_replica: Vec<Vec<Duration>>,
    /// Samples not seen on the replica within `LAG_GIVE_UP` (counted as that long).
    missed: u64,
    /// The largest `replication.lag_ms` the replicas reported in `/v1/status` during the run.
    reported_max_ms: u64,
}

/// Polls `replica` for `key` until it is there (every `LAG_POLL`, on tokio's 1 ms timer); the time
/// from `acked` to that answer.
async fn seen_after(http: &reqwest::Client, replica: &str, key: &str, acked: Instant) -> Option<Duration> {
    let url = format!("http://{replica}/v1/kv/{key}?consistency=local");
    while acked.elapsed() < LAG_GIVE_UP {
        let found = match http.get(&url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) => {
                let ok = r.status() == 200;
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        };
        if found {
            return Some(acked.elapsed());
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    None
}

/// The largest `replication.lag_ms` the replicas report in `/v1/status`, polled every 50 ms
/// until the task is aborted.
async fn watch_reported_lag(http: reqwest::Client, replicas: Vec<String>, max: Arc<AtomicU64>) {
    loop {
        for r in &replicas {
            let status = http
                .get(format!("http://{r}/v1/status"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(resp) = status {
                if let Ok(v) = resp.json::<serde_json::Value>().await {
                    max.fetch_max(v["replication"]["lag_ms"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Async mode, open loop at `rate` writes/s over 64 clients, sampling replication lag.
fn keel_lag(http: &Http, gen: &Gen, keel: &Keel, rate: f64, size: usize, dur: Duration) -> (Row, Lag) {
    let clients = CLIENTS[CLIENTS.len() - 1];
    eprintln!(
        "keel async {} at {rate:.0} writes/s × {clients} clients, sampling replication lag ...",
        size_label(size)
    );
    let value = Bytes::from(vec![b'l'; size]);
    let sample_every = (rate / LAG_SAMPLES_PER_SEC).ceil().max(1.0) as u64;
    let samples = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let reported_max = Arc::new(AtomicU64::new(0));
    // The replicas' own lag figure, for comparison: a task on the generator's runtime, running
    // while the load runs.
    let watcher = gen.rt.spawn(watch_reported_lag(
        gen.http.clone(),
        keel.replicas.clone(),
        reported_max.clone(),
    ));
    let (client, writer) = (gen.http.clone(), Arc::new(raw_http::Client::new(&keel.primary)));
    let replicas = Arc::new(keel.replicas.clone());
    let write_samples = samples.clone();
    let out = run_load(gen, keel.cluster.pids(), clients, dur, Some(rate), move |t, step| {
        let (http, writer, replicas) = (client.clone(), writer.clone(), replicas.clone());
        let (value, samples) = (value.clone(), write_samples.clone());
        async move {
            let key = format!("bench/lag/{t}/{step}");
            let d = keel_put(&writer, &format!("/v1/kv/{key}"), &value).await?;
            let acked = Instant::now();
            if let Step::Write(i) = step {
                let n = i * clients as u64 + t as u64;
                if n.is_multiple_of(sample_every) {
                    let r = (n / sample_every) as usize % replicas.len();
                    let seen = seen_after(&http, &replicas[r], &key, acked).await;
                    let mut s = samples.lock().unwrap();
                    s.0.push((r, seen.unwrap_or(LAG_GIVE_UP)));
                    s.1 += seen.is_none() as u64;
                }
            }
            Ok(d)
        }
    });
    watcher.abort();
    let _ = gen.rt.block_on(watcher);
    let (tagged, missed) = std::mem::take(&mut *samples.lock().unwrap());
    let sorted = |mut v: Vec<Duration>| {
        v.sort();
        v
    };
    let lag = Lag {
        target_rate: rate,
        achieved_rate: out.rate(),
        size,
        samples: sorted(tagged.iter().map(|s| s.1).collect()),
        per_replica: (0..keel.replicas.len())
            .map(|r| sorted(tagged.iter().filter(|s| s.0 == r).map(|s| s.1).collect()))
            .collect(),
        missed,
        reported_max_ms: reported_max.load(Ordering::Relaxed),
    };
    let row = Row {
        system: "keel",
        mode: "async½",
        size,
        clients,
        out,
        writes_per_fsync: f64::NAN,
        catch_up: Some(keel.catch_up(http)),
        round_rates: Vec::new(),
    };
    (row, lag)
}

// ---------------------------------------------------------------- etcd

struct Etcd {
    /// Dropping it stops the members.
    cluster: Procs,
    members: Vec<EtcdMember>,
    /// The gateway's path prefix (`/v3`).
    api: &'static str,
}

/// A three-member etcd on 127.0.0.1 with etcd's default timings.
fn start_etcd(bin: &Path, api: &'static str) -> Etcd {
    let mut cluster = Procs::new("keel-kv-bench-etcd", None);
    let token = format!("keel-kv-bench-{}", std::process::id());
    let members = etcd::layout(3, "127.0.0.1", cluster.path(), &token);
    for m in &members {
        cluster.spawn(&m.name, etcd::command(bin, m, "new"));
    }
    Etcd { cluster, members, api }
}

impl Etcd {
    /// The leader's index once every member is healthy and names the same leader.
    fn leader(&self, http: &Http) -> Option<usize> {
        let mut ids = Vec::new();
        for m in &self.members {
            let s = etcd::status(http, &m.client, self.api, Duration::from_millis(500))?;
            ids.push((s.member, s.leader?));
            let health = get_json(http, &format!("http://{}/health", m.client))?;
            if health["health"] != "true" {
                return None;
            }
        }
        let leader = &ids[0].1;
        if ids.iter().any(|(_, l)| l != leader) {
            return None;
        }
        ids.iter().position(|(m, _)| m == leader)
    }
}

/// One put through etcd's JSON gateway; its latency or the kind of its failure.
async fn etcd_put(http: &raw_http::Client, path: &str, key: &str, value_b64: &str) -> Result<Duration, String> {
    let body = format!(r#"{{"key":"{}","value":"{value_b64}"}}"#, b64(key.as_bytes()));
    let t0 = Instant::now();
    let r = http
        .request("POST", path, Some("application/json"), body.as_bytes())
        .await;
    match check(r) {
        Ok(b) if b.contains("\"error\"") => Err("error in a 200 answer".into()),
        Ok(_) => Ok(t0.elapsed()),
        Err(e) => Err(e),
    }
}

/// One closed-loop cell against the etcd leader; writes per WAL fsync from its `/metrics`.
fn etcd_cell(http: &Http, gen: &Gen, etcd: &Etcd, leader: usize, size: usize, clients: usize, dur: Duration) -> Row {
    eprintln!("etcd {} × {clients} clients ...", size_label(size));
    let value: Arc<str> = b64(&vec![b'e'; size]).into();
    let member = &etcd.members[leader].client;
    let (path, metrics): (Arc<str>, String) = (
        format!("{}/kv/put", etcd.api).into(),
        format!("http://{member}/metrics"),
    );
    let fsyncs = || metric(http, &metrics, "etcd_disk_wal_fsync_duration_seconds_count");
    let f0 = fsyncs();
    let client = Arc::new(raw_http::Client::new(member));
    let out = run_load(gen, etcd.cluster.pids(), clients, dur, None, move |t, step| {
        let (http, path, value) = (client.clone(), path.clone(), value.clone());
        let key = format!("bench/{size}-{clients}/{t}/{step}");
        async move { etcd_put(&http, &path, &key, &value).await }
    });
    let f1 = fsyncs();
    let writes_per_fsync = out.lat.len() as f64 / (f1 - f0).max(1.0);
    Row {
        system: "etcd",
        mode: "quorum",
        size,
        clients,
        out,
        writes_per_fsync,
        catch_up: None,
        round_rates: Vec::new(),
    }
}

// ---------------------------------------------------------------- write client

/// The load generator's HTTP/1.1 client for the measured writes (Keel's `PUT /v1/kv/...` and
/// etcd's `POST /v3/kv/put` alike): keep-alive connections to one server, a connection per
/// write in flight, taken from and returned to an idle list. It writes each request in one
/// `write` (head and body together) and reads the answer by its `content-length` (or chunked
/// encoding), nothing more: no URL parsing, no header map, no background connection task. On
/// the 2-core machine the generator shares with the three servers it measures, reqwest used
/// about 26 µs of CPU per write at 128 B x 64 clients (35 % of a core at 13,500 writes/s), all
/// of it taken from the servers. Management calls and the lag probe's reads still use reqwest.
mod raw_http {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::REQUEST_TIMEOUT;

    /// Largest answer head or body accepted (answers to writes are a few hundred bytes).
    const MAX_ANSWER: usize = 1 << 20;

    pub struct Client {
        /// `host:port`, also sent as the `host` header.
        addr: String,
        idle: Mutex<Vec<TcpStream>>,
    }

    impl Client {
        pub fn new(addr: &str) -> Client {
            Client {
                addr: addr.to_string(),
                idle: Mutex::new(Vec::new()),
            }
        }

        /// One request; the answer's status and body, or the kind of transport failure
        /// (`timeout (10 s)`, `connect error`, `transport error`). The whole exchange,
        /// connecting included, has `REQUEST_TIMEOUT`.
        pub async fn request(
            &self,
            method: &str,
            path: &str,
            content_type: Option<&str>,
            body: &[u8],
        ) -> Result<(u16, Vec<u8>), String> {
            let reused = self.idle.lock().unwrap().pop();
            let was_reused = reused.is_some();
            match self.exchange(reused, method, path, content_type, body).await {
                // An idle connection the server closed meanwhile: once more on a new one (every
                // measured write is a PUT of a new key, so sending it again changes nothing).
                Err(e) if was_reused && e.starts_with("transport error") => {
                    self.exchange(None, method, path, content_type, body).await
                }
                r => r,
            }
        }

        async fn exchange(
            &self,
            conn: Option<TcpStream>,
            method: &str,
            path: &str,
            content_type: Option<&str>,
            body: &[u8],
        ) -> Result<(u16, Vec<u8>), String> {
            let exchange = async {
                let mut conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = TcpStream::connect(&self.addr)
                            .await
                            .map_err(|_| "connect error".to_string())?;
                        c.set_nodelay(true).map_err(|_| "connect error".to_string())?;
                        c
                    }
                };
                let mut req = Vec::with_capacity(160 + body.len());
                req.extend_from_slice(method.as_bytes());
                req.push(b' ');
                req.extend_from_slice(path.as_bytes());
                req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
                req.extend_from_slice(self.addr.as_bytes());
                if let Some(ct) = content_type {
                    req.extend_from_slice(b"\r\ncontent-type: ");
                    req.extend_from_slice(ct.as_bytes());
                }
                req.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
                req.extend_from_slice(body);
                conn.write_all(&req).await.map_err(|_| "transport error".to_string())?;
                let (status, answer, keep) = read_answer(&mut conn)
                    .await
                    .map_err(|e| format!("transport error{e}"))?;
                Ok::<_, String>((status, answer, keep.then_some(conn)))
            };
            let (status, answer, conn) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("timeout ({} s)", REQUEST_TIMEOUT.as_secs()))??;
            if let Some(c) = conn {
                self.idle.lock().unwrap().push(c);
            }
            Ok((status, answer))
        }
    }

    /// Reads one answer: status, body, and whether the connection may be used again. The error
    /// is a suffix for "transport error" (empty, or what was malformed).
    async fn read_answer(conn: &mut TcpStream) -> Result<(u16, Vec<u8>, bool), String> {
        let mut buf = Vec::with_capacity(512);
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_ANSWER {
                return Err(": answer head too large".into());
            }
            read_more(conn, &mut buf).await?;
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ": answer head not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or(": no status line")?;
        let (mut length, mut chunked, mut keep) = (None, false, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| ": bad content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep = !value.eq_ignore_ascii_case("close");
            }
        }
        let mut rest = buf.split_off(head_end);
        let body = if chunked {
            read_chunked(conn, rest).await?
        } else if let Some(len) = length {
            if len > MAX_ANSWER {
                return Err(": answer body too large".into());
            }
            while rest.len() < len {
                read_more(conn, &mut rest).await?;
            }
            if rest.len() > len {
                return Err(": bytes after the answer".into());
            }
            rest
        } else {
            // Neither: the body runs to the end of the connection.
            keep = false;
            while conn.read_buf(&mut rest).await.map_err(|_| String::new())? > 0 {
                if rest.len() > MAX_ANSWER {
                    return Err(": answer body too large".into());
                }
            }
            rest
        };
        Ok((status, body, keep))
    }

    /// A chunked body (`rest`: what was read after the head so far).
    async fn read_chunked(conn: &mut TcpStream, mut rest: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                read_more(conn, &mut rest).await?;
            };
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
                .ok_or(": bad chunk size")?;
            if body.len() + size > MAX_ANSWER {
                return Err(": answer body too large".into());
            }
            // The chunk, then its CRLF (after the last, empty chunk: the final CRLF, no trailers).
            while rest.len() < line_end + 2 + size + 2 {
                read_more(conn, &mut rest).await?;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
        buf.reserve(4096);
        match conn.read_buf(buf).await {
            Ok(0) => Err(": connection closed".into()),
            Ok(_) => Ok(()),
            Err(_) => Err(String::new()),
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let mut secs = 5.0f64;
    let mut compare_etcd = false;
    // `--rounds N`: every cell N times; the figures pool them.
    let mut rounds = 1usize;
    // `--only MODE:SIZE:CLIENTS` (repeatable) runs just those Keel cells, e.g. to profile one.
    let mut only: Vec<(String, usize, usize)> = Vec::new();
    let usage = "usage: kv_bench [--secs S] [--rounds N] [--compare etcd] [--only MODE:SIZE:CLIENTS ...]";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= 1)
                    .expect("--rounds N (N >= 1)")
            }
            "--compare" => match args.next().as_deref() {
                Some("etcd") => compare_etcd = true,
                other => panic!(
                    "--compare {}: only `--compare etcd` is supported; {usage}",
                    other.unwrap_or("")
                ),
            },
            "--only" => {
                let v = args.next().unwrap_or_default();
                let parts: Vec<&str> = v.split(':').collect();
                let cell = match parts[..] {
                    [m @ ("async" | "sync"), s, c] => {
                        s.parse().ok().zip(c.parse().ok()).map(|(s, c)| (m.to_string(), s, c))
                    }
                    _ => None,
                };
                only.push(
                    cell.unwrap_or_else(|| panic!("--only {v}: expected MODE:SIZE:CLIENTS, e.g. async:16384:64")),
                );
            }
            other => panic!("unknown argument {other}; {usage}"),
        }
    }
    if !only.is_empty() {
        // One-off cells: no etcd, no half-load run, no goal checks.
        let (http, gen) = (blocking_client(REQUEST_TIMEOUT), Gen::new());
        let keel = start_keel(&http, None);
        for (mode, size, clients) in &only {
            let mode: &'static str = if mode == "async" { "async" } else { "sync" };
            set_mode(&http, &keel.primary, mode);
            let r = keel_cell(&http, &gen, &keel, mode, *size, *clients, Duration::from_secs_f64(secs));
            let per_write = |d: Duration| d.as_secs_f64() * 1e6 / r.out.lat.len() as f64;
            let (mut primary_cpu, mut replica_cpu) = (Duration::ZERO, Vec::new());
            for (api, cpu) in keel.apis.iter().zip(&r.out.server_cpu) {
                if *api == keel.primary {
                    primary_cpu = *cpu;
                } else {
                    replica_cpu.push(*cpu);
                }
            }
            let replica_cpu = replica_cpu.into_iter();
            println!(
                "keel {mode} {} × {clients}: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors, \
                 {:.1} writes/fsync, generator CPU {:.1} % of one core, servers' CPU {:.0} µs/write \
                 (primary {:.0}, replicas {})",
                size_label(*size),
                r.out.rate(),
                pct_ms(&r.out.lat, 0.5),
                pct_ms(&r.out.lat, 0.99),
                pct_ms(&r.out.lat, 1.0),
                r.out.error_count(),
                r.writes_per_fsync,
                r.out.cpu_percent(),
                r.out.server_us_per_write(),
                per_write(primary_cpu),
                replica_cpu
                    .map(per_write)
                    .map(|us| format!("{us:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (kind, n) in &r.out.errors {
                println!("  {n} × {kind}");
            }
        }
        return;
    }
    assert!(secs > 0.0, "--secs must be positive");
    let dur = Duration::from_secs_f64(secs);
    // Before anything is started, so a missing etcd does not cost the Keel runs.
    let etcd_bin = compare_etcd.then(etcd::find_etcd_or_exit);
    let now_ms = keel_testkit::unix_ms();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load_before = load_average();
    let (http, gen) = (blocking_client(REQUEST_TIMEOUT), Gen::new());

    // A change of primary during a run (a failover under load) is reported with the results.
    let mut events = Vec::new();
    let mut watch = |what: String, primary: Option<(u64, u64)>, keel: &Keel| {
        let now = keel.primary_record(&http);
        if now != primary {
            events.push(format!(
                "{what}: the primary (node, epoch) changed from {primary:?} to {now:?} during the run"
            ));
        }
    };
    // Every Keel cell, `rounds` times, each on a fresh cluster (empty data dirs): no cell runs on
    // the data and dirty pages the cells before it left. Each async cell is followed at once by
    // the sync cell of the same size and clients. The disk probes run once, in the first
    // cluster's dir.
    let (mut keel_rounds, mut warnings, mut probes) = (Vec::new(), Vec::new(), None);
    // One closed-loop cell on a fresh cluster `k`, in `mode`; `label` names it in the reports.
    let mut measure = |k: &Keel, mode: &'static str, label: &str, size: usize, clients: usize| {
        set_mode(&http, &k.primary, mode);
        let before = k.primary_record(&http);
        let row = keel_cell(&http, &gen, k, mode, size, clients, dur);
        watch(format!("keel {label} {} × {clients}", size_label(size)), before, k);
        warnings.extend(k.cluster.warnings());
        row
    };
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("round {} of {rounds}", round + 1);
        }
        let mut cells = Vec::new();
        for size in SIZES {
            for clients in CLIENTS {
                for mode in ["async", "sync"] {
                    let k = start_keel(&http, None);
                    if probes.is_none() {
                        probes = Some((
                            fsync_rate(k.cluster.path(), Duration::from_secs(2)),
                            write_bandwidth(k.cluster.path(), Duration::from_secs(1)),
                        ));
                    }
                    cells.push(measure(&k, mode, mode, size, clients));
                }
            }
        }
        // The table's order: every async cell, then every sync cell.
        let (sync, asynchronous): (Vec<Row>, Vec<Row>) = cells.into_iter().partition(|r| r.mode == "sync");
        keel_rounds.push(asynchronous.into_iter().chain(sync).collect());
    }
    let ((disk, fsyncs), bandwidth) = probes.expect("disk probes");
    let mut rows = merge_rounds(keel_rounds);
    // The no-disk control: one client and the most clients, async, with the data dirs on tmpfs.
    let last = CLIENTS[CLIENTS.len() - 1];
    let tmpfs = tmpfs_root();
    if let Some(root) = &tmpfs {
        let mut control_rounds = Vec::new();
        for round in 0..rounds {
            eprintln!(
                "no-disk control (data dirs in {}), round {} of {rounds}",
                root.display(),
                round + 1
            );
            let mut cells = Vec::new();
            for size in SIZES {
                for clients in [CLIENTS[0], last] {
                    let mut row = measure(&start_keel(&http, Some(root)), "async", "tmpfs", size, clients);
                    row.mode = "tmpfs";
                    cells.push(row);
                }
            }
            control_rounds.push(cells);
        }
        rows.extend(merge_rounds(control_rounds));
    }
    // The half-load run, once, on a fresh cluster: half the best async throughput above.
    let keel = start_keel(&http, None);
    let best = rows
        .iter()
        .filter(|r| r.mode == "async")
        .max_by(|a, b| a.out.rate().total_cmp(&b.out.rate()))
        .map(|r| (r.out.rate(), r.size))
        .expect("async rows");
    set_mode(&http, &keel.primary, "async");
    let before = keel.primary_record(&http);
    let (row, lag) = keel_lag(&http, &gen, &keel, best.0 / 2.0, best.1, dur);
    let at = rows.iter().position(|r| r.mode == "sync").unwrap_or(rows.len());
    rows.insert(at, row);
    watch("keel half-load run".into(), before, &keel);
    warnings.extend(keel.cluster.warnings());
    drop(keel);

    let mut etcd_about = None;
    if let Some(bin) = etcd_bin {
        let (version, api) = etcd::etcd_version(&bin);
        etcd_about = Some(format!(
            "etcd {version} ({}), three members with default timings, JSON gateway `POST {api}/kv/put` on the leader",
            bin.display()
        ));
        let mut etcd_rounds = Vec::new();
        for round in 0..rounds {
            if rounds > 1 {
                eprintln!("etcd round {} of {rounds}", round + 1);
            }
            let mut round_rows = Vec::new();
            for size in SIZES {
                for clients in CLIENTS {
                    // A fresh etcd for every cell, as for Keel.
                    let etcd = start_etcd(&bin, api);
                    let leader = wait("an etcd leader and three healthy members", || etcd.leader(&http));
                    round_rows.push(etcd_cell(&http, &gen, &etcd, leader, size, clients, dur));
                    let now = (0..50).find_map(|_| {
                        let l = etcd.leader(&http);
                        if l.is_none() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        l
                    });
                    if now != Some(leader) {
                        events.push(format!(
                            "etcd {} × {clients}: the leader changed from member {leader} to {now:?} during the run",
                            size_label(size)
                        ));
                    }
                }
            }
            etcd_rounds.push(round_rows);
        }
        rows.extend(merge_rounds(etcd_rounds));
    }

    println!(
        "kv_bench, {} UTC, {secs} s per cell{}, {cpus} CPUs, load average {load_before} before and {} after",
        &keel_node::util::rfc3339(now_ms)[..16].replace('T', " "),
        if rounds > 1 {
            format!(
                " × {rounds} rounds (a row pools its rounds: all their writes over all their run time, their latencies \
                 together)"
            )
        } else {
            String::new()
        },
        load_average()
    );
    println!(
        "disk: {disk:.0} fsyncs/s (4 KiB append + fdatasync for 2 s in the data dirs' file system; fdatasync p50 \
         {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
        pct_ms(&fsyncs, 0.5),
        pct_ms(&fsyncs, 0.99),
        pct_ms(&fsyncs, 1.0)
    );
    println!(
        "disk: {:.0} MB/s written (1 MiB appends + fdatasync, at most 1 s or 512 MiB, same file system)",
        bandwidth / 1e6
    );
    if let Some(about) = &etcd_about {
        println!("{about}");
    }
    println!();
    println!(
        "{:<6} {:<7} {:>6} {:>7} {:>9} {:>7} {:>7} {:>7} {:>6} {:>12} {:>10} {:>9} {:>10}",
        "system",
        "mode",
        "value",
        "clients",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "writes/fsync",
        "catch-up s",
        "gen cpu %",
        "srv µs/w"
    );
    for r in &rows {
        println!(
            "{:<6} {:<7} {:>6} {:>7} {:>9.0} {:>7.2} {:>7.2} {:>7.1} {:>6} {:>12} {:>10} {:>9.1} {:>10.0}",
            r.system,
            r.mode,
            size_label(r.size),
            r.clients,
            r.out.rate(),
            pct_ms(&r.out.lat, 0.5),
            pct_ms(&r.out.lat, 0.99),
            pct_ms(&r.out.lat, 1.0),
            r.out.error_count(),
            if r.writes_per_fsync.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", r.writes_per_fsync)
            },
            match r.catch_up {
                None => "-".to_string(),
                Some(None) => format!(">{}", CATCH_UP.as_secs()),
                Some(Some(d)) => format!("{:.2}", d.as_secs_f64()),
            },
            r.out.cpu_percent(),
            r.out.server_us_per_write()
        );
    }
    if rounds > 1 {
        println!();
        println!("writes/s of each round:");
        for r in rows.iter().filter(|r| !r.round_rates.is_empty()) {
            println!(
                "  {} {} {} × {}: {}",
                r.system,
                r.mode,
                size_label(r.size),
                r.clients,
                r.round_rates
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!();

    // Goal checks. Where a goal covers several cells, the headline figure is the worst of them.
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let rate = |system: &str, mode: &str, size: usize, clients: usize| {
        find(&rows, system, mode, size, clients).map_or(f64::NAN, |r| r.out.rate())
    };
    let per_size = |f: &dyn Fn(usize) -> f64| -> (f64, String) {
        let v: Vec<(usize, f64)> = SIZES.iter().map(|&s| (s, f(s))).collect();
        let worst = v.iter().map(|x| x.1).fold(f64::NAN, f64::min);
        let text = v
            .iter()
            .map(|(s, x)| format!("{}: {x:.1}×", size_label(*s)))
            .collect::<Vec<_>>()
            .join(", ");
        (worst, text)
    };
    let (gc, gc_text) = per_size(&|s| rate("keel", "async", s, last) / rate("keel", "async", s, CLIENTS[0]));
    println!(
        "group commit: {last}-client async throughput = {gc:.1}× single-client (goal ≥ 10×) — {} [{gc_text}]",
        verdict(gc >= 10.0)
    );
    // What bounds the large values: bytes, not fsyncs. Every node writes every value.
    for size in SIZES.iter().filter(|s| **s >= 4096) {
        let (one, many) = (
            rate("keel", "async", *size, CLIENTS[0]),
            rate("keel", "async", *size, last),
        );
        let mbs = |r: f64| r * *size as f64 * 3.0 / 1e6;
        println!(
            "  {} values: {one:.0} → {many:.0} writes/s = {:.0} → {:.0} MB/s of values written by the three nodes together \
             (disk: {:.0} MB/s with fdatasync; 10× single-client would be {:.0} MB/s)",
            size_label(*size),
            mbs(one),
            mbs(many),
            bandwidth / 1e6,
            mbs(one * 10.0),
        );
    }
    // The ceiling: no group commit can take many clients above what they reach when writes and
    // fsyncs cost no disk at all.
    match &tmpfs {
        Some(root) => {
            let (ceiling, ceiling_text) =
                per_size(&|s| rate("keel", "tmpfs", s, last) / rate("keel", "async", s, CLIENTS[0]));
            println!(
                "  no-disk ceiling: {last} clients with the data dirs on tmpfs ({}, rows `tmpfs`) = {ceiling:.1}× \
                 single-client on the disk [{ceiling_text}]; any rate a disk adds work to stays below it",
                root.display()
            );
            let share = |clients: usize| {
                SIZES
                    .iter()
                    .map(|&s| {
                        format!(
                            "{}: {:.0} %",
                            size_label(s),
                            100.0 * rate("keel", "async", s, clients) / rate("keel", "tmpfs", s, clients)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "  on the disk, {last} clients reach {} of their no-disk rate; one client {}",
                share(last),
                share(CLIENTS[0])
            );
        }
        None => println!("  no-disk ceiling: not measured (no tmpfs mounted at /dev/shm)"),
    }
    let mut ratios = Vec::new();
    for size in SIZES {
        for clients in CLIENTS {
            let p50 = |mode| find(&rows, "keel", mode, size, clients).map_or(f64::NAN, |r| pct_ms(&r.out.lat, 0.5));
            ratios.push((size, clients, p50("sync") / p50("async")));
        }
    }
    let worst = ratios.iter().map(|r| r.2).fold(f64::NAN, f64::max);
    println!(
        "sync p50 / async p50 = {worst:.2} (goal ≤ 2) — {} [worst of {} cells; {}]",
        verdict(worst <= 2.0),
        ratios.len(),
        ratios
            .iter()
            .map(|(s, c, r)| format!("{} × {c}: {r:.2}", size_label(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let p99 = pct_ms(&lag.samples, 0.99);
    println!(
        "lag p99 at half load = {p99:.1} ms (goal < 100 ms) — {} [{} values at {:.0} writes/s (target {:.0}), \
         {} samples on the two replicas, p50 {:.1} ms, max {:.1} ms, {} not seen within {} s; p99 per replica: {}; \
         replicas' own replication.lag_ms at most {} ms]",
        verdict(p99 < 100.0),
        size_label(lag.size),
        lag.achieved_rate,
        lag.target_rate,
        lag.samples.len(),
        pct_ms(&lag.samples, 0.5),
        pct_ms(&lag.samples, 1.0),
        lag.missed,
        LAG_GIVE_UP.as_secs(),
        lag.per_replica
            .iter()
            .map(|r| format!("{:.1} ms", pct_ms(r, 0.99)))
            .collect::<Vec<_>>()
            .join(", "),
        lag.reported_max_ms
    );
    if etcd_about.is_some() {
        let (vs, text) = per_size(&|s| rate("keel", "async", s, last) / rate("etcd", "quorum", s, last));
        let (vs_sync, sync_text) = per_size(&|s| rate("keel", "sync", s, last) / rate("etcd", "quorum", s, last));
        println!(
            "keel/etcd {last}-client throughput = {vs:.2}× (goal > 1×, Keel async) — {} \
             [{text}; Keel sync: {vs_sync:.2}×, {sync_text}]",
            verdict(vs > 1.0)
        );
    }

    let failed: Vec<&Row> = rows.iter().filter(|r| r.out.error_count() > 0).collect();
    if !failed.is_empty() {
        println!();
        println!("errors:");
        for r in failed {
            for (kind, n) in &r.out.errors {
                println!(
                    "  {} {} {} × {}: {n} × {kind}",
                    r.system,
                    r.mode,
                    size_label(r.size),
                    r.clients
                );
            }
        }
    }
    if !events.is_empty() {
        println!();
        for e in &events {
            println!("{e}");
        }
    }
    if !warnings.is_empty() {
        println!();
        println!("Keel node logs:");
        for w in warnings {
            println!("  {w}");
        }
    }
}
