//! Redis as a managed service: Keel runs one `redis-server` per node as a child process, restarts
//! it when it dies, and drives its role over RESP.
//!
//! - Config: `<dir>/redis.conf`, written before every start: the operator's `--redis-conf` is
//!   included first, then Keel's own lines, which win (port, bind, dir, `replica-read-only yes`,
//!   `repl-diskless-sync-delay 0` so a new replica's first sync starts at once instead of after
//!   5 s, and the fence below).
//! - Start as a replica of itself (`replicaof` its own address): a server that just started takes
//!   no write (`READONLY`) and, having no link to a master, serves no sync to other servers
//!   (`-NOMASTERLINK`). Without this, a master's node restarted after a crash would bring back an
//!   empty (or older) master at the same address, and the replicas still pointed at it would
//!   resync to it and drop the data they hold, before Keel decided anything. Keel then promotes
//!   it, only if no replica holds more (`cluster::service`), or points it at the primary's.
//! - Stop: SIGTERM, so the server writes its RDB snapshot (Redis's default `save` points apply
//!   unless `--redis-conf` says otherwise), then SIGKILL after [`STOP_TIMEOUT`].
//! - Fence: `min-replicas-to-write` set to [`FENCE_REPLICAS`]: a master then answers every write
//!   with `-NOREPLICAS` at once, and keeps serving reads. A server starts fenced, so it takes no
//!   write before Keel has decided its role; unfence sets the write quorum
//!   ([`RedisService::set_write_quorum`], kept in step by the node).
//! - Backstop: while unfenced, `min-replicas-to-write` is the write quorum (1 in async mode once
//!   the cluster has two Redis servers, floor(voters/2) in sync mode) with
//!   `min-replicas-max-lag` [`MAX_LAG_SECS`]: a master whose replicas stop acknowledging (they
//!   follow a new master, or it is cut off from them) refuses writes by itself, even while Keel
//!   is paused.
//! - The child dies with Keel: it is spawned with `PR_SET_PDEATHSIG = SIGKILL` (Linux), so a
//!   kill -9 of keel kills it too. The death signal is tied to the
//!   spawning *thread*: spawns happen on the runtime's worker threads, which live as long as the
//!   runtime does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resp::{self, Reply};
use super::{ManagedService, ReplicationInfo, ServiceError, ServiceHealth, ServiceRole, Upstream};

/// `min-replicas-to-write` while fenced: more replicas than any cluster has (Redis takes 0..=i32::MAX).
pub const FENCE_REPLICAS: u32 = i32::MAX as u32;

/// `min-replicas-max-lag`: a replica counts towards the write quorum while its last
/// acknowledgement (replicas send one every second) is at most this many whole seconds old. 2 and
/// not 1: Redis measures the lag in whole seconds of its clock and refreshes the count once a
/// second, so with 1 a replica that is on time but acknowledges just past a second boundary
/// reads as 2 s behind and the master refuses writes for a second under ordinary scheduling jitter.
/// The price is the bound: a master cut off from its replicas stops within
/// [`MAX_LAG_SECS`] + 2 s of their last acknowledgement (+1 for the whole-second rounding, +1 for
/// the once-a-second refresh).
pub const MAX_LAG_SECS: u32 = 2;

/// How long a stopping server may take to save its snapshot and exit before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of each RESP call. The server is local; a busy one still answers PING in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Restart backoff: doubles from the first to the last, and starts again from the first after
/// the server ran for [`STABLE_RUN`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const STABLE_RUN: Duration = Duration::from_secs(10);

/// How to run this node's Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The `redis-server` program (a path, or a name looked up in PATH).
    pub server: PathBuf,
    /// Host to bind and announce (the node's API host).
    pub host: String,
    pub port: u16,
    /// Data directory (`<data-dir>/redis`); the generated config goes here too.
    pub dir: PathBuf,
    /// The operator's extra settings (`--redis-conf`), included before Keel's own lines.
    pub include: Option<PathBuf>,
    /// `min-replicas-to-write` while unfenced, until the node sets the write quorum
    /// ([`RedisService::set_write_quorum`]).
    pub min_replicas: u32,
}

