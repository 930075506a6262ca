//! Writing entries: a replica's [`DataStore::apply`] of the primary's entries (the batch checks,
//! skipping what this node has, then the journal or a durable commit), [`DataStore::observe_epoch`],
//! and [`apply_write`], one primary write inside the writer's batch transaction (`writer.rs`).

use std::borrow::Cow;
use std::sync::MutexGuard;

use redb::{Durability, Table};

use super::log::entry_position;
use super::tables::{begin_write, read_kv, write_meta, Ctx, Meta, KV, LOG};
use super::DataStore;
use crate::journal::JOURNAL_BATCH_MAX;
use crate::recent::BatchEntries;
use crate::values::{hold, with_appenders, Append, StoredEntry, StoredKv, VALUES};
use crate::vlog::VlogTx;
use crate::{validate_key, validate_value, DataError, Entry, Position, WriteOp, WriteResult};

impl DataStore {
    /// Replica apply of entries read from the primary of `source_epoch` (the epoch of the frame
    /// that carried them, i.e. the sender's primary epoch).
    ///
    /// Refuses a `source_epoch` older than the newest epoch seen (`StaleEpoch`: fencing rule 4),
    /// and entries from an epoch newer than `source_epoch`. Entries already applied (same
    /// position as this node's entry at that seq) are skipped, so re-delivery is a no-op; an
    /// entry whose seq this node has with another epoch is a `Fork`. The rest must continue
    /// exactly from `position()` (`Gap` otherwise) and be contiguous. One transaction for the
    /// whole batch together with the new position; durable before returning, through the replica
    /// journal for a batch up to `JOURNAL_BATCH_MAX` bytes, else through a durable commit
    /// (`journal.rs`). Blocking: run it off the async executor. Returns the new position.
    pub fn apply(&self, source_epoch: u64, entries: &[Entry]) -> Result<Position, DataError> {
        let mut guard = self.inner.lock_meta();
        // Small batches go through the journal; a large one is committed durably as before (its
        // bytes would be written twice, and its fsync is shared by many bytes anyway).
        let journaled = journaled_batch(entries);
        let (pos, committed) = self.apply_locked(&mut guard, source_epoch, entries, journaled)?;
        if !journaled && committed {
            // That durable commit made every journaled apply before it durable in redb too.
            self.inner.journal_superseded();
        } else {
            self.inner.checkpoint_if_due(&guard);
        }
        Ok(pos)
    }

