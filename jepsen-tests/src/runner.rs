//! The runner: a cluster of real `keel serve` processes on loopback, concurrent register
//! clients, a nemesis (kill -9, SIGSTOP/SIGCONT, kill of the primary), a `/primary` sampler,
//! and a report directory. This is the loopback mode of the harness (no root needed);
//! network-namespace partitions and the remaining nemeses come next.
//!
//! Every loop is bounded by the run's duration and stops by itself; every process started is
//! killed when the [`Cluster`] drops, panics included.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{History, Op, OpFn, OpKind};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub keel: PathBuf,
    pub out: PathBuf,
    pub nodes: u64,
    pub time: Duration,
    pub clients: u64,
    pub keys: u64,
    /// `kill`, `pause`, `kill-primary`.
    pub nemesis: Vec<String>,
    /// Seconds between faults, and how long each lasts.
    pub fault_every: Duration,
    pub fault_for: Duration,
    /// `async` or `sync`.
    pub mode: String,
    pub seed: u64,
    pub quiet: Duration,
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

struct Node {
    id: u64,
    api: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The processes of one run.
struct Cluster {
    keel: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(cfg: &RunConfig) -> Result<Cluster, String> {
        let free = || -> Result<u16, String> {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            Ok(l.local_addr().map_err(|e| e.to_string())?.port())
        };
        let mut ports = Vec::new();
        for _ in 0..cfg.nodes {
            ports.push((free()?, free()?));
        }
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p.1))
            .collect();
        let mut c = Cluster {
            keel: cfg.keel.clone(),
            nodes: Vec::new(),
        };
        for (i, (a, p)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let data = cfg.out.join(format!("data/n{id}"));
            let args = vec![
                "serve".into(),
                "--id".into(),
                id.to_string(),
                "--api-addr".into(),
                format!("127.0.0.1:{a}"),
                "--peer-addr".into(),
                format!("127.0.0.1:{p}"),
                "--data-dir".into(),
                data.display().to_string(),
                "--peers".into(),
                peers.join(","),
                "--replication-mode".into(),
                cfg.mode.clone(),
            ];
            c.nodes.push(Node {
                id,
                api: format!("127.0.0.1:{a}"),
                args,
                log: cfg.out.join(format!("n{id}.log")),
                child: None,
                paused: false,
            });
        }
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.keel)
            .args(&n.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.keel.display()))?;
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
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn heal(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.signal(i, "-CONT");
                self.nodes[i].paused = false;
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
            if self.nodes[i].paused {
                self.signal(i, "-CONT");
            }
            self.kill(i);
        }
    }
}

