//! Datastore format 2: large values stored once, in page-sized chunks.
//!
//! In format 1 every value lives inline in its `kv` record AND in its change-log entry (and an
//! overwrite's log entry holds the old value too, as its before-image). redb gives a leaf that
//! does not fit one 4 KiB page a page of the next power of two, so a 16 KiB value took a 32 KiB
//! page in `kv` and another in `log`: 64 KiB written per 16 KiB value on every node, which is what
//! bounded the 16 KiB write benchmark (bytes through the page cache, not fsyncs).
//!
//! In format 2 a value longer than [`INLINE_MAX`] is written once, into the `values` table, keyed
//! by `(seq of the write that produced it, chunk index)`, in equal chunks of at most [`CHUNK_MAX`]
//! bytes (one fills a 4 KiB leaf), sized so that they pack the leaves (see [`chunking`]). Its `kv`
//! record and log entries hold [`Held::External`] (just the length); the seq comes from the
//! record's own position (the value) or from the before-image's position (`prev`). A value's
//! chunks are all the records under its seq, in order: readers and [`release`] take the whole
//! range, so the split is the writer's choice and may change between builds (a file written
//! with an earlier split reads the same).
//!
//! Lifetime of the chunks of value `s`: written by write `s`; still needed while `kv` holds it
//! (current value) or while a retained log entry names it (entry `s` itself, or the entry `t`
//! that overwrote or deleted it, whose `prev` is `s`). Entries are trimmed oldest first, so the
//! chunks of `s` are removed when entry `t` is trimmed (`t` > `s`), or when entry `s` is rolled
//! back (its bytes go to the `diverged` table first). A snapshot install replaces `kv`, the log
//! and this table together (its large values are staged in `values_staging`, keyed by the seq of
//! each record's position, and swapped in with `kv_staging`).
//!
//! Records are versioned one by one (the first byte, see `codec.rs`): version 1 records (inline
//! values) are exactly format 1, so one file can hold both and a file written by an older release
//! is read as it is. A store writes version 2 records only when its format is 2 (recorded in the
//! `meta` table; see `DataStore::open_with_format`); a release that only knows format 1 refuses
//! version 2 records loudly.

use std::borrow::Cow;
use std::ops::Bound;

use redb::{CursorMut, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, FORMAT_EXTERNAL, FORMAT_VERSION};
use crate::store::Ctx;
use crate::vlog::{Loc, ValuesLog, VlogTx, LOC_CHUNK};
use crate::{DataError, Entry, Position};

pub(crate) const VALUES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("values");
/// Where a snapshot's large values are staged with `kv_staging`, swapped in for `values` with it.
pub(crate) const VALUES_STAGING: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("values_staging");

/// Values up to this length stay inline (in `kv` and the log) in every format.
pub const INLINE_MAX: usize = 512;
/// Bytes of a 4 KiB redb leaf that its entries share (the page less its 4-byte header).
const LEAF_BYTES: usize = 4092;
/// What each chunk adds in a leaf of `values`: its 12-byte key and its 4-byte end offset.
const CHUNK_OVERHEAD: usize = 16;
/// Largest chunk in `values`: one chunk, its key and its offset fill a 4 KiB redb leaf.
pub const CHUNK_MAX: usize = LEAF_BYTES - CHUNK_OVERHEAD;
/// What one more chunk costs when [`chunking`] weighs splits, in bytes of page: a record to
/// encode, append, copy into its leaf and read back (a key allocation each, in redb).
const CHUNK_COST: usize = 48;

/// The datastore format a new file gets, and the newest this build writes (3: large values in
/// the values log, `vlog.rs`).
pub const NEWEST_FORMAT: u8 = 3;

/// How a `kv` record or a log entry holds a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Held {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// In `values`, under the seq of the write that produced it.
    External {
        len: u64,
    },
}

impl Held {
    pub fn len(&self) -> u64 {
        match self {
            Held::Inline(v) => v.len() as u64,
            Held::External { len } => *len,
        }
    }

    fn is_external(&self) -> bool {
        matches!(self, Held::External { .. })
    }
}

