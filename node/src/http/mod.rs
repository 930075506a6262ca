//! The HTTP API on `--api-addr`: status, cluster view, membership, history, maintenance,
//! and the load-balancer probes. JSON in and out; every error is an [`ApiError`].
//!
//! Layers, outermost first: body size limit (413 before reading a byte too many), request
//! timeout (503 `timeout`), the token check (`api_auth`, with [`crate::auth`]: data-plane tokens on `/v1/kv*`,
//! `/v1/diverged` and `/v1/gitsync/files/*`, 401 or 403; the admin token on mutating admin
//! endpoints, 401).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use keel_raft::state::Request as Command;
use keel_raft::NodeId;
use openraft::ServerState;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{data_plane_access, Access, Verdict};
use crate::cluster::admin::{self, AdminOp, AdminReply, ConfigPatch};
use crate::cluster::members;
use crate::state::{quorum_reachable, role, Node};
use error::{ApiError, ApiPath};

pub mod body;
pub mod error;
pub mod gitsync;
pub mod kv;
pub mod openapi;
pub mod ui;
use crate::util::{bearer_matches, rfc3339};

type ApiResult = Result<Response, ApiError>;

pub fn router(node: Arc<Node>) -> Router {
    let timeout = Duration::from_millis(node.config.request_timeout_ms);
    let limit = node.config.max_body_bytes;
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster))
        .route("/v1/members", get(members_list).post(members_add))
        .route("/v1/members/{id}", delete(members_remove))
        .route("/v1/members/{id}/promote", post(members_promote))
        .route("/v1/members/{id}/tags", put(members_tags))
        .route("/v1/history", get(history))
        .route("/v1/maintenance", put(maintenance))
        .route("/v1/kv", get(crate::http::kv::list))
        .route("/v1/kv/", axum::routing::any(crate::http::kv::empty_key))
        .route(
            "/v1/kv/{*key}",
            get(crate::http::kv::get)
                .put(crate::http::kv::put)
                .delete(crate::http::kv::delete)
                .post(crate::http::kv::post),
        )
        .route("/v1/diverged", get(crate::http::kv::diverged))
        .route("/v1/replication/paused", put(replication_paused))
        .route("/v1/gitsync", get(crate::http::gitsync::status))
        .route("/v1/gitsync/sync", post(crate::http::gitsync::sync))
        .route("/v1/gitsync/webhook", post(crate::http::gitsync::webhook))
        .route(
            "/v1/gitsync/files/{*path}",
            axum::routing::put(crate::http::gitsync::edit).delete(crate::http::gitsync::edit),
        )
        .route("/v1/switchover", post(switchover))
        .route("/v1/failover", post(failover))
        .route("/v1/config", axum::routing::patch(patch_config))
        .route("/v1/backup", get(crate::backup::serve_backup))
        .route("/primary", get(probe_primary))
        .route("/replica", get(probe_replica))
        .route("/metrics", get(metrics))
        .route("/ui", get(crate::http::ui::page))
        .route("/ui/cluster.json", get(crate::http::ui::cluster_json))
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(crate::http::openapi::serve))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; see the API reference in docs/http-api.md or GET /v1/openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .with_state(node.clone())
        .layer(middleware::from_fn_with_state(node, api_auth))
        .layer(middleware::from_fn(move |req, next| timeout_mw(timeout, req, next)))
        .layer(middleware::from_fn(move |req, next| body_limit_mw(limit, req, next)))
        .layer(DefaultBodyLimit::max(limit))
}

/// Endpoints that change cluster state need the admin token (when one is configured).
pub fn requires_admin(method: &Method, path: &str) -> bool {
    let mutating = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    // The data plane has its own tokens (`auth`), webhooks their signature.
    mutating
        && path.starts_with("/v1/")
        && data_plane_access(method.as_str(), path).is_none()
        && path != "/v1/gitsync/webhook"
}

