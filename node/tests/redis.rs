//! Managed Redis (`--redis-port`, issue 19) with real `keel serve` processes and real
//! `redis-server`s: the primary's Redis is the master and the others replicate from it; a kill -9 of
//! the whole primary node (its Redis dies with it) makes another node's Redis the master; the old
//! node comes back as a replica; a killed `redis-server` alone is restarted and its node hands the
//! primary role to a replica that has the data. Fencing and consistency: a primary whose keel is
//! paused has its Redis refuse writes once a new primary is elected (fenced directly, and by
//! Redis's own `min-replicas-to-write` backstop), and it follows the new master once keel runs
//! again; a master whose replicas stop acknowledging refuses writes by itself within the
//! documented bound; what an isolated old master took alone is reported as lost when it rejoins;
//! in sync mode every write acknowledged by `WAIT 1` survives a kill -9 of the primary node.
//!
//! Skipped with a message when redis-server is not installed, except in CI (`CI=true`), where that
//! fails.

use std::time::Duration;

use keel_replication::service::resp::{self, Reply};
use keel_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_millis(500);

/// Three nodes, each with its own Redis port on the cluster's IP, started; None (the test
/// skips) without redis-server.
fn cluster() -> Option<(Cluster, Vec<String>)> {
    cluster_with(&[])
}

/// [`cluster`] with `common` flags on every node.
fn cluster_with(common: &[&str]) -> Option<(Cluster, Vec<String>)> {
    if !have_redis() {
        return None;
    }
    let mut c = Cluster::new(3, common);
    let mut addrs = Vec::new();
    for n in c.nodes.iter_mut() {
        let port = free_port(&n.api.ip().to_string());
        n.extra = vec!["--redis-port".into(), port.to_string()];
        addrs.push(format!("{}:{port}", n.api.ip()));
    }
    c.start_all();
    Some((c, addrs))
}

fn addr(addrs: &[String], id: u64) -> &str {
    &addrs[id as usize - 1]
}

async fn cmd(addr: &str, args: &[&str]) -> Result<Reply, String> {
    resp::call(addr, args, CALL).await.map_err(|e| e.to_string())
}

