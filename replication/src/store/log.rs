//! The change log: reading it after a position with the fork check ([`DataStore::read_log`]), this
//! node's position at a seq ([`DataStore::position_at`]), and trimming the oldest entries
//! ([`DataStore::trim`]), which releases the large values nobody needs any more.

use redb::{ReadableDatabase, ReadableTable};

use super::tables::{begin_write, read_meta, write_meta, Ctx, Meta, LOG, META};
use super::DataStore;
use crate::values::{release, Held, StoredEntry, VALUES};
use crate::{DataError, LogRead, Position};

impl DataStore {
    /// Entries strictly after `after`, at most `max_entries` and `max_bytes` (encoded size) but at
    /// least one entry if there is any. `Position::default()` means from the start.
    ///
    /// - `Trimmed` when `after` is older than the retained log (the reader needs a snapshot);
    /// - `Err(Fork)` when this node's entry at `after.seq` has another epoch, or when `after` is
    ///   beyond this node's position (the reader has entries this node never had);
    /// - `Entries(vec![])` when the reader is caught up.
    pub fn read_log(&self, after: Position, max_entries: usize, max_bytes: usize) -> Result<LogRead, DataError> {
        // Before the read transaction: the values segments it may name stay (`vlog.rs`).
        let _pin = self.inner.vlog.pin();
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let meta = read_meta(&rtx.open_table(META).ctx("open meta table")?)?;
        let log = rtx.open_table(LOG).ctx("open log table")?;
        if after.seq < meta.log_start.seq {
            let oldest_retained = match log.first().ctx("read first log entry")? {
                Some((k, v)) => Some(StoredEntry::position(k.value(), v.value())?),
                None => None,
            };
            return Ok(LogRead::Trimmed { oldest_retained });
        }
        if after.seq > meta.position.seq {
            return Err(DataError::Fork { at: after, ours: None });
        }
        let ours = entry_position(&log, &meta, after.seq)?;
        if ours != Some(after) {
            return Err(DataError::Fork { at: after, ours });
        }
        let values = rtx.open_table(VALUES).ctx("open values table")?;
        let max_entries = max_entries.max(1);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in log.range(after.seq + 1..).ctx("read log")? {
            let (k, v) = item.ctx("read log")?;
            let stored = StoredEntry::decode(k.value(), v.value())?;
            // The size as sent (external values included), so a batch stays within max_bytes.
            let size = v.value().len()
                + [stored.value.as_ref(), stored.prev.as_ref().map(|p| &p.0)]
                    .into_iter()
                    .flatten()
                    .filter(|h| matches!(h, Held::External { .. }))
                    .map(|h| h.len() as usize)
                    .sum::<usize>();
            if entries.len() >= max_entries || (!entries.is_empty() && bytes + size > max_bytes) {
                break;
            }
            entries.push(stored.resolve(&values, &self.inner.vlog)?);
            bytes += size;
        }
        Ok(LogRead::Entries(entries))
    }

    /// Position of this node's log entry at `seq`: `Some` for the retained entries and for the
    /// log start (last trimmed entry or snapshot position), `None` otherwise. Lets the node walk
    /// back to the last common position after a [`DataError::Fork`].
    pub fn position_at(&self, seq: u64) -> Result<Option<Position>, DataError> {
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let meta = read_meta(&rtx.open_table(META).ctx("open meta table")?)?;
        let log = rtx.open_table(LOG).ctx("open log table")?;
        entry_position(&log, &meta, seq)
    }

    /// Keep at most `keep` newest entries of the change log; returns how many were dropped.
    pub fn trim(&self, keep: u64) -> Result<u64, DataError> {
        let mut guard = self.inner.lock_meta();
        let meta = *guard;
        let len = meta.position.seq - meta.log_start.seq;
        if len <= keep {
            return Ok(0);
        }
        let cutoff = meta.position.seq - keep;
        let tx = begin_write(&self.inner.db)?;
        let mut new = meta;
        let mut dropped = 0u64;
        {
            let mut log = tx.open_table(LOG).ctx("open log table")?;
            let mut values = tx.open_table(VALUES).ctx("open values table")?;
            let cut = log
                .get(cutoff)
                .ctx("read log entry")?
                .ok_or_else(|| DataError::Corrupt(format!("log has no entry at seq {cutoff}")))?;
            new.log_start = StoredEntry::position(cutoff, cut.value())?;
            drop(cut);
            // A trimmed entry's before-image is needed by nobody now (see `values.rs`): release
            // its chunks. Only format-2 entries can name external values.
            let mut released = Vec::new();
            for item in log.range(..=cutoff).ctx("read log")? {
                let (k, v) = item.ctx("read log")?;
                if v.value().first() == Some(&crate::codec::FORMAT_EXTERNAL) {
                    if let Some((held, p)) = StoredEntry::decode(k.value(), v.value())?.prev {
                        released.push((p.seq, held));
                    }
                }
            }
            let mut vlog = self.inner.vlog.begin();
            for (seq, held) in &released {
                release(&mut values, &mut vlog, *seq, held)?;
            }
            vlog.finish(&tx)?;
            log.retain_in(..=cutoff, |_, _| {
                dropped += 1;
                false
            })
            .ctx("trim log")?;
        }
        write_meta(&tx, &new)?;
        if let Err(e) = tx.commit() {
            self.inner.reload_meta(&mut guard);
            return Err(DataError::Storage(format!("commit log trim: {e}")));
        }
        self.inner.publish(&mut guard, new);
        // The values log may have segments to compact now.
        self.inner.compact_if_due(&guard);
        tracing::debug!(dropped, log_start = %new.log_start, "trimmed datastore change log");
        Ok(dropped)
    }
}

/// This node's position at `seq`, from the log or the log start (see [`DataStore::position_at`]).
pub(super) fn entry_position(
    log: &impl ReadableTable<u64, &'static [u8]>,
    meta: &Meta,
    seq: u64,
) -> Result<Option<Position>, DataError> {
    if seq == meta.log_start.seq {
        return Ok(Some(meta.log_start));
    }
    if seq < meta.log_start.seq || seq > meta.position.seq {
        return Ok(None);
    }
    match log.get(seq).ctx("read log entry")? {
        Some(v) => Ok(Some(StoredEntry::position(seq, v.value())?)),
        None => Err(DataError::Corrupt(format!(
            "log has no entry at seq {seq} though it should hold {}..={}",
            meta.log_start.seq + 1,
            meta.position.seq
        ))),
    }
}
