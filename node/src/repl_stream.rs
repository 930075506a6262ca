//! The replication pull stream: the pulls of `/peer/repl/pull` ([`crate::repl::serve_pull`], the
//! same requests, answers, epochs and acknowledgements), carried on one long-lived connection per
//! replica instead of one HTTP exchange each.
//!
//! A replica opens it with `POST /peer/repl/stream` and `Upgrade: keel-repl-pull/1` on the peer
//! port. The request passes the peer listener's checks (cluster token, cluster id) like any peer
//! call; the primary answers `101 Switching Protocols`, and from then on the connection carries
//! frames: a 4-byte big-endian length, then a [`PullRequest`] (replica to primary) or a
//! [`PullReply`] (primary to replica) in the peer codec. The replica sends one request, waits for
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
//! pulled from over plain HTTP, and asked again after [`RETRY_STREAM`]. The primary closes a
//! connection idle for [`IDLE`] (a replica sends a request at least every pull period) and every
//! connection when the node stops.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_raft::codec::{decode, encode};
use keel_raft::network::PeerError;
use keel_raft::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::repl::{encode_reply, serve_pull, PullReply, PullRequest};
use crate::state::Node;

pub const PATH: &str = "/peer/repl/stream";
pub const PROTOCOL: &str = "keel-repl-pull/1";
/// Largest frame either side accepts: a pull answer is at most `MAX_BATCH_BYTES` of entries.
const MAX_FRAME: usize = crate::peer::PEER_MAX_BODY;
/// The primary closes a stream that carried no request for this long.
const IDLE: Duration = Duration::from_secs(30);
/// How long the primary may take to hand an answer to the kernel before giving up on the stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a 404 for the stream, plain pulls from that address for this long before asking again.
pub const RETRY_STREAM: Duration = Duration::from_secs(60);

/// Writes one frame: the payload's length (u32, big-endian), then the payload, in one write.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|n| *n as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes over the limit of {MAX_FRAME}", payload.len()),
            )
        })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame's payload; `None` when the other side closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    // The first byte apart: EOF there is a clean close, anywhere later a torn frame.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {n} bytes over the limit of {MAX_FRAME}"),
        ));
    }
    let mut payload = vec![0; n];
    r.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

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
    let from = crate::peer::sender_id(req.headers());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => serve(&node, hyper_util::rt::TokioIo::new(io), &from).await,
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

/// The primary's side of one stream: answer each request as `/peer/repl/pull` would.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(node: &Node, mut io: S, from: &str) {
    debug!(from, "replication stream opened");
    let why = loop {
        let frame = tokio::select! {
            _ = node.cancel.cancelled() => break "node stopping".to_string(),
            r = tokio::time::timeout(IDLE, read_frame(&mut io)) => r,
        };
        let req: PullRequest = match frame {
            Ok(Ok(Some(bytes))) => match decode(&bytes) {
                Ok(req) => req,
                Err(e) => break format!("malformed request: {e}"),
            },
            Ok(Ok(None)) => break "closed by the replica".to_string(),
            Ok(Err(e)) => break format!("read: {e}"),
            Err(_) => break format!("no request for {} s", IDLE.as_secs()),
        };
        let reply = tokio::select! {
            _ = node.cancel.cancelled() => break "node stopping".to_string(),
            r = serve_pull(node, req) => r,
        };
        let bytes = encode_reply(node, &reply);
        match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut io, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("write: {e}"),
            Err(_) => break format!("answer not written within {} s", WRITE_TIMEOUT.as_secs()),
        }
    };
    debug!(from, why, "replication stream closed");
}

/// A replica's stream to its primary, kept by the apply loop between pulls.
#[derive(Default)]
pub struct PullStream {
    /// The open connection and whom it goes to.
    open: Option<(NodeId, String, reqwest::Upgraded)>,
    /// An address that answered 404 to the stream, and until when to use plain pulls there.
    unsupported: Option<(String, Instant)>,
}

impl PullStream {
    /// Drop the connection (the node stopped pulling: it is primary, or paused).
    pub fn close(&mut self) {
        self.open = None;
    }

    /// One pull from `source` at `addr` over the stream, opening it first when needed. `None`:
    /// that peer does not offer the stream, pull over plain HTTP. Errors close the connection.
    /// The answer comes with its size in bytes.
    pub async fn pull(
        &mut self,
        node: &Node,
        source: NodeId,
        addr: &str,
        req: &PullRequest,
        timeout: Duration,
    ) -> Result<Option<(PullReply, usize)>, String> {
        if let Some((a, until)) = &self.unsupported {
            if a == addr && Instant::now() < *until {
                return Ok(None);
            }
            self.unsupported = None;
        }
        if self.open.as_ref().is_some_and(|(s, a, _)| *s != source || a != addr) {
            self.open = None;
        }
        // A connection that sat idle may have been closed by the other side meanwhile: when one
        // that was already open fails before any answer, try once more on a fresh one.
        let mut reused = self.open.is_some();
        loop {
            if self.open.is_none() {
                match node
                    .peers
                    .open_stream(Some(source), addr, PATH, PROTOCOL, timeout)
                    .await
                {
                    Ok(io) => self.open = Some((source, addr.to_string(), io)),
                    Err(PeerError::Status { status: 404, .. }) => {
                        info!(
                            source,
                            addr,
                            "the primary does not offer the replication stream (an older release): pulling over plain HTTP"
                        );
                        self.unsupported = Some((addr.to_string(), Instant::now() + RETRY_STREAM));
                        return Ok(None);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            let Some((_, _, io)) = self.open.as_mut() else {
                unreachable!("opened above");
            };
            let exchange = async {
                write_frame(io, &encode(req)).await?;
                read_frame(io).await
            };
            let res = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(Some(bytes))) => match decode::<PullReply>(&bytes) {
                    Ok(reply) => Ok((reply, bytes.len())),
                    Err(e) => Err(format!("malformed answer on the replication stream from {addr}: {e}")),
                },
                Ok(failed @ (Ok(None) | Err(_))) if reused => {
                    debug!(addr, outcome = ?failed.err(), "replication stream: reused connection closed or failed; opening a new one");
                    reused = false;
                    self.open = None;
                    continue;
                }
                Ok(Ok(None)) => Err(format!("replication stream to {addr} closed by the primary")),
                Ok(Err(e)) => Err(format!("replication stream to {addr}: {e}")),
                Err(_) => Err(format!(
                    "replication stream to {addr}: no answer within {} ms",
                    timeout.as_millis()
                )),
            };
            let health = node.peers.health();
            return match res {
                Ok(answer) => {
                    health.record_ok(source);
                    Ok(Some(answer))
                }
                Err(e) => {
                    self.open = None;
                    health.record_err(source, e.clone(), None);
                    Err(e)
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_frame(&mut b).await.unwrap().as_deref(), Some(&b""[..]));

        // A clean close between frames is `None`; inside a frame it is an error.
        write_frame(&mut a, b"torn").await.unwrap();
        drop(a);
        let mut torn = Vec::new();
        b.read_to_end(&mut torn).await.unwrap();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&torn[..6]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let (a, mut b) = tokio::io::duplex(16);
        drop(a);
        assert!(read_frame(&mut b).await.unwrap().is_none());

        // An announced length over the limit is refused before anything is allocated.
        let (mut a, mut b) = tokio::io::duplex(16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // And never written.
        let big = vec![0u8; MAX_FRAME + 1];
        let err = write_frame(&mut a, &big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
