//! The baseline: Redis's own Sentinel. Three plain `redis-server`s (one master, two replicas) and
//! three Sentinels (`redis-server <conf> --sentinel`, quorum 2, `down-after-milliseconds` 1000),
//! all on 127.0.0.1. "Node i" is Redis i and Sentinel i, as they would be deployed side by side.

use std::path::PathBuf;
use std::process::Command;

use keel_testkit::{free_port, Procs};

use crate::client::{ask_master, call, info};
use crate::{Kill, Killed, Setup, CALL};
use keel_replication::service::resp::Reply;

/// The master name the Sentinels monitor.
const NAME: &str = "bench";
const IP: &str = "127.0.0.1";
/// Sentinel's `down-after-milliseconds`: the "tuned to 1 s" of the issue.
pub const DOWN_AFTER_MS: u64 = 1000;
/// Sentinel's `failover-timeout`: also how long a Sentinel waits before it retries a failover that
/// did not complete (twice this); the promotions here take milliseconds.
pub const FAILOVER_TIMEOUT_MS: u64 = 2000;

pub struct Sentinels {
    procs: Procs,
    redis: Vec<String>,
    sentinels: Vec<String>,
    /// How many times node i's processes were started, for their log names.
    starts: Vec<[usize; 2]>,
    /// What the last kill took down: (node index, its sentinel too).
    down: Option<(usize, bool)>,
}

/// Settings every `redis-server` here gets, the same as Keel writes for its own (minus the fence).
fn redis_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        IP,
        "--daemonize",
        "no",
        "--replica-read-only",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--dir".into());
    a.push(dir.display().to_string());
    a
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let procs = Procs::new("redis-bench-sentinel-", None);
        let redis: Vec<String> = (0..3).map(|_| format!("{IP}:{}", free_port(IP))).collect();
        let sentinels: Vec<String> = (0..3).map(|_| format!("{IP}:{}", free_port(IP))).collect();
        let mut s = Sentinels {
            procs,
            redis,
            sentinels,
            starts: vec![[0, 0]; 3],
            down: None,
        };
        for i in 0..3 {
            std::fs::create_dir_all(s.dir(i)).expect("redis dir");
            s.write_sentinel_conf(i);
        }
        let master = s.redis[0].clone();
        for i in 0..3 {
            s.start_redis(i, (i > 0).then_some(master.as_str()));
        }
        for i in 0..3 {
            s.start_sentinel(i);
        }
        s
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.procs.path().join(format!("node{}", i + 1))
    }

    fn port(addr: &str) -> &str {
        addr.rsplit_once(':').map(|(_, p)| p).expect("host:port")
    }

    fn write_sentinel_conf(&self, i: usize) {
        let conf = format!(
            "port {port}\nbind {IP}\ndaemonize no\ndir \"{dir}\"\n\
             sentinel monitor {NAME} {IP} {mport} 2\n\
             sentinel down-after-milliseconds {NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {NAME} 1\n",
            port = Self::port(&self.sentinels[i]),
            dir = self.dir(i).display(),
            mport = Self::port(&self.redis[0]),
        );
        std::fs::write(self.dir(i).join("sentinel.conf"), conf).expect("sentinel.conf");
    }

    /// The name of the `n`th start of node `i`'s Redis (`kind` 0) or Sentinel (1).
    fn name_of(i: usize, kind: usize, n: usize) -> String {
        let base = format!("{}{}", ["redis", "sentinel"][kind], i + 1);
        if n == 0 {
            base
        } else {
            format!("{base}.{n}")
        }
    }

    /// A name for a new start of node `i`'s Redis or Sentinel.
    fn proc_name(&mut self, i: usize, kind: usize) -> String {
        self.starts[i][kind] += 1;
        Self::name_of(i, kind, self.starts[i][kind] - 1)
    }

    /// The name of the running one.
    fn current_name(&self, i: usize, kind: usize) -> String {
        Self::name_of(i, kind, self.starts[i][kind] - 1)
    }

    /// Redis i, as a replica of `master` if given.
    fn start_redis(&mut self, i: usize, master: Option<&str>) {
        let mut cmd = Command::new("redis-server");
        cmd.args(redis_args(
            Self::port(&self.redis[i]).parse().expect("port"),
            &self.dir(i),
        ));
        if let Some(m) = master {
            let (host, port) = m.rsplit_once(':').expect("host:port");
            cmd.args(["--replicaof", host, port]);
        }
        let name = self.proc_name(i, 0);
        self.procs.spawn(&name, cmd);
    }

    /// Sentinel i on its own config file (Sentinel rewrites it with what it learns).
    fn start_sentinel(&mut self, i: usize) {
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.dir(i).join("sentinel.conf")).arg("--sentinel");
        let name = self.proc_name(i, 1);
        self.procs.spawn(&name, cmd);
    }

    /// `SENTINEL <what> NAME` at sentinel `s`: one flags string per entry.
    fn flags(s: &str, what: &str) -> Option<Vec<String>> {
        let Reply::Array(Some(entries)) = call(s, &["SENTINEL", what, NAME], CALL).ok()? else {
            return None;
        };
        entries
            .iter()
            .map(|e| match e {
                Reply::Array(Some(kv)) => kv
                    .chunks(2)
                    .find(|p| p[0].text().as_deref() == Some("flags"))
                    .and_then(|p| p.get(1)?.text()),
                _ => None,
            })
            .collect()
    }
}

