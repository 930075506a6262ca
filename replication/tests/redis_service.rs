//! The Redis adapter against a real `redis-server`: it starts as a replica of itself, promoted it is
//! fenced, unfence lets writes in,
//! fence refuses them at once, follow/promote switch roles, and a killed server is restarted and
//! counted. Skipped (with a message) when redis-server is missing, except in CI (`CI=true`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_replication::service::redis::{self, RedisConfig, RedisService, FENCE_REPLICAS};
use keel_replication::service::resp::{self, Reply};
use keel_replication::service::{ManagedService, ServiceRole, Upstream};
use tokio_util::sync::CancellationToken;

fn have_redis() -> bool {
    let ok = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is missing in CI: install the redis-server package (scripts/lib.sh KEEL_TEST_PACKAGES)"
        );
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn service(dir: &std::path::Path) -> Arc<RedisService> {
    Arc::new(RedisService::new(RedisConfig {
        server: "redis-server".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        dir: dir.to_path_buf(),
        include: None,
        min_replicas: 0,
    }))
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set(addr: &str, k: &str, v: &str) -> Result<Reply, keel_replication::service::ServiceError> {
    resp::call(addr, &["SET", k, v], Duration::from_secs(1)).await
}

#[tokio::test]
async fn fence_follow_promote_and_restart() {
    if !have_redis() {
        return;
    }
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (service(d1.path()), service(d2.path()));
    let cancel = CancellationToken::new();
    let ta = tokio::spawn(a.clone().run(cancel.clone()));
    let tb = tokio::spawn(b.clone().run(cancel.clone()));
    wait_for("both up", || async {
        a.health().await.healthy && b.health().await.healthy
    })
    .await;

    // Starts as a replica of itself: it refuses writes, and it serves no sync to another server
    // (whose data would be replaced by its own).
    let h = a.health().await;
    assert_eq!(h.role, ServiceRole::Replica);
    assert_eq!(h.following.as_deref(), Some(a.addr().as_str()));
    let e = set(&a.addr(), "k", "1").await.unwrap_err().to_string();
    assert!(e.contains("READONLY"), "{e}");
    let e = resp::call(&a.addr(), &["SYNC"], Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("NOMASTERLINK"), "{e}");
    assert!(!redis::takes_writes_at(&a.addr(), Duration::from_secs(1)).await.unwrap());

    // Promoted, it is still fenced: a master that refuses writes.
    a.promote().await.unwrap();
    assert_eq!(a.health().await.role, ServiceRole::Fenced);
    let e = set(&a.addr(), "k", "1").await.unwrap_err().to_string();
    assert!(e.contains("NOREPLICAS"), "{e}");
    assert!(!redis::takes_writes_at(&a.addr(), Duration::from_secs(1)).await.unwrap());

    a.unfence().await.unwrap();
    assert!(redis::takes_writes_at(&a.addr(), Duration::from_secs(1)).await.unwrap());
    assert_eq!(a.health().await.role, ServiceRole::Master);
    set(&a.addr(), "k", "1").await.unwrap();

    // b follows a and gets the data.
    let upstream = Upstream {
        node: 1,
        epoch: 1,
        addr: a.addr(),
    };
    b.follow(&upstream).await.unwrap();
    wait_for("b replicates k", || async {
        resp::call(&b.addr(), &["GET", "k"], Duration::from_secs(1)).await.ok()
            == Some(Reply::Bulk(Some(b"1".to_vec())))
    })
    .await;
    let h = b.health().await;
    assert_eq!(h.role, ServiceRole::Replica);
    assert_eq!(h.following.as_deref(), Some(a.addr().as_str()));
    // The offset counts from the replication backlog, which starts with the first replica: it may still be 0.
    b.position().await.unwrap();

    // Fence a at once; promote b.
    a.fence().await.unwrap();
    let a_info = a.info().await.unwrap();
    assert!(set(&a.addr(), "k", "2").await.is_err());
    b.promote().await.unwrap();
    b.unfence().await.unwrap();
    set(&b.addr(), "k", "3").await.unwrap();
    assert_eq!(b.min_replicas_to_write().await.unwrap(), 0);
    // The backstop: with a write quorum of 1, a master without a replica refuses writes by itself.
    b.set_write_quorum(1);
    b.unfence().await.unwrap();
    assert_eq!(b.min_replicas_to_write().await.unwrap(), 1);
    let e = set(&b.addr(), "k", "4").await.unwrap_err().to_string();
    assert!(e.contains("NOREPLICAS"), "{e}");
    assert!(!redis::takes_writes_at(&b.addr(), Duration::from_secs(1)).await.unwrap());
    // Another node fences it directly, and reads its history.
    redis::fence_at(&b.addr(), Duration::from_secs(1)).await.unwrap();
    assert_eq!(b.min_replicas_to_write().await.unwrap(), FENCE_REPLICAS);
    let i = redis::info_at(&b.addr(), Duration::from_secs(1)).await.unwrap();
    assert!(i.is_master());
    // b was promoted from a's history: Redis keeps a's id as the second one.
    assert_eq!(i.master_replid2, a_info.master_replid, "{i:?}");
    assert!(i.second_repl_offset.is_some(), "{i:?}");

    // Kill a's server: the supervisor restarts it, counts it, and it comes back a replica of itself. redis-server
    // rewrites its process title to `redis-server host:port`.
    let title = a.addr();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&title))
        })
        .expect("a's redis-server process");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for("a restarted", || async {
        let h = a.health().await;
        h.healthy && h.restarts == 1
    })
    .await;
    let h = a.health().await;
    assert_eq!(
        (h.role, h.following.as_deref()),
        (ServiceRole::Replica, Some(a.addr().as_str()))
    );

    cancel.cancel();
    ta.await.unwrap();
    tb.await.unwrap();
    assert!(!a.health().await.healthy, "stopped on cancel");
}
