//! Shared fixture for multi-process tests: real `keel serve` processes on loopback.
//!
//! Each cluster picks its own random 127.x.y.1 address, so tests running in parallel (one
//! process each under nextest) cannot collide on ports, and ports are found by binding to
//! port 0. Every child is killed when the fixture drops, so no process outlives its test.
//! Waits poll observable state until a deadline; there are no fixed sleeps.

#![allow(dead_code)]

pub mod netns;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// A loopback address of its own for this test process.
pub fn test_ip() -> String {
    let r: u32 = rand::random();
    format!("127.{}.{}.1", 1 + (r % 250), 1 + ((r >> 8) % 250))
}

/// A port nothing listens on now, and one this process has not handed out before: the kernel may
/// give a port released by an earlier call to a later one, and two nodes of one cluster on the
/// same port made a node fail to start ("Address already in use") in a CI run.
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = TcpListener::bind(format!("{ip}:0")).expect("bind port 0");
        let port = l.local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

pub struct TestNode {
    pub id: u64,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Network namespace the node runs in (partition tests).
    pub netns: Option<String>,
    /// `http`, or `https` for nodes started with `--tls-cert` (tls.rs).
    pub scheme: &'static str,
}

impl TestNode {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.api)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ip: String,
    pub nodes: Vec<TestNode>,
    /// Flags added to every node (tokens, timings).
    pub common: Vec<String>,
    pub http: reqwest::Client,
}

impl Cluster {
    /// Lay out `n` nodes (ids 1..=n) without starting them.
    pub fn new(n: u64, common: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = test_ip();
        // reqwest has no TLS crypto provider of its own: install ring before the first client.
        keel_raft::network::install_crypto_provider();
        let mut c = Cluster {
            dir,
            ip,
            nodes: Vec::new(),
            common: common.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
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
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let log = self.dir.path().join(format!("node-{id}.log"));
        self.nodes.push(TestNode {
            id,
            api,
            peer,
            data_dir,
            log,
            child: None,
            extra: Vec::new(),
            netns: None,
            scheme: "http",
        });
        id
    }

    /// Lay out `lab.n` nodes, node `i` in namespace `lab.ns(i)` at `lab.addr(i)` (fixed ports).
    pub fn in_netns(lab: &netns::NetLab, common: &[&str]) -> Cluster {
        let mut c = Cluster::new(0, common);
        for i in 1..=lab.n {
            let a = lab.addr(i);
            let data_dir = c.dir.path().join(format!("node-{i}"));
            let log = c.dir.path().join(format!("node-{i}.log"));
            c.nodes.push(TestNode {
                id: i,
                api: format!("{a}:7101").parse().unwrap(),
                peer: format!("{a}:7201").parse().unwrap(),
                data_dir,
                log,
                child: None,
                extra: Vec::new(),
                netns: Some(lab.ns(i)),
                scheme: "http",
            });
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

    /// Start node `id` with `--peers` listing the first `peers` nodes (all nodes when `None`).
    pub fn start(&mut self, id: u64) {
        let n = self.nodes.len();
        let args = self.serve_args(id, Some(n));
        self.spawn(id, args);
    }

    /// Start node `id` with arbitrary serve arguments.
    pub fn spawn(&mut self, id: u64, args: Vec<String>) {
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = match &node.netns {
            // `ip netns exec` execs the program in place: the child's pid is keel's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, KEEL]);
                c
            }
            None => Command::new(KEEL),
        };
        let child = cmd
            .args(&args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn keel");
        node.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.start(id);
        }
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
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

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub async fn get(&self, id: u64, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.node(id).url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        self.get(id, "/v1/status").await
    }

    /// Wait until `f` returns Some, polling every 50 ms, or panic with `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until all of `ids` agree on one leader (that is one of them) and report three
    /// agreeing terms; returns the leader.
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
            for n in self
                .nodes
                .iter()
                .filter(|n| n.child.is_some() && !exclude.contains(&n.id))
            {
                let r = self
                    .http
                    .get(format!("{}/primary", n.url()))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    return Some(n.id);
                }
            }
            None
        })
        .await
    }

    /// Run the `keel` CLI.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(KEEL)
            .args(args)
            .env_remove("KEEL_ADDR")
            .env_remove("KEEL_ADMIN_TOKEN")
            .output()
            .expect("run keel")
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("----- node {} log (last 40 lines) -----\n{}", n.id, tail.join("\n"));
        }
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `git ARGS` in `dir` with a fixed author; its stdout. Panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare Git Sync upstream repository in `dir` with one commit under `shared/`; returns its file:// URL.
pub fn gitsync_upstream(dir: &Path) -> String {
    let bare = dir.join("upstream.git");
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("shared")).unwrap();
    git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("shared/config.txt"), "v1").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    format!("file://{}", bare.display())
}

/// Three nodes following a fresh [`gitsync_upstream`] in `repo_dir` (branch `main`, path `shared/`), with
/// `extra` flags; started, with a leader and a primary holding its lease. Returns the primary's id.
pub async fn gitsync_cluster(repo_dir: &Path, extra: &[&str], timeout: Duration) -> (Cluster, u64) {
    let url = gitsync_upstream(repo_dir);
    let mut args = vec![
        "--gitsync-repo",
        &url,
        "--gitsync-branch",
        "main",
        "--gitsync-path",
        "shared/",
    ];
    args.extend_from_slice(extra);
    let mut c = Cluster::new(3, &args);
    c.start_all();
    c.wait_leader(&[1, 2, 3], timeout).await;
    let primary = c.wait_primary(&[], timeout).await;
    (c, primary)
}