/// Chunk count and chunk size of a value of `len` bytes: equal chunks, none above [`CHUNK_MAX`],
/// as many as pack the 4 KiB leaves best.
///
/// A write batch appends its chunks in order and redb's cursor fills each leaf with as many as
/// fit (`values::with_appenders`), so a leaf holds `LEAF_BYTES / (size + CHUNK_OVERHEAD)` chunks
/// of one size and the rest of the page is lost. Fewest chunks is not best: a 16 KiB value in
/// five chunks of 3,277 bytes takes five pages (1.25× its bytes), in 17 of 964 four share a page
/// (1.06×); a 1 KiB value alone leaves a quarter of its page empty (three to a page, 1.33×), in
/// three chunks of 342 eleven share one (1.09×). Each count from the fewest to four times that
/// is weighed by the pages its chunks take plus [`CHUNK_COST`] per chunk; the cheapest wins.
pub(crate) fn chunking(len: usize) -> (u32, usize) {
    let fewest = len.div_ceil(CHUNK_MAX).max(1);
    let cost = |n: usize| {
        let size = len.div_ceil(n).max(1);
        let per_leaf = (LEAF_BYTES / (size + CHUNK_OVERHEAD)).max(1);
        // Pages of 4096 bytes, in 1/per_leaf steps, scaled to stay in integers.
        n * 4096 * 64 / per_leaf + n * CHUNK_COST * 64
    };
    let n = (fewest..=fewest * 4).min_by_key(|n| (cost(*n), *n)).unwrap_or(fewest);
    (n as u32, len.div_ceil(n).max(1))
}

/// Where a write puts a record under key `K`: the table itself ([`Table::insert`]), or a cursor at
/// its end ([`Table::upper_bound_mut`]) when every key of the batch sorts after the table's last.
///
/// Why the cursor: it buffers an ascending run and splices it in as packed leaves once (the last
/// leaf's entries join the run), where one insert at a time walks the tree and rebuilds the leaf
/// and its branch path for every record. The log and the values table only ever grow at their end
/// during a write batch or a replica apply (keys are seqs), so their records take the cursor.
pub(crate) trait Append<K> {
    fn append(&mut self, key: K, value: &[u8]) -> Result<(), DataError>;
}

macro_rules! append_impls {
    ($k:ty) => {
        impl Append<$k> for Table<'_, $k, &'static [u8]> {
            fn append(&mut self, key: $k, value: &[u8]) -> Result<(), DataError> {
                self.insert(key, value).map(drop).ctx("insert record")
            }
        }
        impl Append<$k> for CursorMut<'_, $k, &'static [u8]> {
            fn append(&mut self, key: $k, value: &[u8]) -> Result<(), DataError> {
                // UnorderedKey cannot happen for a caller that checked `appends_after` (keys
                // ascend within a batch); it fails the batch, as any storage error does.
                self.insert_before(key, value).ctx("append record")
            }
        }
    };
}
append_impls!(u64);
append_impls!((u64, u32));

/// Run `f` with appenders for `log` and `values` that take records of seq `first` and on: cursors
/// at the tables' ends when those seqs sort after every key they hold (always, for a write batch or
/// an apply that continues the log), else the tables themselves. The cursors are closed (their
/// buffered records spliced in) before this returns.
pub(crate) fn with_appenders<R>(
    log: &mut Table<'_, u64, &'static [u8]>,
    values: &mut Table<'_, (u64, u32), &'static [u8]>,
    first: u64,
    f: impl FnOnce(&mut dyn Append<u64>, &mut dyn Append<(u64, u32)>) -> Result<R, DataError>,
) -> Result<R, DataError> {
    let log_at_end = log
        .last()
        .ctx("read last log entry")?
        .is_none_or(|(k, _)| k.value() < first);
    let values_at_end = values
        .last()
        .ctx("read last value chunk")?
        .is_none_or(|(k, _)| k.value().0 < first);
    let mut log_cursor = None;
    let mut values_cursor = None;
    let log_sink: &mut dyn Append<u64> = if log_at_end {
        log_cursor.insert(log.upper_bound_mut(Bound::<u64>::Unbounded).ctx("open log cursor")?)
    } else {
        log
    };
    let values_sink: &mut dyn Append<(u64, u32)> = if values_at_end {
        values_cursor.insert(
            values
                .upper_bound_mut(Bound::<(u64, u32)>::Unbounded)
                .ctx("open values cursor")?,
        )
    } else {
        values
    };
    let out = f(log_sink, values_sink)?;
    if let Some(c) = log_cursor {
        c.close().ctx("append log entries")?;
    }
    if let Some(c) = values_cursor {
        c.close().ctx("append value chunks")?;
    }
    Ok(out)
}

