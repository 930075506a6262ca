//! Group commit of primary writes.
//!
//! One dedicated thread (`keel-data-writer`) owns the primary write path. `DataStore::write`
//! queues the write and waits for its answer. The thread takes the first waiting write, then
//! every other one already waiting (up to [`MAX_BATCH_WRITES`] writes or [`MAX_BATCH_BYTES`]),
//! applies them in order in ONE redb write transaction, makes the batch durable once (one
//! fsync), and only then answers each caller. Under load, the writes that arrive during one
//! fsync form the next batch, so the fsync cost is shared instead of paid per write.
//!
//! The durability point (see `commit_batch`): a batch of up to `JOURNAL_BATCH_MAX` bytes of keys
//! and values is appended to the datastore journal and fdatasynced, and its redb transaction
//! commits without fsync (`journal.rs`: a checkpoint makes redb durable every 100 ms, after the
//! answers, and a restart applies the journal again). A larger batch is a durable redb commit.
//!
//! Failure rules: a CAS mismatch or a stale epoch refuses only that write (checked inside the
//! batch, against the batch's own earlier writes); any storage error or a failed commit fails
//! every write of the batch: there are no partial acknowledgements.
//!
//! A dedicated thread rather than `spawn_blocking`: redb allows one write transaction at a time
//! anyway, and a plain thread keeps the fsync off tokio's blocking pool and the batch loop simple.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use crate::journal::JOURNAL_BATCH_MAX;
use crate::recent::BatchEntries;
use crate::store::{apply_write, begin_write, write_meta, Ctx, Inner, KV, LOG};
use crate::values::{with_appenders, VALUES};
use crate::{DataError, WriteOp, WriteResult};

/// Most writes in one batch.
pub(crate) const MAX_BATCH_WRITES: usize = 256;
/// A batch stops taking writes once their keys and values reach this many bytes.
pub(crate) const MAX_BATCH_BYTES: usize = 4 << 20;
/// Writes that may wait for the writer before `write()` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 1024;

struct Request {
    epoch: u64,
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, DataError>>,
}

impl Request {
    fn bytes(&self) -> usize {
        self.op.key().len() + self.op.value_len()
    }
}

pub(crate) struct WriterHandle {
    /// `None` once dropping: closing the channel is what stops the thread.
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    pub fn spawn(inner: Arc<Inner>) -> Result<WriterHandle, DataError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("keel-data-writer".into())
            .spawn(move || run(inner, rx))
            .ctx("start datastore writer thread")?;
        Ok(WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub async fn submit(&self, inner: &Inner, epoch: u64, op: WriteOp) -> Result<WriteResult, DataError> {
        let tx = self.tx.as_ref().ok_or(DataError::Closed)?;
        let (reply, answer) = oneshot::channel();
        inner.stats.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(Request { epoch, op, reply }).await.is_err() {
            inner.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(DataError::Closed);
        }
        // The writer answers every request it took; a dropped reply means it died.
        answer.await.unwrap_or(Err(DataError::Closed))
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Runs when the last DataStore clone goes away, so nobody waits on a queued write any more.
        // Close the queue, then wait for the thread: it finishes its current batch (at most one
        // fsync) and releases the database, so the file can be reopened right after.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("datastore writer thread panicked");
            }
        }
    }
}

fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = rx.blocking_recv() {
        // Take the write lock before draining the queue: writes that arrive while `apply`, a
        // trim or the previous commit hold it join this batch.
        let mut guard = inner.lock_meta();
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.bytes();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| ((r.epoch, r.op), r.reply)).unzip();

        let meta = *guard;
        let results = match commit_batch(&inner, meta, ops) {
            Ok((new, results)) => {
                if new != meta {
                    // Publish before answering: a caller that got its ack sees position() >= its pos.
                    inner.publish(&mut guard, new);
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    inner.stats.commits.fetch_add(1, Ordering::Relaxed);
                    inner.stats.writes.fetch_add(ok, Ordering::Relaxed);
                    inner.stats.largest_batch.fetch_max(ok, Ordering::Relaxed);
                }
                results
            }
            Err(e) => {
                // Handled here: every write of the batch fails with this error.
                tracing::error!(writes = n, error = %e, "datastore write batch failed; failing every write in it");
                inner.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                inner.reload_meta(&mut guard);
                vec![Err(e); replies.len()]
            }
        };
        drop(guard);
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone away (cancelled future): its write stands regardless.
            let _ = reply.send(result);
        }
        inner.stats.queued.fetch_sub(n, Ordering::Relaxed);
        // After answering, so no caller waits for it: make redb durable and empty the journal
        // once it is old or large enough (`journal.rs`). Writes arriving meanwhile queue up and
        // form the next batch. A failure is retried after the next batch; the journal keeps
        // every batch meanwhile.
        inner.checkpoint_if_due(&inner.lock_meta());
    }
}

/// Apply a batch in one transaction and commit it. Returns the new bookkeeping and one result per
/// write. When nothing changed (every write refused) no transaction is committed.
type BatchOutcome = (crate::store::Meta, Vec<Result<WriteResult, DataError>>);

