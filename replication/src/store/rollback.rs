//! Undoing a fork: [`DataStore::rollback_to`] rolls back every entry after a position with the
//! before-images and keeps the entries in the `diverged` table; [`DataStore::diverged`] lists them.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::log::entry_position;
use super::tables::{begin_write, now_ms, read_kv, write_meta, Ctx, Meta, DIVERGED, KV, LOG};
use super::DataStore;
use crate::codec::{decode, encode};
use crate::values::{release, StoredEntry, StoredKv, VALUES};
use crate::{DataError, Entry, Position};

/// A rolled-back entry in the `diverged` table.
#[derive(Debug, Serialize, Deserialize)]
struct DivergedRecord {
    at_ms: u64,
    entry: Entry,
}

impl DataStore {
    /// Divergence: roll back every entry after `fork` (newest first) using the before-images,
    /// move them to the `diverged` table (stamped with the time, unix ms), set the position to
    /// `fork`. One transaction. Returns the rolled-back entries in log order. `fork` must be a
    /// position this node has (its entry at `fork.seq`, or its log start); else `NotInLog`.
    pub fn rollback_to(&self, fork: Position) -> Result<Vec<Entry>, DataError> {
        let mut guard = self.inner.lock_meta();
        let meta = *guard;
        let not_in_log = || DataError::NotInLog {
            pos: fork,
            log_start: meta.log_start,
            position: meta.position,
        };
        if fork == meta.position {
            return Ok(Vec::new());
        }
        // The journal must not hold the entries rolled back here (a restart would apply them
        // again): checkpoint first, so it is empty.
        self.inner.checkpoint(&guard)?;
        let tx = begin_write(&self.inner.db)?;
        let at_ms = now_ms();
        let mut rolled = Vec::new();
        {
            let mut kv = tx.open_table(KV).ctx("open kv table")?;
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut diverged = tx.open_table(DIVERGED).ctx("open diverged table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            let mut vlog = self.inner.vlog.begin();
            if entry_position(&log, &meta, fork.seq)? != Some(fork) {
                return Err(not_in_log());
            }
            // Record ids: ascending in log order within one rollback, after every earlier record.
            let base = match diverged.last().ctx("read diverged table")? {
                Some((k, _)) => k.value() + 1,
                None => 1,
            };
            for seq in (fork.seq + 1..=meta.position.seq).rev() {
                let stored = match log.remove(seq).ctx("remove log entry")? {
                    Some(v) => StoredEntry::decode(seq, v.value())?,
                    None => return Err(DataError::Corrupt(format!("log has no entry at seq {seq}"))),
                };
                // Newest first, so the key's current value must be exactly what this entry wrote.
                let current = read_kv(&kv, &stored.key)?.map(|c| c.pos);
                let entry = stored.clone().resolve(&values, &self.inner.vlog)?;
                let expected = entry.value.as_ref().map(|_| entry.pos);
                if current != expected {
                    return Err(DataError::Corrupt(format!(
                        "rolling back {}: key {:?} was last written at {current:?}, not by this entry",
                        entry.pos, entry.key
                    )));
                }
                match stored.prev {
                    Some((held, pos)) => kv
                        .insert(entry.key.as_str(), StoredKv { pos, held }.encode().as_slice())
                        .ctx("restore key")?,
                    None => kv.remove(entry.key.as_str()).ctx("restore key")?,
                };
                // This entry's own value is now only in the diverged record.
                if let Some(held) = &stored.value {
                    release(&mut values, &mut vlog, seq, held)?;
                }
                let record = DivergedRecord { at_ms, entry };
                diverged
                    .insert(base + (seq - fork.seq - 1), encode(&record).as_slice())
                    .ctx("write diverged entry")?;
                rolled.push(record.entry);
            }
            vlog.finish(&tx)?;
        }
        let new = Meta { position: fork, ..meta };
        write_meta(&tx, &new)?;
        // Durability point: the rollback and the kept copies of the rolled-back entries, together.
        if let Err(e) = tx.commit() {
            self.inner.reload_meta(&mut guard);
            return Err(DataError::Storage(format!("commit rollback: {e}")));
        }
        self.inner.publish(&mut guard, new);
        rolled.reverse();
        tracing::warn!(fork = %fork, from = %meta.position, entries = rolled.len(),
            "rolled back diverged datastore entries; they are kept in the diverged table");
        Ok(rolled)
    }

    /// Rolled-back entries with the time they were rolled back (unix ms), newest first.
    pub fn diverged(&self, limit: usize) -> Result<Vec<(u64, Entry)>, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let t = rtx.open_table(DIVERGED).ctx("open diverged table")?;
        let mut out = Vec::new();
        for item in t.iter().ctx("read diverged table")?.rev().take(limit) {
            let (k, v) = item.ctx("read diverged table")?;
            let r: DivergedRecord = decode(v.value())
                .map_err(|e| DataError::Corrupt(format!("decode diverged record {}: {e}", k.value())))?;
            out.push((r.at_ms, r.entry));
        }
        Ok(out)
    }
}
