//! The status page at `GET /ui`: one static HTML page (inline CSS and JS, no external
//! resources) embedded in the binary, and `GET /ui/cluster.json`, the same-origin aggregate
//! it polls every 2 s.
//!
//! The aggregate is `{"served_by", "cluster", "nodes", "errors", "history", "at_ms"}`:
//! `cluster` and `history` are this node's `/v1/cluster` and `/v1/history` answers (the same
//! handlers, called in-process through [`crate::http::router`]); `nodes` maps every member id
//! to its `/v1/status` (this node's in-process, the others' fetched concurrently over HTTP
//! with a 1 s timeout), or `null` with the reason in `errors` when it did not answer. The
//! browser thus talks to one node only and needs no CORS.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_raft::NodeId;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use crate::state::Node;

/// The page itself.
pub const PAGE: &str = include_str!("ui.html");

/// How long a member's `/v1/status` may take before it is shown as not answering.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /ui`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything is inline and same-origin; nothing else may load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /ui/cluster.json`.
pub async fn cluster_json(State(node): State<Arc<Node>>) -> Response {
    let (cluster, history) = tokio::join!(local_get(&node, "/v1/cluster"), local_get(&node, "/v1/history"));
    let cluster = cluster.unwrap_or(Value::Null);
    let history = history
        .ok()
        .and_then(|mut h| h.get_mut("history").map(Value::take))
        .unwrap_or_else(|| json!([]));

    let mut tasks = tokio::task::JoinSet::new();
    for (id, api_addr) in members(&cluster) {
        let node = node.clone();
        tasks.spawn(async move {
            let status = if id == node.id {
                local_get(&node, "/v1/status").await
            } else if api_addr.is_empty() {
                Err(FetchError::NoAddress)
            } else {
                remote_status(&node, &api_addr).await
            };
            (id, status)
        });
    }
    let mut nodes = Map::new();
    let mut errors = Map::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((id, status)) = joined else { continue };
        match status {
            Ok(s) => {
                nodes.insert(id.to_string(), s);
            }
            Err(e) => {
                nodes.insert(id.to_string(), Value::Null);
                errors.insert(id.to_string(), Value::String(e.to_string()));
            }
        }
    }
    let at_ms = crate::util::unix_ms();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "served_by": node.id,
            "at_ms": at_ms,
            "cluster": cluster,
            "nodes": nodes,
            "errors": errors,
            "history": history,
        })),
    )
        .into_response()
}

/// `(id, api_addr)` of every member listed in a `/v1/cluster` answer.
fn members(cluster: &Value) -> Vec<(NodeId, String)> {
    cluster["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    let id = m["id"].as_u64()?;
                    Some((id, m["api_addr"].as_str().unwrap_or_default().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Why one answer for the page could not be had (shown per node under `errors`).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("has not announced its API address yet")]
    NoAddress,
    #[error("{0}")]
    Internal(String),
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
    #[error("{what}: HTTP {status}")]
    Status { what: String, status: StatusCode },
    #[error("no answer from {addr} within {} ms", MEMBER_TIMEOUT.as_millis())]
    Timeout { addr: String },
}

/// A GET answered by this node's own API router, in-process (same handlers, same JSON).
async fn local_get(node: &Arc<Node>, path: &str) -> Result<Value, FetchError> {
    let failed = |reason: String| FetchError::Failed {
        what: path.to_string(),
        reason,
    };
    let req = Request::get(path)
        .body(Body::empty())
        .map_err(|e| FetchError::Internal(e.to_string()))?;
    let resp = crate::http::router(node.clone())
        .oneshot(req)
        .await
        .map_err(|e| FetchError::Internal(e.to_string()))?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            what: path.to_string(),
            status,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))
}

/// Another member's `/v1/status`, or why it could not be had within [`MEMBER_TIMEOUT`].
async fn remote_status(node: &Node, api_addr: &str) -> Result<Value, FetchError> {
    let url = format!("{}/v1/status", node.api_url(api_addr));
    let failed = |reason: String| FetchError::Failed {
        what: api_addr.to_string(),
        reason,
    };
    let resp = node.http.get(&url).timeout(MEMBER_TIMEOUT).send().await.map_err(|e| {
        if e.is_timeout() {
            FetchError::Timeout {
                addr: api_addr.to_string(),
            }
        } else {
            failed(root_cause(&e))
        }
    })?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            what: api_addr.to_string(),
            status: resp.status(),
        });
    }
    resp.json().await.map_err(|e| failed(format!("bad JSON: {e}")))
}

/// The innermost error of a chain ("Connection refused (os error 111)"), which says what
/// happened without reqwest's layers of context.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.contains("<title>Keel cluster status</title>"));
        assert!(PAGE.contains("ui/cluster.json"));
        // No external resources: every fetch and asset is same-origin.
        for bad in ["http://", "https://", "<link ", " src="] {
            assert!(!PAGE.contains(bad), "page references an external resource: {bad}");
        }
    }

    #[test]
    fn members_of_a_cluster_view() {
        let v = json!({"members": [{"id": 1, "api_addr": "a:1"}, {"id": 2, "api_addr": ""}, {"x": 3}]});
        assert_eq!(members(&v), vec![(1, "a:1".to_string()), (2, String::new())]);
        assert!(members(&Value::Null).is_empty());
    }
}
