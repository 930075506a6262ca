//! Failover benchmark: N runs of `kill -9` of the primary of a local three-node cluster with the
//! default configuration; prints the time from the kill until another node answers
//! `/primary` 200 and until it accepts a write (median, p90, max), and the number of spurious
//! failovers (epoch changes not caused by a kill) seen while the cluster was left alone between runs.
//!
//!   cargo build --release && cargo run --release --example failover -- --runs 10
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel).
//!
//! `--compare etcd` then does the same against a local three-member etcd cluster with etcd's
//! default timings (heartbeat 100 ms, election timeout 1000 ms; the `etcd` binary from PATH, on
//! Debian the `etcd-server` package): N runs of `kill -9` of the Raft leader, each measuring the
//! time until a put through one of the two surviving members succeeds (etcd's JSON gateway,
//! `POST /v3/kv/put`). A new put is started every 10 ms on each survivor, each with a 500 ms
//! timeout, so the figure is not rounded up to a request timeout (a put forwarded to the dead
//! leader hangs until it times out). The killed member is restarted on its data dir and the
//! cluster waited for between runs; leader elections while it is left alone count as spurious.
//! Finally it prints Keel's median divided by etcd's.
//!
//! Keel's figure compared with etcd's is the time to the first accepted write.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_testkit::etcd::{self, EtcdMember, EtcdStatus};
use keel_testkit::{b64, keel_bin, wait_for, Cluster};

type Http = reqwest::blocking::Client;

/// Deadline of every wait (a primary, a leader, a healthy member, a successful put).
const WAIT: Duration = Duration::from_secs(30);

fn get(http: &Http, url: &str) -> Option<(u16, serde_json::Value)> {
    let r = http.get(url).timeout(Duration::from_millis(300)).send().ok()?;
    let s = r.status().as_u16();
    Some((s, r.json().unwrap_or(serde_json::Value::Null)))
}

fn primary_of(http: &Http, c: &Cluster) -> Vec<u64> {
    c.nodes
        .iter()
        .filter(|n| n.running())
        .filter(|n| get(http, &format!("{}/primary", n.url())).is_some_and(|(s, _)| s == 200))
        .map(|n| n.id)
        .collect()
}

