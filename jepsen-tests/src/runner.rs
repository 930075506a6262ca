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
//! killed when the `Cluster` drops (panics included), and the namespaces are removed after it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{History, Op, OpFn, OpKind};
use crate::nemesis::{self, Planned, Step};
use crate::netns::NetLab;

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
}

/// One client's go-ahead: spaces its operations so that all clients together make about `rate`
/// per second, and ends the client when the run stops. A client that falls behind (slow answers, a
/// fault) does not burst to catch up.
struct Pacer {
    period: Option<Duration>,
    next: Instant,
    stop: Arc<AtomicBool>,
}

impl Pacer {
    fn new(rate: Option<f64>, clients: u64, stop: Arc<AtomicBool>) -> Pacer {
        let period = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(clients.max(1) as f64 / r));
        Pacer {
            period,
            next: Instant::now(),
            stop,
        }
    }

    /// Waits for this client's next slot (in steps of at most 100 ms, so a stop is noticed);
    /// `false` once the run stops.
    fn next_op(&mut self) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let Some(period) = self.period else { return true };
            let now = Instant::now();
            if now >= self.next {
                self.next = self.next.max(now) + period;
                return true;
            }
            std::thread::sleep((self.next - now).min(Duration::from_millis(100)));
        }
    }
}

/// xorshift64*: seeded, so a schedule replays.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The `libfaketime` build for multi-threaded programs, from Debian's `faketime` package.
pub fn faketime_lib() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        dirs.extend(rd.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|d| d.join("libfaketimeMT.so.1"))
        .find(|p| p.exists())
}

struct Node {
    id: u64,
    api: String,
    peer: String,
    data: PathBuf,
    log: PathBuf,
    /// Network namespace (netns mode).
    ns: Option<String>,
    child: Option<Child>,
    paused: bool,
    /// `FAKETIME` spec while the node runs under a skewed clock.
    faketime: Option<String>,
    /// After a wipe the node restarts empty with `--join URL` instead of `--peers`.
    join: Option<String>,
}

/// The processes of one run (and the namespaces they live in).
struct Cluster {
    keel: PathBuf,
    mode: String,
    min_acks: u64,
    peers: String,
    nodes: Vec<Node>,
    faketime_lib: Option<PathBuf>,
    /// Dropped after the processes are killed (fields drop after `Drop::drop`).
    lab: Option<NetLab>,
}

