//! keel-testkit: the one place that starts Keel clusters for tests and benchmarks (dev-only,
//! never published, never a dependency of a shipped crate).
//!
//! It owns:
//! - [`Cluster`]: one cluster fixture whose nodes run either as child processes of the `keel`
//!   binary ([`Cluster::new`], for anything that kills, pauses or isolates a process) or
//!   in-process through `Node::start` ([`Cluster::in_process`], for tests of logic over HTTP),
//!   with the same API: start, stop, url, status, wait_leader, wait_primary, cli, logs, and
//!   ([`api`]) one call per request to a node (`req`, `put`, `get_local`, `wait_value`,
//!   `put_everywhere`, `patch_config`, `diverged_keys`; [`status_json`], [`error_code`]);
//! - [`Procs`]: named child processes with their logs in one temp dir (benchmarks' clusters,
//!   etcd, git daemons), killed on drop; [`Procs::spawn_keel_nodes`] and [`primaries`] start a
//!   benchmark's `keel serve` cluster and find its primary;
//! - ports ([`free_port`], [`process_ip`], shared with the chaos runner), waits ([`wait_for`],
//!   [`poll_until`]), the `keel` binary's path ([`keel_bin`]), log helpers ([`logs`]), git
//!   helpers ([`git`](mod@git)), etcd helpers ([`etcd`]), a real HAProxy ([`haproxy`]), the
//!   network-namespace lab ([`netns`]), a `keel up` child ([`KeelUp`]) and the benchmarks' argument
//!   parsing ([`parse_args`]).
//!
//! The chaos runner (`keel-jepsen`) keeps its own blocking process fixture (faketime, wipes,
//! SIGSTOP): that crate sits below this one (the kit uses its netns lab and port rule), so it
//! cannot use the kit without a dependency cycle, and a shipped harness binary should not link
//! the daemon library. What both need, ports and the netns lab, lives there and is re-exported here.
//!
//! It must not touch: production code paths (`keel up` in `node/src/cli/up.rs` cannot depend on a
//! dev-only crate and keeps its own launcher), process-global state of the test process beyond
//! the tracing subscriber that in-process nodes need, or anything outside the temp dirs it
//! creates (the netns lab cleans only its own, pid-tagged names).

pub mod api;
mod args;
pub mod cluster;
pub mod etcd;
pub mod git;
pub mod haproxy;
pub mod logs;
pub mod procs;
pub mod redis;
pub mod up;
pub mod wait;

pub use api::{error_code, status_json, success, Sent};
pub use args::parse_args;
pub use cluster::{Backend, Cluster, TestNode};
pub use git::{git, git_cmd, gitsync_cluster, gitsync_upstream, install_hook, webhook_signature, GitDaemon, Upstream};
pub use keel_jepsen::netns;
pub use keel_jepsen::ports::{free_port, process_ip};
pub use keel_node::util::{strip_ansi, unix_ms};
pub use logs::{stderr, stdout};
pub use procs::{dir_disk_bytes, KeelProc, Procs};
pub use redis::have_redis;
pub use up::{free_port_run, KeelUp};
pub use wait::{poll_until, poll_until_blocking, wait_for};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `keel` binary to run: `$KEEL_BIN` if set, else `keel` in the directory above the running
/// executable's own. That is where cargo puts it: integration tests run from
/// `target/<profile>/deps/`, examples from `target/<profile>/examples/`, and both build the
/// package's binaries first. (`env!("CARGO_BIN_EXE_keel")` exists only while compiling the
/// `keel-node` package's own tests, not in this crate.)
pub fn keel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("keel"))
        .expect("the running executable is in target/<profile>/<dir>/");
    assert!(
        bin.is_file(),
        "no keel binary at {} (build it, or set KEEL_BIN)",
        bin.display()
    );
    bin
}

/// The program `name` on PATH, else in the usual system directories (`/usr/sbin` and friends are
/// not on every user's PATH), or None.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Standard base64 with padding, as the etcd JSON gateway wants keys and values.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `n` nodes' API and peer addresses on `ip` with fresh ports, and the `--peers` value that
/// names them (ids 1..=n).
pub fn node_addrs(n: usize, ip: &str) -> (Vec<(String, String)>, String) {
    let addrs: Vec<(String, String)> = (0..n)
        .map(|_| (format!("{ip}:{}", free_port(ip)), format!("{ip}:{}", free_port(ip))))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("{}={peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    (addrs, peers)
}

/// `keel serve` of node `id` at `api` and `peer` with its data in `data`, bootstrapping from
/// `peers`; `RUST_LOG` defaults to Keel's own default. Add flags, then spawn it (e.g. with [`Procs`]).
pub fn serve_command(id: u64, api: &str, peer: &str, data: &Path, peers: &str) -> Command {
    let mut c = Command::new(keel_bin());
    c.args(["serve", "--id", &id.to_string(), "--api-addr", api, "--peer-addr", peer])
        .arg("--data-dir")
        .arg(data)
        .args(["--peers", peers]);
    if std::env::var_os("RUST_LOG").is_none() {
        c.env("RUST_LOG", "info,openraft=warn");
    }
    c
}

/// A blocking HTTP client for benchmarks: no proxy, `timeout` per request, ring installed as
/// the TLS crypto provider first (reqwest has none of its own here).
pub fn blocking_client(timeout: std::time::Duration) -> reqwest::blocking::Client {
    keel_raft::network::install_crypto_provider();
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("http client")
}

/// GET `url` with a 1 s timeout: its JSON body on a 2xx answer, else None.
pub fn get_json(http: &reqwest::blocking::Client, url: &str) -> Option<serde_json::Value> {
    let r = http.get(url).timeout(std::time::Duration::from_secs(1)).send().ok()?;
    r.status().is_success().then(|| r.json().ok())?
}

/// The indices of the API addresses `apis` (`host:port`) whose node answers 200 on `/primary`
/// (it is the primary and holds a valid lease) within `timeout`.
pub fn primaries(http: &reqwest::blocking::Client, apis: &[&str], timeout: std::time::Duration) -> Vec<usize> {
    let is_primary = |api: &str| {
        let r = http.get(format!("http://{api}/primary")).timeout(timeout).send();
        r.is_ok_and(|r| r.status() == 200)
    };
    (0..apis.len()).filter(|i| is_primary(apis[*i])).collect()
}

/// The machine's load average (the first three fields of `/proc/loadavg`), for bench reports.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_matches_the_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(plain.as_bytes()), enc);
        }
    }
}
