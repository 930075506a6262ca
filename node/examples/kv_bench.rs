//! Datastore write benchmark: a local three-node cluster, C concurrent clients writing 1 KiB
//! values to the primary for D seconds, in async and then sync replication mode. Prints
//! throughput, latency percentiles, and the group-commit factor (writes per fsync) read from
//! the primary's `/metrics`.
//!
//!   cargo build --release && cargo run --release --example kv_bench -- --clients 32 --secs 10

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn keel_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("keel"))
        .expect("target dir")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn metric(http: &reqwest::blocking::Client, api: &str, name: &str) -> f64 {
    let text = http
        .get(format!("http://{api}/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let (mut clients, mut secs) = (32usize, 10u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--clients" => clients = args.next().and_then(|v| v.parse().ok()).expect("--clients N"),
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            other => panic!("unknown argument {other}; usage: kv_bench [--clients N] [--secs S]"),
        }
    }
    let keel = keel_bin();
    assert!(
        keel.exists(),
        "{} not found: run `cargo build --release` first",
        keel.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p.1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Children(Vec::new());
    for (i, (a, p)) in ports.iter().enumerate() {
        let id = (i + 1).to_string();
        let data = dir.path().join(format!("n{id}"));
        children.0.push(
            Command::new(&keel)
                .args(["serve", "--id", &id, "--api-addr", &format!("127.0.0.1:{a}")])
                .args([
                    "--peer-addr",
                    &format!("127.0.0.1:{p}"),
                    "--data-dir",
                    &data.display().to_string(),
                ])
                .args(["--peers", &peers])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn keel"),
        );
    }
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let primary = loop {
        let p = ports.iter().map(|(a, _)| format!("127.0.0.1:{a}")).find(|api| {
            http.get(format!("http://{api}/primary"))
                .send()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false)
        });
        if let Some(p) = p {
            break p;
        }
        assert!(Instant::now() < deadline, "no primary within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let value = vec![b'x'; 1024];
    for mode in ["async", "sync"] {
        let r = http
            .patch(format!("http://{primary}/v1/config"))
            .json(&serde_json::json!({"replication_mode": mode, "min_acks": 1}))
            .send()
            .expect("set mode");
        assert!(
            r.status().is_success(),
            "set mode {mode}: {}",
            r.text().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300)); // let the config apply everywhere
        let (w0, c0) = (
            metric(&http, &primary, "keel_datastore_writes_total"),
            metric(&http, &primary, "keel_datastore_commits_total"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (stop, lat, errors, http, primary, value) = (
                    stop.clone(),
                    lat.clone(),
                    errors.clone(),
                    http.clone(),
                    primary.clone(),
                    value.clone(),
                );
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let ok = http
                            .put(format!("http://{primary}/v1/kv/bench/{c}/{i}"))
                            .body(value.clone())
                            .send()
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        if ok {
                            mine.push(t.elapsed());
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                    lat.lock().unwrap().extend(mine);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        let elapsed = started.elapsed();
        let mut lat = lat.lock().unwrap().clone();
        lat.sort();
        let (w1, c1) = (
            metric(&http, &primary, "keel_datastore_writes_total"),
            metric(&http, &primary, "keel_datastore_commits_total"),
        );
        let n = lat.len();
        let pct = |q: f64| {
            lat.get(((n as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{mode:5}: {clients} clients, {:.0} writes/s ({n} ok, {} errors in {:.1} s); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.1} writes per fsync",
            n as f64 / elapsed.as_secs_f64(),
            errors.load(Ordering::Relaxed),
            elapsed.as_secs_f64(),
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            (w1 - w0) / (c1 - c0).max(1.0)
        );
    }
}
