//! Rolling upgrade and rollback with two real binaries: the previous release (commit `e70e0e1`,
//! built by `scripts/build-prev.sh` as `target/prev/debug/keel-prev`) and this tree's `keel`.
//!
//! A three-node cluster of the old binary takes a continuous write load (sync replication, so no
//! acknowledged write may be lost across a failover); its replicas are replaced one at a time by the
//! new binary on the same data dirs; the old primary is killed (kill -9), so a new-version node is
//! promoted by a failover across versions; the killed node comes back on the new binary; then one
//! node is rolled back to the old binary and made primary by a switchover (an old primary serving
//! new replicas). Writes must keep working after every step, and at the end every node holds the
//! last acknowledged value of every key. The rule this checks is in docs/upgrading.md.
//!
//! When the old commit is not in the clone (a shallow clone), the test skips with a loud message,
//! also in CI. When the commit is there but the old binary was not built, it fails in CI (where
//! scripts/test.sh builds it first) and skips with a message saying how to build it elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_testkit::*;
use serde_json::Value;

/// The previous release.
const PREV_COMMIT: &str = "e70e0e1";
const T: Duration = Duration::from_secs(30);
/// Writes that must succeed after each step of the upgrade before the next one starts.
const PROGRESS: usize = 10;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The old binary, or `None` after printing why the test cannot run here.
fn prev_binary() -> Option<PathBuf> {
    let root = repo_root();
    let bin = std::env::var_os("KEEL_PREV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/prev/debug/keel-prev"));
    let have_commit = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--verify", "--quiet", &format!("{PREV_COMMIT}^{{commit}}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_commit {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: rolling-upgrade test. The previous release (commit {PREV_COMMIT}) is not in\n\
             this clone (shallow clone?), so there is no old binary to upgrade from.\n\
             Fetch the history (git fetch --unshallow) and run scripts/build-prev.sh.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return None;
    }
    if !bin.is_file() {
        let msg = format!(
            "the previous release's binary {} is missing: build it with scripts/build-prev.sh (scripts/test.sh does)",
            bin.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: rolling-upgrade test: {msg}");
        return None;
    }
    Some(bin)
}

/// Start node `id` of `c` with binary `bin` on its data dir (the fixture's ports and flags).
fn spawn_with(c: &mut Cluster, id: u64, bin: &Path) {
    let args = c.serve_args(id, Some(c.nodes.len()));
    c.spawn_bin(id, bin, args, Some(&format!("===== starting {} =====", bin.display())));
}

/// What the writer has seen.
#[derive(Default)]
struct Load {
    /// Per key, its last acknowledged value (writes to one key are sequential).
    last: BTreeMap<String, Vec<u8>>,
    /// Keys with a write of unknown outcome: left out of the final comparison.
    uncertain: std::collections::BTreeSet<String>,
    acked: usize,
    refused: usize,
    /// Longest time between two acknowledged writes.
    max_gap: Duration,
}

