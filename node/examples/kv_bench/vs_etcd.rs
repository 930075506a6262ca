//! The etcd side (`--compare etcd`): a three-member etcd and one closed-loop cell through its
//! JSON gateway.

use super::*;

pub(crate) struct Etcd {
    /// Dropping it stops the members.
    pub(crate) cluster: Procs,
    pub(crate) members: Vec<EtcdMember>,
    /// The gateway's path prefix (`/v3`).
    pub(crate) api: &'static str,
}

/// A three-member etcd on 127.0.0.1 with etcd's default timings.
pub(crate) fn start_etcd(bin: &Path, api: &'static str) -> Etcd {
    let mut cluster = Procs::new("keel-kv-bench-etcd", None);
    let token = format!("keel-kv-bench-{}", std::process::id());
    let members = etcd::layout(3, "127.0.0.1", cluster.path(), &token);
    for m in &members {
        cluster.spawn(&m.name, etcd::command(bin, m, "new"));
    }
    Etcd { cluster, members, api }
}

impl Etcd {
    /// The leader's index once every member is healthy and names the same leader.
    pub(crate) fn leader(&self, http: &Http) -> Option<usize> {
        let mut ids = Vec::new();
        for m in &self.members {
            let s = etcd::status(http, &m.client, self.api, Duration::from_millis(500))?;
            ids.push((s.member, s.leader?));
            let health = get_json(http, &format!("http://{}/health", m.client))?;
            if health["health"] != "true" {
                return None;
            }
        }
        let leader = &ids[0].1;
        if ids.iter().any(|(_, l)| l != leader) {
            return None;
        }
        ids.iter().position(|(m, _)| m == leader)
    }
}

/// One put through etcd's JSON gateway; its latency or the kind of its failure.
pub(crate) async fn etcd_put(
    http: &raw_http::Client,
    path: &str,
    key: &str,
    value_b64: &str,
) -> Result<Duration, String> {
    let body = format!(r#"{{"key":"{}","value":"{value_b64}"}}"#, b64(key.as_bytes()));
    let t0 = Instant::now();
    let r = http
        .request("POST", path, Some("application/json"), body.as_bytes())
        .await;
    match check(r) {
        Ok(b) if b.contains("\"error\"") => Err("error in a 200 answer".into()),
        Ok(_) => Ok(t0.elapsed()),
        Err(e) => Err(e),
    }
}

/// One closed-loop cell against the etcd leader; writes per WAL fsync from its `/metrics`.
pub(crate) fn etcd_cell(
    http: &Http,
    gen: &Gen,
    etcd: &Etcd,
    leader: usize,
    size: usize,
    clients: usize,
    dur: Duration,
) -> Row {
    eprintln!("etcd {} × {clients} clients ...", size_label(size));
    let value: Arc<str> = b64(&vec![b'e'; size]).into();
    let member = &etcd.members[leader].client;
    let (path, metrics): (Arc<str>, String) = (
        format!("{}/kv/put", etcd.api).into(),
        format!("http://{member}/metrics"),
    );
    let fsyncs = || metric(http, &metrics, "etcd_disk_wal_fsync_duration_seconds_count");
    let f0 = fsyncs();
    let client = Arc::new(raw_http::Client::new(member));
    let out = run_load(gen, etcd.cluster.pids(), clients, dur, None, move |t, step| {
        let (http, path, value) = (client.clone(), path.clone(), value.clone());
        let key = format!("bench/{size}-{clients}/{t}/{step}");
        async move { etcd_put(&http, &path, &key, &value).await }
    });
    let f1 = fsyncs();
    let writes_per_fsync = out.lat.len() as f64 / (f1 - f0).max(1.0);
    Row {
        system: "etcd",
        mode: "quorum",
        size,
        clients,
        out,
        writes_per_fsync,
        catch_up: None,
        round_rates: Vec::new(),
        disk_growth: None,
    }
}
