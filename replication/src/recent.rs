//! The newest change-log entries, kept in memory in the form a pull answer carries them, so that
//! a primary serves its replicas' pulls without reading and decoding them from redb again.
//!
//! Why: every replica pulls every entry once. From redb that is a read transaction, the log
//! entry's decode, the value's chunks copied out of their pages, and the whole answer encoded
//! again, per replica (a profile of the primary at 16 KiB × 64 clients: about a quarter of its
//! CPU served the two replicas' streams). The writer encodes each entry once, right after its
//! batch commits ([`Encoded::new`]); a pull answered from here copies those bytes into the frame
//! and nothing else ([`encode_entries_reply`]).
//!
//! The ring always ends at the datastore's visible head, or is empty: the writer extends it after
//! each batch's commit, and every commit that moves the log otherwise (a replica's apply, a
//! rollback, a snapshot install, a trim, a failed commit's reload) passes its new bookkeeping to
//! [`RecentLog::sync`] under the write lock, which cuts what the log no longer holds (or
//! everything, when the head is not the ring's last entry). So an entry read from here is the
//! one redb holds at that seq, and an empty read means the reader is caught up. A pull the ring
//! cannot answer (after a position older than it holds, or not one of its entries) is read from
//! redb as before, and that read decides about forks and trimmed history.
//!
//! Bounded: at most `max_bytes` of encoded entries (the oldest go first); `0` turns it off.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::codec::FORMAT_VERSION;
use crate::protocol::PullReply;
use crate::store::Meta;
use crate::values::Held;
use crate::Position;

/// One change-log entry in the bytes a pull answer carries (the postcard encoding of
/// [`crate::Entry`], without the version byte).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub pos: Position,
    pub bytes: Vec<u8>,
    /// Where the new value lies in `bytes` (`None`: a delete), for a later overwrite of the same
    /// key, whose before-image it is.
    value: Option<Range<usize>>,
}

/// Encoding twin of the first three fields of [`crate::Entry`], borrowing.
#[derive(Serialize)]
struct Head<'a> {
    pos: Position,
    key: &'a str,
    value: Option<&'a serde_bytes::Bytes>,
}

impl Encoded {
    /// Encode the entry `pos` that sets `key` to `value` (`None`: deletes it) over `prev`.
    pub fn new(pos: Position, key: &str, value: Option<&[u8]>, prev: Option<(&[u8], Position)>) -> Encoded {
        let len = key.len() + value.map_or(0, <[u8]>::len) + prev.map_or(0, |p| p.0.len()) + 48;
        // postcard writes a struct as its fields one after the other, so the entry is its first
        // three fields, then its fourth: where the value ends is known on the way.
        let head = Head {
            pos,
            key,
            value: value.map(serde_bytes::Bytes::new),
        };
        let bytes = postcard::to_extend(&head, Vec::with_capacity(len)).expect("encoding into a Vec cannot fail");
        let value = value.map(|v| bytes.len() - v.len()..bytes.len());
        let prev = prev.map(|(v, p)| (serde_bytes::Bytes::new(v), p));
        let bytes = postcard::to_extend(&prev, bytes).expect("encoding into a Vec cannot fail");
        Encoded { pos, bytes, value }
    }

    /// The value this entry wrote (`None` for a delete).
    pub fn value(&self) -> Option<&[u8]> {
        self.value.clone().map(|r| &self.bytes[r])
    }
}

/// Append to `out` the codec bytes of `PullReply::Entries { epoch, head, entries }`, `entries`
/// being the decoded `cached`: the same bytes [`crate::codec::encode`] would write.
pub(crate) fn encode_entries_reply(out: &mut Vec<u8>, epoch: u64, head: Position, cached: &[Arc<Encoded>]) {
    let empty = PullReply::Entries {
        epoch,
        head,
        entries: Vec::new(),
    };
    out.push(FORMAT_VERSION);
    // A sequence is its length (a varint), then its elements: the empty answer ends in the
    // length 0, which the real one replaces.
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(&empty, buf).expect("encoding into a Vec cannot fail");
    buf.pop();
    buf = postcard::to_extend(&cached.len(), buf).expect("encoding into a Vec cannot fail");
    buf.reserve(cached.iter().map(|e| e.bytes.len()).sum());
    for e in cached {
        buf.extend_from_slice(&e.bytes);
    }
    *out = buf;
}

