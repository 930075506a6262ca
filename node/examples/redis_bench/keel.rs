//! The Keel side: three `keel serve` processes (the testkit's [`Cluster`]), each with its own
//! managed `redis-server` (`--redis-port`) and Sentinel-compatible listener (`--sentinel-addr`),
//! on the fixture's loopback address.

use std::process::Command;
use std::time::Duration;

use keel_testkit::{blocking_client, free_port, Cluster};

use crate::client::{ask_master, info};
use crate::{Kill, Killed, Setup, CALL};

/// The master name Keel's listeners answer to by default (`--sentinel-name`).
const NAME: &str = "keel";

pub struct Keel {
    pub c: Cluster,
    http: reqwest::blocking::Client,
    /// Node i+1's Redis and Sentinel listener addresses.
    redis: Vec<String>,
    sentinels: Vec<String>,
    /// The node killed by the last [`Kill::Node`], started again by `restore`.
    down: Option<u64>,
}

impl Keel {
    pub fn start() -> Keel {
        let mut c = Cluster::new(3, &[]);
        let (mut redis, mut sentinels) = (Vec::new(), Vec::new());
        for n in c.nodes.iter_mut() {
            let ip = n.api.ip().to_string();
            let (rp, sp) = (free_port(&ip), free_port(&ip));
            n.extra = vec![
                "--redis-port".into(),
                rp.to_string(),
                "--sentinel-addr".into(),
                format!("{ip}:{sp}"),
            ];
            redis.push(format!("{ip}:{rp}"));
            sentinels.push(format!("{ip}:{sp}"));
        }
        c.start_all();
        Keel {
            c,
            http: blocking_client(Duration::from_secs(1)),
            redis,
            sentinels,
            down: None,
        }
    }

    fn status(&self, id: u64, probe: &str) -> u16 {
        self.http
            .get(format!("{}/{probe}", self.c.node(id).url()))
            .send()
            .map_or(0, |r| r.status().as_u16())
    }

    /// The node whose Redis is at `addr`.
    pub fn node_of(&self, addr: &str) -> Option<u64> {
        self.redis.iter().position(|a| a == addr).map(|i| i as u64 + 1)
    }
}

impl Setup for Keel {
    fn system(&self) -> &'static str {
        "keel"
    }

    fn name(&self) -> &str {
        NAME
    }

    fn sentinels(&self) -> Vec<String> {
        self.sentinels.clone()
    }

    fn who(&self, addr: &str) -> String {
        self.node_of(addr)
            .map_or_else(|| addr.to_string(), |id| format!("n{id}"))
    }

    /// One node answers `/primary` 200, the other two `/replica` 200 (their Redis is a healthy
    /// replica of the primary's, link up), and all three listeners name the primary's Redis.
    fn steady(&mut self) -> Option<String> {
        let primary = (1..=3u64).find(|id| self.status(*id, "primary") == 200)?;
        let master = self.redis[primary as usize - 1].clone();
        let replicas_ok = (1..=3u64)
            .filter(|id| *id != primary)
            .all(|id| self.status(id, "replica") == 200);
        let named = self
            .sentinels
            .iter()
            .all(|s| ask_master(s, NAME, CALL).as_deref() == Some(master.as_str()));
        (replicas_ok && named).then_some(master)
    }

    fn kill(&mut self, how: Kill, master: &str) -> Killed {
        let id = self.node_of(master).expect("the master is a node's Redis");
        match how {
            Kill::Node => {
                // keel's redis-server dies with it (PR_SET_PDEATHSIG).
                self.c.kill(id);
                self.down = Some(id);
            }
            Kill::Redis => {
                let pid = info(master, "server", CALL)
                    .and_then(|i| i.get("process_id").cloned())
                    .expect("the master's redis-server pid");
                let ok = Command::new("kill")
                    .args(["-9", &pid])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "kill -9 {pid} (redis-server of n{id})");
            }
        }
        Killed { who: format!("n{id}") }
    }

    fn control_pids(&self) -> Vec<String> {
        self.c
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect()
    }

    /// A killed node is started again on its data dir; a killed `redis-server` is Keel's to restart.
    fn restore(&mut self) {
        if let Some(id) = self.down.take() {
            self.c.start(id);
        }
    }

    /// The first log line of each failover step after the kill, in ms after it: the coordinator
    /// taking over (a new Raft leader), the promotion committed, the new primary's lease, its
    /// Redis unfenced, the killed node's Redis restarted by its Keel, and its giving up the role.
    fn phases(&self, kill_ms: u64) -> Option<String> {
        const STEPS: [(&str, &str); 6] = [
            ("redis restarted", "redis-server started"),
            ("gave up", "giving up the primary role"),
            ("coordinator", "coordinator: leading"),
            ("promoted", "promoted a new primary"),
            ("lease", "lease granted"),
            ("unfenced", "redis unfenced"),
        ];
        let logs: Vec<String> = (1..=3u64).map(|id| keel_testkit::strip_ansi(&self.c.log(id))).collect();
        let found: Vec<String> = STEPS
            .iter()
            .filter_map(|(label, needle)| {
                let at = logs
                    .iter()
                    .flat_map(|l| l.lines())
                    .filter(|l| l.contains(needle))
                    .filter_map(log_unix_ms)
                    .filter(|t| *t >= kill_ms)
                    .min()?;
                Some(format!("{label} +{}", at - kill_ms))
            })
            .collect();
        (!found.is_empty()).then(|| format!("logs: {}", found.join(", ")))
    }
}

/// The Unix time in ms of a log line that starts with an RFC 3339 UTC timestamp
/// (`2026-12-07T07:15:51.943304Z ...`, Keel's text log format).
fn log_unix_ms(line: &str) -> Option<u64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian; Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3600 + min * 60) as f64 + sec) * 1e3;
    u64::try_from(ms as i64).ok()
}