impl RedisConfig {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host this server reaches itself at (for its start as a replica of itself).
    fn self_host(&self) -> &str {
        match self.host.as_str() {
            "0.0.0.0" => "127.0.0.1",
            "::" => "::1",
            h => h,
        }
    }

    /// Is the bind host a loopback address (or `localhost`)?
    fn loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The generated `redis.conf`.
    pub fn render(&self) -> String {
        let mut s = String::from("# Written by keel at every start of redis-server; edits here are lost.\n");
        if !self.loopback() {
            // Redis 7's protected mode refuses every non-loopback client of a server without a
            // password, the other nodes' Redis and Keel included: a managed set across hosts
            // could not replicate. Before the include, so the operator's file may say otherwise.
            s.push_str("protected-mode no\n");
        }
        if let Some(inc) = &self.include {
            s.push_str(&format!("include {}\n", quote(&inc.display().to_string())));
        }
        s.push_str(&format!(
            "port {}\nbind {}\ndir {}\ndaemonize no\nreplica-read-only yes\nrepl-diskless-sync-delay 0\n\
             min-replicas-to-write {FENCE_REPLICAS}\nmin-replicas-max-lag {MAX_LAG_SECS}\nreplicaof {} {}\n",
            self.port,
            self.host,
            quote(&self.dir.display().to_string()),
            self.self_host(),
            self.port,
        ));
        s
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A supervised `redis-server`.
#[derive(Debug)]
pub struct RedisService {
    config: RedisConfig,
    restarts: AtomicU64,
    /// Keel's own fence flag: set by [`ManagedService::fence`] (and at start), cleared by unfence.
    fenced: AtomicBool,
    /// Is the child process running right now?
    running: AtomicBool,
    /// `min-replicas-to-write` while unfenced.
    write_quorum: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl RedisService {
    pub fn new(config: RedisConfig) -> RedisService {
        RedisService {
            write_quorum: AtomicU32::new(config.min_replicas),
            config,
            restarts: AtomicU64::new(0),
            fenced: AtomicBool::new(true),
            running: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn call(&self, args: &[&str]) -> Result<Reply, ServiceError> {
        resp::call(&self.config.addr(), args, CALL_TIMEOUT).await
    }

    /// `INFO replication`, parsed.
    pub async fn info(&self) -> Result<ReplicationInfo, ServiceError> {
        let r = self.call(&["INFO", "replication"]).await?;
        let text = r
            .text()
            .ok_or_else(|| ServiceError::Protocol(format!("INFO answered {r:?}")))?;
        Ok(ReplicationInfo::parse(&text))
    }

    fn write_config(&self) -> Result<PathBuf, ServiceError> {
        let dir = &self.config.dir;
        let path = dir.join("redis.conf");
        let err = |source| ServiceError::Config {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::write(&path, self.config.render()).map_err(err)?;
        Ok(path)
    }

    fn spawn(&self) -> Result<tokio::process::Child, ServiceError> {
        let conf = self.write_config()?;
        let mut cmd = tokio::process::Command::new(&self.config.server);
        cmd.arg(&conf)
            .current_dir(&self.config.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|source| ServiceError::Spawn {
            program: self.config.server.display().to_string(),
            source,
        })
    }
}

impl ManagedService for RedisService {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn addr(&self) -> String {
        self.config.addr()
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = BACKOFF_FIRST;
        let mut first = true;
        while !cancel.is_cancelled() {
            if !first {
                self.restarts.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            let started = Instant::now();
            // A restarted server is a master with its old data: fence it before Keel decides.
            self.fenced.store(true, Ordering::SeqCst);
            match self.spawn() {
                Ok(mut child) => {
                    self.running.store(true, Ordering::SeqCst);
                    info!(addr = %self.config.addr(), pid = child.id(), "redis-server started");
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            stop(&mut child).await;
                            self.running.store(false, Ordering::SeqCst);
                            info!("redis-server stopped");
                            return;
                        }
                        status = child.wait() => {
                            self.running.store(false, Ordering::SeqCst);
                            let msg = match status {
                                Ok(s) => format!("redis-server exited ({s})"),
                                Err(e) => format!("wait for redis-server: {e}"),
                            };
                            warn!(error = %msg, "redis-server died; restarting");
                            self.set_error(Some(msg));
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "start redis-server");
                    self.set_error(Some(e.to_string()));
                }
            }
            if started.elapsed() >= STABLE_RUN {
                backoff = BACKOFF_FIRST;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn health(&self) -> ServiceHealth {
        let info = self.info().await;
        let restarts = self.restarts.load(Ordering::SeqCst);
        let mut h = ServiceHealth::down("redis", self.config.addr(), self.last_error(), restarts);
        match info {
            Ok(i) => {
                h.healthy = true;
                h.offset = i.offset();
                h.following = i.following();
                h.link_up = i.master_link_up;
                h.role = if i.is_master() {
                    // Unfenced but short of acknowledging replicas: it refuses writes all the same.
                    let short = i.good_replicas.is_some_and(|g| g < u64::from(self.write_quorum()));
                    if self.fenced.load(Ordering::SeqCst) || short {
                        ServiceRole::Fenced
                    } else {
                        ServiceRole::Master
                    }
                } else {
                    h.lag = i.master_last_io_seconds_ago.filter(|_| i.master_link_up);
                    ServiceRole::Replica
                };
            }
            Err(e) => {
                let running = self.running.load(Ordering::SeqCst);
                h.last_error = Some(if running {
                    format!("not answering: {e}")
                } else {
                    h.last_error.unwrap_or_else(|| "not running".into())
                });
            }
        }
        h
    }

    async fn position(&self) -> Result<u64, ServiceError> {
        self.info()
            .await?
            .offset()
            .ok_or_else(|| ServiceError::Protocol("INFO replication has no offset".into()))
    }

    async fn promote(&self) -> Result<(), ServiceError> {
        self.call(&["REPLICAOF", "NO", "ONE"]).await.map(|_| ())
    }

    async fn follow(&self, primary: &Upstream) -> Result<(), ServiceError> {
        let primary = primary.addr.as_str();
        let (host, port) = primary
            .rsplit_once(':')
            .ok_or_else(|| ServiceError::Protocol(format!("bad master address {primary:?}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.call(&["REPLICAOF", host, port]).await.map(|_| ())
    }

    async fn fence(&self) -> Result<(), ServiceError> {
        // The flag first: status says fenced even if the server is down and cannot be told.
        self.fenced.store(true, Ordering::SeqCst);
        let n = FENCE_REPLICAS.to_string();
        self.call(&["CONFIG", "SET", "min-replicas-to-write", &n])
            .await
            .map(|_| ())
    }

    async fn unfence(&self) -> Result<(), ServiceError> {
        let n = self.write_quorum().to_string();
        self.call(&["CONFIG", "SET", "min-replicas-to-write", &n]).await?;
        self.fenced.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl RedisService {
    /// Is the `redis-server` child running right now? False from its exit until the restart.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Is Keel's fence flag set?
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// The `min-replicas-to-write` to use while unfenced (applied by the next unfence).
    pub fn set_write_quorum(&self, n: u32) {
        self.write_quorum.store(n, Ordering::SeqCst);
    }

    pub fn write_quorum(&self) -> u32 {
        self.write_quorum.load(Ordering::SeqCst)
    }

    /// The server's `min-replicas-to-write` right now (another node may have fenced it directly).
    pub async fn min_replicas_to_write(&self) -> Result<u32, ServiceError> {
        let r = self.call(&["CONFIG", "GET", "min-replicas-to-write"]).await?;
        config_value(&r)
    }

    /// Clear the last error once the server answers again.
    pub fn clear_error(&self) {
        self.set_error(None);
    }
}

/// SIGTERM (Redis saves its snapshot and exits), then SIGKILL after [`STOP_TIMEOUT`].
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped before `wait` below.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_ok() {
            return;
        }
        warn!(
            pid,
            "redis-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it"
        );
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
}

/// Does the Redis at `addr` (another node's) take writes right now: a master that is neither
/// fenced (`min-replicas-to-write` at [`FENCE_REPLICAS`]) nor short of acknowledging replicas?
/// Two calls within `timeout` each.
pub async fn takes_writes_at(addr: &str, timeout: Duration) -> Result<bool, ServiceError> {
    Ok(unfenced_master_at(addr, timeout)
        .await?
        .is_some_and(|(info, quorum)| info.good_replicas.unwrap_or(0) >= u64::from(quorum)))
}

/// The Redis at `addr` (another node's, or this node's asked from outside its service), within
/// `timeout` per call: when it is a master that no one fenced, its `INFO replication` and its
/// `min-replicas-to-write` (the write quorum); `None` for a replica or a fenced master.
pub async fn unfenced_master_at(addr: &str, timeout: Duration) -> Result<Option<(ReplicationInfo, u32)>, ServiceError> {
    let info = info_at(addr, timeout).await?;
    if !info.is_master() {
        return Ok(None);
    }
    let r = resp::call(addr, &["CONFIG", "GET", "min-replicas-to-write"], timeout).await?;
    let quorum = config_value(&r)?;
    Ok((quorum != FENCE_REPLICAS).then_some((info, quorum)))
}

/// The number in a `CONFIG GET` answer (`[name, value]`).
fn config_value(r: &Reply) -> Result<u32, ServiceError> {
    let value = match r {
        Reply::Array(Some(items)) => items.get(1).and_then(Reply::text),
        _ => None,
    };
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ServiceError::Protocol(format!("CONFIG GET answered {r:?}")))
}

/// `INFO replication` of the Redis at `addr` (another node's), within `timeout`.
pub async fn info_at(addr: &str, timeout: Duration) -> Result<ReplicationInfo, ServiceError> {
    let r = resp::call(addr, &["INFO", "replication"], timeout).await?;
    let text = r
        .text()
        .ok_or_else(|| ServiceError::Protocol(format!("INFO answered {r:?}")))?;
    Ok(ReplicationInfo::parse(&text))
}

/// Fence the Redis at `addr` (another node's) directly, within `timeout`: a master there refuses
/// writes from now on (a replica is unaffected: `min-replicas-to-write` only applies to masters).
/// Its own node restores its setting when it holds the lease.
pub async fn fence_at(addr: &str, timeout: Duration) -> Result<(), ServiceError> {
    let n = FENCE_REPLICAS.to_string();
    resp::call(addr, &["CONFIG", "SET", "min-replicas-to-write", &n], timeout)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_includes_the_operators_file_first_and_starts_fenced() {
        let c = RedisConfig {
            server: "redis-server".into(),
            host: "127.0.0.1".into(),
            port: 7301,
            dir: "/d/redis".into(),
            include: Some("/etc/extra.conf".into()),
            min_replicas: 0,
        };
        let s = c.render();
        let inc = s.find("include \"/etc/extra.conf\"").unwrap();
        let port = s.find("port 7301").unwrap();
        assert!(inc < port, "keel's lines must come after the include so they win:\n{s}");
        assert!(s.contains("repl-diskless-sync-delay 0"));
        assert!(s.contains(&format!("min-replicas-to-write {FENCE_REPLICAS}")));
        assert!(s.contains(&format!("min-replicas-max-lag {MAX_LAG_SECS}")));
        assert!(
            s.contains("replicaof 127.0.0.1 7301"),
            "starts as a replica of itself:\n{s}"
        );
        assert_eq!(c.addr(), "127.0.0.1:7301");
        assert!(!s.contains("protected-mode"), "loopback keeps Redis's default:\n{s}");
    }

    #[test]
    fn a_non_loopback_host_turns_protected_mode_off_before_the_include() {
        for host in ["10.0.0.7", "0.0.0.0", "::", "fd00::2"] {
            let c = RedisConfig {
                server: "redis-server".into(),
                host: host.into(),
                port: 6379,
                dir: "/d".into(),
                include: Some("/etc/extra.conf".into()),
                min_replicas: 0,
            };
            let s = c.render();
            let off = s.find("protected-mode no").unwrap_or_else(|| panic!("{host}:\n{s}"));
            assert!(
                off < s.find("include").unwrap(),
                "the operator's file may override:\n{s}"
            );
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let c = RedisConfig {
            server: "redis-server".into(),
            host: "::1".into(),
            port: 1,
            dir: "/d".into(),
            include: None,
            min_replicas: 0,
        };
        assert_eq!(c.addr(), "[::1]:1");
        assert!(!c.render().contains("include"));
    }
}
