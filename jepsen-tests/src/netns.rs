//! Network-namespace lab: each node gets its own namespace with a veth pair on a bridge that
//! the lab creates (and removes on drop), so a node can be cut off from its peers while the
//! harness (in the root namespace, on the bridge) still reaches every node's API, as Jepsen's
//! clients do. Used by the chaos runner's `--netns` mode and by the partition tests in
//! `node/tests/`.
//!
//! Faults, all inside the node namespaces and all undone by [`NetLab::heal`]:
//! - cuts: blackhole routes (symmetric, instant to add or remove);
//! - loss and delay: `tc netem` on the node's veth when the kernel has `sch_netem`; otherwise
//!   (this project's Firecracker kernels have no netem) loss via iptables' `statistic` match and a
//!   slow link via `tc tbf`. [`NetLab::degrade`] says which one it used.
//!
//! Names and crash safety. Every name starts with [`PREFIX`] followed by the owning process's
//! pid in hex and a per-process counter (`kj1f2a3b0n1` is namespace 1 of the first lab of pid
//! 0x1f2a3b), so interface names stay within 15 bytes. [`NetLab::new`] first calls
//! [`clean_stale`], which removes every namespace, bridge and veth of the prefix whose owner
//! process is gone (killing whatever still runs inside such a namespace). A run that crashed,
//! even by SIGKILL, therefore leaves nothing that the next run does not clean, and labs of
//! processes still alive (tests running in parallel) are never touched. Teardown is
//! idempotent: every step ignores "does not exist".
//!
//! Needs root and `ip` (iproute2); [`NetLab::new`] returns `Err` with the reason otherwise.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::rng::Rng;

/// Every namespace and interface a lab creates starts with this.
pub const PREFIX: &str = "kj";

static LABS: AtomicU64 = AtomicU64::new(0);

pub struct NetLab {
    pub tag: String,
    /// First three octets of the lab's /24 (`10.x.y`), only ever inside the lab's namespaces and
    /// on its bridge.
    pub subnet: String,
    pub bridge: String,
    pub n: u64,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(|_| ())
}

/// `ip netns exec NS args...`: runs a command inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The owner pid encoded in a lab name (`kj<pid hex><counter>...`), if it is one of ours.
fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    // The tag is PREFIX + 6 hex digits of pid + 1 hex digit of counter.
    let hex = rest.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove every namespace, bridge and veth named with [`PREFIX`] whose owner process is gone,
