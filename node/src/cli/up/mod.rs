//! `keel up`: a local cluster in one command.
//!
//! Starts `--nodes` children running `keel serve` on loopback ports, merges their JSON logs into one
//! compact stream on stdout, waits until every node answers and one reports a leader, prints the endpoints,
//! and on Ctrl-C / SIGTERM stops the children (SIGTERM, then SIGKILL after `STOP_TIMEOUT`).
//!
//! The ports are chosen once and saved in `<data-dir>/up.json` (`UpPlan`); the next `keel up` on the same
//! data dir reuses them, so the same cluster (same ids, peer addresses and node data) comes back. The pure
//! parts, plan handling and log formatting, are plain functions with unit tests.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cli::print_out;

const MAX_NODES: u32 = 9;
const PLAN_FILE: &str = "up.json";
const PLAN_VERSION: u32 = 1;
/// How long the cluster has to answer and elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long children have after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after SIGKILL we still wait for the exit to be reported.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a dead child's last log lines to be read from its pipes.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Log lines kept per node, shown when it dies during startup.
const TAIL_LINES: usize = 20;
/// Inherited variables that would contradict the flags `keel up` passes to each child.
const CHILD_ENV_REMOVE: &[&str] = &["KEEL_JOIN", "KEEL_ADVERTISE_API_ADDR", "KEEL_ADVERTISE_PEER_ADDR"];

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of nodes, 1 to 9
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub nodes: u32,

    /// Parent directory of the nodes' data dirs (`node-1`, ...) and of `up.json`, the saved ports
    #[arg(long, default_value = "keel-data")]
    pub data_dir: PathBuf,

    /// extra flags passed to every `keel serve` (after `--`)
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

/// The saved layout of a `keel up` cluster, `<data-dir>/up.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct UpPlan {
    /// Format version, for migrations; files without one are version 1.
    #[serde(default = "plan_version")]
    version: u32,
    nodes: Vec<UpNode>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct UpNode {
    id: u64,
    api_addr: SocketAddr,
    peer_addr: SocketAddr,
}

fn plan_version() -> u32 {
    PLAN_VERSION
}

fn validate_nodes(nodes: u32) -> anyhow::Result<()> {
    if !(1..=MAX_NODES).contains(&nodes) {
        bail!("--nodes must be between 1 and {MAX_NODES}, got {nodes}");
    }
    Ok(())
}

