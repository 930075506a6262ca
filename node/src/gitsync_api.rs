//! Git Sync wiring: the agent's life cycle on this node, and its HTTP API.
//!
//! - `GET /v1/gitsync`: this node's agent status.
//! - `POST /v1/gitsync/sync[?accept_reset=true]`: sync this node now and kick every other
//!   node (admin).
//! - `POST /v1/gitsync/webhook`: verified here (GitHub / Gitea / GitLab signatures); a verified
//!   push makes *every* node sync, through the cluster (`/peer/gitsync/kick`), not by trusting
//!   each node to receive its own webhook.
//! - `PUT|DELETE /v1/gitsync/files/{path}`: on the primary, with a valid lease, commit the edit
//!   (trailer `Keel-Epoch: N`) and push it; a replica forwards the request to the primary.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_gitsync::{GitSync, GitSyncError, Trigger, WebhookVerdict};
use serde_json::json;
use tracing::{debug, info};

use crate::api::{body_bytes, parse_query};
use crate::error::{ApiError, ApiPath};
use crate::node::Node;

type ApiResult = Result<Response, ApiError>;

/// Build the agent from the node's config (blocking: opens or creates the local repository).
/// The token for https remotes comes from `KEEL_GITSYNC_TOKEN` or the file named by
/// `KEEL_GITSYNC_TOKEN_FILE`; an ssh key and known_hosts file from `--gitsync-ssh-key` / `--gitsync-known-hosts`.
pub fn open(config: &crate::config::Config) -> Result<Option<Arc<GitSync>>, String> {
    let Some(g) = &config.gitsync else { return Ok(None) };
    let mut c = keel_gitsync::GitSyncConfig::new(g.repo.clone(), g.branch.clone());
    c.path = g.path.clone();
    c.interval = Duration::from_millis(g.interval_ms);
    c.webhook_secret = g.webhook_secret.as_ref().map(|s| s.expose().to_string());
    c.token = match (
        std::env::var("KEEL_GITSYNC_TOKEN"),
        std::env::var("KEEL_GITSYNC_TOKEN_FILE"),
    ) {
        (Ok(t), _) if !t.is_empty() => Some(t),
        (_, Ok(f)) if !f.is_empty() => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| format!("read KEEL_GITSYNC_TOKEN_FILE {f}: {e}"))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    c.ssh_key = g.ssh_key.clone();
    c.known_hosts = g.known_hosts.clone();
    GitSync::new(c, &config.data_dir)
        .map(|g| Some(Arc::new(g)))
        .map_err(|e| e.to_string())
}

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
        GitSyncError::Conflict { .. } => ApiError::conflict("conflict", e.to_string()),
        GitSyncError::InvalidPath { .. } => ApiError::bad_request(e.to_string()),
        GitSyncError::NotFound(_) => ApiError::not_found(e.to_string()),
        GitSyncError::Network(_) | GitSyncError::Auth(_) => {
            ApiError::unavailable("upstream_unavailable", e.to_string())
        }
        _ => ApiError::internal(e.to_string()),
    }
}

pub async fn status(State(node): State<Arc<Node>>) -> ApiResult {
    let g = agent(&node)?;
    let mut v = serde_json::to_value(g.status()).unwrap_or_default();
    v["node_id"] = json!(node.id);
    v["hook"] = LAST_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or(serde_json::Value::Null);
    Ok(Json(v).into_response())
}

/// Ask every other member to sync now (best effort, concurrently, bounded).
pub async fn kick_all(node: &Node, trigger: &'static str) {
    let mut set = tokio::task::JoinSet::new();
    for (id, n) in node.metrics().membership_config.membership().nodes() {
        if *id == node.id {
            continue;
        }
        let (id, addr, peers) = (*id, n.addr.clone(), node.peers.clone());
        set.spawn(async move {
            let r: Result<(), _> = peers
                .call(Some(id), &addr, "/peer/gitsync/kick", &trigger, Duration::from_secs(2))
                .await;
            if let Err(e) = r {
                debug!(peer = id, error = %e, "kick Git Sync on a peer");
            }
        });
    }
    while set.join_next().await.is_some() {}
}

pub fn kick_local(node: &Node, trigger: &str) {
    if let Some(g) = &node.gitsync {
        g.kick(if trigger == "manual" {
            Trigger::Manual
        } else {
            Trigger::Webhook
        });
    }
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
        tokio::spawn(async move { kick_all(&node, "manual").await })
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
            kick_all(&node, "webhook").await;
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
        let mut pq = format!("/v1/gitsync/files/{}", crate::data::encode_path(&path));
        if let Some(q) = q {
            pq.push('?');
            pq.push_str(&q);
        }
        return crate::data::forward(&node, method, &pq, &headers, body).await;
    }
    // Only a primary holding its lease pushes: a deposed primary must not move the branch.
    let Some(epoch) = crate::data::wait_write_epoch(&node).await else {
        return Err(ApiError::unavailable(
            "no_lease",
            "this node holds no valid lease: it may not push edits",
        ));
    };
    let contents = if method == Method::DELETE {
        None
    } else {
        Some(body.to_vec())
    };
    let author = ("keel".to_string(), format!("keel@node-{}", node.id));
    let commit = g
        .write_file(&path, contents.as_deref(), epoch, (&author.0, &author.1))
        .await
        .map_err(git_error)?;
    // Everyone else picks the new commit up now rather than at the next interval.
    kick_all(&node, "webhook").await;
    Ok(Json(json!({"commit": commit, "epoch": epoch})).into_response())
}

/// Outcome of the last on-sync hook run, shown in `GET /v1/gitsync` as `hook`.
static LAST_HOOK: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// Longest an on-sync hook may run before it is killed.
const SYNC_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `--gitsync-hook` after every sync that changed the served commit, one at a time.
pub async fn sync_hook_task(node: Arc<Node>, g: Arc<GitSync>, cmd: String) {
    let mut last = g.status().commit.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = g.status().commit.clone();
        let Some(commit) = now.clone().filter(|_| now != last) else {
            continue;
        };
        last = now;
        let path = g.current_tree().map(|p| p.display().to_string()).unwrap_or_default();
        let started = std::time::Instant::now();
        let mut child = match tokio::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("KEEL_GIT_COMMIT", &commit)
            .env("KEEL_GIT_PATH", &path)
            .env("KEEL_NODE_ID", node.id.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gitsync hook: could not start");
                continue;
            }
        };
        let mut stderr = child.stderr.take();
        let outcome = match tokio::time::timeout(SYNC_HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(s)) => json!({"exit_code": s.code(), "timed_out": false}),
            Ok(Err(e)) => json!({"error": e.to_string(), "timed_out": false}),
            Err(_) => {
                let _ = child.kill().await;
                json!({"timed_out": true})
            }
        };
        let mut err = Vec::new();
        if let Some(s) = stderr.as_mut() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut err)).await;
        }
        let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(512)..]).into_owned();
        let mut v = outcome;
        v["commit"] = json!(commit);
        v["duration_ms"] = json!(started.elapsed().as_millis() as u64);
        v["stderr_tail"] = json!(tail);
        v["at_ms"] = json!(crate::util::unix_ms());
        if v["exit_code"] == json!(0) {
            info!(commit = %commit, "gitsync hook ran");
        } else {
            tracing::warn!(commit = %commit, outcome = %v, "gitsync hook failed");
        }
        *LAST_HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }
}
