//! The replication protocol's messages, limits and stream frames: what a replica and a primary
//! say to each other, independent of how the bytes travel (the node carries them over its peer
//! port, see [`crate::peers`]).
//!
//! Wire compatibility: [`PullRequest`] and [`PullReply`] go over the network in the versioned
//! codec ([`crate::codec`]: one format byte, then postcard). Their shape is part of the
//! rolling-upgrade contract (node/tests/upgrade.rs runs against the previous release): add
//! variants at the end only, never reorder or retype fields. `pull_messages_keep_their_bytes`
//! below pins the bytes.

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Entry, NodeId, Position};

/// Most entries one pull answers.
pub const MAX_BATCH_ENTRIES: usize = 1000;
/// Most entry bytes one pull answers (a batch stops at the entry that crosses it).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long the primary holds an idle pull open.
pub const PULL_WAIT: Duration = Duration::from_millis(500);
/// In async mode, how long a replica that just applied entries waits before its next pull. Under
/// load the primary commits every few ms; pulling at once would fetch one commit's worth per pull
/// and pay a pull round trip and a replica fsync for each. Waiting lets a pull carry several commits.
/// It adds at most this much replication lag (the half-load lag goal is 100 ms). kv_bench,
/// 128-byte values, 64 clients, 5 s cells alternated on one machine: 8,186 and 9,360 writes/s without
/// the wait, 10,732 and 10,079 with 3 ms. Later, with the servers' CPU per write measured
/// (`--only async:128:64 --secs 5`, alternated): each replica 16-17 µs of CPU per write with 3 ms,
/// 12 with 10 ms, 10 with 25 ms; 14,592-15,571 writes/s with 3 ms, 15,672-16,593 with 10 ms.
pub const ASYNC_PULL_GAP: Duration = Duration::from_millis(10);
/// Positions older than this are not used to rank failover candidates.
pub const REPORT_FRESH: Duration = Duration::from_secs(2);
/// How often a node reports its position to the coordinator.
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Name and version of the pull stream's frame protocol (the HTTP/1.1 `Upgrade` token the node
/// asks for on its peer port).
pub const STREAM_PROTOCOL: &str = "keel-repl-pull/1";
/// Largest frame either side of a pull stream accepts: a pull answer is at most
/// [`MAX_BATCH_BYTES`] of entries. Equal to the node's peer request body limit.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// The primary closes a stream that carried no request for this long.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How long the primary may take to hand an answer to the kernel before giving up on the stream.
pub const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a 404 for the stream, plain pulls from that peer for this long before asking again.
pub const RETRY_STREAM: Duration = Duration::from_secs(60);

/// A replica asks for entries after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub node: NodeId,
    pub after: Position,
    /// Newest epoch the replica knows: a server of an older epoch is deposed.
    pub newest_epoch: u64,
    pub wait_ms: u64,
    /// Catch-up of a new primary: served by any member, not only the primary.
    pub catch_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullReply {
    /// Entries after the requested position (empty when caught up), sent by the primary of
    /// `epoch`; `head` is the server's position.
    Entries {
        epoch: u64,
        head: Position,
        entries: Vec<Entry>,
    },
    /// The requested position is older than the server's retained log.
    Trimmed { head: Position },
    /// The requester has entries the server never had (or another epoch at that seq).
    Fork { at: Position, ours: Option<Position> },
    /// The server is not the primary of the epoch the requester expects.
    NotPrimary { primary: Option<NodeId> },
}

/// The length field of a frame of `n` payload bytes; refused over [`MAX_FRAME_BYTES`].
pub(crate) fn frame_len(n: usize) -> io::Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n as usize <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {n} bytes over the limit of {MAX_FRAME_BYTES}"),
            )
        })
}

/// Writes one frame: the payload's length (u32, big-endian), then the payload, in one write.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = frame_len(payload.len())?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame's payload; `None` when the other side closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut payload = Vec::new();
    Ok(read_frame_into(r, &mut payload).await?.then_some(payload))
}

/// [`read_frame`] into `payload` (replacing what it held, reusing its memory); `false` when the
/// other side closed the connection between frames.
pub async fn read_frame_into<R: AsyncRead + Unpin>(r: &mut R, payload: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    // The first byte apart: EOF there is a clean close, anywhere later a torn frame.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(false);
    }
    r.read_exact(&mut len[1..]).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {n} bytes over the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    payload.resize(n, 0);
    r.read_exact(payload).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

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
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        let err = write_frame(&mut a, &big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    /// The bytes of the pull messages are the wire contract with other releases: these were
    /// produced by the release that carried the protocol in `node/src/repl.rs` (cf1dbb7).
    #[test]
    fn pull_messages_keep_their_bytes() {
        let req = PullRequest {
            node: 2,
            after: Position::new(3, 300),
            newest_epoch: 4,
            wait_ms: 500,
            catch_up: true,
        };
        let bytes = encode(&req);
        assert_eq!(bytes, [1, 2, 3, 172, 2, 4, 244, 3, 1]);
        assert_eq!(decode::<PullRequest>(&bytes).unwrap(), req);

        let entries = PullReply::Entries {
            epoch: 4,
            head: Position::new(4, 2),
            entries: vec![Entry {
                pos: Position::new(4, 2),
                key: "k".into(),
                value: Some(b"v".to_vec()),
                prev: Some((b"o".to_vec(), Position::new(3, 1))),
            }],
        };
        let bytes = encode(&entries);
        assert_eq!(bytes, [1, 0, 4, 4, 2, 1, 4, 2, 1, b'k', 1, 1, b'v', 1, 1, b'o', 3, 1]);
        assert_eq!(decode::<PullReply>(&bytes).unwrap(), entries);

        assert_eq!(
            encode(&PullReply::Trimmed {
                head: Position::new(1, 9)
            }),
            [1, 1, 1, 9]
        );
        let fork = PullReply::Fork {
            at: Position::new(2, 5),
            ours: None,
        };
        assert_eq!(encode(&fork), [1, 2, 2, 5, 0]);
        assert_eq!(encode(&PullReply::NotPrimary { primary: Some(3) }), [1, 3, 1, 3]);
    }
}
