//! etcd as a yardstick for the benchmarks (`kv_bench`, `failover`): finding the binary, its
//! version and JSON gateway prefix, a three-member layout on loopback, and one member's status.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// `etcd` on PATH, else in the usual system directories, or None.
pub fn find_etcd() -> Option<PathBuf> {
    crate::which("etcd")
}

/// [`find_etcd`], or exit 2 with how to install it (for `--compare etcd`, before anything starts).
pub fn find_etcd_or_exit() -> PathBuf {
    find_etcd().unwrap_or_else(|| {
        eprintln!(
            "error: --compare etcd needs the `etcd` binary on PATH, and it is not there; on Debian/Ubuntu install \
             the etcd-server package: `sudo apt-get install etcd-server`"
        );
        std::process::exit(2)
    })
}

/// etcd's version ("3.4.23") and the path prefix of its JSON gateway for that version
/// (3.4: `/v3`, also `/v3beta`; 3.5 and later: `/v3` only; 3.3: `/v3beta`; 3.2: `/v3alpha`).
pub fn etcd_version(bin: &Path) -> (String, &'static str) {
    // Bounded like everything else: a `--version` that does not exit within 10 s is killed.
    let mut text = String::new();
    if let Ok(mut c) = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        if let Some(mut out) = c.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
    }
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let prefix = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(3), Some(3)) => "/v3beta",
        (Some(3), Some(m)) if m < 3 => "/v3alpha",
        _ => "/v3",
    };
    (version, prefix)
}

/// A member id in the gateway's JSON: uint64 comes as a decimal string ("0" = no leader).
pub fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
    .filter(|s| s != "0")
}

/// One member of a local cluster: its name (`e1`…), client address and flags (all but
/// `--initial-cluster-state`).
pub struct EtcdMember {
    pub name: String,
    pub client: String,
    pub args: Vec<String>,
}

/// `n` members on `ip` with fresh ports, data dirs under `dir`, and etcd's default timings.
/// `token` names the cluster (`--initial-cluster-token`); make it unique per run.
pub fn layout(n: usize, ip: &str, dir: &Path, token: &str) -> Vec<EtcdMember> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(ip), free_port(ip))).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("e{}=http://{ip}:{}", i + 1, p.1))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let name = format!("e{}", i + 1);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.join(&name).display()),
                format!("--listen-client-urls=http://{ip}:{c}"),
                format!("--advertise-client-urls=http://{ip}:{c}"),
                format!("--listen-peer-urls=http://{ip}:{p}"),
                format!("--initial-advertise-peer-urls=http://{ip}:{p}"),
                format!("--initial-cluster={initial}"),
                format!("--initial-cluster-token={token}"),
            ];
            EtcdMember {
                name,
                client: format!("{ip}:{c}"),
                args,
            }
        })
        .collect()
}

/// The command that starts `m` with `--initial-cluster-state state` ("new", or "existing" to
/// restart it on its own data dir). etcd reads every flag from `ETCD_*` as well: those are
/// removed, so its default timings are used.
pub fn command(bin: &Path, m: &EtcdMember, state: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(&m.args).arg(format!("--initial-cluster-state={state}"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// One member's view from `POST {api}/maintenance/status`.
pub struct EtcdStatus {
    pub member: String,
    pub leader: Option<String>,
    pub term: u64,
}

/// The status of the member at `client` through the gateway prefix `api`, or None if it does
/// not answer 200 within `timeout`.
pub fn status(http: &reqwest::blocking::Client, client: &str, api: &str, timeout: Duration) -> Option<EtcdStatus> {
    let r = http
        .post(format!("http://{client}{api}/maintenance/status"))
        .timeout(timeout)
        .json(&serde_json::json!({}))
        .send()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().ok()?;
    let term = &v["header"]["raft_term"];
    Some(EtcdStatus {
        member: id_of(&v["header"]["member_id"])?,
        leader: id_of(&v["leader"]),
        term: term.as_u64().or_else(|| term.as_str()?.parse().ok()).unwrap_or(0),
    })
}