/// Store `value` as the value of write `seq`: inline if short or not `external`; else in the
/// values log when there is one (format 3, `vlog.rs`: its location under `(seq, LOC_CHUNK)`),
/// else in chunks (format 2).
pub(crate) fn hold(
    values: &mut dyn Append<(u64, u32)>,
    vlog: Option<&mut VlogTx<'_>>,
    external: bool,
    seq: u64,
    value: Cow<'_, [u8]>,
) -> Result<Held, DataError> {
    if !external || value.len() <= INLINE_MAX {
        return Ok(Held::Inline(value.into_owned()));
    }
    if let Some(vlog) = vlog {
        let loc = vlog.put(seq, &value)?;
        values.append((seq, LOC_CHUNK), &loc.encode())?;
    } else {
        let (_, size) = chunking(value.len());
        for (i, chunk) in value.chunks(size).enumerate() {
            values.append((seq, i as u32), chunk)?;
        }
    }
    Ok(Held::External {
        len: value.len() as u64,
    })
}

/// The bytes of a value held as `held` by write `seq`: from its chunks, or from the values log.
pub(crate) fn resolve(
    values: &impl ReadableTable<(u64, u32), &'static [u8]>,
    vlog: &ValuesLog,
    seq: u64,
    held: Held,
) -> Result<Vec<u8>, DataError> {
    let len = match held {
        Held::Inline(v) => return Ok(v),
        Held::External { len } => len as usize,
    };
    // Every chunk under `seq`, whatever split wrote them (the module doc).
    let mut out = Vec::with_capacity(len);
    for item in values.range((seq, 0)..=(seq, u32::MAX)).ctx("read value chunks")? {
        let (key, chunk) = item.ctx("read value chunk")?;
        if key.value().1 == LOC_CHUNK && out.is_empty() {
            return vlog.read(seq, len as u64, Loc::decode(seq, chunk.value())?);
        }
        out.extend_from_slice(chunk.value());
        if out.len() > len {
            break;
        }
    }
    if out.len() != len {
        return Err(DataError::Corrupt(format!(
            "value of write {seq}: {} bytes in the values table, {len} expected",
            out.len()
        )));
    }
    Ok(out)
}

/// Remove value `seq` if `held` is external: its chunks, or its location (its record in the
/// values log is then dead, counted in `vlog`).
pub(crate) fn release(
    values: &mut Table<'_, (u64, u32), &'static [u8]>,
    vlog: &mut VlogTx<'_>,
    seq: u64,
    held: &Held,
) -> Result<(), DataError> {
    if let Held::External { len } = held {
        if let Some(loc) = values.get((seq, LOC_CHUNK)).ctx("read value location")? {
            vlog.release(*len, Loc::decode(seq, loc.value())?);
        }
        // Every chunk under `seq`, whatever split wrote them (the module doc).
        values
            .retain_in((seq, 0)..=(seq, u32::MAX), |_, _| false)
            .ctx("remove value chunks")?;
    }
    Ok(())
}

/// A `kv` record: the value and the position of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredKv {
    pub pos: Position,
    pub held: Held,
}

#[derive(Serialize, Deserialize)]
struct KvV2 {
    pos: Position,
    len: u64,
}