fn commit_batch(inner: &Inner, meta: crate::store::Meta, ops: Vec<(u64, WriteOp)>) -> Result<BatchOutcome, DataError> {
    // Small batches become durable through the journal (one sequential append and fdatasync,
    // `journal.rs`) and commit to redb without fsync; a larger one is committed durably, as a
    // replica does with a large pulled batch (its bytes would be written twice, and its fsync is
    // shared by many bytes anyway).
    let bytes: usize = ops.iter().map(|(_, op)| op.key().len() + op.value_len()).sum();
    let mut journal = (bytes <= JOURNAL_BATCH_MAX).then(|| Vec::with_capacity(ops.len()));
    let mut tx = begin_write(&inner.db)?;
    let mut new = meta;
    let mut results = Vec::with_capacity(ops.len());
    let mut recent = BatchEntries::new(&inner.recent);
    {
        let mut kv = tx.open_table(KV).ctx("open kv table")?;
        let mut log = tx.open_table(LOG).ctx("open log table")?;
        let mut values = tx.open_table(VALUES).ctx("open values table")?;
        let external = inner.format >= 2;
        let mut vlog = inner.vlog.begin();
        with_appenders(&mut log, &mut values, meta.position.seq + 1, |log, values| {
            for (epoch, op) in ops {
                results.push(apply_write(
                    &mut kv,
                    log,
                    values,
                    inner.vlog_for_hold(&mut vlog),
                    external,
                    &mut new,
                    epoch,
                    op,
                    journal.as_mut(),
                    &mut recent,
                )?);
            }
            Ok(())
        })?;
        // The batch's large values, written before the commit that names them (`vlog.rs`).
        vlog.finish(&tx)?;
    }
    if new == meta {
        tx.abort().ctx("abort empty write batch")?;
        return Ok((meta, results));
    }
    write_meta(&tx, &new)?;
    if inner.early_visibility.load(Ordering::Relaxed) {
        // Early visibility (sync mode): commit without fsync first, so the batch is readable and
        // the replicas' pulls ship it while this node fsyncs: their fsyncs overlap ours instead of
        // following it. Raised before the commit, so a reader never sees more than `visible`.
        // Nobody is answered yet. A crash before the journal append (or durable commit) below
        // loses the batch here; a replica may keep it (never acknowledged, so either outcome is
        // allowed), and a replica that has it while a new primary does not rolls it back into
        // `diverged` (a fork).
        inner.raise_visible(new.position);
        tx.set_durability(Durability::None).ctx("set durability")?;
        tx.commit().ctx("commit write batch (visible)")?;
        // Into the ring of newest entries before anyone is woken to read them (`recent.rs`).
        recent.finish(meta.position);
        inner.signal_visible(new.position);
        // DURABILITY POINT of primary writes with early visibility, small batch: the batch's
        // entries appended to the journal and fdatasynced. Nobody is answered before.
        let journaled = journal.is_some_and(|entries| {
            inner
                .journal_append(new.newest_epoch, &entries, "write batch")
                .inspect_err(|e| {
                    // The batch is committed (visible) already: make it durable the other way.
                    tracing::warn!(error = %e, "could not journal a write batch; committing it durably instead");
                })
                .is_ok()
        });
        if !journaled {
            // DURABILITY POINT of primary writes with early visibility, large batch (or one the
            // journal refused): this empty commit fsyncs the batch committed above. Nobody is
            // answered before it returns.
            begin_write(&inner.db)?.commit().ctx("commit write batch (durable)")?;
            inner.journal_superseded();
        }
        return Ok((new, results));
    }
    let Some(entries) = journal else {
        // DURABILITY POINT of primary writes, large batch: this commit fsyncs the data, the
        // change-log entries and the new position of every write in the batch at once (and every
        // journaled batch before it). Nobody is answered before it returns.
        tx.commit().ctx("commit write batch")?;
        recent.finish(meta.position);
        inner.journal_superseded();
        return Ok((new, results));
    };
    // DURABILITY POINT of primary writes, small batch: the batch's change-log entries (data and
    // positions) appended to the journal and fdatasynced, once for every write in the batch.
    // Nobody is answered before the commit below, which is not fsynced: a checkpoint makes redb
    // durable later, and a restart before that applies the journal again (`DataStore::open`).
    let mark = inner.journal_append(new.newest_epoch, &entries, "write batch")?;
    tx.set_durability(Durability::None).ctx("set durability")?;
    if let Err(e) = tx.commit() {
        // Not committed after all: the journal must not hold the batch either, or a restart would
        // apply writes whose callers were told they failed.
        if let Err(t) = inner.journal().truncate_to(mark) {
            tracing::error!(error = %t, "could not cut a failed write batch out of the datastore journal");
        }
        return Err(DataError::Storage(format!("commit write batch: {e}")));
    }
    recent.finish(meta.position);
    Ok((new, results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{cas, dump, mismatch, open_temp, put};
    use crate::{LogRead, Position};
    use std::time::{Duration, Instant};

    // Holding the write lock across awaits is the point of these tests: it stalls the writer
    // thread (not this task) so that the queue fills deterministically.
    /// Wait (10 s at most) until `n` writes are queued: the writer is stalled on the write lock.
    async fn wait_queued(s: &crate::DataStore, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.stats().queued < n {
            assert!(Instant::now() < deadline, "writers never queued: {:?}", s.stats());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_are_group_committed() {
        let (_dir, s) = open_temp();
        // Hold the write lock (as a long apply or fsync would) while 200 writers queue up, so the
        // batching is deterministic: the writer takes the first write, waits for the lock, then
        // drains the rest into one batch.
        let guard = s.inner().lock_meta();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.write(1, put(&format!("k{i:03}"), &[i as u8; 64])).await
            }));
        }
        wait_queued(&s, 200).await;
        assert_eq!(s.stats().commits, 0, "nothing commits while the lock is held");
        drop(guard);

        let mut seqs = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.pos.epoch, 1);
            assert_eq!(r.version, r.pos.seq);
            seqs.push(r.pos.seq);
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=200).collect::<Vec<_>>(),
            "positions are unique and contiguous"
        );
        let stats = s.stats();
        assert_eq!(stats.writes, 200);
        assert_eq!(stats.queued, 0);
        assert_eq!(
            (stats.commits, stats.largest_batch),
            (1, 200),
            "200 queued writes share one commit"
        );
        assert_eq!(s.position(), Position::new(1, 200));
        assert_eq!(dump(&s).len(), 200);
        match s.read_log(Position::default(), 1000, usize::MAX).unwrap() {
            LogRead::Entries(e) => assert_eq!(e.len(), 200),
            other => panic!("{other:?}"),
        }

        // Without the lock: free-running writers still batch (fsync time lets the queue fill),
        // and everything is acknowledged exactly once.
        let mut tasks = Vec::new();
        for i in 0..400 {
            let s = s.clone();
            tasks.push(tokio::spawn(
                async move { s.write(1, put(&format!("f{i:03}"), b"v")).await },
            ));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let after = s.stats();
        assert_eq!(after.writes, 600);
        assert!(after.commits - stats.commits < 400, "{after:?}");
        assert_eq!(s.position(), Position::new(1, 600));
    }

    /// In the child of [`crash_in_child`]: flush what it printed and die as in a crash.
    fn abort_child() -> ! {
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::process::abort();
    }

    /// Run the test `test` of this module again in a child process with `env` set to `path`; it
    /// writes, prints `ACKED <i> <seq>` per acknowledged write and aborts ([`abort_child`]).
    /// Returns what it acknowledged.
    fn crash_in_child(test: &str, env: &str, path: &std::path::Path) -> Vec<(usize, u64)> {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("writer::tests::{test}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env, path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the child must die by abort: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split("ACKED ").nth(1))
            .map(|l| {
                let (i, seq) = l.split_once(' ').unwrap();
                (i.parse().unwrap(), seq.parse().unwrap())
            })
            .collect()
    }

    /// A real crash: a child process (this test binary, running only this test) writes, prints
    /// every acknowledged write, and aborts: redb's non-durable commits die with it. Every
    /// acknowledged write must be there when the store is opened again, from the journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn acknowledged_writes_survive_a_crash_through_the_journal() {
        const CHILD: &str = "KEEL_TEST_CRASH_STORE";
        if let Some(path) = std::env::var_os(CHILD) {
            let s = crate::DataStore::open(std::path::Path::new(&path)).unwrap();
            // Concurrent writes (group-committed batches, each journaled), well inside one
            // checkpoint interval, so that redb itself has none of them durably.
            let mut tasks = Vec::new();
            for i in 0..300 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let v = vec![(i % 251) as u8; 100 + i];
                    (i, s.write(1, put(&format!("k{i:03}"), &v)).await)
                }));
            }
            for t in tasks {
                let (i, r) = t.await.unwrap();
                println!("ACKED {i} {}", r.unwrap().pos.seq);
            }
            abort_child();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.redb");
        let acked = crash_in_child("acknowledged_writes_survive_a_crash_through_the_journal", CHILD, &path);
        assert_eq!(acked.len(), 300, "acknowledged writes the child printed");
        let journal = crate::journal::Journal::read(&crate::journal::Journal::path_for(&path)).unwrap();
        let journaled: usize = journal.batches.iter().map(|b| b.1.len()).sum();
        assert!(journaled > 0, "the crash left journaled writes to apply again");

        let s = crate::DataStore::open(&path).unwrap();
        let top = acked.iter().map(|a| a.1).max().unwrap();
        assert_eq!(s.position(), Position::new(1, top));
        for (i, seq) in acked {
            let (v, meta) = s.get(&format!("k{i:03}")).unwrap().expect("acknowledged write lost");
            assert_eq!((v, meta.version), (vec![(i % 251) as u8; 100 + i], seq));
        }
        match s.read_log(Position::default(), 1000, usize::MAX).unwrap() {
            LogRead::Entries(e) => assert_eq!(e.len(), 300),
            other => panic!("{other:?}"),
        }
    }

    /// The same crash with large values (format 3: in the values log, `vlog.rs`), written one at
    /// a time so that each batch is journaled: after the abort, the segment the values went to is
    /// named by no durable commit, so it is removed at open and the journal's replay writes the
    /// values again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn acknowledged_large_values_survive_a_crash_through_the_journal() {
        const CHILD: &str = "KEEL_TEST_CRASH_STORE_LARGE";
        let value = |i: usize| vec![(i % 251) as u8; 600 + i * 500];
        if let Some(path) = std::env::var_os(CHILD) {
            let s = crate::DataStore::open(std::path::Path::new(&path)).unwrap();
            for i in 0..20 {
                let r = s.write(1, put(&format!("k{i:03}"), &value(i))).await;
                println!("ACKED {i} {}", r.unwrap().pos.seq);
            }
            abort_child();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.redb");
        let acked = crash_in_child(
            "acknowledged_large_values_survive_a_crash_through_the_journal",
            CHILD,
            &path,
        );
        assert_eq!(acked.len(), 20, "acknowledged writes the child printed");
        let journal = crate::journal::Journal::read(&crate::journal::Journal::path_for(&path)).unwrap();
        assert!(
            !journal.batches.is_empty(),
            "the crash left journaled writes to apply again"
        );
        let s = crate::DataStore::open(&path).unwrap();
        assert_eq!(s.inner().format, 3);
        for i in 0..20 {
            let (v, _) = s.get(&format!("k{i:03}")).unwrap().expect("acknowledged write lost");
            assert_eq!(v, value(i), "k{i:03}");
        }
        drop(s);
        // And once more, after the replay's checkpoint made them durable in redb.
        let s = crate::DataStore::open(&path).unwrap();
        for i in 0..20 {
            assert_eq!(s.get(&format!("k{i:03}")).unwrap().unwrap().0, value(i));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn early_visibility_commits_visible_then_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.redb");
        {
            let s = crate::DataStore::open(&path).unwrap();
            s.set_early_visibility(true);
            let mut head = s.subscribe();
            let mut tasks = Vec::new();
            for i in 0..200 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.write(1, put(&format!("k{i:03}"), &[i as u8; 700])).await
                }));
            }
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap().unwrap().pos.seq);
            }
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
            assert_eq!(s.position(), Position::new(1, 200));
            assert_eq!(
                s.visible_position(),
                s.position(),
                "nothing stays visible-only after the answers"
            );
            assert!(head.has_changed().unwrap());
            assert_eq!(*head.borrow_and_update(), Position::new(1, 200));
            match s.read_log(Position::default(), 1000, usize::MAX).unwrap() {
                LogRead::Entries(e) => assert_eq!(e.len(), 200),
                other => panic!("{other:?}"),
            }
            s.set_early_visibility(false);
            s.write(1, put("after", b"x")).await.unwrap();
        }
        let s = crate::DataStore::open(&path).unwrap();
        assert_eq!(s.position(), Position::new(1, 201));
        assert_eq!(dump(&s).len(), 201);
        assert_eq!(s.get("k199").unwrap().unwrap().0, vec![199u8; 700]);
    }

    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cas_inside_a_batch_sees_earlier_writes_and_fails_alone() {
        let (_dir, s) = open_temp();
        let guard = s.inner().lock_meta();
        // Queued in this order into one batch: put (v1), CAS expecting v1 (ok), CAS expecting v1
        // again (now stale: fails alone), CAS on an absent key (ok), a stale epoch (fails alone).
        let mut tasks = Vec::new();
        let ops = vec![
            (1, put("k", b"a")),
            (1, cas("k", 1, b"b")),
            (1, cas("k", 1, b"c")),
            (2, cas("n", 0, b"n")),
            (1, put("old", b"epoch 1 after epoch 2")),
        ];
        for (i, (epoch, op)) in ops.into_iter().enumerate() {
            let s2 = s.clone();
            tasks.push(tokio::spawn(async move { s2.write(epoch, op).await }));
            // Keep the queue order deterministic.
            wait_queued(&s, i as u64 + 1).await;
        }
        drop(guard);
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(results[0].as_ref().unwrap().pos, Position::new(1, 1));
        assert_eq!(results[1].as_ref().unwrap().pos, Position::new(1, 2));
        assert_eq!(results[2].as_ref().unwrap_err(), &mismatch("k", 1, 2));
        assert_eq!(results[3].as_ref().unwrap().pos, Position::new(2, 3));
        assert_eq!(
            results[4].as_ref().unwrap_err(),
            &DataError::StaleEpoch { epoch: 1, current: 2 }
        );
        assert_eq!(s.get("k").unwrap().unwrap().0, b"b");
        assert_eq!(s.get("old").unwrap(), None);
        let stats = s.stats();
        assert_eq!(
            (stats.commits, stats.largest_batch),
            (1, 3),
            "one batch, three writes committed: {stats:?}"
        );
    }
}
