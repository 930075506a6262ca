//! The built-in key-value store as a managed service (`/v1/status` `datastore`, kind `kv`): its
//! role, position and link follow the cluster's primary and lease across real processes, through
//! a failover.

use std::time::Duration;

use keel_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// Node `id`'s status when its `datastore` object satisfies `ok`.
async fn datastore_when(c: &Cluster, id: u64, what: &str, ok: impl Fn(&Value, &Value) -> bool) -> Value {
    c.wait_for(T, what, || async {
        let s = c.status(id).await?;
        ok(&s, &s["datastore"]).then_some(s)
    })
    .await
}

/// The seq of a status's `replication.position` (`epoch:seq`).
fn seq(status: &Value) -> u64 {
    let pos = status["replication"]["position"].as_str().expect("position");
    pos.split_once(':')
        .and_then(|(_, s)| s.parse().ok())
        .expect("epoch:seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastore_role_position_and_link_follow_the_primary() {
    let (mut c, p) = Cluster::started(3, &[], T).await;
    let r = c.put(p, "k", "v").await;
    assert_eq!(r.status(), 201);
    let ps = datastore_when(&c, p, "the primary's store is the master", |_, d| d["role"] == "master").await;
    let d = &ps["datastore"];
    assert_eq!(d["kind"], "kv");
    assert_eq!(d["addr"], ps["peer_addr"], "reached at the peer address: {d}");
    assert!(d["offset"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["following"], Value::Null);
    let offset = d["offset"].as_u64().unwrap();

    // Replicas: following the primary's peer address with the link up, and at its offset once caught up.
    for id in (1..=3).filter(|i| *i != p) {
        let s = datastore_when(&c, id, "a replica caught up with the primary", |_, d| {
            d["role"] == "replica" && d["link_up"] == true && d["offset"].as_u64() >= Some(offset)
        })
        .await;
        let d = &s["datastore"];
        assert_eq!(d["following"], ps["peer_addr"], "{d}");
        assert_eq!(
            d["offset"].as_u64(),
            Some(seq(&s)),
            "offset is the store's position: {s}"
        );
        assert!(d["lag"].is_u64(), "a replica with its link up has a lag: {d}");
        assert_eq!(d["healthy"], true);
    }

    // Failover: the new primary's store becomes the master, the other replica follows it.
    c.kill(p);
    let q = c.wait_primary(&[p], T).await;
    let qs = datastore_when(&c, q, "the new primary's store is the master", |_, d| {
        d["role"] == "master"
    })
    .await;
    let other = (1..=3).find(|i| *i != p && *i != q).unwrap();
    datastore_when(&c, other, "the remaining replica follows the new primary", |_, d| {
        d["role"] == "replica" && d["following"] == qs["peer_addr"] && d["link_up"] == true
    })
    .await;
}
