//! Git Sync across real processes with real repositories made by the `git` CLI (file://).

use std::path::Path;
use std::time::{Duration, Instant};

use keel_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const SECRET: &str = "webhook-s3cret";

/// The upstream every test here starts from: `shared/config.txt` at "v1".
fn upstream(dir: &Path) -> Upstream {
    let up = Upstream::new(dir);
    up.commit("shared/config.txt", "v1");
    up
}

fn served(c: &Cluster, id: u64, file: &str) -> Option<String> {
    std::fs::read_to_string(c.data_dir(id).join("gitsync/current").join(file)).ok()
}

fn sign(body: &[u8]) -> String {
    webhook_signature(SECRET, body)
}

async fn webhook(c: &Cluster, id: u64, signature: &str, delivery: &str) -> (u16, Value) {
    let body = json!({"ref": "refs/heads/main"}).to_string();
    let r = c
        .req(Method::POST, id, "/v1/gitsync/webhook")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .sent()
        .await;
    status_json(r).await
}

fn cluster(up: &Upstream, interval_ms: u64) -> Cluster {
    let repo = up.url();
    let interval = interval_ms.to_string();
    Cluster::new(
        3,
        &[
            "--gitsync-repo",
            &repo,
            "--gitsync-branch",
            "main",
            "--gitsync-path",
            "shared",
            "--gitsync-interval-ms",
            &interval,
            "--gitsync-webhook-secret",
            SECRET,
        ],
    )
}

/// A temp dir holding [`upstream`] and a three-node cluster following it every `interval_ms`,
/// started.
fn started(interval_ms: u64) -> (tempfile::TempDir, Upstream, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(dir.path());
    let mut c = cluster(&up, interval_ms);
    c.start_all();
    (dir, up, c)
}

/// `PUT /v1/gitsync/files/{path}` with `body` on node `id`.
async fn put_file(c: &Cluster, id: u64, path: &str, body: &'static str) -> reqwest::Response {
    c.req(Method::PUT, id, &format!("/v1/gitsync/files/{path}"))
        .body(body)
        .sent()
        .await
}

async fn wait_served(c: &Cluster, file: &str, want: &str, what: &str) {
    c.wait_for(T, what, || async {
        (1..=3u64)
            .all(|id| served(c, id, file).as_deref() == Some(want))
            .then_some(())
    })
    .await;
}

/// Acceptance 1: converge on the initial commit; a push plus one signed webhook to one node
/// makes all three serve the new tree; a wrong signature changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_to_one_node_syncs_all() {
    let (_dir, up, c) = started(600_000);
    wait_served(&c, "config.txt", "v1", "every node serves the initial commit").await;

    up.commit("shared/config.txt", "v2");
    let (status, body) = webhook(&c, 2, "sha256=0000", "d-bad").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = webhook(&c, 2, "", "d-none").await;
    assert_eq!(status, 401);
    assert!(
        (1..=3).all(|id| served(&c, id, "config.txt").as_deref() == Some("v1")),
        "a bad webhook changed nothing"
    );

    let body = json!({"ref": "refs/heads/main"}).to_string();
    let t0 = Instant::now();
    let (status, v) = webhook(&c, 2, &sign(body.as_bytes()), "d-1").await;
    assert_eq!(status, 202, "{v}");
    wait_served(&c, "config.txt", "v2", "every node serves the pushed commit").await;
    println!(
        "webhook to node 2 -> all three nodes serve the new tree after {:?}",
        t0.elapsed()
    );
    // A redelivery is recognised and ignored.
    let (status, v) = webhook(&c, 2, &sign(body.as_bytes()), "d-1").await;
    assert_eq!(status, 200);
    assert_eq!(v["webhook"]["verdict"], "duplicate", "{v}");
    // Status is data, on every node.
    let s = c.get(3, "/v1/gitsync").await.unwrap();
    assert_eq!(s["state"], "ok", "{s}");
    // The CLI finds the other nodes through the cluster's member list: wait until every
    // member has announced its API address.
    c.wait_for(T, "API addresses announced", || async {
        let v = c.get(1, "/v1/cluster").await?;
        v["members"]
            .as_array()?
            .iter()
            .all(|m| m["api_addr"].as_str().is_some_and(|a| !a.is_empty()))
            .then_some(())
    })
    .await;
    let out = c.cli(&["gitsync", "status", "--addr", &c.node(1).url()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("converged"), "{}", stdout(&out));
}