impl UpPlan {
    /// Picks `2 * nodes` distinct free loopback ports. All listeners stay open until every port is chosen,
    /// so the OS cannot hand out the same port twice.
    fn allocate(nodes: u32) -> anyhow::Result<UpPlan> {
        let listeners = (0..2 * nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("find free loopback ports")?;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let nodes = (0..nodes as usize)
            .map(|i| UpNode {
                id: i as u64 + 1,
                api_addr: addrs[2 * i],
                peer_addr: addrs[2 * i + 1],
            })
            .collect();
        Ok(UpPlan {
            version: PLAN_VERSION,
            nodes,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.version != PLAN_VERSION {
            bail!(
                "unsupported version {} (this keel knows version {PLAN_VERSION})",
                self.version
            );
        }
        validate_nodes(self.nodes.len() as u32).context("check the number of nodes")?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id != i as u64 + 1 {
                bail!(
                    "node ids must be 1..={} in order, found {} at position {}",
                    self.nodes.len(),
                    node.id,
                    i + 1
                );
            }
            for addr in [node.api_addr, node.peer_addr] {
                if !seen.insert(addr) {
                    bail!("address {addr} is used twice");
                }
            }
        }
        Ok(())
    }

    /// The `--peers` value shared by every node: `1=P1,2=P2,...`.
    fn peers_flag(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Reads and validates a saved plan; `None` when the file does not exist.
fn read_plan(path: &Path) -> anyhow::Result<Option<UpPlan>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let plan: UpPlan = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    plan.validate().with_context(|| format!("check {}", path.display()))?;
    Ok(Some(plan))
}

/// Writes the plan atomically (temp file, fsync, rename), so a crash never leaves half a file.
fn write_plan(path: &Path, plan: &UpPlan) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(plan).context("encode up.json")?;
    text.push('\n');
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("sync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// Refuses to bring back a saved cluster with a different size.
fn check_node_count(plan: &UpPlan, args: &UpArgs) -> anyhow::Result<()> {
    let saved = plan.nodes.len();
    if saved != args.nodes as usize {
        let again = up_again_command(&UpArgs {
            nodes: saved as u32,
            ..args.clone()
        });
        bail!(
            "{dir} holds a {saved}-node cluster but --nodes is {}; run `{again}` to bring it back, or pick another \
             --data-dir (or delete {dir}) for a new cluster",
            args.nodes,
            dir = args.data_dir.display(),
        );
    }
    Ok(())
}

/// The saved addresses that cannot be bound right now, described for the user.
fn taken_addrs(plan: &UpPlan) -> Vec<String> {
    let mut taken = Vec::new();
    for node in &plan.nodes {
        for (what, addr) in [("api", node.api_addr), ("peer", node.peer_addr)] {
            if let Err(e) = TcpListener::bind(addr) {
                taken.push(format!("node {} {what} address {addr} ({e})", node.id));
            }
        }
    }
    taken
}

/// Saved ports of an earlier `keel up` that something else holds now.
#[derive(Debug, thiserror::Error)]
#[error(
    "error: saved ports in {} are in use:\n  {}\nis an earlier `keel up` on {} still running? stop it, \
     free the ports, or pick another --data-dir",
    plan_file.display(),
    taken.join("\n  "),
    data_dir.display()
)]
struct PortsTaken {
    plan_file: PathBuf,
    taken: Vec<String>,
    data_dir: PathBuf,
}

/// Loads the saved plan of `args.data_dir`, or allocates and saves a new one. `Ok(Err(taken))` is a
/// problem to report with exit code 1 (a saved port is taken).
fn prepare(args: &UpArgs) -> anyhow::Result<Result<UpPlan, PortsTaken>> {
    let path = args.data_dir.join(PLAN_FILE);
    if let Some(plan) = read_plan(&path)? {
        check_node_count(&plan, args)?;
        let taken = taken_addrs(&plan);
        if !taken.is_empty() {
            return Ok(Err(PortsTaken {
                plan_file: path,
                taken,
                data_dir: args.data_dir.clone(),
            }));
        }
        return Ok(Ok(plan));
    }
    // Node data without a plan would come back on new ports that its stored membership does not know.
    if let Some(dir) = existing_node_dir(&args.data_dir) {
        bail!(
            "{} exists but {} does not; delete {} or pick another --data-dir",
            dir.display(),
            path.display(),
            args.data_dir.display()
        );
    }
    let plan = UpPlan::allocate(args.nodes)?;
    write_plan(&path, &plan)?;
    Ok(Ok(plan))
}

fn existing_node_dir(data_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(data_dir).ok()?;
    entries
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("node-"))
        .map(|e| e.path())
}

fn node_data_dir(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node-{id}"))
}

/// Arguments of the `keel serve` child for `node`.
fn serve_command_args(plan: &UpPlan, node: &UpNode, data_dir: &Path, extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "serve".to_string(),
        "--id".to_string(),
        node.id.to_string(),
        "--api-addr".to_string(),
        node.api_addr.to_string(),
        "--peer-addr".to_string(),
        node.peer_addr.to_string(),
        "--data-dir".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(node_data_dir(data_dir, node.id).into_os_string());
    args.extend(
        [
            "--peers".to_string(),
            plan.peers_flag(),
            "--log-format".to_string(),
            "json".to_string(),
        ]
        .map(Into::into),
    );
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `HH:MM:SS.mmm` from an RFC 3339 timestamp such as `2024-05-01T10:11:12.123456Z`.
fn clock_time(timestamp: &str) -> Option<String> {
    let (_, rest) = timestamp.split_once('T')?;
    let hms = rest.get(..8)?;
    let well_formed = hms.bytes().enumerate().all(|(i, b)| {
        if i == 2 || i == 5 {
            b == b':'
        } else {
            b.is_ascii_digit()
        }
    });
    if !well_formed {
        return None;
    }
    let mut millis: String = match rest[8..].strip_prefix('.') {
        Some(frac) => frac.chars().take_while(char::is_ascii_digit).take(3).collect(),
        None => String::new(),
    };
    while millis.len() < 3 {
        millis.push('0');
    }
    Some(format!("{hms}.{millis}"))
}

/// Top-level keys of a tracing JSON line that are not event fields.
const TRACING_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "target",
    "span",
    "spans",
    "threadName",
    "threadId",
    "filename",
    "line_number",
    "fields",
];

/// A field value for `key=value`: bare when it is a plain word, JSON-quoted otherwise.
fn field_value(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') => {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// One child log line in the merged log: `[n1] 12:34:56.789 INFO  message key=value ...` for a tracing JSON
/// line, the line as is after the prefix otherwise. `log.*` fields (added by the `log` bridge) are dropped.
fn format_log_line(node: u64, line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    let raw = || format!("[n{node}] {line}").trim_end().to_string();
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return raw();
    };
    let Some(level) = obj.get("level").and_then(Value::as_str) else {
        return raw();
    };
    let fields: Vec<(&String, &Value)> = match obj.get("fields") {
        Some(Value::Object(fields)) => fields.iter().collect(),
        // With `flatten_event` the fields sit at the top level.
        _ => obj
            .iter()
            .filter(|(k, _)| !TRACING_KEYS.contains(&k.as_str()))
            .collect(),
    };

    let mut out = format!("[n{node}]");
    if let Some(time) = obj.get("timestamp").and_then(Value::as_str).and_then(clock_time) {
        out.push(' ');
        out.push_str(&time);
    }
    out.push_str(&format!(" {level:<5}"));
    if let Some((_, message)) = fields.iter().find(|(k, _)| k.as_str() == "message") {
        out.push(' ');
        out.push_str(&message.as_str().map_or_else(|| message.to_string(), str::to_string));
    }
    for (key, value) in fields
        .iter()
        .filter(|(k, _)| k.as_str() != "message" && !k.starts_with("log."))
    {
        out.push_str(&format!(" {key}={}", field_value(value)));
    }
    out.trim_end().to_string()
}

fn print_line(text: &str) {
    print_out(&format!("{text}\n"));
}

/// A running (or exited) child.
struct Proc {
    id: u64,
    pid: Option<u32>,
    /// Asks the watcher task to SIGKILL the child; dropping it does the same, so an early return never
    /// leaves children behind.
    kill: Option<oneshot::Sender<()>>,
    /// The last [`TAIL_LINES`] formatted log lines.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Tasks copying stdout and stderr into the merged log; they end at EOF.
    readers: Vec<JoinHandle<()>>,
    exited: bool,
}

type ExitReport = (u64, std::io::Result<ExitStatus>);

fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown exit status (wait failed: {e})"),
    }
}

