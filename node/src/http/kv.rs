//! The datastore's HTTP API: `/v1/kv/...` reads, writes, listing, compare-and-set, and
//! `/v1/diverged`.
//!
//! Writes go to the primary. On a replica they are forwarded to the primary's API (as a GHES
//! replica forwards Git requests to the active appliance); a forwarded request carries
//! `Keel-Forwarded: 1` and is never forwarded again. On the primary a write is accepted only
//! under a valid lease for the current epoch, and after it is durable the lease is checked
//! *again* before the answer: a primary paused mid-write (SIGSTOP, swap) whose lease ran out
//! answers 503 `outcome_unknown`, never a false success. In sync mode the answer also waits
//! for `min_acks` replicas to have the write durably, else 503 `outcome_unknown`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_raft::state::ReplicationMode;
use keel_replication::{DataError, WriteOp, MAX_LIST_LIMIT};
use serde_json::json;

use crate::cluster::write::{is_named_primary, unsafe_test_ack_early, write_epoch, SYNC_ACK_TIMEOUT};
use crate::http::error::{ApiError, ApiPath};
use crate::http::{body_bytes, parse_query};
use crate::state::Node;

pub const FORWARDED_HEADER: &str = "keel-forwarded";

impl From<crate::cluster::write::WriteError> for ApiError {
    fn from(e: crate::cluster::write::WriteError) -> ApiError {
        use crate::cluster::write::WriteError as E;
        match e {
            E::NoLease => ApiError::unavailable(
                "no_lease",
                "this node is the primary but holds no valid lease; retry shortly",
            ),
            E::LeaseLapsed => ApiError::unavailable(
                "outcome_unknown",
                "the lease lapsed while the write was being made durable: it may or may not survive a failover",
            ),
            E::NotConfirmed { min_acks, timeout } => ApiError::unavailable(
                "outcome_unknown",
                format!(
                    "durable on the primary but not confirmed by {min_acks} replica(s) within {} ms; it may or may not survive a failover",
                    timeout.as_millis()
                ),
            ),
            E::Data(e) => data_error(e),
        }
    }
}
type ApiResult = Result<Response, ApiError>;

