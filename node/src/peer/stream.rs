//! The replication pull stream's HTTP side: the peer listener's `POST /peer/repl/stream` switches
//! the connection to the stream protocol and hands it to `keel_replication::serve_stream` (the
//! replica's client is `keel_replication::PullStream`, opened through
//! [`crate::repl::NodePeers`]). The stream carries the pulls of `/peer/repl/pull` (the same
//! requests, answers, epochs and acknowledgements) on one long-lived connection per replica
//! instead of one HTTP exchange each.
//!
//! A replica opens it with `POST /peer/repl/stream` and `Upgrade: keel-repl-pull/1` on the peer
//! port. The request passes the peer listener's checks (cluster token, cluster id) like any peer
//! call; the primary answers `101 Switching Protocols`, and from then on the connection carries
//! frames: a 4-byte big-endian length, then a `PullRequest` (replica to primary) or a
//! `PullReply` (primary to replica) in the peer codec (`keel_replication::protocol`). The replica sends one request, waits for
//! its answer, and so on, exactly as with the HTTP pull (the primary holds an idle request open
//! for up to its `wait_ms`); a request after position `p` still acknowledges everything up to `p`.
//!
//! Why: in sync mode every write waits for a replica's next pull, and per-request HTTP work
//! (request building and parsing, routing, the HTTP client's connection task) sat on that path
//! twice per write, once for the batch and once for the acknowledgement.
//!
//! Failures: any error, a malformed frame or an exchange that does not finish within the timeout
//! closes the connection; the replica's apply loop backs off as after a failed pull and opens a
//! new one. A peer that answers 404 (a release without the stream, during a rolling upgrade) is
//! pulled from over plain HTTP, and asked again after `RETRY_STREAM`. The primary closes a
//! connection idle for `STREAM_IDLE` (a replica sends a request at least every pull period) and every
//! connection when the node stops.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use crate::state::Node;

pub use crate::repl::{STREAM_PATH as PATH, STREAM_PROTOCOL as PROTOCOL};

/// `POST /peer/repl/stream` on the peer listener: switch the connection to the pull stream.
pub async fn accept(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let asked = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if asked != Some(PROTOCOL) {
        return (
            StatusCode::BAD_REQUEST,
            format!("this endpoint needs `Connection: upgrade` and `Upgrade: {PROTOCOL}`"),
        )
            .into_response();
    }
    let from = super::sender_id(req.headers());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let io = hyper_util::rt::TokioIo::new(io);
                keel_replication::serve_stream(&node.repl, node.id, io, &from, &node.cancel).await
            }
            Err(e) => debug!(from, error = %e, "replication stream: upgrade failed"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static(PROTOCOL));
    *r.body_mut() = Body::empty();
    r
}

#[cfg(test)]
mod tests {
    /// A stream frame carries at most what a peer request body may.
    #[test]
    fn frame_limit_matches_the_peer_body_limit() {
        assert_eq!(keel_replication::protocol::MAX_FRAME_BYTES, crate::peer::PEER_MAX_BODY);
    }

    /// The path and the upgrade token are the wire contract with other releases.
    #[test]
    fn path_and_protocol_are_unchanged() {
        assert_eq!(super::PATH, "/peer/repl/stream");
        assert_eq!(super::PROTOCOL, "keel-repl-pull/1");
    }
}
