//! `keel up --redis-port-base N`: managed Redis on the local cluster. Node i runs its `redis-server`
//! on port `N + i - 1` and a Sentinel-compatible listener on `S + i - 1`, where S is
//! `--sentinel-port-base` or, by default, `N + 20000` (Redis's own convention: 6379 for Redis,
//! 26379 for its Sentinel).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::bail;

/// The default distance from a node's Redis port to its Sentinel listener's port.
pub(super) const SENTINEL_OFFSET: u16 = 20000;
/// The master name the listeners answer to (`keel serve --sentinel-name`'s default).
const MASTER_NAME: &str = "keel";

/// The managed-Redis layout of a `keel up` cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UpRedis {
    redis_base: u16,
    sentinel_base: u16,
}

impl UpRedis {
    /// The layout for `nodes` nodes, or why the ports do not fit.
    pub(super) fn new(redis_base: u16, sentinel_base: Option<u16>, nodes: u32) -> anyhow::Result<UpRedis> {
        let n = nodes;
        let last = |base: u16| u32::from(base) + n - 1;
        if redis_base == 0 || last(redis_base) > u32::from(u16::MAX) {
            bail!("--redis-port-base {redis_base}: the {n} Redis ports must lie within 1..=65535");
        }
        let sentinel_base = match sentinel_base {
            Some(s) => s,
            None => match redis_base.checked_add(SENTINEL_OFFSET) {
                Some(s) => s,
                None => bail!(
                    "--redis-port-base {redis_base}: the Sentinel ports would be {redis_base} + {SENTINEL_OFFSET}, \
                     past 65535; pick a lower base or set --sentinel-port-base"
                ),
            },
        };
        if sentinel_base == 0 || last(sentinel_base) > u32::from(u16::MAX) {
            bail!("--sentinel-port-base {sentinel_base}: the {n} Sentinel ports must lie within 1..=65535");
        }
        let (r, s) = (u32::from(redis_base), u32::from(sentinel_base));
        if r <= last(sentinel_base) && s <= last(redis_base) {
            bail!(
                "the Redis ports {r}..={} and the Sentinel ports {s}..={} overlap",
                last(redis_base),
                last(sentinel_base)
            );
        }
        Ok(UpRedis {
            redis_base,
            sentinel_base,
        })
    }

    pub(super) fn redis_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.redis_base + (id - 1) as u16))
    }

    pub(super) fn sentinel_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.sentinel_base + (id - 1) as u16))
    }

    /// The `keel serve` flags of node `id`.
    pub(super) fn serve_flags(&self, id: u64) -> Vec<String> {
        vec![
            "--redis-port".into(),
            self.redis_addr(id).port().to_string(),
            "--sentinel-addr".into(),
            self.sentinel_addr(id).to_string(),
        ]
    }

    /// The ports of nodes `1..=nodes` that cannot be bound right now, described for the user.
    pub(super) fn taken(&self, nodes: u32) -> Vec<String> {
        let mut taken = Vec::new();
        for id in 1..=u64::from(nodes) {
            for (what, addr) in [("redis", self.redis_addr(id)), ("sentinel", self.sentinel_addr(id))] {
                if let Err(e) = TcpListener::bind(addr) {
                    taken.push(format!("node {id} {what} port {addr} ({e})"));
                }
            }
        }
        taken
    }

    /// The banner's block: every node's Redis and Sentinel address, and commands to try.
    pub(super) fn banner(&self, nodes: u32) -> String {
        let mut out = format!(
            "\nmanaged Redis: one redis-server per node (the primary's is the master); Sentinel listeners name \
             it as `{MASTER_NAME}`\n\n"
        );
        for id in 1..=u64::from(nodes) {
            out.push_str(&format!(
                "  n{id}  redis {}  sentinel {}\n",
                self.redis_addr(id),
                self.sentinel_addr(id)
            ));
        }
        let s = self.sentinel_addr(1).port();
        out.push_str(&format!(
            "\n  redis-cli -p {s} SENTINEL get-master-addr-by-name {MASTER_NAME}\n  \
             redis-cli -p $(redis-cli -p {s} --raw SENTINEL get-master-addr-by-name {MASTER_NAME} | tail -1) SET hello world\n"
        ));
        out
    }
}

