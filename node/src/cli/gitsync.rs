//! `keel gitsync status|sync`.

use super::*;

pub(crate) async fn gitsync_sync(api: &Api, accept_reset: bool, output: OutputFormat) -> Result<i32, CallError> {
    let path = if accept_reset {
        "/v1/gitsync/sync?accept_reset=true"
    } else {
        "/v1/gitsync/sync"
    };
    let answer = api.call(Method::POST, path, None).await?;
    answered(&answer, output, |a| {
        format!(
            "node {}: {} at {}\n",
            cell(&a["node_id"]),
            cell(&a["outcome"]["change"]),
            short_sha(&a["outcome"]["commit"]["sha"])
        )
    })
}

pub(crate) fn short_sha(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".to_string())
}

/// What `keel gitsync status` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GitSyncVerdict {
    /// Every node answered and serves the same commit.
    Converged,
    /// A node did not answer, serves nothing yet, or serves another commit (or has Git Sync off
    /// while others have it on).
    NotConverged,
    /// Every node that answered has Git Sync disabled: there is nothing to converge.
    Off,
}

impl GitSyncVerdict {
    fn as_str(self) -> &'static str {
        match self {
            GitSyncVerdict::Converged => "converged",
            GitSyncVerdict::NotConverged => "not_converged",
            GitSyncVerdict::Off => "off",
        }
    }

    /// 0 converged or off (nothing is wrong), 1 not converged.
    fn exit_code(self) -> i32 {
        match self {
            GitSyncVerdict::Converged | GitSyncVerdict::Off => EXIT_OK,
            GitSyncVerdict::NotConverged => EXIT_ERROR,
        }
    }
}

/// Every node's Git Sync state side by side; exit 1 unless all reachable nodes serve one commit, or
/// Git Sync is off on every node that answered.
pub(crate) async fn gitsync_status(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let cluster = api.call(Method::GET, "/v1/cluster", None).await?;
    let statuses = fetch_statuses(api, &cluster).await;
    let (verdict, text) = render_gitsync(&statuses);
    match output {
        OutputFormat::Json => {
            let nodes: Map<String, Value> = statuses
                .iter()
                .map(|(id, s)| {
                    (
                        id.to_string(),
                        s.as_ref().map(|s| s["gitsync"].clone()).unwrap_or(Value::Null),
                    )
                })
                .collect();
            print_json(&json!({
                "nodes": nodes,
                "converged": verdict == GitSyncVerdict::Converged,
                "state": verdict.as_str(),
            }));
        }
        OutputFormat::Table => print_out(&text),
    }
    Ok(verdict.exit_code())
}

/// The table and the verdict: converged when every node serves the same commit; off when every node
/// that answered has Git Sync disabled (then the table's last line says so).
pub(crate) fn render_gitsync(statuses: &BTreeMap<u64, Option<Value>>) -> (GitSyncVerdict, String) {
    let mut commits = BTreeSet::new();
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|(id, s)| match s.as_ref().map(|s| &s["gitsync"]) {
            Some(g) if g.is_object() => {
                commits.insert(g["commit"].as_str().unwrap_or("").to_string());
                vec![
                    id.to_string(),
                    cell(&g["state"]),
                    short_sha(&g["commit"]),
                    g["last_success_at_ms"]
                        .as_u64()
                        .map(crate::util::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    g["last_error"].as_str().unwrap_or("-").chars().take(60).collect(),
                ]
            }
            Some(_) => vec![id.to_string(), "disabled".into(), "-".into(), "-".into(), "-".into()],
            None => vec![id.to_string(), "unreachable".into(), "-".into(), "-".into(), "-".into()],
        })
        .collect();
    let answered = rows.iter().filter(|r| r[1] != "unreachable").count();
    let verdict = if answered > 0 && rows.iter().all(|r| r[1] == "disabled" || r[1] == "unreachable") {
        GitSyncVerdict::Off
    } else if commits.len() == 1
        && !commits.contains("")
        && rows.iter().all(|r| r[1] != "unreachable" && r[1] != "disabled")
    {
        GitSyncVerdict::Converged
    } else {
        GitSyncVerdict::NotConverged
    };
    let mut out = render_table(&["NODE", "STATE", "COMMIT", "LAST SUCCESS", "LAST ERROR"], &rows);
    out.push_str(match verdict {
        GitSyncVerdict::Converged => "converged\n",
        GitSyncVerdict::NotConverged => "not converged\n",
        GitSyncVerdict::Off => "Git Sync is off (no node runs with --gitsync-repo)\n",
    });
    (verdict, out)
}
