//! The serving side: answering pulls (one request each, or a pull stream of them), counting the
//! acknowledgements they carry, and streaming a snapshot to a replica behind the retained log.
//!
//! A replica *pulls* from the primary of the newest epoch it knows, asking for entries after its
//! durable position. The pull itself is the replica's acknowledgement: asking for entries after
//! `p` means everything up to `p` is durably applied, so the primary counts sync-mode acks from
//! pulls. When nothing is new, the primary holds the pull open (long poll) until a write lands
//! or `wait_ms` passes, so an idle replica learns of a write within one round trip. Memory stays
//! bounded on both sides: a pull answers at most [`MAX_BATCH_ENTRIES`] / [`MAX_BATCH_BYTES`], and
//! a slow replica just pulls later (the primary keeps nothing per replica but its last
//! acknowledged position).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::decode;
use crate::protocol::{
    read_frame, write_frame, PullReply, PullRequest, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, STREAM_IDLE,
    STREAM_WRITE_TIMEOUT,
};
use crate::{DataError, DataStore, LogRead, NodeId, Repl};

/// A pull at most this many entries behind the head is read on the serving task's thread directly.
const SMALL_READ_ENTRIES: u64 = 64;

/// Serve one pull on node `me`, by the last published [`crate::PrimaryView`].
pub async fn serve_pull(repl: &Repl, me: NodeId, req: PullRequest) -> PullReply {
    let view = repl.view();
    let epoch = match view.primary {
        Some(p) if p.node == me => p.epoch,
        _ if req.catch_up => view.newest_epoch,
        other => {
            return PullReply::NotPrimary {
                primary: other.map(|p| p.node),
            }
        }
    };
    if !req.catch_up {
        if req.newest_epoch > epoch {
            return PullReply::NotPrimary { primary: None };
        }
        repl.record_ack(req.node, req.after);
    }
    // The store signals every commit itself (from the committing thread).
    let mut head = repl.store.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(5000));
    loop {
        head.borrow_and_update();
        // A redb read, on this worker thread. A replica close to the head (sync mode: usually one
        // commit behind) reads a few entries from the page cache, cheaper than anything that
        // moves work between threads: read right here. A longer read (a replica that waited, or
        // is catching up: up to MAX_BATCH_ENTRIES) first has tokio move this worker's other tasks
        // away (`block_in_place`), not the blocking pool and back. kv_bench `--only sync:128:1
        // --only async:128:64 --secs 4`, three alternated runs each: sync p50 0.62-0.63 ms and
        // 357-377 µs of the primary's CPU per write reading here, 0.69-0.70 ms and 433-454 µs
        // with block_in_place for every read; the 64-client rate was no better reading here.
        let behind = repl.store.visible_position().seq.saturating_sub(req.after.seq);
        let read = || repl.store.read_log(req.after, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
        let read = if behind <= SMALL_READ_ENTRIES {
            read()
        } else {
            tokio::task::block_in_place(read)
        };
        match read {
            Ok(LogRead::Entries(entries)) if entries.is_empty() && tokio::time::Instant::now() < deadline => {
                if tokio::time::timeout_at(deadline, head.changed()).await.is_err() {
                    return PullReply::Entries {
                        epoch,
                        head: repl.store.visible_position(),
                        entries,
                    };
                }
            }
            Ok(LogRead::Entries(entries)) => {
                return PullReply::Entries {
                    epoch,
                    head: repl.store.visible_position(),
                    entries,
                }
            }
            Ok(LogRead::Trimmed { .. }) => {
                return PullReply::Trimmed {
                    head: repl.store.visible_position(),
                }
            }
            Err(DataError::Fork { at, ours }) => return PullReply::Fork { at, ours },
            Err(e) => {
                warn!(error = %e, "serve pull: read change log");
                return PullReply::NotPrimary { primary: None };
            }
        }
    }
}

/// The primary's side of one pull stream (`from` names the replica in logs): answer each request
/// as [`serve_pull`] would, until the replica closes it, it sits idle for [`STREAM_IDLE`], a frame
/// is malformed, an answer cannot be written within [`STREAM_WRITE_TIMEOUT`], or `cancel` fires.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    repl: &Repl,
    me: NodeId,
    mut io: S,
    from: &str,
    cancel: &CancellationToken,
) {
    debug!(from, "replication stream opened");
    let why = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break "node stopping".to_string(),
            r = tokio::time::timeout(STREAM_IDLE, read_frame(&mut io)) => r,
        };
        let req: PullRequest = match frame {
            Ok(Ok(Some(bytes))) => match decode(&bytes) {
                Ok(req) => req,
                Err(e) => break format!("malformed request: {e}"),
            },
            Ok(Ok(None)) => break "closed by the replica".to_string(),
            Ok(Err(e)) => break format!("read: {e}"),
            Err(_) => break format!("no request for {} s", STREAM_IDLE.as_secs()),
        };
        // Cancelling drops only a read-only long poll: nothing is half done.
        let reply = tokio::select! {
            _ = cancel.cancelled() => break "node stopping".to_string(),
            r = serve_pull(repl, me, req) => r,
        };
        let bytes = repl.encode_reply(&reply);
        match tokio::time::timeout(STREAM_WRITE_TIMEOUT, write_frame(&mut io, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("write: {e}"),
            Err(_) => break format!("answer not written within {} s", STREAM_WRITE_TIMEOUT.as_secs()),
        }
    };
    debug!(from, why, "replication stream closed");
}

/// Stream a full snapshot: length-prefixed chunks (u32 big-endian) read from one consistent read
/// transaction on a blocking thread, with a bounded channel in between so a slow reader holds
/// back the producer instead of growing memory. The node sends what it receives as the body of
/// its snapshot answer; dropping the receiver stops the producer.
pub fn serve_snapshot(store: &DataStore) -> mpsc::Receiver<Result<Vec<u8>, std::io::Error>> {
    let store = store.clone();
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match store.snapshot() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        info!(position = %reader.position(), "streaming a datastore snapshot to a replica");
        loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    let mut framed = Vec::with_capacity(chunk.len() + 4);
                    framed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&chunk);
                    if tx.blocking_send(Ok(framed)).is_err() {
                        return; // the replica went away
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
    });
    rx
}
