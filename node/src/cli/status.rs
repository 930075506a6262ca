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
/// member (`None`: it did not answer), with every reason that is not healthy, most severe first, joined
/// by "; " (empty when healthy).
///
/// Critical: nobody answered, no member that answered knows a leader, no member holds the primary's
/// lease, or failover is blocked while there is no primary. Degraded: a voter did not answer, the
/// members disagree on the leader, failover is blocked (while a primary exists), a member's
/// replication is paused, a voter lags the most advanced one by more than `max_lag_on_failover`
/// entries (so it cannot be promoted), or a member's Git Sync is in conflict.
///
/// With a managed service (`service` in the statuses, e.g. Redis): critical when the primary's
/// service is not the master (down, fenced or a replica: writes to it fail); degraded when another
/// member's service is down.
pub fn verdict(cluster: &Value, statuses: &BTreeMap<u64, Option<Value>>) -> (Verdict, String) {
    let answered: BTreeMap<u64, &Value> = statuses
        .iter()
        .filter_map(|(id, s)| s.as_ref().map(|s| (*id, s)))
        .collect();
    if answered.is_empty() {
        return (Verdict::Critical, "no member answered /v1/status".to_string());
    }
    let voters: BTreeSet<u64> = member_list(cluster)
        .into_iter()
        .filter(|m| m["voter"].as_bool().unwrap_or(true))
        .filter_map(|m| m["id"].as_u64())
        .collect();
    let primary_missing = primary_problem(cluster, &answered);
    let mut problems: Vec<(Verdict, String)> = Vec::new();
    problems.extend(leader_problems(&answered));
    problems.extend(primary_missing.clone().map(|p| (Verdict::Critical, p)));
    let blocked_severity = if primary_missing.is_some() {
        Verdict::Critical
    } else {
        Verdict::Degraded
    };
    problems.extend(
        failover_blocked(cluster, &answered)
            .into_iter()
            .map(|r| (blocked_severity, r)),
    );
    let unreachable: Vec<u64> = voters.iter().copied().filter(|id| !answered.contains_key(id)).collect();
    match unreachable.as_slice() {
        [] => {}
        [id] => problems.push((Verdict::Degraded, format!("voter {id} unreachable"))),
        ids => problems.push((Verdict::Degraded, format!("voters {} unreachable", join_ids(ids)))),
    }
    problems.extend(disagreement(&answered).map(|p| (Verdict::Degraded, p)));
    let paused: Vec<u64> = ids_where(&answered, |s| s["replication"]["paused"] == true);
    if !paused.is_empty() {
        problems.push((
            Verdict::Degraded,
            format!("replication paused on {}", join_ids(&paused)),
        ));
    }
    problems.extend(lagging(cluster, &answered, &voters).map(|p| (Verdict::Degraded, p)));
    let conflicts: Vec<u64> = ids_where(&answered, |s| s["gitsync"]["state"] == "conflict");
    if !conflicts.is_empty() {
        problems.push((
            Verdict::Degraded,
            format!(
                "Git Sync conflict on {} (upstream is not a fast-forward of the served commit)",
                join_ids(&conflicts)
            ),
        ));
    }
    problems.extend(service_problems(&answered));
    // Most severe first; within one severity, the order above.
    problems.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    let verdict = problems.first().map_or(Verdict::Healthy, |(v, _)| *v);
    let reasons: Vec<String> = problems.into_iter().map(|(_, r)| r).collect();
    (verdict, reasons.join("; "))
}

