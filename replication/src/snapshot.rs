//! Full snapshots, for a replica behind the primary's retained log.
//!
//! [`SnapshotReader`] streams every `(key, value, position)` record of ONE redb read transaction
//! (so the snapshot is consistent with the position it carries) as encoded chunks of at most
//! about [`SNAPSHOT_CHUNK_BYTES`], without loading the store into memory. Chunk `i` is
//! `encode(SnapshotChunk { index: i, header, records, last })`; the first carries the snapshot's
//! position in `header`, the final one has `last = true`, so a truncated or reordered stream is
//! detected.
//!
//! [`SnapshotInstaller`] writes the records into a staging table (`kv_staging`) as chunks arrive,
//! with non-durable commits (a crash just leaves staging garbage, cleared by the next install),
//! and at `finish` swaps it in for `kv` in one durable transaction that also empties the change
//! log and swaps `values_staging` in for `values` (the snapshot's large values) and sets the position: readers see the old contents or the new ones, never a mix.

use std::borrow::Cow;
use std::iter::Peekable;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::{Durability, ReadableDatabase, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::store::{begin_write, read_meta, write_meta, Ctx, Inner, KV, KV_STAGING, LOG, META};
use crate::values::{hold, resolve, StoredKv, VALUES, VALUES_STAGING};
use crate::vlog::{apply_delta, OwnedPin, SEGMENTS};
use crate::{validate_key, validate_value, DataError, DataStore, Position};

/// Target size of one snapshot chunk. A chunk is larger only when a single record is (a value
/// of up to 1 MiB plus its key).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Upper bound of a record's encoding overhead beyond its key and value bytes (length varints and
/// the position's two varints), and of a chunk's own fields.
const RECORD_OVERHEAD: usize = 32;
const CHUNK_OVERHEAD: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotChunk {
    index: u64,
    /// The snapshot's position: `Some` in the first chunk only.
    header: Option<Position>,
    records: Vec<SnapshotRecord>,
    last: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    key: String,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    /// Position of the write that produced the value; the version is `pos.seq`.
    pos: Position,
}

type KvRange = redb::Range<'static, &'static str, &'static [u8]>;

/// Streams a consistent snapshot; see the module doc. Holds a redb read transaction open until
/// dropped (which keeps the pages it reads from being reused), so drop it when done.
pub struct SnapshotReader {
    range: Peekable<KvRange>,
    /// The large values (format 2), in the same read transaction as `range`.
    values: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    position: Position,
    next_index: u64,
    /// A record read but not yet sent because it did not fit in the previous chunk.
    pending: Option<SnapshotRecord>,
    done: bool,
    /// Keys in the snapshot (the kv table's length in the same read transaction).
    keys: u64,
    /// Records put into chunks so far.
    sent: u64,
    _pin: OwnedPin,
    _inner: Arc<Inner>,
}

impl SnapshotReader {
    /// The position the snapshot is consistent with.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Number of keys (records) in the snapshot: what a progress display counts towards.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Records put into the chunks returned so far (equals [`SnapshotReader::keys`] after the last).
    pub fn records_sent(&self) -> u64 {
        self.sent
    }

    /// The next encoded chunk, or `None` after the last one.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, DataError> {
        if self.done {
            return Ok(None);
        }
        let budget = SNAPSHOT_CHUNK_BYTES - CHUNK_OVERHEAD;
        let mut records = Vec::new();
        let mut bytes = 0;
        loop {
            let record = match self.pending.take() {
                Some(r) => r,
                None => match self.range.next() {
                    Some(item) => {
                        let (k, v) = item.ctx("read snapshot")?;
                        let key = k.value();
                        let stored = StoredKv::decode(key, v.value())?;
                        SnapshotRecord {
                            key: key.to_string(),
                            value: resolve(&self.values, &self._inner.vlog, stored.pos.seq, stored.held)?,
                            pos: stored.pos,
                        }
                    }
                    None => break,
                },
            };
            let size = record.key.len() + record.value.len() + RECORD_OVERHEAD;
            if !records.is_empty() && bytes + size > budget {
                self.pending = Some(record);
                break;
            }
            bytes += size;
            records.push(record);
        }
        let last = self.pending.is_none() && self.range.peek().is_none();
        let chunk = SnapshotChunk {
            index: self.next_index,
            header: (self.next_index == 0).then_some(self.position),
            records,
            last,
        };
        self.next_index += 1;
        self.sent += chunk.records.len() as u64;
        self.done = last;
        Ok(Some(encode(&chunk)))
    }
}