impl StoredKv {
    pub fn encode(&self) -> Vec<u8> {
        match &self.held {
            Held::Inline(value) => crate::store::encode_value(self.pos, value),
            Held::External { len } => codec::encode_as(
                FORMAT_EXTERNAL,
                &KvV2 {
                    pos: self.pos,
                    len: *len,
                },
            ),
        }
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<StoredKv, DataError> {
        let corrupt = |e: CodecError| DataError::Corrupt(format!("decode value of key {key:?}: {e}"));
        match bytes.first() {
            Some(&FORMAT_EXTERNAL) => {
                let v: KvV2 = codec::decode_as(FORMAT_EXTERNAL, bytes).map_err(corrupt)?;
                Ok(StoredKv {
                    pos: v.pos,
                    held: Held::External { len: v.len },
                })
            }
            _ => {
                let (pos, value): (Position, serde_bytes::ByteBuf) = codec::decode(bytes).map_err(corrupt)?;
                Ok(StoredKv {
                    pos,
                    held: Held::Inline(value.into_vec()),
                })
            }
        }
    }

    /// Position and value length, without copying an inline value.
    pub fn meta(key: &str, bytes: &[u8]) -> Result<(Position, u64), DataError> {
        let corrupt = |e: &dyn std::fmt::Display| DataError::Corrupt(format!("decode value of key {key:?}: {e}"));
        if bytes.first() == Some(&FORMAT_EXTERNAL) {
            let v: KvV2 = codec::decode_as(FORMAT_EXTERNAL, bytes).map_err(|e| corrupt(&e))?;
            return Ok((v.pos, v.len));
        }
        let (pos, rest) = codec::decode_prefix::<Position>(bytes).map_err(|e| corrupt(&e))?;
        let (len, rest) = postcard::take_from_bytes::<u64>(rest).map_err(|e| corrupt(&e))?;
        if rest.len() as u64 != len {
            return Err(corrupt(&format!("value length {len} but {} bytes follow", rest.len())));
        }
        Ok((pos, len))
    }
}

/// Encoding twin of a format-1 [`Entry`] that borrows its bytes (same postcard bytes).
#[derive(Serialize)]
struct EntryV1Ref<'a> {
    pos: Position,
    key: &'a str,
    value: Option<&'a serde_bytes::Bytes>,
    prev: Option<(&'a serde_bytes::Bytes, Position)>,
}

/// A change-log entry as stored: an [`Entry`] whose value and before-image may be external.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub pos: Position,
    pub key: String,
    pub value: Option<Held>,
    pub prev: Option<(Held, Position)>,
}

impl StoredEntry {
    fn has_external(&self) -> bool {
        self.value.as_ref().is_some_and(Held::is_external) || self.prev.as_ref().is_some_and(|p| p.0.is_external())
    }

    /// Version 1 (exactly a format-1 [`Entry`]) unless something is external.
    pub fn encode(&self) -> Vec<u8> {
        if self.has_external() {
            return codec::encode_as(FORMAT_EXTERNAL, self);
        }
        fn inline(h: &Held) -> &serde_bytes::Bytes {
            match h {
                Held::Inline(v) => serde_bytes::Bytes::new(v),
                Held::External { .. } => unreachable!("checked above"),
            }
        }
        codec::encode(&EntryV1Ref {
            pos: self.pos,
            key: &self.key,
            value: self.value.as_ref().map(inline),
            prev: self.prev.as_ref().map(|(h, p)| (inline(h), *p)),
        })
    }

    pub fn decode(seq: u64, bytes: &[u8]) -> Result<StoredEntry, DataError> {
        let corrupt = |e: CodecError| DataError::Corrupt(format!("decode log entry {seq}: {e}"));
        let entry = if bytes.first() == Some(&FORMAT_EXTERNAL) {
            codec::decode_as(FORMAT_EXTERNAL, bytes).map_err(corrupt)?
        } else {
            let e: Entry = codec::decode(bytes).map_err(corrupt)?;
            StoredEntry {
                pos: e.pos,
                key: e.key,
                value: e.value.map(Held::Inline),
                prev: e.prev.map(|(v, p)| (Held::Inline(v), p)),
            }
        };
        if entry.pos.seq != seq {
            return Err(DataError::Corrupt(format!(
                "log entry stored at seq {seq} says it is at {}",
                entry.pos
            )));
        }
        Ok(entry)
    }

    /// Only the position (both versions start with it), without copying any value.
    pub fn position(seq: u64, bytes: &[u8]) -> Result<Position, DataError> {
        let pos = match bytes.first() {
            Some(&FORMAT_EXTERNAL) => codec::decode_prefix_as::<Position>(FORMAT_EXTERNAL, bytes),
            _ => codec::decode_prefix_as::<Position>(FORMAT_VERSION, bytes),
        }
        .map_err(|e| DataError::Corrupt(format!("decode log entry {seq}: {e}")))?
        .0;
        if pos.seq != seq {
            return Err(DataError::Corrupt(format!(
                "log entry stored at seq {seq} says it is at {pos}"
            )));
        }
        Ok(pos)
    }

