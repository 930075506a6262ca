//! The tables of the datastore file, its bookkeeping (`meta`: position, newest epoch, log start,
//! format) and the helpers every transaction uses: a durable write transaction, reading a `kv`
//! record, a verb phrase on an error, the log-shape check made at open.

use std::fmt::Display;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::values::StoredKv;
use crate::{DataError, Position};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Where a snapshot is installed before it is swapped in for `kv` in one transaction.
pub(crate) const KV_STAGING: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_staging");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const DIVERGED: TableDefinition<u64, &[u8]> = TableDefinition::new("diverged");

const META_POSITION: &str = "position";
const META_NEWEST_EPOCH: &str = "newest_epoch";
const META_LOG_START: &str = "log_start";
pub(super) const META_FORMAT: &str = "format";

/// Encoding of an inline `kv` record (format 1): `{pos, value}`, borrowing the value.
#[derive(Serialize)]
pub(crate) struct StoredValueRef<'a> {
    pub pos: Position,
    #[serde(with = "serde_bytes")]
    pub value: &'a [u8],
}

pub(crate) fn encode_value(pos: Position, value: &[u8]) -> Vec<u8> {
    encode(&StoredValueRef { pos, value })
}

/// The `kv` record of `key`, if any.
pub(crate) fn read_kv(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<StoredKv>, DataError> {
    match kv.get(key).ctx("read key")? {
        Some(g) => Ok(Some(StoredKv::decode(key, g.value())?)),
        None => Ok(None),
    }
}

/// Attach a verb phrase to a redb (or other) error.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, DataError>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, DataError> {
        self.map_err(|e| DataError::Storage(format!("{what}: {e}")))
    }
}

/// The persisted bookkeeping of the store (the `meta` table), cached in [`Inner::meta`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub position: Position,
    pub newest_epoch: u64,
    pub log_start: Position,
}

pub(crate) fn read_meta(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Meta, DataError> {
    fn get<T: for<'de> Deserialize<'de> + Default>(
        t: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<T, DataError> {
        match t.get(key).ctx("read meta")? {
            Some(v) => decode(v.value()).map_err(|e| DataError::Corrupt(format!("decode meta {key}: {e}"))),
            None => Ok(T::default()),
        }
    }
    Ok(Meta {
        position: get(t, META_POSITION)?,
        newest_epoch: get(t, META_NEWEST_EPOCH)?,
        log_start: get(t, META_LOG_START)?,
    })
}

pub(crate) fn write_meta(tx: &WriteTransaction, meta: &Meta) -> Result<(), DataError> {
    let mut t = tx.open_table(META).ctx("open meta table")?;
    t.insert(META_POSITION, encode(&meta.position).as_slice())
        .ctx("write position")?;
    t.insert(META_NEWEST_EPOCH, encode(&meta.newest_epoch).as_slice())
        .ctx("write newest epoch")?;
    t.insert(META_LOG_START, encode(&meta.log_start).as_slice())
        .ctx("write log start")?;
    Ok(())
}

/// Begin a write transaction that is durable on commit.
pub(crate) fn begin_write(db: &Database) -> Result<WriteTransaction, DataError> {
    let mut tx = db.begin_write().ctx("begin write transaction")?;
    // redb's default, stated so nobody has to look it up: commit() returns only after fdatasync.
    tx.set_durability(Durability::Immediate).ctx("set durability")?;
    // A durable commit also saves redb's allocator state, so that opening the file after a crash
    // does not walk every page to rebuild it: restart time stays flat as the data grows. It only
    // costs durable commits (a second fdatasync and the allocator state), and most of this
    // store's commits are not durable (the journal is the durability point, see `journal.rs`).
    tx.set_quick_repair(true);
    Ok(tx)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn load_meta(db: &Database) -> Result<Meta, DataError> {
    let rtx = db.begin_read().ctx("begin read transaction")?;
    let t = rtx.open_table(META).ctx("open meta table")?;
    read_meta(&t)
}

/// Check the log-shape invariant (see the module doc) so a broken file fails at open, not later.
pub(super) fn check_log_shape(db: &Database, meta: &Meta) -> Result<(), DataError> {
    let rtx = db.begin_read().ctx("begin read transaction")?;
    let log = rtx.open_table(LOG).ctx("open log table")?;
    let first = log.first().ctx("read first log entry")?.map(|(k, _)| k.value());
    let last = log.last().ctx("read last log entry")?.map(|(k, _)| k.value());
    let len = log.len().ctx("count log entries")?;
    let ok = match (first, last) {
        (None, None) => meta.log_start == meta.position,
        (Some(f), Some(l)) => f == meta.log_start.seq + 1 && l == meta.position.seq && len == l - f + 1,
        _ => false,
    };
    if !ok || meta.log_start > meta.position || meta.position.epoch > meta.newest_epoch {
        return Err(DataError::Corrupt(format!(
            "change log holds seqs {first:?}..={last:?} ({len} entries) but meta says log start {} and position {} \
             (newest epoch {})",
            meta.log_start, meta.position, meta.newest_epoch
        )));
    }
    Ok(())
}
