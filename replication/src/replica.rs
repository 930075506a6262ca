//! The pulling side: the replica's apply worker (over its pull stream, or a request each from a
//! primary of an older release), a new primary's catch-up, fork detection and rollback, snapshot
//! resync, and the background duties every node has (position reports, log retention).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{decode, encode};
use crate::peers::{ByteStream, PeerRpc, ReplicationPeers};
use crate::protocol::{
    read_frame_into, write_frame, PullReply, PullRequest, ASYNC_PULL_GAP, MAX_BATCH_BYTES, PULL_WAIT, REPORT_EVERY,
    RETRY_STREAM,
};
use crate::state::lock;
use crate::{DataStore, LogRead, NodeId, Position, PrimaryView, Repl, ReplCounters, ReplError, ReplicationMode};

/// The replica side of one node: its replication state, its peers and its view of the primary.
pub struct Replica<'a, P> {
    /// This node's id.
    pub me: NodeId,
    pub repl: &'a Repl,
    pub peers: &'a P,
    /// How long a pull may take beyond its long-poll wait ([`PULL_WAIT`]).
    pub request_timeout: Duration,
}

impl<P: ReplicationPeers> Replica<'_, P> {
    /// The apply worker: pull from the primary of the newest view, apply, repeat, until `cancel`
    /// fires. A pull and the apply of its answer always finish before it returns.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut paused = self.repl.paused.subscribe();
        // One receiver for the whole loop: `borrow_and_update` below marks what was read as seen,
        // so `changed()` waits for the next view. (A fresh receiver each round would report the
        // first view change as new every time, and this loop would spin on a primary.)
        let mut view_rx = self.repl.subscribe_view();
        // The connection to the primary the pulls go over.
        let mut stream = PullStream::default();
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if *paused.borrow_and_update() {
                stream.close();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = paused.changed() => {}
                }
                continue;
            }
            // Copied out: the watch's read guard must not live across the awaits below.
            let primary = view_rx.borrow_and_update().primary;
            let primary = match primary {
                Some(p) if p.node != self.me => p,
                _ => {
                    // Primary (or none yet): nothing to pull. Wait for a view change.
                    stream.close();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = view_rx.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            let before = self.repl.position();
            match self
                .pull_once(primary.node, primary.epoch, Some(&mut stream), Some(&cancel))
                .await
            {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    // Async mode: after applying entries, let more accumulate before the next pull
                    // (see ASYNC_PULL_GAP). Sync mode pulls at once: the next pull is the ack.
                    let asynchronous = view_rx.borrow().mode == ReplicationMode::Async;
                    if asynchronous && self.repl.position() != before {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(ASYNC_PULL_GAP) => {}
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, primary = primary.node, "replication pull failed");
                    lock(&self.repl.replica).last_error = Some(e.to_string());
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One pull from `source` and the apply of what it returns: over `stream` when given (the
    /// replica's apply loop), else with one request (a new primary's catch-up, from any member).
    /// `cancel` ends the wait for the answer (nothing is applied then); once an answer is in,
    /// its apply (or rollback, or snapshot install) runs to the end.
    async fn pull_once(
        &self,
        source: NodeId,
        epoch: u64,
        stream: Option<&mut PullStream<P::Stream>>,
        cancel: Option<&CancellationToken>,
    ) -> Result<(), ReplError> {
        let catch_up = stream.is_none();
        let repl = self.repl;
        let req = PullRequest {
            node: self.me,
            after: repl.position(),
            newest_epoch: epoch.max(repl.store.newest_epoch()),
            wait_ms: if catch_up { 0 } else { PULL_WAIT.as_millis() as u64 },
            catch_up,
        };
        let timeout = PULL_WAIT + self.request_timeout.min(Duration::from_secs(5));
        let fetch = async {
            let streamed = match stream {
                Some(s) => s.pull(self.peers, source, &req, timeout).await?,
                None => None,
            };
            match streamed {
                Some((reply, size)) => Ok::<_, ReplError>((reply, size, "stream")),
                None => {
                    let (reply, size) = self.peers.call(source, PeerRpc::Pull, &req, timeout).await?;
                    Ok((reply, size, "pull"))
                }
            }
        };
        let (reply, size, transport): (PullReply, usize, &'static str) = match cancel {
            Some(cancel) => tokio::select! {
                r = fetch => r?,
                // Stopping while the primary holds the pull open: nothing is applied yet. A stream
                // left mid-exchange is dropped with the worker.
                _ = cancel.cancelled() => return Ok(()),
            },
            None => fetch.await?,
        };
        ReplCounters::add(&repl.counters.received_bytes, size as u64);
        match reply {
            PullReply::Entries {
                epoch: frame_epoch,
                head,
                entries,
            } => {
                if !catch_up && frame_epoch < repl.view().newest_epoch {
                    return Err(ReplError::DeposedPrimary { epoch: frame_epoch });
                }
                if !catch_up && repl.paused() {
                    // Paused while this pull was in flight: drop the batch, apply nothing.
                    return Ok(());
                }
                {
                    // Contact first: a reader that sees the applied entries must also see a contact
                    // (the `Keel-Lag-Ms` header is absent until the first one).
                    let mut r = lock(&repl.replica);
                    r.source = Some(source);
                    r.source_head = Some(head.to_string());
                    r.source_head_pos = Some(head);
                    if !catch_up {
                        r.transport = Some(transport);
                    }
                    r.last_contact = Some(Instant::now());
                }
                if !entries.is_empty() {
                    let n = entries.len();
                    let source_epoch = if catch_up {
                        entries.iter().map(|e| e.pos.epoch).max().unwrap_or(0)
                    } else {
                        frame_epoch
                    };
                    // The apply's fsync is on the sync-mode acknowledgement path. A small batch (one
                    // journal append, usually well under a millisecond) is applied right here: handing
                    // this worker's other tasks to another thread first (`block_in_place`) cost more
                    // than it saved. kv_bench `--only sync:128:1 --only sync:16384:1 --secs 3`, five
                    // alternated runs each: p50 0.85-1.01 and 1.10-1.29 ms applied here, 0.90-0.96
                    // and 1.26-1.34 ms with block_in_place. (A checkpoint may run in it every 100 ms:
                    // a durable commit of what those 100 ms dirtied, a few ms at most.) A large batch
                    // (a durable redb commit of all its pages) still moves the other tasks away first.
                    let apply = || repl.store.apply(source_epoch, &entries);
                    if crate::journaled_batch(&entries) {
                        apply()
                    } else {
                        tokio::task::block_in_place(apply)
                    }
                    .map_err(|source| ReplError::Apply { count: n, source })?;
                    ReplCounters::add(&repl.counters.applied_entries, n as u64);
                }
                let mut r = lock(&repl.replica);
                let now = Instant::now();
                r.last_error = None;
                if repl.position() >= head {
                    r.caught_up_at = Some(now);
                }
                Ok(())
            }
            PullReply::Fork { at, ours } => {
                info!(%at, ours = %ours.map(|p| p.to_string()).unwrap_or_else(|| "none".into()), source, "change log diverges from the primary's: finding the fork point");
                match self.find_fork_point(source).await? {
                    Some(fork) => self.roll_back(fork).await,
                    None if catch_up => Err(ReplError::ForkInTrimmedHistory { peer: source }),
                    None => {
                        // Keep what we still retain, then start over from a snapshot.
                        let start = repl.store.position_at(log_start_seq(&repl.store))?;
                        self.roll_back(start.unwrap_or_default()).await?;
                        self.resync(source).await
                    }
                }
            }
            PullReply::Trimmed { head } => {
                if catch_up {
                    return Err(ReplError::TrimmedAtSource {
                        peer: source,
                        position: repl.position(),
                    });
                }
                debug!(%head, "behind the retained log");
                self.resync(source).await
            }
            PullReply::NotPrimary { primary } => Err(ReplError::NotPrimary {
                peer: source,
                names: primary,
            }),
        }
    }

    /// The highest position both this node and `source` have, by bisecting over seq with
    /// [`PeerRpc::PositionAt`] (our log and theirs agree up to the fork and differ after it).
    /// `None` when even the oldest entry this node retains differs (or `source` no longer has
    /// it): the fork lies in trimmed history and only a snapshot can bring this node back.
    pub async fn find_fork_point(&self, source: NodeId) -> Result<Option<Position>, ReplError> {
        let store = &self.repl.store;
        let agrees = |seq: u64| async move {
            let ours = store.position_at(seq)?;
            let (theirs, _): (Option<Position>, usize) = self
                .peers
                .call(source, PeerRpc::PositionAt, &seq, Duration::from_secs(2))
                .await?;
            Ok::<bool, ReplError>(ours.is_some() && ours == theirs)
        };
        // lo always agrees, hi never does. Seq 0 is the empty prefix, which everyone shares.
        let mut lo = log_start_seq(store);
        if lo > 0 && !agrees(lo).await? {
            return Ok(None);
        }
        let mut hi = self.repl.position().seq + 1;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if agrees(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(Some(Position::default()));
        }
        Ok(store.position_at(lo)?.or(Some(Position::default())))
    }

    /// Roll back everything after `fork` into the diverged table.
    async fn roll_back(&self, fork: Position) -> Result<(), ReplError> {
        let repl = self.repl;
        if fork >= repl.position() {
            return Ok(());
        }
        let store = repl.store.clone();
        let rolled = tokio::task::spawn_blocking(move || store.rollback_to(fork))
            .await
            .map_err(|source| ReplError::Task {
                what: "roll back",
                source,
            })?
            .map_err(|source| ReplError::RollBack { fork, source })?;
        warn!(%fork, entries = rolled.len(), "rolled back entries the primary never had; they are kept in the diverged table (GET /v1/diverged)");
        lock(&repl.replica).rolled_back += rolled.len() as u64;
        Ok(())
    }

    /// The new primary's catch-up step: pull whatever it lacks from the most advanced of
    /// `members` that answers before accepting writes. With sync replication, a majority of
    /// survivors includes a member holding every acknowledged write, so none is lost.
    pub async fn catch_up(&self, epoch: u64, members: impl IntoIterator<Item = NodeId>) -> Result<(), ReplError> {
        let mut best: Option<(NodeId, Position)> = None;
        for id in members.into_iter().filter(|id| *id != self.me) {
            let r: Result<(Position, usize), _> = self
                .peers
                .call(id, PeerRpc::Position, &(), Duration::from_millis(500))
                .await;
            if let Ok((p, _)) = r {
                if best.is_none_or(|(_, b)| p > b) {
                    best = Some((id, p));
                }
            }
        }
        let mine = self.repl.position();
        if let Some((source, target)) = best.filter(|(_, p)| *p > mine) {
            info!(source, from = %mine, to = %target, epoch, "catch-up: pulling entries this new primary lacks");
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.repl.position() < target {
                if Instant::now() > deadline {
                    return Err(ReplError::CatchUpTimeout { peer: source, target });
                }
                self.pull_once(source, epoch, None, None).await?;
            }
        }
        let store = self.repl.store.clone();
        tokio::task::spawn_blocking(move || store.observe_epoch(epoch))
            .await
            .map_err(|source| ReplError::Task {
                what: "observe epoch",
                source,
            })??;
        debug!(epoch, position = %self.repl.position(), "catch-up done");
        Ok(())
    }

    /// Replace this replica's contents with the primary's snapshot, then continue from its
    /// position. Entries only this node has are rolled back into `diverged` first.
    async fn resync(&self, source: NodeId) -> Result<(), ReplError> {
        let repl = self.repl;
        // Keep anything only this node has: roll back to the last position both logs share.
        if repl.position() > Position::default() {
            if let Ok(Some(fork)) = self.find_fork_point(source).await {
                self.roll_back(fork).await?;
            }
        }
        info!(source, from = %repl.position(), "replica is behind the primary's retained log: installing a snapshot");
        let started = Instant::now();
        let mut body = self.peers.snapshot(source, Duration::from_secs(3600)).await?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let installer = tokio::task::spawn_blocking({
            let store = repl.store.clone();
            move || install_chunks(&store, rx)
        });
        let mut buf: Vec<u8> = Vec::new();
        loop {
            match body.read_into(&mut buf).await {
                Ok(true) => {
                    for chunk in take_frames(&mut buf) {
                        tx.send(chunk).await.map_err(|_| ReplError::InstallerStopped)?;
                    }
                }
                Ok(false) => break,
                Err(error) => return Err(ReplError::SnapshotStream { peer: source, error }),
            }
        }
        drop(tx);
        let (pos, chunks) = installer.await.map_err(|source| ReplError::Task {
            what: "install snapshot",
            source,
        })??;
        info!(%pos, chunks, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot installed");
        Ok(())
    }
}

/// Feed snapshot chunks from `rx` to a new installer of `store`, on a blocking thread.
fn install_chunks(store: &DataStore, mut rx: mpsc::Receiver<Vec<u8>>) -> Result<(Position, u64), ReplError> {
    let mut inst = store.begin_install()?;
    let mut chunks = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        inst.push_chunk(&chunk)?;
        chunks += 1;
    }
    Ok((inst.finish()?, chunks))
}

/// Take every complete frame (u32 big-endian length, then the payload) from the front of `buf`;
/// a torn frame at the end stays for the next read.
fn take_frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if buf.len() - at < 4 + len {
            break;
        }
        out.push(buf[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    buf.drain(..at);
    out
}

/// Seq of this node's log start: entries up to it were trimmed (or came in a snapshot).
fn log_start_seq(store: &DataStore) -> u64 {
    match store.read_log(Position::default(), 1, 1) {
        Ok(LogRead::Trimmed {
            oldest_retained: Some(p),
        }) => p.seq.saturating_sub(1),
        Ok(LogRead::Trimmed { oldest_retained: None }) => store.position().seq,
        _ => 0,
    }
}

/// A replica's stream to its primary, kept by the apply loop between pulls.
pub struct PullStream<S> {
    /// The open connection and whom it goes to.
    open: Option<(NodeId, S)>,
    /// A peer that answered 404 to the stream, and until when to use plain pulls there.
    unsupported: Option<(NodeId, Instant)>,
    /// The last answer's frame: one buffer for the stream's life, not a fresh (zeroed, page
    /// faulted) one per answer.
    frame: Vec<u8>,
}

impl<S> Default for PullStream<S> {
    fn default() -> Self {
        PullStream {
            open: None,
            unsupported: None,
            frame: Vec::new(),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> PullStream<S> {
    /// Drop the connection (the node stopped pulling: it is primary, or paused).
    pub fn close(&mut self) {
        self.open = None;
    }

    /// One pull from `source` over the stream, opening it first when needed. `None`: that peer
    /// does not offer the stream, pull with a request instead. Errors close the connection. The
    /// answer comes with its size in bytes.
    pub async fn pull<P: ReplicationPeers<Stream = S>>(
        &mut self,
        peers: &P,
        source: NodeId,
        req: &PullRequest,
        timeout: Duration,
    ) -> Result<Option<(PullReply, usize)>, ReplError> {
        if let Some((peer, until)) = &self.unsupported {
            if *peer == source && Instant::now() < *until {
                return Ok(None);
            }
            self.unsupported = None;
        }
        if self.open.as_ref().is_some_and(|(s, _)| *s != source) {
            self.open = None;
        }
        // A connection that sat idle may have been closed by the other side meanwhile: when one
        // that was already open fails before any answer, try once more on a fresh one.
        let mut reused = self.open.is_some();
        loop {
            if self.open.is_none() {
                match peers.open_stream(source, timeout).await {
                    Ok(io) => self.open = Some((source, io)),
                    Err(e) if e.is_not_offered() => {
                        info!(
                            source,
                            "the primary does not offer the replication stream (an older release): pulling with a request each"
                        );
                        self.unsupported = Some((source, Instant::now() + RETRY_STREAM));
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some((_, io)) = self.open.as_mut() else {
                unreachable!("opened above");
            };
            let frame = &mut self.frame;
            let exchange = async {
                write_frame(io, &encode(req)).await?;
                read_frame_into(io, frame).await.map(|read| read.then_some(()))
            };
            let res = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(Some(()))) => match decode::<PullReply>(&self.frame) {
                    Ok(reply) => Ok((reply, self.frame.len())),
                    Err(error) => Err(ReplError::MalformedAnswer {
                        peer: source,
                        source: error,
                    }),
                },
                Ok(failed @ (Ok(None) | Err(_))) if reused => {
                    debug!(source, outcome = ?failed.err(), "replication stream: reused connection closed or failed; opening a new one");
                    reused = false;
                    self.open = None;
                    continue;
                }
                Ok(Ok(None)) => Err(ReplError::StreamClosed { peer: source }),
                Ok(Err(e)) => Err(ReplError::StreamIo {
                    peer: source,
                    source: e,
                }),
                Err(_) => Err(ReplError::StreamTimeout {
                    peer: source,
                    timeout_ms: timeout.as_millis() as u64,
                }),
            };
            if self.frame.capacity() > MAX_BATCH_BYTES + (1 << 20) {
                self.frame = Vec::new();
            }
            return match res {
                Ok(answer) => {
                    peers.record_exchange(source, Ok(()));
                    Ok(Some(answer))
                }
                Err(e) => {
                    self.open = None;
                    peers.record_exchange(source, Err(&e));
                    Err(e)
                }
            };
        }
    }
}

/// Report this node's position to the coordinator every [`REPORT_EVERY`], for failover
/// ranking, until `cancel` fires (a report in flight finishes first).
pub async fn report_worker<P: ReplicationPeers>(repl: &Repl, peers: &P, me: NodeId, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(coordinator) = peers.coordinator().filter(|c| *c != me) else {
            continue;
        };
        let r: Result<((), usize), _> = peers
            .call(coordinator, PeerRpc::Report, &(me, repl.position()), REPORT_EVERY)
            .await;
        if let Err(e) = r {
            debug!(error = %e, "report position to the coordinator");
        }
    }
}

/// Trim the change log to the view's retention every few seconds, until `cancel` fires (a trim
/// in progress finishes first).
pub async fn retention_worker(repl: &Repl, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let keep = repl.view().log_retention_entries;
        if keep == u64::MAX {
            continue; // no view published yet (or keep everything)
        }
        let store = repl.store.clone();
        match tokio::task::spawn_blocking(move || store.trim(keep)).await {
            Ok(Ok(n)) if n > 0 => debug!(dropped = n, keep, "trimmed the change log"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "trim the change log"),
            Err(e) => warn!(error = %e, "trim task"),
        }
    }
}

/// Keep `repl`'s view current: publish what `view` computes every time `changed` fires, until
/// `cancel`. A helper for the node's feeder (`changed` wraps its cluster-state watch).
pub async fn feed_view<T: Send + Sync>(
    repl: &Repl,
    mut source: watch::Receiver<T>,
    view: impl Fn(&T) -> PrimaryView,
    cancel: CancellationToken,
) {
    loop {
        repl.publish_view(view(&source.borrow_and_update()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = source.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;
    use crate::codec;
    use crate::peers::{CallResult, PeerCallError};
    use crate::store::tests::{open_temp, put};
    use crate::{serve_pull, serve_snapshot, serve_stream, PrimaryRef};

    const LOCAL: NodeId = 1;
    const REMOTE: NodeId = 2;

    /// The other member, in the same process: its calls are answered by the crate's own serving
    /// functions on its [`Repl`], through the codec as on the wire.
    struct FakePeer {
        remote: Arc<Repl>,
        offers_stream: bool,
        cancel: CancellationToken,
    }

    struct FakeSnapshot(mpsc::Receiver<Result<Vec<u8>, std::io::Error>>);

    impl ByteStream for FakeSnapshot {
        async fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, PeerCallError> {
            match self.0.recv().await {
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    Ok(true)
                }
                Some(Err(e)) => Err(PeerCallError::Network {
                    addr: "fake".into(),
                    message: e.to_string(),
                }),
                None => Ok(false),
            }
        }
    }

    fn answer<Resp: DeserializeOwned>(value: &impl Serialize) -> (Resp, usize) {
        let bytes = codec::encode(value);
        (codec::decode(&bytes).expect("answer type"), bytes.len())
    }

    impl ReplicationPeers for FakePeer {
        type Stream = tokio::io::DuplexStream;
        type Snapshot = FakeSnapshot;

        async fn call<Req, Resp>(&self, peer: NodeId, rpc: PeerRpc, req: &Req, _: Duration) -> CallResult<Resp>
        where
            Req: Serialize + Sync,
            Resp: DeserializeOwned + Send,
        {
            assert_eq!(peer, REMOTE);
            let req = codec::encode(req);
            let store = &self.remote.store;
            Ok(match rpc {
                PeerRpc::Pull => answer(&serve_pull(&self.remote, REMOTE, codec::decode(&req).unwrap()).await),
                PeerRpc::Position => answer(&self.remote.position()),
                PeerRpc::PositionAt => answer(&store.position_at(codec::decode(&req).unwrap()).unwrap()),
                PeerRpc::Report => answer(&()),
            })
        }

        async fn open_stream(&self, _peer: NodeId, _timeout: Duration) -> Result<Self::Stream, PeerCallError> {
            if !self.offers_stream {
                return Err(PeerCallError::Status {
                    addr: "fake".into(),
                    status: 404,
                    body: String::new(),
                });
            }
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let (remote, cancel) = (self.remote.clone(), self.cancel.clone());
            tokio::spawn(async move { serve_stream(&remote, REMOTE, theirs, "test", &cancel).await });
            Ok(ours)
        }

        async fn snapshot(&self, _peer: NodeId, _timeout: Duration) -> Result<Self::Snapshot, PeerCallError> {
            Ok(FakeSnapshot(serve_snapshot(&self.remote.store)))
        }

        fn coordinator(&self) -> Option<NodeId> {
            None
        }
    }

    fn view_with_primary(epoch: u64) -> PrimaryView {
        PrimaryView {
            primary: Some(PrimaryRef { node: REMOTE, epoch }),
            newest_epoch: epoch,
            ..PrimaryView::default()
        }
    }

    /// A local and a remote node; the remote is the primary of `epoch` in both views.
    fn pair(epoch: u64, offers_stream: bool) -> (Vec<tempfile::TempDir>, Repl, FakePeer) {
        let (d1, local) = open_temp();
        let (d2, remote) = open_temp();
        let (local, remote) = (Repl::new(local), Arc::new(Repl::new(remote)));
        local.publish_view(view_with_primary(epoch));
        remote.publish_view(view_with_primary(epoch));
        let peer = FakePeer {
            remote,
            offers_stream,
            cancel: CancellationToken::new(),
        };
        (vec![d1, d2], local, peer)
    }

    fn replica<'a>(repl: &'a Repl, peers: &'a FakePeer) -> Replica<'a, FakePeer> {
        Replica {
            me: LOCAL,
            repl,
            peers,
            request_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn whole_frames_are_taken_and_a_torn_one_stays() {
        let mut buf = vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 3, b'c'];
        assert_eq!(take_frames(&mut buf), vec![b"ab".to_vec(), vec![]]);
        assert_eq!(buf, [0, 0, 0, 3, b'c']);
        buf.extend_from_slice(b"de");
        assert_eq!(take_frames(&mut buf), vec![b"cde".to_vec()]);
        assert!(buf.is_empty());
    }

    /// The old primary of epoch 1 kept three entries the new primary (epoch 2) never had: the
    /// fork point is found by bisection over the peer, the three are rolled back into
    /// `diverged`, and the replica then follows the new primary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fork_is_found_rolled_back_and_followed() {
        let (_dirs, local, peer) = pair(2, false);
        let remote = &peer.remote;
        for i in 0..5 {
            local.store.write(1, put(&format!("k{i}"), b"shared")).await.unwrap();
        }
        let LogRead::Entries(shared) = local.store.read_log(Position::default(), 100, 1 << 20).unwrap() else {
            panic!("entries");
        };
        remote.store.apply(1, &shared).unwrap();
        for i in 0..3 {
            local.store.write(1, put(&format!("lost{i}"), b"old")).await.unwrap();
        }
        remote.store.observe_epoch(2).unwrap();
        for i in 0..4 {
            remote.store.write(2, put(&format!("new{i}"), b"new")).await.unwrap();
        }

        let r = replica(&local, &peer);
        assert_eq!(r.find_fork_point(REMOTE).await.unwrap(), Some(Position::new(1, 5)));
        // The first pull meets the fork and rolls back; the next one applies the new primary's.
        let mut stream = PullStream::default();
        r.pull_once(REMOTE, 2, Some(&mut stream), None).await.unwrap();
        assert_eq!(local.position(), Position::new(1, 5));
        assert_eq!(local.replica_status().rolled_back, 3);
        assert_eq!(local.store.diverged(10).unwrap().len(), 3);
        r.pull_once(REMOTE, 2, Some(&mut stream), None).await.unwrap();
        assert_eq!(local.position(), Position::new(2, 9));
        assert!(local.store.get("lost0").unwrap().is_none());
        assert_eq!(local.store.get("new3").unwrap().unwrap().0, b"new");
    }

    /// A replica behind the primary's retained log installs its snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_behind_the_retained_log_resyncs_from_a_snapshot() {
        let (_dirs, local, peer) = pair(1, false);
        for i in 0..20 {
            peer.remote.store.write(1, put(&format!("k{i}"), b"v")).await.unwrap();
        }
        peer.remote.store.trim(5).unwrap();
        let r = replica(&local, &peer);
        // A new primary's catch-up cannot use a snapshot; a replica's pull can.
        assert!(matches!(
            r.pull_once(REMOTE, 1, None, None).await,
            Err(ReplError::TrimmedAtSource { peer: REMOTE, .. })
        ));
        r.pull_once(REMOTE, 1, Some(&mut PullStream::default()), None)
            .await
            .unwrap();
        assert_eq!(local.position(), peer.remote.position());
        assert_eq!(local.store.get("k0").unwrap().unwrap().0, b"v");
    }

    /// The apply worker pulls over the stream, applies, records the transport, and stops when
    /// cancelled; with a peer that does not offer the stream it pulls a request each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_apply_worker_follows_over_either_transport_and_stops_on_cancel() {
        for (offers_stream, transport) in [(true, "stream"), (false, "pull")] {
            let (_dirs, local, peer) = pair(1, offers_stream);
            let cancel = CancellationToken::new();
            let worker = async {
                replica(&local, &peer).run(cancel.clone()).await;
            };
            let writer = async {
                for i in 0..50 {
                    peer.remote.store.write(1, put(&format!("k{i}"), b"v")).await.unwrap();
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while local.position() != peer.remote.position() {
                    assert!(Instant::now() < deadline, "replica did not catch up");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // The replica's next pull acknowledges everything it applied.
                assert!(
                    peer.remote
                        .wait_acks(peer.remote.position(), 1, Duration::from_secs(5))
                        .await
                );
                cancel.cancel();
            };
            tokio::join!(worker, writer);
            peer.cancel.cancel();
            let status = local.replica_status();
            assert_eq!(status.transport, Some(transport));
            assert_eq!(status.source, Some(REMOTE));
            assert_eq!(ReplCounters::get(&local.counters.applied_entries), 50);
        }
    }

    /// Cancelling the worker while the primary holds an idle pull open returns at once, not
    /// after the long poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_apply_worker_stops_during_a_long_poll() {
        let (_dirs, local, peer) = pair(1, true);
        let cancel = CancellationToken::new();
        let stopper = async {
            // The first answer (an idle primary holds it for PULL_WAIT), then into the next poll.
            let deadline = Instant::now() + Duration::from_secs(5);
            while local.replica_status().source.is_none() {
                assert!(Instant::now() < deadline, "no first answer");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
            Instant::now()
        };
        let worker = replica(&local, &peer);
        let (_, cancelled_at) = tokio::join!(worker.run(cancel.clone()), stopper);
        assert!(cancelled_at.elapsed() < PULL_WAIT / 2, "{:?}", cancelled_at.elapsed());
        peer.cancel.cancel();
    }

    /// A new primary pulls what it lacks from the most advanced member, then refuses older epochs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_pulls_from_the_most_advanced_member() {
        let (_dirs, local, peer) = pair(1, false);
        for i in 0..7 {
            peer.remote.store.write(1, put(&format!("k{i}"), b"v")).await.unwrap();
        }
        let r = replica(&local, &peer);
        r.catch_up(2, [LOCAL, REMOTE]).await.unwrap();
        assert_eq!(local.position(), Position::new(1, 7));
        assert_eq!(local.store.newest_epoch(), 2);
    }
}