/// Copies one pipe of a child into the merged log, line by line. Bytes, not `lines()`, so invalid UTF-8
/// cannot stop the reader and leave the child blocked on a full pipe.
fn pump(
    node: u64,
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = format_log_line(node, &String::from_utf8_lossy(&buf));
                    print_line(&text);
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
            }
        }
    })
}

fn spawn_node(
    exe: &Path,
    plan: &UpPlan,
    node: &UpNode,
    args: &UpArgs,
    exits: mpsc::UnboundedSender<ExitReport>,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(exe);
    cmd.args(serve_command_args(plan, node, &args.data_dir, &args.serve_args))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in CHILD_ENV_REMOVE {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start node {} ({})", node.id, exe.display()))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(pump(node.id, out, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(pump(node.id, err, tail.clone()));
    }
    let pid = child.id();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let id = node.id;
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            // Sent or dropped: either way the child must go.
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let _ = exits.send((id, status));
    });
    Ok(Proc {
        id,
        pid,
        kill: Some(kill_tx),
        tail,
        readers,
        exited: false,
    })
}

/// Waits (briefly) until the child's pipes are drained, so its last lines are in the log and the tail.
async fn drain(proc: &mut Proc) {
    for reader in proc.readers.drain(..) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, reader).await;
    }
}

