//! Git Sync across real processes with real repositories made by the `git` CLI (file://, and
//! `git daemon` where a push must run the upstream's hooks).

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
    // Status is data, on every node (it records the sync a moment after the tree is swapped in).
    c.wait_for(T, "node 3 reports the synced commit", || async {
        let s = c.get(3, "/v1/gitsync").await?;
        (s["state"] == "ok").then_some(())
    })
    .await;
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

    // `/replica?max_gitsync_age_ms=` takes a replica whose Git Sync is stale out of rotation.
    let p = c.wait_primary(&[], T).await;
    let replica = (1..=3).find(|i| *i != p).unwrap();
    let fresh = "/replica?max_gitsync_age_ms=1000";
    wait_replica(
        &c,
        replica,
        fresh,
        200,
        "",
        "a replica with fresh Git Sync is in rotation",
    )
    .await;
    let r = c
        .req(Method::GET, replica, "/replica?max_gitsync_age_ms=soon")
        .sent()
        .await;
    assert_eq!(error_code(r).await, (400, "bad_request".to_string()));

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
    let v = wait_replica(
        &c,
        replica,
        fresh,
        503,
        "gitsync_stale",
        "a stale replica leaves rotation",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("over 1000 ms"), "{v}");
    // Without the parameter (and no --gitsync-max-age-ms) Git Sync is not checked.
    wait_replica(&c, replica, "/replica", 200, "", "no age asked, no age checked").await;
    std::fs::rename(&moved, &up.bare).unwrap();
    up.commit("shared/config.txt", "v3");
    wait_served(&c, "config.txt", "v3", "automatic recovery after the outage").await;
    wait_replica(&c, replica, fresh, 200, "", "back in rotation once synced").await;
}

/// Wait until `GET path` on node `id` answers `status` (and, for an error, `code`); its body.
async fn wait_replica(c: &Cluster, id: u64, path: &str, status: u16, code: &str, what: &str) -> Value {
    c.wait_for(T, what, || async {
        let (s, v) = status_json(c.req(Method::GET, id, path).sent().await).await;
        (s == status && (code.is_empty() || v["error"]["code"] == code)).then_some(v)
    })
    .await
}