/// Installs a snapshot streamed by a [`SnapshotReader`]; see the module doc. Dropping it without
/// `finish` leaves the store as it was.
pub struct SnapshotInstaller {
    inner: Arc<Inner>,
    next_index: u64,
    position: Option<Position>,
    last_key: Option<String>,
    records: u64,
    done: bool,
    /// The staging transaction chunks go into, committed (not durably) every
    /// [`STAGE_COMMIT_BYTES`] and before `finish`.
    staging: Option<redb::WriteTransaction>,
    staged_bytes: usize,
    /// Live bytes the staged values add to each values-log segment (format 3, `vlog.rs`): the
    /// `value_segments` table gets exactly these when the snapshot is swapped in.
    staged_live: std::collections::BTreeMap<u32, i64>,
    /// Where the install's time went, for its log line.
    timing: InstallTiming,
}

/// Staged bytes per staging commit: one commit per 1 MiB chunk spent about a fifth of an install's
/// time committing; the write buffer (half the cache) bounds what an open transaction holds.
const STAGE_COMMIT_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
struct InstallTiming {
    decode: std::time::Duration,
    stage: std::time::Duration,
    commit: std::time::Duration,
}

impl SnapshotInstaller {
    /// Commit the open staging transaction, if any (not durably: `finish` makes it durable).
    fn commit_staging(&mut self) -> Result<(), DataError> {
        if let Some(tx) = self.staging.take() {
            let t = std::time::Instant::now();
            tx.commit().ctx("commit snapshot chunk")?;
            self.timing.commit += t.elapsed();
            self.staged_bytes = 0;
        }
        Ok(())
    }

    /// Stage one chunk. Chunks must come in order, starting with the first.
    pub fn push_chunk(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        let invalid = |m: String| DataError::InvalidSnapshot(m);
        let started = std::time::Instant::now();
        let chunk: SnapshotChunk =
            decode(bytes).map_err(|e| invalid(format!("decode chunk {}: {e}", self.next_index)))?;
        if self.done {
            return Err(invalid(format!("chunk {} after the last chunk", chunk.index)));
        }
        if chunk.index != self.next_index {
            return Err(invalid(format!(
                "got chunk {}, expected chunk {}",
                chunk.index, self.next_index
            )));
        }
        match (chunk.index, chunk.header) {
            (0, Some(pos)) => self.position = Some(pos),
            (0, None) => return Err(invalid("the first chunk has no header".into())),
            (_, Some(_)) => return Err(invalid(format!("chunk {} repeats the header", chunk.index))),
            (_, None) => {}
        }
        let snapshot_pos = self.position.unwrap_or_default();
        for r in &chunk.records {
            validate_key(&r.key).map_err(|e| invalid(format!("record {:?}: {e}", r.key)))?;
            validate_value(r.value.len()).map_err(|e| invalid(format!("record {:?}: {e}", r.key)))?;
            if self.last_key.as_deref().is_some_and(|last| r.key.as_str() <= last) {
                return Err(invalid(format!("record {:?} out of key order", r.key)));
            }
            if r.pos > snapshot_pos {
                return Err(invalid(format!(
                    "record {:?} at {} is newer than the snapshot {snapshot_pos}",
                    r.key, r.pos
                )));
            }
            self.last_key = Some(r.key.clone());
        }
        let staged = std::time::Instant::now();
        self.timing.decode += staged - started;
        let tx = match self.staging.take() {
            Some(tx) => tx,
            None => {
                let mut tx = self.inner.db.begin_write().ctx("begin snapshot staging transaction")?;
                // Not durable on its own: `finish` commits with Immediate, which persists this too.
                tx.set_durability(Durability::None).ctx("set durability")?;
                tx
            }
        };
        let n = chunk.records.len() as u64;
        {
            let mut t = tx.open_table(KV_STAGING).ctx("open staging table")?;
            let mut values = tx.open_table(VALUES_STAGING).ctx("open values staging table")?;
            let external = self.inner.format >= 2;
            let mut vlog = self.inner.vlog.begin();
            for r in chunk.records {
                // A large value goes to the values table as a write at its own position would.
                let held = hold(
                    &mut values,
                    self.inner.vlog_for_hold(&mut vlog),
                    external,
                    r.pos.seq,
                    Cow::Owned(r.value),
                )?;
                let record = StoredKv { pos: r.pos, held };
                t.insert(r.key.as_str(), record.encode().as_slice())
                    .ctx("stage snapshot record")?;
            }
            vlog.finish_staged(&mut self.staged_live)?;
        }
        self.staging = Some(tx);
        self.staged_bytes += bytes.len();
        self.timing.stage += staged.elapsed();
        if self.staged_bytes >= STAGE_COMMIT_BYTES || chunk.last {
            self.commit_staging()?;
        }
        self.records += n;
        self.next_index += 1;
        self.done = chunk.last;
        Ok(())
    }