fn new_http() -> reqwest::blocking::Client {
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

/// Read the register through the primary: (value, version).
fn read(http: &reqwest::blocking::Client, api: &str, key: &str) -> Result<(Value, u64, Option<u64>), (OpKind, String)> {
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
                200 => Ok((
                    text.parse::<u64>().map(Value::from).unwrap_or(Value::Null),
                    version,
                    epoch_of(&h),
                )),
                404 if serde_json::from_str::<Value>(&text).is_ok_and(|v| v["error"]["code"] == "not_found") => {
                    Ok((Value::Null, 0, epoch_of(&h)))
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

fn client(
    process: u64,
    cfg: RunConfig,
    apis: Vec<(u64, String)>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    values: Arc<AtomicU64>,
) {
    let http = new_http();
    let mut rng = Rng::new(cfg.seed ^ (process + 1).wrapping_mul(0x1234_5678));
    while !stop.load(Ordering::Relaxed) {
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
                    Ok((v, _, e)) => rec.record(process, OpKind::Ok, OpFn::Read, &key, v, Some(node), e, None),
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
    pub faults: Vec<Value>,
    pub failover_ms: Vec<u64>,
}

impl RunReport {
    /// Every checker passed (the linearizability verdict may be Unknown only if bounded).
    pub fn ok(&self) -> bool {
        self.check.verdict == crate::Verdict::Valid
            && self.double_primary_rounds == 0
            && self.epochs_monotonic
            && self.converged
    }
}

/// Run one test: start the cluster, run clients and the nemesis for `time`, heal, wait
/// `quiet`, check, and write the report directory.
pub fn run(cfg: &RunConfig) -> Result<RunReport, String> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("create {}: {e}", cfg.out.display()))?;
    let mut cluster = Cluster::start(cfg)?;
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
    let values = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..cfg.clients)
        .map(|p| {
            let (cfg, apis, rec, stop, values) = (cfg.clone(), apis.clone(), rec.clone(), stop.clone(), values.clone());
            std::thread::spawn(move || client(p, cfg, apis, rec, stop, values))
        })
        .collect();
    // The /primary sampler: never two 200s in one round; epochs never go back.
    let sampler = {
        let (apis, stop, rec) = (apis.clone(), stop.clone(), rec.clone());
        std::thread::spawn(move || {
            let http = new_http();
            let (mut rounds, mut doubles, mut monotonic) = (0u64, 0u64, true);
            // Per node: the epoch it reports must never go down (restarts included: the
            // cluster state is durable).
            let mut last_epoch: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut timeline: Vec<(u64, Vec<u64>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
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
    let mut rng = Rng::new(cfg.seed);
    let mut faults = Vec::new();
    let mut failover_ms = Vec::new();
    let end = Instant::now() + cfg.time;
    while Instant::now() + cfg.fault_every < end {
        std::thread::sleep(cfg.fault_every);
        if cfg.nemesis.is_empty() {
            continue;
        }
        let kind = cfg.nemesis[rng.below(cfg.nemesis.len() as u64) as usize].clone();
        let current = primaries(&http, &apis);
        let target = match kind.as_str() {
            "kill-primary" => match current.first() {
                Some(p) => (*p - 1) as usize,
                None => continue,
            },
            _ => rng.below(cluster.nodes.len() as u64) as usize,
        };
        let at = rec.start.elapsed().as_millis() as u64;
        let t0 = Instant::now();
        match kind.as_str() {
            "kill" | "kill-primary" => cluster.kill(target),
            "pause" => {
                cluster.signal(target, "-STOP");
                cluster.nodes[target].paused = true;
            }
            other => return Err(format!("unknown nemesis {other:?}: use kill, pause, kill-primary")),
        }
        // If the primary was hit, measure until another node answers 200 on /primary.
        let was_primary = current.contains(&cluster.nodes[target].id);
        if was_primary {
            let others: Vec<(u64, String)> = apis
                .iter()
                .filter(|(id, _)| *id != cluster.nodes[target].id)
                .cloned()
                .collect();
            let until = Instant::now() + cfg.fault_for.max(Duration::from_secs(10));
            while Instant::now() < until {
                if primaries(&http, &others).len() == 1 {
                    failover_ms.push(t0.elapsed().as_millis() as u64);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(cfg.fault_for.saturating_sub(t0.elapsed()));
        cluster.heal()?;
        faults.push(json!({"kind": kind, "node": cluster.nodes[target].id, "start_ms": at, "end_ms": rec.start.elapsed().as_millis() as u64, "was_primary": was_primary}));
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (rounds, doubles, monotonic, timeline) = sampler.join().map_err(|_| "sampler panicked")?;
    cluster.heal()?;
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
    };
    write_report(cfg, &report, &history, &timeline)?;
    Ok(report)
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

/// `summary.json`, `latency.svg` (latency over time, fault windows shaded, primary timeline),
/// and `index.html` linking them.
fn write_report(cfg: &RunConfig, r: &RunReport, h: &History, timeline: &[(u64, Vec<u64>)]) -> Result<(), String> {
    let w = |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()));
    w(
        &cfg.out.join("summary.json"),
        &serde_json::to_string_pretty(r).unwrap_or_default(),
    )?;
    // Latency points: completion time vs latency, per outcome.
    let pairs = h.pair().map_err(|e| e.to_string())?;
    let total_ms = cfg.time.as_millis().max(1) as f64 + cfg.quiet.as_millis() as f64;
    let (width, height, top) = (1000.0, 320.0, 40.0);
    let max_lat = pairs
        .iter()
        .filter_map(|p| p.return_ns().map(|c| (c - p.invoke_ns) as f64 / 1e6))
        .fold(10.0f64, f64::max)
        .min(5000.0);
    let x = |ms: f64| 50.0 + ms / total_ms * (width - 60.0);
    let y = |lat: f64| top + height - (lat.min(max_lat) / max_lat) * height;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>",
        width,
        height + top + 80.0
    );
    for f in &r.faults {
        let (s, e) = (
            f["start_ms"].as_f64().unwrap_or(0.0),
            f["end_ms"].as_f64().unwrap_or(0.0),
        );
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{top}' width='{:.1}' height='{height}' fill='#f4c7c3' opacity='0.6'><title>{} n{}</title></rect>",
            x(s),
            (x(e) - x(s)).max(1.0),
            f["kind"].as_str().unwrap_or(""),
            f["node"]
        ));
    }
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
        "<text x='50' y='20'>latency (ms, max {max_lat:.0}) over time; green ok, red fail, amber info; shaded: faults</text>"
    ));
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
        "<text x='50' y='{}'>primary over time</text></svg>",
        ty + 34.0
    ));
    w(&cfg.out.join("latency.svg"), &svg)?;
    let html = format!(
        "<!doctype html><meta charset='utf-8'><title>keel-jepsen {seed}</title><body style='font-family:sans-serif;max-width:1040px;margin:2em auto'>\
         <h1>keel-jepsen run (seed {seed})</h1><p>verdict: <b>{verdict}</b> · linearizable: {lin:?} · double-primary rounds: {doubles} of {rounds} · converged: {conv} · failovers (ms): {fo:?}</p>\
         <img src='latency.svg'><p><a href='summary.json'>summary.json</a> · <a href='history.jsonl'>history.jsonl</a></p></body>",
        seed = r.seed,
        verdict = if r.ok() { "PASS" } else { "FAIL" },
        lin = r.check.verdict,
        doubles = r.double_primary_rounds,
        rounds = r.primary_samples,
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