impl Cluster {
    fn start(cfg: &RunConfig, opts: &RunOptions, want_faketime: bool) -> Result<Cluster, String> {
        let netns = opts.netns;
        let faketime_lib = faketime_lib();
        if want_faketime && faketime_lib.is_none() {
            return Err("nemesis skew needs libfaketime (Debian package faketime: apt-get install faketime)".into());
        }
        let lab = if netns {
            Some(NetLab::new(cfg.nodes).map_err(|e| format!("network namespaces: {e}"))?)
        } else {
            None
        };
        let mut addrs = Vec::new();
        for i in 1..=cfg.nodes {
            match &lab {
                Some(lab) => addrs.push((format!("{}:7101", lab.addr(i)), format!("{}:7201", lab.addr(i)))),
                None => {
                    let free = || crate::ports::free_port("127.0.0.1");
                    addrs.push((format!("127.0.0.1:{}", free()), format!("127.0.0.1:{}", free())));
                }
            }
        }
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={}", i + 1, a.1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            keel: cfg.keel.clone(),
            mode: cfg.mode.clone(),
            min_acks: opts.min_acks.unwrap_or(cfg.nodes / 2).max(1),
            peers,
            nodes: Vec::new(),
            faketime_lib,
            lab,
        };
        for (i, (api, peer)) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            c.nodes.push(Node {
                id,
                api,
                peer,
                data: cfg.out.join(format!("data/n{id}")),
                log: cfg.out.join(format!("n{id}.log")),
                ns: c.lab.as_ref().map(|l| l.ns(id)),
                child: None,
                paused: false,
                faketime: None,
                join: None,
            });
        }
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = match &n.ns {
            // `ip netns exec` execs the program in place: the child's pid is keel's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.keel);
                c
            }
            None => Command::new(&self.keel),
        };
        cmd.args([
            "serve",
            "--id",
            &n.id.to_string(),
            "--api-addr",
            &n.api,
            "--peer-addr",
            &n.peer,
            "--data-dir",
            &n.data.display().to_string(),
            "--replication-mode",
            &self.mode,
        ]);
        if self.mode == "sync" {
            cmd.args(["--min-acks", &self.min_acks.to_string()]);
        }
        match &n.join {
            Some(url) => cmd.args(["--join", url]),
            None => cmd.args(["--peers", &self.peers]),
        };
        if let (Some(spec), Some(lib)) = (&n.faketime, &self.faketime_lib) {
            cmd.env("LD_PRELOAD", lib).env("FAKETIME", spec);
        }
        let _ = writeln!(
            &log,
            "----- keel-jepsen: start node {}{}{} -----",
            n.id,
            n.faketime
                .as_ref()
                .map(|s| format!(" under FAKETIME={s:?}"))
                .unwrap_or_default(),
            n.join.as_ref().map(|u| format!(" joining via {u}")).unwrap_or_default()
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.keel.display()))?;
        let n = &mut self.nodes[i];
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.nodes[i].child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    fn kill(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.nodes[i].paused = true;
    }

    fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
    }

    /// Every process running and resumed, no network fault, no skewed clock.
    fn heal_all(&mut self) -> Result<(), String> {
        if let Some(lab) = &self.lab {
            lab.heal();
        }
        for i in 0..self.nodes.len() {
            self.resume(i);
            if self.nodes[i].faketime.take().is_some() {
                self.kill(i);
            }
            if self.nodes[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    fn apis(&self) -> Vec<(u64, String)> {
        self.nodes.iter().map(|n| (n.id, n.api.clone())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn new_http() -> reqwest::blocking::Client {
    // reqwest is built without a default TLS provider (workspace choice: ring); the harness
    // speaks plain HTTP, but the client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Which node answers 200 on /primary, per node.
fn primaries(http: &reqwest::blocking::Client, apis: &[(u64, String)]) -> Vec<u64> {
    apis.iter()
        .filter(|(_, a)| {
            http.get(format!("http://{a}/primary"))
                .timeout(Duration::from_millis(300))
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// A recorder shared by clients: one monotonic clock, one index counter.
struct Recorder {
    start: Instant,
    index: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        process: u64,
        kind: OpKind,
        f: OpFn,
        key: &str,
        value: Value,
        node: Option<u64>,
        epoch: Option<u64>,
        error: Option<String>,
    ) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        // Index and time are taken under the lock so file order matches both.
        let index = self.index.fetch_add(1, Ordering::Relaxed);
        ops.push(Op {
            index,
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time_ns: self.start.elapsed().as_nanos() as u64,
            node,
            epoch,
            error,
        });
    }
}

/// How a failed request is recorded: `Fail` only when it certainly had no effect.
fn classify(status: Option<u16>, body: &Value, transport: Option<&reqwest::Error>) -> (OpKind, String) {
    if let Some(e) = transport {
        // A connection that never opened carried no request; anything later is ambiguous.
        return if e.is_connect() {
            (OpKind::Fail, format!("connect: {e}"))
        } else {
            (OpKind::Info, format!("{e}"))
        };
    }
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    match (status, code.as_str()) {
        (Some(409), _) => (OpKind::Fail, code),
        (Some(503), "no_lease" | "no_primary" | "not_primary" | "stale_epoch" | "shutting_down") => {
            (OpKind::Fail, code)
        }
        (Some(400) | Some(404) | Some(413), _) => (OpKind::Fail, code),
        _ => (OpKind::Info, format!("{} {code}", status.unwrap_or(0))),
    }
}

/// How a write's answer is recorded: kind, error text, and the epoch it was acknowledged in.
fn outcome(r: reqwest::Result<reqwest::blocking::Response>) -> (OpKind, Option<String>, Option<u64>) {
    match r {
        Ok(r) if r.status().is_success() => (OpKind::Ok, None, epoch_of(r.headers())),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap_or(Value::Null);
            let (k, why) = classify(Some(status), &body, None);
            (k, Some(why), None)
        }
        Err(e) => {
            let (k, why) = classify(None, &Value::Null, Some(&e));
            (k, Some(why), None)
        }
    }
}

fn epoch_of(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get("keel-epoch")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Read a key through the primary: (raw value, version, epoch); an absent key is `("", 0, _)`.
#[allow(clippy::type_complexity)]
fn read(
    http: &reqwest::blocking::Client,
    api: &str,
    key: &str,
) -> Result<(String, u64, Option<u64>), (OpKind, String)> {
    match http.get(format!("http://{api}/v1/kv/{key}?consistency=primary")).send() {
        Ok(r) => {
            let status = r.status().as_u16();
            let h = r.headers().clone();
            let version = h
                .get("keel-version")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let text = r.text().unwrap_or_default();
            match status {
                200 => Ok((text, version, epoch_of(&h))),
                404 if serde_json::from_str::<Value>(&text).is_ok_and(|v| v["error"]["code"] == "not_found") => {
                    Ok((String::new(), 0, epoch_of(&h)))
                }
                _ => {
                    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    Err(classify(Some(status), &body, None))
                }
            }
        }
        Err(e) => Err(classify(None, &Value::Null, Some(&e))),
    }
}

/// The coordinator (Raft leader) most nodes name in `/v1/status`.
fn coordinator(http: &reqwest::blocking::Client, apis: &[(u64, String)]) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, a) in apis {
        if let Some(l) = http
            .get(format!("http://{a}/v1/status"))
            .timeout(Duration::from_millis(300))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["raft"]["leader"].as_u64())
        {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
}

fn client(
    process: u64,
    cfg: RunConfig,
    apis: Vec<(u64, String)>,
    rec: Arc<Recorder>,
    mut pacer: Pacer,
    values: Arc<AtomicU64>,
) {
    let http = new_http();
    let mut rng = Rng::new(cfg.seed ^ (process + 1).wrapping_mul(0x1234_5678));
    while pacer.next_op() {
        let key = format!("r{}", rng.below(cfg.keys));
        let (node, api) = apis[rng.below(apis.len() as u64) as usize].clone();
        match rng.below(3) {
            0 => {
                rec.record(
                    process,
                    OpKind::Invoke,
                    OpFn::Read,
                    &key,
                    Value::Null,
                    Some(node),
                    None,
                    None,
                );
                match read(&http, &api, &key) {
                    Ok((v, _, e)) => {
                        let v = v.parse::<u64>().map(Value::from).unwrap_or(Value::Null);
                        rec.record(process, OpKind::Ok, OpFn::Read, &key, v, Some(node), e, None)
                    }
                    // A failed read has no effect either way.
                    Err((_, why)) => rec.record(
                        process,
                        OpKind::Fail,
                        OpFn::Read,
                        &key,
                        Value::Null,
                        Some(node),
                        None,
                        Some(why),
                    ),
                }
            }
            1 => {
                let v = values.fetch_add(1, Ordering::Relaxed);
                rec.record(
                    process,
                    OpKind::Invoke,
                    OpFn::Write,
                    &key,
                    json!(v),
                    Some(node),
                    None,
                    None,
                );
                let r = http.put(format!("http://{api}/v1/kv/{key}")).body(v.to_string()).send();
                let (kind, err, epoch) = outcome(r);
                rec.record(process, kind, OpFn::Write, &key, json!(v), Some(node), epoch, err);
            }
            _ => {
                // cas [from, to]: read the current value and version through the primary, then
                // compare-and-set on that version. The op's interval covers both requests.
                let to = values.fetch_add(1, Ordering::Relaxed);
                // The `from` is only known after the read; record the invoke with a placeholder
                // and rewrite its value once known (the invoke's time stays the earliest).
                rec.record(
                    process,
                    OpKind::Invoke,
                    OpFn::Cas,
                    &key,
                    json!([null, to]),
                    Some(node),
                    None,
                    None,
                );
                let fix_invoke = |from: &Value| {
                    let mut ops = rec.ops.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(op) = ops
                        .iter_mut()
                        .rev()
                        .find(|o| o.process == process && o.kind == OpKind::Invoke)
                    {
                        op.value = json!([from, to]);
                    }
                };
                match read(&http, &api, &key) {
                    Err((_, why)) => {
                        fix_invoke(&Value::Null);
                        rec.record(
                            process,
                            OpKind::Fail,
                            OpFn::Cas,
                            &key,
                            json!([null, to]),
                            Some(node),
                            None,
                            Some(format!("read: {why}")),
                        );
                    }
                    Ok((from, version, _)) => {
                        let from = from.parse::<u64>().map(Value::from).unwrap_or(Value::Null);
                        fix_invoke(&from);
                        let r = http
                            .post(format!("http://{api}/v1/kv/{key}/cas?version={version}"))
                            .body(to.to_string())
                            .send();
                        let (kind, err, epoch) = outcome(r);
                        rec.record(
                            process,
                            kind,
                            OpFn::Cas,
                            &key,
                            json!([from, to]),
                            Some(node),
                            epoch,
                            err,
                        );
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
}

/// Appends per list before a client moves that slot on to a fresh key (keeps lists and the
/// checker's work short, as Jepsen's append workload does).
const APPENDS_PER_KEY: u64 = 100;

/// Parse a stored list: the value of an append key is a JSON array of numbers.
fn parse_list(text: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(v)) => Ok(v),
        _ => Err(format!(
            "stored value is not a JSON list: {:?}",
            text.chars().take(80).collect::<String>()
        )),
    }
}

/// One append: read the list and its version through the primary, then compare-and-set the
/// list with the element added on that version. A 409 means the CAS certainly did not apply,
/// so it is retried (up to 5 times) within the same operation; any other answer ends it with
/// that answer's outcome (`info` when it may have applied).
fn append_once(
    http: &reqwest::blocking::Client,
    api: &str,
    key: &str,
    elem: u64,
) -> (OpKind, Option<String>, Option<u64>) {
    for _ in 0..5 {
        let (list, version) = match read(http, api, key) {
            Ok((_, 0, _)) => (Vec::new(), 0),
            Ok((text, version, _)) => match parse_list(&text) {
                Ok(l) => (l, version),
                Err(e) => return (OpKind::Fail, Some(e), None),
            },
            // Nothing was written yet in this op: a failed read is a failed append.
            Err((_, why)) => return (OpKind::Fail, Some(format!("read: {why}")), None),
        };
        let mut list = list;
        list.push(json!(elem));
        let r = http
            .post(format!("http://{api}/v1/kv/{key}/cas?version={version}"))
            .body(Value::Array(list).to_string())
            .send();
        match r {
            Ok(r) if r.status().as_u16() == 409 => continue,
            r => return outcome(r),
        }
    }
    (OpKind::Fail, Some("cas conflict 5 times".into()), None)
}

fn append_client(
    process: u64,
    cfg: RunConfig,
    apis: Vec<(u64, String)>,
    rec: Arc<Recorder>,
    mut pacer: Pacer,
    counts: Arc<Vec<AtomicU64>>,
    bad_values: Arc<AtomicU64>,
) {
    let http = new_http();
    let mut rng = Rng::new(cfg.seed ^ (process + 1).wrapping_mul(0x8765_4321));
    // Elements are unique across the run: process in the high bits, a counter in the low.
    let mut next = 0u64;
    while pacer.next_op() {
        let slot = rng.below(cfg.keys) as usize;
        let (node, api) = apis[rng.below(apis.len() as u64) as usize].clone();
        if rng.below(2) == 0 {
            let generation = counts[slot].fetch_add(1, Ordering::Relaxed) / APPENDS_PER_KEY;
            let key = format!("l{slot}-{generation}");
            next += 1;
            let elem = (process << 32) | next;
            rec.record(
                process,
                OpKind::Invoke,
                OpFn::Append,
                &key,
                json!(elem),
                Some(node),
                None,
                None,
            );
            let (kind, err, epoch) = append_once(&http, &api, &key, elem);
            rec.record(process, kind, OpFn::Append, &key, json!(elem), Some(node), epoch, err);
        } else {
            let generation = counts[slot].load(Ordering::Relaxed) / APPENDS_PER_KEY;
            let key = format!("l{slot}-{generation}");
            rec.record(
                process,
                OpKind::Invoke,
                OpFn::ReadList,
                &key,
                Value::Null,
                Some(node),
                None,
                None,
            );
            match read(&http, &api, &key) {
                Ok((text, version, e)) => {
                    let list = if version == 0 {
                        Ok(Vec::new())
                    } else {
                        parse_list(&text)
                    };
                    match list {
                        Ok(l) => rec.record(
                            process,
                            OpKind::Ok,
                            OpFn::ReadList,
                            &key,
                            Value::Array(l),
                            Some(node),
                            e,
                            None,
                        ),
                        // Only this harness writes these keys: a value that is not a list is
                        // corruption. Counted (it fails the run), recorded as info.
                        Err(why) => {
                            bad_values.fetch_add(1, Ordering::Relaxed);
                            rec.record(
                                process,
                                OpKind::Info,
                                OpFn::ReadList,
                                &key,
                                Value::Null,
                                Some(node),
                                e,
                                Some(why),
                            )
                        }
                    }
                }
                Err((_, why)) => rec.record(
                    process,
                    OpKind::Fail,
                    OpFn::ReadList,
                    &key,
                    Value::Null,
                    Some(node),
                    None,
                    Some(why),
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
}

/// Outcome of a run, also written as `summary.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub out: PathBuf,
    pub seed: u64,
    pub check: crate::Report,
    pub primary_samples: u64,
    pub double_primary_rounds: u64,
    pub epochs_monotonic: bool,
    pub converged: bool,
    /// Fault windows: `kind`, `variant`, `nodes` (and `node`, the first of them), `start_ms`,
    /// `end_ms`, `was_primary`, `detail`.
    pub faults: Vec<Value>,
    pub failover_ms: Vec<u64>,
    /// Append workload: reads whose stored value was not a list (corruption).
    pub bad_values: u64,
}

impl RunReport {
    /// Every checker passed (the linearizability verdict may be Unknown only if bounded).
    pub fn ok(&self) -> bool {
        self.check.verdict == crate::Verdict::Valid
            && self.double_primary_rounds == 0
            && self.epochs_monotonic
            && self.converged
            && self.bad_values == 0
    }
}

/// A fault in force, and how to undo it.
struct Active {
    kind: String,
    variant: String,
    nodes: Vec<u64>,
    start_ms: u64,
    detail: String,
    was_primary: bool,
    heal: Heal,
}

enum Heal {
    Nothing,
    /// Start these (0-based) nodes again.
    Restart(Vec<usize>),
    /// SIGCONT these nodes.
    Resume(Vec<usize>),
    /// Remove every network fault.
    Net,
    /// Restart the node without the fake clock.
    Unskew(usize),
    /// Promote the rejoined node back to voter.
    Promote(usize),
}

/// Shared between the nemesis and the sampler.
struct Shared {
    /// Nodes whose data dir was wiped: the sampler forgets their last epoch.
    wiped: Mutex<BTreeSet<u64>>,
}

struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    http: reqwest::blocking::Client,
    apis: Vec<(u64, String)>,
    opts: &'a RunOptions,
    shared: Arc<Shared>,
    start: Instant,
    /// Length of the current step's fault window.
    step_for: Duration,
}

/// Deterministic choice of `k` items from `from` driven by `pick`.
fn choose(pick: u64, from: &[u64], k: usize) -> Vec<u64> {
    let mut v = from.to_vec();
    let mut rng = Rng::new(pick);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v.truncate(k);
    v
}

impl Nemesis<'_> {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn primary(&self) -> Option<u64> {
        primaries(&self.http, &self.apis).first().copied()
    }

    fn ids(&self) -> Vec<u64> {
        self.apis.iter().map(|(id, _)| *id).collect()
    }

    /// A node not yet hit in this step, chosen by `pick`, preferring ones outside `avoid`.
    fn free_node(&self, pick: u64, taken: &BTreeSet<u64>, avoid: &[u64]) -> Option<u64> {
        let free: Vec<u64> = self.ids().into_iter().filter(|i| !taken.contains(i)).collect();
        let preferred: Vec<u64> = free.iter().copied().filter(|i| !avoid.contains(i)).collect();
        let from = if preferred.is_empty() { free } else { preferred };
        choose(pick, &from, 1).first().copied()
    }

    fn url_of_other(&self, not: u64) -> Option<String> {
        self.apis
            .iter()
            .filter(|(id, _)| *id != not && self.cluster.nodes[(*id - 1) as usize].child.is_some())
            .find(|(id, _)| !self.cluster.nodes[(*id - 1) as usize].paused)
            .map(|(_, a)| format!("http://{a}"))
    }

    /// Start one planned fault. `None` when it cannot apply now (recorded as skipped).
    fn apply(&mut self, f: &Planned, taken: &mut BTreeSet<u64>) -> Result<Active, String> {
        let primary = self.primary();
        let n = self.apis.len();
        let mut a = Active {
            kind: f.kind.clone(),
            variant: f.variant.clone(),
            nodes: Vec::new(),
            start_ms: self.ms(),
            detail: String::new(),
            was_primary: false,
            heal: Heal::Nothing,
        };
        match f.kind.as_str() {
            "kill" | "kill-primary" => {
                a.nodes = match (f.kind.as_str(), f.variant.as_str()) {
                    ("kill-primary", _) => primary.filter(|p| !taken.contains(p)).into_iter().collect(),
                    (_, "majority") => choose(f.pick, &self.ids(), n / 2 + 1),
                    _ => self.free_node(f.pick, taken, &[]).into_iter().collect(),
                };
                if a.nodes.is_empty() {
                    a.detail = "skipped: no primary to kill".into();
                }
                for id in &a.nodes {
                    self.cluster.kill((*id - 1) as usize);
                }
                a.heal = Heal::Restart(a.nodes.iter().map(|id| (*id - 1) as usize).collect());
            }
            "pause" => {
                let target = match (f.variant.as_str(), primary) {
                    ("primary", Some(p)) if !taken.contains(&p) => Some(p),
                    _ => self.free_node(f.pick, taken, &[]),
                };
                a.nodes = target.into_iter().collect();
                for id in &a.nodes {
                    self.cluster.pause((*id - 1) as usize);
                }
                a.heal = Heal::Resume(a.nodes.iter().map(|id| (*id - 1) as usize).collect());
            }
            "partition" => {
                let lab = self.cluster.lab.as_ref().ok_or("partition needs --netns")?;
                let all = self.ids();
                match f.variant.as_str() {
                    "isolate-primary" | "isolate-coordinator" => {
                        let target = if f.variant == "isolate-primary" {
                            primary
                        } else {
                            coordinator(&self.http, &self.apis)
                        };
                        let target = target.or_else(|| choose(f.pick, &all, 1).first().copied());
                        if let Some(t) = target {
                            lab.isolate(t);
                            a.nodes = vec![t];
                            a.detail = format!("n{t} cut off from every other node");
                        }
                    }
                    "halves" | "primary-minority" => {
                        // primary-minority: the primary and n/2 - 1 others on the small side.
                        let minority: BTreeSet<u64> = match primary.filter(|_| f.variant == "primary-minority") {
                            Some(p) => {
                                let others: Vec<u64> = all.iter().copied().filter(|i| *i != p).collect();
                                let mut m = choose(f.pick, &others, n / 2 - 1);
                                m.push(p);
                                m.into_iter().collect()
                            }
                            None => choose(f.pick, &all, n / 2).into_iter().collect(),
                        };
                        let majority: BTreeSet<u64> = all.iter().copied().filter(|i| !minority.contains(i)).collect();
                        lab.split(&minority, &majority);
                        a.nodes = minority.iter().copied().collect();
                        a.detail = format!("{minority:?} | {majority:?}");
                    }
                    _ => {
                        // bridge: two halves that both still see one middle node.
                        let order = choose(f.pick, &all, n);
                        let middle = order[0];
                        let rest = &order[1..];
                        let left: BTreeSet<u64> = rest[..rest.len() / 2].iter().copied().collect();
                        let right: BTreeSet<u64> = rest[rest.len() / 2..].iter().copied().collect();
                        lab.split(&left, &right);
                        a.nodes = left.iter().copied().collect();
                        a.detail = format!("{left:?} | {right:?}, bridged by n{middle}");
                    }
                }
                a.heal = Heal::Net;
            }
            "netem" => {
                let lab = self.cluster.lab.as_ref().ok_or("netem needs --netns")?;
                let target = self.free_node(f.pick, taken, &[]).ok_or("no node")?;
                let loss = [5, 10, 20][(f.pick >> 8) as usize % 3];
                let delay = [20, 50, 100][(f.pick >> 16) as usize % 3];
                let (delay, loss) = match f.variant.as_str() {
                    "loss" => (0, loss),
                    "delay" => (delay, 0),
                    _ => (delay, loss),
                };
                let how = lab.degrade(target, delay, loss)?;
                a.nodes = vec![target];
                a.detail = format!("{how:?}");
                a.heal = Heal::Net;
            }
            "skew" => {
                let target = self.free_node(f.pick, taken, &[]).ok_or("no node")?;
                let rate = self
                    .opts
                    .skew_rate
                    .unwrap_or(nemesis::SKEW_RATES[(f.pick >> 8) as usize % nemesis::SKEW_RATES.len()]);
                let offset = ((f.pick >> 16) % 601) as i64 - 300;
                let spec = format!("{offset:+}s x{rate}");
                let i = (target - 1) as usize;
                self.cluster.kill(i);
                self.cluster.nodes[i].faketime = Some(spec.clone());
                self.cluster.spawn(i)?;
                a.nodes = vec![target];
                // Make the skewed node the primary, so its drifting clock measures the lease.
                let switched = self.switch_to(target, Duration::from_secs(8));
                a.detail = format!("FAKETIME={spec:?}; switchover to it: {switched}");
                a.heal = Heal::Unskew(i);
            }
            "wipe" => {
                let coord = coordinator(&self.http, &self.apis);
                let avoid: Vec<u64> = primary.into_iter().chain(coord).collect();
                let target = self.free_node(f.pick, taken, &avoid).ok_or("no node")?;
                if avoid.contains(&target) {
                    a.detail = "skipped: no node is neither primary nor coordinator".into();
                } else {
                    a.nodes = vec![target];
                    a.detail = self.wipe(target)?;
                    if !a.detail.starts_with("skipped") {
                        a.heal = Heal::Promote((target - 1) as usize);
                    }
                }
            }
            other => return Err(format!("unknown nemesis {other:?}")),
        }
        taken.extend(a.nodes.iter().copied());
        // A primary that is killed, paused, restarted or cut off from the majority.
        a.was_primary = primary.is_some_and(|p| {
            a.nodes.contains(&p)
                && match a.kind.as_str() {
                    "partition" => a.variant != "bridge",
                    "netem" | "wipe" => false,
                    _ => true,
                }
        });
        Ok(a)
    }

    /// `POST /v1/switchover {"to": id}` until it succeeds or `within` passes; what happened.
    fn switch_to(&self, id: u64, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            let Some(url) = self.url_of_other(id) else { break };
            match self
                .http
                .post(format!("{url}/v1/switchover"))
                .timeout(Duration::from_secs(5))
                .json(&json!({ "to": id }))
                .send()
            {
                Ok(r) if r.status().is_success() => return "done".into(),
                Ok(r) => {
                    let code = r.status().as_u16();
                    let body = r.text().unwrap_or_default();
                    // An earlier attempt whose answer was lost, or a promotion of its own.
                    if body.contains("already the primary") {
                        return "done (already primary)".into();
                    }
                    last = format!("{code} {}", body.chars().take(160).collect::<String>());
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        format!("not done ({last})")
    }

    /// Kill the node, remove it from the membership, wipe its data dir, and start it empty
    /// with `--join`. openraft (without `loosen-follower-log-revert`) asserts when a node that
    /// the leader already replicated to comes back with an empty log under the same id, so the
    /// member is removed first: the leader drops its replication progress, and the rejoining
    /// node is added as a new learner (promoted back to voter when the fault heals).
    fn wipe(&mut self, id: u64) -> Result<String, String> {
        let i = (id - 1) as usize;
        self.cluster.kill(i);
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut last = String::new();
        let removed = loop {
            if Instant::now() > deadline {
                break false;
            }
            let Some(url) = self.url_of_other(id) else { break false };
            match self
                .http
                .delete(format!("{url}/v1/members/{id}"))
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(r) if r.status().is_success() => break true,
                // The member is already gone (an earlier wipe whose rejoin never completed).
                Ok(r) if r.status().as_u16() == 404 => break true,
                Ok(r) if r.status().as_u16() == 409 => {
                    last = r.text().unwrap_or_default();
                    break false;
                }
                Ok(r) => last = format!("{} {}", r.status().as_u16(), r.text().unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if !removed {
            // Not removed: restart it as it was (wiping it now would trip the assertion).
            self.cluster.spawn(i)?;
            return Ok(format!(
                "skipped: could not remove member: {}",
                last.chars().take(200).collect::<String>()
            ));
        }
        if self.cluster.nodes[i].data.exists() {
            std::fs::remove_dir_all(&self.cluster.nodes[i].data)
                .map_err(|e| format!("wipe {}: {e}", self.cluster.nodes[i].data.display()))?;
        }
        self.shared.wiped.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        let join = self.url_of_other(id).ok_or("no live member to join through")?;
        self.cluster.nodes[i].join = Some(join.clone());
        self.cluster.spawn(i)?;
        Ok(format!("removed, data dir wiped, rejoining via {join}"))
    }

    /// Promote node `i` back to voter, retrying while it catches up.
    fn promote(&self, i: usize, within: Duration) -> String {
        let id = self.cluster.nodes[i].id;
        let deadline = Instant::now() + within;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            if let Some(url) = self.url_of_other(id) {
                match self
                    .http
                    .post(format!("{url}/v1/members/{id}/promote"))
                    .timeout(Duration::from_secs(12))
                    .send()
                {
                    Ok(r) if r.status().is_success() => return "promoted".into(),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().unwrap_or_default();
                        if body.contains("already_voter") {
                            return "promoted".into();
                        }
                        last = format!("{status} {}", body.chars().take(160).collect::<String>());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        format!("not promoted ({last})")
    }

    fn heal(&mut self, a: &mut Active) -> Result<(), String> {
        match std::mem::replace(&mut a.heal, Heal::Nothing) {
            Heal::Nothing => {}
            Heal::Restart(v) => {
                for i in v {
                    if self.cluster.nodes[i].child.is_none() {
                        self.cluster.spawn(i)?;
                    }
                }
            }
            Heal::Resume(v) => {
                for i in v {
                    self.cluster.resume(i);
                }
            }
            Heal::Net => {
                if let Some(lab) = &self.cluster.lab {
                    lab.heal();
                }
            }
            Heal::Unskew(i) => {
                self.cluster.kill(i);
                self.cluster.nodes[i].faketime = None;
                self.cluster.spawn(i)?;
            }
            Heal::Promote(i) => {
                // Bounded by the step; a promotion still missing is retried after the run.
                let r = self.promote(i, self.step_for.max(Duration::from_secs(3)));
                a.detail.push_str(&format!("; {r}"));
            }
        }
        Ok(())
    }
}

/// Run one test in loopback mode with the register workload (see [`run_with`]).
pub fn run(cfg: &RunConfig) -> Result<RunReport, String> {
    run_with(cfg, &RunOptions::default())
}

/// Run one test: start the cluster, run clients and the nemesis schedule for `time`, heal
/// every fault, wait `quiet`, check, and write the report directory.
pub fn run_with(cfg: &RunConfig, opts: &RunOptions) -> Result<RunReport, String> {
    let kinds = nemesis::parse_kinds(&cfg.nemesis, opts.netns)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("create {}: {e}", cfg.out.display()))?;
    // A report directory used before: its nodes' data (whose membership names the old run's
    // addresses) and logs go; the cluster always starts fresh.
    let data = cfg.out.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("remove old {}: {e}", data.display()))?;
    }
    for id in 1..=cfg.nodes {
        let _ = std::fs::remove_file(cfg.out.join(format!("n{id}.log")));
    }
    let steps = nemesis::schedule(
        &kinds,
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
    let mut cluster = Cluster::start(cfg, opts, kinds.iter().any(|k| k == "skew"))?;
    let http = new_http();
    let apis = cluster.apis();
    let deadline = Instant::now() + Duration::from_secs(60);
    while primaries(&http, &apis).len() != 1 {
        if Instant::now() > deadline {
            return Err("no primary within 60 s of start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        index: AtomicU64::new(0),
        ops: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let bad_values = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = match opts.workload {
        Workload::Register => {
            let values = Arc::new(AtomicU64::new(1));
            (0..cfg.clients)
                .map(|p| {
                    let (cfg, apis, rec, stop, values) =
                        (cfg.clone(), apis.clone(), rec.clone(), stop.clone(), values.clone());
                    let pacer = Pacer::new(opts.rate, cfg.clients, stop);
                    std::thread::spawn(move || client(p, cfg, apis, rec, pacer, values))
                })
                .collect()
        }
        Workload::Append => {
            let counts: Arc<Vec<AtomicU64>> = Arc::new((0..cfg.keys).map(|_| AtomicU64::new(0)).collect());
            (0..cfg.clients)
                .map(|p| {
                    let (cfg, apis, rec, stop, counts, bad) = (
                        cfg.clone(),
                        apis.clone(),
                        rec.clone(),
                        stop.clone(),
                        counts.clone(),
                        bad_values.clone(),
                    );
                    let pacer = Pacer::new(opts.rate, cfg.clients, stop);
                    std::thread::spawn(move || append_client(p, cfg, apis, rec, pacer, counts, bad))
                })
                .collect()
        }
    };
    let shared = Arc::new(Shared {
        wiped: Mutex::new(BTreeSet::new()),
    });
    // The /primary sampler: never two 200s in one round; epochs never go back.
    let sampler = {
        let (apis, stop, rec, shared) = (apis.clone(), stop.clone(), rec.clone(), shared.clone());
        std::thread::spawn(move || {
            let http = new_http();
            let (mut rounds, mut doubles, mut monotonic) = (0u64, 0u64, true);
            // Per node: the epoch it reports must never go down (restarts included: the
            // cluster state is durable). A wiped node starts over, so it is forgotten.
            let mut last_epoch: BTreeMap<u64, u64> = Default::default();
            let mut timeline: Vec<(u64, Vec<u64>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for id in std::mem::take(&mut *shared.wiped.lock().unwrap_or_else(|e| e.into_inner())) {
                    last_epoch.remove(&id);
                }
                let p = primaries(&http, &apis);
                rounds += 1;
                if p.len() > 1 {
                    doubles += 1;
                }
                for (id, a) in &apis {
                    if let Ok(r) = http
                        .get(format!("http://{a}/v1/status"))
                        .timeout(Duration::from_millis(300))
                        .send()
                    {
                        if let Some(e) = r.json::<Value>().ok().and_then(|v| v["primary"]["epoch"].as_u64()) {
                            let prev = last_epoch.insert(*id, e).unwrap_or(0);
                            if e < prev {
                                monotonic = false;
                            }
                        }
                    }
                }
                if timeline.last().is_none_or(|(_, last)| *last != p) {
                    timeline.push((rec.start.elapsed().as_millis() as u64, p));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (rounds, doubles, monotonic, timeline)
        })
    };
    // The nemesis, on this thread.
    let mut faults = Vec::new();
    let mut failover_ms = Vec::new();
    let end = rec.start + cfg.time;
    let result = run_schedule(
        &mut Nemesis {
            cluster: &mut cluster,
            http: new_http(),
            apis: apis.clone(),
            opts,
            shared: shared.clone(),
            start: rec.start,
            step_for: cfg.fault_for,
        },
        &steps,
        end,
        &mut faults,
        &mut failover_ms,
    );
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (rounds, doubles, monotonic, timeline) = sampler.join().map_err(|_| "sampler panicked")?;
    result?;
    cluster.heal_all()?;
    // A wiped node whose promotion did not complete in its window is promoted now.
    {
        let nem = Nemesis {
            cluster: &mut cluster,
            http: new_http(),
            apis: apis.clone(),
            opts,
            shared: shared.clone(),
            start: rec.start,
            step_for: cfg.fault_for,
        };
        for f in faults.iter_mut().filter(|f| f["kind"] == "wipe") {
            if f["detail"].as_str().is_some_and(|d| d.contains("not promoted")) {
                let i = (f["node"].as_u64().unwrap_or(1) - 1) as usize;
                let r = nem.promote(i, Duration::from_secs(30));
                f["detail"] = json!(format!("{}; after the run: {r}", f["detail"].as_str().unwrap_or("")));
            }
        }
    }
    // Quiet period, then every node must hold the same contents.
    std::thread::sleep(cfg.quiet);
    let converged = converge(&http, &apis, Duration::from_secs(30));

    let ops = std::mem::take(&mut *rec.ops.lock().unwrap_or_else(|e| e.into_inner()));
    let history = History::new(ops);
    let history_path = cfg.out.join("history.jsonl");
    history.save(&history_path).map_err(|e| e.to_string())?;
    let check = crate::check(&history).map_err(|e| e.to_string())?;
    let report = RunReport {
        out: cfg.out.clone(),
        seed: cfg.seed,
        check,
        primary_samples: rounds,
        double_primary_rounds: doubles,
        epochs_monotonic: monotonic,
        converged,
        faults,
        failover_ms,
        bad_values: bad_values.load(Ordering::Relaxed),
    };
    write_report(cfg, &report, &history, &timeline)?;
    drop(cluster);
    Ok(report)
}

/// Play the schedule: each step's faults start together, the failover (if the primary was hit)
/// is timed, and the faults are healed together at the end of the step.
fn run_schedule(
    nem: &mut Nemesis,
    steps: &[Step],
    end: Instant,
    faults: &mut Vec<Value>,
    failover_ms: &mut Vec<u64>,
) -> Result<(), String> {
    for step in steps {
        let at = nem.start + Duration::from_millis(step.at_ms);
        // A slow step (a skew's switchover, a wipe's rejoin) may push later ones past the end of
        // the run: those are dropped, never run after the clients stopped.
        if Instant::now() + Duration::from_millis(step.for_ms) > end {
            break;
        }
        nem.step_for = Duration::from_millis(step.for_ms);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t0 = Instant::now();
        let mut taken = BTreeSet::new();
        let mut active = Vec::new();
        for f in &step.faults {
            active.push(nem.apply(f, &mut taken)?);
        }
        let hit: Vec<u64> = active
            .iter()
            .filter(|a| a.was_primary)
            .flat_map(|a| a.nodes.iter().copied())
            .collect();
        let until = at + Duration::from_millis(step.for_ms);
        if !hit.is_empty() {
            let others: Vec<(u64, String)> = nem.apis.iter().filter(|(id, _)| !hit.contains(id)).cloned().collect();
            while Instant::now() < until {
                if primaries(&nem.http, &others).len() == 1 {
                    failover_ms.push(t0.elapsed().as_millis() as u64);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        for mut a in active {
            nem.heal(&mut a)?;
            faults.push(json!({
                "kind": a.kind,
                "variant": a.variant,
                "node": a.nodes.first(),
                "nodes": a.nodes,
                "start_ms": a.start_ms,
                "end_ms": nem.ms(),
                "was_primary": a.was_primary,
                "detail": a.detail,
            }));
        }
    }
    Ok(())
}

/// Wait until every node lists the same keys with the same versions.
fn converge(http: &reqwest::blocking::Client, apis: &[(u64, String)], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<Option<Value>> = apis
            .iter()
            .map(|(_, a)| {
                http.get(format!("http://{a}/v1/kv?limit=1000"))
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .map(|v| v["items"].clone())
            })
            .collect();
        if views.iter().all(|v| v.is_some()) && views.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shading colour of a fault kind in the latency plot.
fn fault_color(kind: &str) -> &'static str {
    match kind {
        "kill" => "#f4c7c3",
        "kill-primary" => "#f19999",
        "pause" => "#fce8b2",
        "partition" => "#c6dafc",
        "netem" => "#d7c6fc",
        "skew" => "#b7e1cd",
        "wipe" => "#d9d9d9",
        _ => "#eeeeee",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// `summary.json`, `latency.svg` (latency over time, fault windows shaded and labelled by kind,
/// primary timeline), `faults.jsonl`, and `index.html` linking them.
fn write_report(cfg: &RunConfig, r: &RunReport, h: &History, timeline: &[(u64, Vec<u64>)]) -> Result<(), String> {
    let w = |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()));
    w(
        &cfg.out.join("summary.json"),
        &serde_json::to_string_pretty(r).unwrap_or_default(),
    )?;
    // Latency points: completion time vs latency, per outcome.
    let pairs = h.pair().map_err(|e| e.to_string())?;
    let last_fault = r.faults.iter().filter_map(|f| f["end_ms"].as_f64()).fold(0.0, f64::max);
    let total_ms = (cfg.time.as_millis().max(1) as f64).max(last_fault) + cfg.quiet.as_millis() as f64;
    let (width, height, top) = (1000.0, 320.0, 56.0);
    let max_lat = pairs
        .iter()
        .filter_map(|p| p.return_ns().map(|c| (c - p.invoke_ns) as f64 / 1e6))
        .fold(10.0f64, f64::max)
        .min(5000.0);
    let x = |ms: f64| 50.0 + ms / total_ms * (width - 60.0);
    let y = |lat: f64| top + height - (lat.min(max_lat) / max_lat) * height;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>\
         <rect width='100%' height='100%' fill='white'/>",
        width,
        height + top + 110.0
    );
    for (k, f) in r.faults.iter().enumerate() {
        let (s, e) = (
            f["start_ms"].as_f64().unwrap_or(0.0),
            f["end_ms"].as_f64().unwrap_or(0.0),
        );
        let kind = f["kind"].as_str().unwrap_or("");
        let nodes: Vec<String> = f["nodes"]
            .as_array()
            .map(|v| v.iter().map(|n| format!("n{n}")).collect())
            .unwrap_or_default();
        // Labels only where the window is wide enough to hold one; the colour (legend) and the
        // tooltip say the rest.
        let label = if x(e) - x(s) >= 40.0 {
            format!("{kind} {}", nodes.join(","))
        } else {
            String::new()
        };
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{top}' width='{:.1}' height='{height}' fill='{}' opacity='0.7'><title>{} {} {}: {}</title></rect>\
             <text x='{:.1}' y='{}' font-size='9' fill='#555'>{}</text>",
            x(s),
            (x(e) - x(s)).max(1.0),
            fault_color(kind),
            esc(kind),
            esc(f["variant"].as_str().unwrap_or("")),
            esc(&nodes.join(",")),
            esc(f["detail"].as_str().unwrap_or("")),
            x(s) + 1.0,
            top + 10.0 + (k % 3) as f64 * 10.0,
            esc(&label)
        ));
    }
    svg.push_str(&format!(
        "<line x1='50' y1='{0}' x2='{1}' y2='{0}' stroke='#888'/><line x1='50' y1='{top}' x2='50' y2='{0}' stroke='#888'/>\
         <text x='44' y='{2}' text-anchor='end'>{max_lat:.0}</text><text x='44' y='{0}' text-anchor='end'>0</text>",
        top + height,
        width - 10.0,
        top + 4.0
    ));
    for p in &pairs {
        let Some(c) = p.return_ns() else { continue };
        let lat = (c - p.invoke_ns) as f64 / 1e6;
        let color = match p.outcome {
            crate::history::Outcome::Ok => "#1a7f37",
            crate::history::Outcome::Fail => "#cf222e",
            crate::history::Outcome::Info => "#bf8700",
        };
        svg.push_str(&format!(
            "<circle cx='{:.1}' cy='{:.1}' r='1.6' fill='{color}'/>",
            x(c as f64 / 1e6),
            y(lat)
        ));
    }
    svg.push_str(&format!(
        "<text x='50' y='16'>latency (ms, max {max_lat:.0}) over {:.0} s; green ok, red fail, amber info; shaded: fault windows</text>",
        total_ms / 1000.0
    ));
    // Legend of fault kinds present.
    let mut kinds: Vec<&str> = r.faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let mut lx = 50.0;
    for k in kinds {
        svg.push_str(&format!(
            "<rect x='{lx}' y='24' width='12' height='10' fill='{}'/><text x='{}' y='33'>{}</text>",
            fault_color(k),
            lx + 15.0,
            esc(k)
        ));
        lx += 25.0 + 7.0 * k.len() as f64;
    }
    // Primary timeline.
    let ty = top + height + 30.0;
    for (i, (t, p)) in timeline.iter().enumerate() {
        let end = timeline.get(i + 1).map(|n| n.0 as f64).unwrap_or(total_ms);
        let label = match p.as_slice() {
            [] => "none".to_string(),
            [n] => format!("n{n}"),
            many => format!("{many:?}"),
        };
        let color = match p.as_slice() {
            [] => "#d0d7de",
            [n] => ["#0969da", "#8250df", "#1a7f37", "#bf3989", "#953800"][(*n as usize) % 5],
            _ => "#cf222e",
        };
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{ty}' width='{:.1}' height='18' fill='{color}'><title>primary {label}</title></rect><text x='{:.1}' y='{}' fill='white'>{label}</text>",
            x(*t as f64),
            (x(end) - x(*t as f64)).max(1.0),
            x(*t as f64) + 2.0,
            ty + 13.0
        ));
    }
    svg.push_str(&format!(
        "<text x='50' y='{}'>primary over time (grey: none answers 200 on /primary; red: more than one)</text>",
        ty + 34.0
    ));
    // Where the linearizability checker found its first violation, per invalid key.
    for k in &r.check.linearizable.keys {
        let Ok(v) = serde_json::to_value(k) else { continue };
        if let Some(ns) = v["witness"]["op"]["complete_ns"].as_f64() {
            let at = x(ns / 1e6);
            svg.push_str(&format!(
                "<line x1='{at:.1}' y1='{top}' x2='{at:.1}' y2='{}' stroke='#cf222e' stroke-width='2' stroke-dasharray='4 2'/>\
                 <text x='{:.1}' y='{}' fill='#cf222e' font-weight='bold'>not linearizable: {}</text>",
                top + height,
                at + 3.0,
                top + height - 6.0,
                esc(v["key"].as_str().unwrap_or(""))
            ));
        }
    }
    // Time axis.
    let rough = total_ms / 1000.0 / 10.0;
    let step_s = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|s| *s >= rough)
        .unwrap_or(600.0);
    let mut s = 0.0;
    while s * 1000.0 <= total_ms {
        svg.push_str(&format!(
            "<text x='{:.1}' y='{}' font-size='9' text-anchor='middle'>{s:.0}s</text>",
            x(s * 1000.0),
            ty + 52.0
        ));
        s += step_s;
    }
    svg.push_str("</svg>");
    w(&cfg.out.join("latency.svg"), &svg)?;
    let rows: String = r
        .faults
        .iter()
        .map(|f| {
            format!(
                "<tr><td>{:.1}–{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f["start_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                f["end_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                esc(f["kind"].as_str().unwrap_or("")),
                esc(f["variant"].as_str().unwrap_or("")),
                esc(&f["nodes"].to_string()),
                f["was_primary"],
                esc(f["detail"].as_str().unwrap_or(""))
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><meta charset='utf-8'><title>keel-jepsen {seed}</title><body style='font-family:sans-serif;max-width:1040px;margin:2em auto'>\
         <h1>keel-jepsen run (seed {seed})</h1><p>verdict: <b>{verdict}</b> · linearizable: {lin:?} · append: {app:?} · double-primary rounds: {doubles} of {rounds} · epochs monotonic: {mono} · converged: {conv} · failovers (ms): {fo:?}</p>\
         <img src='latency.svg'><p><a href='summary.json'>summary.json</a> · <a href='history.jsonl'>history.jsonl</a> · <a href='schedule.json'>schedule.json</a> · <a href='faults.jsonl'>faults.jsonl</a></p>\
         <h2>Faults</h2><table border='1' cellpadding='3' style='border-collapse:collapse;font-size:12px'><tr><th>window</th><th>kind</th><th>variant</th><th>nodes</th><th>primary hit</th><th>detail</th></tr>{rows}</table></body>",
        seed = r.seed,
        verdict = if r.ok() { "PASS" } else { "FAIL" },
        lin = r.check.linearizable.verdict,
        app = r.check.append.verdict,
        doubles = r.double_primary_rounds,
        rounds = r.primary_samples,
        mono = r.epochs_monotonic,
        conv = r.converged,
        fo = r.failover_ms,
    );
    w(&cfg.out.join("index.html"), &html)?;
    let mut f = std::fs::File::create(cfg.out.join("faults.jsonl")).map_err(|e| e.to_string())?;
    for fault in &r.faults {
        let _ = writeln!(f, "{fault}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_operations_and_stops() {
        let stop = Arc::new(AtomicBool::new(false));
        // Closed loop: no pacing at all.
        assert!(Pacer::new(None, 4, stop.clone()).period.is_none());
        assert!(Pacer::new(Some(0.0), 4, stop.clone()).period.is_none());
        // 4 clients at 200 ops/s in all: 20 ms between one client's operations.
        assert_eq!(
            Pacer::new(Some(200.0), 4, stop.clone()).period,
            Some(Duration::from_millis(20))
        );

        // Six slots 20 ms apart take at least five periods (a lower bound: sleeps are never short).
        let mut p = Pacer::new(Some(50.0), 1, stop.clone());
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(p.next_op());
        }
        assert!(t0.elapsed() >= Duration::from_millis(100), "{:?}", t0.elapsed());

        // A stop ends the client, also while it waits for a slot an hour away (else this would hang).
        let mut p = Pacer::new(Some(1.0 / 3600.0), 1, stop.clone());
        assert!(p.next_op());
        stop.store(true, Ordering::Relaxed);
        assert!(!p.next_op());
        assert!(!Pacer::new(None, 1, stop).next_op());
    }
}