async fn get(addr: &str, key: &str) -> Option<String> {
    match cmd(addr, &["GET", key]).await {
        Ok(Reply::Bulk(Some(b))) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

/// `INFO replication` as key → value.
async fn info(addr: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let text = cmd(addr, &["INFO", "replication"]).await.ok()?.text()?;
    Some(
        text.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Wait until `replica`'s Redis replicates from `master` and has `key` = `value`.
async fn wait_replicates(c: &Cluster, replica: &str, master: &str, key: &str, value: &str) {
    let port = master.rsplit_once(':').unwrap().1.to_string();
    c.wait_for(T, &format!("{replica} replicating {key} from {master}"), || async {
        let i = info(replica).await?;
        (i.get("role")? == "slave" && i.get("master_port")? == &port && get(replica, key).await? == value).then_some(())
    })
    .await
}

/// Wait until a SET through `addr` is acknowledged.
async fn wait_set(c: &Cluster, addr: &str, key: &str, value: &str) {
    c.wait_for(T, &format!("a write accepted by {addr}"), || async {
        cmd(addr, &["SET", key, value]).await.ok().map(|_| ())
    })
    .await
}

/// Commands sent in order on one connection (WAIT counts the replicas that acknowledged this
/// connection's last write), every reply read back, within `CALL` per reply.
async fn pipeline(addr: &str, cmds: &[&[&str]]) -> Result<Vec<Reply>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        for c in cmds {
            s.write_all(&resp::encode(c)).await.map_err(|e| e.to_string())?;
        }
        let (mut buf, mut out, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
        while out.len() < cmds.len() {
            if let Some((r, used)) = resp::parse(&buf).map_err(|e| e.to_string())? {
                buf.drain(..used);
                out.push(r);
                continue;
            }
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    };
    tokio::time::timeout(CALL * cmds.len() as u32, run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The primary and its Redis address, once `k1` = `v1` written there has reached the other nodes'
/// Redis (replication is asynchronous).
async fn primary_with_k1(c: &Cluster, addrs: &[String]) -> (u64, String) {
    let p = c.wait_primary(&[], T).await;
    let master = addr(addrs, p).to_string();
    wait_set(c, &master, "k1", "v1").await;
    for o in (1..=3).filter(|i| *i != p) {
        wait_replicates(c, addr(addrs, o), &master, "k1", "v1").await;
    }
    (p, master)
}

/// Wait until `master`'s `min-replicas-to-write` is 1.
async fn wait_min_replicas_1(c: &Cluster, master: &str) {
    c.wait_for(T, &format!("min-replicas-to-write 1 on {master}"), || async {
        let r = cmd(master, &["CONFIG", "GET", "min-replicas-to-write"]).await.ok()?;
        matches!(&r, Reply::Array(Some(v)) if v.get(1) == Some(&Reply::Bulk(Some(b"1".to_vec())))).then_some(())
    })
    .await
}

/// `n` writes of `{prefix}{i}` to `master`, each followed by `WAIT replicas wait_ms`: the keys at
/// least `replicas` replicas acknowledged.
async fn acked_writes(master: &str, prefix: &str, n: usize, replicas: i64, wait_ms: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let r = pipeline(
            master,
            &[&["SET", &key, "v"], &["WAIT", &replicas.to_string(), wait_ms]],
        )
        .await
        .unwrap();
        if r[0] == Reply::Status("OK".into()) && matches!(r[1], Reply::Int(n) if n >= replicas) {
            acked.push(key);
        }
    }
    acked
}

/// The `keys` that `addr`'s Redis does not have.
async fn missing(addr: &str, keys: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for k in keys {
        if get(addr, k).await.is_none() {
            missing.push(k.clone());
        }
    }
    missing
}

/// `SIGSTOP`/`SIGCONT` (or another signal) to a process.
fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// The old master's refusal of a write: an error naming the missing replicas or a read-only replica.
fn refused(r: &Result<Reply, String>) -> bool {
    matches!(r, Err(e) if e.contains("NOREPLICAS") || e.contains("READONLY"))
}

async fn service(c: &Cluster, id: u64) -> Option<Value> {
    c.status(id).await.map(|s| s["service"].clone())
}

/// `/v1/status` samples Redis every 100 ms: wait for it to show `role`.
async fn wait_service_role(c: &Cluster, id: u64, role: &str) {
    c.wait_for(
        Duration::from_secs(3),
        &format!("node {id}'s status to show redis role {role}"),
        || async { (service(c, id).await?["role"] == role).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_follows_the_primary_across_a_node_kill() {
    let Some((mut c, addrs)) = cluster() else {
        return;
    };
    let (p, master) = primary_with_k1(&c, &addrs).await;
    let role = cmd(&master, &["ROLE"]).await.unwrap();
    assert!(
        matches!(&role, Reply::Array(Some(r)) if r.first() == Some(&Reply::Bulk(Some(b"master".to_vec())))),
        "{role:?}"
    );
    let s = service(&c, p).await.unwrap();
    assert_eq!(s["kind"], "redis");
    assert_eq!(s["role"], "master", "{s}");
    assert_eq!(s["addr"], master.as_str());

    let others: Vec<u64> = (1..=3).filter(|i| *i != p).collect();
    for o in &others {
        // A replica refuses writes.
        assert!(cmd(addr(&addrs, *o), &["SET", "x", "y"]).await.is_err());
        wait_service_role(&c, *o, "replica").await;
    }
    // `/replica`: 200 on a replica whose Redis follows the primary's; the primary is not one.
    let probe = |id: u64| {
        let url = format!("{}/replica", c.node(id).url());
        let http = c.http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.ok()?;
            Some((status, body["error"]["code"].as_str().unwrap_or("").to_string()))
        }
    };
    for o in &others {
        c.wait_for(T, "a replica's /replica answering 200", || async {
            (probe(*o).await?.0 == 200).then_some(())
        })
        .await;
    }
    assert_eq!(probe(p).await.map(|r| r.0), Some(503));
    // A replica whose Redis is killed leaves the rotation until the supervisor restarts it.
    let victim = others[0];
    let pid = info(addr(&addrs, victim)).await;
    assert!(pid.is_some());
    let server_pid = cmd(addr(&addrs, victim), &["INFO", "server"])
        .await
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:").map(str::to_string))
        .unwrap();
    let _ = std::process::Command::new("kill").args(["-9", &server_pid]).status();
    c.wait_for(
        T,
        "/replica of a node whose Redis died answering service_down",
        || async {
            let (status, code) = probe(victim).await?;
            (status == 503 && code.starts_with("service_")).then_some(())
        },
    )
    .await;
    c.wait_for(
        T,
        "/replica back to 200 once its Redis is restarted and follows",
        || async { (probe(victim).await?.0 == 200).then_some(()) },
    )
    .await;
    // The Redis metric families: every one documented in docs/http-api.md is exported (the lag by a
    // replica), and the role gauge says what the status says.
    let (pm, rm) = (c.metrics(p).await.unwrap(), c.metrics(others[0]).await.unwrap());
    assert!(pm.contains("keel_redis_role{role=\"master\"} 1"), "{pm}");
    assert!(rm.contains("keel_redis_role{role=\"replica\"} 1"), "{rm}");
    let docs = include_str!("../../docs/http-api.md");
    for family in [
        "keel_redis_role",
        "keel_redis_offset_bytes",
        "keel_redis_restarts_total",
        "keel_redis_lost_bytes_total",
        "keel_redis_lost_events_total",
    ] {
        assert!(docs.contains(&format!("| `{family}` |")), "{family} is not documented");
        assert!(pm.contains(&format!("# TYPE {family} ")), "{family} missing:\n{pm}");
    }
    // The lag is exported once a sample (every 100 ms) saw the replica's link up.
    c.wait_for(
        Duration::from_secs(3),
        "a replica exporting keel_redis_lag_seconds",
        || async {
            c.metrics(others[0])
                .await
                .filter(|m| m.contains("# TYPE keel_redis_lag_seconds gauge"))
        },
    )
    .await;
    assert!(docs.contains("| `keel_redis_lag_seconds` |"));

    // kill -9 the whole primary node: its redis-server dies with it.
    c.kill(p);
    c.wait_for(
        Duration::from_secs(5),
        "the killed node's redis-server to die",
        || async { cmd(&master, &["PING"]).await.is_err().then_some(()) },
    )
    .await;
    let q = c.wait_primary(&[p], T).await;
    let new_master = addr(&addrs, q).to_string();
    wait_set(&c, &new_master, "k2", "v2").await;
    assert_eq!(
        get(&new_master, "k1").await.as_deref(),
        Some("v1"),
        "the new master kept the replicated data"
    );
    let r = *others.iter().find(|o| **o != q).unwrap();
    wait_replicates(&c, addr(&addrs, r), &new_master, "k2", "v2").await;

    // The killed node comes back as a replica of the new master.
    c.start(p);
    wait_replicates(&c, &master, &new_master, "k2", "v2").await;
    assert!(
        cmd(&master, &["SET", "x", "y"]).await.is_err(),
        "the old master refuses writes"
    );
    assert_eq!(c.wait_primary(&[], T).await, q, "the primary did not move back");
}

/// The pid of the `redis-server` serving `addr` (it titles itself `redis-server HOST:PORT`).
fn redis_pid(addr: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("redis-server") && c.contains(addr)
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_server_is_restarted_or_replaced() {
    let Some((mut c, addrs)) = cluster() else {
        return;
    };
    let (p, master) = primary_with_k1(&c, &addrs).await;
    let pid = redis_pid(&master).expect("the primary's redis-server process");
    signal(pid, "-9");
    // Writes resume on a master that /primary names: the same node's restarted Redis, or another's.
    let (q, new_master) = c
        .wait_for(T, "a write accepted by the master /primary names", || async {
            for id in 1..=3 {
                if c.holds_lease(id, CALL).await {
                    let a = addr(&addrs, id).to_string();
                    if cmd(&a, &["SET", "k2", "v2"]).await.is_ok() {
                        return Some((id, a));
                    }
                }
            }
            None
        })
        .await;
    // Nothing acknowledged before the kill is lost: a restarted master would have come back
    // without it, so a replica that has it takes over.
    if q == p {
        c.dump_logs();
        panic!("node {p}, whose redis-server died, stayed primary");
    }
    assert_eq!(get(&new_master, "k1").await.as_deref(), Some("v1"));
    // The old server is back (restarted by its keel) and follows the master, or is the master.
    c.wait_for(T, "the killed redis-server restarted", || async {
        let s = service(&c, p).await?;
        (s["healthy"] == true && s["restarts"].as_u64()? >= 1).then_some(())
    })
    .await;
    if q != p {
        wait_replicates(&c, &master, &new_master, "k2", "v2").await;
    }

    // A clean stop (SIGTERM) stops the node's redis-server too.
    assert_eq!(c.stop(p), Some(0), "clean exit on SIGTERM");
    assert!(
        cmd(&master, &["PING"]).await.is_err(),
        "redis-server outlived its node's shutdown"
    );
}

/// The bound on writes an isolated old master acknowledges (docs/operations.md): it is fenced
/// directly by the coordinator and the new primary when they reach it, and otherwise refuses by
/// itself `min-replicas-max-lag` (2 s) + 2 s after its replicas stopped acknowledging.
const ISOLATED_MASTER_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_keel_is_paused_has_its_redis_refuse_writes() {
    let Some((c, addrs)) = cluster() else {
        return;
    };
    let (p, master) = primary_with_k1(&c, &addrs).await;
    // The unfenced master of a 3-node async cluster needs one replica (the Redis-side backstop).
    wait_min_replicas_1(&c, &master).await;
    let pid = c.node(p).child.as_ref().unwrap().id();
    // Pause keel alone: its redis-server keeps running as an unfenced master.
    signal(pid, "-STOP");
    assert!(
        cmd(&master, &["SET", "during-pause", "x"]).await.is_ok(),
        "the paused node's Redis still takes writes before a failover"
    );
    let q = c.wait_primary(&[p], T).await;
    let elected = std::time::Instant::now();
    // With keel still paused, the old master refuses writes within the bound.
    c.wait_for(
        ISOLATED_MASTER_BOUND,
        "the paused primary's redis to refuse writes",
        || async { refused(&cmd(&master, &["SET", "late", "x"]).await).then_some(()) },
    )
    .await;
    eprintln!(
        "old master refused writes {:?} after the new primary was seen",
        elected.elapsed()
    );
    // The backstop alone: undo the direct fence, as if it had not reached the old master. Its
    // replicas now follow the new master, so it has none and still refuses.
    cmd(&master, &["CONFIG", "SET", "min-replicas-to-write", "1"])
        .await
        .unwrap();
    c.wait_for(
        ISOLATED_MASTER_BOUND,
        "the backstop to refuse writes on the old master",
        || async { refused(&cmd(&master, &["SET", "late", "x"]).await).then_some(()) },
    )
    .await;
    let new_master = addr(&addrs, q).to_string();
    wait_set(&c, &new_master, "k2", "v2").await;
    signal(pid, "-CONT");
    // Once keel runs again its Redis follows the new master.
    wait_replicates(&c, &master, &new_master, "k2", "v2").await;
    assert_ne!(get(&master, "late").await.as_deref(), Some("x"));
    wait_service_role(&c, p, "replica").await;
    assert!(cmd(&master, &["SET", "late", "x"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_replicas_stop_acknowledging_refuses_writes_by_itself() {
    let Some((c, addrs)) = cluster() else {
        return;
    };
    let (p, master) = primary_with_k1(&c, &addrs).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != p).collect();
    // Freeze both replicas' redis-servers: their connections stay open but they stop
    // acknowledging, as when the master is cut off from them. Keel's lease is unaffected, so only
    // Redis's own backstop (min-replicas-to-write 1, min-replicas-max-lag 2) can refuse.
    let pids: Vec<u32> = others
        .iter()
        .map(|o| redis_pid(addr(&addrs, *o)).expect("replica's redis-server"))
        .collect();
    for pid in &pids {
        signal(*pid, "-STOP");
    }
    let frozen = std::time::Instant::now();
    // The documented bound, plus 1 s for this test's own scheduling on a loaded machine.
    let refusal = c
        .wait_for(
            ISOLATED_MASTER_BOUND + Duration::from_secs(1),
            "the master to refuse writes without acknowledging replicas",
            || async {
                let r = cmd(&master, &["SET", "k2", "v2"]).await;
                matches!(&r, Err(e) if e.contains("NOREPLICAS")).then(|| frozen.elapsed())
            },
        )
        .await;
    eprintln!("master refused writes {refusal:?} after its replicas stopped acknowledging");
    // A master short of acknowledging replicas is reported fenced, and never named as the master.
    wait_service_role(&c, p, "fenced").await;
    let r = c.http.get(format!("{}/primary", c.node(p).url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    for pid in &pids {
        signal(*pid, "-CONT");
    }
    // Replicas acknowledge again: writes resume without a failover.
    wait_set(&c, &master, "k3", "v3").await;
    assert_eq!(c.wait_primary(&[], T).await, p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_old_masters_writes_are_counted_as_lost() {
    let Some((mut c, addrs)) = cluster() else {
        return;
    };
    let (p, master) = primary_with_k1(&c, &addrs).await;
    let pid = c.node(p).child.as_ref().unwrap().id();
    signal(pid, "-STOP");
    let q = c.wait_primary(&[p], T).await;
    let new_master = addr(&addrs, q).to_string();
    wait_set(&c, &new_master, "k2", "v2").await;
    // Both fences hold now (direct fence, no replicas left). Bypass them by hand, as if the old
    // master had been cut off where no fence reached it and the backstop had not bitten yet, and
    // write to it: these writes exist only there.
    cmd(&master, &["CONFIG", "SET", "min-replicas-to-write", "0"])
        .await
        .unwrap();
    for i in 0..10 {
        cmd(&master, &["SET", &format!("lost{i}"), "on the old master only"])
            .await
            .unwrap();
    }
    signal(pid, "-CONT");
    wait_replicates(&c, &master, &new_master, "k2", "v2").await;
    assert_eq!(
        get(&master, "lost0").await,
        None,
        "the resync dropped the old master's writes"
    );
    // Counted, never silently: status, metrics and the log.
    let lost = c
        .wait_for(T, "the old node's status to report the loss", || async {
            let s = service(&c, p).await?;
            (s["lost"]["events"].as_u64()? >= 1).then_some(s["lost"].clone())
        })
        .await;
    let bytes = lost["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{lost}");
    assert_eq!(lost["last"]["loss"]["kind"], "bytes", "{lost}");
    assert_eq!(lost["last"]["master"], new_master.as_str(), "{lost}");
    let metrics = c.metrics(p).await.unwrap();
    assert!(
        metrics.contains(&format!("keel_redis_lost_bytes_total {bytes}")),
        "{metrics}"
    );
    assert!(metrics.contains("keel_redis_lost_events_total 1"), "{metrics}");
    assert!(c
        .log(p)
        .contains("bytes of its replication stream are not on the new master"));
    // The new master's side lost nothing.
    let s = service(&c, q).await.unwrap();
    assert_eq!(s["lost"]["events"], 0, "{s}");
    // In the failover history, asked of any node: under the epoch of the failover, with the node.
    let epoch = lost["last"]["epoch"].as_u64().unwrap();
    let h = c.get(q, "/v1/history").await.unwrap();
    let entry = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["epoch"] == epoch)
        .unwrap_or_else(|| panic!("no history entry for epoch {epoch}: {h}"));
    assert_eq!(entry["to"], q, "{h}");
    let rec = &entry["redis_lost"][0];
    assert_eq!(
        (rec["node"].as_u64(), rec["loss"]["bytes"].as_u64()),
        (Some(p), Some(bytes)),
        "{h}"
    );
    assert_eq!(h["redis_lost_unanswered"], serde_json::json!([]), "{h}");
    // Kept on disk: a restart of the old node does not forget it.
    c.kill(p);
    c.start(p);
    let again = c
        .wait_for(T, "the restarted node's status", || async { service(&c, p).await })
        .await;
    assert_eq!(again["lost"]["bytes"].as_u64(), Some(bytes), "{again}");
    assert_eq!(again["lost"]["last"]["epoch"].as_u64(), Some(epoch), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_writes_acknowledged_by_wait_survive_a_primary_kill() {
    let Some((mut c, addrs)) = cluster_with(&["--replication-mode", "sync"]) else {
        return;
    };
    let p = c.wait_primary(&[], T).await;
    let master = addr(&addrs, p).to_string();
    // floor(3 voters / 2) = 1 replica, so master + replica are a majority.
    wait_min_replicas_1(&c, &master).await;
    wait_set(&c, &master, "k0", "v").await;
    // Write and WAIT 1 until the kill; keep what was acknowledged by a replica.
    let acked = acked_writes(&master, "w", 200, 1, "500").await;
    assert!(acked.len() >= 100, "most writes acknowledged: {}", acked.len());
    c.kill(p);
    let q = c.wait_primary(&[p], T).await;
    let new_master = addr(&addrs, q).to_string();
    wait_set(&c, &new_master, "after", "v").await;
    let missing = missing(&new_master, &acked).await;
    assert!(missing.is_empty(), "acknowledged by WAIT 1 but lost: {missing:?}");
}

/// `SENTINEL get-master-addr-by-name keel` at `sentinel`, as `host:port`.
async fn discovered_master(sentinel: &str) -> Option<String> {
    match resp::call(sentinel, &["SENTINEL", "get-master-addr-by-name", "keel"], CALL)
        .await
        .ok()?
    {
        Reply::Array(Some(hp)) => match hp.as_slice() {
            [h, p] => Some(format!("{}:{}", h.text()?, p.text()?)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_up_with_a_redis_port_base_runs_redis_found_through_sentinel() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let ip = "127.0.0.1";
    let redis_base = free_port_run(ip, 3);
    let sentinel_base = loop {
        let s = free_port_run(ip, 3);
        if s.abs_diff(redis_base) >= 3 {
            break s;
        }
    };
    let (rb, sb) = (redis_base.to_string(), sentinel_base.to_string());

    // Without a redis-server to run it says so, and starts nothing.
    let out = std::process::Command::new(keel_bin())
        .args(["up", "--data-dir", data.to_str().unwrap(), "--redis-port-base", &rb])
        .args(["--sentinel-port-base", &sb])
        .args(["--", "--redis-server", "/nonexistent/redis-server"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs redis-server") && stderr(&out).contains("apt-get install redis-server"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("node-1").exists(), "a node was started");

    // A relative --data-dir, as a user types it.
    let mut up = KeelUp::start_in(
        dir.path(),
        &[
            "up",
            "--data-dir",
            "up",
            "--redis-port-base",
            &rb,
            "--sentinel-port-base",
            &sb,
        ],
        &dir.path().join("up.out"),
    );
    // Ready: the banner lists every node's Redis and Sentinel, and the redis-cli hint.
    let hint = format!("redis-cli -p {sb} SENTINEL get-master-addr-by-name keel");
    poll_until(Duration::from_secs(40), Duration::from_millis(100), || async {
        up.output().contains(&hint).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("keel up --redis-port-base did not come up:\n{}", up.output()));
    let banner = up.output();
    let redis: Vec<String> = (0..3).map(|i| format!("{ip}:{}", redis_base + i)).collect();
    let sentinels: Vec<String> = (0..3).map(|i| format!("{ip}:{}", sentinel_base + i)).collect();
    for i in 0..3 {
        let line = format!("n{}  redis {}  sentinel {}", i + 1, redis[i], sentinels[i]);
        assert!(banner.contains(&line), "no {line:?} in:\n{banner}");
    }

    // Every listener names one master, among the nodes' Redis, and it takes writes (keel up waited
    // until the primary's Redis was the master; the other nodes learn it within a status poll).
    let master = poll_until(T, Duration::from_millis(50), || async {
        let mut named = Vec::new();
        for s in &sentinels {
            named.push(discovered_master(s).await?);
        }
        named.iter().all(|m| *m == named[0]).then(|| named[0].clone())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the three Sentinel listeners did not agree on a master:\n{}",
            up.output()
        )
    });
    assert!(redis.contains(&master), "{master} is not one of {redis:?}");
    cmd(&master, &["SET", "via-keel-up", "yes"]).await.unwrap();
    assert_eq!(get(&master, "via-keel-up").await.as_deref(), Some("yes"));
    let pids: Vec<u32> = redis
        .iter()
        .map(|a| redis_pid(a).unwrap_or_else(|| panic!("no redis-server process for {a}")))
        .collect();

    // SIGTERM: every node stops cleanly, and takes its redis-server with it.
    assert_eq!(up.stop(), Some(0), "{}", up.output());
    let text = up.output();
    for id in 1..=3 {
        assert!(text.contains(&format!("[n{id}] stopped: exit status: 0")), "{text}");
    }
    let left: Vec<&u32> = pids
        .iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(left.is_empty(), "redis-server processes outlived keel up: {left:?}");
    for a in &redis {
        assert!(cmd(a, &["PING"]).await.is_err(), "a Redis still answers at {a}");
    }
}

/// The primary's node is killed and started again at once (before a failover): its redis-server
/// comes back empty at the same address, and it may get the lease again in the same epoch. It must
/// neither become a master the replicas resync to (dropping what they hold) nor be promoted while a
/// replica holds more: every write acknowledged by both replicas is still there afterwards, on
/// whichever node is the master then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_node_restarted_at_once_does_not_wipe_the_replicas() {
    let Some((mut c, addrs)) = cluster() else {
        return;
    };
    let p = c.wait_primary(&[], T).await;
    let master = addr(&addrs, p).to_string();
    wait_set(&c, &master, "k0", "v").await;
    let acked = acked_writes(&master, "r", 100, 2, "1000").await;
    assert!(
        acked.len() >= 50,
        "most writes acknowledged by both replicas: {}",
        acked.len()
    );
    c.kill(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.start(p);
    // Whichever Redis takes writes now (the restarted node's, or a promoted replica's) has them all.
    let new_master = c
        .wait_for(T, "a Redis that takes writes again", || async {
            for a in &addrs {
                if cmd(a, &["SET", "after", "v"]).await.is_ok() {
                    return Some(a.clone());
                }
            }
            None
        })
        .await;
    let missing = missing(&new_master, &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged by both replicas are gone from the master {new_master} after node {p} restarted: {missing:?}",
        missing.len(),
        acked.len()
    );
    // And the restarted node's Redis follows it with the same data.
    if new_master != master {
        wait_replicates(&c, &master, &new_master, &acked[0], "v").await;
    }
}
