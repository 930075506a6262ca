//! `deploy/haproxy-redis.cfg`, run for real: Debian's `haproxy` in TCP mode in front of the
//! `redis-server`s that a local three-node cluster manages (`--redis-port`), each server checked by
//! Keel's `/primary` (write frontend) or `/replica` (read frontend) on its node's API port.
//!
//! What it checks: writes through the write frontend land on the master of the node that holds the
//! lease; after kill -9 of that node, writes through HAProxy land on the new master within a
//! bounded wait (the time is printed); HAProxy never hands a write to a replica or a fenced Redis
//! (no write through it is ever answered `READONLY` or `NOREPLICAS`, during the failover or while
//! the killed node comes back as a replica); reads through the read frontend reach a replica.
//!
//! Skipped with a message without `haproxy`; without `redis-server` too, except in CI (`CI=true`),
//! where that fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_replication::service::resp::{self, Reply};
use keel_replication::service::ServiceError;
use keel_testkit::haproxy::{
    self, find_haproxy, server_name, server_states, up_servers, DeployCfg, Frontends, HaProxy,
};
use keel_testkit::*;

const T: Duration = Duration::from_secs(30);
/// Generous bound on kill -9 of the primary node until a write through HAProxy is accepted again;
/// the measured time (printed) is about Keel's failover plus one check interval.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);
/// Every Redis command of this test gives up after this long.
const CALL: Duration = Duration::from_millis(500);

/// deploy/haproxy-redis.cfg: its frontends and backends.
const CFG: DeployCfg = DeployCfg {
    file: "haproxy-redis.cfg",
    binds: [":6379", ":6380", ":8405"],
    write_backend: "redis_master",
    read_backend: "redis_replicas",
};
/// The Keel API port deploy/haproxy-redis.cfg checks each server on.
const CFG_API_PORT: &str = "7101";

/// One node as HAProxy sees it: its Redis address and its Keel API port.
struct Server {
    redis: SocketAddr,
    api_port: u16,
}

/// The rest of a `server keelN ADDR check port 7101 ...` line for `s`: its Redis address, and its
/// check on its node's API port. Panics if the line has no `port 7101`.
fn server_line(s: &Server, rest: &[&str]) -> String {
    let at = rest
        .windows(2)
        .position(|w| w == ["port", CFG_API_PORT])
        .unwrap_or_else(|| panic!("deploy/haproxy-redis.cfg: no `port {CFG_API_PORT}` in a server line: {rest:?}"));
    let mut rest: Vec<String> = rest.iter().map(|w| w.to_string()).collect();
    rest[at + 1] = s.api_port.to_string();
    format!("{} {}", s.redis, rest.join(" "))
}

async fn cmd(addr: SocketAddr, args: &[&str]) -> Result<Reply, ServiceError> {
    resp::call(&addr.to_string(), args, CALL).await
}

/// A write refused because the Redis behind is a replica (`READONLY`) or fenced (`NOREPLICAS`, the
/// fence `min-replicas-to-write` Keel puts on a master that must not take writes).
fn is_refused(r: &Result<Reply, ServiceError>) -> bool {
    matches!(r, Err(ServiceError::Command { message, .. })
        if message.starts_with("READONLY") || message.starts_with("NOREPLICAS"))
}

/// `INFO server`'s `tcp_port` of the Redis behind `addr` (through HAProxy: the server it picked).
async fn port_behind(addr: SocketAddr) -> Option<u16> {
    let text = cmd(addr, &["INFO", "server"]).await.ok()?.text()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tcp_port:")?.parse().ok())
}

/// `ROLE`'s first element of the Redis behind `addr` (`master` or `slave`).
async fn role_behind(addr: SocketAddr) -> Option<String> {
    match cmd(addr, &["ROLE"]).await.ok()? {
        Reply::Array(Some(r)) => r.first()?.text(),
        _ => None,
    }
}

/// What the writes through HAProxy during a window were answered.
#[derive(Default, Debug)]
struct Writes {
    ok: u32,
    /// `READONLY` or `NOREPLICAS`: HAProxy picked a replica or a fenced Redis.
    refused: u32,
    /// Connection refused or closed, timeouts, other errors: the client's retry covers these.
    failed: u32,
    /// When (from the window's start) the first write was accepted.
    first_ok: Option<Duration>,
}

