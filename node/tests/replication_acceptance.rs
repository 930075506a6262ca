//! Issue 5 acceptance: replication under load, failover with continuous writers (sync: zero
//! loss; async: loss reported and kept in `diverged`), catch-up and snapshot resync with full
//! content comparison, kill -9 mid-apply, and bad input that changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_node::util::strip_ansi;
use keel_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn primary(c: &Cluster, exclude: &[u64]) -> u64 {
    c.wait_primary(exclude, T).await
}

/// Every key with its version and size, read page by page.
async fn contents(c: &Cluster, id: u64) -> Option<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/kv?limit=1000", c.node(id).url());
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", encode(a)));
        }
        let page: Value = c
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        for it in page["items"].as_array()? {
            out.insert(
                it["key"].as_str()?.to_string(),
                (it["version"].as_u64()?, it["size"].as_u64()?),
            );
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Some(out),
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn wait_same_contents(c: &Cluster, ids: &[u64], what: &str) -> BTreeMap<String, (u64, u64)> {
    c.wait_for(T, what, || async {
        let first = contents(c, ids[0]).await?;
        for id in &ids[1..] {
            if contents(c, *id).await? != first {
                return None;
            }
        }
        Some(first)
    })
    .await
}

/// Every node in `ids` reports the same replication position.
async fn assert_same_positions(c: &Cluster, ids: &[u64]) {
    let mut pos = Vec::new();
    for id in ids {
        pos.push(status(c, *id).await["replication"]["position"].clone());
    }
    assert!(pos.windows(2).all(|w| w[0] == w[1]), "positions differ: {pos:?}");
}

async fn status(c: &Cluster, id: u64) -> Value {
    c.wait_for(T, "status", || c.status(id)).await
}

/// Write `n` keys `prefix{i}` with `width` concurrent writers through node `via`.
async fn bulk(c: &Cluster, via: u64, prefix: &str, n: usize, width: usize, value: &str) {
    let url = c.node(via).url();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..width {
        let (http, url, next, prefix, value) = (
            c.http.clone(),
            url.clone(),
            next.clone(),
            prefix.to_string(),
            value.to_string(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                // A client retries 503 (no lease for a moment on a busy machine, or a failover).
                let mut tries = 0;
                loop {
                    let r = http
                        .put(format!("{url}/v1/kv/{prefix}{i:05}"))
                        .body(value.clone())
                        .send()
                        .await
                        .unwrap();
                    if r.status().is_success() {
                        break;
                    }
                    tries += 1;
                    assert!(r.status() == 503 && tries < 50, "write {i}: {}", r.status());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// 1. 1,000 keys on the primary reach every replica, readable locally with lag headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_keys_reach_every_replica() {
    let (c, p) = Cluster::started(3, &[], T).await;
    let t0 = Instant::now();
    bulk(&c, p, "k", 1000, 16, "value").await;
    let written = t0.elapsed();
    let primary_contents = contents(&c, p).await.unwrap();
    assert_eq!(primary_contents.len(), 1000);
    let t1 = Instant::now();
    for r in (1..=3).filter(|i| *i != p) {
        c.wait_for(T, "replica has all 1000 keys", || async {
            (contents(&c, r).await? == primary_contents).then_some(())
        })
        .await;
        let resp = c.req(Method::GET, r, "/v1/kv/k00999").sent().await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("keel-lag-ms"));
        assert!(resp.headers().contains_key("keel-position"));
        // Replicas of a primary of this release pull over the replication stream
        // (node/src/peer/stream.rs); the primary counts what it sent on it.
        let st = status(&c, r).await;
        assert_eq!(st["replication"]["replica"]["transport"], "stream", "{st}");
    }
    println!(
        "1000 keys written in {written:?}; every replica identical {:?} after the last ack",
        t1.elapsed()
    );
}

/// Continuous writer through a node that stays up; returns (acked keys with values, attempts).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String, Instant)>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn start(c: &Cluster, via: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
        let (s, a, http, url) = (stop.clone(), acked.clone(), c.http.clone(), c.node(via).url());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let (k, v) = (format!("w{i:06}"), format!("value-{i}"));
                let r = http
                    .put(format!("{url}/v1/kv/{k}"))
                    .body(v.clone())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    a.lock().unwrap().push((k, v, Instant::now()));
                }
                i += 1;
            }
            i
        });
        Writer { stop, acked, task }
    }

    async fn finish(self) -> (Vec<(String, String, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let attempts = self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, attempts)
    }
}