fn epoch(http: &Http, c: &Cluster) -> u64 {
    c.nodes
        .iter()
        .filter(|n| n.running())
        .filter_map(|n| get(http, &format!("{}/v1/status", n.url())))
        .filter_map(|(_, v)| v["primary"]["epoch"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Poll every 5 ms: the poll interval bounds how finely a failover is timed.
fn wait<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for(what, timeout, Duration::from_millis(5), f)
}

/// Median, p90 and max in ms (the same nearest-rank rule for Keel and etcd).
fn stats(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (ms(pct(0.5)), ms(pct(0.9)), ms(*times.last().unwrap()))
}

/// The Keel runs; prints one line per run and the summary, returns the failover times.
fn keel_failover(http: &Http, runs: usize, quiet_ms: u64) -> Vec<Duration> {
    // Panics naming the path when it is missing: run `cargo build --release` first.
    keel_bin();
    // Child processes on this process's own loopback address, killed when `c` drops; each
    // node's log is in the cluster's temp dir (copied to $KEEL_BENCH_LOG_DIR if set).
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let mut times = Vec::new();
    let mut probe_times = Vec::new();
    let mut spurious = 0u64;
    for run in 1..=runs {
        let p = wait("one primary", WAIT, || {
            let p = primary_of(http, &c);
            (p.len() == 1).then(|| p[0])
        });
        // Leave the cluster alone; any epoch change now is a spurious failover.
        let e0 = epoch(http, &c);
        std::thread::sleep(Duration::from_millis(quiet_ms));
        let e1 = epoch(http, &c);
        spurious += e1.saturating_sub(e0);
        let p = if e1 != e0 {
            primary_of(http, &c).first().copied().unwrap_or(p)
        } else {
            p
        };
        let t0 = Instant::now();
        c.kill(p);
        let newp = wait("new primary", WAIT, || {
            let q = primary_of(http, &c);
            (q.len() == 1 && q[0] != p).then(|| q[0])
        });
        let took = t0.elapsed();
        // Then the first acknowledged write on the new primary (what a client sees; the
        // number compared with etcd's first acknowledged put).
        let api = c.node(newp).url();
        wait("a write accepted by the new primary", WAIT, || {
            http.put(format!("{api}/v1/kv/bench/failover-{run}"))
                .body("x")
                .timeout(Duration::from_millis(300))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
        let took_write = t0.elapsed();
        println!(
            "run {run:2}: killed primary n{p}; n{newp} answers /primary 200 after {:7.1} ms, accepts a write after {:7.1} ms",
            took.as_secs_f64() * 1e3,
            took_write.as_secs_f64() * 1e3
        );
        probe_times.push(took);
        times.push(took_write);
        c.start(p);
    }
    drop(c);
    let (median, p90, max) = stats(&mut probe_times);
    println!("failover to /primary 200 over {runs} runs: median {median:.1} ms, p90 {p90:.1} ms, max {max:.1} ms");
    let (median, p90, max) = stats(&mut times);
    println!(
        "failover to first accepted write over {runs} runs: median {median:.1} ms, p90 {p90:.1} ms, max {max:.1} ms; spurious failovers between runs: {spurious}"
    );
    times
}

// ---- etcd ----

/// A local three-member etcd cluster (the layout and commands of `keel_testkit::etcd`); dropping
/// it (panics included) kills every member, then removes the data dirs.
struct Etcd {
    bin: PathBuf,
    api: &'static str,
    members: Vec<EtcdMember>,
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for mut c in self.children.iter_mut().filter_map(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = self.log(m);
                eprintln!("--- last lines of {} ({}):", m.name, log.display());
                eprintln!("{}", keel_testkit::logs::tail(&log, 8));
            }
        }
    }
}

impl Etcd {
    fn new(bin: PathBuf, api: &'static str) -> Etcd {
        let dir = tempfile::Builder::new().prefix("keel-failover-etcd").tempdir().unwrap();
        let token = format!("keel-failover-{}-{}", std::process::id(), keel_testkit::unix_ms());
        let members = etcd::layout(3, "127.0.0.1", dir.path(), &token);
        Etcd {
            bin,
            api,
            children: members.iter().map(|_| None).collect(),
            members,
            dir,
        }
    }

    fn log(&self, m: &EtcdMember) -> PathBuf {
        self.dir.path().join(format!("{}.log", m.name))
    }

    /// Starts member `i` with `--initial-cluster-state state` ("new" or "existing"; the
    /// latter restarts it on its own data dir).
    fn start(&mut self, i: usize, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(&self.members[i]))
            .expect("etcd log file");
        let mut cmd = etcd::command(&self.bin, &self.members[i], state);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        self.children[i] = Some(cmd.spawn().expect("spawn etcd"));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}{path}", self.members[i].client, self.api)
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.children[i].is_some())
            .collect()
    }

    fn status(&self, http: &Http, i: usize) -> Option<EtcdStatus> {
        etcd::status(http, &self.members[i].client, self.api, Duration::from_millis(300))
    }

    fn healthy(&self, http: &Http, i: usize) -> bool {
        // `/health` is not under the gateway prefix; "true" means the member sees a leader.
        let url = format!("http://{}/health", self.members[i].client);
        get(http, &url).is_some_and(|(s, v)| s == 200 && v["health"] == "true")
    }

    /// The leader's index if every running member is healthy and names the same leader, which
    /// is itself one of the running members.
    fn leader(&self, http: &Http) -> Option<usize> {
        let running = self.running();
        let st: Vec<(usize, EtcdStatus)> = running
            .iter()
            .map(|&i| Some((i, self.status(http, i)?)))
            .collect::<Option<_>>()?;
        let leader = st[0].1.leader.clone()?;
        if st.iter().any(|(_, s)| s.leader.as_ref() != Some(&leader)) {
            return None;
        }
        let idx = st.iter().find(|(_, s)| s.member == leader)?.0;
        running.iter().all(|&i| self.healthy(http, i)).then_some(idx)
    }

    /// The highest Raft term any running member reports.
    fn term(&self, http: &Http) -> u64 {
        self.running()
            .iter()
            .filter_map(|&i| self.status(http, i))
            .map(|s| s.term)
            .max()
            .unwrap_or(0)
    }

    /// Starts a put on every member in `to` every 10 ms until one succeeds (200 and no error);
    /// returns when and through which member, or None after `WAIT`.
    fn put_until_ok(&self, http: &Http, to: &[usize], run: usize) -> Option<(Instant, usize)> {
        let body = serde_json::json!({
            "key": b64(b"keel-failover-bench"),
            "value": b64(format!("run {run}").as_bytes()),
        });
        let urls: Vec<(usize, String)> = to.iter().map(|&i| (i, self.url(i, "/kv/put"))).collect();
        let (tx, rx) = mpsc::channel::<(Instant, usize)>();
        let start = Instant::now();
        // The scope joins every request thread; each ends within its 500 ms timeout.
        std::thread::scope(|s| loop {
            for (i, url) in &urls {
                let (tx, http, body) = (tx.clone(), http.clone(), &body);
                s.spawn(move || {
                    let ok = http
                        .post(url)
                        .timeout(Duration::from_millis(500))
                        .json(body)
                        .send()
                        .ok()
                        .filter(|r| r.status() == 200)
                        .and_then(|r| r.json::<serde_json::Value>().ok())
                        .is_some_and(|v| v.get("error").is_none());
                    if ok {
                        let _ = tx.send((Instant::now(), *i));
                    }
                });
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                // The earliest of the successes that have arrived by now.
                Ok(first) => return Some(rx.try_iter().fold(first, |a, b| if b.0 < a.0 { b } else { a })),
                Err(_) if start.elapsed() > WAIT => return None,
                Err(_) => {}
            }
        })
    }
}

