//! The nodes of one run: `keel serve` processes started through the `keel` CLI, on loopback
//! ports or each in its own network namespace, and the signals the nemesis sends them
//! (kill -9, SIGSTOP/SIGCONT, restart under a fake clock or with `--join`). Every process is
//! killed when the [`Cluster`] drops, and its namespaces are removed after that.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{RunConfig, RunOptions};
use crate::netns::NetLab;

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

pub(super) struct Node {
    pub(super) id: u64,
    api: String,
    peer: String,
    pub(super) data: PathBuf,
    log: PathBuf,
    /// Network namespace (netns mode).
    ns: Option<String>,
    pub(super) child: Option<Child>,
    pub(super) paused: bool,
    /// `FAKETIME` spec while the node runs under a skewed clock.
    pub(super) faketime: Option<String>,
    /// After a wipe the node restarts empty with `--join URL` instead of `--peers`.
    pub(super) join: Option<String>,
    /// Managed Redis (the Redis workloads): this node's `--redis-port` address and its
    /// `--sentinel-addr` discovery listener.
    pub(super) redis: Option<RedisAddrs>,
    /// The node's `redis-server` while SIGSTOPped by the nemesis (its pid).
    pub(super) redis_paused: Option<u32>,
}

/// Where a node's managed Redis and its Sentinel-protocol listener listen.
#[derive(Debug, Clone)]
pub(super) struct RedisAddrs {
    pub(super) redis: String,
    pub(super) sentinel: String,
}

/// The processes of one run (and the namespaces they live in).
pub(super) struct Cluster {
    keel: PathBuf,
    mode: String,
    min_acks: u64,
    peers: String,
    pub(super) nodes: Vec<Node>,
    faketime_lib: Option<PathBuf>,
    /// Dropped after the processes are killed (fields drop after `Drop::drop`).
    pub(super) lab: Option<NetLab>,
}

impl Cluster {
    pub(super) fn start(cfg: &RunConfig, opts: &RunOptions, want_faketime: bool) -> Result<Cluster, String> {
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
            let redis = opts.workload.is_redis().then(|| {
                let ip = api.rsplit_once(':').map_or("127.0.0.1", |(ip, _)| ip).to_string();
                // In its own namespace a node has its address to itself (and the harness cannot
                // bind it to probe for a free port): Redis's and Sentinel's usual ports.
                let port = |usual: u16| {
                    if c.lab.is_some() {
                        usual
                    } else {
                        crate::ports::free_port(&ip)
                    }
                };
                RedisAddrs {
                    redis: format!("{ip}:{}", port(6379)),
                    sentinel: format!("{ip}:{}", port(26379)),
                }
            });
            c.nodes.push(Node {
                id,
                api,
                peer,
                data: std::path::absolute(cfg.out.join(format!("data/n{id}")))
                    .unwrap_or_else(|_| cfg.out.join(format!("data/n{id}"))),
                log: cfg.out.join(format!("n{id}.log")),
                ns: c.lab.as_ref().map(|l| l.ns(id)),
                child: None,
                paused: false,
                faketime: None,
                join: None,
                redis,
                redis_paused: None,
            });
        }
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    pub(super) fn spawn(&mut self, i: usize) -> Result<(), String> {
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
        if let Some(r) = &n.redis {
            let port = r.redis.rsplit_once(':').map_or("", |(_, p)| p);
            cmd.args(["--redis-port", port, "--sentinel-addr", &r.sentinel]);
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

    pub(super) fn kill(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP the node's `redis-server` alone (the child of its keel process); `false` when it
    /// has none running now.
    pub(super) fn pause_redis(&mut self, i: usize) -> bool {
        let Some(keel) = self.nodes[i].child.as_ref().map(|c| c.id()) else {
            return false;
        };
        let Some(pid) = child_named(keel, "redis-server") else {
            return false;
        };
        let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
        self.nodes[i].redis_paused = Some(pid);
        true
    }

    pub(super) fn resume_redis(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].redis_paused.take() {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }

    pub(super) fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.nodes[i].paused = true;
    }

    pub(super) fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
    }

    /// Every process running and resumed, no network fault, no skewed clock.
    pub(super) fn heal_all(&mut self) -> Result<(), String> {
        if let Some(lab) = &self.lab {
            lab.heal();
        }
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.resume_redis(i);
            if self.nodes[i].faketime.take().is_some() {
                self.kill(i);
            }
            if self.nodes[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    pub(super) fn apis(&self) -> Vec<(u64, String)> {
        self.nodes.iter().map(|n| (n.id, n.api.clone())).collect()
    }
}

/// A child of `pid` whose command name is `name` (from `/proc/<pid>/task/*/children`).
pub(super) fn child_named(pid: u32, name: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() == name))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
