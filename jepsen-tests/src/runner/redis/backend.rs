//! The two systems a Redis run drives, behind one set of nemesis operations: Keel managing a
//! `redis-server` per node ([`Cluster`] with `--redis-port` and `--sentinel-addr`), or the
//! baseline, three plain `redis-server`s (one master, two replicas) watched by three Redis
//! Sentinels (quorum 2, `down-after-milliseconds` 1000). Every process is killed when the
//! backend drops.
//!
//! The nemesis maps onto the baseline as: a node's "control" process (Keel) is its Sentinel, so
//! `pause-keel` pauses the Sentinel; `kill` kills a node's Redis and Sentinel together.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::super::cluster::Cluster;

/// `down-after-milliseconds` of the baseline's Sentinels (issue 19: "1 s down-after").
pub(super) const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout` of the baseline's Sentinels (the default is 3 minutes, which would hold a
/// failed failover's retry back for the whole run).
pub(super) const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;

pub(super) enum Backend {
    Keel(Box<Cluster>),
    Sentinel(Baseline),
}

impl Backend {
    /// `(id, redis address)` of every node.
    pub(super) fn redis_addrs(&self) -> Vec<(u64, String)> {
        match self {
            Backend::Keel(c) => c
                .nodes
                .iter()
                .filter_map(|n| n.redis.as_ref().map(|r| (n.id, r.redis.clone())))
                .collect(),
            Backend::Sentinel(b) => b.nodes.iter().map(|n| (n.id, n.redis.clone())).collect(),
        }
    }

    /// `(id, discovery listener address)` of every node: Keel's `--sentinel-addr`, or the
    /// node's Sentinel.
    pub(super) fn listeners(&self) -> Vec<(u64, String)> {
        match self {
            Backend::Keel(c) => c
                .nodes
                .iter()
                .filter_map(|n| n.redis.as_ref().map(|r| (n.id, r.sentinel.clone())))
                .collect(),
            Backend::Sentinel(b) => b.nodes.iter().map(|n| (n.id, n.sentinel.clone())).collect(),
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Backend::Keel(_) => "keel",
            Backend::Sentinel(_) => "sentinel",
        }
    }

    /// kill -9 the whole node (Keel, and its Redis with it; or the node's Redis and Sentinel).
    pub(super) fn kill(&mut self, i: usize) {
        match self {
            Backend::Keel(c) => {
                c.resume_redis(i);
                c.kill(i);
            }
            Backend::Sentinel(b) => {
                b.kill(i, Proc::Redis);
                b.kill(i, Proc::Sentinel);
            }
        }
    }

    /// Start what [`Backend::kill`] stopped (anything still running is left alone).
    pub(super) fn restart(&mut self, i: usize) -> Result<(), String> {
        match self {
            Backend::Keel(c) if c.nodes[i].child.is_none() => c.spawn(i),
            Backend::Keel(_) => Ok(()),
            Backend::Sentinel(b) => {
                b.spawn(i, Proc::Redis)?;
                b.spawn(i, Proc::Sentinel)
            }
        }
    }

    /// SIGSTOP the node's control process: Keel, or the node's Sentinel.
    pub(super) fn pause_control(&mut self, i: usize) {
        match self {
            Backend::Keel(c) => c.pause(i),
            Backend::Sentinel(b) => {
                b.pause(i, Proc::Sentinel);
            }
        }
    }

    pub(super) fn resume_control(&mut self, i: usize) {
        match self {
            Backend::Keel(c) => c.resume(i),
            Backend::Sentinel(b) => b.resume(i, Proc::Sentinel),
        }
    }

    /// SIGSTOP the node's `redis-server` alone; `false` if none runs now.
    pub(super) fn pause_redis(&mut self, i: usize) -> bool {
        match self {
            Backend::Keel(c) => c.pause_redis(i),
            Backend::Sentinel(b) => b.pause(i, Proc::Redis),
        }
    }

    pub(super) fn resume_redis(&mut self, i: usize) {
        match self {
            Backend::Keel(c) => c.resume_redis(i),
            Backend::Sentinel(b) => b.resume(i, Proc::Redis),
        }
    }

    /// The network-namespace lab of a Keel run with `--netns` (the baseline runs on loopback).
    pub(super) fn lab(&self) -> Option<&crate::netns::NetLab> {
        match self {
            Backend::Keel(c) => c.lab.as_ref(),
            Backend::Sentinel(_) => None,
        }
    }

    /// `(id, API address)` of Keel's nodes (none for the baseline).
    pub(super) fn apis(&self) -> Vec<(u64, String)> {
        match self {
            Backend::Keel(c) => c.apis(),
            Backend::Sentinel(_) => Vec::new(),
        }
    }

    /// Everything running and resumed.
    pub(super) fn heal_all(&mut self) -> Result<(), String> {
        match self {
            Backend::Keel(c) => c.heal_all(),
            Backend::Sentinel(b) => {
                for i in 0..b.nodes.len() {
                    for p in [Proc::Redis, Proc::Sentinel] {
                        b.resume(i, p);
                        b.spawn(i, p)?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proc {
    Redis,
    Sentinel,
}

pub(super) struct BNode {
    id: u64,
    redis: String,
    sentinel: String,
    dir: PathBuf,
    log: PathBuf,
    procs: [Option<Child>; 2],
    paused: [bool; 2],
}

/// Redis's own Sentinel over three plain `redis-server`s, for comparison.
pub(super) struct Baseline {
    pub(super) nodes: Vec<BNode>,
}

/// `redis.conf` of a baseline node: the same persistence and replication settings Keel writes for
/// its own (`repl-diskless-sync-delay 0`, read-only replicas), a replica of `master` unless it is
/// the first node.
pub(super) fn redis_conf(addr: &str, dir: &Path, master: Option<&str>) -> String {
    let (ip, port) = addr.rsplit_once(':').unwrap_or(("127.0.0.1", addr));
    let mut s = format!(
        "port {port}\nbind {ip}\ndir \"{}\"\ndaemonize no\nreplica-read-only yes\nrepl-diskless-sync-delay 0\n",
        dir.display()
    );
    if let Some(m) = master {
        let (mip, mport) = m.rsplit_once(':').unwrap_or(("127.0.0.1", m));
        s.push_str(&format!("replicaof {mip} {mport}\n"));
    }
    s
}

/// `sentinel.conf`: monitor `master` as `name` with quorum 2 and 1 s down-after.
pub(super) fn sentinel_conf(addr: &str, dir: &Path, name: &str, master: &str) -> String {
    let (ip, port) = addr.rsplit_once(':').unwrap_or(("127.0.0.1", addr));
    let (mip, mport) = master.rsplit_once(':').unwrap_or(("127.0.0.1", master));
    format!(
        "port {port}\nbind {ip}\ndir \"{}\"\ndaemonize no\nsentinel monitor {name} {mip} {mport} 2\n\
         sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}\n\
         sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}\nsentinel parallel-syncs {name} 1\n",
        dir.display()
    )
}

impl Baseline {
    /// Write the configs under `out/data/n<id>` and start every server and Sentinel.
    pub(super) fn start(out: &Path, nodes: u64, name: &str) -> Result<Baseline, String> {
        let ip = "127.0.0.1";
        let free = || format!("{ip}:{}", crate::ports::free_port(ip));
        let mut b = Baseline { nodes: Vec::new() };
        let mut master = None;
        for id in 1..=nodes {
            let dir = std::path::absolute(out.join(format!("data/n{id}"))).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let (redis, sentinel) = (free(), free());
            let m: &String = master.get_or_insert(redis.clone());
            let conf = redis_conf(&redis, &dir, (id > 1).then_some(m.as_str()));
            std::fs::write(dir.join("redis.conf"), conf).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("sentinel.conf"), sentinel_conf(&sentinel, &dir, name, m))
                .map_err(|e| e.to_string())?;
            b.nodes.push(BNode {
                id,
                redis,
                sentinel,
                dir,
                log: out.join(format!("n{id}.log")),
                procs: [None, None],
                paused: [false, false],
            });
        }
        for i in 0..b.nodes.len() {
            b.spawn(i, Proc::Redis)?;
            b.spawn(i, Proc::Sentinel)?;
        }
        Ok(b)
    }

    /// Start the process unless it runs.
    fn spawn(&mut self, i: usize, p: Proc) -> Result<(), String> {
        let n = &mut self.nodes[i];
        if n.procs[p as usize].is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        match p {
            Proc::Redis => cmd.arg(n.dir.join("redis.conf")),
            Proc::Sentinel => cmd.arg(n.dir.join("sentinel.conf")).arg("--sentinel"),
        };
        let child = cmd
            .current_dir(&n.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start redis-server: {e}"))?;
        n.procs[p as usize] = Some(child);
        n.paused[p as usize] = false;
        Ok(())
    }

    fn signal(&self, i: usize, p: Proc, sig: &str) {
        if let Some(c) = &self.nodes[i].procs[p as usize] {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    fn kill(&mut self, i: usize, p: Proc) {
        if let Some(mut c) = self.nodes[i].procs[p as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused[p as usize] = false;
    }

    fn pause(&mut self, i: usize, p: Proc) -> bool {
        if self.nodes[i].procs[p as usize].is_none() {
            return false;
        }
        self.signal(i, p, "-STOP");
        self.nodes[i].paused[p as usize] = true;
        true
    }

    fn resume(&mut self, i: usize, p: Proc) {
        if self.nodes[i].paused[p as usize] {
            self.signal(i, p, "-CONT");
            self.nodes[i].paused[p as usize] = false;
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            for p in [Proc::Redis, Proc::Sentinel] {
                self.kill(i, p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_configs() {
        let dir = Path::new("/tmp/x");
        let m = redis_conf("127.0.0.1:7001", dir, None);
        assert!(
            m.contains("port 7001\nbind 127.0.0.1\n") && !m.contains("replicaof"),
            "{m}"
        );
        let r = redis_conf("127.0.0.1:7002", dir, Some("127.0.0.1:7001"));
        assert!(r.contains("replicaof 127.0.0.1 7001\n"), "{r}");
        let s = sentinel_conf("127.0.0.1:7003", dir, "keel", "127.0.0.1:7001");
        assert!(s.contains("sentinel monitor keel 127.0.0.1 7001 2\n"), "{s}");
        assert!(s.contains("sentinel down-after-milliseconds keel 1000\n"), "{s}");
    }
}