/// The managed service's problems: the primary's service is not the master (critical), other
/// members' services are down (degraded). Nothing for members without a `service` object.
fn service_problems(answered: &BTreeMap<u64, &Value>) -> Vec<(Verdict, String)> {
    let mut problems = Vec::new();
    let primaries = ids_where(answered, |s| s["role"] == "primary");
    for id in &primaries {
        let svc = &answered[id]["service"];
        if svc.is_object() && svc["role"] != "master" {
            problems.push((
                Verdict::Critical,
                format!(
                    "primary {id}'s {} is not the master (role {})",
                    svc["kind"].as_str().unwrap_or("service"),
                    svc["role"].as_str().unwrap_or("unknown")
                ),
            ));
        }
    }
    let is_down = |s: &Value| {
        let svc = &s["service"];
        svc.is_object() && (svc["role"] == "down" || svc["healthy"] == false)
    };
    let down: Vec<u64> = ids_where(answered, is_down)
        .into_iter()
        .filter(|id| !primaries.contains(id))
        .collect();
    if !down.is_empty() {
        let kind = answered[&down[0]]["service"]["kind"].as_str().unwrap_or("service");
        problems.push((Verdict::Degraded, format!("{kind} down on {}", join_ids(&down))));
    }
    problems
}

/// The ids (ascending) of the members whose status satisfies `f`.
fn ids_where(answered: &BTreeMap<u64, &Value>, f: impl Fn(&Value) -> bool) -> Vec<u64> {
    answered.iter().filter(|(_, s)| f(s)).map(|(id, _)| *id).collect()
}

/// The leader each member reports, `None` when it knows none or cannot reach a quorum of voters
/// (a lone leader keeps claiming leadership until it hears otherwise).
fn leader_seen(status: &Value) -> Option<u64> {
    status["raft"]["leader"]
        .as_u64()
        .filter(|_| status["raft"]["quorum"] != false)
}

/// Critical "no leader" when no member that answered knows one.
fn leader_problems(answered: &BTreeMap<u64, &Value>) -> Option<(Verdict, String)> {
    answered
        .values()
        .all(|s| leader_seen(s).is_none())
        .then(|| (Verdict::Critical, "no leader".to_string()))
}

/// The members that answered disagree on who leads (some may know none).
fn disagreement(answered: &BTreeMap<u64, &Value>) -> Option<String> {
    let leaders: BTreeSet<Option<u64>> = answered.values().map(|s| leader_seen(s)).collect();
    (leaders.len() > 1).then(|| {
        let views: Vec<String> = answered
            .iter()
            .map(|(id, s)| {
                format!(
                    "{id} says {}",
                    leader_seen(s).map_or("none".to_string(), |l| l.to_string())
                )
            })
            .collect();
        format!("members disagree on the leader ({})", views.join(", "))
    })
}

/// Why there is no primary, if no member that answered holds the primary's lease (role `primary`):
/// none is named, the named one did not answer, or it answered without a valid lease.
fn primary_problem(cluster: &Value, answered: &BTreeMap<u64, &Value>) -> Option<String> {
    if answered.values().any(|s| s["role"] == "primary") {
        return None;
    }
    let named = cluster["primary"]["node"]
        .as_u64()
        .or_else(|| answered.values().find_map(|s| s["primary"]["node"].as_u64()));
    Some(match named {
        None => "no primary".to_string(),
        Some(p) => match answered.get(&p) {
            None => format!("no primary: primary {p} did not answer"),
            Some(s) => format!(
                "no primary: {p} is named primary but holds no lease (role {})",
                s["role"].as_str().unwrap_or("unknown")
            ),
        },
    })
}

