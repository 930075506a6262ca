//! A real HAProxy for the tests of `deploy/haproxy*.cfg`: a foreground `haproxy -db` killed on
//! drop (its log printed when that happens during a panic), the server states of its CSV stats, and
//! a shipped config rewritten to the test's addresses ([`DeployCfg`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, which, Cluster};

/// The `haproxy` binary, or None after printing why the test skips.
pub fn find_haproxy() -> Option<PathBuf> {
    let bin = which("haproxy");
    if bin.is_none() {
        println!(
            "SKIPPED: haproxy is not installed (not on PATH, nor in /usr/sbin); install Debian's `haproxy` \
             package (scripts/test.sh does, as root) to run this test"
        );
    }
    bin
}

/// Where the test's HAProxy listens.
pub struct Frontends {
    pub write: SocketAddr,
    pub read: SocketAddr,
    pub stats: SocketAddr,
}

impl Frontends {
    /// Three free ports on `ip`.
    pub fn free(ip: &str) -> Frontends {
        let at = || -> SocketAddr { format!("{ip}:{}", free_port(ip)).parse().unwrap() };
        Frontends {
            write: at(),
            read: at(),
            stats: at(),
        }
    }
}

/// HAProxy's name for node `id` in the shipped configs.
pub fn server_name(id: u64) -> String {
    format!("keel{id}")
}

/// The shape of a shipped `deploy/haproxy*.cfg` that the tests rely on: three `bind` lines (write,
/// read and stats frontends) and a write and a read backend of three `server keelN` lines each.
pub struct DeployCfg {
    /// The file's name in `deploy/`.
    pub file: &'static str,
    /// What the write, read and stats `bind` addresses end with (":5000", ...).
    pub binds: [&'static str; 3],
    pub write_backend: &'static str,
    pub read_backend: &'static str,
}

impl DeployCfg {
    /// The file as shipped.
    pub fn path(&self) -> PathBuf {
        deploy_file(self.file)
    }

    /// The file with its `bind` lines moved to `f`, and each `server NAME ADDR REST..` line made
    /// `server NAME {server(NAME, REST)}`. Panics if the file no longer has the shape this relies on,
    /// or `server` does not know a name (None).
    pub fn rewritten(&self, f: &Frontends, mut server: impl FnMut(&str, &[&str]) -> Option<String>) -> String {
        let file = self.file;
        let text = std::fs::read_to_string(self.path()).unwrap_or_else(|e| panic!("read deploy/{file}: {e}"));
        let (mut binds, mut server_lines) = (0, 0);
        let mut out = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let words: Vec<&str> = t.split_whitespace().collect();
            let new = match words.as_slice() {
                ["bind", addr, rest @ ..] => {
                    let to = [f.write, f.read, f.stats][self
                        .binds
                        .iter()
                        .position(|port| addr.ends_with(port))
                        .unwrap_or_else(|| panic!("deploy/{file}: unexpected bind line {line:?}"))];
                    binds += 1;
                    format!("{indent}bind {to} {}", rest.join(" "))
                }
                ["server", name, _addr, rest @ ..] => {
                    let to = server(name, rest)
                        .unwrap_or_else(|| panic!("deploy/{file}: unknown server {name:?} in {line:?}"));
                    server_lines += 1;
                    format!("{indent}server {name} {to}")
                }
                _ => line.to_owned(),
            };
            out.push_str(new.trim_end());
            out.push('\n');
        }
        assert_eq!(binds, 3, "deploy/{file} should bind {:?}", self.binds);
        assert_eq!(
            server_lines, 6,
            "deploy/{file} should list three servers in each of two backends"
        );
        out
    }

    /// Wait until HAProxy (its stats at `stats`) routes writes to `primary` only and reads to
    /// exactly `replicas`.
    pub async fn wait_routing(
        &self,
        c: &Cluster,
        ha: &mut HaProxy,
        stats: SocketAddr,
        primary: u64,
        replicas: &[u64],
        timeout: Duration,
    ) {
        ha.assert_running();
        let want_write: BTreeSet<String> = [server_name(primary)].into();
        let want_read: BTreeSet<String> = replicas.iter().map(|id| server_name(*id)).collect();
        let what = format!("HAProxy to route writes to {want_write:?} and reads to {want_read:?}");
        c.wait_for(timeout, &what, || async {
            let s = server_states(&c.http, stats).await?;
            (up_servers(&s, self.write_backend) == want_write && up_servers(&s, self.read_backend) == want_read)
                .then_some(())
        })
        .await;
    }
}

/// A running `haproxy -db` (foreground). Killed when dropped, on every exit path of the test; its
/// log is printed when that happens during a panic.
pub struct HaProxy {
    child: Child,
    log: PathBuf,
}

impl HaProxy {
    pub fn start(bin: &Path, cfg: &Path, log: PathBuf) -> HaProxy {
        let out = std::fs::File::create(&log).expect("create haproxy log");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the haproxy log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        HaProxy { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with HAProxy's log) if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("haproxy exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("----- haproxy log (last 60 lines) -----\n{}", tail.join("\n"));
        }
    }
}

/// `haproxy -c -f cfg` succeeds; panics with its output otherwise.
pub fn assert_valid(bin: &Path, cfg: &Path) {
    let check = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        check.status.success(),
        "haproxy -c {}: {}",
        cfg.display(),
        crate::stderr(&check)
    );
}

/// Server status per (backend, server) from HAProxy's CSV stats ("UP", "DOWN", "UP 1/2", ...).
pub async fn server_states(http: &reqwest::Client, stats: SocketAddr) -> Option<BTreeMap<(String, String), String>> {
    let r = crate::success(http.get(format!("http://{stats}/stats;csv")), Duration::from_secs(1)).await?;
    let text = r.text().await.ok()?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() <= st || f[sv] == "FRONTEND" || f[sv] == "BACKEND" {
            continue;
        }
        out.insert((f[px].to_owned(), f[sv].to_owned()), f[st].to_owned());
    }
    Some(out)
}

/// The servers of `backend` HAProxy sends traffic to.
pub fn up_servers(states: &BTreeMap<(String, String), String>, backend: &str) -> BTreeSet<String> {
    states
        .iter()
        .filter(|((b, _), status)| b == backend && status.starts_with("UP"))
        .map(|((_, s), _)| s.clone())
        .collect()
}

/// The path of `deploy/<name>` in this repository.
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(name)
}