    /// Records staged so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Swap the staged snapshot in: one durable transaction replaces `kv`, empties the change
    /// log and sets the position (and log start) to the snapshot's. Returns that position.
    pub fn finish(mut self) -> Result<Position, DataError> {
        self.commit_staging()?;
        let (true, Some(pos)) = (self.done, self.position) else {
            return Err(DataError::InvalidSnapshot(format!(
                "the stream ended after chunk {} without its last chunk",
                self.next_index
            )));
        };
        let mut guard = self.inner.lock_meta();
        // The journal must not outlive the data it extends (a restart would apply it on top of
        // the snapshot): checkpoint first, so it is empty.
        self.inner.checkpoint(&guard)?;
        let tx = begin_write(&self.inner.db)?;
        tx.delete_table(KV).ctx("drop old kv table")?;
        tx.rename_table(KV_STAGING, KV).ctx("swap in snapshot table")?;
        tx.delete_table(LOG).ctx("empty change log")?;
        tx.open_table(LOG).ctx("create change log")?;
        // Nothing names the old large values any more; the snapshot's come with it.
        tx.delete_table(VALUES).ctx("drop old values table")?;
        tx.rename_table(VALUES_STAGING, VALUES).ctx("swap in snapshot values")?;
        // Only the snapshot's values are live in the values log now; segments holding none of
        // them are removed by compaction (`vlog.rs`).
        tx.delete_table(SEGMENTS).ctx("drop old value segments")?;
        apply_delta(
            &mut tx.open_table(SEGMENTS).ctx("create value segments table")?,
            &self.staged_live,
        )?;
        let old = *guard;
        let new = crate::store::Meta {
            position: pos,
            log_start: pos,
            newest_epoch: old.newest_epoch.max(pos.epoch),
        };
        write_meta(&tx, &new)?;
        // Durability point of the install: the staged records (committed non-durably) and the
        // swap become durable together here.
        if let Err(e) = tx.commit() {
            self.inner.reload_meta(&mut guard);
            return Err(DataError::Storage(format!("commit snapshot install: {e}")));
        }
        self.inner.publish(&mut guard, new);
        let t = &self.timing;
        tracing::info!(position = %pos, previous = %old.position, records = self.records,
            decode_ms = t.decode.as_millis() as u64, stage_ms = t.stage.as_millis() as u64,
            commit_ms = t.commit.as_millis() as u64, "installed datastore snapshot");
        Ok(pos)
    }
}

impl Drop for SnapshotInstaller {
    fn drop(&mut self) {
        self.inner.installing.store(false, Ordering::Release);
    }
}