/// `failover blocked: <why>` for every distinct reason the coordinator reports (only the Raft
/// leader's answers carry one, so every member's is read, and the `/v1/cluster` answer's).
fn failover_blocked(cluster: &Value, answered: &BTreeMap<u64, &Value>) -> Vec<String> {
    let mut reasons: Vec<&str> = Vec::new();
    let all = std::iter::once(&cluster["failover_blocked"]).chain(answered.values().map(|s| &s["failover_blocked"]));
    for r in all.filter_map(Value::as_str) {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    reasons.into_iter().map(|r| format!("failover blocked: {r}")).collect()
}

/// The sequence number of a `replication.position` (`"epoch:seq"`).
fn position_seq(status: &Value) -> Option<u64> {
    let pos = status["replication"]["position"].as_str()?;
    pos.split_once(':')?.1.parse().ok()
}

/// Voters further behind the most advanced voter that answered than `max_lag_on_failover` entries:
/// the failover controller passes them over (the same comparison as `cluster::failover`).
fn lagging(cluster: &Value, answered: &BTreeMap<u64, &Value>, voters: &BTreeSet<u64>) -> Option<String> {
    let max_lag = cluster["config"]["max_lag_on_failover"].as_u64()?;
    let seqs: BTreeMap<u64, u64> = answered
        .iter()
        .filter(|(id, _)| voters.contains(id))
        .filter_map(|(id, s)| position_seq(s).map(|seq| (*id, seq)))
        .collect();
    let best = *seqs.values().max()?;
    let behind: Vec<(u64, u64)> = seqs
        .iter()
        .map(|(id, seq)| (*id, best - seq))
        .filter(|(_, lag)| *lag > max_lag)
        .collect();
    let list: Vec<String> = behind.iter().map(|(id, lag)| format!("{id} ({lag} entries)")).collect();
    match behind.as_slice() {
        [] => None,
        [(id, lag)] => Some(format!(
            "replica {id} lags {lag} entries, more than max_lag_on_failover {max_lag}: it cannot be promoted"
        )),
        _ => Some(format!(
            "replicas {} lag more than max_lag_on_failover {max_lag}: they cannot be promoted",
            list.join(", ")
        )),
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

    // The service columns only when some member runs a managed service.
    let with_service = statuses.values().flatten().any(|s| s["service"].is_object());
    let rows: Vec<Vec<String>> = member_list(cluster)
        .into_iter()
        .map(|m| {
            let id = m["id"].as_u64();
            let status = id.and_then(|id| statuses.get(&id)).and_then(Option::as_ref);
            let per_node = |f: &dyn Fn(&Value) -> &Value| status.map_or("-".to_string(), |s| cell(f(s)));
            let mut row = vec![
                cell(&m["id"]),
                per_node(&|s| &s["role"]),
                per_node(&|s| &s["raft"]["state"]),
                per_node(&|s| &s["raft"]["term"]),
                per_node(&|s| &s["raft"]["leader"]),
                if status.is_some() { "yes" } else { "no" }.to_string(),
                per_node(&|s| &s["raft"]["last_applied"]),
                cell(&m["voter"]),
                cell(&m["api_addr"]),
            ];
            if with_service {
                row.extend(service_cells(status.map(|s| &s["service"])));
            }
            row
        })
        .collect();
    let mut headers = vec![
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
    if with_service {
        headers.extend(SERVICE_HEADERS);
    }
    out.push_str(&render_table(&headers, &rows));
    out.push_str(&verdict_line(verdict, reason));
    out.push('\n');
    out
}

/// The service columns of `keel status`.
const SERVICE_HEADERS: [&str; 4] = ["SERVICE", "OFFSET", "LAG", "HEALTHY"];

/// A member's service cells: `kind:role` (`redis:master`), the replication offset, the lag in
/// seconds (`2s`) and healthy yes/no; `-` for a member that did not answer or runs no service.
fn service_cells(svc: Option<&Value>) -> [String; 4] {
    match svc.filter(|s| s.is_object()) {
        None => ["-", "-", "-", "-"].map(String::from),
        Some(s) => [
            format!(
                "{}:{}",
                s["kind"].as_str().unwrap_or("?"),
                s["role"].as_str().unwrap_or("?")
            ),
            cell(&s["offset"]),
            s["lag"].as_u64().map_or("-".to_string(), |l| format!("{l}s")),
            cell(&s["healthy"]),
        ],
    }
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

#[cfg(test)]
#[path = "status_tests.rs"]
pub(crate) mod tests;
