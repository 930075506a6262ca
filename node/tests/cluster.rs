//! Multi-process tests of the foundation: bootstrap, crash/restart, membership.

use std::time::{Duration, Instant};

use keel_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

fn voters(cluster: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"].as_bool() == Some(true))
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    v.sort();
    v
}

/// Acceptance 1: three nodes with the same --peers form one cluster in any start order; `keel
/// status` on each shows three voters and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_in_any_order() {
    for order in [[3u64, 1, 2], [2, 3, 1]] {
        let mut c = Cluster::new(3, &[]);
        for id in order {
            c.start(id);
            // Stagger the starts so that the order really differs.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let t0 = Instant::now();
        let leader = c.wait_leader(&[1, 2, 3], T).await;
        println!(
            "order {order:?}: leader n{leader} agreed {:?} after the last start",
            t0.elapsed()
        );
        // Every node has announced its API address and the cluster has an id.
        c.wait_for(T, "cluster id and API addresses", || async {
            let v = c.get(1, "/v1/cluster").await?;
            let ok = v["cluster_id"].is_string()
                && v["members"]
                    .as_array()?
                    .iter()
                    .all(|m| m["api_addr"].as_str().is_some_and(|a| !a.is_empty()));
            ok.then_some(())
        })
        .await;
        let cluster_ids: Vec<Value> = futures_join(&c, "/v1/cluster")
            .await
            .into_iter()
            .map(|v| v["cluster_id"].clone())
            .collect();
        assert!(
            cluster_ids.windows(2).all(|w| w[0] == w[1]),
            "one cluster id: {cluster_ids:?}"
        );
        for id in 1..=3u64 {
            let url = c.node(id).url();
            // Status needs every node to report the same leader; allow the table to settle.
            let out = c
                .wait_for(T, "keel status exit 0", || async {
                    let o = c.cli(&["status", "--addr", &url]);
                    (o.status.code() == Some(0)).then_some(o)
                })
                .await;
            let text = stdout(&out);
            assert!(text.contains("healthy"), "{text}");
            let cluster = c.get(id, "/v1/cluster").await.unwrap();
            assert_eq!(voters(&cluster), vec![1, 2, 3]);
        }
    }
}

/// How many times node `id` has bootstrapped a cluster (its log spans restarts).
fn bootstraps(c: &Cluster, id: u64) -> usize {
    c.log(id).matches("bootstrapped a new cluster state").count()
}

async fn futures_join(c: &Cluster, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for id in 1..=c.nodes.len() as u64 {
        if let Some(v) = c.get(id, path).await {
            out.push(v);
        }
    }
    out
}

/// Acceptance 2: kill -9 one node; the other two keep a leader and `keel status` exits 1 (2 when
/// the node was also the primary: maintenance is on, so nothing takes over); restarting it rejoins
/// with its log intact and without bootstrapping again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_node_then_rejoin() {
    let (mut c, leader) = Cluster::started_with_leader(3, &[], T).await;
    // A primary first: maintenance would keep the first one from being promoted.
    c.wait_primary(&[], T).await;
    // Make some log: toggle maintenance a few times.
    for on in [true, false, true] {
        let r = c.cli(&["maintenance", if on { "on" } else { "off" }, "--addr", &c.node(1).url()]);
        assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    }
    let victim = leader; // the hardest case
    let before = c.status(victim).await.unwrap();
    let last_log_before = before["raft"]["last_log_index"].as_u64().unwrap();
    let boots_before = bootstraps(&c, victim);
    c.kill(victim);
    let rest: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
    let new_leader = c.wait_leader(&rest, T).await;
    assert_ne!(new_leader, victim);
    let survivor = c.node(rest[0]).url();
    // With maintenance on, a dead primary is not replaced: no primary is critical.
    let was_primary = before["primary"]["node"].as_u64() == Some(victim);
    let (code, verdict) = if was_primary {
        (2, "critical: no primary")
    } else {
        (1, "degraded")
    };
    let out = c
        .wait_for(T, &format!("keel status exit {code} ({verdict})"), || async {
            let o = c.cli(&["status", "--addr", &survivor]);
            (o.status.code() == Some(code)).then_some(o)
        })
        .await;
    let last = stdout(&out).lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with(verdict), "{}", stdout(&out));
    assert!(
        last.contains(&format!("voter {victim} unreachable")),
        "{}",
        stdout(&out)
    );

    c.start(victim);
    // Right after the restart its own log is already there (read from disk, not re-sent).
    let s = c.wait_for(T, "restarted node answers", || c.status(victim)).await;
    assert!(
        s["raft"]["last_log_index"].as_u64().unwrap() >= last_log_before,
        "log lost: {s}"
    );
    c.wait_leader(&[1, 2, 3], T).await;
    assert_eq!(
        bootstraps(&c, victim),
        boots_before,
        "restarted node bootstrapped again"
    );
    c.wait_for(T, "maintenance=true replicated to the restarted node", || async {
        let s = c.status(victim).await?;
        (s["maintenance"] == Value::Bool(true)).then_some(())
    })
    .await;
}