/// The token check, on the token set in force (reloaded on SIGHUP). A forwarded write is checked
/// here on the replica and again on the primary, which gets the client's `Authorization` header
/// (`kv::forward`): the primary never trusts a forward for being one.
async fn api_auth(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let tokens = node.tokens.get();
    let auth = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(access) = data_plane_access(req.method().as_str(), req.uri().path()) {
        let needed = match access {
            Access::Read => "the read, client or admin token",
            Access::Write => "the client or admin token",
        };
        match tokens.check(auth, access) {
            Verdict::Allow => {}
            Verdict::Unauthorized => {
                return ApiError::unauthorized(format!(
                    "this endpoint needs a data-plane token ({needed}): send `Authorization: Bearer <token>` \
                     (keel --token)"
                ))
                .into_response()
            }
            Verdict::Forbidden => {
                return ApiError::forbidden(format!(
                    "the read token cannot write; a write needs {needed} (keel --token)"
                ))
                .into_response()
            }
        }
    } else if let Some(token) = &tokens.admin {
        if requires_admin(req.method(), req.uri().path()) && !bearer_matches(auth, token.expose()) {
            return ApiError::unauthorized(
                "this endpoint needs the admin token: send `Authorization: Bearer <token>` (keel --admin-token)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Bound every request's handling time; used on both listeners.
pub async fn timeout_mw(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!("request not finished within {} ms", timeout.as_millis()),
        )
        .into_response(),
    }
}

/// Refuse a declared oversized body before reading it (chunked bodies are cut off by
/// `DefaultBodyLimit` while reading and reported by [`body_bytes`]).
async fn body_limit_mw(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(format!("request body over the limit of {limit} bytes")).into_response();
    }
    next.run(req).await
}

/// A body, with a read failure mapped to the JSON error format (413 over the limit).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body over the size limit")
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })
}

fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    match raw.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "member id {raw:?} is not a positive integer"
        ))),
    }
}

pub fn parse_query(raw: Option<String>) -> HashMap<String, String> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn parse_bool(name: &str, v: Option<&String>) -> Result<bool, ApiError> {
    match v.map(|s| s.as_str()) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other:?}: expected true or false"
        ))),
    }
}