/// Acceptance 4: a force-push is a conflict on every node, the old tree stays, and such a
/// replica leaves `/replica` rotation (`--gitsync-max-age-ms`); one `keel gitsync sync
/// --accept-reset` to one node moves every node to the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_is_a_conflict_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(dir.path());
    let mut c = cluster(&up, 300);
    c.common.extend(["--gitsync-max-age-ms", "600000"].map(String::from));
    c.start_all();
    up.commit("shared/config.txt", "v2");
    wait_served(&c, "config.txt", "v2", "v2 served").await;
    let p = c.wait_primary(&[], T).await;
    let replica = (1..=3).find(|i| *i != p).unwrap();
    wait_replica(&c, replica, "/replica", 200, "", "the replica is in rotation").await;
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
    // The configured age applies without a parameter; a conflict fails it however recent.
    let v = wait_replica(
        &c,
        replica,
        "/replica",
        503,
        "gitsync_conflict",
        "conflicted replica out",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("conflict"), "{v}");
    let out = c.cli(&["gitsync", "sync", "--accept-reset", "--addr", &c.node(p).url()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    wait_served(
        &c,
        "config.txt",
        "rewritten",
        "new history served on every node after one accept-reset",
    )
    .await;
    // The tree is checked out a moment before the status records the sync, and a timer sync
    // may be running when we ask ("syncing"): wait for each node to report the new commit.
    let head = git(&up.bare, &["rev-parse", "main"]);
    for id in 1..=3u64 {
        c.wait_for(T, "every node reports the accepted history", || async {
            let s = c.get(id, "/v1/gitsync").await?;
            (s["state"] == "ok" && s["commit"] == head.trim()).then_some(())
        })
        .await;
    }
    wait_replica(&c, replica, "/replica", 200, "", "the replica is back in rotation").await;
}

/// Acceptance 5: an edit through a replica lands upstream as one commit with the Keel-Epoch
/// trailer and is served by all nodes; after a failover the new primary pushes with its epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_committed_by_the_primary() {
    let (_dir, up, mut c) = started(300);
    wait_served(&c, "config.txt", "v1", "initial commit").await;
    let p = c.wait_primary(&[], T).await;
    let replica = (1..=3).find(|i| *i != p).unwrap();
    c.wait_knows_primary(replica, p, T).await;
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

/// The upstream's hook: while `<dir>/hold` exists it touches `<dir>/held` and waits (a push in
/// flight, held as long as the test needs, at most 60 s); then, unless `<dir>/unguarded` exists,
/// `keel git-guard ARGS` decides.
fn guard_hook(dir: &Path, c: &Cluster, args: &str) -> String {
    let addrs: Vec<String> = (1..=3).map(|id| c.node(id).url()).collect();
    format!(
        r#"#!/bin/sh
if [ -e "{d}/hold" ]; then
  touch "{d}/held"
  i=0
  while [ -e "{d}/hold" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
fi
[ -e "{d}/unguarded" ] && exit 0
exec "{keel}" git-guard --addr {addrs} --timeout-ms 2000 {args}
"#,
        d = dir.display(),
        keel = keel_bin().display(),
        addrs = addrs.join(","),
    )
}

async fn epoch(c: &Cluster, id: u64) -> u64 {
    c.status(id).await.unwrap()["primary"]["epoch"].as_u64().unwrap()
}

/// `PUT /v1/gitsync/files/{file}` on the primary `p`, whose push the upstream's hook holds while
/// the cluster fails over to `to` (forced): the old primary pushes only once deposed. Returns the
/// edit's answer and the epochs before and after.
async fn edit_while_deposed(c: &Cluster, dir: &Path, p: u64, to: u64, file: &str) -> ((u16, Value), u64, u64) {
    let e1 = epoch(c, p).await;
    let (hold, held) = (dir.join("hold"), dir.join("held"));
    std::fs::write(&hold, "").unwrap();
    let _ = std::fs::remove_file(&held);
    // Longer than the fixture's client: the answer comes only after the failover.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let req = client
        .put(format!("{}/v1/gitsync/files/{file}", c.node(p).url()))
        .body("late");
    let edit = tokio::spawn(async move { status_json(req.send().await.expect("send the edit")).await });
    c.wait_for(T, "the old primary's push reaches the hook", || async {
        held.exists().then_some(())
    })
    .await;
    let r = c
        .req(Method::POST, to, "/v1/failover")
        .json(&json!({"to": to, "force": true}))
        .sent()
        .await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    c.wait_for(T, "the new primary holds its lease", || async {
        c.holds_lease(to, Duration::from_millis(500)).await.then_some(())
    })
    .await;
    assert!(
        !c.holds_lease(p, Duration::from_secs(1)).await,
        "old primary {p} still holds a lease"
    );
    let e2 = epoch(c, to).await;
    assert!(e2 > e1, "epoch {e1} -> {e2}");
    std::fs::remove_file(&hold).unwrap();
    (edit.await.unwrap(), e1, e2)
}

/// Push `message` (one new file) from the work clone, on top of upstream's main; git's output.
fn push_from_clone(up: &Upstream, file: &str, message: &str) -> std::process::Output {
    git(&up.work, &["fetch", "-q", "origin"]);
    git(&up.work, &["reset", "-q", "--hard", "origin/main"]);
    std::fs::write(up.work.join("shared").join(file), file).unwrap();
    git(&up.work, &["add", "-A"]);
    git(&up.work, &["commit", "-q", "-m", message]);
    git_cmd(&up.work, &["push", "origin", "HEAD:main"]).output().unwrap()
}

/// Issue 20: fencing of Git pushes end to end. The upstream is served by `git daemon`, so the
/// nodes' pushes run its hooks. A primary deposed while its push is in flight: without the guard
/// the push lands and the old primary answers `outcome_unknown` (never success); with
/// `keel git-guard` as the pre-receive hook the push is refused, the branch does not move and the
/// old primary answers `stale_epoch`. The current primary's edits pass the guard; a stale
/// `Keel-Epoch` pushed by hand is refused; `--require-trailer` (as an update hook) refuses
/// commits without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_primary_cannot_push_to_a_guarded_branch() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(dir.path());
    let daemon = GitDaemon::start(dir.path());
    let mut c = Cluster::new(
        3,
        &[
            "--gitsync-repo",
            &daemon.url("upstream.git"),
            "--gitsync-path",
            "shared",
            "--gitsync-interval-ms",
            "300",
        ],
    );
    c.start_all();
    install_hook(&up.bare, "pre-receive", &guard_hook(dir.path(), &c, "--branch main"));
    wait_served(&c, "config.txt", "v1", "initial commit").await;
    let p1 = c.wait_primary(&[], T).await;
    let mut others = (1..=3).filter(|i| *i != p1);
    let (p2, p3) = (others.next().unwrap(), others.next().unwrap());
    let tip = || git(&up.bare, &["rev-parse", "main"]);

    // Without the guard: the late push lands, and the deposed primary does not claim success.
    std::fs::write(dir.path().join("unguarded"), "").unwrap();
    let ((status, v), e1, _) = edit_while_deposed(&c, dir.path(), p1, p2, "late-1.txt").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("outcome_unknown")),
        "{v}"
    );
    let log = git(&up.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        log.contains(&format!("Keel-Epoch: {e1}")),
        "the unguarded push landed: {log}"
    );
    wait_served(&c, "late-1.txt", "late", "every node serves the late commit").await;

    // With the guard: the deposed primary's push is refused and the branch stays where it was.
    std::fs::remove_file(dir.path().join("unguarded")).unwrap();
    let before = tip();
    let ((status, v), e2, e3) = edit_while_deposed(&c, dir.path(), p2, p3, "late-2.txt").await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("stale_epoch")), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("Keel-Epoch {e2}, older than the cluster's current epoch {e3}")),
        "{v}"
    );
    println!("deposed primary {p2} (epoch {e2}, cluster at {e3}): {message}");
    assert_eq!(tip(), before, "the guarded branch did not move");
    let late = git_cmd(&up.bare, &["cat-file", "-e", "main:shared/late-2.txt"])
        .output()
        .unwrap();
    assert!(!late.status.success(), "the refused file is not on the branch");

    // The current primary's edit passes the guard.
    let r = put_file(&c, p3, "current.txt", "now").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let log = git(&up.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(log.contains(&format!("Keel-Epoch: {e3}")), "{log}");

    // A stale trailer pushed by hand is refused, with the reason shown to the pusher.
    let out = push_from_clone(&up, "stale.txt", &format!("stale\n\nKeel-Epoch: {e1}\n"));
    assert!(!out.status.success(), "stale push accepted");
    assert!(
        stderr(&out).contains("older than the cluster's current epoch"),
        "{}",
        stderr(&out)
    );
    // People's commits (no trailer) pass unless trailers are required.
    let out = push_from_clone(&up, "human.txt", "a person's change");
    assert!(out.status.success(), "{}", stderr(&out));

    // As an update hook with --require-trailer.
    std::fs::remove_file(up.bare.join("hooks/pre-receive")).unwrap();
    let update = guard_hook(dir.path(), &c, r#"--require-trailer "$1" "$2" "$3""#);
    install_hook(&up.bare, "update", &update);
    let out = push_from_clone(&up, "human-2.txt", "another person's change");
    assert!(!out.status.success(), "push without a trailer accepted");
    assert!(stderr(&out).contains("no Keel-Epoch trailer"), "{}", stderr(&out));
    let out = push_from_clone(&up, "keel.txt", &format!("by keel\n\nKeel-Epoch: {e3}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    drop(daemon);
}