/// Acceptance 3: kill -9 all three and restart: the same cluster comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_then_restart_same_cluster() {
    let (mut c, _) = Cluster::started_with_leader(3, &[], T).await;
    let before = c
        .wait_for(T, "cluster id", || async {
            let v = c.get(1, "/v1/cluster").await?;
            v["cluster_id"].is_string().then_some(v)
        })
        .await;
    let r = c.cli(&["maintenance", "on", "--addr", &c.node(2).url()]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let mut applied_before = Vec::new();
    let mut term_before = 0;
    for id in 1..=3 {
        let s = c
            .wait_for(T, "maintenance applied", || async {
                let s = c.status(id).await?;
                (s["maintenance"] == Value::Bool(true)).then_some(s)
            })
            .await;
        applied_before.push(s["raft"]["last_applied"].as_u64().unwrap());
        term_before = term_before.max(s["raft"]["term"].as_u64().unwrap());
    }
    let boots_before: Vec<usize> = (1..=3).map(|id| bootstraps(&c, id)).collect();
    assert!(boots_before.iter().sum::<usize>() >= 1, "someone bootstrapped");
    for id in 1..=3 {
        c.kill(id);
    }
    for id in [2, 3, 1] {
        c.start(id);
    }
    c.wait_leader(&[1, 2, 3], T).await;
    for id in 1..=3u64 {
        let s = c.wait_for(T, "status after restart", || c.status(id)).await;
        assert!(s["raft"]["term"].as_u64().unwrap() >= term_before);
        assert!(
            s["raft"]["last_applied"].as_u64().unwrap() >= applied_before[(id - 1) as usize],
            "{s}"
        );
        assert_eq!(s["cluster_id"], before["cluster_id"]);
        assert_eq!(s["maintenance"], Value::Bool(true));
        let after = c.get(id, "/v1/cluster").await.unwrap();
        assert_eq!(voters(&after), voters(&before));
        assert_eq!(
            bootstraps(&c, id),
            boots_before[(id - 1) as usize],
            "node {id} bootstrapped again on restart"
        );
    }
}