pub(crate) fn data_error(e: DataError) -> ApiError {
    match e {
        DataError::EmptyKey => ApiError::bad_request(e.to_string()),
        DataError::KeyTooLarge { .. } | DataError::ValueTooLarge { .. } => ApiError::too_large(e.to_string()),
        DataError::CasMismatch { .. } => ApiError::conflict("cas_mismatch", e.to_string()),
        DataError::StaleEpoch { .. } => ApiError::unavailable("stale_epoch", e.to_string()),
        DataError::Closed => ApiError::unavailable("shutting_down", e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// Forward this request to the primary's API, or say why not.
pub async fn forward(node: &Node, method: Method, path_and_query: &str, headers: &HeaderMap, body: Bytes) -> ApiResult {
    if headers.contains_key(FORWARDED_HEADER) {
        return Err(ApiError::unavailable(
            "not_primary",
            "forwarded to a node that is not the primary (primary changed?); retry",
        ));
    }
    let view = node.view();
    let state = &view.state;
    let Some(p) = state.primary else {
        return Err(ApiError::unavailable(
            "no_primary",
            "the cluster has no primary right now; retry shortly",
        ));
    };
    let api = state
        .members
        .get(&p.node)
        .map(|m| m.api_addr.clone())
        .unwrap_or_default();
    if api.is_empty() {
        return Err(ApiError::unavailable(
            "no_primary",
            format!("primary {} has not announced its API address yet", p.node),
        ));
    }
    let url = format!("{}{path_and_query}", node.api_url(&api));
    let mut rb = node
        .http
        .request(method, &url)
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_millis(node.config.request_timeout_ms))
        .body(body);
    for h in [axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&h) {
            rb = rb.header(h, v);
        }
    }
    let resp = rb.send().await.map_err(|e| {
        ApiError::unavailable(
            "primary_unreachable",
            format!(
                "could not forward to the primary (node {} at {api}): {}",
                p.node,
                keel_raft::network::error_chain(&e)
            ),
        )
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = axum::http::Response::builder().status(status);
    for (k, v) in resp.headers() {
        if k.as_str().starts_with("keel-") || k == axum::http::header::CONTENT_TYPE {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ApiError::unavailable("primary_unreachable", e.to_string()))?;
    out.body(axum::body::Body::from(bytes))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A write on this node, answered: 201 (new key) or 200 with the version, position and epoch in
/// the body and the `Keel-*` headers.
async fn do_write(node: &Node, op: WriteOp) -> ApiResult {
    let w = crate::cluster::write::write(node, op).await?;
    let status = if w.result.existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut r = (
        status,
        Json(json!({"version": w.result.version, "position": w.result.pos.to_string(), "epoch": w.epoch})),
    )
        .into_response();
    set_header(&mut r, "keel-version", w.result.version.to_string());
    set_header(&mut r, "keel-epoch", w.epoch.to_string());
    set_header(&mut r, "keel-position", w.result.pos.to_string());
    Ok(r)
}

fn set_header(r: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(name, v);
    }
}

fn path_and_query(key: &str, q: &Option<String>) -> String {
    let mut p = format!("/v1/kv/{}", encode_path(key));
    if let Some(q) = q {
        p.push('?');
        p.push_str(q);
    }
    p
}

/// Percent-encode a key for use in a URL path (unreserved characters stay as they are).
pub fn encode_path(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            // `/` is encoded too: the HTTP client would otherwise resolve `.`/`..` segments
            // of a key; axum decodes `%2F` back into the key.
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub async fn put(
    State(node): State<Arc<Node>>,
    ApiPath(key): ApiPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_bytes(body)?;
    if !is_named_primary(&node) {
        return forward(&node, Method::PUT, &path_and_query(&key, &q), &headers, body).await;
    }
    do_write(
        &node,
        WriteOp::Put {
            key,
            value: body.to_vec(),
        },
    )
    .await
}

pub async fn delete(
    State(node): State<Arc<Node>>,
    ApiPath(key): ApiPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    if !is_named_primary(&node) {
        return forward(&node, Method::DELETE, &path_and_query(&key, &q), &headers, Bytes::new()).await;
    }
    // Deleting an absent key changes nothing: answer 404 without logging an entry.
    let store = node.repl.store.clone();
    let k = key.clone();
    let exists = tokio::task::spawn_blocking(move || store.get(&k))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(data_error)?
        .is_some();
    if !exists {
        return Err(ApiError::not_found(format!("no key {key:?}")));
    }
    do_write(&node, WriteOp::Delete { key }).await
}

/// `POST /v1/kv/{key}/cas?version=N`.
pub async fn post(
    State(node): State<Arc<Node>>,
    ApiPath(path): ApiPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Some(key) = path.strip_suffix("/cas") else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST is only for compare-and-set: POST /v1/kv/{key}/cas?version=N",
        ));
    };
    let body = body_bytes(body)?;
    let query = parse_query(q.clone());
    let version = query
        .get("version")
        .ok_or_else(|| ApiError::bad_request("compare-and-set needs ?version=N (0 = the key must not exist)"))?
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("version must be a non-negative integer"))?;
    if !is_named_primary(&node) {
        return forward(&node, Method::POST, &path_and_query(&path, &q), &headers, body).await;
    }
    do_write(
        &node,
        WriteOp::Cas {
            key: key.to_string(),
            expected_version: version,
            value: body.to_vec(),
        },
    )
    .await
}

pub async fn get(
    State(node): State<Arc<Node>>,
    ApiPath(key): ApiPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let query = parse_query(q.clone());
    let primary_read = match query.get("consistency").map(String::as_str) {
        None | Some("local") => false,
        Some("primary") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency={other:?}: expected local or primary"
            )))
        }
    };
    if primary_read {
        if !is_named_primary(&node) {
            return forward(&node, Method::GET, &path_and_query(&key, &q), &headers, Bytes::new()).await;
        }
        if write_epoch(&node).is_none() {
            return Err(ApiError::unavailable(
                "no_lease",
                "primary read refused: this node holds no valid lease",
            ));
        }
    }
    let store = node.repl.store.clone();
    let k = key.clone();
    let found = tokio::task::spawn_blocking(move || store.get(&k))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(data_error)?;
    if primary_read && !unsafe_test_ack_early() {
        confirm_primary_read(&node).await?;
    }
    let epoch = node.view().state.epoch();
    let mut r = match found {
        Some((value, meta)) => {
            let mut r = (StatusCode::OK, value).into_response();
            set_header(&mut r, "keel-version", meta.version.to_string());
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => ApiError::not_found(format!("no key {key:?}")).into_response(),
    };
    set_header(&mut r, "keel-epoch", epoch.to_string());
    set_header(&mut r, "keel-position", node.repl.position().to_string());
    if !is_named_primary(&node) {
        if let Some(lag) = node.repl.lag_ms() {
            set_header(&mut r, "keel-lag-ms", lag.to_string());
        }
    }
    Ok(r)
}

