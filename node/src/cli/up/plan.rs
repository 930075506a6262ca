//! The saved layout of a `keel up` cluster (`<data-dir>/up.json`): choosing free ports once, reading and
//! checking the saved plan, and the `keel serve` arguments of each node.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{up_again_command, UpArgs};

const MAX_NODES: u32 = 9;
pub(super) const PLAN_FILE: &str = "up.json";
const PLAN_VERSION: u32 = 1;

/// The saved layout of a `keel up` cluster, `<data-dir>/up.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(super) struct UpPlan {
    /// Format version, for migrations; files without one are version 1.
    #[serde(default = "plan_version")]
    version: u32,
    pub(super) nodes: Vec<UpNode>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(super) struct UpNode {
    pub(super) id: u64,
    pub(super) api_addr: SocketAddr,
    pub(super) peer_addr: SocketAddr,
}

fn plan_version() -> u32 {
    PLAN_VERSION
}

pub(super) fn validate_nodes(nodes: u32) -> anyhow::Result<()> {
    if !(1..=MAX_NODES).contains(&nodes) {
        bail!("--nodes must be between 1 and {MAX_NODES}, got {nodes}");
    }
    Ok(())
}

impl UpPlan {
    /// Picks `2 * nodes` distinct free loopback ports. All listeners stay open until every port is chosen,
    /// so the OS cannot hand out the same port twice.
    pub(super) fn allocate(nodes: u32) -> anyhow::Result<UpPlan> {
        let listeners = (0..2 * nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("find free loopback ports")?;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let nodes = (0..nodes as usize)
            .map(|i| UpNode {
                id: i as u64 + 1,
                api_addr: addrs[2 * i],
                peer_addr: addrs[2 * i + 1],
            })
            .collect();
        Ok(UpPlan {
            version: PLAN_VERSION,
            nodes,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.version != PLAN_VERSION {
            bail!(
                "unsupported version {} (this keel knows version {PLAN_VERSION})",
                self.version
            );
        }
        validate_nodes(self.nodes.len() as u32).context("check the number of nodes")?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id != i as u64 + 1 {
                bail!(
                    "node ids must be 1..={} in order, found {} at position {}",
                    self.nodes.len(),
                    node.id,
                    i + 1
                );
            }
            for addr in [node.api_addr, node.peer_addr] {
                if !seen.insert(addr) {
                    bail!("address {addr} is used twice");
                }
            }
        }
        Ok(())
    }

    /// The `--peers` value shared by every node: `1=P1,2=P2,...`.
    fn peers_flag(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Reads and validates a saved plan; `None` when the file does not exist.
fn read_plan(path: &Path) -> anyhow::Result<Option<UpPlan>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let plan: UpPlan = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    plan.validate().with_context(|| format!("check {}", path.display()))?;
    Ok(Some(plan))
}

/// Writes the plan atomically (temp file, fsync, rename), so a crash never leaves half a file.
fn write_plan(path: &Path, plan: &UpPlan) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(plan).context("encode up.json")?;
    text.push('\n');
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("sync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// Refuses to bring back a saved cluster with a different size.
fn check_node_count(plan: &UpPlan, args: &UpArgs) -> anyhow::Result<()> {
    let saved = plan.nodes.len();
    if saved != args.nodes as usize {
        let again = up_again_command(&UpArgs {
            nodes: saved as u32,
            ..args.clone()
        });
        bail!(
            "{dir} holds a {saved}-node cluster but --nodes is {}; run `{again}` to bring it back, or pick another \
             --data-dir (or delete {dir}) for a new cluster",
            args.nodes,
            dir = args.data_dir.display(),
        );
    }
    Ok(())
}

/// The saved addresses that cannot be bound right now, described for the user.
fn taken_addrs(plan: &UpPlan) -> Vec<String> {
    let mut taken = Vec::new();
    for node in &plan.nodes {
        for (what, addr) in [("api", node.api_addr), ("peer", node.peer_addr)] {
            if let Err(e) = TcpListener::bind(addr) {
                taken.push(format!("node {} {what} address {addr} ({e})", node.id));
            }
        }
    }
    taken
}

/// Saved ports of an earlier `keel up` that something else holds now.
#[derive(Debug, thiserror::Error)]
#[error(
    "error: saved ports in {} are in use:\n  {}\nis an earlier `keel up` on {} still running? stop it, \
     free the ports, or pick another --data-dir",
    plan_file.display(),
    taken.join("\n  "),
    data_dir.display()
)]
pub(super) struct PortsTaken {
    plan_file: PathBuf,
    taken: Vec<String>,
    data_dir: PathBuf,
}

/// Loads the saved plan of `args.data_dir`, or allocates and saves a new one. `Ok(Err(taken))` is a
/// problem to report with exit code 1 (a saved port is taken).
pub(super) fn prepare(args: &UpArgs) -> anyhow::Result<Result<UpPlan, PortsTaken>> {
    let path = args.data_dir.join(PLAN_FILE);
    if let Some(plan) = read_plan(&path)? {
        check_node_count(&plan, args)?;
        let taken = taken_addrs(&plan);
        if !taken.is_empty() {
            return Ok(Err(PortsTaken {
                plan_file: path,
                taken,
                data_dir: args.data_dir.clone(),
            }));
        }
        return Ok(Ok(plan));
    }
    // Node data without a plan would come back on new ports that its stored membership does not know.
    if let Some(dir) = existing_node_dir(&args.data_dir) {
        bail!(
            "{} exists but {} does not; delete {} or pick another --data-dir",
            dir.display(),
            path.display(),
            args.data_dir.display()
        );
    }
    let plan = UpPlan::allocate(args.nodes)?;
    write_plan(&path, &plan)?;
    Ok(Ok(plan))
}

fn existing_node_dir(data_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(data_dir).ok()?;
    entries
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("node-"))
        .map(|e| e.path())
}

pub(super) fn node_data_dir(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node-{id}"))
}

/// Arguments of the `keel serve` child for `node`.
pub(super) fn serve_command_args(plan: &UpPlan, node: &UpNode, data_dir: &Path, extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "serve".to_string(),
        "--id".to_string(),
        node.id.to_string(),
        "--api-addr".to_string(),
        node.api_addr.to_string(),
        "--peer-addr".to_string(),
        node.peer_addr.to_string(),
        "--data-dir".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(node_data_dir(data_dir, node.id).into_os_string());
    args.extend(
        [
            "--peers".to_string(),
            plan.peers_flag(),
            "--log-format".to_string(),
            "json".to_string(),
        ]
        .map(Into::into),
    );
    args.extend(extra.iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, nodes: u32) -> UpArgs {
        UpArgs {
            nodes,
            data_dir: dir.to_path_buf(),
            tls: false,
            redis_port_base: None,
            sentinel_port_base: None,
            serve_args: vec![],
        }
    }
    #[test]
    fn nodes_range() {
        for ok in [1, 3, 9] {
            assert!(validate_nodes(ok).is_ok());
        }
        for bad in [0, 10] {
            let e = validate_nodes(bad).unwrap_err().to_string();
            assert!(e.contains("between 1 and 9"), "{e}");
        }
    }

    #[test]
    fn allocate_gives_distinct_ports() {
        let plan = UpPlan::allocate(9).unwrap();
        plan.validate().unwrap();
        assert_eq!(plan.nodes.len(), 9);
        assert!(plan
            .nodes
            .iter()
            .all(|n| n.api_addr.ip().is_loopback() && n.api_addr.port() != 0));
    }

    #[test]
    fn plan_roundtrip_and_brief_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(PLAN_FILE);
        assert_eq!(read_plan(&path).unwrap(), None);
        let plan = UpPlan::allocate(3).unwrap();
        write_plan(&path, &plan).unwrap();
        assert_eq!(read_plan(&path).unwrap(), Some(plan));

        // The documented shape, without a version field.
        std::fs::write(
            &path,
            r#"{"nodes":[{"id":1,"api_addr":"127.0.0.1:7101","peer_addr":"127.0.0.1:7201"}]}"#,
        )
        .unwrap();
        let plan = read_plan(&path).unwrap().unwrap();
        assert_eq!(plan.version, 1);
        assert_eq!(plan.peers_flag(), "1=127.0.0.1:7201");
    }