/// Sends SIGTERM through `kill(1)` (no libc binding here); falls back to SIGKILL when that fails.
async fn terminate(proc: &mut Proc) {
    let sent = match proc.pid {
        Some(pid) => Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success()),
        None => false,
    };
    if !sent {
        if let Some(kill) = proc.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// Stops every child still running: SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL. Prints each
/// exit status.
async fn stop_all(procs: &mut [Proc], exits: &mut mpsc::UnboundedReceiver<ExitReport>) {
    for proc in procs.iter_mut().filter(|p| !p.exited) {
        terminate(proc).await;
    }
    let mut deadline = Instant::now() + STOP_TIMEOUT;
    let mut killed = false;
    while procs.iter().any(|p| !p.exited) {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((id, status))) => {
                if let Some(proc) = procs.iter_mut().find(|p| p.id == id) {
                    proc.exited = true;
                    drain(proc).await;
                }
                print_line(&format!("[n{id}] stopped: {}", describe_exit(&status)));
            }
            Ok(None) => break,
            Err(_) if !killed => {
                for proc in procs.iter_mut().filter(|p| !p.exited) {
                    print_line(&format!(
                        "[n{}] did not stop within {} s; killing it",
                        proc.id,
                        STOP_TIMEOUT.as_secs()
                    ));
                    if let Some(kill) = proc.kill.take() {
                        let _ = kill.send(());
                    }
                }
                killed = true;
                deadline = Instant::now() + KILL_TIMEOUT;
            }
            Err(_) => {
                let left: Vec<String> = procs
                    .iter()
                    .filter(|p| !p.exited)
                    .map(|p| format!("n{}", p.id))
                    .collect();
                eprintln!("warning: no exit reported by {} after SIGKILL", left.join(", "));
                break;
            }
        }
    }
}

/// `GET /v1/status` of every node once; `None` for a node that did not answer.
async fn probe_all(http: &reqwest::Client, plan: &UpPlan) -> Vec<(u64, Option<Value>)> {
    let mut set = JoinSet::new();
    for node in &plan.nodes {
        let http = http.clone();
        let (id, url) = (node.id, format!("http://{}/v1/status", node.api_addr));
        set.spawn(async move {
            let answer = match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.ok(),
                _ => None,
            };
            (id, answer)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(id, _)| *id);
    results
}

/// What was missing when `keel up` gave up waiting for the cluster.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("build http client: {0}")]
    Client(String),
    #[error("every node answers but none reports a leader")]
    NoLeader,
    #[error("no answer from {}", .0.join(", "))]
    Silent(Vec<String>),
}

/// Polls until every node answers and all report the same leader; returns the leader, or what was missing at
/// the deadline.
async fn wait_ready(plan: &UpPlan, deadline: Instant) -> Result<u64, NotReady> {
    keel_raft::network::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| NotReady::Client(e.to_string()))?;
    loop {
        let results = probe_all(&http, plan).await;
        let silent: Vec<&UpNode> = plan
            .nodes
            .iter()
            .filter(|n| !results.iter().any(|(id, s)| *id == n.id && s.is_some()))
            .collect();
        // A leader every node agrees on (right after a restart one node may still claim an
        // old leadership for a moment).
        let leaders: BTreeSet<Option<u64>> = results
            .iter()
            .map(|(_, s)| s.as_ref().and_then(|s| s["raft"]["leader"].as_u64()))
            .collect();
        let leader = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(l)] => Some(*l),
            _ => None,
        };
        match (silent.is_empty(), leader) {
            (true, Some(leader)) => return Ok(leader),
            _ if Instant::now() + PROBE_INTERVAL < deadline => tokio::time::sleep(PROBE_INTERVAL).await,
            (true, None) => return Err(NotReady::NoLeader),
            (false, _) => {
                let names: Vec<String> = silent.iter().map(|n| format!("n{} ({})", n.id, n.api_addr)).collect();
                return Err(NotReady::Silent(names));
            }
        }
    }
}

