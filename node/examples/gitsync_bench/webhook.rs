//! Part 1: webhook to all three nodes served.

use super::*;

// ---- part 1: webhook to all nodes served ----

pub(crate) fn sign(body: &[u8]) -> String {
    webhook_signature(SECRET, body)
}

/// The upstream of part 1: a small config directory, the file the pushes change and a few that
/// stay, and a file outside the synced path.
pub(crate) fn upstream(dir: &Path) -> Upstream {
    let up = Upstream::new(dir);
    for i in 1..=9 {
        let p = up.work.join(format!("shared/dashboards/d{i}.json"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            format!("{{\"dashboard\": {i}, \"panels\": [{}]}}\n", "1,".repeat(500) + "1"),
        )
        .unwrap();
    }
    std::fs::write(up.work.join("README.md"), "outside the synced path\n").unwrap();
    up
}

pub(crate) struct BenchNode {
    pub(crate) id: u64,
    pub(crate) api: String,
    pub(crate) data: PathBuf,
}

impl BenchNode {
    pub(crate) fn served(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.data.join("gitsync/current").join(file)).ok()
    }

    pub(crate) fn status(&self, http: &Http) -> Option<Value> {
        get_json(http, &format!("http://{}/v1/gitsync", self.api))
    }
}

/// Sends one signed push webhook; returns the HTTP status and when it was answered.
pub(crate) fn send_webhook(http: &Http, api: &str, delivery: &str, t0: Instant) -> (Result<u16, String>, Duration) {
    let body = serde_json::json!({"ref": format!("refs/heads/{BRANCH}")}).to_string();
    let r = http
        .post(format!("http://{api}/v1/gitsync/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body)
        .send();
    let at = t0.elapsed();
    (r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()), at)
}

/// Three `keel serve` nodes following `up` (webhooks only: a ten-minute poll interval), once
/// every node serves the commit `first` and one of them is primary.
fn start_nodes(http: &Http, lab: &mut Procs, up: &Upstream, first: &str) -> Vec<BenchNode> {
    let url = up.url();
    let extra = [
        "--gitsync-repo",
        &url,
        "--gitsync-branch",
        BRANCH,
        "--gitsync-path",
        "shared",
        "--gitsync-interval-ms",
        "600000",
        "--gitsync-webhook-secret",
        SECRET,
    ];
    let nodes: Vec<BenchNode> = lab
        .spawn_keel_nodes(3, &extra, true)
        .into_iter()
        .map(|n| BenchNode {
            id: n.id,
            api: n.api,
            data: n.data,
        })
        .collect();
    wait("every node serving the initial commit", WAIT, || {
        nodes
            .iter()
            .all(|n| {
                n.served("config.txt").as_deref() == Some("push 0\n")
                    && n.status(http)
                        .is_some_and(|s| s["state"] == "ok" && s["commit"] == first)
            })
            .then_some(())
    });
    wait("one primary", WAIT, || {
        let apis: Vec<&str> = nodes.iter().map(|n| n.api.as_str()).collect();
        (primaries(http, &apis, Duration::from_millis(300)).len() == 1).then_some(())
    });
    lab.mark();
    nodes
}

/// What one push measured: when the webhook was answered, when each node served the push, and
/// each agent's own `last_duration_ms`.
struct Push {
    answered: Duration,
    seen: Vec<Duration>,
    agent_ms: Vec<u64>,
}

/// Push `i`: commit a change, send one webhook to the next node in turn, and read the served
/// file on every node every 2 ms until all serve the push.
fn one_push(http: &Http, up: &Upstream, nodes: &[BenchNode], run_id: u64, i: usize) -> Push {
    let contents = format!("push {i}\n");
    let sha = up.commit("shared/config.txt", &contents);
    let target = &nodes[(i - 1) % nodes.len()];
    let delivery = format!("bench-{}-{run_id}-{i}", std::process::id());
    let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
    let t0 = Instant::now();
    let (reply, answered) = std::thread::scope(|s| {
        let hook = s.spawn(|| send_webhook(http, &target.api, &delivery, t0));
        let deadline = t0 + WAIT;
        while seen.iter().any(Option::is_none) {
            for (k, n) in nodes.iter().enumerate() {
                if seen[k].is_none() && n.served("config.txt").as_deref() == Some(contents.as_str()) {
                    seen[k] = Some(t0.elapsed());
                }
            }
            if seen.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        hook.join().expect("webhook thread")
    });
    assert_eq!(reply, Ok(202), "push {i}: webhook to n{} not accepted", target.id);
    let seen: Vec<Duration> = seen
        .into_iter()
        .enumerate()
        .map(|(k, s)| s.unwrap_or_else(|| panic!("push {i}: n{} did not serve it within {WAIT:?}", k + 1)))
        .collect();
    // Each agent's own account of the sync, once its status has caught up.
    let agent_ms: Vec<u64> = nodes
        .iter()
        .map(|n| {
            wait(&format!("n{}'s status to show {sha}", n.id), WAIT, || {
                let s = n.status(http)?;
                (s["commit"] == sha.as_str() && s["state"] == "ok").then(|| s["last_duration_ms"].as_u64())?
            })
        })
        .collect();
    println!(
        "push {i:2} → webhook to n{}: answered {:6.1} ms; served on n1 {:6.1}, n2 {:6.1}, n3 {:6.1} ms; \
         all {:6.1} ms; agents' sync {} ms",
        target.id,
        ms(answered),
        ms(seen[0]),
        ms(seen[1]),
        ms(seen[2]),
        ms(*seen.iter().max().unwrap()),
        agent_ms.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("/"),
    );
    Push {
        answered,
        seen,
        agent_ms,
    }
}

pub(crate) fn webhook_latency(http: &Http, pushes: usize) {
    println!(
        "== webhook to all three nodes served ({pushes} pushes), load average {}",
        load_average()
    );
    let mut lab = Procs::new("keel-gitsync-bench-", None);
    let up = upstream(lab.path());
    let first = up.commit("shared/config.txt", "push 0\n");
    let nodes = start_nodes(http, &mut lab, &up, &first);

    let run_id = keel_testkit::unix_ms();
    let mut all_served = Vec::new();
    let mut answered = Vec::new();
    let mut agent = Vec::new();
    for i in 1..=pushes {
        let push = one_push(http, &up, &nodes, run_id, i);
        all_served.push(*push.seen.iter().max().unwrap());
        answered.push(push.answered);
        agent.extend(push.agent_ms.into_iter().map(Duration::from_millis));
    }
    let warnings = lab.warnings();
    drop(lab);
    all_served.sort();
    answered.sort();
    agent.sort();
    let (p50, p90, max) = (
        pct_ms(&all_served, 0.5),
        pct_ms(&all_served, 0.9),
        ms(*all_served.last().unwrap()),
    );
    println!(
        "webhook → all three nodes serve the push, {pushes} pushes: p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms"
    );
    println!(
        "  webhook answered: p50 {:.1} ms, max {:.1} ms; agents' last_duration_ms ({} syncs): p50 {:.0} ms, max {:.0} ms",
        pct_ms(&answered, 0.5),
        ms(*answered.last().unwrap()),
        agent.len(),
        pct_ms(&agent, 0.5),
        ms(*agent.last().unwrap()),
    );
    println!(
        "  goal p50 < 300 ms — {}; goal max < 1 s — {}",
        met(p50 < 300.0),
        met(max < 1000.0)
    );
    for w in warnings {
        println!("  {w}");
    }
    println!("  load average after: {}", load_average());
}
