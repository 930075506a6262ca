//! Peer transport server: the axum routes that receive openraft RPCs under `/peer/raft/`.
//!
//! Authentication (cluster token) and the cluster-id check are layered on by the node, which
//! owns the whole peer router; these handlers only decode, call openraft and encode.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::Raft;

/// Routes for openraft's three RPCs.
pub fn raft_router(raft: Raft) -> Router {
    Router::new()
        .route("/peer/raft/append", post(append))
        .route("/peer/raft/vote", post(vote))
        .route("/peer/raft/snapshot", post(snapshot))
        .with_state(raft)
}

/// A postcard body, decoded; a malformed one is a 400, never a panic.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed peer request: {e}")).into_response())
}

/// Encode an answer with the versioned codec.
pub fn encoded<T: Serialize>(value: &T) -> Response {
    octet_stream(encode(value))
}

/// An answer already encoded with the versioned codec.
pub fn octet_stream(bytes: Vec<u8>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn append(State(raft): State<Raft>, body: Bytes) -> Response {
    match decode_body(&body) {
        Ok(req) => encoded(&raft.append_entries(req).await),
        Err(r) => r,
    }
}

async fn vote(State(raft): State<Raft>, body: Bytes) -> Response {
    match decode_body(&body) {
        Ok(req) => encoded(&raft.vote(req).await),
        Err(r) => r,
    }
}

async fn snapshot(State(raft): State<Raft>, body: Bytes) -> Response {
    match decode_body(&body) {
        Ok(req) => encoded(&raft.install_snapshot(req).await),
        Err(r) => r,
    }
}
