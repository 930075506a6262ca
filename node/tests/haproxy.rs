//! The `deploy/` files, run for real: Debian's `haproxy` with `deploy/haproxy.cfg` in front of a
//! local three-node cluster (writes follow the primary across a kill -9, reads go to replicas), and
//! `keel serve --config deploy/keel.toml` (the example file is accepted, with every commented-out
//! option switched on too, and it lists every `keel serve` flag).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::haproxy::{
    self, deploy_file, find_haproxy, server_name, server_states, up_servers, DeployCfg, Frontends, HaProxy,
};
use keel_testkit::*;

const T: Duration = Duration::from_secs(20);

/// Generous bound on kill -9 of the primary until a write through HAProxy is accepted again. The
/// measured time (printed by the test) is about Keel's failover plus one check interval.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);

/// deploy/haproxy.cfg: its frontends and backends.
const CFG: DeployCfg = DeployCfg {
    file: "haproxy.cfg",
    binds: [":5000", ":5001", ":8404"],
    write_backend: "keel_primary",
    read_backend: "keel_replicas",
};

fn read_deploy_file(name: &str) -> String {
    let path = deploy_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The node answering 200 on `/primary` among `ids`.
async fn primary(c: &Cluster, ids: &[u64]) -> u64 {
    let others: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|id| !ids.contains(id)).collect();
    c.wait_primary(&others, T).await
}