/// killing any process still running inside such a namespace. Returns what it removed.
pub fn clean_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let stale = |name: &str| owner_of(name).is_some_and(|pid| pid != me && !alive(pid));
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if !stale(ns) {
                continue;
            }
            kill_inside(ns);
            if ip(&["netns", "del", ns]).is_ok() {
                removed.push(format!("netns {ns}"));
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for line in links.lines() {
            // "7: kj1f2a3b0h1@if6: <...>" or "5: kj1f2a3b0br: <...>"
            let Some(name) = line.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("")) else {
                continue;
            };
            if stale(name) && ip(&["link", "del", name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    removed
}

/// SIGKILL every process in namespace `ns` (bounded: a few rounds).
fn kill_inside(ns: &str) {
    for _ in 0..5 {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        let mut args = vec!["-KILL"];
        args.extend(pids);
        let _ = Command::new("kill").args(&args).status();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What [`NetLab::degrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degrade {
    /// `tc netem delay D loss P%` on the node's link.
    Netem { delay_ms: u64, loss_pct: u64 },
    /// No netem in this kernel: iptables drops P% of packets in and out, and `tc tbf` shapes the
    /// link to `rate_kbit` (queueing delay for bulk traffic, not a fixed delay).
    Fallback { loss_pct: u64, rate_kbit: u64 },
}

impl NetLab {
    /// Create `n` namespaces on a fresh bridge, after cleaning stale labs of dead processes.
    pub fn new(n: u64) -> Result<NetLab, String> {
        if !is_root() {
            return Err("not root: network namespaces need root".into());
        }
        if n == 0 || n > 250 {
            return Err(format!("a lab has 1..=250 nodes, not {n}"));
        }
        clean_stale();
        let pid = std::process::id();
        let count = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{:06x}{:x}", pid & 0xff_ffff, count % 16);
        let subnet = free_subnet(pid as u64 * 31 + count)?;
        let lab = NetLab {
            bridge: format!("{tag}br"),
            tag,
            subnet,
            n,
        };
        // A name left over by this very process (a lab counter wrapped) goes first.
        lab.teardown();
        lab.setup().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    pub fn ns(&self, i: u64) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Address of node `i` (1-based).
    pub fn addr(&self, i: u64) -> String {
        format!("{}.{i}", self.subnet)
    }

    /// The bridge's end of node `i`'s veth pair (in the root namespace).
    fn host(&self, i: u64) -> String {
        format!("{}h{i}", self.tag)
    }

    /// The node's end of its veth pair (inside its namespace).
    pub fn dev(&self, i: u64) -> String {
        format!("{}p{i}", self.tag)
    }

    fn setup(&self) -> Result<(), String> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", self.subnet), "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for i in 1..=self.n {
            let ns = self.ns(i);
            let host = self.host(i);
            let peer = self.dev(i);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &self.bridge])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(i)), "dev", &peer])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cut node `i` off from node `j` (both directions).
    pub fn cut(&self, i: u64, j: u64) {
        for (a, b) in [(i, j), (j, i)] {
            let _ = ip(&[
                "-n",
                &self.ns(a),
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.addr(b)),
            ]);
        }
    }

    /// Cut node `i` off from every other node (the harness still reaches it).
    pub fn isolate(&self, i: u64) {
        for j in 1..=self.n {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Cut every link between the two groups.
    pub fn split(&self, a: &BTreeSet<u64>, b: &BTreeSet<u64>) {
        for i in a {
            for j in b {
                if i != j {
                    self.cut(*i, *j);
                }
            }
        }
    }

    /// Degrade node `i`'s link in both directions: `loss_pct` % of packets lost and `delay_ms`
    /// of delay with netem, or the fallback described at [`Degrade`].
    pub fn degrade(&self, i: u64, delay_ms: u64, loss_pct: u64) -> Result<Degrade, String> {
        let ns = self.ns(i);
        let (delay, loss) = (format!("{delay_ms}ms"), format!("{loss_pct}%"));
        let jitter = format!("{}ms", delay_ms / 4);
        let netem = self.root_qdisc(i, true, &["netem", "delay", &delay, &jitter, "loss", &loss]);
        if netem.is_ok() {
            // netem on the node's side delays what it sends; the bridge side delays what it gets.
            let _ = self.root_qdisc(i, false, &["netem", "delay", &delay, "loss", &loss]);
            return Ok(Degrade::Netem { delay_ms, loss_pct });
        }
        let p = format!("{:.3}", loss_pct as f64 / 100.0);
        for chain in ["INPUT", "OUTPUT"] {
            let drop = ["-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"];
            in_ns(&ns, &[&["iptables", "-w", "-A", chain][..], &drop].concat()).map_err(|e| {
                format!(
                    "netem unavailable ({}) and iptables failed: {e}",
                    netem.clone().unwrap_err()
                )
            })?;
        }
        let rate_kbit = 2048;
        let rate = format!("{rate_kbit}kbit");
        let _ = self.root_qdisc(i, true, &["tbf", "rate", &rate, "burst", "16kbit", "latency", &delay]);
        Ok(Degrade::Fallback { loss_pct, rate_kbit })
    }

    /// `tc qdisc replace dev DEV root QDISC...` on node `i`'s end of its veth pair (inside its
    /// namespace) or, if not `node_side`, on the bridge's end.
    fn root_qdisc(&self, i: u64, node_side: bool, qdisc: &[&str]) -> Result<String, String> {
        let dev = if node_side { self.dev(i) } else { self.host(i) };
        let args = [&["tc", "qdisc", "replace", "dev", &dev, "root"][..], qdisc].concat();
        if node_side {
            in_ns(&self.ns(i), &args)
        } else {
            run(args[0], &args[1..])
        }
    }

    /// Remove every cut, qdisc and iptables rule (idempotent).
    pub fn heal(&self) {
        for i in 1..=self.n {
            let ns = self.ns(i);
            let _ = ip(&["-n", &ns, "route", "flush", "type", "blackhole"]);
            let _ = in_ns(&ns, &["tc", "qdisc", "del", "dev", &self.dev(i), "root"]);
            let _ = run("tc", &["qdisc", "del", "dev", &self.host(i), "root"]);
            for chain in ["INPUT", "OUTPUT"] {
                let _ = in_ns(&ns, &["iptables", "-w", "-F", chain]);
            }
        }
    }

    /// Pids of every process inside node `i`'s namespace.
    pub fn pids(&self, i: u64) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.ns(i)])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kill what still runs inside, then remove namespaces, veths and the bridge. Idempotent.
    pub fn teardown(&self) {
        for i in 1..=self.n {
            let ns = self.ns(i);
            kill_inside(&ns);
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &self.host(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }

    /// Namespaces and links of this lab that still exist (empty after [`NetLab::teardown`]).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ns = run("ip", &["netns", "list"]).unwrap_or_default();
        left.extend(
            ns.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&self.tag))
                .map(String::from),
        );
        let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
        left.extend(
            links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
                .filter(|n| n.starts_with(&self.tag)),
        );
        left
    }
}

/// A `10.x.y` /24 not configured on any interface of the root namespace.
fn free_subnet(seed: u64) -> Result<String, String> {
    let used = run("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
    let mut rng = Rng::new(seed);
    for _ in 0..64 {
        let r = rng.next_u64();
        let subnet = format!("10.{}.{}", 100 + (r >> 8) % 100, (r >> 24) % 250 + 1);
        if !used.contains(&format!(" {subnet}.")) {
            return Ok(subnet);
        }
    }
    Err("no free 10.x.y.0/24 for the lab".into())
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_parsed_from_names() {
        assert_eq!(owner_of("kj00beef0n1"), Some(0xbeef));
        assert_eq!(owner_of("kj1f2a3b2br"), Some(0x1f2a3b));
        assert_eq!(owner_of("eth0"), None);
        assert_eq!(owner_of("kjzz"), None);
    }

    /// A lab of a dead owner (named as a crashed run would have left it) is cleaned by the next
    /// lab's start; this lab's own names are all gone after drop.
    #[test]
    fn stale_labs_are_cleaned_and_teardown_leaves_nothing() {
        if !is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("CI runs as root; network namespaces must work there");
            }
            println!("SKIPPED stale_labs_are_cleaned_and_teardown_leaves_nothing: not root");
            return;
        }
        // pid 0xfffffe is above any pid_max Linux allows (4194304), so it is never alive.
        let stale = "kjfffffe0";
        let _ = ip(&["netns", "add", &format!("{stale}n1")]);
        let _ = ip(&["link", "add", &format!("{stale}br"), "type", "bridge"]);
        let lab = NetLab::new(2).unwrap();
        let left = run("ip", &["netns", "list"]).unwrap();
        assert!(!left.contains(stale), "stale namespace survived: {left}");
        let links = run("ip", &["-o", "link", "show"]).unwrap();
        assert!(!links.contains(stale), "stale bridge survived");
        assert_eq!(lab.leftovers().len(), 2 + 2 + 1, "{:?}", lab.leftovers());
        let tag = lab.tag.clone();
        let probe = NetLab {
            tag,
            subnet: lab.subnet.clone(),
            bridge: lab.bridge.clone(),
            n: 2,
        };
        drop(lab);
        assert!(probe.leftovers().is_empty(), "{:?}", probe.leftovers());
        std::mem::forget(probe);
    }
}
