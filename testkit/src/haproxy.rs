//! A real HAProxy for the tests of `deploy/haproxy*.cfg`: a foreground `haproxy -db` killed on
//! drop (its log printed when that happens during a panic), and the server states of its CSV stats.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    let r = http
        .get(format!("http://{stats}/stats;csv"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
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
