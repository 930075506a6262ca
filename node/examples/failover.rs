//! Failover benchmark: N runs of `kill -9` of the primary of a local three-node cluster with the
//! default configuration; prints the time from the kill until another node answers
//! `/primary` 200 (median, p90, max) and the number of spurious failovers (epoch changes not
//! caused by a kill) seen while the cluster was left alone between runs.
//!
//!   cargo build --release && cargo run --release --example failover -- --runs 10
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel).
//! Not yet measured: "accepts a write" (the datastore arrives with the replication issue)
//! and `--compare etcd`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn keel_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("keel"))
        .expect("target dir")
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    id: u64,
    api: String,
    args: Vec<String>,
    child: Option<Child>,
}

fn get(http: &reqwest::blocking::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let r = http.get(url).timeout(Duration::from_millis(300)).send().ok()?;
    let s = r.status().as_u16();
    Some((s, r.json().unwrap_or(serde_json::Value::Null)))
}

fn primary_of(http: &reqwest::blocking::Client, nodes: &[Node]) -> Vec<u64> {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .filter(|n| get(http, &format!("http://{}/primary", n.api)).is_some_and(|(s, _)| s == 200))
        .map(|n| n.id)
        .collect()
}

fn epoch(http: &reqwest::blocking::Client, nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .filter_map(|n| get(http, &format!("http://{}/v1/status", n.api)))
        .filter_map(|(_, v)| v["primary"]["epoch"].as_u64())
        .max()
        .unwrap_or(0)
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let mut runs = 10usize;
    let mut quiet_ms = 3000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--quiet-ms" => quiet_ms = args.next().and_then(|v| v.parse().ok()).expect("--quiet-ms MS"),
            other => panic!("unknown argument {other}; usage: failover [--runs N] [--quiet-ms MS]"),
        }
    }
    let keel = keel_bin();
    assert!(
        keel.exists(),
        "{} not found: run `cargo build --release` first",
        keel.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.0.1";
    let http = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(ip), free_port(ip))).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={ip}:{}", i + 1, p.1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .map(|(i, (a, p))| {
            let id = i as u64 + 1;
            let data = dir.path().join(format!("n{id}"));
            Node {
                id,
                api: format!("{ip}:{a}"),
                args: vec![
                    "serve".into(),
                    "--id".into(),
                    id.to_string(),
                    "--api-addr".into(),
                    format!("{ip}:{a}"),
                    "--peer-addr".into(),
                    format!("{ip}:{p}"),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--peers".into(),
                    peers.clone(),
                ],
                child: None,
            }
        })
        .collect();
    let spawn = |n: &mut Node| {
        n.child = Some(
            Command::new(&keel)
                .args(&n.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn keel"),
        );
    };
    for n in nodes.iter_mut() {
        spawn(n);
    }
    let mut times = Vec::new();
    let mut spurious = 0u64;
    for run in 1..=runs {
        let p = wait("one primary", Duration::from_secs(30), || {
            let p = primary_of(&http, &nodes);
            (p.len() == 1).then(|| p[0])
        });
        // Leave the cluster alone; any epoch change now is a spurious failover.
        let e0 = epoch(&http, &nodes);
        std::thread::sleep(Duration::from_millis(quiet_ms));
        let e1 = epoch(&http, &nodes);
        spurious += e1.saturating_sub(e0);
        let p = if e1 != e0 {
            primary_of(&http, &nodes).first().copied().unwrap_or(p)
        } else {
            p
        };
        let idx = (p - 1) as usize;
        let t0 = Instant::now();
        if let Some(mut c) = nodes[idx].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let newp = wait("new primary", Duration::from_secs(30), || {
            let q = primary_of(&http, &nodes);
            (q.len() == 1 && q[0] != p).then(|| q[0])
        });
        let took = t0.elapsed();
        println!(
            "run {run:2}: killed primary n{p}; n{newp} answers /primary 200 after {:7.1} ms",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        spawn(&mut nodes[idx]);
    }
    for n in nodes.iter_mut() {
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "failover over {runs} runs: median {:.1} ms, p90 {:.1} ms, max {:.1} ms; spurious failovers between runs: {spurious}",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(*times.last().unwrap())
    );
}