/// The entries of one write batch on their way into the ring (`writer.rs`).
pub(crate) struct BatchEntries<'a> {
    ring: &'a RecentLog,
    /// `None` when the ring is off, or once an entry could not be encoded (its before-image is in
    /// `values` only): the ring is then dropped instead of getting a gap.
    entries: Option<Vec<Arc<Encoded>>>,
}

impl<'a> BatchEntries<'a> {
    pub fn new(ring: &'a RecentLog) -> BatchEntries<'a> {
        BatchEntries {
            ring,
            entries: ring.enabled().then(Vec::new),
        }
    }

    /// The next entry of the batch: `pos` sets `key` to `value` over `prev`, held as stored.
    pub fn push(&mut self, pos: Position, key: &str, value: Option<&[u8]>, prev: Option<(&Held, Position)>) {
        let Some(entries) = &mut self.entries else {
            return;
        };
        let prev_value: Option<std::borrow::Cow<'_, [u8]>> = match prev {
            None => None,
            Some((Held::Inline(v), _)) => Some(v.as_slice().into()),
            // An external before-image: the value of an earlier entry, of this batch or the ring.
            Some((Held::External { .. }, p)) => {
                let in_batch = entries.first().and_then(|first| {
                    let i = usize::try_from(p.seq.checked_sub(first.pos.seq)?).ok()?;
                    entries.get(i).filter(|e| e.pos == p)?.value().map(<[u8]>::to_vec)
                });
                match in_batch.or_else(|| self.ring.value_of(p)) {
                    Some(v) => Some(v.into()),
                    None => {
                        self.entries = None;
                        return;
                    }
                }
            }
        };
        let prev = prev.zip(prev_value.as_deref()).map(|((_, p), v)| (v, p));
        entries.push(Arc::new(Encoded::new(pos, key, value, prev)));
    }

