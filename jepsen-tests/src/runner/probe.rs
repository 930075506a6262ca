//! What the harness observes of the cluster, only through its HTTP API: who answers 200 on
//! `/primary`, the coordinator the nodes name in `/v1/status`, the sampler that watches both
//! for the whole run (never two primaries in one round, epochs never going back), and the
//! convergence check at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub(super) fn new_http() -> reqwest::blocking::Client {
    // reqwest is built without a default TLS provider (workspace choice: ring); the harness
    // speaks plain HTTP, but the client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Which node answers 200 on /primary, per node.
pub(super) fn primaries(http: &reqwest::blocking::Client, apis: &[(u64, String)]) -> Vec<u64> {
    apis.iter()
        .filter(|(_, a)| {
            http.get(format!("http://{a}/primary"))
                .timeout(Duration::from_millis(300))
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The coordinator (Raft leader) most nodes name in `/v1/status`.
pub(super) fn coordinator(http: &reqwest::blocking::Client, apis: &[(u64, String)]) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, a) in apis {
        if let Some(l) = http
            .get(format!("http://{a}/v1/status"))
            .timeout(Duration::from_millis(300))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["raft"]["leader"].as_u64())
        {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
}

/// Wait until every node lists the same keys with the same versions.
pub(super) fn converge(http: &reqwest::blocking::Client, apis: &[(u64, String)], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<Option<Value>> = apis
            .iter()
            .map(|(_, a)| {
                http.get(format!("http://{a}/v1/kv?limit=1000"))
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .map(|v| v["items"].clone())
            })
            .collect();
        if views.iter().all(|v| v.is_some()) && views.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shared between the nemesis and the sampler.
#[derive(Default)]
pub(super) struct Shared {
    /// Nodes whose data dir was wiped: the sampler forgets their last epoch.
    pub(super) wiped: Mutex<BTreeSet<u64>>,
    /// The nodes answering 200 on `/primary` in the sampler's latest round (for progress lines).
    pub(super) primaries: Mutex<Vec<u64>>,
}

/// What the `/primary` sampler saw over the run.
pub(super) struct Samples {
    pub(super) rounds: u64,
    /// Rounds in which more than one node answered 200 on `/primary`.
    pub(super) doubles: u64,
    /// No node's epoch ever went down.
    pub(super) monotonic: bool,
    /// (ms since `start`, the nodes answering 200) at every change.
    pub(super) timeline: Vec<(u64, Vec<u64>)>,
}

/// The /primary sampler, on its own thread until `stop`: never two 200s in one round; epochs
/// never go back.
pub(super) fn spawn_sampler(
    apis: Vec<(u64, String)>,
    stop: Arc<AtomicBool>,
    start: Instant,
    shared: Arc<Shared>,
) -> JoinHandle<Samples> {
    std::thread::spawn(move || {
        let http = new_http();
        let (mut rounds, mut doubles, mut monotonic) = (0u64, 0u64, true);
        // Per node: the epoch it reports must never go down (restarts included: the
        // cluster state is durable). A wiped node starts over, so it is forgotten.
        let mut last_epoch: BTreeMap<u64, u64> = Default::default();
        let mut timeline: Vec<(u64, Vec<u64>)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for id in std::mem::take(&mut *shared.wiped.lock().unwrap_or_else(|e| e.into_inner())) {
                last_epoch.remove(&id);
            }
            let p = primaries(&http, &apis);
            *shared.primaries.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
            rounds += 1;
            if p.len() > 1 {
                doubles += 1;
            }
            for (id, a) in &apis {
                if let Ok(r) = http
                    .get(format!("http://{a}/v1/status"))
                    .timeout(Duration::from_millis(300))
                    .send()
                {
                    if let Some(e) = r.json::<Value>().ok().and_then(|v| v["primary"]["epoch"].as_u64()) {
                        let prev = last_epoch.insert(*id, e).unwrap_or(0);
                        if e < prev {
                            monotonic = false;
                        }
                    }
                }
            }
            if timeline.last().is_none_or(|(_, last)| *last != p) {
                timeline.push((start.elapsed().as_millis() as u64, p));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Samples {
            rounds,
            doubles,
            monotonic,
            timeline,
        }
    })
}
