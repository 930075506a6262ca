//! `keel restore --from FILE`: seed one data dir of a new cluster from a checked backup, built in a
//! staging directory and renamed into place.

use super::*;

/// `keel restore`.
// The `<time>` in the --force help is text for the terminal, not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Backup file written by `keel backup`
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Data dir to create for one node of the new cluster (must be absent or empty)
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Members of the new cluster, id=host:port of their peer addresses, the same list for every
    /// node and for `keel serve --peers` (e.g. 1=10.0.0.1:7201,2=10.0.0.2:7201,3=10.0.0.3:7201)
    #[arg(long)]
    pub peers: String,
    /// Id of the node that will serve this data dir (checked against --peers)
    #[arg(long)]
    pub id: Option<u64>,
    /// Restore even though DIR is not empty: its contents are moved into DIR/.before-restore-<time>/,
    /// never deleted
    #[arg(long)]
    pub force: bool,
}

/// Run `keel restore`; returns the exit code (0 restored, 1 refused or failed: DIR untouched).
pub async fn run_restore(args: RestoreArgs, output: OutputFormat) -> anyhow::Result<i32> {
    match restore(&args).await {
        Ok(report) => {
            if output == OutputFormat::Json {
                crate::cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                crate::cli::print_out(&format!(
                    "restored {} into {}\n  position  {}\n  keys      {}\n  epoch     {}\n  cluster   {} (new; backup of {})\n  sha256    {}\nstart every node of the new cluster with `keel serve ... --peers {}`\n",
                    args.from.display(),
                    args.data_dir.display(),
                    report["position"].as_str().unwrap_or(""),
                    report["keys"],
                    report["epoch"],
                    report["cluster_id"].as_str().unwrap_or(""),
                    report["source_cluster_id"].as_str().unwrap_or("-"),
                    report["sha256"].as_str().unwrap_or(""),
                    report["peers"].as_str().unwrap_or(""),
                ));
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}

/// The cluster id of a cluster restored from a backup with checksum `sha256` onto `peers`: new
/// (the restored cluster must not be mistaken for the source, whose nodes may still run), and the
/// same for every data dir restored from the same file with the same `--peers`, which is what
/// lets them form one cluster. Dirs restored with different peer lists get different ids and
/// refuse each other's traffic.
pub fn restored_cluster_id(sha256: &str, peers: &BTreeMap<NodeId, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"keel-restore\0");
    h.update(sha256.as_bytes());
    for (id, addr) in peers {
        h.update(format!("\0{id}={addr}").as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// The cluster state a restored cluster starts from: the backup's, with a new cluster id, the
/// members' API addresses cleared (each node announces its own at start) and only the members of
/// the new `peers` kept (their tags survive).
pub fn restored_state(backup: &ClusterState, cluster_id: String, peers: &BTreeMap<NodeId, String>) -> ClusterState {
    let mut s = backup.clone();
    s.cluster_id = Some(cluster_id);
    s.members.retain(|id, _| peers.contains_key(id));
    for m in s.members.values_mut() {
        m.api_addr.clear();
    }
    s
}

pub(crate) fn dir_is_empty(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("read data dir {}", dir.display()))?
        .next()
        .is_none())
}

pub(crate) async fn restore(args: &RestoreArgs) -> anyhow::Result<serde_json::Value> {
    let peers = crate::config::parse_peers(&args.peers).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    if let Some(id) = args.id {
        if !peers.contains_key(&id) {
            bail!("--id {id} is not in --peers ({}); give this node's id", args.peers);
        }
    }
    // 1. The file: magic, version, checksum. Nothing is written before these pass.
    let from = args.from.clone();
    let sha256 = tokio::task::spawn_blocking(move || verify_checksum(&from)).await??;
    let header = read_header(&args.from)?;

    // 2. The target.
    let dir = &args.data_dir;
    let exists = dir.exists();
    if exists {
        if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        }
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(dir.join("LOCK")) {
            if f.try_lock().is_err() {
                bail!(
                    "data dir {} is in use by a running keel (its LOCK is held): stop that node first",
                    dir.display()
                );
            }
        }
    }
    let non_empty = exists && !dir_is_empty(dir)?;
    if non_empty && !args.force {
        bail!(
            "data dir {} is not empty: restore into a new or empty directory, or pass --force to move its contents aside",
            dir.display()
        );
    }

    // 3. Build the new data dir in a staging directory: next to DIR when DIR does not exist (then
    //    renamed into place in one step), else inside DIR, whose files are then moved up (DIR may
    //    be a mount point or systemd's StateDirectory, which cannot be renamed over).
    let pid = std::process::id();
    let staging = if exists {
        dir.join(format!(".keel-restoring-{pid}"))
    } else {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
        let name = dir
            .file_name()
            .with_context(|| format!("--data-dir {} has no directory name", dir.display()))?
            .to_string_lossy()
            .into_owned();
        parent.join(format!(".{name}.restoring-{pid}"))
    };
    std::fs::create_dir(&staging).with_context(|| format!("create {}", staging.display()))?;
    let cluster_id = restored_cluster_id(&sha256, &peers);
    let built = build_staging(&staging, &args.from, &sha256, &header, &peers, &cluster_id).await;
    if let Err(e) = built {
        // Only the staging directory was written: remove it and DIR is as it was.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    // 4. Into place.
    let mut moved_aside = None;
    if !exists {
        if let Err(e) = std::fs::rename(&staging, dir) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e).with_context(|| format!("move the restored data into {}", dir.display()));
        }
    } else {
        let staging_name = staging.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        if non_empty {
            // --force: keep everything that was there, inside DIR, never delete it.
            let aside = dir.join(format!(".before-restore-{}", unix_ms()));
            std::fs::create_dir(&aside).with_context(|| format!("create {}", aside.display()))?;
            for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
                let entry = entry.with_context(|| format!("read {}", dir.display()))?;
                let name = entry.file_name();
                if name == staging_name || entry.path() == aside {
                    continue;
                }
                std::fs::rename(entry.path(), aside.join(&name))
                    .with_context(|| format!("move {} aside into {}", entry.path().display(), aside.display()))?;
            }
            moved_aside = Some(aside);
        }
        for f in std::fs::read_dir(&staging).with_context(|| format!("read {}", staging.display()))? {
            let f = f.with_context(|| format!("read {}", staging.display()))?;
            std::fs::rename(f.path(), dir.join(f.file_name())).with_context(|| {
                format!(
                    "move {} into {} (run the restore again with --force)",
                    f.path().display(),
                    dir.display()
                )
            })?;
        }
        std::fs::remove_dir(&staging).with_context(|| format!("remove {}", staging.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    fsync_parent(dir);
    info!(dir = %dir.display(), position = %header.position, "restored a backup");
    Ok(json!({
        "data_dir": dir.display().to_string(),
        "position": header.position.to_string(),
        "keys": header.keys,
        "epoch": header.cluster.epoch(),
        "cluster_id": cluster_id,
        "source_cluster_id": header.cluster.cluster_id,
        "sha256": sha256,
        "peers": args.peers,
        "moved_aside": moved_aside.map(|p| p.display().to_string()),
    }))
}

pub(crate) async fn build_staging(
    staging: &Path,
    from: &Path,
    sha256: &str,
    header: &BackupHeader,
    peers: &BTreeMap<NodeId, String>,
    cluster_id: &str,
) -> anyhow::Result<()> {
    // The datastore: the backup's chunks through the same installer a resyncing replica uses.
    let data_path = staging.join("data.redb");
    let from_owned = from.to_path_buf();
    let (verified, pos) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Verified, Position)> {
        let store = keel_replication::DataStore::open(&data_path)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", data_path.display()))?;
        let mut inst = store
            .begin_install()
            .map_err(|e| anyhow::anyhow!("start the datastore install: {e}"))?;
        let verified = scan(&from_owned, |chunk| {
            inst.push_chunk(chunk)
                .map_err(|e| anyhow::anyhow!("install a datastore chunk: {e}"))
        })?;
        let pos = inst
            .finish()
            .map_err(|e| anyhow::anyhow!("finish the datastore install: {e}"))?;
        Ok((verified, pos))
    })
    .await??;
    if verified.sha256 != sha256 {
        bail!("the backup file changed while it was being restored; try again");
    }
    if pos != header.position {
        bail!(
            "corrupt backup: the datastore snapshot is at {pos}, the header says {}",
            header.position
        );
    }

    // The Raft state: installed as a snapshot of log index 0 covering the membership from
    // --peers and the backup's cluster state. openraft treats the empty log below it as purged, so
    // the nodes start initialised (no bootstrap) and a member added later gets this snapshot, not
    // a replay of a log that never held the restored state. Identical on every node restored from
    // the same file with the same --peers.
    let state = restored_state(&header.cluster, cluster_id.to_string(), peers);
    let (_log, mut sm) = keel_raft::store::open(staging).context("create the raft stores")?;
    let log_id = LogId::<NodeId>::default();
    let nodes: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes));
    let view = StateView {
        last_applied: Some(log_id),
        membership: membership.clone(),
        state,
    };
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: format!("restore-{}", &sha256[..16]),
    };
    sm.install_snapshot(&meta, Box::new(std::io::Cursor::new(keel_raft::codec::encode(&view))))
        .await
        .map_err(|e| anyhow::anyhow!("write the restored cluster state: {e}"))?;
    drop(sm);

    // A note for operators: where this data dir came from.
    let from_abs = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    let note = json!({
        "restored_from": from_abs.display().to_string(),
        "sha256": sha256,
        "position": header.position.to_string(),
        "source_cluster_id": header.cluster.cluster_id,
        "source_node": header.source_node,
        "backup_created_at_ms": header.created_at_ms,
        "cluster_id": cluster_id,
        "restored_at_ms": unix_ms(),
    });
    let note_path = staging.join("RESTORED.json");
    std::fs::write(&note_path, format!("{}\n", serde_json::to_string_pretty(&note)?))
        .with_context(|| format!("write {}", note_path.display()))?;
    for f in ["RESTORED.json", "data.redb", "raft-state.redb", "raft-log.redb"] {
        if let Ok(file) = std::fs::File::open(staging.join(f)) {
            file.sync_all().with_context(|| format!("fsync {f}"))?;
        }
    }
    if let Ok(d) = std::fs::File::open(staging) {
        let _ = d.sync_all();
    }
    Ok(())
}