    /// [`DataStore::apply`] under the write lock. `journaled`: durable through the journal (a
    /// small replica batch); else through a durable redb commit (a large batch, and the journal's
    /// own replay at open). Also says whether it committed (false: nothing new to apply).
    pub(super) fn apply_locked(
        &self,
        guard: &mut MutexGuard<'_, Meta>,
        source_epoch: u64,
        entries: &[Entry],
        journaled: bool,
    ) -> Result<(Position, bool), DataError> {
        let meta = **guard;
        if source_epoch < meta.newest_epoch {
            return Err(DataError::StaleEpoch {
                epoch: source_epoch,
                current: meta.newest_epoch,
            });
        }
        check_batch(source_epoch, entries)?;

        let mut tx = begin_write(&self.inner.db)?;
        let mut new = meta;
        new.newest_epoch = source_epoch;
        // Skip what this node already has, checking that it really is the same entry.
        let mut skip = 0;
        {
            let mut kv = tx.open_table(KV).ctx("open kv table")?;
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            for e in entries.iter().take_while(|e| e.pos.seq <= meta.position.seq) {
                match entry_position(&log, &meta, e.pos.seq)? {
                    Some(ours) if ours != e.pos => {
                        return Err(DataError::Fork {
                            at: e.pos,
                            ours: Some(ours),
                        })
                    }
                    // Trimmed: cannot compare, but an epoch newer than all of ours cannot match.
                    None if e.pos.epoch > meta.position.epoch => return Err(DataError::Fork { at: e.pos, ours: None }),
                    _ => skip += 1,
                }
            }
            let rest = &entries[skip..];
            if let Some(first) = rest.first() {
                if first.pos.seq != meta.position.seq + 1 {
                    return Err(DataError::Gap {
                        expected: meta.position.seq + 1,
                        found: first.pos.seq,
                        position: meta.position,
                    });
                }
                if first.pos.epoch < meta.position.epoch {
                    // The sender's entry at our last seq has an epoch <= first.pos.epoch, so not ours.
                    return Err(DataError::Fork {
                        at: first.pos,
                        ours: Some(meta.position),
                    });
                }
            }
            let external = self.inner.format >= 2;
            let first = meta.position.seq + 1;
            let mut vlog = self.inner.vlog.begin();
            with_appenders(&mut log, &mut values, first, |log, values| {
                for e in rest {
                    let current = read_kv(&kv, &e.key)?;
                    // The before-image is this node's own state: it is what a rollback here must
                    // restore. (Compared by position: the position names the write, hence the value.)
                    if current.as_ref().map(|c| c.pos) != e.prev.as_ref().map(|p| p.1) {
                        tracing::warn!(pos = %e.pos, key = %e.key,
                            "replica state differs from the primary's before-image; keeping the local one for rollback");
                    }
                    let prev = current.map(|c| (c.held, c.pos));
                    let value = match &e.value {
                        Some(v) => {
                            let held = hold(
                                values,
                                self.inner.vlog_for_hold(&mut vlog),
                                external,
                                e.pos.seq,
                                Cow::Borrowed(v),
                            )?;
                            let record = StoredKv { pos: e.pos, held };
                            kv.insert(e.key.as_str(), record.encode().as_slice()).ctx("write key")?;
                            Some(record.held)
                        }
                        None => {
                            kv.remove(e.key.as_str()).ctx("delete key")?;
                            None
                        }
                    };
                    let entry = StoredEntry {
                        pos: e.pos,
                        key: e.key.clone(),
                        value,
                        prev,
                    };
                    log.append(e.pos.seq, entry.encode().as_slice())?;
                    new.position = e.pos;
                }
                Ok(())
            })?;
            vlog.finish(&tx)?;
        }
        if new == meta {
            return Ok((meta.position, false));
        }
        write_meta(&tx, &new)?;
        let mark = if journaled {
            // DURABILITY POINT of a replica apply: the new entries, appended to the journal and
            // fdatasynced (`journal.rs`). The redb commit below is not fsynced; a checkpoint makes
            // it durable later, and a restart before that applies the journal again.
            let mark = self
                .inner
                .journal_append(source_epoch, &entries[skip..], "applied entries")?;
            tx.set_durability(Durability::None).ctx("set durability")?;
            Some(mark)
        } else {
            // A durable commit, as before the journal.
            None
        };
        if let Err(e) = tx.commit() {
            if let Some(mark) = mark {
                // Not applied after all: the journal must not hold it either (best effort: a
                // batch left there is the primary's own entries, skipped or re-pulled later).
                let _ = self.inner.journal().truncate_to(mark);
            }
            self.inner.reload_meta(guard);
            return Err(DataError::Storage(format!("commit applied entries: {e}")));
        }
        self.inner.publish(guard, new);
        Ok((new.position, true))
    }

    /// Remember `epoch` as the newest epoch known, if it is newer (persisted before returning), so
    /// that writes and applies from older epochs are refused.
    pub fn observe_epoch(&self, epoch: u64) -> Result<(), DataError> {
        let mut guard = self.inner.lock_meta();
        if epoch <= guard.newest_epoch {
            return Ok(());
        }
        let new = Meta {
            newest_epoch: epoch,
            ..*guard
        };
        let tx = begin_write(&self.inner.db)?;
        write_meta(&tx, &new)?;
        tx.commit().ctx("commit newest epoch")?;
        self.inner.publish(&mut guard, new);
        Ok(())
    }
}

