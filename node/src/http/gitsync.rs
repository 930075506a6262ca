//! Git Sync's HTTP API (the agent's life cycle on this node is [`crate::cluster::gitsync`]).
//!
//! - `GET /v1/gitsync`: this node's agent status.
//! - `POST /v1/gitsync/sync[?accept_reset=true]`: sync this node now and kick every other
//!   node, passing `accept_reset` on (admin).
//! - `POST /v1/gitsync/webhook`: verified here (GitHub / Gitea / GitLab signatures); a verified
//!   push makes *every* node sync, through the cluster (`/peer/gitsync/kick`), not by trusting
//!   each node to receive its own webhook.
//! - `PUT|DELETE /v1/gitsync/files/{path}`: on the primary, with a valid lease, commit the edit
//!   (trailer `Keel-Epoch: N`) and push it; a replica forwards the request to the primary.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_gitsync::{GitSync, GitSyncError, Trigger, WebhookVerdict};
use serde_json::json;
use tracing::info;

use crate::cluster::gitsync::{kick_all, last_hook, EditError, Edited, Kick};
use crate::http::error::{ApiError, ApiPath};
use crate::http::{body_bytes, parse_query};
use crate::state::Node;

type ApiResult = Result<Response, ApiError>;

fn agent(node: &Node) -> Result<&Arc<GitSync>, ApiError> {
    node.gitsync.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "gitsync_disabled",
            "Git Sync is not configured on this node (--gitsync-repo)",
        )
    })
}

fn git_error(e: GitSyncError) -> ApiError {
    match &e {
        GitSyncError::Conflict { .. } | GitSyncError::Rejected(_) => ApiError::conflict("conflict", e.to_string()),
        GitSyncError::InvalidPath { .. } => ApiError::bad_request(e.to_string()),
        GitSyncError::NotFound(_) => ApiError::not_found(e.to_string()),
        GitSyncError::Network(_) | GitSyncError::Auth(_) => {
            ApiError::unavailable("upstream_unavailable", e.to_string())
        }
        _ => ApiError::internal(e.to_string()),
    }
}

/// An edit's failure as an answer: the lease cases as the datastore's (`no_lease`, `outcome_unknown`),
/// a deposed writer's refused push as `stale_epoch`, the rest as [`git_error`].
fn edit_error(e: EditError) -> ApiError {
    match e {
        EditError::NoLease => ApiError::unavailable("no_lease", e.to_string()),
        EditError::LeaseLapsed { .. } => ApiError::unavailable(
            "outcome_unknown",
            format!("{e}: it may or may not stay on the branch; read the branch back before retrying"),
        ),
        EditError::Deposed { .. } => ApiError::unavailable("stale_epoch", e.to_string()),
        EditError::Git(e) => git_error(e),
    }
}

pub async fn status(State(node): State<Arc<Node>>) -> ApiResult {
    let g = agent(&node)?;
    let mut v = serde_json::to_value(g.status()).unwrap_or_default();
    v["node_id"] = json!(node.id);
    v["hook"] = last_hook().unwrap_or(serde_json::Value::Null);
    Ok(Json(v).into_response())
}

pub async fn sync(State(node): State<Arc<Node>>, RawQuery(q): RawQuery) -> ApiResult {
    let g = agent(&node)?.clone();
    let q = parse_query(q);
    let accept_reset = matches!(
        q.get("accept_reset").map(String::as_str),
        Some("true") | Some("1") | Some("")
    );
    let others = {
        let node = node.clone();
        let kick = if accept_reset {
            Kick::ManualAcceptReset
        } else {
            Kick::Manual
        };
        tokio::spawn(async move { kick_all(&node, kick).await })
    };
    let outcome = g.sync(Trigger::Manual, accept_reset).await.map_err(git_error)?;
    let _ = others.await;
    Ok(Json(json!({"node_id": node.id, "outcome": outcome, "status": g.status()})).into_response())
}

pub async fn webhook(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let g = agent(&node)?.clone();
    let body = body_bytes(body)?;
    let hs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let verdict = g.handle_webhook(&hs, &body);
    match &verdict {
        WebhookVerdict::Unauthorized { reason } => Err(ApiError::unauthorized(format!("webhook refused: {reason}"))),
        WebhookVerdict::Sync { .. } => {
            info!(?verdict, "verified push webhook: syncing every node");
            g.kick(Trigger::Webhook);
            kick_all(&node, Kick::Webhook).await;
            Ok((StatusCode::ACCEPTED, Json(json!({ "webhook": verdict }))).into_response())
        }
        _ => Ok((StatusCode::OK, Json(json!({ "webhook": verdict }))).into_response()),
    }
}

/// `PUT|DELETE /v1/gitsync/files/{path}`.
pub async fn edit(
    State(node): State<Arc<Node>>,
    method: Method,
    ApiPath(path): ApiPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let g = agent(&node)?.clone();
    let body = body_bytes(body)?;
    if node.view().state.primary.is_none_or(|p| p.node != node.id) {
        let mut pq = format!("/v1/gitsync/files/{}", crate::http::kv::encode_path(&path));
        if let Some(q) = q {
            pq.push('?');
            pq.push_str(&q);
        }
        return crate::http::kv::forward(&node, method, &pq, &headers, body).await;
    }
    let contents = if method == Method::DELETE {
        None
    } else {
        Some(body.to_vec())
    };
    let Edited { epoch, commit } = crate::cluster::gitsync::edit(&node, &g, &path, contents.as_deref())
        .await
        .map_err(edit_error)?;
    // Everyone else picks the new commit up now rather than at the next interval.
    kick_all(&node, Kick::Webhook).await;
    Ok(Json(json!({"commit": commit, "epoch": epoch})).into_response())
}
