//! `--output table|json` on every read command of the CLI, against a live three-node cluster
//! (with Git Sync, so `keel gitsync status` has something to show): `json` prints one JSON
//! document a script can parse, `table` prints aligned columns for people (and is not JSON).
//! Errors name what to do next (a `hint:` line).

use std::time::Duration;

use keel_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Run `keel ARGS --addr ADDR`; `(exit code, stdout, stderr)`.
fn keel(c: &Cluster, addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--addr", addr]);
    let out = c.cli(&all);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

/// `keel ARGS --output json`: exits `want_code` and prints one JSON document.
fn json(c: &Cluster, addr: &str, args: &[&str], want_code: i32) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let (code, out, err) = keel(c, addr, &a);
    assert_eq!(code, want_code, "keel {a:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("keel {a:?} printed no JSON ({e}):\n{out}"))
}

/// `keel ARGS --output table`: exits `want_code`, is not JSON, and its first line starts with `header`.
fn table(c: &Cluster, addr: &str, args: &[&str], want_code: i32, header: &str) -> String {
    let mut a = args.to_vec();
    a.extend(["--output", "table"]);
    let (code, out, err) = keel(c, addr, &a);
    assert_eq!(code, want_code, "keel {a:?}: {out}{err}");
    assert!(
        serde_json::from_str::<Value>(&out).is_err(),
        "keel {a:?} printed JSON:\n{out}"
    );
    let first = out.lines().next().unwrap_or_default();
    let cols: Vec<&str> = first.split_whitespace().collect();
    let want: Vec<&str> = header.split_whitespace().collect();
    assert!(cols.starts_with(&want), "keel {a:?}: first line of\n{out}");
    // The default is the table.
    let (code2, out2, _) = keel(c, addr, args);
    assert_eq!(
        (code2, out2.lines().next()),
        (code, Some(first)),
        "keel {args:?} without --output"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_prints_table_or_json() {
    let repo = tempfile::tempdir().unwrap();
    let (c, primary) = gitsync_cluster(repo.path(), &[], T).await;
    let addr = c.node(primary).url();
    let a = addr.as_str();
    status_and_members(&c, a, primary).await;
    history_kv_and_diverged(&c, a);
    gitsync_status(&c, a).await;
    output_flag_and_errors(&c, a);
}

/// `keel status --output json` when it exits 0 with verdict healthy (a member may still be
/// starting, or a replica catching up, on the first tries).
fn healthy(c: &Cluster, a: &str) -> Option<Value> {
    let (code, out, _) = keel(c, a, &["status", "--output", "json"]);
    let v: Value = serde_json::from_str(&out).ok()?;
    (code == 0 && v["verdict"] == "healthy").then_some(v)
}

/// `keel status` until it exits `code` with a reason that `ok` accepts; the JSON answer, and the
/// table's verdict line (which must carry the same verdict and reason).
async fn status_until(c: &Cluster, a: &str, code: i32, what: &str, ok: impl Fn(&str) -> bool) -> (Value, String) {
    let v = c
        .wait_for(T, what, || async {
            let (got, out, _) = keel(c, a, &["status", "--output", "json"]);
            let v: Value = serde_json::from_str(&out).ok()?;
            (got == code && ok(v["reason"].as_str()?)).then_some(v)
        })
        .await;
    let (got, out, err) = keel(c, a, &["status"]);
    assert_eq!(got, code, "{out}{err}");
    let line = out.lines().last().unwrap_or_default().to_string();
    (v, line)
}

/// The verdict of `keel status` on a live cluster follows what the members report: a paused
/// replica is degraded (exit 1), and so is one lagging past `max_lag_on_failover`; both reasons
/// are listed. With maintenance on and the primary killed, nothing can fail over: critical
/// (exit 2), naming the missing primary, the blocked failover and the unreachable voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_verdict_names_every_reason() {
    let (mut c, _) = Cluster::started(3, &[], T).await;
    let a = c.node(1).url();
    let a = a.as_str();
    let v = c.wait_for(T, "keel status healthy", || async { healthy(&c, a) }).await;
    let primary = v["cluster"]["primary"]["node"].as_u64().expect("a primary");
    let r = (1..=3).find(|id| *id != primary).unwrap();
    let pause = |paused: bool| {
        c.req(reqwest::Method::PUT, r, "/v1/replication/paused")
            .json(&serde_json::json!({ "paused": paused }))
            .sent()
    };

    assert_eq!(pause(true).await.status(), 200);
    let want = format!("replication paused on {r}");
    let (v, line) = status_until(&c, a, 1, "keel status degraded: paused", |reason| reason == want).await;
    assert_eq!(v["verdict"], "degraded", "{v}");
    assert_eq!(line, format!("degraded: {want}"));

    // The paused replica falls behind; past max_lag_on_failover it could not be promoted.
    c.patch_config(primary, serde_json::json!({"max_lag_on_failover": 2}))
        .await;
    for i in 0..4 {
        let w = c.put(primary, &format!("lag{i}"), "x").await;
        assert!(w.status().is_success(), "write lag{i}: {}", w.status());
    }
    let lag = format!("replica {r} lags ");
    let (_, line) = status_until(&c, a, 1, "keel status degraded: paused and lagging", |reason| {
        reason.starts_with(&format!("{want}; {lag}"))
            && reason.ends_with("entries, more than max_lag_on_failover 2: it cannot be promoted")
    })
    .await;
    assert!(line.starts_with(&format!("degraded: {want}; {lag}")), "{line}");

    assert_eq!(pause(false).await.status(), 200);
    c.wait_for(T, "keel status healthy after resuming", || async { healthy(&c, a) })
        .await;

    // No failover possible: maintenance on, then the primary dies.
    let (code, out, err) = keel(&c, a, &["maintenance", "on"]);
    assert_eq!(code, 0, "{out}{err}");
    c.kill(primary);
    let a = c.node(r).url();
    let (v, line) = status_until(
        &c,
        &a,
        2,
        "keel status critical: no primary, failover blocked",
        |reason| {
            reason.starts_with(&format!(
                "no primary: primary {primary} did not answer; failover blocked: "
            )) && reason.contains("maintenance mode is on")
                && reason.ends_with(&format!("; voter {primary} unreachable"))
        },
    )
    .await;
    assert_eq!(v["verdict"], "critical", "{v}");
    assert!(line.starts_with("critical: no primary"), "{line}");
}

/// `keel kv put` (a key for the reads below), `status` and `members list`.
async fn status_and_members(c: &Cluster, a: &str, primary: u64) {
    // A key to read, written with --output json (write commands take it too).
    let v = json(c, a, &["kv", "put", "greeting", "hello"], 0);
    assert_eq!(v["version"], 1, "{v}");
    assert!(v["position"].is_string(), "{v}");

    // status: healthy once every member answers.
    let v = c
        .wait_for(T, "keel status --output json healthy", || async { healthy(c, a) })
        .await;
    assert_eq!(v["nodes"].as_object().unwrap().len(), 3, "{v}");
    assert_eq!(v["cluster"]["primary"]["node"], primary, "{v}");
    assert_eq!(v["reason"], "", "{v}");
    let t = table(c, a, &["status"], 0, "cluster");
    let columns = "NODE ROLE RAFT TERM LEADER REACHABLE APPLIED VOTER API";
    assert!(
        t.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>()
            == columns.split_whitespace().collect::<Vec<_>>(),
        "{t}"
    );
    assert_eq!(t.lines().last(), Some("healthy"), "{t}");
    assert_eq!(t.lines().count(), 2 + 3 + 1, "{t}");

    // members list
    let v = json(c, a, &["members", "list"], 0);
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{v}");
    let t = table(
        c,
        a,
        &["members", "list"],
        0,
        "ID VOTER REACHABLE API PEER NOFAILOVER PRIORITY",
    );
    assert_eq!(t.lines().count(), 4, "{t}");
}

/// `history`, `kv get`, `kv list` and `diverged list`.
fn history_kv_and_diverged(c: &Cluster, a: &str) {
    // history: the bootstrap promotion.
    let v = json(c, a, &["history"], 0);
    let h = v["history"].as_array().unwrap();
    assert!(!h.is_empty() && h[0]["to"].is_u64() && h[0]["epoch"].is_u64(), "{v}");
    let t = table(c, a, &["history"], 0, "EPOCH FROM TO REASON AT");
    assert_eq!(t.lines().count(), 1 + h.len(), "{t}");

    // kv get: JSON with value and metadata; the table form is the raw value.
    let v = json(c, a, &["kv", "get", "greeting"], 0);
    assert_eq!(
        (v["key"].as_str(), v["value"].as_str(), v["version"].as_u64()),
        (Some("greeting"), Some("hello"), Some(1)),
        "{v}"
    );
    assert!(v["epoch"].is_u64() && v["position"].is_string(), "{v}");
    let (code, out, err) = keel(c, a, &["kv", "get", "greeting", "--output", "table"]);
    assert_eq!((code, out.as_str()), (0, "hello"), "{err}");

    // kv list
    let v = json(c, a, &["kv", "list"], 0);
    assert_eq!(v["items"][0]["key"], "greeting", "{v}");
    assert_eq!(v["items"][0]["size"], 5, "{v}");
    assert!(v["next"].is_null(), "{v}");
    let t = table(c, a, &["kv", "list"], 0, "KEY VERSION SIZE");
    assert_eq!(
        t.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["greeting", "1", "5"]),
        "{t}"
    );

    // diverged list: nothing rolled back.
    let v = json(c, a, &["diverged", "list"], 0);
    assert_eq!(v["diverged"], serde_json::json!([]), "{v}");
    let t = table(
        c,
        a,
        &["diverged", "list"],
        0,
        "ROLLED_BACK_AT POSITION KEY DELETED VALUE",
    );
    assert_eq!(t.lines().count(), 1, "{t}");
}

/// `gitsync status`: every node on the same commit.
async fn gitsync_status(c: &Cluster, a: &str) {
    let v = c
        .wait_for(T, "keel gitsync status converged", || async {
            let (code, out, _) = keel(c, a, &["gitsync", "status", "--output", "json"]);
            let v: Value = serde_json::from_str(&out).ok()?;
            (code == 0 && v["converged"] == true).then_some(v)
        })
        .await;
    let commits: Vec<&str> = v["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|g| g["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits.len(), 3, "{v}");
    assert!(commits.iter().all(|c| *c == commits[0] && c.len() == 40), "{v}");
    let t = table(
        c,
        a,
        &["gitsync", "status"],
        0,
        "NODE STATE COMMIT LAST SUCCESS LAST ERROR",
    );
    assert_eq!(t.lines().last(), Some("converged"), "{t}");
}

/// `--output` is global and checked; errors go to stderr with a hint; nothing listening is exit 2.
fn output_flag_and_errors(c: &Cluster, a: &str) {
    // --output is global: accepted before the subcommand too.
    let out = c.cli(&["--output", "json", "--addr", a, "members", "list"]);
    assert!(serde_json::from_slice::<Value>(&out.stdout).is_ok(), "{}", stdout(&out));
    // And checked.
    let out = c.cli(&["--addr", a, "members", "list", "--output", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("possible values: table, json"),
        "{}",
        stderr(&out)
    );

    // Errors go to stderr, stdout stays empty (even with --output json), and they say what to do.
    for (args, code, hint) in [
        (vec!["kv", "get", "nope", "--output", "json"], 1, "keel kv list"),
        (vec!["members", "promote", "99"], 1, "keel members list"),
        (vec!["kv", "cas", "greeting", "x", "--version", "7"], 1, "--output json"),
        (vec!["failover", "--to", "99"], 1, "keel members list"),
    ] {
        let (got, out, err) = keel(c, a, &args);
        assert_eq!(got, code, "keel {args:?}: {out}{err}");
        assert!(out.is_empty(), "keel {args:?} printed to stdout: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 2 && lines[0].starts_with("error: "),
            "keel {args:?}: {err}"
        );
        assert!(
            lines[1].starts_with("hint: ") && lines[1].contains(hint),
            "keel {args:?}: {err}"
        );
    }
    // Nothing listening: exit 2 for status (Nagios critical), with a hint.
    let dead = format!("{}:{}", c.ip, free_port(&c.ip));
    let (got, _, err) = keel(c, &dead, &["status", "--output", "json"]);
    assert_eq!(got, 2, "{err}");
    assert!(err.contains("cannot reach") && err.contains("hint:"), "{err}");
}