/// The etcd runs; prints one line per run and the summary, returns the failover times.
fn etcd_failover(http: &Http, bin: PathBuf, runs: usize, quiet_ms: u64) -> Vec<Duration> {
    let (version, api) = etcd::etcd_version(&bin);
    println!(
        "etcd {version} ({}), JSON gateway {api}, default timings; three members on 127.0.0.1",
        bin.display()
    );
    let mut etcd = Etcd::new(bin, api);
    for i in 0..etcd.members.len() {
        etcd.start(i, "new");
    }
    let mut times = Vec::new();
    let mut spurious = 0u64;
    for run in 1..=runs {
        let l = wait("an etcd leader and three healthy members", WAIT, || etcd.leader(http));
        // Leave the cluster alone; any term change now is a spurious election.
        let t0 = etcd.term(http);
        std::thread::sleep(Duration::from_millis(quiet_ms));
        let t1 = etcd.term(http);
        spurious += t1.saturating_sub(t0);
        let l = if t1 != t0 {
            wait("an etcd leader", WAIT, || etcd.leader(http))
        } else {
            l
        };
        let survivors: Vec<usize> = etcd.running().into_iter().filter(|&i| i != l).collect();
        let t0 = Instant::now();
        etcd.kill(l);
        let (at, via) = etcd
            .put_until_ok(http, &survivors, run)
            .expect("timed out waiting for a put through a surviving etcd member");
        let took = at.duration_since(t0);
        // Who won, and in how many terms (more than one: a split vote or a failed campaign).
        let st: Vec<(usize, EtcdStatus)> = survivors
            .iter()
            .filter_map(|&i| Some((i, etcd.status(http, i)?)))
            .collect();
        let new_leader = st
            .iter()
            .find_map(|(_, s)| s.leader.clone())
            .and_then(|id| st.iter().find(|(_, s)| s.member == id))
            .map(|(i, _)| etcd.members[*i].name.clone())
            .unwrap_or_else(|| "?".into());
        let terms = st.iter().map(|(_, s)| s.term).max().unwrap_or(0).saturating_sub(t1);
        println!(
            "run {run:2}: killed etcd leader {}; put through {} succeeded after {:7.1} ms (new leader {new_leader}, \
             term +{terms})",
            etcd.members[l].name,
            etcd.members[via].name,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        etcd.start(l, "existing");
    }
    // Every member healthy again before the end, so a broken restart does not go unnoticed.
    wait("an etcd leader and three healthy members", WAIT, || etcd.leader(http));
    drop(etcd);
    let (median, p90, max) = stats(&mut times);
    println!(
        "etcd failover over {runs} runs: median {median:.1} ms, p90 {p90:.1} ms, max {max:.1} ms; spurious leader elections between runs: {spurious}"
    );
    times
}

/// The command line: `failover [--runs N] [--quiet-ms MS] [--compare etcd]`. `--help` prints the
/// usage; a bad argument prints the error and the usage, exit code 2 (clap's).
#[derive(clap::Parser)]
#[command(
    name = "failover",
    about = "Failover benchmark: kill -9 of the primary of a local three-node Keel cluster, N times; \
             optionally the same against a local three-member etcd"
)]
struct Args {
    /// Kills (each followed by a failover) to time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Milliseconds the cluster is left alone between runs (failovers then are spurious).
    #[arg(long, default_value_t = 3000)]
    quiet_ms: u64,
    /// Also measure a local three-member etcd (only `etcd` is supported).
    #[arg(long, value_parser = ["etcd"])]
    compare: Option<String>,
}

fn main() {
    let args: Args = keel_testkit::parse_args();
    let (runs, quiet_ms) = (args.runs as usize, args.quiet_ms);
    let compare_etcd = args.compare.is_some();
    // Before anything is started, so a missing etcd does not cost the Keel runs.
    let etcd = compare_etcd.then(etcd::find_etcd_or_exit);
    keel_raft::network::install_crypto_provider();
    let http = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let mut keel = keel_failover(&http, runs, quiet_ms);
    if let Some(bin) = etcd {
        let mut etcd = etcd_failover(&http, bin, runs, quiet_ms);
        let (keel_median, _, _) = stats(&mut keel);
        let (etcd_median, _, _) = stats(&mut etcd);
        println!("keel/etcd median ratio: {:.2}", keel_median / etcd_median);
    }
}
