//! The cluster fixture: real Keel nodes on this test process's own loopback address.
//!
//! Two backends behind one API ([`Backend`]):
//! - [`Backend::Process`] ([`Cluster::new`]): each node is a `keel serve` child process with its
//!   own log file. Use it for process behaviour: kill -9, SIGSTOP, network namespaces, exit
//!   codes, logs, and anything that reads process-global state (the metrics counters, libgit2's
//!   network timeouts, Git Sync's last hook outcome).
//! - [`Backend::InProcess`] ([`Cluster::in_process`]): each node is `Node::start` on the test's
//!   own tokio runtime (a `multi_thread` one), configured from the very same `serve` arguments.
//!   For tests of logic over HTTP. Measured, it is not faster than child processes on a 2-core
//!   machine (a cluster's start-up is Raft election and lease timing, not exec). Its logs go to
//!   the test's stderr through one shared tracing subscriber, so [`Cluster::log`] is empty;
//!   `kill` and `stop` are a graceful shutdown.
//!
//! Ports come from [`free_port`] on [`process_ip`] (see `keel_jepsen::ports` for why that is
//! enough across the whole test run). Every node is stopped when the fixture drops, so no node
//! outlives its test. Waits poll observable state until a deadline; there are no fixed sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::logs::tail;
use crate::netns::NetLab;
use crate::{free_port, keel_bin, poll_until, process_ip};

/// How the nodes of a [`Cluster`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `keel serve` child processes.
    Process,
    /// `Node::start` on the test's tokio runtime.
    InProcess,
}

/// A node started in-process: its task holds the `NodeHandle` until told to stop.
struct InProc {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub struct TestNode {
    pub id: u64,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    inproc: Option<InProc>,
    pub extra: Vec<String>,
    /// Network namespace the node runs in (partition tests).
    pub netns: Option<String>,
    /// `http`, or `https` for nodes started with `--tls-cert` (tls.rs).
    pub scheme: &'static str,
}

impl TestNode {
    fn new(id: u64, api: SocketAddr, peer: SocketAddr, dir: &Path, netns: Option<String>) -> TestNode {
        TestNode {
            id,
            api,
            peer,
            data_dir: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            child: None,
            inproc: None,
            extra: Vec::new(),
            netns,
            scheme: "http",
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.api)
    }

