//! Client reads: one key ([`DataStore::get`]) and a page of keys ([`DataStore::list`]). Each is
//! one redb read transaction (MVCC) and takes no lock.

use std::ops::Bound;

use redb::ReadableDatabase;

use super::tables::{read_kv, Ctx, KV};
use super::DataStore;
use crate::values::{resolve, StoredKv, VALUES};
use crate::{DataError, ListItem, ListPage, ValueMeta, MAX_LIST_LIMIT};

impl DataStore {
    /// The value of `key` and its metadata, or `None` if absent.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ValueMeta)>, DataError> {
        // Before the read transaction: the values segments it may name stay (`vlog.rs`).
        let _pin = self.inner.vlog.pin();
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let kv = rtx.open_table(KV).ctx("open kv table")?;
        let Some(stored) = read_kv(&kv, key)? else {
            return Ok(None);
        };
        let meta = ValueMeta {
            version: stored.pos.seq,
            pos: stored.pos,
        };
        let values = rtx.open_table(VALUES).ctx("open values table")?;
        Ok(Some((
            resolve(&values, &self.inner.vlog, stored.pos.seq, stored.held)?,
            meta,
        )))
    }

    /// Keys starting with `prefix`, in byte order, strictly after `after` if given. `limit` is
    /// clamped to `1..=MAX_LIST_LIMIT`. `next` is set when more keys follow.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListPage, DataError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let rtx = self.inner.db.begin_read().ctx("begin read transaction")?;
        let kv = rtx.open_table(KV).ctx("open kv table")?;
        let range = match after {
            Some(a) if a >= prefix => kv.range::<&str>((Bound::Excluded(a), Bound::Unbounded)),
            _ => kv.range::<&str>(prefix..),
        }
        .ctx("list keys")?;
        let mut items = Vec::new();
        let mut more = false;
        for item in range {
            let (k, v) = item.ctx("list keys")?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let (pos, size) = StoredKv::meta(key, v.value())?;
            items.push(ListItem {
                key: key.to_string(),
                version: pos.seq,
                size,
            });
        }
        let next = if more {
            items.last().map(|i| i.key.clone())
        } else {
            None
        };
        Ok(ListPage { items, next })
    }
}
