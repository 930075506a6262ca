//! `keel up`: a local cluster in one command.
//!
//! Starts `--nodes` children running `keel serve` on loopback ports, merges their JSON logs into one
//! compact stream on stdout, waits until every node answers and one reports a leader, prints the endpoints,
//! and on Ctrl-C / SIGTERM stops the children (SIGTERM, then SIGKILL after `STOP_TIMEOUT`).
//!
//! The ports are chosen once and saved in `<data-dir>/up.json` (`plan.rs`); the next `keel up` on the same
//! data dir reuses them, so the same cluster (same ids, peer addresses and node data) comes back. With
//! `--tls` the nodes serve HTTPS and use mutual TLS between peers, with certificates from a throwaway CA
//! in `<data-dir>/tls/` (`tls.rs`). With `--redis-port-base N` every node also runs a managed
//! `redis-server` and a Sentinel-compatible listener (`redis.rs`). The pure parts, plan handling and log
//! formatting (`logfmt.rs`), are
//! plain functions with unit tests.

mod logfmt;
mod plan;
mod redis;
mod tls;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cli::print_out;
use logfmt::format_log_line;
use plan::{node_data_dir, prepare, serve_command_args, validate_nodes, UpNode, UpPlan};
use redis::{check_redis_server, UpRedis};
use tls::UpTls;

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

    /// Serve HTTPS, with mutual TLS between peers: certificates from a throwaway CA, made in
    /// `<data-dir>/tls/` (kept for the next `keel up --tls`)
    #[arg(long)]
    pub tls: bool,

    /// Run managed Redis: node i's `redis-server` on port N+i-1 (`keel serve --redis-port`), and a
    /// Sentinel-compatible listener on port S+i-1 (`--sentinel-addr`) that names the master as `keel`.
    /// Needs `redis-server` on PATH (or `-- --redis-server PATH`)
    #[arg(long, value_name = "N")]
    pub redis_port_base: Option<u16>,

    /// First port of the Sentinel listeners with --redis-port-base [default: N + 20000, e.g. 26379 for
    /// 6379]
    #[arg(long, value_name = "S", requires = "redis_port_base")]
    pub sentinel_port_base: Option<u16>,

    /// extra flags passed to every `keel serve` (after `--`)
    #[arg(last = true)]
    pub serve_args: Vec<String>,
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
    tls: Option<&UpTls>,
    redis: Option<&UpRedis>,
    exits: mpsc::UnboundedSender<ExitReport>,
) -> anyhow::Result<Proc> {
    let mut extra: Vec<String> = tls
        .map(|t| t.serve_flags(node.id))
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    extra.extend(redis.map(|r| r.serve_flags(node.id)).unwrap_or_default());
    extra.extend(args.serve_args.iter().cloned());
    // The managed redis-server runs inside its data dir, so a relative `--data-dir` would name a
    // directory that does not exist from there: give the nodes an absolute one.
    let data_dir = match redis {
        Some(_) => {
            std::path::absolute(&args.data_dir).with_context(|| format!("make {} absolute", args.data_dir.display()))?
        }
        None => args.data_dir.clone(),
    };
    let mut cmd = Command::new(exe);
    cmd.args(serve_command_args(plan, node, &data_dir, &extra))
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
async fn probe_all(http: &reqwest::Client, plan: &UpPlan, scheme: &str) -> Vec<(u64, Option<Value>)> {
    let mut set = JoinSet::new();
    for node in &plan.nodes {
        let http = http.clone();
        let (id, url) = (node.id, format!("{scheme}://{}/v1/status", node.api_addr));
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
    #[error("no primary's Redis is the master yet")]
    NoRedisMaster,
    #[error("no answer from {}", .0.join(", "))]
    Silent(Vec<String>),
}

/// Polls until every node answers and all report the same leader (and, with `redis_master`, the
/// primary's Redis is the master); returns the leader, or what was missing at the deadline. With
/// `tls`, over HTTPS trusting only its CA.
async fn wait_ready(
    plan: &UpPlan,
    tls: Option<&UpTls>,
    redis_master: bool,
    deadline: Instant,
) -> Result<u64, NotReady> {
    keel_raft::network::install_crypto_provider();
    let mut builder = reqwest::Client::builder().no_proxy().timeout(PROBE_TIMEOUT);
    if let Some(tls) = tls {
        let ca = crate::cli::read_ca(&tls.ca()).map_err(|e| NotReady::Client(format!("{e:#}")))?;
        builder = builder.tls_certs_only(ca);
    }
    let http = builder.build().map_err(|e| NotReady::Client(e.to_string()))?;
    let scheme = scheme(tls);
    loop {
        let results = probe_all(&http, plan, scheme).await;
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
        let master = !redis_master
            || results
                .iter()
                .flat_map(|(_, s)| s)
                .any(|s| s["role"] == "primary" && s["service"]["role"] == "master");
        match (silent.is_empty(), leader) {
            (true, Some(leader)) if master => return Ok(leader),
            _ if Instant::now() + PROBE_INTERVAL < deadline => tokio::time::sleep(PROBE_INTERVAL).await,
            (true, Some(_)) => return Err(NotReady::NoRedisMaster),
            (true, None) => return Err(NotReady::NoLeader),
            (false, _) => {
                let names: Vec<String> = silent.iter().map(|n| format!("n{} ({})", n.id, n.api_addr)).collect();
                return Err(NotReady::Silent(names));
            }
        }
    }
}

/// `https` with TLS, else `http`.
fn scheme(tls: Option<&UpTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
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
    if args.tls {
        cmd.push_str(" --tls");
    }
    if let Some(base) = args.redis_port_base {
        cmd.push_str(&format!(" --redis-port-base {base}"));
    }
    if let Some(base) = args.sentinel_port_base {
        cmd.push_str(&format!(" --sentinel-port-base {base}"));
    }
    cmd
}

/// The block printed once the cluster is up: endpoints, data dirs and commands to try.
fn ready_banner(
    plan: &UpPlan,
    args: &UpArgs,
    (tls, redis): (Option<&UpTls>, Option<&UpRedis>),
    elapsed: Duration,
    leader: u64,
) -> String {
    let scheme = scheme(tls);
    let mut out = format!("\ncluster up in {:.2} s: leader n{leader}\n\n", elapsed.as_secs_f64());
    for node in &plan.nodes {
        out.push_str(&format!(
            "  n{}  api {scheme}://{}  peer {}  data {}\n",
            node.id,
            node.api_addr,
            node.peer_addr,
            node_data_dir(&args.data_dir, node.id).display()
        ));
    }
    if let Some(redis) = redis {
        out.push_str(&redis.banner(plan.nodes.len() as u32));
    }
    // The CLI's and curl's options for trusting the throwaway CA.
    let (ca, cacert) = match tls {
        Some(tls) => {
            let ca = tls.ca().display().to_string();
            out.push_str(&format!(
                "\nTLS: both ports serve HTTPS, peers use mutual TLS; certificates in {}, signed by the \
                 throwaway CA {ca}\n",
                tls.ca().parent().unwrap_or(Path::new(".")).display()
            ));
            (format!(" --ca {ca}"), format!(" --cacert {ca}"))
        }
        None => (String::new(), String::new()),
    };
    let first = format!("{scheme}://{}", plan.nodes[0].api_addr);
    out.push_str(&format!(
        "\ntry:\n  keel status --addr {first}{ca}\n  keel members list --addr {first}{ca}\n  \
         keel history --addr {first}{ca}\n  curl -s{cacert} {first}/v1/cluster\n\n\
         Ctrl-C stops the cluster; run `{}` again to bring the same cluster back.\n\n",
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
    let redis = args
        .redis_port_base
        .map(|base| UpRedis::new(base, args.sentinel_port_base, args.nodes))
        .transpose()?;
    if let Some(redis) = &redis {
        check_redis_server(&args.serve_args)?;
        let taken = redis.taken(args.nodes);
        if !taken.is_empty() {
            eprintln!(
                "error: ports of --redis-port-base are in use:\n  {}\nis another Redis, or an earlier `keel up`, \
                 still running? stop it or pick another --redis-port-base",
                taken.join("\n  ")
            );
            return Ok(1);
        }
    }
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
    let tls = args.tls.then(|| UpTls::new(&args.data_dir));
    if let Some(tls) = &tls {
        let ids: Vec<u64> = plan.nodes.iter().map(|n| n.id).collect();
        if tls.ensure(&ids)? {
            print_line(&format!(
                "made a throwaway CA and node certificates in {}",
                tls.ca().parent().unwrap_or(Path::new(".")).display()
            ));
        }
    }

    let started = Instant::now();
    let (exit_tx, mut exits) = mpsc::unbounded_channel();
    let mut procs = Vec::new();
    for node in &plan.nodes {
        match spawn_node(&exe, &plan, node, &args, tls.as_ref(), redis.as_ref(), exit_tx.clone()) {
            Ok(proc) => procs.push(proc),
            Err(e) => {
                stop_all(&mut procs, &mut exits).await;
                return Err(e);
            }
        }
    }

    let outcome = tokio::select! {
        ready = wait_ready(&plan, tls.as_ref(), redis.is_some(), started + READY_TIMEOUT) => Startup::Ready(ready),
        Some(report) = exits.recv() => Startup::Exited(report),
        _ = sigint.recv() => Startup::Signal,
        _ = sigterm.recv() => Startup::Signal,
    };
    match outcome {
        Startup::Ready(Ok(leader)) => print_out(&ready_banner(
            &plan,
            &args,
            (tls.as_ref(), redis.as_ref()),
            started.elapsed(),
            leader,
        )),
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

    #[test]
    fn banner_names_endpoints_and_commands() {
        let plan = UpPlan::allocate(2).unwrap();
        let mut a = UpArgs {
            nodes: 2,
            data_dir: PathBuf::from("x"),
            tls: false,
            redis_port_base: None,
            sentinel_port_base: None,
            serve_args: vec![],
        };
        let text = ready_banner(&plan, &a, (None, None), Duration::from_millis(1234), 2);
        let api = plan.nodes[0].api_addr;
        assert!(text.contains("cluster up in 1.23 s: leader n2"), "{text}");
        assert!(text.contains(&format!("keel status --addr http://{api}")), "{text}");
        assert!(text.contains(&format!("curl -s http://{api}/v1/cluster")), "{text}");
        assert!(text.contains("data x/node-2"), "{text}");
        assert!(text.contains("run `keel up --nodes 2 --data-dir x` again"), "{text}");
        let default = UpArgs {
            nodes: 3,
            data_dir: PathBuf::from("keel-data"),
            tls: false,
            redis_port_base: None,
            sentinel_port_base: None,
            serve_args: vec![],
        };
        assert_eq!(up_again_command(&default), "keel up");

        // With TLS: https, and the CA in every hint.
        a.tls = true;
        let tls = UpTls::new(&a.data_dir);
        let text = ready_banner(&plan, &a, (Some(&tls), None), Duration::from_millis(1234), 2);
        assert!(text.contains(&format!("api https://{api}")), "{text}");
        assert!(
            text.contains(&format!("keel status --addr https://{api} --ca x/tls/ca.pem")),
            "{text}"
        );
        assert!(
            text.contains(&format!("curl -s --cacert x/tls/ca.pem https://{api}/v1/cluster")),
            "{text}"
        );
        assert!(
            text.contains("run `keel up --nodes 2 --data-dir x --tls` again"),
            "{text}"
        );

        // With managed Redis: each node's Redis and Sentinel, and the flags in the command to come back.
        a.tls = false;
        a.redis_port_base = Some(7000);
        let redis = UpRedis::new(7000, None, 2).unwrap();
        let text = ready_banner(&plan, &a, (None, Some(&redis)), Duration::from_millis(1234), 2);
        assert!(
            text.contains("n2  redis 127.0.0.1:7001  sentinel 127.0.0.1:27001"),
            "{text}"
        );
        assert!(
            text.contains("redis-cli -p 27000 SENTINEL get-master-addr-by-name keel"),
            "{text}"
        );
        assert!(
            text.contains("run `keel up --nodes 2 --data-dir x --redis-port-base 7000` again"),
            "{text}"
        );
    }
}