    #[test]
    fn plan_validation() {
        let node = |id: u64, api: u16, peer: u16| UpNode {
            id,
            api_addr: SocketAddr::from(([127, 0, 0, 1], api)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], peer)),
        };
        let cases: Vec<(Vec<UpNode>, u32, Option<&str>)> = vec![
            (vec![node(1, 1, 2), node(2, 3, 4)], 1, None),
            (vec![], 1, Some("number of nodes")),
            (vec![node(2, 1, 2)], 1, Some("in order")),
            (vec![node(1, 1, 2), node(2, 2, 3)], 1, Some("used twice")),
            (vec![node(1, 1, 1)], 1, Some("used twice")),
            (vec![node(1, 1, 2)], 7, Some("unsupported version")),
        ];
        for (nodes, version, want) in cases {
            let result = UpPlan { version, nodes }.validate();
            match want {
                None => result.unwrap(),
                Some(want) => assert!(format!("{:#}", result.unwrap_err()).contains(want), "want {want}"),
            }
        }
    }

    #[test]
    fn bad_plan_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PLAN_FILE);
        std::fs::write(&path, "{not json").unwrap();
        let e = format!("{:#}", read_plan(&path).unwrap_err());
        assert!(e.contains("up.json"), "{e}");
    }

    #[test]
    fn prepare_saves_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(&args(dir.path(), 3)).unwrap().unwrap();
        assert!(dir.path().join(PLAN_FILE).exists());
        let second = prepare(&args(dir.path(), 3)).unwrap().unwrap();
        assert_eq!(first, second);

        let e = prepare(&args(dir.path(), 5)).unwrap_err().to_string();
        assert!(
            e.contains("3-node cluster") && e.contains("--nodes is 5") && e.contains("--data-dir"),
            "{e}"
        );
    }

    #[test]
    fn prepare_reports_taken_port() {
        let dir = tempfile::tempdir().unwrap();
        let plan = prepare(&args(dir.path(), 1)).unwrap().unwrap();
        let _busy = TcpListener::bind(plan.nodes[0].peer_addr).unwrap();
        let message = prepare(&args(dir.path(), 1)).unwrap().unwrap_err().to_string();
        assert!(
            message.contains(&format!("node 1 peer address {}", plan.nodes[0].peer_addr)),
            "{message}"
        );
        assert_eq!(taken_addrs(&plan).len(), 1);
    }

    #[test]
    fn prepare_refuses_node_data_without_plan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("node-1")).unwrap();
        let e = prepare(&args(dir.path(), 3)).unwrap_err().to_string();
        assert!(e.contains("node-1") && e.contains("up.json"), "{e}");
    }

    #[test]
    fn serve_args_for_a_node() {
        let plan: UpPlan = serde_json::from_str(
            r#"{"nodes":[{"id":1,"api_addr":"127.0.0.1:1001","peer_addr":"127.0.0.1:2001"},
                         {"id":2,"api_addr":"127.0.0.1:1002","peer_addr":"127.0.0.1:2002"}]}"#,
        )
        .unwrap();
        let got = serve_command_args(
            &plan,
            &plan.nodes[1],
            Path::new("d"),
            &["--heartbeat-ms".into(), "50".into()],
        );
        let got: Vec<String> = got.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let want = "serve --id 2 --api-addr 127.0.0.1:1002 --peer-addr 127.0.0.1:2002 --data-dir d/node-2 \
                    --peers 1=127.0.0.1:2001,2=127.0.0.1:2002 --log-format json --heartbeat-ms 50";
        assert_eq!(got.join(" "), want);
    }
}