/// The continuous write load: register writes to `up/{k}`, sent to the node that answers 200 on
/// `/primary`. A write refused before it was made (connection refused, 503 no_lease / not_primary
/// / no_primary) is retried on the primary found next; any other failure makes the key uncertain.
async fn writer(http: reqwest::Client, urls: Vec<String>, load: Arc<Mutex<Load>>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut target = 0usize;
    let mut n = 0u64;
    let mut last_ack = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 100_000 {
        let key = format!("up/{:03}", n % 97);
        let value = format!("n{n}").into_bytes();
        let r = http
            .put(format!("{}/v1/kv/{key}", urls[target]))
            .body(value.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let definite_refusal = match r {
            Ok(r) if r.status().is_success() => {
                let mut l = load.lock().unwrap();
                l.last.insert(key, value);
                l.acked += 1;
                l.max_gap = l.max_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
                n += 1;
                continue;
            }
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                status == 503 && ["no_lease", "not_primary", "no_primary"].contains(&code.as_str())
            }
            Err(e) => e.is_connect(),
        };
        {
            let mut l = load.lock().unwrap();
            if definite_refusal {
                l.refused += 1;
            } else {
                l.uncertain.insert(key);
                n += 1;
            }
        }
        // Find the primary again.
        for _ in 0..40 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut found = None;
            for (i, u) in urls.iter().enumerate() {
                let ok = http
                    .get(format!("{u}/primary"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                target = i;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Wait until the writer acknowledged `PROGRESS` more writes: writes keep working.
async fn wait_progress(c: &Cluster, load: &Arc<Mutex<Load>>, step: &str) {
    let from = load.lock().unwrap().acked;
    let started = Instant::now();
    c.wait_for(T, &format!("writes to keep working after: {step}"), || async {
        (load.lock().unwrap().acked >= from + PROGRESS).then_some(())
    })
    .await;
    eprintln!("[{:>6.1?}] writes working after: {step}", started.elapsed());
}

fn parse_pos(s: &str) -> (u64, u64) {
    let (e, q) = s.split_once(':').unwrap_or_else(|| panic!("bad position {s:?}"));
    (e.parse().unwrap(), q.parse().unwrap())
}

async fn position(c: &Cluster, id: u64) -> Option<(u64, u64)> {
    let s = c.status(id).await?;
    Some(parse_pos(s["replication"]["position"].as_str()?))
}

/// Wait until node `id` (just restarted) is a replica that caught up with the primary's position
/// as it was when the node answered.
async fn wait_caught_up(c: &Cluster, id: u64, primary: u64) {
    let target = c
        .wait_for(T, &format!("node {id} up and the primary's position"), || async {
            c.status(id).await?;
            position(c, primary).await
        })
        .await;
    c.wait_for(T, &format!("node {id} caught up to {target:?}"), || async {
        (position(c, id).await? >= target).then_some(())
    })
    .await;
}

/// How replica `id` pulls (`replication.replica.transport` in its status), once it says.
async fn transport(c: &Cluster, id: u64) -> String {
    c.wait_for(T, &format!("node {id} to report its replication transport"), || async {
        c.status(id).await?["replication"]["replica"]["transport"]
            .as_str()
            .map(str::to_string)
    })
    .await
}

async fn primary_id(c: &Cluster) -> u64 {
    c.wait_primary(&[], T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_upgrade_from_the_previous_release_and_back() {
    let Some(old) = prev_binary() else { return };
    let new = keel_bin();
    eprintln!("old: {} ({PREV_COMMIT}), new: {}", old.display(), new.display());
    // Two releases indeed: the old one predates `keel backup`.
    let help = |b: &Path| String::from_utf8_lossy(&Command::new(b).arg("--help").output().unwrap().stdout).into_owned();
    assert!(
        !help(&old).contains("backup") && help(&new).contains("backup"),
        "{} should be the previous release and {} this one",
        old.display(),
        new.display()
    );

    let mut c = Cluster::new(3, &["--replication-mode", "sync", "--min-acks", "1"]);
    for id in 1..=3 {
        spawn_with(&mut c, id, &old);
    }
    let p0 = primary_id(&c).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url()).collect();
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(c.http.clone(), urls, load.clone(), stop.clone()));
    wait_progress(&c, &load, "start on the old release").await;

    // 1. Replace the replicas one at a time by the new binary on the same data dirs.
    let replicas: Vec<u64> = (1..=3).filter(|id| *id != p0).collect();
    for &r in &replicas {
        assert_eq!(c.stop(r), Some(0), "old node {r} stops cleanly");
        spawn_with(&mut c, r, &new);
        wait_caught_up(&c, r, p0).await;
        wait_progress(
            &c,
            &load,
            &format!("node {r} upgraded (old primary {p0}, mixed replicas)"),
        )
        .await;
        // The old primary has no replication stream: the new replica pulls over plain HTTP.
        assert_eq!(transport(&c, r).await, "pull");
    }

    // 2. A failover across versions: kill -9 the old primary; a new-version node takes over.
    c.kill(p0);
    let p1 = c.wait_primary(&[p0], T).await;
    assert!(replicas.contains(&p1));
    wait_progress(
        &c,
        &load,
        &format!("kill -9 of old primary {p0}, new-version node {p1} promoted"),
    )
    .await;
    spawn_with(&mut c, p0, &new);
    wait_caught_up(&c, p0, p1).await;
    wait_progress(&c, &load, &format!("node {p0} back on the new release: all new")).await;
    assert_eq!(transport(&c, p0).await, "stream");

    // 3. Roll one node back to the old binary, and make it the primary (old primary, new replicas).
    let back = (1..=3).find(|id| *id != p1).unwrap();
    assert_eq!(c.stop(back), Some(0), "new node {back} stops cleanly");
    spawn_with(&mut c, back, &old);
    wait_caught_up(&c, back, p1).await;
    wait_progress(&c, &load, &format!("node {back} rolled back to the old release")).await;
    let r = c
        .http
        .post(format!("{}/v1/switchover", c.node(p1).url()))
        .json(&serde_json::json!({ "to": back }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "switchover to the old node: {}",
        r.text().await.unwrap_or_default()
    );
    c.wait_for(T, "the rolled-back node holds the primary lease", || async {
        c.holds_lease(back, Duration::from_millis(500)).await.then_some(())
    })
    .await;
    wait_progress(
        &c,
        &load,
        &format!("switchover to old-release node {back} (new replicas)"),
    )
    .await;

    // 4. No acknowledged write lost: every node ends with each key's last acknowledged value.
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let (expected, uncertain, acked, refused, max_gap) = {
        let l = load.lock().unwrap();
        let mut e = l.last.clone();
        e.retain(|k, _| !l.uncertain.contains(k));
        (e, l.uncertain.clone(), l.acked, l.refused, l.max_gap)
    };
    eprintln!(
        "{acked} acknowledged writes, {refused} refused and retried, {} keys of unknown outcome, longest gap between acknowledgements {max_gap:?}",
        uncertain.len()
    );
    assert!(
        expected.len() >= 50,
        "the comparison covers most keys: {}",
        expected.len()
    );
    let primary = primary_id(&c).await;
    let final_pos = position(&c, primary).await.unwrap();
    for id in 1..=3 {
        c.wait_for(T, &format!("node {id} at the primary's final position"), || async {
            (position(&c, id).await? >= final_pos).then_some(())
        })
        .await;
        for (k, v) in &expected {
            let r = c
                .http
                .get(format!("{}/v1/kv/{k}?consistency=local", c.node(id).url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "node {id} lost {k}");
            let got = r.bytes().await.unwrap();
            assert_eq!(
                got.as_ref(),
                v.as_slice(),
                "node {id}: {k} is {:?}, the last acknowledged write was {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(v)
            );
        }
    }
    let history: Value = c.get(primary, "/v1/history").await.unwrap();
    eprintln!("history: {history}");
}
