//! Network-namespace lab for partition tests: each node gets its own namespace with a veth
//! pair on a bridge that this fixture creates (and removes on drop), so a node can be cut
//! off from its peers while the test process (in the root namespace, on the bridge) can still
//! reach every node's API. Cuts are blackhole routes inside the namespaces: symmetric and
//! instant to add or remove.
//!
//! Needs root and `ip`; [`NetLab::new`] returns `None` (and the test prints why it skipped)
//! otherwise.

use std::process::Command;

pub struct NetLab {
    pub tag: String,
    pub subnet: String,
    pub bridge: String,
    pub n: u64,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetLab {
    /// Create `n` namespaces on a fresh bridge. `None` with a reason when not possible here.
    pub fn new(n: u64) -> Result<NetLab, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root: network namespaces need root".into());
        }
        let r: u32 = rand::random();
        let tag = format!("k{:06x}", r & 0xff_ffff);
        let subnet = format!("10.{}.{}", 100 + (r >> 24) % 100, (r >> 16) % 250 + 1);
        let lab = NetLab {
            bridge: format!("{tag}br"),
            tag,
            subnet,
            n,
        };
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

    fn setup(&self) -> Result<(), String> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", self.subnet), "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for i in 1..=self.n {
            let ns = self.ns(i);
            let host = format!("{}h{i}", self.tag);
            let peer = format!("{}p{i}", self.tag);
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
        let _ = ip(&[
            "-n",
            &self.ns(i),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(j)),
        ]);
        let _ = ip(&[
            "-n",
            &self.ns(j),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(i)),
        ]);
    }

    /// Cut node `i` off from every other node (the test process still reaches it).
    pub fn isolate(&self, i: u64) {
        for j in 1..=self.n {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Remove every cut.
    pub fn heal(&self) {
        for i in 1..=self.n {
            for j in 1..=self.n {
                if i != j {
                    let _ = ip(&[
                        "-n",
                        &self.ns(i),
                        "route",
                        "del",
                        "blackhole",
                        &format!("{}/32", self.addr(j)),
                    ]);
                }
            }
        }
    }

    fn teardown(&self) {
        for i in 1..=self.n {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}
