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

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::codec::decode;
use crate::protocol::{
    frame_len, read_frame, PullReply, PullRequest, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, STREAM_IDLE,
    STREAM_WRITE_TIMEOUT,
};
use crate::recent::{encode_entries_reply, Encoded};
use crate::{DataError, DataStore, LogRead, NodeId, Position, Repl, ReplCounters};

/// A pull at most this many entries behind the head is read on the serving task's thread directly.
const SMALL_READ_ENTRIES: u64 = 64;

/// A stream keeps its frame buffer between answers up to this capacity (a full batch and then
/// some); a larger one, from an answer with a large value, is let go.
const KEEP_FRAME_BYTES: usize = MAX_BATCH_BYTES + (1 << 20);

/// An answer to a pull: a [`PullReply`], or entries taken from the ring of newest entries
/// (`recent.rs`) in the bytes a reply carries them.
enum Answer {
    Reply(PullReply),
    Recent {
        epoch: u64,
        head: Position,
        entries: Vec<Arc<Encoded>>,
    },
}

impl Answer {
    /// The codec bytes of the answer, appended to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Answer::Reply(reply) => {
                out.push(crate::codec::FORMAT_VERSION);
                let buf = postcard::to_extend(reply, std::mem::take(out)).expect("encoding into a Vec cannot fail");
                *out = buf;
            }
            Answer::Recent { epoch, head, entries } => encode_entries_reply(out, *epoch, *head, entries),
        }
    }
}

/// Serve one pull on node `me`, by the last published [`crate::PrimaryView`].
pub async fn serve_pull(repl: &Repl, me: NodeId, req: PullRequest) -> PullReply {
    match answer_pull(repl, me, req).await {
        Answer::Reply(reply) => reply,
        answer @ Answer::Recent { .. } => {
            // The plain HTTP pull (a replica of an older release): decode what the ring holds.
            let mut bytes = Vec::new();
            answer.encode_into(&mut bytes);
            decode(&bytes).expect("the ring holds entries in the codec's bytes")
        }
    }
}

/// [`serve_pull`], answering from the ring of newest entries when it can.
async fn answer_pull(repl: &Repl, me: NodeId, req: PullRequest) -> Answer {
    let view = repl.view();
    let epoch = match view.primary {
        Some(p) if p.node == me => p.epoch,
        _ if req.catch_up => view.newest_epoch,
        other => {
            return Answer::Reply(PullReply::NotPrimary {
                primary: other.map(|p| p.node),
            })
        }
    };
    if !req.catch_up {
        if req.newest_epoch > epoch {
            return Answer::Reply(PullReply::NotPrimary { primary: None });
        }
        repl.record_ack(req.node, req.after);
    }
    // The store signals every commit itself (from the committing thread).
    let mut head = repl.store.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(5000));
    loop {
        head.borrow_and_update();
        // The newest entries are in memory (`recent.rs`): a replica that keeps up is served from
        // there, without a redb read or decoding anything.
        let read = match repl.store.read_recent(req.after, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES) {
            Some(entries) if !entries.is_empty() => {
                return Answer::Recent {
                    epoch,
                    head: repl.store.visible_position(),
                    entries,
                }
            }
            Some(_) => Ok(LogRead::Entries(Vec::new())),
            None => read_log(repl, req.after),
        };
        match read {
            Ok(LogRead::Entries(entries)) if entries.is_empty() && tokio::time::Instant::now() < deadline => {
                if tokio::time::timeout_at(deadline, head.changed()).await.is_err() {
                    return Answer::Reply(PullReply::Entries {
                        epoch,
                        head: repl.store.visible_position(),
                        entries,
                    });
                }
            }
            Ok(LogRead::Entries(entries)) => {
                return Answer::Reply(PullReply::Entries {
                    epoch,
                    head: repl.store.visible_position(),
                    entries,
                })
            }
            Ok(LogRead::Trimmed { .. }) => {
                return Answer::Reply(PullReply::Trimmed {
                    head: repl.store.visible_position(),
                })
            }
            Err(DataError::Fork { at, ours }) => return Answer::Reply(PullReply::Fork { at, ours }),
            Err(e) => {
                warn!(error = %e, "serve pull: read change log");
                return Answer::Reply(PullReply::NotPrimary { primary: None });
            }
        }
    }
}

/// Read the change log after `after` from redb, on this worker thread. A replica close to the head
/// (sync mode: usually one commit behind) reads a few entries from the page cache, cheaper than
/// anything that moves work between threads: read right here. A longer read (a replica that
/// waited, or is catching up: up to MAX_BATCH_ENTRIES) first has tokio move this worker's other
/// tasks away (`block_in_place`), not the blocking pool and back. kv_bench `--only sync:128:1
/// --only async:128:64 --secs 4`, three alternated runs each: sync p50 0.62-0.63 ms and 357-377 µs
/// of the primary's CPU per write reading here, 0.69-0.70 ms and 433-454 µs with block_in_place
/// for every read; the 64-client rate was no better reading here.
fn read_log(repl: &Repl, after: Position) -> Result<LogRead, DataError> {
    let behind = repl.store.visible_position().seq.saturating_sub(after.seq);
    let read = || repl.store.read_log(after, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
    if behind <= SMALL_READ_ENTRIES {
        read()
    } else {
        tokio::task::block_in_place(read)
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
    let mut out = Vec::new();
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
        let answer = tokio::select! {
            _ = cancel.cancelled() => break "node stopping".to_string(),
            r = answer_pull(repl, me, req) => r,
        };
        // The frame is built in one buffer kept for the stream's life (its length, then the
        // answer): a fresh one per answer was a page fault per 4 KiB of every large answer.
        out.clear();
        out.extend_from_slice(&[0; 4]);
        answer.encode_into(&mut out);
        drop(answer);
        let written = async {
            let len = frame_len(out.len() - 4)?;
            out[..4].copy_from_slice(&len.to_be_bytes());
            ReplCounters::add(&repl.counters.sent_bytes, len as u64);
            io.write_all(&out).await?;
            io.flush().await
        };
        let written = tokio::time::timeout(STREAM_WRITE_TIMEOUT, written).await;
        if out.capacity() > KEEP_FRAME_BYTES {
            out = Vec::new();
        }
        match written {
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
