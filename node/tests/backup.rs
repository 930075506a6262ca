//! Backup and restore end to end: `keel backup` of a live three-node cluster under a continuous
//! write load, `keel restore` into three fresh data dirs, a new cluster started on them, and its full
//! contents compared with what the source held at the backup's position. The expected contents are
//! computed from the writes themselves: every acknowledged write's `Keel-Position` is recorded, and
//! the value of a key at position P is the one of its last write at or before P (each writer task
//! owns its keys, so there is no doubt about the order of writes to one key). Also: a corrupted
//! byte, a truncated file, a foreign file and a non-empty data dir are refused and leave the target
//! untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_testkit::*;
use reqwest::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "backup-admin-token";
const WRITERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 40;

/// `epoch:seq` as (epoch, seq), ordered like Keel's positions.
fn parse_pos(s: &str) -> (u64, u64) {
    let (e, q) = s.split_once(':').unwrap_or_else(|| panic!("bad position {s:?}"));
    (e.parse().unwrap(), q.parse().unwrap())
}

/// One acknowledged write: key, value after it (`None` = deleted), position.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: Option<Vec<u8>>,
    pos: (u64, u64),
}

/// Outcome of one write.
enum Outcome {
    /// Acknowledged at this position.
    Ok((u64, u64)),
    /// `outcome_unknown`: it may or may not have been applied.
    Unknown,
}