/// The `redis-server` the nodes will run: `--redis-server` among the flags after `--`, else
/// `redis-server` from PATH. Fails with what to install when it does not run.
pub(super) fn check_redis_server(serve_args: &[String]) -> anyhow::Result<()> {
    let program = serve_args
        .iter()
        .position(|a| a == "--redis-server")
        .and_then(|i| serve_args.get(i + 1).map(String::as_str))
        .or_else(|| serve_args.iter().find_map(|a| a.strip_prefix("--redis-server=")))
        .unwrap_or("redis-server");
    let ran = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ran {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("--redis-port-base: `{program} --version` failed ({s})"),
        Err(e) => bail!(
            "--redis-port-base needs redis-server, and `{program}` could not be run ({e}); install it (Debian/Ubuntu: \
             sudo apt-get install redis-server) or pass its path after `--`: keel up --redis-port-base N -- \
             --redis-server /path/to/redis-server{}",
            if Path::new(OsStr::new(program)).is_absolute() {
                ""
            } else {
                " (it is looked up in PATH)"
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_flags() {
        let r = UpRedis::new(6379, None, 3).unwrap();
        assert_eq!(r.redis_addr(3).to_string(), "127.0.0.1:6381");
        assert_eq!(r.sentinel_addr(1).to_string(), "127.0.0.1:26379");
        assert_eq!(
            r.serve_flags(2).join(" "),
            "--redis-port 6380 --sentinel-addr 127.0.0.1:26380"
        );
        let r = UpRedis::new(7000, Some(7100), 9).unwrap();
        assert_eq!(r.sentinel_addr(9).to_string(), "127.0.0.1:7108");
        let banner = UpRedis::new(6379, None, 3).unwrap().banner(3);
        assert!(
            banner.contains("n2  redis 127.0.0.1:6380  sentinel 127.0.0.1:26380"),
            "{banner}"
        );
        assert!(
            banner.contains("redis-cli -p 26379 SENTINEL get-master-addr-by-name keel"),
            "{banner}"
        );
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        let cases: Vec<(u16, Option<u16>, u32, &str)> = vec![
            (0, None, 3, "within 1..=65535"),
            (65534, Some(1000), 3, "Redis ports must lie within"),
            (50000, None, 3, "past 65535"),
            (6379, Some(65534), 3, "Sentinel ports must lie within"),
            (6379, Some(6381), 3, "overlap"),
            (6381, Some(6379), 3, "overlap"),
        ];
        for (base, sentinel, nodes, want) in cases {
            let e = UpRedis::new(base, sentinel, nodes).unwrap_err().to_string();
            assert!(e.contains(want), "{base} {sentinel:?}: {e}");
        }
        // Adjacent ranges are fine.
        UpRedis::new(6379, Some(6382), 3).unwrap();
        UpRedis::new(6382, Some(6379), 3).unwrap();
    }

    #[test]
    fn missing_redis_server_is_named() {
        let args = ["--redis-server".to_string(), "/nonexistent/redis-server".to_string()];
        let e = check_redis_server(&args).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/redis-server") && e.contains("apt-get install redis-server"),
            "{e}"
        );
        let e = check_redis_server(&["--redis-server=/nonexistent/x".to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn taken_ports_are_named() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        // The busy port is node 1's Redis port; the Sentinel ports are elsewhere.
        let r = UpRedis::new(port, Some(if port > 30000 { 20000 } else { 40000 }), 1).unwrap();
        let taken = r.taken(1);
        assert!(
            taken
                .iter()
                .any(|t| t.starts_with(&format!("node 1 redis port 127.0.0.1:{port}"))),
            "{taken:?}"
        );
    }
}
