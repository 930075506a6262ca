//! The peer listener (`--peer-addr`): openraft RPCs, pings, and admin operations forwarded to
//! the coordinator. Everything here requires the cluster token when one is configured, and
//! refuses requests from another cluster (`Keel-Cluster-Id` differs) with 409.

pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use keel_raft::network::{CLUSTER_ID_HEADER, NODE_ID_HEADER};
use keel_raft::server::{decode_body, encoded, octet_stream, raft_router};
use keel_raft::NodeId;
use tracing::warn;

use crate::cluster::admin::{self, AdminOp};
use crate::cluster::probe::Ping;
use crate::http::error::ApiError;
use crate::state::Node;
use crate::util::bearer_matches;

/// Largest peer request: Raft snapshot chunks are up to 3 MiB by openraft's default.
pub const PEER_MAX_BODY: usize = 16 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let timeout = Duration::from_millis(node.config.request_timeout_ms);
    Router::new()
        .route("/peer/ping", post(ping))
        .route("/peer/admin", post(admin_op))
        .route("/peer/lease", post(lease))
        .route("/peer/stepdown", post(stepdown))
        .route("/peer/repl/pull", post(repl_pull))
        .route(stream::PATH, post(stream::accept))
        .route("/peer/repl/position", post(repl_position))
        .route("/peer/repl/position_at", post(repl_position_at))
        .route("/peer/repl/report", post(repl_report))
        .route("/peer/repl/snapshot", post(repl_snapshot))
        .route("/peer/gitsync/kick", post(gitsync_kick))
        .route(crate::cluster::service::LOST_PATH, post(redis_lost))
        .with_state(node.clone())
        .merge(raft_router(node.raft.clone()))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such peer endpoint") })
        .layer(middleware::from_fn_with_state(node, guard))
        .layer(middleware::from_fn(move |req, next| {
            crate::http::timeout_mw(timeout, req, next)
        }))
        .layer(DefaultBodyLimit::max(PEER_MAX_BODY))
}

/// The node id a peer request says it comes from (`?` when it does not say), for logs.
pub fn sender_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(NODE_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

/// Cluster token and cluster id checks, before any handler runs.
async fn guard(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(token) = &node.config.cluster_token {
        let auth = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !bearer_matches(auth, token.expose()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong cluster token").into_response();
        }
    }
    let theirs = req
        .headers()
        .get(CLUSTER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ours = node.view().state.cluster_id.clone();
    if let (Some(theirs), Some(ours)) = (theirs, ours) {
        if theirs != ours {
            let from = sender_id(req.headers());
            warn!(from, their_cluster = %theirs, our_cluster = %ours, "refused a peer of another cluster: its data dir belongs to a different cluster");
            return (
                StatusCode::CONFLICT,
                format!("cluster id mismatch: this node is in cluster {ours}, the request came from cluster {theirs} (node {from}); a data dir of another cluster cannot join"),
            )
                .into_response();
        }
    }
    if req.uri().path() == "/peer/raft/vote" && node.in_vote_quiet_period() {
        // A restarted node has forgotten which leader it acknowledged last; refusing votes
        // for election_timeout_max keeps that leader's lease promise (raft/DESIGN.md, step 3).
        return (StatusCode::SERVICE_UNAVAILABLE, "just started: not voting yet").into_response();
    }
    if req.uri().path() == "/peer/raft/vote"
        && node
            .coordinator
            .since_any_grant()
            .is_some_and(|since| since < node.vote_quiet_period())
    {
        // A coordinator that granted a lease counts itself in the quorum that confirmed the grant,
        // so, like the followers of that quorum (openraft's leader lease), it must not help elect
        // another coordinator for election_timeout_max after it; openraft refuses votes on
        // followers only. Found by the fencing model (raft/DESIGN.md, "Gap found by the model").
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "granted a lease within election_timeout_max: not voting yet",
        )
            .into_response();
    }
    next.run(req).await
}

async fn ping(State(node): State<Arc<Node>>) -> Response {
    encoded(&Ping {
        node_id: node.id,
        cluster_id: node.view().state.cluster_id.clone(),
    })
}

/// Runs an admin operation here, only if this node leads (never forwards again).
async fn admin_op(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<AdminOp>(&body) {
        Ok(op) => encoded(&admin::execute(&node, op).await.map_err(ApiError::from)),
        Err(r) => r,
    }
}

/// A primary renews its lease here (on the coordinator).
async fn lease(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<crate::cluster::primary::LeaseRequest>(&body) {
        Ok(req) => {
            let res = match admin::execute(
                &node,
                AdminOp::Lease {
                    node: req.node,
                    epoch: req.epoch,
                },
            )
            .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(ApiError::from(e)),
            };
            encoded(&res)
        }
        Err(r) => r,
    }
}

/// The coordinator tells this (old) primary to stop accepting writes for `epoch` now.
async fn stepdown(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<crate::cluster::primary::StepDown>(&body) {
        Ok(req) => {
            node.lease.drop_now(Some(req.epoch));
            tracing::info!(
                epoch = req.epoch,
                "stepped down at the coordinator's request: writes stopped"
            );
            encoded(&Ok::<(), ApiError>(()))
        }
        Err(r) => r,
    }
}

async fn repl_pull(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<crate::repl::PullRequest>(&body) {
        Ok(req) => octet_stream(crate::repl::encode_reply(
            &node,
            &crate::repl::serve_pull(&node, req).await,
        )),
        Err(r) => r,
    }
}

async fn repl_position(State(node): State<Arc<Node>>) -> Response {
    encoded(&node.repl.position())
}

async fn repl_position_at(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<u64>(&body) {
        Ok(seq) => match node.repl.store.position_at(seq) {
            Ok(p) => encoded(&p),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(r) => r,
    }
}

async fn repl_report(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<(NodeId, keel_replication::Position)>(&body) {
        Ok((id, pos)) => {
            node.repl.record_report(id, pos);
            encoded(&())
        }
        Err(r) => r,
    }
}

async fn repl_snapshot(State(node): State<Arc<Node>>) -> Response {
    // The whole snapshot, streamed from one read transaction (keel_replication::serve_snapshot).
    axum::response::Response::new(crate::http::body::channel_body(keel_replication::serve_snapshot(
        &node.repl.store,
    )))
}

/// Another node verified a webhook (or an operator asked): sync now.
/// This node's managed Redis lost-writes records (JSON), `None` without managed Redis
/// (`GET /v1/history` gathers them).
async fn redis_lost(State(node): State<Arc<Node>>) -> Response {
    encoded(&crate::cluster::service::lost_records_json(&node))
}

async fn gitsync_kick(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode_body::<String>(&body) {
        Ok(trigger) => {
            crate::cluster::gitsync::kick_local(&node, crate::cluster::gitsync::Kick::from_wire(&trigger));
            encoded(&())
        }
        Err(r) => r,
    }
}