/// The `keel up` invocation that brings this cluster back.
fn up_again_command(args: &UpArgs) -> String {
    let mut cmd = "keel up".to_string();
    if args.nodes != 3 {
        cmd.push_str(&format!(" --nodes {}", args.nodes));
    }
    if args.data_dir != Path::new("keel-data") {
        cmd.push_str(&format!(" --data-dir {}", args.data_dir.display()));
    }
    cmd
}

/// The block printed once the cluster is up: endpoints, data dirs and commands to try.
fn ready_banner(plan: &UpPlan, args: &UpArgs, elapsed: Duration, leader: u64) -> String {
    let mut out = format!("\ncluster up in {:.2} s: leader n{leader}\n\n", elapsed.as_secs_f64());
    for node in &plan.nodes {
        out.push_str(&format!(
            "  n{}  api http://{}  peer {}  data {}\n",
            node.id,
            node.api_addr,
            node.peer_addr,
            node_data_dir(&args.data_dir, node.id).display()
        ));
    }
    let first = format!("http://{}", plan.nodes[0].api_addr);
    out.push_str(&format!(
        "\ntry:\n  keel status --addr {first}\n  keel members list --addr {first}\n  keel history --addr {first}\n  \
         curl -s {first}/v1/cluster\n\nCtrl-C stops the cluster; run `{}` again to bring the same cluster back.\n\n",
        up_again_command(args)
    ));
    out
}

enum Startup {
    Ready(Result<u64, NotReady>),
    Exited(ExitReport),
    Signal,
}