async fn failover_under_writes(mode: &str) -> (usize, usize, Vec<String>, u64, Cluster) {
    let (mut c, p) = Cluster::started(3, &[], T).await;
    c.patch_config(p, json!({"replication_mode": mode, "min_acks": 1}))
        .await;
    let via = (1..=3).find(|i| *i != p).unwrap();
    c.wait_for(T, "mode applied on the writer's node", || async {
        (c.status(via).await?["replication"]["mode"] == mode).then_some(())
    })
    .await;
    let w = Writer::start(&c, via);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    c.kill(p);
    let q = primary(&c, &[p]).await;
    // Let writes resume for a while on the new primary.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (acked, attempts) = w.finish().await;
    let after_kill = acked.iter().filter(|(_, _, t)| *t > killed_at).count();
    assert!(after_kill > 0, "writes must resume after the failover");
    let mut lost = Vec::new();
    for (k, v, _) in &acked {
        let r = c.req(Method::GET, q, &format!("/v1/kv/{k}")).sent().await;
        if r.status() != 200 || r.text().await.unwrap() != *v {
            lost.push(k.clone());
        }
    }
    println!(
        "{mode}: {attempts} writes attempted, {} acknowledged ({after_kill} after the kill), {} acknowledged writes lost",
        acked.len(),
        lost.len()
    );
    (acked.len(), after_kill, lost, p, c)
}

/// 2. Sync mode: kill -9 the primary under continuous writes; every acknowledged write is on
/// the new primary, and writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_continuous_writes_lose_nothing_on_failover() {
    let (_, _, lost, _, _c) = failover_under_writes("sync").await;
    assert!(lost.is_empty(), "sync mode lost acknowledged writes: {lost:?}");
}

/// 3. Async mode: same run; the loss is reported, and whatever the old primary had that the
/// new one did not shows up in its `diverged` table after it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_failover_reports_loss_and_keeps_diverged() {
    let (_, _, lost, old, mut c) = failover_under_writes("async").await;
    println!("async mode: {} acknowledged writes lost: {lost:?}", lost.len());
    c.start(old);
    c.wait_for(T, "old primary rejoins as a replica", || async {
        (c.status(old).await?["role"] == "replica").then_some(())
    })
    .await;
    let all = (1..=3).collect::<Vec<u64>>();
    wait_same_contents(&c, &all, "all nodes converge after the old primary rejoins").await;
    let (diverged, d) = c.diverged_keys(old).await;
    for k in &lost {
        assert!(
            diverged.contains(k),
            "lost write {k} not kept in the old primary's diverged table: {d}"
        );
    }
}

/// 4. A replica stopped during 10,000 writes catches up after restart; one stopped past the
/// retention resyncs by snapshot; full contents then match on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replicas_catch_up_and_resync() {
    let (mut c, p) = Cluster::started(3, &[], T).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != p).collect();
    let (a, b) = (others[0], others[1]);
    // A: stopped while 10,000 writes happen, within the retention.
    c.kill(a);
    bulk(&c, p, "a", 10_000, 32, "x").await;
    c.start(a);
    let all = [p, a, b];
    wait_same_contents(&c, &all, "replica A caught up from the log").await;
    assert!(
        !c.log(a).contains("installing a snapshot"),
        "A was within the retention: no snapshot expected"
    );

    // B: stopped past the retention.
    c.patch_config(p, json!({"log_retention_entries": 1000})).await;
    c.kill(b);
    bulk(&c, p, "b", 3000, 32, "y").await;
    let b_pos = 13_000u64; // rough: B stopped after ~10,000 entries; the primary must trim past it
    c.wait_for(T, "primary trimmed its log past the stopped replica", || async {
        let s = c.status(p).await?;
        let start = s["replication"]["log_start"].as_str()?;
        let seq: u64 = start.split(':').nth(1)?.parse().ok()?;
        (seq + 3000 >= b_pos).then_some(())
    })
    .await;
    c.start(b);
    let final_contents = wait_same_contents(&c, &all, "replica B resynced by snapshot").await;
    assert!(
        c.log(b).contains("installing a snapshot"),
        "B was past the retention: snapshot expected"
    );
    assert_eq!(final_contents.len(), 13_000);
    // Same positions everywhere.
    assert_same_positions(&c, &all).await;
}