    /// Started and not stopped (a process may have exited on its own meanwhile).
    pub fn running(&self) -> bool {
        self.child.is_some() || self.inproc.is_some()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ip: String,
    pub nodes: Vec<TestNode>,
    /// Flags added to every node (tokens, timings).
    pub common: Vec<String>,
    pub http: reqwest::Client,
    pub backend: Backend,
    /// Why in-process nodes failed to start, for the timeout report.
    start_errors: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    /// Lay out `n` nodes (ids 1..=n) as child processes, without starting them.
    pub fn new(n: u64, common: &[&str]) -> Cluster {
        Cluster::with_backend(Backend::Process, n, common)
    }

    /// Lay out `n` nodes (ids 1..=n) to run in this process, without starting them.
    /// `KEEL_TESTKIT_BACKEND=process` runs them as child processes instead (to compare, or to
    /// get one log file per node when debugging).
    pub fn in_process(n: u64, common: &[&str]) -> Cluster {
        let backend = match std::env::var("KEEL_TESTKIT_BACKEND").as_deref() {
            Ok("process") => Backend::Process,
            _ => Backend::InProcess,
        };
        Cluster::with_backend(backend, n, common)
    }

    pub fn with_backend(backend: Backend, n: u64, common: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // reqwest has no TLS crypto provider of its own: install ring before the first client.
        keel_raft::network::install_crypto_provider();
        let mut c = Cluster {
            dir,
            ip: process_ip(),
            nodes: Vec::new(),
            common: common.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            backend,
            start_errors: Arc::default(),
        };
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    /// Lay out one more node (not started, not in `--peers` of the others).
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let api = format!("{}:{}", self.ip, free_port(&self.ip)).parse().unwrap();
        let peer = format!("{}:{}", self.ip, free_port(&self.ip)).parse().unwrap();
        self.nodes.push(TestNode::new(id, api, peer, self.dir.path(), None));
        id
    }

    /// Lay out `lab.n` nodes (child processes), node `i` in namespace `lab.ns(i)` at
    /// `lab.addr(i)` (fixed ports).
    pub fn in_netns(lab: &NetLab, common: &[&str]) -> Cluster {
        let mut c = Cluster::new(0, common);
        for i in 1..=lab.n {
            let a = lab.addr(i);
            let (api, peer) = (
                format!("{a}:7101").parse().unwrap(),
                format!("{a}:7201").parse().unwrap(),
            );
            c.nodes.push(TestNode::new(i, api, peer, c.dir.path(), Some(lab.ns(i))));
        }
        c
    }

    /// `--peers` value for the first `n` nodes.
    pub fn peers(&self, n: usize) -> String {
        self.nodes[..n]
            .iter()
            .map(|x| format!("{}={}", x.id, x.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The `keel serve` arguments of node `id`, bootstrapping from the first `peers` nodes.
    pub fn serve_args(&self, id: u64, peers: Option<usize>) -> Vec<String> {
        let n = self.node(id);
        let mut a: Vec<String> = vec![
            "serve".into(),
            "--id".into(),
            id.to_string(),
            "--api-addr".into(),
            n.api.to_string(),
            "--peer-addr".into(),
            n.peer.to_string(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
        ];
        if let Some(p) = peers {
            a.push("--peers".into());
            a.push(self.peers(p));
        }
        a.extend(self.common.iter().cloned());
        a.extend(n.extra.iter().cloned());
        a
    }

    /// Start node `id` with `--peers` listing all nodes.
    pub fn start(&mut self, id: u64) {
        let n = self.nodes.len();
        let args = self.serve_args(id, Some(n));
        self.spawn(id, args);
    }

    /// Start node `id` with arbitrary serve arguments (`serve` first).
    pub fn spawn(&mut self, id: u64, args: Vec<String>) {
        match self.backend {
            Backend::Process => self.spawn_process(id, args),
            Backend::InProcess => self.spawn_in_process(id, args),
        }
    }

    fn spawn_process(&mut self, id: u64, args: Vec<String>) {
        self.spawn_bin(id, &keel_bin(), args, None);
    }

    /// Start node `id` as a child process of `bin` (another build of `keel`, e.g. an older
    /// release) with `args`, appending to its log file, after a line `banner` if given.
    pub fn spawn_bin(&mut self, id: u64, bin: &Path, args: Vec<String>, banner: Option<&str>) {
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        if let Some(banner) = banner {
            use std::io::Write as _;
            let _ = writeln!(&log, "{banner}");
        }
        let mut cmd = match &node.netns {
            // `ip netns exec` execs the program in place: the child's pid is keel's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(&args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        node.child = Some(child);
    }

    /// Parse `args` exactly as `keel serve` does (flags, `KEEL_*` env, `--config`), then run
    /// `Node::start` in a task on the current runtime that holds the handle until [`Cluster::stop`]
    /// or the fixture drops.
    fn spawn_in_process(&mut self, id: u64, args: Vec<String>) {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: keel_node::config::ServeArgs,
        }
        use clap::Parser;
        assert!(self.node(id).inproc.is_none(), "node {id} already running");
        assert_eq!(
            args.first().map(String::as_str),
            Some("serve"),
            "serve arguments start with `serve`"
        );
        let serve = Serve::try_parse_from(&args).unwrap_or_else(|e| panic!("node {id}: serve arguments: {e}"));
        let config =
            keel_node::config::Config::load(&serve.args).unwrap_or_else(|e| panic!("node {id}: configuration: {e}"));
        // One subscriber for the whole process (later calls keep it): every node logs to the
        // test's captured stderr.
        keel_node::cli::serve::init_tracing(keel_node::config::LogFormat::Text);
        let rt = tokio::runtime::Handle::try_current().expect("in-process nodes run on the test's tokio runtime");
        let (stop, stopped) = oneshot::channel::<()>();
        let errors = self.start_errors.clone();
        let task = rt.spawn(async move {
            match keel_node::state::Node::start(config).await {
                Ok(handle) => {
                    // A dropped sender (the fixture dropped) stops the node as well.
                    let _ = stopped.await;
                    handle.shutdown().await;
                }
                Err(e) => {
                    eprintln!("in-process node {id} failed to start: {e}");
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("node {id}: {e}"));
                }
            }
        });
        self.node_mut(id).inproc = Some(InProc { stop, task });
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.start(id);
        }
    }

    /// kill -9 (a graceful shutdown for an in-process node: there is no kill -9 in-process).
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = self.node_mut(id).inproc.take() {
            shutdown_in_process(vec![p]);
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code (0 for an in-process node that
    /// shut down).
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        if let Some(p) = self.node_mut(id).inproc.take() {
            return shutdown_in_process(vec![p]).then_some(0);
        }
        let mut c = self.node_mut(id).child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's log file (empty for in-process nodes: they log to the test's stderr).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// Node `id`'s answer to a GET of `path`, if one came within 2 s with a success status.
    async fn get_ok(&self, id: u64, path: &str) -> Option<reqwest::Response> {
        let url = format!("{}{path}", self.node(id).url());
        crate::success(self.http.get(url), Duration::from_secs(2)).await
    }

    pub async fn get(&self, id: u64, path: &str) -> Option<Value> {
        self.get_ok(id, path).await?.json().await.ok()
    }

    /// Node `id`'s `/metrics` text.
    pub async fn metrics(&self, id: u64) -> Option<String> {
        self.get_ok(id, "/metrics").await?.text().await.ok()
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        self.get(id, "/v1/status").await
    }

    /// Wait until `f` returns Some, polling every 50 ms, or dump the logs and panic with `what`
    /// after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match poll_until(timeout, Duration::from_millis(50), f).await {
            Some(v) => v,
            None => {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
        }
    }

    /// Wait until all of `ids` agree on one leader (that is one of them); returns the leader.
    pub async fn wait_leader(&self, ids: &[u64], timeout: Duration) -> u64 {
        self.wait_for(timeout, "a leader agreed by all running nodes", || async {
            let mut leader = None;
            for id in ids {
                let s = self.status(*id).await?;
                let l = s["raft"]["leader"].as_u64()?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            leader.filter(|l| ids.contains(l))
        })
        .await
    }

    /// Wait until one running node outside `exclude` answers 200 on `/primary` (holds a valid
    /// lease); returns its id.
    pub async fn wait_primary(&self, exclude: &[u64], timeout: Duration) -> u64 {
        self.wait_for(timeout, "a primary with a lease", || async {
            for n in self.nodes.iter().filter(|n| n.running() && !exclude.contains(&n.id)) {
                if self.holds_lease(n.id, Duration::from_millis(500)).await {
                    return Some(n.id);
                }
            }
            None
        })
        .await
    }

    /// Wait until node `id`'s status names `primary` as the primary (a replica learns of a new
    /// primary a moment after the primary itself knows, so a write sent to it may meet
    /// `no_primary` before then).
    pub async fn wait_knows_primary(&self, id: u64, primary: u64, timeout: Duration) {
        self.wait_for(timeout, "the node to know the primary", || async {
            let s = self.status(id).await?;
            (s["primary"]["node"].as_u64() == Some(primary)).then_some(())
        })
        .await
    }

    /// Whether node `id` answers 200 on `/primary` (it is the primary and holds a valid lease)
    /// within `timeout`.
    pub async fn holds_lease(&self, id: u64, timeout: Duration) -> bool {
        let r = self
            .http
            .get(format!("{}/primary", self.node(id).url()))
            .timeout(timeout)
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    }

    /// Run the `keel` CLI (always the binary, whatever the backend).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(keel_bin())
            .args(args)
            .env_remove("KEEL_ADDR")
            .env_remove("KEEL_ADMIN_TOKEN")
            .env_remove("KEEL_TOKEN")
            .output()
            .expect("run keel")
    }

    pub fn dump_logs(&self) {
        for e in self.start_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            eprintln!("----- in-process start failed: {e}");
        }
        for n in &self.nodes {
            eprintln!("----- node {} log (last 40 lines) -----\n{}", n.id, tail(&n.log, 40));
        }
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }
}

/// Tell in-process nodes to shut down and wait (up to 15 s) until they have; false if one did
/// not finish in time. Blocks the calling worker thread, which needs a `multi_thread` runtime;
/// on a `current_thread` runtime the node tasks are aborted instead.
fn shutdown_in_process(nodes: Vec<InProc>) -> bool {
    let mut tasks = Vec::new();
    for p in nodes {
        let _ = p.stop.send(());
        tasks.push(p.task);
    }
    let rt = match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => rt,
        _ => {
            tasks.iter().for_each(JoinHandle::abort);
            return false;
        }
    };
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let mut all = true;
            for task in tasks {
                let abort = task.abort_handle();
                if tokio::time::timeout(Duration::from_secs(15), task).await.is_err() {
                    abort.abort();
                    all = false;
                }
            }
            all
        })
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut inproc = Vec::new();
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            inproc.extend(n.inproc.take());
        }
        // Debugging aid for the benchmarks: keep each node's log (`n<id>.log`) in $KEEL_BENCH_LOG_DIR.
        if let Some(keep) = std::env::var_os("KEEL_BENCH_LOG_DIR") {
            for n in &self.nodes {
                let _ = std::fs::copy(&n.log, PathBuf::from(&keep).join(format!("n{}.log", n.id)));
            }
        }
        if !inproc.is_empty() {
            shutdown_in_process(inproc);
        }
    }
}
