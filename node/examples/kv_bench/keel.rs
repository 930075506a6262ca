//! The Keel side: a three-node cluster of `keel serve` processes, its mode, one closed-loop
//! cell and the half-load replication lag run.

use super::*;

/// A metric's value from a Prometheus text page (`name value` lines), 0 if absent.
pub(crate) fn metric(http: &Http, url: &str, name: &str) -> f64 {
    let text = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) struct Keel {
    pub(crate) cluster: Procs,
    /// API address of each node, in start order (the order of `cluster.procs`).
    pub(crate) apis: Vec<String>,
    pub(crate) primary: String,
    pub(crate) replicas: Vec<String>,
}

/// A Keel cluster with its data dirs in the system's temp dir (`root` None), or under `root`.
pub(crate) fn start_keel(http: &Http, root: Option<&Path>) -> Keel {
    let mut cluster = Procs::new("keel-kv-bench", root);
    let apis: Vec<String> = cluster
        .spawn_keel_nodes(3, &[], false)
        .into_iter()
        .map(|n| n.api)
        .collect();
    let primary = wait("a Keel primary", || {
        let apis: Vec<&str> = apis.iter().map(String::as_str).collect();
        let found = primaries(http, &apis, Duration::from_millis(500));
        found.first().map(|i| apis[*i].to_string())
    });
    let replicas = apis.iter().filter(|a| **a != primary).cloned().collect();
    cluster.mark();
    Keel {
        cluster,
        apis,
        primary,
        replicas,
    }
}