fn server_state(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Oldest change-log entry still retained (`null` when nothing was trimmed yet).
fn log_start(node: &Node) -> Option<String> {
    match node.repl.store.read_log(Default::default(), 1, 1) {
        Ok(keel_replication::LogRead::Trimmed { oldest_retained }) => oldest_retained.map(|p| p.to_string()),
        _ => None,
    }
}

async fn status(State(node): State<Arc<Node>>) -> Json<Value> {
    let m = node.metrics();
    let view = node.view();
    let voter = m.membership_config.membership().voter_ids().any(|v| v == node.id);
    let datastore = crate::cluster::kv::health(&node).await;
    Json(json!({
        "node_id": node.id,
        "role": role(&node),
        "raft": {
            "state": server_state(m.state),
            "term": m.current_term,
            "leader": m.current_leader,
            "last_applied": m.last_applied.map(|l| l.index),
            "last_log_index": m.last_log_index,
            "voter": voter,
            "quorum": quorum_reachable(&node),
        },
        "primary": view.state.primary,
        "lease_remaining_ms": node.lease.remaining().map(|d| d.as_millis() as u64),
        "failover_blocked": node.coordinator.blocked_reason(),
        "hook": node.hook.status(),
        "maintenance": view.state.maintenance,
        "cluster_id": view.state.cluster_id,
        "api_addr": node.config.advertise_api_addr,
        "peer_addr": node.config.advertise_peer_addr,
        "uptime_ms": node.started.elapsed().as_millis() as u64,
        // `open`: no token of any kind, the data plane takes anyone; `tokens`: it needs one.
        "auth": node.tokens.get().mode(),
        "cluster_id_mismatch": node.cluster_mismatch().map(|(id, m)| json!({"peer": id, "message": m})),
        "replication": {
            "mode": view.state.config.replication_mode,
            "position": node.repl.position().to_string(),
            "lag_ms": if view.state.primary.is_some_and(|p| p.node == node.id) { Some(0) } else { node.repl.lag_ms() },
            "replica": node.repl.replica_status(),
            "paused": node.repl.paused(),
            "acks": node.repl.acks_view(),
            "store": node.repl.store.stats(),
            "log_start": log_start(&node),
            "warning": crate::repl::sync_guarantee_warning(
                view.state.config.replication_mode,
                view.state.config.min_acks,
                m.membership_config.membership().voter_ids().count(),
            ),
        },
        "gitsync": node.gitsync.as_ref().map(|g| g.status()),
        // Managed Redis (`--redis-port`); null without it.
        "service": crate::cluster::service::status(&node),
        // The built-in key-value store as a managed service (kind `kv`), on every node.
        "datastore": datastore,
        "memory": memory(&node),
    }))
}

/// Resident memory and the stores' page cache (`--cache-mb`), for `/v1/status`.
fn memory(node: &Node) -> Value {
    let (cache_used, datastore_budget) = node.repl.store.cache_use();
    json!({
        "rss_bytes": crate::util::rss_bytes(),
        "cache_budget_bytes": node.config.cache_mb << 20,
        "datastore_cache_bytes": datastore_budget,
        "datastore_cache_used_bytes": cache_used,
    })
}

async fn cluster(State(node): State<Arc<Node>>) -> Json<Value> {
    let m = node.metrics();
    let view = node.view();
    let matched = members::matched_indexes(&node);
    let members: Vec<Value> = members::member_views(&node)
        .into_iter()
        .map(|mv| {
            let mut v = serde_json::to_value(&mv).unwrap_or(Value::Null);
            if let Some(i) = matched.get(&mv.id) {
                v["matched_index"] = json!(i);
            }
            v
        })
        .collect();
    Json(json!({
        "cluster_id": view.state.cluster_id,
        "leader": m.current_leader,
        "term": m.current_term,
        "members": members,
        "primary": view.state.primary,
        "maintenance": view.state.maintenance,
        "config": view.state.config,
        "failover_blocked": node.coordinator.blocked_reason(),
    }))
}

async fn members_list(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({ "members": members::member_views(&node) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: NodeId,
    api_addr: String,
    peer_addr: String,
}

fn admin_timeout(node: &Node) -> Duration {
    // Leave room inside the request timeout for the answer to travel back.
    Duration::from_millis(node.config.request_timeout_ms.saturating_sub(500).max(100))
}

async fn members_add(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: AddMember = parse_json(body)?;
    let op = AdminOp::AddMember {
        id: req.id,
        api_addr: req.api_addr,
        peer_addr: req.peer_addr,
    };
    match admin::submit(&node, op, admin_timeout(&node)).await? {
        AdminReply::Member(m) => Ok((StatusCode::CREATED, Json(json!({ "member": m }))).into_response()),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

async fn members_promote(State(node): State<Arc<Node>>, ApiPath(id): ApiPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    match admin::submit(&node, AdminOp::PromoteMember { id }, admin_timeout(&node)).await? {
        AdminReply::Member(m) => Ok(Json(json!({ "member": m })).into_response()),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsPatch {
    nofailover: Option<bool>,
    priority: Option<i32>,
}

/// `PUT /v1/members/{id}/tags`: set `nofailover` / `priority`; omitted fields stay.
async fn members_tags(
    State(node): State<Arc<Node>>,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let patch: TagsPatch = parse_json(body)?;
    let Some(member) = members::member_views(&node).into_iter().find(|m| m.id == id) else {
        return Err(ApiError::not_found(format!("no member {id}")));
    };
    let mut tags = member.tags.clone();
    if let Some(n) = patch.nofailover {
        tags.nofailover = n;
    }
    if let Some(p) = patch.priority {
        tags.priority = p;
    }
    let op = AdminOp::Write(Command::UpsertMember {
        id,
        api_addr: None,
        tags: Some(tags.clone()),
    });
    admin::submit(&node, op, admin_timeout(&node)).await?;
    let mut m = member;
    m.tags = tags;
    Ok(Json(json!({ "member": m })).into_response())
}

async fn members_remove(
    State(node): State<Arc<Node>>,
    ApiPath(id): ApiPath<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = parse_id(&id)?;
    let q = parse_query(q);
    let force = parse_bool("force", q.get("force"))?;
    match admin::submit(&node, AdminOp::RemoveMember { id, force }, admin_timeout(&node)).await? {
        AdminReply::Removed(id) => Ok(Json(json!({ "removed": id })).into_response()),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

async fn history(State(node): State<Arc<Node>>) -> Json<Value> {
    let view = node.view();
    let lost = crate::cluster::service::lost_everywhere(&node).await;
    let mut listed = std::collections::BTreeSet::new();
    let items: Vec<Value> = view
        .state
        .history
        .iter()
        .map(|h| {
            let mut item = json!({"epoch": h.epoch, "from": h.from, "to": h.to, "reason": h.reason, "at": rfc3339(h.at_ms), "at_ms": h.at_ms});
            if let Some((records, _)) = &lost {
                listed.insert(h.epoch);
                item["redis_lost"] = lost_in(records, |e| e == h.epoch);
            }
            item
        })
        .collect();
    let mut answer = json!({ "history": items });
    if let Some((records, silent)) = &lost {
        // Losses under a failover no longer in the (bounded) history, and the members not asked.
        answer["redis_lost_earlier"] = lost_in(records, |e| !listed.contains(&e));
        answer["redis_lost_unanswered"] = json!(silent);
    }
    Json(answer)
}

/// The members' lost-writes records whose epoch `matches`, each with its node id.
fn lost_in(
    records: &std::collections::BTreeMap<NodeId, Vec<crate::cluster::service::LostReport>>,
    matches: impl Fn(u64) -> bool,
) -> Value {
    let mut out = Vec::new();
    for (id, rs) in records {
        for r in rs.iter().filter(|r| matches(r.epoch)) {
            let mut v = json!(r);
            v["node"] = json!(id);
            out.push(v);
        }
    }
    Value::Array(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Maintenance {
    enabled: bool,
}

async fn maintenance(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: Maintenance = parse_json(body)?;
    admin::submit(
        &node,
        AdminOp::Write(Command::SetMaintenance { enabled: req.enabled }),
        admin_timeout(&node),
    )
    .await?;
    Ok(Json(json!({ "maintenance": req.enabled })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SwitchoverReq {
    to: Option<NodeId>,
}

fn promoted(reply: AdminReply) -> ApiResult {
    match reply {
        AdminReply::Promoted(p) => Ok(Json(json!({ "from": p.from, "to": p.to, "epoch": p.epoch })).into_response()),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

async fn switchover(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let bytes = body_bytes(body)?;
    let req: SwitchoverReq = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        SwitchoverReq::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?
    };
    promoted(admin::submit(&node, AdminOp::Switchover { to: req.to }, admin_timeout(&node)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverReq {
    to: NodeId,
    #[serde(default)]
    force: bool,
}

async fn failover(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: FailoverReq = parse_json(body)?;
    promoted(
        admin::submit(
            &node,
            AdminOp::Failover {
                to: req.to,
                force: req.force,
            },
            admin_timeout(&node),
        )
        .await?,
    )
}

async fn patch_config(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let p: ConfigPatch = parse_json(body)?;
    // Merged on the coordinator against the newest committed config, so two patches to
    // different nodes never undo each other.
    match admin::submit(&node, AdminOp::PatchConfig(p), admin_timeout(&node)).await? {
        AdminReply::Config(c) => Ok(Json(json!({ "config": c })).into_response()),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

/// Load-balancer probe: 200 only on the primary holding a valid lease (and, with managed Redis,
/// whose Redis is up and the unfenced master).
async fn probe_primary(State(node): State<Arc<Node>>) -> ApiResult {
    let primary = node.view().state.primary;
    match (primary, node.lease.valid_epoch()) {
        (Some(p), Some(e)) if p.node == node.id && p.epoch == e && !crate::cluster::service::master_ok(&node) => {
            Err(ApiError::unavailable(
                "service_not_master",
                "holding the lease, but the managed Redis is not up as the master (yet)",
            ))
        }
        (Some(p), Some(e)) if p.node == node.id && p.epoch == e => {
            Ok(Json(json!({"role": "primary", "epoch": e, "lease_remaining_ms": node.lease.remaining().map(|d| d.as_millis() as u64)})).into_response())
        }
        (Some(p), _) if p.node == node.id => {
            Err(ApiError::unavailable("no_lease", "named primary but holding no valid lease (fenced)"))
        }
        (p, _) => Err(ApiError::unavailable(
            "not_primary",
            format!("this node is not the primary (primary: {})", crate::util::opt(p.map(|p| p.node))),
        )),
    }
}

/// Load-balancer probe: 200 on a healthy non-primary.
async fn probe_replica(State(node): State<Arc<Node>>, RawQuery(q): RawQuery) -> ApiResult {
    let q = parse_query(q);
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        q.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{name}={v:?} is not a number")))
            })
            .transpose()
    };
    let max_lag_ms = number("max_lag_ms")?;
    let max_gitsync_age_ms = number("max_gitsync_age_ms")?.or(node.config.gitsync.as_ref().and_then(|g| g.max_age_ms));
    let m = node.metrics();
    let view = node.view();
    if view.state.primary.is_some_and(|p| p.node == node.id) {
        return Err(ApiError::unavailable("is_primary", "this node is the primary"));
    }
    if m.membership_config.membership().get_node(&node.id).is_none() {
        return Err(ApiError::unavailable(
            "not_member",
            "this node is not a member of a cluster",
        ));
    }
    if m.current_leader.is_none() {
        return Err(ApiError::unavailable("no_leader", "this node does not know a leader"));
    }
    let Some(lag_ms) = node.repl.lag_ms() else {
        return Err(ApiError::unavailable(
            "not_replicating",
            "this replica has not heard from the primary yet",
        ));
    };
    if max_lag_ms.is_some_and(|max| lag_ms > max) {
        return Err(ApiError::unavailable(
            "lagging",
            format!("replication lag {lag_ms} ms over {} ms", crate::util::opt(max_lag_ms)),
        ));
    }
    // Without Git Sync on this node there is nothing to be stale: the check passes.
    if let (Some(max), Some(g)) = (max_gitsync_age_ms, &node.gitsync) {
        crate::cluster::gitsync::freshness(&g.status(), max, crate::util::unix_ms())
            .map_err(|stale| ApiError::unavailable(stale.code(), stale.to_string()))?;
    }
    // With managed Redis, only a healthy replica of the primary's Redis is routed to.
    crate::cluster::service::replica_ok(&node).map_err(|e| ApiError::unavailable(e.code(), e.to_string()))?;
    Ok(Json(json!({"role": role(&node), "lag_ms": lag_ms})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Paused {
    paused: bool,
}

/// Pause or resume this node's replication apply worker (this node only).
async fn replication_paused(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: Paused = parse_json(body)?;
    node.repl.set_paused(req.paused);
    tracing::info!(paused = req.paused, "replication apply worker paused by operator");
    Ok(Json(json!({ "paused": req.paused })).into_response())
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&node),
    )
        .into_response()
}

/// 200 when the process is up and its data dir readable.
async fn health(State(node): State<Arc<Node>>) -> ApiResult {
    let dir = node.config.data_dir.clone();
    match tokio::fs::metadata(dir.join("raft-state.redb")).await {
        Ok(_) if node.metrics().running_state.is_ok() => Ok(Json(json!({"status": "ok"})).into_response()),
        Ok(_) => Err(ApiError::unavailable("raft_stopped", "the raft core has stopped")),
        Err(e) => Err(ApiError::unavailable(
            "data_unreadable",
            format!("data dir {}: {e}", dir.display()),
        )),
    }
}

/// 200 when this node is a member of a cluster that has a leader; otherwise 503 naming the
/// failed check.
async fn readyz(State(node): State<Arc<Node>>) -> ApiResult {
    let m = node.metrics();
    if let Some((peer, msg)) = node.cluster_mismatch() {
        return Err(ApiError::unavailable(
            "cluster_id_mismatch",
            format!("peer {peer}: {msg}"),
        ));
    }
    if m.membership_config.membership().get_node(&node.id).is_none() {
        return Err(ApiError::unavailable(
            "not_member",
            "this node is not (yet) a member of a cluster",
        ));
    }
    if !quorum_reachable(&node) {
        return Err(ApiError::unavailable(
            "no_quorum",
            "this node cannot reach a majority of the voters",
        ));
    }
    match m.current_leader {
        Some(l) => Ok(Json(json!({"status": "ready", "leader": l})).into_response()),
        None => Err(ApiError::unavailable("no_leader", "this node does not know a leader")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_endpoints_table() {
        let cases = [
            (Method::GET, "/v1/status", false),
            (Method::POST, "/v1/members", true),
            (Method::DELETE, "/v1/members/3", true),
            (Method::PUT, "/v1/maintenance", true),
            (Method::PUT, "/v1/kv/a", false),
            (Method::DELETE, "/v1/kv/a", false),
            (Method::PUT, "/v1/gitsync/files/a.txt", false),
            (Method::DELETE, "/v1/gitsync/files/a.txt", false),
            (Method::POST, "/v1/gitsync/webhook", false),
            (Method::POST, "/v1/gitsync/sync", true),
            (Method::GET, "/health", false),
        ];
        for (m, p, want) in cases {
            assert_eq!(requires_admin(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn query_and_bool_parsing() {
        let q = parse_query(Some("force=true&x".into()));
        assert!(parse_bool("force", q.get("force")).unwrap());
        assert!(parse_bool("x", q.get("x")).unwrap());
        assert!(!parse_bool("y", q.get("y")).unwrap());
        assert!(parse_bool("force", Some(&"maybe".to_string())).is_err());
        assert!(parse_id("0").is_err());
        assert!(parse_id("abc").is_err());
        assert_eq!(parse_id("7").unwrap(), 7);
    }
}