    /// The entry with its values' bytes, as sent to replicas and kept in `diverged`.
    pub fn resolve(
        self,
        values: &impl ReadableTable<(u64, u32), &'static [u8]>,
        vlog: &ValuesLog,
    ) -> Result<Entry, DataError> {
        let value = match self.value {
            Some(h) => Some(resolve(values, vlog, self.pos.seq, h)?),
            None => None,
        };
        let prev = match self.prev {
            Some((h, p)) => Some((resolve(values, vlog, p.seq, h)?, p)),
            None => None,
        };
        Ok(Entry {
            pos: self.pos,
            key: self.key,
            value,
            prev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_a_page_and_cover_the_value() {
        for len in [513, 4032, 4033, 16 * 1024, 16 * 1024 + 1, 100_000, 1 << 20] {
            let (n, size) = chunking(len);
            assert!(size <= CHUNK_MAX, "{len}: chunk {size}");
            assert!(
                size * n as usize >= len && size * (n as usize - 1) < len,
                "{len}: {n} × {size}"
            );
        }
        assert_eq!(chunking(16 * 1024), (17, 964));
        assert_eq!(chunking(1024), (3, 342));
        // One chunk when it packs well already: 1,000 bytes, four to a leaf.
        assert_eq!(chunking(1000), (1, 1000));
    }

    /// Leaf pages of `values` per byte of value after `count` writes of `len` bytes appended in
    /// batches of `batch`, as a write batch appends them.
    fn leaf_bytes_per_value_byte(len: usize, count: u64, batch: u64) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("v.redb")).unwrap();
        let mut seq = 0;
        while seq < count {
            let tx = db.begin_write().unwrap();
            {
                let mut log = tx.open_table(LOG).unwrap();
                let mut values = tx.open_table(VALUES).unwrap();
                with_appenders(&mut log, &mut values, seq + 1, |_, values| {
                    for _ in 0..batch {
                        seq += 1;
                        hold(values, None, true, seq, Cow::Owned(vec![seq as u8; len]))?;
                    }
                    Ok(())
                })
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let rtx = db.begin_read().unwrap();
        let stats = redb::ReadableTableMetadata::stats(&rtx.open_table(VALUES).unwrap()).unwrap();
        (stats.leaf_pages() * 4096) as f64 / (len as u64 * count) as f64
    }

    /// The split packs the leaves: the pages of `values` stay within 1.1× the bytes they hold at
    /// 1 KiB and 16 KiB (one chunk of 1 KiB took 1.33×, five of 3,277 bytes 1.25×), and every
    /// value reads back whole.
    #[test]
    fn chunks_pack_the_leaves() {
        assert_eq!(chunking(2 * CHUNK_MAX), (2, CHUNK_MAX));
        for (len, count, batch) in [(1024, 2000, 64), (16 * 1024, 400, 32)] {
            let ratio = leaf_bytes_per_value_byte(len, count, batch);
            assert!(ratio <= 1.15, "{len} B × {count}: {ratio:.3} leaf bytes per value byte");
        }
    }

    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

    /// Append `seqs` (a log entry and a two-chunk value each) through `with_appenders`, in one
    /// transaction, and return both tables' keys.
    fn append_through(db: &redb::Database, seqs: &[u64]) -> (Vec<u64>, Vec<(u64, u32)>) {
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            let mut values = tx.open_table(VALUES).unwrap();
            with_appenders(&mut log, &mut values, seqs[0], |log, values| {
                for &seq in seqs {
                    // Two full chunks each.
                    let held = hold(values, None, true, seq, Cow::Owned(vec![seq as u8; 2 * CHUNK_MAX]))?;
                    assert_eq!(
                        held,
                        Held::External {
                            len: 2 * CHUNK_MAX as u64
                        }
                    );
                    log.append(seq, b"entry")?;
                }
                Ok(())
            })
            .unwrap();
        }
        tx.commit().unwrap();
        let tx = db.begin_write().unwrap();
        let log = tx.open_table(LOG).unwrap();
        let values = tx.open_table(VALUES).unwrap();
        let log_keys = log.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
        let value_keys = values.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
        (log_keys, value_keys)
    }

    use redb::ReadableDatabase;

    #[test]
    fn appenders_add_at_the_end_and_fall_back_to_inserts_before_later_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        // Empty tables, then a batch after the last keys: cursors at the end.
        assert_eq!(append_through(&db, &[1, 2]).0, vec![1, 2]);
        let (log, values) = append_through(&db, &[3, 4]);
        assert_eq!(log, vec![1, 2, 3, 4]);
        assert_eq!(
            values,
            [1, 2, 3, 4].iter().flat_map(|&s| [(s, 0), (s, 1)]).collect::<Vec<_>>()
        );
        // Keys before the tables' last: a cursor at the end would refuse them (unordered); the
        // tables' own inserts take them.
        let (log, values) = append_through(&db, &[0]);
        assert_eq!(log, vec![0, 1, 2, 3, 4]);
        assert_eq!(values.len(), 10);
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(VALUES).unwrap();
        let vlog = ValuesLog::open(dir.path().join("v"), 1 << 20).unwrap();
        let back = resolve(
            &t,
            &vlog,
            3,
            Held::External {
                len: 2 * CHUNK_MAX as u64,
            },
        )
        .unwrap();
        assert_eq!(back, vec![3u8; 2 * CHUNK_MAX]);
    }

    /// A value written with another split (this build's first one: five chunks of 3,277 bytes for
    /// 16 KiB) reads back whole and is released whole, next to values of this split.
    #[test]
    fn values_of_an_earlier_split_read_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("v.redb")).unwrap();
        let old: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
        let tx = db.begin_write().unwrap();
        {
            let mut values = tx.open_table(VALUES).unwrap();
            for (i, chunk) in old.chunks(3277).enumerate() {
                values.insert((7, i as u32), chunk).unwrap();
            }
            hold(&mut values, None, true, 8, Cow::Borrowed(&old)).unwrap();
            let held = Held::External { len: old.len() as u64 };
            let vlog = ValuesLog::open(dir.path().join("v"), 1 << 20).unwrap();
            assert_eq!(resolve(&values, &vlog, 7, held.clone()).unwrap(), old);
            assert_eq!(resolve(&values, &vlog, 8, held.clone()).unwrap(), old);
            // A length that does not match the chunks is corruption, loudly.
            let short = Held::External {
                len: old.len() as u64 - 1,
            };
            assert!(matches!(resolve(&values, &vlog, 7, short), Err(DataError::Corrupt(_))));
            release(&mut values, &mut vlog.begin(), 7, &held).unwrap();
            assert_eq!(values.range((7, 0)..=(7, u32::MAX)).unwrap().count(), 0);
            assert_eq!(resolve(&values, &vlog, 8, held).unwrap(), old, "its neighbour stays");
        }
        tx.commit().unwrap();
    }

    #[test]
    fn record_encodings_round_trip_and_stay_format_1_when_inline() {
        let pos = Position::new(3, 99);
        for (held, version, len) in [
            (Held::Inline(b"hello".to_vec()), FORMAT_VERSION, 5),
            (Held::External { len: 70_000 }, FORMAT_EXTERNAL, 70_000),
        ] {
            let record = StoredKv { pos, held };
            let bytes = record.encode();
            assert_eq!(bytes[0], version);
            assert_eq!(StoredKv::decode("k", &bytes).unwrap(), record);
            assert_eq!(StoredKv::meta("k", &bytes).unwrap(), (pos, len));
        }

        let e = StoredEntry {
            pos,
            key: "k".into(),
            value: Some(Held::Inline(b"new".to_vec())),
            prev: Some((Held::Inline(b"old".to_vec()), Position::new(2, 7))),
        };
        let bytes = e.encode();
        assert_eq!(bytes[0], FORMAT_VERSION, "no external value: a format-1 entry");
        let as_v1: Entry = codec::decode(&bytes).unwrap();
        assert_eq!(as_v1.prev, Some((b"old".to_vec(), Position::new(2, 7))));
        assert_eq!(StoredEntry::decode(99, &bytes).unwrap(), e);
        let e2 = StoredEntry {
            prev: Some((Held::External { len: 9000 }, Position::new(2, 7))),
            ..e
        };
        let bytes = e2.encode();
        assert_eq!(bytes[0], FORMAT_EXTERNAL);
        assert_eq!(StoredEntry::decode(99, &bytes).unwrap(), e2);
        assert_eq!(StoredEntry::position(99, &bytes).unwrap(), pos);
        assert!(matches!(StoredEntry::decode(98, &bytes), Err(DataError::Corrupt(_))));
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(StoredEntry::decode(99, &bad), Err(DataError::Corrupt(_))));
    }
}