    /// The batch committed right after `before`: into the ring (or the ring is dropped).
    pub fn finish(self, before: Position) {
        match self.entries {
            Some(entries) => self.ring.extend(before, entries),
            None => self.ring.clear(),
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    /// Position of the entry just before the first one held (the head when empty), if known.
    before: Option<Position>,
    entries: VecDeque<Arc<Encoded>>,
    bytes: usize,
}

impl Ring {
    fn clear(&mut self) {
        self.before = None;
        self.entries.clear();
        self.bytes = 0;
    }

    fn last(&self) -> Option<Position> {
        self.entries.back().map(|e| e.pos).or(self.before)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes.len();
            self.before = Some(e.pos);
        }
    }
}

/// The newest entries of the change log, at most `max_bytes` of them (see the module doc).
#[derive(Debug)]
pub(crate) struct RecentLog {
    ring: Mutex<Ring>,
    max_bytes: usize,
}

impl RecentLog {
    pub fn new(max_bytes: usize) -> RecentLog {
        RecentLog {
            ring: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the entries held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether entries are kept at all (a budget above 0).
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The entries of a batch that committed right after `before` (in order, contiguous). An empty
    /// ring starts over at `before`; a ring that does not end at `before` is dropped first.
    pub fn extend(&self, before: Position, batch: Vec<Arc<Encoded>>) {
        if !self.enabled() {
            return;
        }
        let mut ring = self.lock();
        if ring.last() != Some(before) {
            ring.clear();
            ring.before = Some(before);
        }
        for e in batch {
            ring.bytes += e.bytes.len();
            ring.entries.push_back(e);
        }
        while ring.bytes > self.max_bytes {
            ring.pop_front();
        }
    }

    /// Forget everything (a batch whose entries could not all be kept: the ring would have a gap).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Follow the bookkeeping of a commit (called with the write lock, after every commit): cut
    /// entries after the position (a rollback) and up to the log start (a trim, a snapshot), and
    /// drop everything when the position is not the last entry held (an apply, a snapshot).
    pub fn sync(&self, meta: &Meta) {
        if !self.enabled() {
            return;
        }
        let mut ring = self.lock();
        while ring.entries.back().is_some_and(|e| e.pos.seq > meta.position.seq) {
            if let Some(e) = ring.entries.pop_back() {
                ring.bytes -= e.bytes.len();
            }
        }
        while ring.entries.front().is_some_and(|e| e.pos.seq <= meta.log_start.seq) {
            ring.pop_front();
        }
        if ring.before.is_some_and(|b| b.seq < meta.log_start.seq) {
            ring.before = None;
        }
        if ring.last() != Some(meta.position) {
            ring.clear();
        }
    }

    /// The value written by entry `pos`, if held.
    pub fn value_of(&self, pos: Position) -> Option<Vec<u8>> {
        let ring = self.lock();
        let first = ring.entries.front()?.pos.seq;
        let e = ring.entries.get(usize::try_from(pos.seq.checked_sub(first)?).ok()?)?;
        (e.pos == pos).then(|| e.value().map(<[u8]>::to_vec))?
    }

    /// The entries after `after` as [`crate::DataStore::read_log`] would return them (at most
    /// `max_entries` and, past the first, `max_bytes`; empty when caught up), or `None` when the
    /// ring cannot tell (`after` is not an entry it holds nor the one before them): read redb.
    pub fn read(&self, after: Position, max_entries: usize, max_bytes: usize) -> Option<Vec<Arc<Encoded>>> {
        let ring = self.lock();
        let start = if ring.before == Some(after) {
            0
        } else {
            let first = ring.entries.front()?.pos.seq;
            let i = usize::try_from(after.seq.checked_sub(first)?).ok()?;
            if ring.entries.get(i)?.pos != after {
                return None;
            }
            i + 1
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in ring.entries.iter().skip(start) {
            if out.len() >= max_entries.max(1) || (!out.is_empty() && bytes + e.bytes.len() > max_bytes) {
                break;
            }
            bytes += e.bytes.len();
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::Entry;

    fn entry(seq: u64, key: &str, value: Option<&[u8]>, prev: Option<(&[u8], Position)>) -> Entry {
        Entry {
            pos: Position::new(2, seq),
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
            prev: prev.map(|(v, p)| (v.to_vec(), p)),
        }
    }

    fn encoded(e: &Entry) -> Arc<Encoded> {
        Arc::new(Encoded::new(
            e.pos,
            &e.key,
            e.value.as_deref(),
            e.prev.as_ref().map(|(v, p)| (v.as_slice(), *p)),
        ))
    }

    fn meta(position: Position, log_start: Position) -> Meta {
        Meta {
            position,
            log_start,
            newest_epoch: position.epoch,
        }
    }

    fn seqs(read: Option<Vec<Arc<Encoded>>>) -> Option<Vec<u64>> {
        read.map(|v| v.iter().map(|e| e.pos.seq).collect())
    }

    /// An entry's bytes are the codec's bytes of the [`Entry`] (less the version byte), and an
    /// answer built from them is the codec's bytes of the [`PullReply`]: a replica of any release
    /// decodes it as if it had been read from redb.
    #[test]
    fn served_bytes_are_the_codec_bytes() {
        let big = vec![7u8; 20_000];
        let entries: Vec<Entry> = (1..=300u64)
            .map(|seq| match seq % 4 {
                0 => entry(seq, "put", Some(&big), None),
                1 => entry(seq, "over", Some(b"new"), Some((b"old", Position::new(1, seq - 1)))),
                2 => entry(seq, "del", None, Some((&big[..700], Position::new(2, 1)))),
                _ => entry(seq, "", Some(b""), None),
            })
            .collect();
        for e in &entries {
            let c = encoded(e);
            assert_eq!(c.bytes, encode(e)[1..], "{}", e.pos);
            assert_eq!(c.value(), e.value.as_deref());
        }
        // 300 entries: a two-byte length.
        for n in [0, 1, 3, 300] {
            let cached: Vec<_> = entries[..n].iter().map(encoded).collect();
            let head = Position::new(2, 1 << 40);
            let mut out = vec![9, 9];
            encode_entries_reply(&mut out, 5, head, &cached);
            let expected = encode(&PullReply::Entries {
                epoch: 5,
                head,
                entries: entries[..n].to_vec(),
            });
            assert_eq!(out[..2], [9, 9], "appended");
            assert_eq!(out[2..], expected[..], "{n} entries");
            assert!(
                matches!(decode::<PullReply>(&out[2..]), Ok(PullReply::Entries { entries, .. }) if entries.len() == n)
            );
        }
    }

    fn batch(seqs: Range<u64>, len: usize) -> Vec<Arc<Encoded>> {
        seqs.map(|s| encoded(&entry(s, "k", Some(&vec![s as u8; len]), None)))
            .collect()
    }

    /// Reads follow `read_log`: after a held entry (or the one before them), up to the limits,
    /// empty at the head, `None` for what the ring cannot tell.
    #[test]
    fn reads_answer_what_the_ring_holds() {
        let ring = RecentLog::new(1 << 20);
        let p = |s| Position::new(2, s);
        assert_eq!(seqs(ring.read(p(0), 10, 1 << 20)), None, "empty, nothing known");
        ring.extend(p(10), batch(11..21, 100));
        assert_eq!(seqs(ring.read(p(10), 1000, 1 << 20)), Some((11..21).collect()));
        assert_eq!(seqs(ring.read(p(15), 3, 1 << 20)), Some(vec![16, 17, 18]));
        assert_eq!(seqs(ring.read(p(20), 10, 1 << 20)), Some(vec![]), "caught up");
        // At least one entry, then within the byte limit.
        assert_eq!(seqs(ring.read(p(15), 10, 1)), Some(vec![16]));
        let one = ring.read(p(15), 10, 1 << 20).unwrap()[0].bytes.len();
        assert_eq!(seqs(ring.read(p(15), 10, 2 * one)), Some(vec![16, 17]));
        // Older than the ring, beyond it, or another epoch at a held seq: read redb.
        assert_eq!(seqs(ring.read(p(9), 10, 1 << 20)), None);
        assert_eq!(seqs(ring.read(p(21), 10, 1 << 20)), None);
        assert_eq!(seqs(ring.read(Position::new(1, 15), 10, 1 << 20)), None);
        // A batch that does not continue the ring starts it over.
        ring.extend(p(30), batch(31..33, 100));
        assert_eq!(seqs(ring.read(p(15), 10, 1 << 20)), None);
        assert_eq!(seqs(ring.read(p(30), 10, 1 << 20)), Some(vec![31, 32]));
        assert_eq!(ring.value_of(p(32)), Some(vec![32u8; 100]));
        assert_eq!(ring.value_of(Position::new(1, 32)), None);
        assert_eq!(ring.value_of(p(30)), None);
        assert_eq!(ring.value_of(p(33)), None);
    }

    /// The budget holds: the oldest entries go first, and the ring still answers from the one
    /// before its first entry.
    #[test]
    fn the_oldest_entries_go_past_the_budget() {
        let one = batch(1..2, 1000)[0].bytes.len();
        let ring = RecentLog::new(10 * one);
        let p = |s| Position::new(2, s);
        for s in 0..10u64 {
            ring.extend(p(s * 5), batch(s * 5 + 1..s * 5 + 6, 1000));
            assert!(ring.bytes() <= 10 * one, "{} bytes held", ring.bytes());
        }
        assert_eq!(ring.bytes(), 10 * one);
        assert_eq!(seqs(ring.read(p(40), 100, 1 << 30)), Some((41..51).collect()));
        assert_eq!(seqs(ring.read(p(39), 100, 1 << 30)), None, "evicted");
        // A batch larger than the budget keeps its newest entries.
        ring.extend(p(50), batch(51..71, 1000));
        assert_eq!(seqs(ring.read(p(60), 100, 1 << 30)), Some((61..71).collect()));
        // Off: nothing is kept.
        let off = RecentLog::new(0);
        off.extend(p(0), batch(1..3, 10));
        assert_eq!(seqs(off.read(p(0), 10, 1 << 20)), None);
    }

    /// Every commit's bookkeeping keeps the ring a suffix of the log that ends at the head.
    #[test]
    fn sync_follows_rollbacks_trims_and_other_commits() {
        let p = |s| Position::new(2, s);
        let ring = RecentLog::new(1 << 20);
        ring.extend(p(0), batch(1..11, 10));
        // A rollback to 6: entries after it go; reads after 6 are caught up.
        ring.sync(&meta(p(6), p(0)));
        assert_eq!(seqs(ring.read(p(6), 100, 1 << 20)), Some(vec![]));
        assert_eq!(seqs(ring.read(p(2), 100, 1 << 20)), Some(vec![3, 4, 5, 6]));
        // A trim up to 4: the trimmed entries go, a read after 4 is still served.
        ring.sync(&meta(p(6), p(4)));
        assert_eq!(seqs(ring.read(p(4), 100, 1 << 20)), Some(vec![5, 6]));
        assert_eq!(seqs(ring.read(p(3), 100, 1 << 20)), None, "trimmed: redb says so");
        // The same bookkeeping again (observe_epoch): nothing changes.
        ring.sync(&meta(p(6), p(4)));
        assert_eq!(seqs(ring.read(p(4), 100, 1 << 20)), Some(vec![5, 6]));
        // A commit that moved the head past the ring (an apply): everything goes.
        ring.sync(&meta(p(9), p(4)));
        assert_eq!(seqs(ring.read(p(6), 100, 1 << 20)), None);
        // A rollback into another history at the same seq: the epoch tells.
        ring.extend(p(9), batch(10..13, 10));
        ring.sync(&meta(Position::new(3, 12), p(4)));
        assert_eq!(seqs(ring.read(p(10), 100, 1 << 20)), None);
        // A snapshot install (log start = position): everything goes.
        ring.extend(p(20), batch(21..23, 10));
        ring.sync(&meta(p(40), p(40)));
        assert_eq!(ring.bytes(), 0);
        assert_eq!(seqs(ring.read(p(21), 100, 1 << 20)), None);
    }

    /// Every entry `store`'s ring answers equals what redb answers for the same read, after every
    /// position of its log; returns how many reads the ring answered.
    fn ring_matches_redb(store: &crate::DataStore) -> usize {
        let start = match store.read_log(Position::default(), 1, usize::MAX).unwrap() {
            crate::LogRead::Trimmed {
                oldest_retained: Some(p),
            } => store.position_at(p.seq - 1).unwrap().unwrap(),
            _ => Position::default(),
        };
        let log = match store.read_log(start, usize::MAX, usize::MAX).unwrap() {
            crate::LogRead::Entries(e) => e,
            other => panic!("{other:?}"),
        };
        let mut answered = 0;
        for after in std::iter::once(start).chain(log.iter().map(|e| e.pos)) {
            let Some(ring) = store.read_recent(after, 1000, usize::MAX) else {
                continue;
            };
            answered += 1;
            let ring: Vec<Entry> = ring
                .iter()
                .map(|e| decode(&[&[FORMAT_VERSION], &e.bytes[..]].concat()).unwrap())
                .collect();
            let redb = match store.read_log(after, 1000, usize::MAX).unwrap() {
                crate::LogRead::Entries(e) => e,
                other => panic!("{other:?}"),
            };
            assert_eq!(ring, redb, "after {after}");
        }
        answered
    }

    /// The ring of a real store serves what redb holds, through overwrites (inline and external
    /// before-images, in one batch and across batches), deletes, a before-image older than the
    /// ring (the ring starts over), trims and a rollback; a replica's applies leave it empty.
    #[tokio::test]
    async fn the_ring_serves_what_redb_holds() {
        use crate::store::tests::{put, put_many};
        use crate::WriteOp;
        let dir = tempfile::tempdir().unwrap();
        // A ring of 400 KB: about two dozen 16 KiB values.
        let options = crate::StoreOptions {
            format: None,
            cache_bytes: 8 * 400_000,
            ..Default::default()
        };
        let store = crate::DataStore::open_with(&dir.path().join("data.redb"), &options).unwrap();
        let big = |tag: u8| vec![tag; 16 * 1024];
        store.write(1, put("x", &big(1))).await.unwrap();
        store.write(1, put("x", &big(2))).await.unwrap();
        store.write(1, put("s", b"small")).await.unwrap();
        store.write(1, put("s", &big(3))).await.unwrap();
        store.write(1, put("s", b"again")).await.unwrap();
        store.write(1, WriteOp::Delete { key: "x".into() }).await.unwrap();
        // Concurrent writes share batches; some overwrite keys of the same batch.
        put_many(
            &store,
            1,
            (0..6).map(|i| (format!("k{}", i % 3), big(10 + i))).collect(),
        )
        .await;
        assert_eq!(ring_matches_redb(&store), 13, "every read after the first entry");

        // "old" is written, then pushed out of the ring; its overwrite cannot be encoded
        // (the before-image is in redb only): the ring starts over after that batch.
        store.write(1, put("old", &big(4))).await.unwrap();
        put_many(&store, 1, (0..30).map(|i| (format!("n{i}"), big(i))).collect()).await;
        assert!(store.recent_held() <= 400_000, "{}", store.recent_held());
        let before = store.position();
        store.write(1, put("old", &big(5))).await.unwrap();
        assert_eq!(store.read_recent(before, 10, usize::MAX).map(|v| v.len()), None);
        store.write(1, put("after", b"1")).await.unwrap();
        assert_eq!(ring_matches_redb(&store), 2, "after the entry before it, and after it");

        // A trim and a rollback: the ring follows.
        put_many(&store, 1, (0..4).map(|i| (format!("t{i}"), big(i))).collect()).await;
        store.write(1, put("t9", b"9")).await.unwrap();
        let answered = ring_matches_redb(&store);
        assert!(answered >= 5, "{answered}");
        store.trim(3).unwrap();
        assert_eq!(
            ring_matches_redb(&store),
            4,
            "after the log start and the three entries"
        );
        let to = store.position_at(store.position().seq - 1).unwrap().unwrap();
        store.rollback_to(to).unwrap();
        assert_eq!(ring_matches_redb(&store), 3);
        store.write(1, put("t9", b"new")).await.unwrap();
        assert_eq!(ring_matches_redb(&store), 4);

        // A replica's ring stays empty: its applies move the head past it.
        let (_dir, replica) = crate::store::tests::open_temp();
        assert_eq!(ring_matches_redb(&replica), 0);
        replica.write(1, put("r", b"1")).await.unwrap();
        assert_eq!(ring_matches_redb(&replica), 2);
        replica
            .apply(
                1,
                &[Entry {
                    pos: Position::new(1, 2),
                    key: "a".into(),
                    value: Some(b"applied".to_vec()),
                    prev: None,
                }],
            )
            .unwrap();
        assert_eq!(ring_matches_redb(&replica), 0);
    }
}