/// Runs `keel up` until Ctrl-C / SIGTERM; returns the process exit code.
pub async fn run(args: UpArgs) -> anyhow::Result<i32> {
    validate_nodes(args.nodes)?;
    let plan = match prepare(&args)? {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("{message}");
            return Ok(1);
        }
    };
    // Installed before the children start, so a Ctrl-C during startup still stops them in order.
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let exe = std::env::current_exe().context("find the keel executable")?;

    let started = Instant::now();
    let (exit_tx, mut exits) = mpsc::unbounded_channel();
    let mut procs = Vec::new();
    for node in &plan.nodes {
        match spawn_node(&exe, &plan, node, &args, exit_tx.clone()) {
            Ok(proc) => procs.push(proc),
            Err(e) => {
                stop_all(&mut procs, &mut exits).await;
                return Err(e);
            }
        }
    }

    let outcome = tokio::select! {
        ready = wait_ready(&plan, started + READY_TIMEOUT) => Startup::Ready(ready),
        Some(report) = exits.recv() => Startup::Exited(report),
        _ = sigint.recv() => Startup::Signal,
        _ = sigterm.recv() => Startup::Signal,
    };
    match outcome {
        Startup::Ready(Ok(leader)) => print_out(&ready_banner(&plan, &args, started.elapsed(), leader)),
        Startup::Ready(Err(missing)) => {
            eprintln!(
                "error: the cluster did not come up within {} s: {missing}",
                READY_TIMEOUT.as_secs()
            );
            stop_all(&mut procs, &mut exits).await;
            return Ok(1);
        }
        Startup::Exited((id, status)) => {
            let mut lines = Vec::new();
            if let Some(proc) = procs.iter_mut().find(|p| p.id == id) {
                proc.exited = true;
                drain(proc).await;
                lines.extend(proc.tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
            }
            eprintln!("error: node {id} exited during startup: {}", describe_exit(&status));
            if !lines.is_empty() {
                eprintln!("its last log lines:\n  {}", lines.join("\n  "));
            }
            stop_all(&mut procs, &mut exits).await;
            return Ok(1);
        }
        Startup::Signal => {
            print_line("stopping the cluster");
            stop_all(&mut procs, &mut exits).await;
            return Ok(0);
        }
    }

    // Running: a node that dies is reported and the others keep going, so failover can be watched.
    loop {
        tokio::select! {
            Some((id, status)) = exits.recv() => {
                if let Some(proc) = procs.iter_mut().find(|p| p.id == id) {
                    proc.exited = true;
                    drain(proc).await;
                }
                print_line(&format!("[n{id}] exited: {}; the other nodes keep running", describe_exit(&status)));
                if procs.iter().all(|p| p.exited) {
                    eprintln!("error: every node has exited");
                    return Ok(1);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    print_line("stopping the cluster");
    stop_all(&mut procs, &mut exits).await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, nodes: u32) -> UpArgs {
        UpArgs {
            nodes,
            data_dir: dir.to_path_buf(),
            serve_args: vec![],
        }
    }

    #[test]
    fn nodes_range() {
        for ok in [1, 3, 9] {
            assert!(validate_nodes(ok).is_ok());
        }
        for bad in [0, 10] {
            let e = validate_nodes(bad).unwrap_err().to_string();
            assert!(e.contains("between 1 and 9"), "{e}");
        }
    }

    #[test]
    fn allocate_gives_distinct_ports() {
        let plan = UpPlan::allocate(9).unwrap();
        plan.validate().unwrap();
        assert_eq!(plan.nodes.len(), 9);
        assert!(plan
            .nodes
            .iter()
            .all(|n| n.api_addr.ip().is_loopback() && n.api_addr.port() != 0));
    }

    #[test]
    fn plan_roundtrip_and_brief_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(PLAN_FILE);
        assert_eq!(read_plan(&path).unwrap(), None);
        let plan = UpPlan::allocate(3).unwrap();
        write_plan(&path, &plan).unwrap();
        assert_eq!(read_plan(&path).unwrap(), Some(plan));

        // The documented shape, without a version field.
        std::fs::write(
            &path,
            r#"{"nodes":[{"id":1,"api_addr":"127.0.0.1:7101","peer_addr":"127.0.0.1:7201"}]}"#,
        )
        .unwrap();
        let plan = read_plan(&path).unwrap().unwrap();
        assert_eq!(plan.version, 1);
        assert_eq!(plan.peers_flag(), "1=127.0.0.1:7201");
    }

    #[test]
    fn plan_validation() {
        let node = |id: u64, api: u16, peer: u16| UpNode {
            id,
            api_addr: SocketAddr::from(([127, 0, 0, 1], api)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], peer)),
        };
        let cases: Vec<(Vec<UpNode>, u32, Option<&str>)> = vec![
            (vec![node(1, 1, 2), node(2, 3, 4)], 1, None),
            (vec![], 1, Some("number of nodes")),
            (vec![node(2, 1, 2)], 1, Some("in order")),
            (vec![node(1, 1, 2), node(2, 2, 3)], 1, Some("used twice")),
            (vec![node(1, 1, 1)], 1, Some("used twice")),
            (vec![node(1, 1, 2)], 7, Some("unsupported version")),
        ];
        for (nodes, version, want) in cases {
            let result = UpPlan { version, nodes }.validate();
            match want {
                None => result.unwrap(),
                Some(want) => assert!(format!("{:#}", result.unwrap_err()).contains(want), "want {want}"),
            }
        }
    }

    #[test]
    fn bad_plan_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PLAN_FILE);
        std::fs::write(&path, "{not json").unwrap();
        let e = format!("{:#}", read_plan(&path).unwrap_err());
        assert!(e.contains("up.json"), "{e}");
    }

    #[test]
    fn prepare_saves_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(&args(dir.path(), 3)).unwrap().unwrap();
        assert!(dir.path().join(PLAN_FILE).exists());
        let second = prepare(&args(dir.path(), 3)).unwrap().unwrap();
        assert_eq!(first, second);

        let e = prepare(&args(dir.path(), 5)).unwrap_err().to_string();
        assert!(
            e.contains("3-node cluster") && e.contains("--nodes is 5") && e.contains("--data-dir"),
            "{e}"
        );
    }

    #[test]
    fn prepare_reports_taken_port() {
        let dir = tempfile::tempdir().unwrap();
        let plan = prepare(&args(dir.path(), 1)).unwrap().unwrap();
        let _busy = TcpListener::bind(plan.nodes[0].peer_addr).unwrap();
        let message = prepare(&args(dir.path(), 1)).unwrap().unwrap_err().to_string();
        assert!(
            message.contains(&format!("node 1 peer address {}", plan.nodes[0].peer_addr)),
            "{message}"
        );
        assert_eq!(taken_addrs(&plan).len(), 1);
    }

    #[test]
    fn prepare_refuses_node_data_without_plan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("node-1")).unwrap();
        let e = prepare(&args(dir.path(), 3)).unwrap_err().to_string();
        assert!(e.contains("node-1") && e.contains("up.json"), "{e}");
    }

    #[test]
    fn serve_args_for_a_node() {
        let plan: UpPlan = serde_json::from_str(
            r#"{"nodes":[{"id":1,"api_addr":"127.0.0.1:1001","peer_addr":"127.0.0.1:2001"},
                         {"id":2,"api_addr":"127.0.0.1:1002","peer_addr":"127.0.0.1:2002"}]}"#,
        )
        .unwrap();
        let got = serve_command_args(
            &plan,
            &plan.nodes[1],
            Path::new("d"),
            &["--heartbeat-ms".into(), "50".into()],
        );
        let got: Vec<String> = got.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let want = "serve --id 2 --api-addr 127.0.0.1:1002 --peer-addr 127.0.0.1:2002 --data-dir d/node-2 \
                    --peers 1=127.0.0.1:2001,2=127.0.0.1:2002 --log-format json --heartbeat-ms 50";
        assert_eq!(got.join(" "), want);
    }

    #[test]
    fn clock_times() {
        let cases = [
            ("2024-05-01T10:11:12.123456Z", Some("10:11:12.123")),
            ("2024-05-01T10:11:12.1Z", Some("10:11:12.100")),
            ("2024-05-01T10:11:12Z", Some("10:11:12.000")),
            ("2024-05-01T10:11:12.987+02:00", Some("10:11:12.987")),
            ("2024-05-01 10:11:12", None),
            ("2024-05-01T10:1", None),
            ("2024-05-01Tab:cd:ef.1", None),
        ];
        for (input, want) in cases {
            assert_eq!(clock_time(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn log_lines() {
        let cases = [
            (
                r#"{"timestamp":"2024-05-01T10:11:12.123456Z","level":"INFO","fields":{"message":"became leader","term":3},"target":"keel_node::raft"}"#,
                "[n1] 10:11:12.123 INFO  became leader term=3",
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12.5Z","level":"WARN","fields":{"message":"peer down","peer":"127.0.0.1:7202","error":"connection refused","log.target":"x"},"target":"t","spans":[]}"#,
                r#"[n1] 10:11:12.500 WARN  peer down error="connection refused" peer=127.0.0.1:7202"#,
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12Z","level":"ERROR","fields":{"ok":false}}"#,
                "[n1] 10:11:12.000 ERROR ok=false",
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12Z","level":"DEBUG","message":"flat","id":7,"target":"t"}"#,
                "[n1] 10:11:12.000 DEBUG flat id=7",
            ),
            (
                r#"{"level":"INFO","fields":{"message":"no time","empty":""}}"#,
                r#"[n1] INFO  no time empty="""#,
            ),
            (
                "thread 'main' panicked at src/main.rs:1:1:\n",
                "[n1] thread 'main' panicked at src/main.rs:1:1:",
            ),
            (r#"{"not":"tracing"}"#, r#"[n1] {"not":"tracing"}"#),
            ("", "[n1]"),
        ];
        for (input, want) in cases {
            assert_eq!(format_log_line(1, input), want, "{input}");
        }
    }

    #[test]
    fn banner_names_endpoints_and_commands() {
        let plan = UpPlan::allocate(2).unwrap();
        let a = UpArgs {
            nodes: 2,
            data_dir: PathBuf::from("x"),
            serve_args: vec![],
        };
        let text = ready_banner(&plan, &a, Duration::from_millis(1234), 2);
        let api = plan.nodes[0].api_addr;
        assert!(text.contains("cluster up in 1.23 s: leader n2"), "{text}");
        assert!(text.contains(&format!("keel status --addr http://{api}")), "{text}");
        assert!(text.contains(&format!("curl -s http://{api}/v1/cluster")), "{text}");
        assert!(text.contains("data x/node-2"), "{text}");
        assert!(text.contains("run `keel up --nodes 2 --data-dir x` again"), "{text}");
        assert_eq!(up_again_command(&args(Path::new("keel-data"), 3)), "keel up");
    }
}
