//! `GET /metrics` of a primary and of a replica passes `promtool check metrics` (Debian's
//! `prometheus` package: the exposition format and Prometheus' naming lint), and the
//! "Metrics reference" table in docs/http-api.md lists exactly the metric families a node
//! exports, with their types.
//!
//! Git Sync is configured so that its series are exported and checked too. Without `promtool`
//! the promtool part skips with a message, and fails when `CI` is set.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_testkit::*;

const T: Duration = Duration::from_secs(30);

/// `# TYPE name kind` lines of an exposition.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_string(), k.trim().to_string()))
        .collect()
}

/// `| `name` | type | ...` rows of the "Metrics reference" table in docs/http-api.md.
fn readme_families() -> BTreeMap<String, String> {
    let readme = include_str!("../../docs/http-api.md");
    let start = readme
        .find("### Metrics reference")
        .expect("docs/http-api.md has a \"### Metrics reference\" section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n#").unwrap_or(section.len())];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest
                .trim_start_matches(' ')
                .trim_start_matches('|')
                .split('|')
                .next()?
                .trim();
            (name.starts_with("keel_") || name.starts_with("process_")).then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

/// The value of an unlabelled sample, or of one with exactly `labels`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    // promtool reads stdin to the end and exits; bound it anyway.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("promtool did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && msg.trim().is_empty(), msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_match_the_readme() {
    let repo = tempfile::tempdir().unwrap();
    let (c, primary) = gitsync_cluster(repo.path(), &[], T).await;
    let replica = (1..=3).find(|id| *id != primary).unwrap();
    // One write, so the replica has a position and a lag to report.
    let r = c.put(primary, "m", "1").await;
    assert!(r.status().is_success(), "{}", r.status());

    let fetch = |id: u64| {
        let url = format!("{}/metrics", c.node(id).url());
        let http = c.http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            let ct = r.headers().get("content-type")?.to_str().ok()?.to_string();
            assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
            r.text().await.ok()
        }
    };
    // Wait until both expose everything they can: the replica its lag, both a synced commit.
    let (p_text, r_text) = c
        .wait_for(
            T,
            "metrics with replication lag and a Git Sync commit on both nodes",
            || async {
                let p = fetch(primary).await?;
                let r = fetch(replica).await?;
                let ready = |t: &str| {
                    t.contains("keel_gitsync_commit_age_seconds ") && t.contains("keel_replication_lag_seconds ")
                };
                // ... and the replica has applied the write.
                let applied = sample(&r, "keel_replication_applied_entries_total").is_some_and(|n| n >= 1.0);
                (ready(&p) && ready(&r) && applied).then_some((p, r))
            },
        )
        .await;

    assert_eq!(sample(&p_text, "keel_role{role=\"primary\"}"), Some(1.0), "{p_text}");
    assert_eq!(sample(&r_text, "keel_role{role=\"replica\"}"), Some(1.0), "{r_text}");
    assert!(
        sample(&p_text, "keel_lease_remaining_seconds").is_some_and(|s| s > 0.0 && s < 10.0),
        "{p_text}"
    );
    assert_eq!(sample(&r_text, "keel_lease_remaining_seconds"), Some(0.0), "{r_text}");
    assert!(
        sample(&p_text, "keel_datastore_writes_total").is_some_and(|w| w >= 1.0),
        "{p_text}"
    );
    // The replication counters moved with that write: the replica applied it (and whatever
    // Git Sync wrote), both ends counted the batch's bytes, and the lag gauges exist.
    assert!(
        sample(&r_text, "keel_replication_applied_entries_total").is_some_and(|n| n >= 1.0),
        "{r_text}"
    );
    let streamed = |t: &str, dir: &str| {
        sample(
            t,
            &format!("keel_replication_streamed_bytes_total{{direction=\"{dir}\"}}"),
        )
    };
    assert!(streamed(&p_text, "sent").is_some_and(|b| b > 0.0), "{p_text}");
    assert!(streamed(&r_text, "received").is_some_and(|b| b > 0.0), "{r_text}");
    assert_eq!(sample(&p_text, "keel_replication_lag_entries"), Some(0.0), "{p_text}");
    assert!(sample(&r_text, "keel_replication_lag_entries").is_some(), "{r_text}");

    // The docs' table lists exactly what a node exports (the primary and the replica together
    // export every family), with the same types.
    let mut exported = families(&p_text);
    exported.extend(families(&r_text));
    // The managed Redis families appear only with --redis-port: tests/redis.rs checks those.
    let mut documented = readme_families();
    documented.retain(|name, _| !name.starts_with("keel_redis_"));
    assert_eq!(
        exported, documented,
        "the Metrics reference table of docs/http-api.md (left: exported, right: documented) is out of date"
    );

    match which("promtool") {
        Some(promtool) => {
            for (who, text) in [("primary", &p_text), ("replica", &r_text)] {
                let (ok, msg) = promtool_check(&promtool, text);
                assert!(
                    ok,
                    "promtool check metrics on the {who}'s /metrics:\n{msg}\n---\n{text}"
                );
            }
            // The check can fail: this gauge's old name, with an abbreviated unit, is refused.
            let bad =
                "# HELP keel_lease_remaining_ms x\n# TYPE keel_lease_remaining_ms gauge\nkeel_lease_remaining_ms 1\n";
            let (ok, msg) = promtool_check(&promtool, bad);
            assert!(!ok, "promtool accepted {bad:?}: {msg}");
        }
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set and `promtool` is not on PATH: install Debian's `prometheus` package (KEEL_TEST_PACKAGES)"
            )
        }
        None => println!("SKIPPED the promtool part: `promtool` is not on PATH (Debian package `prometheus`)"),
    }
}