/// Acceptance 4: add a fourth node as learner (it joins with --join), promote it, remove it;
/// each step visible in /v1/cluster; a removal that would break quorum is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_promote_remove() {
    let (mut c, _) = Cluster::started_with_leader(3, &[], T).await;
    let four = c.add_node();
    let mut args = c.serve_args(four, None);
    args.extend(["--join".to_string(), c.node(2).url()]);
    c.spawn(four, args);

    let member = |v: &Value, id: u64| v["members"].as_array().unwrap().iter().find(|m| m["id"] == id).cloned();
    c.wait_for(T, "node 4 listed as a learner", || async {
        let v = c.get(1, "/v1/cluster").await?;
        let m = member(&v, 4)?;
        (m["voter"] == Value::Bool(false) && m["api_addr"] == c.node(4).api.to_string()).then_some(())
    })
    .await;
    c.wait_for(T, "node 4 reports the leader", || async {
        c.status(4).await?["raft"]["leader"].as_u64()
    })
    .await;

    // Promote through a node that is not necessarily the leader (forwarded).
    let out = c.cli(&["members", "promote", "4", "--addr", &c.node(3).url()]);
    assert_eq!(out.status.code(), Some(0), "promote: {} {}", stdout(&out), stderr(&out));
    let v = c.get(1, "/v1/cluster").await.unwrap();
    assert_eq!(voters(&v), vec![1, 2, 3, 4]);
    // Promoting again is a clear conflict.
    let out = c.cli(&["members", "promote", "4", "--addr", &c.node(1).url()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already a voter"), "{}", stderr(&out));

    // Remove it again.
    let out = c.cli(&["members", "remove", "4", "--addr", &c.node(1).url()]);
    assert_eq!(out.status.code(), Some(0), "remove: {} {}", stdout(&out), stderr(&out));
    c.wait_for(T, "node 4 gone from the cluster view", || async {
        let v = c.get(2, "/v1/cluster").await?;
        member(&v, 4).is_none().then_some(())
    })
    .await;
    c.kill(four);

    // Errors: unknown id 404, duplicate id 409, bad input 400.
    let url = c.node(1).url();
    let dup = json!({"id": 2, "api_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2"});
    let dup_addr = json!({"id": 9, "api_addr": "127.0.0.1:1", "peer_addr": c.node(3).peer.to_string()});
    let bad = json!({"id": 9, "api_addr": "nope", "peer_addr": "127.0.0.1:2"});
    // (request, the status it must get, and the error code where one is checked)
    let cases = [
        (c.req(Method::DELETE, 1, "/v1/members/42"), 404, Some("not_found")),
        (
            c.req(Method::POST, 1, "/v1/members").json(&dup),
            409,
            Some("duplicate_id"),
        ),
        (
            c.req(Method::POST, 1, "/v1/members").json(&dup_addr),
            409,
            Some("duplicate_address"),
        ),
        (c.req(Method::POST, 1, "/v1/members").json(&bad), 400, None),
    ];
    for (req, want, want_code) in cases {
        let (status, code) = error_code(req.sent().await).await;
        assert_eq!(status, want);
        if let Some(want_code) = want_code {
            assert_eq!(code, want_code);
        }
    }

    // Quorum guard: with node 3 down, removing node 2 would leave 1 live voter of 2.
    c.kill(3);
    c.wait_for(T, "node 3 seen unreachable by both live nodes", || async {
        for id in [1, 2] {
            let v = c.get(id, "/v1/cluster").await?;
            if member(&v, 3)?["reachable"] != Value::Bool(false) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let out = c.cli(&["members", "remove", "2", "--addr", &url, "--timeout-ms", "20000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("quorum"), "{}", stderr(&out));
    let v = c.get(1, "/v1/cluster").await.unwrap();
    assert_eq!(voters(&v), vec![1, 2, 3], "refused change must not happen");
}

/// Acceptance 6 (second half): kill -9 the leader during a stream of membership changes;
/// every acknowledged change is present afterwards, on every node, including the one killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_membership_changes_survive_kill() {
    let (mut c, leader) = Cluster::started_with_leader(3, &[], T).await;
    let other = (1..=3).find(|i| *i != leader).unwrap();
    let mut acked = Vec::new();
    let mut killed = false;
    // Learners at addresses nobody listens on: adding one is a committed membership change.
    for i in 0..30u64 {
        let id = 100 + i;
        let body = serde_json::json!({"id": id, "api_addr": format!("127.0.0.1:{}", 20000 + i), "peer_addr": format!("127.0.0.1:{}", 30000 + i)});
        let r = c
            .http
            .post(format!("{}/v1/members", c.node(other).url()))
            .json(&body)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().as_u16() == 201 {
                acked.push(id);
            }
        }
        if i == 10 {
            c.kill(leader);
            killed = true;
        }
    }
    assert!(killed);
    assert!(acked.len() >= 10, "too few changes acknowledged: {acked:?}");
    c.start(leader);
    c.wait_leader(&[1, 2, 3], T).await;
    for id in 1..=3u64 {
        c.wait_for(T, "every acknowledged learner present", || async {
            let v = c.get(id, "/v1/cluster").await?;
            let ids: Vec<u64> = v["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m["id"].as_u64())
                .collect();
            acked.iter().all(|a| ids.contains(a)).then_some(())
        })
        .await;
    }
}