impl Keel {
    /// The primary (node, epoch) as the nodes see it: the newest epoch any of them reports.
    pub(crate) fn primary_record(&self, http: &Http) -> Option<(u64, u64)> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .filter_map(|api| get_json(http, &format!("http://{api}/v1/status")))
            .filter_map(|v| Some((v["primary"]["node"].as_u64()?, v["primary"]["epoch"].as_u64()?)))
            .max_by_key(|p| p.1)
    }

    /// After a run: how long until both replicas have every write the primary has (their
    /// backlog), or None if they do not within `CATCH_UP`.
    pub(crate) fn catch_up(&self, http: &Http) -> Option<Duration> {
        let position = |api: &str| {
            get_json(http, &format!("http://{api}/v1/status"))
                .and_then(|v| v["replication"]["position"].as_str().map(String::from))
        };
        let start = Instant::now();
        let head = position(&self.primary)?;
        while start.elapsed() < CATCH_UP {
            if self.replicas.iter().all(|r| position(r).as_ref() == Some(&head)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// Sets the replication mode (min_acks 1) and waits until the primary runs with it.
pub(crate) fn set_mode(http: &Http, primary: &str, mode: &str) {
    let r = http
        .patch(format!("http://{primary}/v1/config"))
        .json(&serde_json::json!({"replication_mode": mode, "min_acks": 1}))
        .send()
        .expect("PATCH /v1/config");
    let status = r.status();
    assert!(
        status.is_success(),
        "set mode {mode}: {status} {}",
        r.text().unwrap_or_default()
    );
    wait(&format!("replication mode {mode} on the primary"), || {
        get_json(http, &format!("http://{primary}/v1/status"))
            .filter(|v| v["replication"]["mode"] == mode)
            .map(|_| ())
    });
}

/// One write: `PUT path` with `value`; its latency (until the whole answer is read) or the kind
/// of its failure.
pub(crate) async fn keel_put(http: &raw_http::Client, path: &str, value: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    check(http.request("PUT", path, None, value).await).map(|_| t0.elapsed())
}

/// One closed-loop cell against the primary; writes per fsync from its group-commit counters.
pub(crate) fn keel_cell(
    http: &Http,
    gen: &Gen,
    keel: &Keel,
    mode: &'static str,
    size: usize,
    clients: usize,
    dur: Duration,
) -> Row {
    eprintln!("keel {mode} {} × {clients} clients ...", size_label(size));
    let value = Bytes::from(vec![b'k'; size]);
    let metrics = format!("http://{}/metrics", keel.primary);
    let counters = || {
        (
            metric(http, &metrics, "keel_datastore_writes_total"),
            metric(http, &metrics, "keel_datastore_commits_total"),
        )
    };
    let (w0, c0) = counters();
    let d0 = keel_testkit::dir_disk_bytes(keel.cluster.path());
    let base: Arc<str> = format!("/v1/kv/bench/{mode}-{size}-{clients}").into();
    let client = Arc::new(raw_http::Client::new(&keel.primary));
    let out = run_load(gen, keel.cluster.pids(), clients, dur, None, move |t, step| {
        let (http, path, value) = (client.clone(), format!("{base}/{t}/{step}"), value.clone());
        async move { keel_put(&http, &path, &value).await }
    });
    let (w1, c1) = counters();
    let catch_up = keel.catch_up(http);
    let grown = keel_testkit::dir_disk_bytes(keel.cluster.path()).saturating_sub(d0);
    let written = (out.lat.len() * size * keel.apis.len()) as u64;
    Row {
        system: "keel",
        mode,
        size,
        clients,
        out,
        writes_per_fsync: (w1 - w0) / (c1 - c0).max(1.0),
        catch_up: Some(catch_up),
        round_rates: Vec::new(),
        disk_growth: Some((grown, written)),
    }
}

/// What the half-load run measured.
pub(crate) struct Lag {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) size: usize,
    /// Time from the primary's 2xx until a replica served the key, sorted: all of them, and
    /// those of each replica.
    pub(crate) samples: Vec<Duration>,
    pub(crate) per_replica: Vec<Vec<Duration>>,
    /// Samples not seen on the replica within `LAG_GIVE_UP` (counted as that long).
    pub(crate) missed: u64,
    /// The largest `replication.lag_ms` the replicas reported in `/v1/status` during the run.
    pub(crate) reported_max_ms: u64,
}

/// Polls `replica` for `key` until it is there (every `LAG_POLL`, on tokio's 1 ms timer); the time
/// from `acked` to that answer.
pub(crate) async fn seen_after(http: &reqwest::Client, replica: &str, key: &str, acked: Instant) -> Option<Duration> {
    let url = format!("http://{replica}/v1/kv/{key}?consistency=local");
    while acked.elapsed() < LAG_GIVE_UP {
        let found = match http.get(&url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) => {
                let ok = r.status() == 200;
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        };
        if found {
            return Some(acked.elapsed());
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    None
}

/// The largest `replication.lag_ms` the replicas report in `/v1/status`, polled every 50 ms
/// until the task is aborted.
pub(crate) async fn watch_reported_lag(http: reqwest::Client, replicas: Vec<String>, max: Arc<AtomicU64>) {
    loop {
        for r in &replicas {
            let status = http
                .get(format!("http://{r}/v1/status"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(resp) = status {
                if let Ok(v) = resp.json::<serde_json::Value>().await {
                    max.fetch_max(v["replication"]["lag_ms"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Async mode, open loop at `rate` writes/s over 64 clients, sampling replication lag.
pub(crate) fn keel_lag(http: &Http, gen: &Gen, keel: &Keel, rate: f64, size: usize, dur: Duration) -> (Row, Lag) {
    let clients = CLIENTS[CLIENTS.len() - 1];
    eprintln!(
        "keel async {} at {rate:.0} writes/s × {clients} clients, sampling replication lag ...",
        size_label(size)
    );
    let value = Bytes::from(vec![b'l'; size]);
    let sample_every = (rate / LAG_SAMPLES_PER_SEC).ceil().max(1.0) as u64;
    let samples = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let reported_max = Arc::new(AtomicU64::new(0));
    // The replicas' own lag figure, for comparison: a task on the generator's runtime, running
    // while the load runs.
    let watcher = gen.rt.spawn(watch_reported_lag(
        gen.http.clone(),
        keel.replicas.clone(),
        reported_max.clone(),
    ));
    let (client, writer) = (gen.http.clone(), Arc::new(raw_http::Client::new(&keel.primary)));
    let replicas = Arc::new(keel.replicas.clone());
    let write_samples = samples.clone();
    let out = run_load(gen, keel.cluster.pids(), clients, dur, Some(rate), move |t, step| {
        let (http, writer, replicas) = (client.clone(), writer.clone(), replicas.clone());
        let (value, samples) = (value.clone(), write_samples.clone());
        async move {
            let key = format!("bench/lag/{t}/{step}");
            let d = keel_put(&writer, &format!("/v1/kv/{key}"), &value).await?;
            let acked = Instant::now();
            if let Step::Write(i) = step {
                let n = i * clients as u64 + t as u64;
                if n.is_multiple_of(sample_every) {
                    let r = (n / sample_every) as usize % replicas.len();
                    let seen = seen_after(&http, &replicas[r], &key, acked).await;
                    let mut s = samples.lock().unwrap();
                    s.0.push((r, seen.unwrap_or(LAG_GIVE_UP)));
                    s.1 += seen.is_none() as u64;
                }
            }
            Ok(d)
        }
    });
    watcher.abort();
    let _ = gen.rt.block_on(watcher);
    let (tagged, missed) = std::mem::take(&mut *samples.lock().unwrap());
    let sorted = |mut v: Vec<Duration>| {
        v.sort();
        v
    };
    let lag = Lag {
        target_rate: rate,
        achieved_rate: out.rate(),
        size,
        samples: sorted(tagged.iter().map(|s| s.1).collect()),
        per_replica: (0..keel.replicas.len())
            .map(|r| sorted(tagged.iter().filter(|s| s.0 == r).map(|s| s.1).collect()))
            .collect(),
        missed,
        reported_max_ms: reported_max.load(Ordering::Relaxed),
    };
    let row = Row {
        system: "keel",
        mode: "async½",
        size,
        clients,
        out,
        writes_per_fsync: f64::NAN,
        catch_up: Some(keel.catch_up(http)),
        round_rates: Vec::new(),
        disk_growth: None,
    };
    (row, lag)
}
