//! `keel status`: every node's view, and the Nagios verdict (a pure function).

use super::*;

/// Outcome of `keel status`, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Healthy,
    Degraded,
    Critical,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Critical => "critical",
        }
    }

    /// Nagios exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => EXIT_OK,
            Verdict::Degraded => EXIT_ERROR,
            Verdict::Critical => EXIT_CRITICAL,
        }
    }
}

/// Health of the cluster from the `/v1/cluster` answer of one node and the `/v1/status` answer of every
/// member (`None`: it did not answer). Critical when no member that answered knows a leader; degraded when
/// a voter did not answer or the members that answered disagree on who leads; healthy otherwise. The
/// string is the reason, empty when healthy.
pub fn verdict(cluster: &Value, statuses: &BTreeMap<u64, Option<Value>>) -> (Verdict, String) {
    let reports: BTreeMap<u64, Option<u64>> = statuses
        .iter()
        .filter_map(|(id, status)| {
            // A node that cannot reach a quorum of voters has no usable leader, whatever it
            // last heard (a lone leader keeps claiming leadership until it hears otherwise).
            status.as_ref().map(|s| {
                (
                    *id,
                    s["raft"]["leader"].as_u64().filter(|_| s["raft"]["quorum"] != false),
                )
            })
        })
        .collect();
    if reports.is_empty() {
        return (Verdict::Critical, "no member answered /v1/status".to_string());
    }
    if reports.values().all(Option::is_none) {
        return (Verdict::Critical, "no leader".to_string());
    }

    let mut problems = Vec::new();
    let unreachable_voters: Vec<u64> = member_list(cluster)
        .into_iter()
        .filter(|m| m["voter"].as_bool().unwrap_or(true))
        .filter_map(|m| m["id"].as_u64())
        .filter(|id| statuses.get(id).is_none_or(Option::is_none))
        .collect();
    match unreachable_voters.as_slice() {
        [] => {}
        [id] => problems.push(format!("voter {id} unreachable")),
        ids => problems.push(format!("voters {} unreachable", join_ids(ids))),
    }
    let leaders: BTreeSet<Option<u64>> = reports.values().copied().collect();
    if leaders.len() > 1 {
        let views: Vec<String> = reports
            .iter()
            .map(|(id, leader)| format!("{id} says {}", leader.map_or("none".to_string(), |l| l.to_string())))
            .collect();
        problems.push(format!("members disagree on the leader ({})", views.join(", ")));
    }
    if problems.is_empty() {
        (Verdict::Healthy, String::new())
    } else {
        (Verdict::Degraded, problems.join("; "))
    }
}

/// `healthy`, or `degraded: <reason>`.
pub(crate) fn verdict_line(v: Verdict, reason: &str) -> String {
    if reason.is_empty() {
        v.as_str().to_string()
    } else {
        format!("{}: {reason}", v.as_str())
    }
}

/// The summary line, the per-node table and the verdict line of `keel status`.
pub(crate) fn render_status(
    cluster: &Value,
    statuses: &BTreeMap<u64, Option<Value>>,
    verdict: Verdict,
    reason: &str,
) -> String {
    let cluster_id = cluster["cluster_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("(none)");
    let leader = cluster["leader"].as_u64().map_or("none".to_string(), |l| l.to_string());
    let primary = match cluster["primary"]["node"].as_u64() {
        Some(node) => format!("primary {node} (epoch {})", cell(&cluster["primary"]["epoch"])),
        None => "primary none".to_string(),
    };
    let maintenance = if cluster["maintenance"].as_bool().unwrap_or(false) {
        "on"
    } else {
        "off"
    };
    let mut out = format!("cluster {cluster_id} — leader {leader}, {primary}, maintenance {maintenance}\n");

    let rows: Vec<Vec<String>> = member_list(cluster)
        .into_iter()
        .map(|m| {
            let id = m["id"].as_u64();
            let status = id.and_then(|id| statuses.get(&id)).and_then(Option::as_ref);
            let per_node = |f: &dyn Fn(&Value) -> &Value| status.map_or("-".to_string(), |s| cell(f(s)));
            vec![
                cell(&m["id"]),
                per_node(&|s| &s["role"]),
                per_node(&|s| &s["raft"]["state"]),
                per_node(&|s| &s["raft"]["term"]),
                per_node(&|s| &s["raft"]["leader"]),
                if status.is_some() { "yes" } else { "no" }.to_string(),
                per_node(&|s| &s["raft"]["last_applied"]),
                cell(&m["voter"]),
                cell(&m["api_addr"]),
            ]
        })
        .collect();
    let headers = [
        "NODE",
        "ROLE",
        "RAFT",
        "TERM",
        "LEADER",
        "REACHABLE",
        "APPLIED",
        "VOTER",
        "API",
    ];
    out.push_str(&render_table(&headers, &rows));
    out.push_str(&verdict_line(verdict, reason));
    out.push('\n');
    out
}

/// `GET /v1/status` of every member at its own API address, concurrently, [`NODE_STATUS_TIMEOUT`] each.
pub(crate) async fn fetch_statuses(api: &Api, cluster: &Value) -> BTreeMap<u64, Option<Value>> {
    let mut set = JoinSet::new();
    let mut statuses = BTreeMap::new();
    for m in member_list(cluster) {
        let Some(id) = m["id"].as_u64() else { continue };
        statuses.insert(id, None);
        // A member that has not announced its API address cannot be asked; it counts as unreachable.
        // Members are reached the way --addr reaches the first one: a TLS cluster is TLS throughout.
        let scheme = if api.base.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let Some(base) = m["api_addr"]
            .as_str()
            .and_then(|a| normalize_addr(&crate::config::normalize_url_scheme(a, scheme)).ok())
        else {
            continue;
        };
        let http = api.http.clone();
        let token = api.token.clone();
        set.spawn(async move {
            let url = format!("{base}/v1/status");
            let status = send(
                &http,
                Method::GET,
                &url,
                token.as_deref(),
                None,
                Some(NODE_STATUS_TIMEOUT),
            )
            .await;
            (id, status.ok())
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((id, status)) = joined {
            statuses.insert(id, status);
        }
    }
    statuses
}

pub(crate) async fn status(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let cluster = api.call(Method::GET, "/v1/cluster", None).await?;
    let statuses = fetch_statuses(api, &cluster).await;
    let (v, reason) = verdict(&cluster, &statuses);
    match output {
        OutputFormat::Json => {
            let nodes: Map<String, Value> = statuses
                .iter()
                .map(|(id, s)| (id.to_string(), s.clone().unwrap_or(Value::Null)))
                .collect();
            print_json(&json!({"cluster": cluster, "nodes": nodes, "verdict": v.as_str(), "reason": reason}));
        }
        OutputFormat::Table => print_out(&render_status(&cluster, &statuses, v, &reason)),
    }
    Ok(v.exit_code())
}