/// Before a primary read is answered: in sync mode, everything it may have seen (up to the
/// head now, after the read) must be on `min_acks` replicas, or a failover could lose a value
/// the read returned (found by the chaos harness: a read saw a write that was still waiting for
/// its replica acks, the primary was killed, and the register went back). And the lease must
/// still be valid, as for writes: a read delayed past the lease (a pause) may miss newer writes.
async fn confirm_primary_read(node: &Node) -> Result<(), ApiError> {
    let cfg = node.view().state.config.clone();
    if cfg.replication_mode == ReplicationMode::Sync {
        // Visible, not only durable: with early visibility the read may have seen a batch that is
        // not durable here yet.
        let head = node.repl.store.visible_position();
        if !node.repl.wait_acks(head, cfg.min_acks, SYNC_ACK_TIMEOUT).await {
            return Err(ApiError::unavailable(
                "not_replicated",
                format!(
                    "primary read refused: the latest writes are not yet confirmed by {} replica(s)",
                    cfg.min_acks
                ),
            ));
        }
    }
    if write_epoch(node).is_none() {
        return Err(ApiError::unavailable(
            "no_lease",
            "primary read refused: the lease lapsed while reading",
        ));
    }
    Ok(())
}

/// `/v1/kv/` with nothing after the slash.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("the key is empty: use /v1/kv/{key} (or GET /v1/kv?prefix= to list)")
}

/// `GET /v1/kv?prefix=&limit=&after=`.
pub async fn list(State(node): State<Arc<Node>>, RawQuery(q): RawQuery) -> ApiResult {
    let query = parse_query(q);
    let decode =
        |s: &String| percent_decode(s).ok_or_else(|| ApiError::bad_request(format!("bad percent-encoding in {s:?}")));
    let prefix = query.get("prefix").map(decode).transpose()?.unwrap_or_default();
    let after = query.get("after").map(decode).transpose()?;
    let limit = match query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a positive integer"))?,
        None => 100,
    };
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let store = node.repl.store.clone();
    let page = tokio::task::spawn_blocking(move || store.list(&prefix, after.as_deref(), limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(data_error)?;
    let mut r = Json(json!({"items": page.items, "next": page.next})).into_response();
    set_header(&mut r, "keel-position", node.repl.position().to_string());
    Ok(r)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /v1/diverged`: entries an old primary rolled back when it rejoined.
pub async fn diverged(State(node): State<Arc<Node>>) -> ApiResult {
    let store = node.repl.store.clone();
    let items = tokio::task::spawn_blocking(move || store.diverged(1000))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(data_error)?;
    let items: Vec<_> = items
        .into_iter()
        .map(|(at, e)| {
            json!({
                "rolled_back_at": crate::util::rfc3339(at),
                "position": e.pos.to_string(),
                "key": e.key,
                "value_base64": e.value.as_deref().map(base64),
                "deleted": e.value.is_none(),
            })
        })
        .collect();
    Ok(Json(json!({"diverged": items})).into_response())
}

/// Standard base64 with padding (the `base64` crate).
fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_base64() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(encode_path("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(encode_path("x/../y"), "x%2F..%2Fy");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
        assert_eq!(base64(b""), "");
    }
}