/// Shape checks of a replication batch that need no disk: contiguous, epochs non-decreasing and
/// not newer than the sender's, keys and values within limits.
fn check_batch(source_epoch: u64, entries: &[Entry]) -> Result<(), DataError> {
    let invalid = |m: String| Err(DataError::InvalidEntries(m));
    for w in entries.windows(2) {
        if w[1].pos.seq != w[0].pos.seq + 1 || w[1].pos.epoch < w[0].pos.epoch {
            return invalid(format!(
                "entry {} follows {}: entries must be contiguous",
                w[1].pos, w[0].pos
            ));
        }
    }
    for e in entries {
        if e.pos.seq == 0 {
            return invalid(format!("entry at {} has seq 0", e.pos));
        }
        if e.pos.epoch > source_epoch {
            return invalid(format!(
                "entry {} is from an epoch newer than its sender's ({source_epoch})",
                e.pos
            ));
        }
        validate_key(&e.key).map_err(|err| DataError::InvalidEntries(format!("entry {}: {err}", e.pos)))?;
        let len = e.value.as_ref().map_or(0, Vec::len);
        validate_value(len).map_err(|err| DataError::InvalidEntries(format!("entry {}: {err}", e.pos)))?;
    }
    Ok(())
}

/// Whether [`DataStore::apply`] makes `entries` durable through the journal (keys, values and
/// before-images up to 64 KiB): one small write and fdatasync, a short call that a caller may make
/// on an async worker thread. A larger batch is a durable redb commit of all its pages.
pub fn journaled_batch(entries: &[Entry]) -> bool {
    let bytes: usize = entries
        .iter()
        .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len) + e.prev.as_ref().map_or(0, |p| p.0.len()))
        .sum();
    bytes <= JOURNAL_BATCH_MAX
}

/// Apply one primary write inside the writer's batch transaction. `Ok(Err(..))` is a refusal of
/// this write only (CAS mismatch, stale epoch); `Err(..)` fails the whole batch. With `journal`,
/// the change-log entry of an applied write is also pushed there, for the journal record of the
/// batch (`writer.rs`); its before-image carries the position only, no bytes (a replay reads the
/// before-image from the store itself, see `apply_locked`). The entry also goes to `recent`, the
/// batch's entries for the ring of newest entries (`recent.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_write(
    kv: &mut Table<'_, &'static str, &'static [u8]>,
    log: &mut dyn Append<u64>,
    values: &mut dyn Append<(u64, u32)>,
    vlog: Option<&mut VlogTx<'_>>,
    external: bool,
    meta: &mut Meta,
    epoch: u64,
    op: WriteOp,
    journal: Option<&mut Vec<Entry>>,
    recent: &mut BatchEntries<'_>,
) -> Result<Result<WriteResult, DataError>, DataError> {
    if epoch < meta.newest_epoch {
        return Ok(Err(DataError::StaleEpoch {
            epoch,
            current: meta.newest_epoch,
        }));
    }
    let current = read_kv(kv, op.key())?;
    // Reads inside the batch transaction see the batch's own earlier writes, so a CAS is checked
    // against them too.
    let current_version = current.as_ref().map_or(0, |c| c.pos.seq);
    let (key, value) = match op {
        WriteOp::Put { key, value } => (key, Some(value)),
        WriteOp::Delete { key } => (key, None),
        WriteOp::Cas {
            key,
            expected_version,
            value,
        } => {
            if expected_version != current_version {
                return Ok(Err(DataError::CasMismatch {
                    key,
                    expected: expected_version,
                    current: current_version,
                }));
            }
            (key, Some(value))
        }
    };
    let pos = Position {
        epoch,
        seq: meta.position.seq + 1,
    };
    if let Some(journal) = journal {
        journal.push(Entry {
            pos,
            key: key.clone(),
            value: value.clone(),
            prev: current.as_ref().map(|c| (Vec::new(), c.pos)),
        });
    }
    recent.push(pos, &key, value.as_deref(), current.as_ref().map(|c| (&c.held, c.pos)));
    let value = match value {
        Some(v) => {
            let record = StoredKv {
                pos,
                held: hold(values, vlog, external, pos.seq, Cow::Owned(v))?,
            };
            kv.insert(key.as_str(), record.encode().as_slice()).ctx("write key")?;
            Some(record.held)
        }
        None => {
            kv.remove(key.as_str()).ctx("delete key")?;
            None
        }
    };
    let entry = StoredEntry {
        pos,
        key,
        value,
        prev: current.map(|c| (c.held, c.pos)),
    };
    log.append(pos.seq, entry.encode().as_slice())?;
    meta.position = pos;
    meta.newest_epoch = epoch;
    Ok(Ok(WriteResult {
        pos,
        version: if entry.value.is_some() { pos.seq } else { 0 },
        existed: entry.prev.is_some(),
    }))
}