async fn put(http: &reqwest::Client, url: &str, value: &str, timeout: Duration) -> Result<u16, String> {
    http.put(url)
        .body(value.to_owned())
        .timeout(timeout)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// A read through the read frontend that a replica answered: 200 with the value and `Keel-Lag-Ms`.
async fn read_from_replica(c: &Cluster, read: SocketAddr, key: &str, want: &str) {
    let url = format!("http://{read}/v1/kv/{key}");
    let (body, lag) = c
        .wait_for(
            T,
            "a read through HAProxy's read frontend answered by a replica",
            || async {
                let r = c.http.get(&url).send().await.ok()?;
                if r.status() != 200 {
                    return None;
                }
                let lag = r.headers().get("keel-lag-ms")?.to_str().ok()?.to_owned();
                let body = r.text().await.ok()?;
                (body == want).then_some((body, lag))
            },
        )
        .await;
    assert_eq!(body, want);
    lag.parse::<u64>()
        .unwrap_or_else(|_| panic!("Keel-Lag-Ms {lag:?} is not a number"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_haproxy_follow_the_primary_across_kill_9() {
    let Some(haproxy) = find_haproxy() else {
        return;
    };

    // The shipped file is valid as it is (its host names need not resolve: `init-addr libc,none`).
    haproxy::assert_valid(&haproxy, &CFG.path());

    let mut c = Cluster::new(3, &[]);
    let frontends = Frontends::free(&c.ip);
    // Each `server keelN` at node N's API address.
    let servers: BTreeMap<String, SocketAddr> = c.nodes.iter().map(|n| (server_name(n.id), n.api)).collect();
    let cfg = c.dir.path().join("haproxy.cfg");
    let text = CFG.rewritten(&frontends, |name, rest| {
        Some(format!("{} {}", servers.get(name)?, rest.join(" ")))
    });
    std::fs::write(&cfg, text).unwrap();
    haproxy::assert_valid(&haproxy, &cfg);

    c.start_all();
    let mut ha = HaProxy::start(&haproxy, &cfg, c.dir.path().join("haproxy.log"));
    let p = primary(&c, &[1, 2, 3]).await;
    let replicas: Vec<u64> = (1..=3).filter(|id| *id != p).collect();
    CFG.wait_routing(&c, &mut ha, frontends.stats, p, &replicas, T).await;

    // Writes through the write frontend reach the primary; reads through the read frontend a replica.
    let write_url = |key: &str| format!("http://{}/v1/kv/{key}", frontends.write);
    let status = put(&c.http, &write_url("before"), "one", Duration::from_secs(5)).await;
    assert!(matches!(status, Ok(200..=299)), "write through HAProxy: {status:?}");
    read_from_replica(&c, frontends.read, "before", "one").await;

    // kill -9 the primary, then measure from the kill: a survivor answering 200 on /primary (Keel's
    // failover), HAProxy routing writes to a survivor (its stats), and the first write through HAProxy
    // accepted. A client starts a write every 20 ms, each with a timeout of its own: a request that
    // reached HAProxy before it marked the dead primary down waits in HAProxy's retries, and must not
    // hold up the next one.
    let t0 = Instant::now();
    c.kill(p);
    let keel_failover = first_time(t0, || async {
        for id in &replicas {
            if c.holds_lease(*id, Duration::from_millis(300)).await {
                return true;
            }
        }
        false
    });
    let survivors: BTreeSet<String> = replicas.iter().map(|id| server_name(*id)).collect();
    let haproxy_up = first_time(t0, || async {
        server_states(&c.http, frontends.stats)
            .await
            .is_some_and(|s| !up_servers(&s, CFG.write_backend).is_disjoint(&survivors))
    });
    let writes = writes_until_accepted(&c.http, frontends.write, t0);
    let (keel_t, up_t, (accepted, attempts)) = tokio::join!(keel_failover, haproxy_up, writes);
    ha.assert_running();
    let ms = |t: Option<Duration>| t.map_or("(not seen)".to_owned(), |t| format!("{} ms", t.as_millis()));
    let accepted_at = accepted.as_ref().map_or(FAILOVER_DEADLINE, |a| a.done);
    let mut answered: BTreeMap<String, u32> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.done < accepted_at) {
        let what = match &a.outcome {
            Ok(code) => code.to_string(),
            Err(_) => "error".to_owned(),
        };
        *answered.entry(what).or_default() += 1;
    }
    let first = match attempts.iter().chain(&accepted).find(|a| a.seq == 1) {
        Some(a) => format!("{:?} after {} ms", a.outcome, (a.done - a.sent).as_millis()),
        None => "no answer".to_owned(),
    };
    println!(
        "HAProxy failover, from kill -9 of primary {p}: a survivor answered 200 on /primary at {}; HAProxy \
         routed writes to it at {}; the first write through HAProxy was accepted at {} (sent at {}). Answers \
         before it: {answered:?}; the write sent right after the kill: {first}",
        ms(keel_t),
        ms(up_t),
        ms(accepted.as_ref().map(|a| a.done)),
        ms(accepted.as_ref().map(|a| a.sent)),
    );
    if accepted.is_none() {
        c.dump_logs();
        panic!("no write through HAProxy accepted within {FAILOVER_DEADLINE:?} of kill -9 of the primary");
    }

    // HAProxy settles on the new primary; writes go there and the remaining replica serves reads.
    let q = primary(&c, &replicas).await;
    let rest: Vec<u64> = replicas.iter().copied().filter(|id| *id != q).collect();
    CFG.wait_routing(&c, &mut ha, frontends.stats, q, &rest, T).await;
    let status = put(&c.http, &write_url("after"), "two", Duration::from_secs(5)).await;
    assert!(matches!(status, Ok(200..=299)), "write through HAProxy: {status:?}");
    read_from_replica(&c, frontends.read, "after", "two").await;
    read_from_replica(&c, frontends.read, "before", "one").await;
    ha.assert_running();
}

/// Time from `t0` until `f` first returns true, polling every 10 ms; `None` after [`FAILOVER_DEADLINE`].
async fn first_time<F, Fut>(t0: Instant, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if f().await {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > FAILOVER_DEADLINE {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One write through HAProxy during a failover: the `seq`-th sent, when (from the kill), and its answer.
struct Attempt {
    seq: u64,
    sent: Duration,
    done: Duration,
    outcome: Result<u16, String>,
}

/// Starts a write through `write` every 20 ms (each on a key of its own, with a 5 s timeout) until one
/// is accepted, or [`FAILOVER_DEADLINE`] passes. Returns the accepted one and every other answer that
/// arrived until then, and then until the first write (sent right after the kill) was answered too.
async fn writes_until_accepted(
    http: &reqwest::Client,
    write: SocketAddr,
    t0: Instant,
) -> (Option<Attempt>, Vec<Attempt>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Dropping the set (on return) aborts the writes still waiting.
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let give_up = tokio::time::sleep(FAILOVER_DEADLINE);
    tokio::pin!(give_up);
    let mut answered = Vec::new();
    let mut accepted: Option<Attempt> = None;
    let mut seq = 0;
    loop {
        if accepted.is_some() && answered.iter().any(|a: &Attempt| a.seq == 1) {
            return (accepted, answered);
        }
        tokio::select! {
            _ = tick.tick(), if accepted.is_none() => {
                seq += 1;
                let (http, tx) = (http.clone(), tx.clone());
                let url = format!("http://{write}/v1/kv/failover-{seq}");
                tasks.spawn(async move {
                    let sent = t0.elapsed();
                    let outcome = put(&http, &url, "x", Duration::from_secs(5)).await;
                    let _ = tx.send(Attempt { seq, sent, done: t0.elapsed(), outcome });
                });
            }
            Some(a) = rx.recv() => {
                if accepted.is_none() && matches!(a.outcome, Ok(200..=299)) {
                    accepted = Some(a);
                } else {
                    answered.push(a);
                }
            }
            _ = &mut give_up => return (accepted, answered),
        }
    }
}

/// `# key = value` lines of the example config with the `# ` removed (except keys in `keep`).
fn uncomment_settings(text: &str, keep: &[&str]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let setting = line
            .strip_prefix("# ")
            .filter(|rest| {
                rest.split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !keep.contains(&key)
                })
            })
            .unwrap_or(line);
        out.push_str(setting);
        out.push('\n');
    }
    out
}

/// Start node 1 with `config`, moved onto the fixture's loopback address by `flags` (flags beat the
/// file) and its data dir set by `KEEL_DATA_DIR` (env beats the file); wait until it is up and
/// primary of its one-node cluster, and return its `/v1/status`.
async fn serve_with_config(c: &mut Cluster, config: &Path, flags: &[String]) -> serde_json::Value {
    let (api, data_dir, log) = {
        let n = c.node(1);
        (n.api, n.data_dir.clone(), n.log.clone())
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut cmd = Command::new(keel_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEEL_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(flags)
        .env("KEEL_DATA_DIR", &data_dir)
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn keel");
    // The fixture kills it when the test ends, whatever happens.
    c.nodes[0].child = Some(child);

    c.wait_for(T, "/health 200", || c.get(1, "/health")).await;
    let status = c
        .wait_for(T, "node 1 primary of its one-node cluster", || async {
            let s = c.status(1).await?;
            (s["role"] == "primary").then_some(s)
        })
        .await;
    assert_eq!(status["node_id"], 1, "the id comes from the file: {status}");
    assert_eq!(
        status["api_addr"],
        api.to_string(),
        "--api-addr beats the file: {status}"
    );
    assert!(data_dir.join("LOCK").exists(), "KEEL_DATA_DIR beats the file");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_keel_toml_starts_a_node() {
    let mut c = Cluster::new(1, &[]);
    let (api, peer) = (c.node(1).api, c.node(1).peer);
    let mut flags: Vec<String> = [
        "--api-addr".to_owned(),
        api.to_string(),
        "--advertise-api-addr".to_owned(),
        api.to_string(),
        "--peer-addr".to_owned(),
        peer.to_string(),
        "--peers".to_owned(),
        format!("1={peer}"),
    ]
    .into();

    // The file as shipped.
    let status = serve_with_config(&mut c, &deploy_file("keel.toml"), &flags).await;
    assert!(
        status["gitsync"].is_null(),
        "Git Sync is off in the shipped file: {status}"
    );
    assert_eq!(c.stop(1), Some(0), "clean exit on SIGTERM");

    // Every commented-out option switched on (except `join`, which excludes `peers`, the TLS files,
    // which must exist and would make the node speak https: tests/tls.rs covers them, and the Git Sync
    // ssh key and known_hosts files, which must exist: gitsync/tests covers them against a real sshd, and
    // the managed Redis settings of [redis], which start a redis-server on a fixed port: tests/redis.rs
    // covers them), on a fresh data dir. The Git Sync repository is overridden by a local path so the node never
    // reaches out.
    let all = c.dir.path().join("keel-all-options.toml");
    let keep = [
        "join",
        "tls_cert",
        "tls_key",
        "peer_ca",
        "ssh_key",
        "known_hosts",
        "port",
        "server",
        "conf",
    ];
    std::fs::write(&all, uncomment_settings(&read_deploy_file("keel.toml"), &keep)).unwrap();
    std::fs::remove_dir_all(c.data_dir(1)).unwrap();
    let repo = c.dir.path().join("nowhere.git");
    flags.extend([
        "--advertise-peer-addr".to_owned(),
        peer.to_string(),
        "--gitsync-repo".to_owned(),
        repo.display().to_string(),
        // The file's example address is a fixed port; the flag beats it.
        "--sentinel-addr".to_owned(),
        format!("{}:{}", c.ip, free_port(&c.ip)),
    ]);
    let status = serve_with_config(&mut c, &all, &flags).await;
    assert_eq!(status["gitsync"]["repo"], repo.display().to_string(), "{status}");
    assert_eq!(status["gitsync"]["branch"], "main", "{status}");
    assert_eq!(status["hook"]["command_configured"], true, "{status}");
    assert_eq!(c.stop(1), Some(0), "clean exit on SIGTERM");
}

/// Client options of the `keel` CLI that `keel serve --help` shows as globals; not server settings.
const CLIENT_ONLY_FLAGS: &[&str] = &[
    "addr",
    "output",
    "timeout-ms",
    "ca",
    "token",
    "help",
    "version",
    "config",
];

/// The long flags `keel serve --help` lists.
fn serve_flags() -> Vec<String> {
    let out = Command::new(keel_bin())
        .args(["serve", "--help"])
        .output()
        .expect("run keel");
    assert!(out.status.success(), "keel serve --help: {}", stderr(&out));
    let mut flags = Vec::new();
    for line in stdout(&out).lines() {
        let t = line.trim_start();
        if line.len() - t.len() > 6 {
            continue; // help text, not an option line
        }
        let Some(i) = t.find("--") else { continue };
        if !(i == 0 || (t.starts_with('-') && t[..i].ends_with(", "))) {
            continue;
        }
        let name: String = t[i + 2..]
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-')
            .collect();
        if !name.is_empty() && !CLIENT_ONLY_FLAGS.contains(&name.as_str()) {
            flags.push(name);
        }
    }
    flags
}

#[test]
fn example_keel_toml_lists_every_serve_flag() {
    let text = uncomment_settings(&read_deploy_file("keel.toml"), &[]);
    let table: toml::Table = toml::from_str(&text).expect("deploy/keel.toml with every option uncommented parses");
    let mut keys = BTreeSet::new();
    for (k, v) in &table {
        match v {
            toml::Value::Table(t) if k != "peers" => keys.extend(t.keys().map(|sub| format!("{k}.{sub}"))),
            _ => {
                keys.insert(k.clone());
            }
        }
    }
    let tables = ["raft", "replication", "gitsync", "sentinel", "redis"];
    // `--gitsync-repo` is `repo` in [gitsync], `--min-acks` is `min_acks` in [replication], ...
    let key_of = |flag: &str| -> Option<String> {
        let snake = flag.replace('-', "_");
        let mut candidates = vec![snake.clone()];
        for t in tables {
            candidates.push(format!("{t}.{snake}"));
            if let Some(rest) = snake.strip_prefix(&format!("{t}_")) {
                candidates.push(format!("{t}.{rest}"));
            }
        }
        candidates.into_iter().find(|k| keys.contains(k))
    };

    let flags = serve_flags();
    assert!(
        flags.len() >= 20,
        "parsed too few flags from `keel serve --help`: {flags:?}"
    );
    let missing: Vec<&String> = flags.iter().filter(|f| key_of(f).is_none()).collect();
    assert!(
        missing.is_empty(),
        "deploy/keel.toml lacks these `keel serve` options: {missing:?}; document each with its default \
         (or, for a client-only global flag, add it to CLIENT_ONLY_FLAGS in node/tests/haproxy.rs)"
    );
    let covered: BTreeSet<String> = flags.iter().filter_map(|f| key_of(f)).collect();
    let stale: Vec<&String> = keys.difference(&covered).collect();
    assert!(stale.is_empty(), "deploy/keel.toml has keys no flag matches: {stale:?}");
}