impl Setup for Sentinels {
    fn system(&self) -> &'static str {
        "sentinel"
    }

    fn name(&self) -> &str {
        NAME
    }

    fn sentinels(&self) -> Vec<String> {
        self.sentinels.clone()
    }

    fn who(&self, addr: &str) -> String {
        self.redis
            .iter()
            .position(|a| a == addr)
            .map_or_else(|| addr.to_string(), |i| format!("redis{}", i + 1))
    }

    /// Every Sentinel names the same master, which has two online replicas, and sees both
    /// replicas and the two other Sentinels up (no `s_down` flag).
    fn steady(&mut self) -> Option<String> {
        let master = ask_master(&self.sentinels[0], NAME, CALL)?;
        let all_name = self
            .sentinels
            .iter()
            .all(|s| ask_master(s, NAME, CALL).as_deref() == Some(master.as_str()));
        let i = info(&master, "replication", CALL)?;
        let online = i
            .iter()
            .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
            .count();
        let healthy = self.sentinels.iter().all(|s| {
            let up = |what| Self::flags(s, what).is_some_and(|f| f.len() == 2 && f.iter().all(|f| !f.contains("down")));
            up("replicas") && up("sentinels")
        });
        (all_name && i.get("role").map(String::as_str) == Some("master") && online == 2 && healthy).then_some(master)
    }

    fn kill(&mut self, how: Kill, master: &str) -> Killed {
        let i = self
            .redis
            .iter()
            .position(|a| a == master)
            .expect("the master is one of ours");
        let redis = self.current_name(i, 0);
        self.procs.stop(&redis);
        let with_sentinel = how == Kill::Node;
        if with_sentinel {
            let s = self.current_name(i, 1);
            self.procs.stop(&s);
        }
        self.down = Some((i, with_sentinel));
        Killed {
            who: if with_sentinel {
                format!("redis{n} and sentinel{n}", n = i + 1)
            } else {
                format!("redis{}", i + 1)
            },
        }
    }

    fn control_pids(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .filter_map(|s| info(s, "server", CALL)?.get("process_id").cloned())
            .collect()
    }

    /// The killed Redis comes back as a replica of the current master (as its supervisor or an
    /// operator would start it; left alone it would come back as a master until a Sentinel
    /// converts it, about 8 s later), and a killed Sentinel on its own rewritten config.
    fn restore(&mut self) {
        let Some((i, sentinel)) = self.down.take() else { return };
        let killed = self.redis[i].clone();
        let master = crate::wait("a Sentinel naming the new master", || {
            self.sentinels
                .iter()
                .find_map(|s| ask_master(s, NAME, CALL).filter(|m| *m != killed))
        });
        self.start_redis(i, Some(&master));
        if sentinel {
            self.start_sentinel(i);
        }
    }
}

/// A plain standalone `redis-server` (no replicas, no Sentinel), for the throughput line.
pub fn standalone(procs: &mut Procs) -> String {
    let port = free_port(IP);
    let dir = procs.path().join("standalone");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let mut cmd = Command::new("redis-server");
    cmd.args(redis_args(port, &dir));
    procs.spawn("standalone", cmd);
    let addr = format!("{IP}:{port}");
    crate::wait("the standalone redis-server", || {
        call(&addr, &["PING"], CALL)
            .ok()
            .filter(|r| r.text().as_deref() == Some("PONG"))
    });
    addr
}

/// For the report: how long a Sentinel waits before it calls a master down.
pub fn about() -> String {
    format!(
        "Redis Sentinel: 3 redis-server + 3 Sentinels, quorum 2, down-after-milliseconds {DOWN_AFTER_MS}, \
         failover-timeout {FAILOVER_TIMEOUT_MS}"
    )
}