/// Acceptance 2 and 6: without webhooks a push is picked up within the interval; an
/// unreachable upstream is reported with back-off while the last good tree stays served, and
/// recovery is automatic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_pickup_and_upstream_outage() {
    let (dir, up, c) = started(300);
    wait_served(&c, "config.txt", "v1", "initial commit").await;
    let t0 = Instant::now();
    up.commit("shared/config.txt", "v2");
    wait_served(&c, "config.txt", "v2", "push picked up by the interval").await;
    println!(
        "push picked up by every node after {:?} (interval 300 ms)",
        t0.elapsed()
    );

    // Outage: the upstream directory disappears.
    let moved = dir.path().join("moved.git");
    std::fs::rename(&up.bare, &moved).unwrap();
    let s = c
        .wait_for(T, "status reports the upstream error", || async {
            let s = c.get(1, "/v1/gitsync").await?;
            (s["consecutive_failures"].as_u64()? >= 2 && s["last_error"].is_string()).then_some(s)
        })
        .await;
    assert_eq!(
        served(&c, 1, "config.txt").as_deref(),
        Some("v2"),
        "last good tree stays: {s}"
    );
    std::fs::rename(&moved, &up.bare).unwrap();
    up.commit("shared/config.txt", "v3");
    wait_served(&c, "config.txt", "v3", "automatic recovery after the outage").await;
}

/// Acceptance 4: a force-push is a conflict on every node, the old tree stays; accepting the
/// reset moves to the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_is_a_conflict_until_accepted() {
    let (_dir, up, c) = started(300);
    up.commit("shared/config.txt", "v2");
    wait_served(&c, "config.txt", "v2", "v2 served").await;
    // Rewrite history: drop v2, commit something else, force-push.
    git(&up.work, &["reset", "-q", "--hard", "HEAD~1"]);
    std::fs::write(up.work.join("shared/config.txt"), "rewritten").unwrap();
    git(&up.work, &["commit", "-q", "-am", "rewrite"]);
    git(&up.work, &["push", "-q", "-f", "origin", "main"]);
    for id in 1..=3u64 {
        c.wait_for(T, "conflict reported", || async {
            let s = c.get(id, "/v1/gitsync").await?;
            (s["state"] == "conflict").then_some(())
        })
        .await;
        assert_eq!(
            served(&c, id, "config.txt").as_deref(),
            Some("v2"),
            "old tree kept on node {id}"
        );
    }
    for id in 1..=3u64 {
        let r = c
            .req(Method::POST, id, "/v1/gitsync/sync?accept_reset=true")
            .sent()
            .await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    wait_served(&c, "config.txt", "rewritten", "new history served after accept_reset").await;
}

/// Acceptance 5: an edit through a replica lands upstream as one commit with the Keel-Epoch
/// trailer and is served by all nodes; after a failover the new primary pushes with its epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_committed_by_the_primary() {
    let (_dir, up, mut c) = started(300);
    wait_served(&c, "config.txt", "v1", "initial commit").await;
    let p = c.wait_primary(&[], T).await;
    let replica = (1..=3).find(|i| *i != p).unwrap();
    let r = put_file(&c, replica, "edited.txt", "from the API").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    wait_served(&c, "edited.txt", "from the API", "edit served everywhere").await;
    let log = git(&up.bare, &["log", "-1", "--format=%B", "main"]);
    let e1 = c.status(p).await.unwrap()["primary"]["epoch"].as_u64().unwrap();
    assert!(log.contains(&format!("Keel-Epoch: {e1}")), "trailer missing: {log}");

    c.kill(p);
    let q = c.wait_primary(&[p], T).await;
    let r = put_file(&c, q, "edited.txt", "after failover").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let e2 = c.status(q).await.unwrap()["primary"]["epoch"].as_u64().unwrap();
    assert!(e2 > e1);
    let log = git(&up.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(log.contains(&format!("Keel-Epoch: {e2}")), "{log}");
    // Bad paths are refused.
    let r = put_file(&c, q, "..%2Fescape", "x").await;
    assert_eq!(r.status(), 400);
}

/// The on-sync hook runs after each sync that changed the commit, with the commit and the
/// served tree in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sync_hook_runs_with_commit_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(dir.path());
    let mut c = cluster(&up, 300);
    let hook = format!(
        "echo \"$KEEL_NODE_ID $KEEL_GIT_COMMIT $(cat \"$KEEL_GIT_PATH/config.txt\")\" >> {}/hook.log",
        dir.path().display()
    );
    c.common.extend(["--gitsync-hook".to_string(), hook]);
    c.start_all();
    wait_served(&c, "config.txt", "v1", "initial commit").await;
    let sha = up.commit("shared/config.txt", "v2");
    wait_served(&c, "config.txt", "v2", "v2 served").await;
    let log_path = dir.path().join("hook.log");
    c.wait_for(T, "hook ran on every node for the new commit", || async {
        let log = std::fs::read_to_string(&log_path).ok()?;
        (1..=3)
            .all(|id| log.lines().any(|l| l == format!("{id} {sha} v2")))
            .then_some(())
    })
    .await;
    let s = c.get(1, "/v1/gitsync").await.unwrap();
    assert_eq!(s["hook"]["exit_code"], 0, "{s}");
}