/// 5. kill -9 a replica while it applies batches: on restart it resumes from its durable
/// position, no gap, no duplicate (identical contents and positions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_apply_resumes_exactly() {
    let (mut c, p) = Cluster::started(3, &[], T).await;
    let r = (1..=3).find(|i| *i != p).unwrap();
    let w = Writer::start(&c, p);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.kill(r);
        c.start(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, _) = w.finish().await;
    assert!(acked.len() > 50, "too few writes: {}", acked.len());
    let all = [1, 2, 3];
    let contents = wait_same_contents(&c, &all, "all nodes identical after kills mid-apply").await;
    for (k, _, _) in &acked {
        assert!(contents.contains_key(k), "acknowledged {k} missing");
    }
    assert_same_positions(&c, &all).await;
    // Each restart applied the replica's journal again (replication/src/journal.rs): what the
    // kill took from redb's non-durable commits came back from there. With writes flowing, a
    // kill almost always lands with journaled entries not yet checkpointed.
    let replays = |log: &str| -> Vec<u64> {
        strip_ansi(log)
            .lines()
            .filter(|l| l.contains("applied the datastore journal again"))
            .map(|l| {
                let n = l.split(" applied=").nth(1).and_then(|r| r.split(' ').next());
                n.and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no applied= count in {l:?}"))
            })
            .collect()
    };
    let applied = replays(&c.log(r));
    eprintln!("node {r}: entries applied again from the journal at each restart: {applied:?}");
    assert_eq!(applied.len(), 3, "one journal replay per restart");
    assert!(
        applied.iter().any(|n| *n > 0),
        "no restart found journaled entries to apply again"
    );

    // A clean stop (SIGTERM) checkpoints: the journal is left empty. First make sure it is not
    // (a checkpoint may just have run): write until the replica reports journaled bytes.
    let journal_bytes = |v: &Value| v["replication"]["store"]["journal_bytes"].as_u64();
    let mut holding = 0;
    for i in 0..50 {
        c.put_everywhere(T, p, &[r], &format!("journal-{i}"), "x").await;
        holding = journal_bytes(&status(&c, r).await).expect("journal_bytes in /v1/status");
        if holding > 0 {
            break;
        }
    }
    assert!(holding > 0, "the replica never held journaled entries");
    assert_eq!(c.stop(r), Some(0), "clean exit");
    // Started again, it finds nothing to apply from the journal (the file itself stays, zeroed
    // ahead for the next appends).
    c.start(r);
    let after = c
        .wait_for(T, "the restarted replica read its journal", || async {
            let got = replays(&c.log(r));
            (got.len() == 4).then_some(got)
        })
        .await;
    assert_eq!(
        after[3], 0,
        "the journal held {holding} bytes before the stop and must be empty after it"
    );
}

/// 6. Bad input: 413, 409, 400 — and none of them changes data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    let (c, p) = Cluster::started(3, &[], T).await;
    let r = c.put(p, "key", "v1").await;
    assert!(r.status().is_success());
    let before_pos = status(&c, p).await["replication"]["position"].clone();
    let before = contents(&c, p).await.unwrap();
    let long_key = format!("/v1/kv/{}", "k".repeat(1025));
    // (method, path, body, the status it must get, and the error code where one is checked)
    let cases = [
        (Method::PUT, "/v1/kv/key", vec![b'x'; (1 << 20) + 1], 413, None),
        (Method::PUT, long_key.as_str(), b"v".to_vec(), 413, None),
        (
            Method::POST,
            "/v1/kv/key/cas?version=999",
            b"v".to_vec(),
            409,
            Some("cas_mismatch"),
        ),
        (Method::POST, "/v1/kv/key/cas?version=0", b"v".to_vec(), 409, None),
        (Method::PUT, "/v1/kv/", b"v".to_vec(), 400, None),
        (Method::GET, "/v1/kv/key?consistency=eventual", Vec::new(), 400, None),
        (Method::POST, "/v1/kv/key/cas?version=abc", b"v".to_vec(), 400, None),
        (Method::GET, "/v1/kv?limit=0", Vec::new(), 400, None),
    ];
    for (method, path, body, want, want_code) in cases {
        let mut req = c.req(method.clone(), p, path);
        if !body.is_empty() {
            req = req.body(body);
        }
        let (got, code) = error_code(req.sent().await).await;
        assert_eq!(got, want, "{method} {path}");
        if let Some(want_code) = want_code {
            assert_eq!(code, want_code, "{method} {path}");
        }
    }
    assert_eq!(
        status(&c, p).await["replication"]["position"],
        before_pos,
        "bad input changed the log"
    );
    assert_eq!(contents(&c, p).await.unwrap(), before, "bad input changed data");
    let r = c.req(Method::GET, p, "/v1/kv/key").sent().await;
    assert_eq!(r.text().await.unwrap(), "v1");
}