/// PUT (`Some(value)`) or DELETE (`None`) `key`, retrying while the cluster answers 503 for a reason
/// that guarantees the write was not made (no lease yet, primary moving), as clients do.
async fn write(http: &reqwest::Client, url: &str, key: &str, value: Option<&[u8]>) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = match value {
            Some(v) => http.put(format!("{url}/v1/kv/{key}")).body(v.to_vec()),
            None => http.delete(format!("{url}/v1/kv/{key}")),
        };
        let r = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("write {key}: {e}"));
        let status = r.status();
        if status.is_success() {
            return Outcome::Ok(parse_pos(r.headers()["keel-position"].to_str().unwrap()));
        }
        let body: Value = r.json().await.unwrap_or_default();
        if status == 503 && body["error"]["code"] == "outcome_unknown" {
            return Outcome::Unknown;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "write {key}: HTTP {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One writer: puts (and sometimes deletes) its own keys on the primary until `stop`, recording
/// every acknowledged write; keys with a write of unknown outcome are returned apart (their value
/// at the backup's position is uncertain, so they are left out of the comparison).
async fn writer(
    http: reqwest::Client,
    url: String,
    w: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> (Vec<Acked>, Vec<String>) {
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    let mut exists = vec![false; KEYS_PER_WRITER as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 20_000 {
        let k = (n * 7 + w) % KEYS_PER_WRITER;
        let key = format!("load/{w}/{k:03}");
        let delete = exists[k as usize] && n % 9 == 4;
        // Sizes vary from a few bytes to ~20 KiB.
        let value = (!delete).then(|| format!("w{w}-n{n}-").repeat(1 + (n as usize % 13) * 150).into_bytes());
        match write(&http, &url, &key, value.as_deref()).await {
            Outcome::Ok(pos) => {
                exists[k as usize] = value.is_some();
                acked.push(Acked { key, value, pos });
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unknown => unknown.push(key),
        }
        n += 1;
    }
    (acked, unknown)
}

/// Expected contents at `at`: each key's last acknowledged write at or before it.
fn contents_at(writes: &[Acked], at: (u64, u64)) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut sorted: Vec<&Acked> = writes.iter().filter(|a| a.pos <= at).collect();
    sorted.sort_by_key(|a| a.pos);
    let mut out = BTreeMap::new();
    for a in sorted {
        match &a.value {
            Some(v) => {
                out.insert(a.key.clone(), (v.clone(), a.pos.1));
            }
            None => {
                out.remove(&a.key);
            }
        }
    }
    out
}

/// Every key of node `id` with its value and version, read locally from that node.
async fn dump(c: &Cluster, id: u64) -> BTreeMap<String, (Vec<u8>, u64)> {
    let base = c.node(id).url();
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut url = format!("{base}/v1/kv?limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = c.http.get(&url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            keys.push(item["key"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let mut out = BTreeMap::new();
    for k in keys {
        let r = c
            .http
            .get(format!("{base}/v1/kv/{k}?consistency=local"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "node {id} lists {k} but cannot read it");
        let version: u64 = r.headers()["keel-version"].to_str().unwrap().parse().unwrap();
        out.insert(k, (r.bytes().await.unwrap().to_vec(), version));
    }
    out
}

fn run_keel(args: &[String]) -> std::process::Output {
    std::process::Command::new(keel_bin())
        .args(args)
        .env_remove("KEEL_ADDR")
        .env_remove("KEEL_ADMIN_TOKEN")
        .output()
        .expect("run keel")
}

fn restore_args(file: &Path, dir: &Path, peers: &str, id: u64) -> Vec<String> {
    vec![
        "restore".into(),
        "--from".into(),
        file.display().to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--peers".into(),
        peers.into(),
        "--id".into(),
        id.to_string(),
        "--output".into(),
        "json".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_restores_into_a_new_cluster_with_equal_contents() {
    let common = ["--admin-token", TOKEN];
    let mut src = Cluster::new(3, &common);
    src.http = with_token(TOKEN);
    src.start_all();
    let primary = src.wait_primary(&[], T).await;
    let load = Load::start(&src, primary).await;

    // Outside the source cluster's directory, which goes away with it.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let file = dir.join("cluster.keelbak");
    let report = backups_under_load(&src, primary, &file).await;
    let at = parse_pos(report["position"].as_str().unwrap());
    let (expected, uncertain) = load.finish(&src, primary, at).await;

    let src_cluster_id = src.status(primary).await.unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let src_epoch = src.status(primary).await.unwrap()["primary"]["epoch"].as_u64().unwrap();
    drop(src); // the source is gone: a real disaster recovery

    restore_refuses_bad_files_and_used_dirs(&file, &dir);
    let source = Source {
        file,
        report,
        at,
        expected,
        uncertain,
        cluster_id: src_cluster_id,
        epoch: src_epoch,
    };
    restored_cluster_equals_the_source(&common, &source).await;
}

/// The source cluster's writes: large values first (so the datastore snapshot spans several
/// ~1 MiB chunks), then `WRITERS` continuous writers on the primary.
struct Load {
    writes: Vec<Acked>,
    uncertain: Vec<String>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<String>)>>,
}

impl Load {
    /// Writes the large values, starts the writers and waits until the load gets going.
    async fn start(src: &Cluster, primary: u64) -> Load {
        let purl = src.node(primary).url();
        // Some large values first, so the datastore snapshot spans several ~1 MiB chunks.
        let mut writes = Vec::new();
        let mut uncertain = Vec::new();
        for i in 0..24u8 {
            let key = format!("big/{i:02}");
            let v = vec![b'a' + (i % 26); 200 * 1024];
            match write(&src.http, &purl, &key, Some(&v)).await {
                Outcome::Ok(pos) => writes.push(Acked {
                    key,
                    value: Some(v),
                    pos,
                }),
                Outcome::Unknown => uncertain.push(key),
            }
        }

        // The continuous write load.
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (http, url) = (src.http.clone(), purl.clone());
            tasks.push(tokio::spawn(writer(http, url, w, stop.clone(), acks.clone())));
        }
        let load = Load {
            writes,
            uncertain,
            stop,
            acks,
            tasks,
        };
        load.wait_acks(src, "the write load to get going", 40).await;
        load
    }

    /// Waits until the writers have `n` acknowledged writes in all.
    async fn wait_acks(&self, src: &Cluster, what: &str, n: usize) {
        src.wait_for(T, what, || async {
            (self.acks.load(Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }

    /// More writes after the backup at `at`, then the writers stop; the expected contents at
    /// `at` (without the keys of unknown outcome) and those keys.
    async fn finish(
        mut self,
        src: &Cluster,
        primary: u64,
        at: (u64, u64),
    ) -> (BTreeMap<String, (Vec<u8>, u64)>, Vec<String>) {
        let so_far = self.acks.load(Ordering::Relaxed);
        self.wait_acks(src, "more writes after the backup", so_far + 40).await;
        self.stop.store(true, Ordering::Relaxed);
        let (mut writes, mut uncertain) = (std::mem::take(&mut self.writes), std::mem::take(&mut self.uncertain));
        for t in self.tasks {
            let (acked, unknown) = t.await.unwrap();
            writes.extend(acked);
            uncertain.extend(unknown);
        }
        // No fault is injected: an unknown outcome is possible only if a lease lapsed mid-write on a
        // very busy machine. Such keys are left out of the comparison, and they must stay rare.
        assert!(
            uncertain.len() <= 5,
            "too many writes of unknown outcome: {uncertain:?}"
        );
        let before = writes.iter().filter(|a| a.pos <= at).count();
        let after = writes.len() - before;
        eprintln!(
            "{} acknowledged writes: {before} at or before the backup, {after} after it",
            writes.len()
        );
        assert!(before >= 20, "the load was running before the backup ({before} writes)");
        assert!(after >= 20, "the load kept running after the backup ({after} writes)");

        // Expected contents at the backup's position, from the recorded writes.
        let mut expected = contents_at(&writes, at);
        expected.retain(|k, _| !uncertain.contains(k));
        assert_eq!(
            expected.keys().filter(|k| k.starts_with("big/")).count()
                + uncertain.iter().filter(|k| k.starts_with("big/")).count(),
            24
        );
        // The source itself, now, differs (the writes after the backup): the comparison can fail.
        assert_ne!(
            dump(src, primary).await,
            expected,
            "writes after the backup changed the source"
        );
        (expected, uncertain)
    }
}

/// `keel backup --addr ADDR --out FILE`, with `--admin-token` and `--output json` if `token`,
/// run off the runtime's workers.
async fn backup(addr: String, token: bool, out: &Path) -> std::process::Output {
    let mut args: Vec<String> = vec!["backup".into(), "--addr".into(), addr];
    if token {
        args.extend(["--admin-token".into(), TOKEN.into()]);
    }
    args.extend(["--out".into(), out.display().to_string()]);
    if token {
        args.extend(["--output".into(), "json".into()]);
    }
    tokio::task::spawn_blocking(move || run_keel(&args)).await.unwrap()
}

/// Without the admin token a backup is refused and leaves no file; with it, one from the
/// primary while the writers keep writing (written to `file`; its JSON report), and one from a
/// replica, consistent at the replica's own position.
async fn backups_under_load(src: &Cluster, primary: u64, file: &Path) -> Value {
    let dir = file.parent().unwrap();
    let addr = src.node(primary).url();
    // Without the admin token: refused, and no file is left behind.
    let out = backup(addr.clone(), false, file).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));
    assert!(!file.exists());

    // The backup, while the writers keep writing.
    let started = Instant::now();
    let out = backup(addr, true, file).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "keel backup: {}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("backup report is JSON");
    let at = parse_pos(report["position"].as_str().unwrap());
    let size = std::fs::metadata(file).unwrap().len();
    assert_eq!(report["bytes"].as_u64(), Some(size));
    assert!(!dir.join("cluster.keelbak.partial").exists());
    eprintln!(
        "backup at {:?}: {} keys, {size} bytes, sha256 {}, in {took:?}",
        at, report["keys"], report["sha256"]
    );

    // A backup from a replica works too (it spares the primary): consistent at the replica's own
    // position, which is never past the primary's.
    let replica = (1..=3).find(|id| *id != primary).unwrap();
    let rfile = dir.join("replica.keelbak");
    let out = backup(src.node(replica).url(), true, &rfile).await;
    assert_eq!(out.status.code(), Some(0), "keel backup of a replica: {}", stderr(&out));
    let rreport: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rreport["source_node"].as_u64(), Some(replica));
    let rat = parse_pos(rreport["position"].as_str().unwrap());
    let primary_now = parse_pos(
        src.status(primary).await.unwrap()["replication"]["position"]
            .as_str()
            .unwrap(),
    );
    assert!(
        rat <= primary_now,
        "replica backup at {rat:?} is past the primary's position {primary_now:?}"
    );
    report
}

/// Corrupt, truncated, foreign and future-version copies are refused before anything is
/// written; a non-empty data dir is refused unless forced, and then its contents are moved aside.
fn restore_refuses_bad_files_and_used_dirs(file: &Path, dir: &Path) {
    // Corrupt and truncated copies are refused before anything is written.
    let bytes = std::fs::read(file).unwrap();
    let target = dir.join("refused");
    let peers_probe = "1=127.0.0.1:1";
    for (name, content, needle) in [
        (
            "corrupt.keelbak",
            {
                let mut b = bytes.clone();
                let i = b.len() / 2;
                b[i] ^= 0x01;
                b
            },
            "checksum",
        ),
        ("truncated.keelbak", bytes[..bytes.len() - 1000].to_vec(), "truncated"),
        (
            "foreign.keelbak",
            b"PK\x03\x04 not a keel backup at all".to_vec(),
            "not a Keel backup",
        ),
        (
            "version.keelbak",
            {
                let mut b = bytes.clone();
                b[8] = 99;
                b
            },
            "format version 99",
        ),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, &content).unwrap();
        let out = run_keel(&restore_args(&f, &target, peers_probe, 1));
        assert_eq!(out.status.code(), Some(1), "{name} must be refused: {}", stdout(&out));
        assert!(
            stderr(&out).contains(needle),
            "{name}: error should say {needle:?}: {}",
            stderr(&out)
        );
        assert!(!target.exists(), "{name}: the data dir must not be created");
    }
    // A non-empty data dir is refused unless forced, and its contents are kept.
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious"), b"keep me").unwrap();
    let out = run_keel(&restore_args(file, &target, peers_probe, 1));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("precious")).unwrap(), b"keep me");
    // With --force it is restored, and what was there is moved aside inside it, not deleted.
    let mut forced = restore_args(file, &target, peers_probe, 1);
    forced.push("--force".into());
    let out = run_keel(&forced);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let aside = PathBuf::from(r["moved_aside"].as_str().expect("moved_aside"));
    assert_eq!(std::fs::read(aside.join("precious")).unwrap(), b"keep me");
    assert!(target.join("data.redb").is_file() && target.join("raft-state.redb").is_file());
    assert!(!target.join("precious").exists());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain(std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.to_string_lossy().contains("restoring-"))
        .collect();
    assert!(leftovers.is_empty(), "staging dirs left behind: {leftovers:?}");
}

/// What the restore is compared with: the backup file and its report, its position, the
/// source's contents there (without the keys of unknown outcome), and the source's identity.
struct Source {
    file: PathBuf,
    report: Value,
    at: (u64, u64),
    expected: BTreeMap<String, (Vec<u8>, u64)>,
    uncertain: Vec<String>,
    cluster_id: String,
    epoch: u64,
}

/// Restore into three fresh data dirs (one of them an existing empty directory) and start a new
/// cluster on them: every node holds exactly the source's contents at the backup's position, and
/// the cluster continues the backup's history.
async fn restored_cluster_equals_the_source(common: &[&str], source: &Source) {
    let (file, report, expected, uncertain) = (&source.file, &source.report, &source.expected, &source.uncertain);
    let (at, src_cluster_id, src_epoch) = (source.at, &source.cluster_id, source.epoch);
    let mut dst = Cluster::new(3, common);
    dst.http = with_token(TOKEN);
    let peers = dst.peers(3);
    std::fs::create_dir_all(dst.data_dir(2)).unwrap();
    let mut cluster_ids = Vec::new();
    for id in 1..=3 {
        let out = run_keel(&restore_args(file, dst.data_dir(id), &peers, id));
        assert_eq!(out.status.code(), Some(0), "restore node {id}: {}", stderr(&out));
        let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(r["position"], report["position"]);
        assert_eq!(r["sha256"], report["sha256"]);
        cluster_ids.push(r["cluster_id"].as_str().unwrap().to_string());
    }
    assert!(cluster_ids.iter().all(|c| *c == cluster_ids[0]), "{cluster_ids:?}");
    assert_ne!(
        cluster_ids[0], *src_cluster_id,
        "a restored cluster gets a new cluster id"
    );
    dst.start_all();
    let new_primary = dst.wait_primary(&[], T).await;

    // Every node holds exactly the source's contents at the backup's position.
    for id in 1..=3 {
        let mut got = dump(&dst, id).await;
        got.retain(|k, _| !uncertain.contains(k));
        let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        let differ: Vec<&String> = expected
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && differ.is_empty(),
            "node {id} differs from the source at {at:?}: missing {missing:?}, extra {extra:?}, different {differ:?}"
        );
        assert_eq!(got.len(), expected.len());
    }
    assert!(
        !uncertain.is_empty() || expected.len() > 24,
        "the comparison covers the load's keys"
    );
    eprintln!("restored cluster: {} keys equal on all three nodes", expected.len());

    // The new cluster continues the backup's history: same cluster state, epoch not older,
    // positions after the backup's, and it takes writes.
    let s = dst.status(new_primary).await.unwrap();
    assert_eq!(s["cluster_id"].as_str(), Some(cluster_ids[0].as_str()));
    assert!(s["primary"]["epoch"].as_u64().unwrap() >= src_epoch);
    let history: Value = dst.get(new_primary, "/v1/history").await.unwrap();
    assert!(
        history.to_string().contains("\"epoch\":1"),
        "failover history kept: {history}"
    );
    let Outcome::Ok(p) = write(&dst.http, &dst.node(new_primary).url(), "after-restore", Some(b"new")).await else {
        panic!("write after restore: outcome unknown");
    };
    assert!(
        p > at,
        "new writes continue after the backup's position: {p:?} vs {at:?}"
    );
    for id in 1..=3 {
        dst.wait_for(T, "the new write on every node", || async {
            let r = dst.req(Method::GET, id, "/v1/kv/after-restore").send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }
}

/// The fixture's client, sending `token` on every request: with the admin token configured the
/// datastore takes no request without one.
fn with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .unwrap()
}