/// SET through `write` every 20 ms until `until` says stop (checked between writes) or `limit`
/// passes; each write on a key of its own.
async fn write_until<F, Fut>(write: SocketAddr, tag: &str, limit: Duration, mut until: F) -> Writes
where
    F: FnMut(&Writes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    let mut w = Writes::default();
    for seq in 0.. {
        if until(&w).await || t0.elapsed() > limit {
            break;
        }
        let key = format!("{tag}-{seq}");
        let r = cmd(write, &["SET", &key, "x"]).await;
        match &r {
            Ok(_) => {
                w.ok += 1;
                w.first_ok.get_or_insert(t0.elapsed());
            }
            _ if is_refused(&r) => w.refused += 1,
            Err(_) => w.failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_sends_redis_writes_to_the_lease_holders_master_across_kill_9() {
    let Some(bin) = find_haproxy() else {
        return;
    };
    if !have_redis() {
        return;
    }
    // The shipped file is valid as it is (its host names need not resolve: `init-addr libc,none`).
    haproxy::assert_valid(&bin, &CFG.path());

    let mut c = Cluster::new(3, &[]);
    let mut servers = BTreeMap::new();
    let mut redis: BTreeMap<u64, SocketAddr> = BTreeMap::new();
    for n in c.nodes.iter_mut() {
        let port = free_port(&n.api.ip().to_string());
        n.extra = vec!["--redis-port".into(), port.to_string()];
        let addr = SocketAddr::new(n.api.ip(), port);
        redis.insert(n.id, addr);
        servers.insert(
            server_name(n.id),
            Server {
                redis: addr,
                api_port: n.api.port(),
            },
        );
    }
    let f = Frontends::free(&c.ip);
    let cfg = c.dir.path().join("haproxy-redis.cfg");
    std::fs::write(
        &cfg,
        CFG.rewritten(&f, |name, rest| Some(server_line(servers.get(name)?, rest))),
    )
    .unwrap();
    haproxy::assert_valid(&bin, &cfg);

    c.start_all();
    let mut ha = HaProxy::start(&bin, &cfg, c.dir.path().join("haproxy.log"));
    let p = c.wait_primary(&[], T).await;
    let replicas: Vec<u64> = (1..=3).filter(|id| *id != p).collect();
    CFG.wait_routing(&c, &mut ha, f.stats, p, &replicas, T).await;

    // Writes land on the primary's Redis, the master; reads come from a replica that has them.
    cmd(f.write, &["SET", "before", "one"])
        .await
        .expect("a write through HAProxy");
    assert_eq!(port_behind(f.write).await, Some(redis[&p].port()));
    assert_eq!(role_behind(f.write).await.as_deref(), Some("master"));
    // What the failover checks below count: a write sent to a replica's Redis is refused.
    let to_replica = cmd(redis[&replicas[0]], &["SET", "x", "y"]).await;
    assert!(is_refused(&to_replica), "{to_replica:?}");
    c.wait_for(T, "a replica behind the read frontend with the write", || async {
        let got = cmd(f.read, &["GET", "before"]).await.ok()?.text()?;
        (got == "one" && role_behind(f.read).await? == "slave").then_some(())
    })
    .await;

    // kill -9 the primary node (its redis-server dies with it); write through HAProxy until one is
    // accepted.
    let t0 = Instant::now();
    c.kill(p);
    let during = write_until(f.write, "failover", FAILOVER_DEADLINE, |w| {
        let done = w.ok > 0;
        async move { done }
    })
    .await;
    println!(
        "HAProxy in front of managed Redis, from kill -9 of primary node {p}: the first write through HAProxy \
         was accepted after {} ms (the writes before it: {during:?})",
        t0.elapsed().as_millis()
    );
    if during.ok == 0 {
        c.dump_logs();
        panic!("no write through HAProxy accepted within {FAILOVER_DEADLINE:?} of kill -9 of the primary node");
    }
    assert_eq!(
        during.refused, 0,
        "HAProxy handed writes to a replica during the failover: {during:?}"
    );

    // It settles on the new primary, whose Redis has the write from before and takes the new ones.
    let q = c.wait_primary(&[p], T).await;
    let rest: Vec<u64> = replicas.iter().copied().filter(|id| *id != q).collect();
    CFG.wait_routing(&c, &mut ha, f.stats, q, &rest, T).await;
    assert_eq!(port_behind(f.write).await, Some(redis[&q].port()));
    cmd(f.write, &["SET", "after", "two"])
        .await
        .expect("a write through HAProxy");
    let direct = cmd(redis[&q], &["MGET", "before", "after"]).await.unwrap();
    assert_eq!(
        direct,
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"one".to_vec())),
            Reply::Bulk(Some(b"two".to_vec()))
        ])),
        "the new master has the writes from before and after the failover"
    );

    // The killed node comes back; its Redis rejoins as a replica. Writes through HAProxy all the
    // while reach the master only, and the read frontend takes the old node once it follows.
    c.start(p);
    let (c_ref, stats) = (&c, f.stats);
    let rejoin = write_until(f.write, "rejoin", T, |_| async move {
        server_states(&c_ref.http, stats)
            .await
            .is_some_and(|s| up_servers(&s, CFG.read_backend).contains(&server_name(p)))
    })
    .await;
    assert!(
        rejoin.ok > 0 && rejoin.refused == 0 && rejoin.failed == 0,
        "writes through HAProxy while node {p} rejoined: {rejoin:?}"
    );
    let all_replicas: Vec<u64> = (1..=3).filter(|id| *id != q).collect();
    CFG.wait_routing(&c, &mut ha, f.stats, q, &all_replicas, T).await;
    assert_eq!(c.wait_primary(&[], T).await, q, "the primary did not move back");
    assert_eq!(port_behind(f.write).await, Some(redis[&q].port()));
    ha.assert_running();
}