impl DataStore {
    /// A consistent snapshot of the whole store, streamed in chunks; see [`SnapshotReader`].
    pub fn snapshot(&self) -> Result<SnapshotReader, DataError> {
        // Before the read transaction: the values segments it may name stay until the reader is
        // dropped (`vlog.rs`).
        let pin = OwnedPin::new(self.inner().clone());
        let rtx = self.inner().db.begin_read().ctx("begin read transaction")?;
        let meta = read_meta(&rtx.open_table(META).ctx("open meta table")?)?;
        let kv = rtx.open_table(KV).ctx("open kv table")?;
        let keys = kv.len().ctx("count snapshot keys")?;
        // The range keeps the read transaction's snapshot alive by itself.
        let range: KvRange = kv.range::<&str>(..).ctx("read snapshot")?;
        let values = rtx.open_table(VALUES).ctx("open values table")?;
        Ok(SnapshotReader {
            range: range.peekable(),
            values,
            position: meta.position,
            next_index: 0,
            pending: None,
            done: false,
            keys,
            sent: 0,
            _pin: pin,
            _inner: self.inner().clone(),
        })
    }

    /// Start replacing the whole contents with a snapshot: feed its chunks in order with
    /// [`SnapshotInstaller::push_chunk`], then [`SnapshotInstaller::finish`]. Readers keep
    /// seeing the old contents until `finish` commits. The node must not accept primary writes
    /// meanwhile (it is a replica): `finish` replaces them too. One install at a time.
    pub fn begin_install(&self) -> Result<SnapshotInstaller, DataError> {
        let inner = self.inner().clone();
        if inner
            .installing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DataError::InstallInProgress);
        }
        // From here on the installer's Drop clears the flag, also on the error paths below.
        let installer = SnapshotInstaller {
            inner,
            next_index: 0,
            position: None,
            last_key: None,
            records: 0,
            done: false,
            staging: None,
            staged_bytes: 0,
            staged_live: Default::default(),
            timing: InstallTiming::default(),
        };
        // Clear what an interrupted install may have left behind.
        let tx = begin_write(&installer.inner.db)?;
        tx.delete_table(KV_STAGING).ctx("clear snapshot staging table")?;
        tx.open_table(KV_STAGING).ctx("create snapshot staging table")?;
        tx.delete_table(VALUES_STAGING).ctx("clear values staging table")?;
        tx.open_table(VALUES_STAGING).ctx("create values staging table")?;
        tx.commit().ctx("commit snapshot staging table")?;
        Ok(installer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{dump, open_temp, put, put_many};
    use crate::{LogRead, WriteOp};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn snapshot_stream_installs_equal_contents() {
        let (_d1, src) = open_temp();
        let items: Vec<_> = (0..3000)
            .map(|i| (format!("key/{i:05}"), format!("{i:>1000}").into_bytes()))
            .collect();
        put_many(&src, 1, items).await;
        src.write(
            2,
            WriteOp::Delete {
                key: "key/00007".into(),
            },
        )
        .await
        .unwrap();

        let mut reader = src.snapshot().unwrap();
        assert_eq!(reader.position(), Position::new(2, 3001));
        // Writes after the snapshot was taken are not in it.
        src.write(2, put("later", b"not in the snapshot")).await.unwrap();
        let mut chunks = Vec::new();
        while let Some(c) = reader.next_chunk().unwrap() {
            assert!(c.len() <= SNAPSHOT_CHUNK_BYTES, "chunk of {} bytes", c.len());
            chunks.push(c);
        }
        assert!(reader.next_chunk().unwrap().is_none());
        assert_eq!((reader.keys(), reader.records_sent()), (2999, 2999));
        drop(reader);
        assert!(
            chunks.len() >= 3,
            "3 MB of values take several chunks, got {}",
            chunks.len()
        );

        // Install on a replica that has some unrelated, older state.
        let (_d2, dst) = open_temp();
        dst.write(1, put("stale", b"gone after install")).await.unwrap();
        let mut installer = dst.begin_install().unwrap();
        assert!(matches!(dst.begin_install(), Err(DataError::InstallInProgress)));
        for c in &chunks {
            installer.push_chunk(c).unwrap();
            assert_eq!(
                dst.get("stale").unwrap().unwrap().0,
                b"gone after install",
                "readers see the old contents"
            );
        }
        assert_eq!(installer.finish().unwrap(), Position::new(2, 3001));
        assert_eq!(dst.position(), Position::new(2, 3001));
        assert_eq!(dst.newest_epoch(), 2);
        src.write(2, WriteOp::Delete { key: "later".into() }).await.unwrap();
        let mut expected = dump(&src);
        expected.retain(|(k, _, _)| k != "later");
        assert_eq!(dump(&dst), expected);
        assert_eq!(expected.len(), 2999);

        // The change log is empty and continues from the snapshot position.
        assert_eq!(
            dst.read_log(Position::default(), 10, usize::MAX).unwrap(),
            LogRead::Trimmed { oldest_retained: None }
        );
        let tail = match src.read_log(Position::new(2, 3001), 10, usize::MAX).unwrap() {
            LogRead::Entries(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(dst.apply(2, &tail).unwrap(), src.position());
        assert_eq!(dump(&dst), dump(&src));

        // Survives a reopen.
        let path = dst.inner().path.clone();
        let before = dump(&dst);
        drop(dst);
        let dst = DataStore::open(&path).unwrap();
        assert_eq!(dst.position(), src.position());
        assert_eq!(dump(&dst), before);
    }

    #[tokio::test]
    async fn broken_streams_are_refused_and_leave_the_store_alone() {
        let (_d1, src) = open_temp();
        for i in 0..3u8 {
            src.write(1, put(&format!("k{i}"), &vec![i; 600 * 1024])).await.unwrap();
        }
        let mut reader = src.snapshot().unwrap();
        let mut chunks = Vec::new();
        while let Some(c) = reader.next_chunk().unwrap() {
            chunks.push(c);
        }
        assert_eq!(chunks.len(), 3, "600 KiB values: one per chunk");

        let (_d2, dst) = open_temp();
        dst.write(1, put("mine", b"kept")).await.unwrap();
        let before = dump(&dst);

        // Missing the last chunk.
        let mut inst = dst.begin_install().unwrap();
        inst.push_chunk(&chunks[0]).unwrap();
        inst.push_chunk(&chunks[1]).unwrap();
        assert!(matches!(inst.finish(), Err(DataError::InvalidSnapshot(_))));
        // Out of order, and the first chunk missing.
        let mut inst = dst.begin_install().unwrap();
        assert!(matches!(
            inst.push_chunk(&chunks[1]),
            Err(DataError::InvalidSnapshot(_))
        ));
        drop(inst);
        let mut inst = dst.begin_install().unwrap();
        inst.push_chunk(&chunks[0]).unwrap();
        assert!(matches!(
            inst.push_chunk(&chunks[2]),
            Err(DataError::InvalidSnapshot(_))
        ));
        drop(inst);
        // Garbage.
        let mut inst = dst.begin_install().unwrap();
        assert!(matches!(
            inst.push_chunk(&[1, 2, 3]),
            Err(DataError::InvalidSnapshot(_))
        ));
        let mut truncated = chunks[0].clone();
        truncated.truncate(1000);
        assert!(matches!(
            inst.push_chunk(&truncated),
            Err(DataError::InvalidSnapshot(_))
        ));
        drop(inst);
        assert_eq!(dump(&dst), before);
        assert_eq!(dst.position(), Position::new(1, 1));

        // A complete stream after all those (staging garbage from the failed attempts is cleared).
        let mut inst = dst.begin_install().unwrap();
        for c in &chunks {
            inst.push_chunk(c).unwrap();
        }
        assert!(matches!(
            inst.push_chunk(&chunks[2]),
            Err(DataError::InvalidSnapshot(_))
        ));
        assert_eq!(inst.finish().unwrap(), src.position());
        assert_eq!(dump(&dst), dump(&src));

        // An empty store's snapshot is one chunk and installs an empty store.
        let (_d3, empty) = open_temp();
        let mut reader = empty.snapshot().unwrap();
        let only = reader.next_chunk().unwrap().unwrap();
        assert!(reader.next_chunk().unwrap().is_none());
        let mut inst = dst.begin_install().unwrap();
        inst.push_chunk(&only).unwrap();
        assert_eq!(inst.finish().unwrap(), Position::default());
        assert!(dump(&dst).is_empty());
    }
}
