//! `keel members`, `history`, `maintenance`, `switchover` and `failover`.

use super::*;

pub(crate) fn render_members(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = member_list(answer)
        .into_iter()
        .map(|m| {
            vec![
                cell(&m["id"]),
                cell(&m["voter"]),
                cell(&m["reachable"]),
                cell(&m["api_addr"]),
                cell(&m["peer_addr"]),
                cell(&m["tags"]["nofailover"]),
                cell(&m["tags"]["priority"]),
            ]
        })
        .collect();
    render_table(
        &["ID", "VOTER", "REACHABLE", "API", "PEER", "NOFAILOVER", "PRIORITY"],
        &rows,
    )
}

/// `voter` or `learner`, from a member object.
pub(crate) fn member_kind(member: &Value) -> &'static str {
    if member["voter"].as_bool().unwrap_or(false) {
        "voter"
    } else {
        "learner"
    }
}

pub(crate) async fn members(api: &Api, cmd: MembersCommand, output: OutputFormat) -> Result<i32, CallError> {
    let (answer, confirmation) = match cmd {
        MembersCommand::List => {
            let answer = api.call(Method::GET, "/v1/members", None).await?;
            let table = render_members(&answer);
            (answer, table)
        }
        MembersCommand::Add {
            id,
            api_addr,
            peer_addr,
        } => {
            let body = json!({"id": id, "api_addr": api_addr, "peer_addr": peer_addr});
            let answer = api.call(Method::POST, "/v1/members", Some(body)).await?;
            let line = format!(
                "added member {id} as {} (api {api_addr}, peer {peer_addr})\n",
                member_kind(&answer["member"])
            );
            (answer, line)
        }
        MembersCommand::Remove { id, force } => {
            let answer = api
                .call(Method::DELETE, &format!("/v1/members/{id}?force={force}"), None)
                .await?;
            (answer, format!("removed member {id}\n"))
        }
        MembersCommand::Tag {
            id,
            nofailover,
            priority,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = nofailover {
                body.insert("nofailover".into(), json!(n));
            }
            if let Some(p) = priority {
                body.insert("priority".into(), json!(p));
            }
            let answer = api
                .call(
                    Method::PUT,
                    &format!("/v1/members/{id}/tags"),
                    Some(Value::Object(body)),
                )
                .await?;
            let t = &answer["member"]["tags"];
            let line = format!(
                "member {id}: nofailover {}, priority {}\n",
                cell(&t["nofailover"]),
                cell(&t["priority"])
            );
            (answer, line)
        }
        MembersCommand::Promote { id } => {
            let answer = api
                .call(Method::POST, &format!("/v1/members/{id}/promote"), None)
                .await?;
            let line = format!("member {id} is now a {}\n", member_kind(&answer["member"]));
            (answer, line)
        }
    };
    answered(&answer, output, |_| confirmation)
}

pub(crate) fn render_history(answer: &Value) -> String {
    // With managed Redis the answer lists what old masters lost: one more column.
    let redis = answer.get("redis_lost_unanswered").is_some();
    let rows: Vec<Vec<String>> = array(answer, "history")
        .iter()
        .map(|h| {
            let at = if h["at"].is_null() { &h["at_ms"] } else { &h["at"] };
            let mut row = vec![
                cell(&h["epoch"]),
                cell(&h["from"]),
                cell(&h["to"]),
                cell(&h["reason"]),
                cell(at),
            ];
            if redis {
                row.push(redis_lost(&h["redis_lost"]));
            }
            row
        })
        .collect();
    let mut head = vec!["EPOCH", "FROM", "TO", "REASON", "AT"];
    if redis {
        head.push("REDIS LOST");
    }
    let mut out = render_table(&head, &rows);
    for (what, key) in [
        ("lost in failovers no longer listed", "redis_lost_earlier"),
        (
            "members that did not answer (their losses are not shown)",
            "redis_lost_unanswered",
        ),
    ] {
        let items = array(answer, key);
        if !items.is_empty() {
            let shown: Vec<String> = items
                .iter()
                .map(|v| {
                    if v.is_object() {
                        redis_lost(&json!([v]))
                    } else {
                        cell(v)
                    }
                })
                .collect();
            out.push_str(&format!("{what}: {}\n", shown.join(", ")));
        }
    }
    out
}

/// `n1 370 B`, `n1 up to 1418 B` (unknown amount), comma-separated; `-` for none.
fn redis_lost(records: &Value) -> String {
    let parts: Vec<String> = records
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let bytes = cell(&r["loss"]["bytes"]);
            match r["loss"]["kind"].as_str() {
                Some("unknown") => format!("n{} up to {bytes} B", cell(&r["node"])),
                _ => format!("n{} {bytes} B", cell(&r["node"])),
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub(crate) async fn history(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::GET, "/v1/history", None).await?;
    answered(&answer, output, render_history)
}

pub(crate) async fn maintenance(api: &Api, state: OnOff, output: OutputFormat) -> Result<i32, CallError> {
    let enabled = state == OnOff::On;
    let answer = api
        .call(Method::PUT, "/v1/maintenance", Some(json!({"enabled": enabled})))
        .await?;
    answered(&answer, output, |a| {
        let now = a["maintenance"].as_bool().unwrap_or(enabled);
        format!("maintenance {}\n", if now { "on" } else { "off" })
    })
}

pub(crate) async fn promotion(api: &Api, path: &str, body: Value, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::POST, path, Some(body)).await?;
    answered(&answer, output, |a| {
        let was = if a["from"].is_null() {
            "none".to_string()
        } else {
            format!("node {}", a["from"])
        };
        format!("primary is now node {} (epoch {}), was {was}\n", a["to"], a["epoch"])
    })
}
