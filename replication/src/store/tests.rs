//! Tests of the datastore (the helpers are shared with the tests of `writer`, `snapshot` and
//! `replica`).

use std::path::PathBuf;

use super::*;
use crate::values::{Held, StoredKv};
use crate::vlog::ValuesLog;
use crate::{ListPage, LogRead, ValueMeta, MAX_KEY_BYTES, MAX_VALUE_BYTES};

pub(crate) fn open_temp() -> (tempfile::TempDir, DataStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DataStore::open(&dir.path().join("data.redb")).unwrap();
    (dir, store)
}

pub(crate) fn put(key: &str, value: &[u8]) -> WriteOp {
    WriteOp::Put {
        key: key.to_string(),
        value: value.to_vec(),
    }
}

pub(crate) fn cas(key: &str, expected_version: u64, value: &[u8]) -> WriteOp {
    WriteOp::Cas {
        key: key.to_string(),
        expected_version,
        value: value.to_vec(),
    }
}

/// The refusal of a CAS expecting `expected` on `key` at version `current`.
pub(crate) fn mismatch(key: &str, expected: u64, current: u64) -> DataError {
    DataError::CasMismatch {
        key: key.to_string(),
        expected,
        current,
    }
}

/// Everything a client can observe: every key (through paginated `list`) with `get`.
pub(crate) fn dump(store: &DataStore) -> Vec<(String, Vec<u8>, ValueMeta)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("", after.as_deref(), 1000).unwrap();
        for item in &page.items {
            let (value, meta) = store.get(&item.key).unwrap().expect("listed key exists");
            assert_eq!(meta.version, item.version);
            assert_eq!(value.len() as u64, item.size);
            out.push((item.key.clone(), value, meta));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// Write many keys concurrently (group commit keeps this fast).
pub(crate) async fn put_many(store: &DataStore, epoch: u64, items: Vec<(String, Vec<u8>)>) {
    let mut tasks = Vec::new();
    for (key, value) in items {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.write(epoch, WriteOp::Put { key, value }).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

fn page_keys(page: ListPage) -> Vec<String> {
    page.items.into_iter().map(|i| i.key).collect()
}

fn entries(read: LogRead) -> Vec<Entry> {
    match read {
        LogRead::Entries(e) => e,
        other => panic!("expected entries, got {other:?}"),
    }
}

#[tokio::test]
async fn put_get_delete_cas() {
    let (_dir, s) = open_temp();
    assert_eq!(s.get("a").unwrap(), None);
    assert_eq!(s.position(), Position::default());

    let r = s.write(1, put("a", b"one")).await.unwrap();
    assert_eq!(
        r,
        WriteResult {
            pos: Position::new(1, 1),
            version: 1,
            existed: false
        }
    );
    let (v, m) = s.get("a").unwrap().unwrap();
    assert_eq!(
        (v.as_slice(), m),
        (
            &b"one"[..],
            ValueMeta {
                version: 1,
                pos: Position::new(1, 1)
            }
        )
    );

    let r = s.write(1, put("a", b"two")).await.unwrap();
    assert_eq!((r.version, r.existed), (2, true));
    assert_eq!(s.get("a").unwrap().unwrap().0, b"two");

    // CAS: 0 = must not exist.
    let err = s.write(1, cas("a", 0, b"x")).await.unwrap_err();
    assert_eq!(err, mismatch("a", 0, 2));
    let err = s.write(1, cas("a", 1, b"x")).await.unwrap_err();
    assert_eq!(err, mismatch("a", 1, 2));
    assert_eq!(s.get("a").unwrap().unwrap().0, b"two", "a failed CAS changes nothing");
    assert_eq!(s.position(), Position::new(1, 2), "a failed CAS takes no position");
    let r = s.write(1, cas("a", 2, b"three")).await.unwrap();
    assert_eq!((r.pos, r.version, r.existed), (Position::new(1, 3), 3, true));
    let r = s.write(1, cas("b", 0, b"new")).await.unwrap();
    assert_eq!((r.version, r.existed), (4, false));
    let err = s.write(1, cas("c", 7, b"x")).await.unwrap_err();
    assert_eq!(err, mismatch("c", 7, 0));

    let r = s.write(1, WriteOp::Delete { key: "a".into() }).await.unwrap();
    assert_eq!(
        r,
        WriteResult {
            pos: Position::new(1, 5),
            version: 0,
            existed: true
        }
    );
    assert_eq!(s.get("a").unwrap(), None);
    let r = s.write(1, WriteOp::Delete { key: "a".into() }).await.unwrap();
    assert!(!r.existed);

    // Epochs: a newer epoch is adopted, an older one refused afterwards.
    let r = s.write(3, put("b", b"e3")).await.unwrap();
    assert_eq!(r.pos, Position::new(3, 7));
    assert_eq!(s.newest_epoch(), 3);
    assert_eq!(
        s.write(2, put("b", b"e2")).await.unwrap_err(),
        DataError::StaleEpoch { epoch: 2, current: 3 }
    );
    s.observe_epoch(5).unwrap();
    assert_eq!(
        s.write(4, put("b", b"e4")).await.unwrap_err(),
        DataError::StaleEpoch { epoch: 4, current: 5 }
    );
    assert_eq!(
        s.get("b").unwrap().unwrap().1,
        ValueMeta {
            version: 7,
            pos: Position::new(3, 7)
        }
    );
}

#[tokio::test]
async fn size_limits_and_empty_key() {
    let (_dir, s) = open_temp();
    let k1024 = "k".repeat(MAX_KEY_BYTES);
    let k1025 = "k".repeat(MAX_KEY_BYTES + 1);
    s.write(1, put(&k1024, b"v")).await.unwrap();
    assert_eq!(s.get(&k1024).unwrap().unwrap().0, b"v");
    assert_eq!(
        s.write(1, put(&k1025, b"v")).await.unwrap_err(),
        DataError::KeyTooLarge { len: 1025, max: 1024 }
    );
    assert_eq!(
        s.write(1, WriteOp::Delete { key: k1025.clone() }).await.unwrap_err(),
        DataError::KeyTooLarge { len: 1025, max: 1024 }
    );

    let big = vec![7u8; MAX_VALUE_BYTES];
    s.write(1, put("big", &big)).await.unwrap();
    assert_eq!(s.get("big").unwrap().unwrap().0, big);
    let too_big = vec![7u8; MAX_VALUE_BYTES + 1];
    assert_eq!(
        s.write(1, put("big", &too_big)).await.unwrap_err(),
        DataError::ValueTooLarge {
            len: MAX_VALUE_BYTES + 1,
            max: MAX_VALUE_BYTES
        }
    );
    assert_eq!(
        s.write(
            1,
            WriteOp::Cas {
                key: "c".into(),
                expected_version: 0,
                value: too_big
            }
        )
        .await
        .unwrap_err(),
        DataError::ValueTooLarge {
            len: MAX_VALUE_BYTES + 1,
            max: MAX_VALUE_BYTES
        }
    );

    assert_eq!(s.write(1, put("", b"v")).await.unwrap_err(), DataError::EmptyKey);
    assert_eq!(
        s.write(1, WriteOp::Delete { key: String::new() }).await.unwrap_err(),
        DataError::EmptyKey
    );
    assert_eq!(s.position(), Position::new(1, 2), "refused writes take no position");
    let page = s.list("", None, 10).unwrap();
    let sizes: Vec<_> = page.items.iter().map(|i| (i.key.len(), i.size)).collect();
    assert_eq!(sizes, vec![(3, MAX_VALUE_BYTES as u64), (1024, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_prefix_after_limit_and_pagination() {
    let (_dir, s) = open_temp();
    let mut items: Vec<(String, Vec<u8>)> = (0..2500).map(|i| (format!("a/{i:05}"), vec![1; i % 7])).collect();
    items.push(("a".into(), b"bare".to_vec()));
    items.push(("a0".into(), b"after the prefix".to_vec()));
    items.push(("b/1".into(), b"other".to_vec()));
    items.push(("0".into(), b"before".to_vec()));
    put_many(&s, 1, items).await;

    // Pagination with the default cap: 1000 + 1000 + 500, in byte order, no duplicates.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list("a/", after.as_deref(), 5000).unwrap();
        assert!(page.items.len() <= 1000, "limit is capped at 1000");
        pages += 1;
        seen.extend(page.items.iter().map(|i| i.key.clone()));
        match page.next {
            Some(n) => {
                assert_eq!(Some(&n), seen.last());
                after = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..2500).map(|i| format!("a/{i:05}")).collect();
    assert_eq!(seen, expected);

    // Small limit, `after` inside the prefix, sizes and versions.
    let page = s.list("a/", Some("a/00010"), 3).unwrap();
    let keys: Vec<_> = page.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["a/00011", "a/00012", "a/00013"]);
    assert_eq!(page.next.as_deref(), Some("a/00013"));
    assert_eq!(page.items[0].size, (11 % 7) as u64);
    assert_eq!(page.items[0].version, s.get("a/00011").unwrap().unwrap().1.version);

    // The last page has no `next`, even when it is exactly full.
    let page = s.list("a/", Some("a/02497"), 2).unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.next, None);

    // `after` before the prefix starts at the prefix; after past it gives nothing.
    let page = s.list("a/", Some("0"), 1).unwrap();
    assert_eq!(page.items[0].key, "a/00000");
    assert!(s.list("a/", Some("a0"), 10).unwrap().items.is_empty());
    let all = page_keys(s.list("a", Some("a/02499"), 10).unwrap());
    assert_eq!(all, ["a0"]);
    let b = page_keys(s.list("b", None, 10).unwrap());
    assert_eq!(b, ["b/1"]);
    assert_eq!(s.list("", None, 1).unwrap().items[0].key, "0");
    assert!(s.list("zzz", None, 10).unwrap().items.is_empty());
}

#[tokio::test]
async fn reopen_keeps_contents_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    let (before, pos, epoch) = {
        let s = DataStore::open(&path).unwrap();
        for i in 0..20 {
            s.write(2, put(&format!("k{i}"), format!("v{i}").as_bytes()))
                .await
                .unwrap();
        }
        s.write(2, WriteOp::Delete { key: "k3".into() }).await.unwrap();
        s.observe_epoch(4).unwrap();
        (dump(&s), s.position(), s.newest_epoch())
    };
    assert_eq!(pos, Position::new(2, 21));
    let s = DataStore::open(&path).unwrap();
    assert_eq!(s.position(), pos);
    assert_eq!(s.newest_epoch(), epoch);
    assert_eq!(dump(&s), before);
    assert_eq!(before.len(), 19);
    // The log survived too, and writing continues from the persisted position.
    assert_eq!(
        entries(s.read_log(Position::default(), 100, usize::MAX).unwrap()).len(),
        21
    );
    assert_eq!(s.write(4, put("k", b"v")).await.unwrap().pos, Position::new(4, 22));
}

#[tokio::test]
async fn read_log_pages_trims_and_detects_forks() {
    let (_dir, s) = open_temp();
    for i in 1..=10u8 {
        s.write(1, put(&format!("k{i}"), &[i; 100])).await.unwrap();
    }
    // Empty log read from the start and a caught-up reader.
    let all = entries(s.read_log(Position::default(), 100, usize::MAX).unwrap());
    assert_eq!(all.len(), 10);
    assert_eq!(
        all.iter().map(|e| e.pos.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(all[3].value.as_deref(), Some(&[4u8; 100][..]));
    assert!(entries(s.read_log(Position::new(1, 10), 100, usize::MAX).unwrap()).is_empty());

    // Pagination by count.
    let page = entries(s.read_log(Position::new(1, 2), 3, usize::MAX).unwrap());
    assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3, 4, 5]);
    // Pagination by bytes: each entry encodes to a bit over 100 bytes, so 250 holds two.
    let page = entries(s.read_log(Position::new(1, 2), 100, 250).unwrap());
    assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3, 4]);
    // At least one entry even when it alone exceeds max_bytes.
    let page = entries(s.read_log(Position::new(1, 2), 100, 1).unwrap());
    assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [3]);
    // max_entries 0 still makes progress.
    assert_eq!(
        entries(s.read_log(Position::new(1, 2), 0, usize::MAX).unwrap()).len(),
        1
    );

    // Fork: same seq, another epoch; and a reader ahead of us.
    assert_eq!(
        s.read_log(Position::new(2, 5), 10, usize::MAX).unwrap_err(),
        DataError::Fork {
            at: Position::new(2, 5),
            ours: Some(Position::new(1, 5))
        }
    );
    assert_eq!(
        s.read_log(Position::new(1, 11), 10, usize::MAX).unwrap_err(),
        DataError::Fork {
            at: Position::new(1, 11),
            ours: None
        }
    );

    // Trim to the 4 newest entries: seqs 7..=10 remain, 6 is the log start.
    assert_eq!(s.trim(4).unwrap(), 6);
    assert_eq!(s.trim(4).unwrap(), 0);
    assert_eq!(
        s.read_log(Position::default(), 10, usize::MAX).unwrap(),
        LogRead::Trimmed {
            oldest_retained: Some(Position::new(1, 7))
        }
    );
    assert_eq!(
        s.read_log(Position::new(1, 5), 10, usize::MAX).unwrap(),
        LogRead::Trimmed {
            oldest_retained: Some(Position::new(1, 7))
        }
    );
    // after = oldest retained - 1 still works, and a fork at that seq is still detected.
    let page = entries(s.read_log(Position::new(1, 6), 10, usize::MAX).unwrap());
    assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [7, 8, 9, 10]);
    assert_eq!(
        s.read_log(Position::new(2, 6), 10, usize::MAX).unwrap_err(),
        DataError::Fork {
            at: Position::new(2, 6),
            ours: Some(Position::new(1, 6))
        }
    );
    assert_eq!(s.position_at(6).unwrap(), Some(Position::new(1, 6)));
    assert_eq!(s.position_at(5).unwrap(), None);
    assert_eq!(s.position_at(8).unwrap(), Some(Position::new(1, 8)));
    assert_eq!(s.get("k2").unwrap().unwrap().0, [2u8; 100], "trim keeps the data");

    // Trim everything; survives reopen (log start persisted) and writes continue.
    assert_eq!(s.trim(0).unwrap(), 4);
    assert_eq!(
        s.read_log(Position::new(1, 9), 10, usize::MAX).unwrap(),
        LogRead::Trimmed { oldest_retained: None }
    );
    assert!(entries(s.read_log(Position::new(1, 10), 10, usize::MAX).unwrap()).is_empty());
    s.write(1, put("k11", b"x")).await.unwrap();
    let page = entries(s.read_log(Position::new(1, 10), 10, usize::MAX).unwrap());
    assert_eq!(page.iter().map(|e| e.pos.seq).collect::<Vec<_>>(), [11]);
}

/// A primary with `n` writes, its entries, and an empty replica file next to it.
async fn journal_fixture(n: usize) -> (tempfile::TempDir, DataStore, Vec<Entry>, PathBuf) {
    let (dir, primary) = open_temp();
    for i in 0..n {
        let value = if i % 3 == 0 {
            vec![i as u8; 3000]
        } else {
            format!("v{i}").into_bytes()
        };
        primary.write(1, put(&format!("k{}", i % 4), &value)).await.unwrap();
    }
    let all = entries(primary.read_log(Position::default(), 100, usize::MAX).unwrap());
    let replica = dir.path().join("replica.redb");
    (dir, primary, all, replica)
}

#[tokio::test]
async fn replica_applies_are_journaled_and_checkpointed() {
    let (_dir, primary, all, path) = journal_fixture(6).await;
    let replica = DataStore::open(&path).unwrap();
    let journal = Journal::path_for(&path);
    replica.apply(1, &all[..2]).unwrap();
    replica.apply(1, &all[2..4]).unwrap();
    let held = Journal::read(&journal).unwrap();
    assert_eq!(held.batches.len(), 2, "each apply is one journal record");
    assert_eq!(held.batches[1].1, all[2..4].to_vec());
    // Re-delivered entries are not journaled again.
    replica.apply(1, &all[3..5]).unwrap();
    let held = Journal::read(&journal).unwrap();
    assert_eq!(held.batches.len(), 3);
    assert_eq!(held.batches[2].1, all[4..5].to_vec());
    // Once CHECKPOINT_EVERY has passed, the next apply checkpoints: the journal is emptied.
    std::thread::sleep(crate::journal::CHECKPOINT_EVERY + std::time::Duration::from_millis(20));
    replica.apply(1, &all[5..]).unwrap();
    assert!(Journal::read(&journal).unwrap().batches.is_empty());
    assert_eq!(dump(&replica), dump(&primary));

    // A large batch is committed durably instead, which also empties the journal.
    primary.write(1, put("small", b"s")).await.unwrap();
    primary
        .write(1, put("large", &vec![9u8; crate::journal::JOURNAL_BATCH_MAX + 1]))
        .await
        .unwrap();
    let more = entries(primary.read_log(replica.position(), 10, usize::MAX).unwrap());
    replica.apply(1, &more[..1]).unwrap();
    assert_eq!(Journal::read(&journal).unwrap().batches.len(), 1);
    replica.apply(1, &more[1..]).unwrap();
    assert!(Journal::read(&journal).unwrap().batches.is_empty());
    drop(replica);
    let replica = DataStore::open(&path).unwrap();
    assert_eq!(dump(&replica), dump(&primary));
}

#[tokio::test]
async fn the_journal_is_applied_again_at_open() {
    let (_dir, primary, all, path) = journal_fixture(8).await;
    let replica = DataStore::open(&path).unwrap();
    replica.apply(1, &all[..3]).unwrap();
    drop(replica);
    // What a crash leaves behind when redb lost the non-durable commits of two applies that
    // the journal has: a record redb already has (before the crash a later durable commit
    // took it along), one it lacks, and one cut short while it was appended.
    let journal = Journal::path_for(&path);
    let mut j = Journal::new(&path);
    j.append(1, &all[1..3]).unwrap();
    j.append(1, &all[3..6]).unwrap();
    j.append(1, &all[6..]).unwrap();
    crate::journal::tests::scribble(&journal, j.end_offset() - 5, 5, 0);

    let replica = DataStore::open(&path).unwrap();
    assert_eq!(
        replica.position(),
        all[5].pos,
        "the whole records are applied, the cut one is not"
    );
    assert_eq!(
        entries(replica.read_log(Position::default(), 100, usize::MAX).unwrap()),
        all[..6].to_vec()
    );
    assert!(
        Journal::read(&journal).unwrap().batches.is_empty(),
        "checkpointed after the replay"
    );
    replica.apply(1, &all[6..]).unwrap();
    assert_eq!(dump(&replica), dump(&primary));
    // A newer epoch became known after those applies (a durable commit): the journal's
    // records, all in redb now, are of an older epoch. They are skipped, not refused.
    replica.observe_epoch(2).unwrap();
    assert!(!Journal::read(&journal).unwrap().batches.is_empty());
    drop(replica);
    // Opening again applies nothing twice.
    let replica = DataStore::open(&path).unwrap();
    assert_eq!(replica.position(), primary.position());
    assert_eq!(dump(&replica), dump(&primary));
    let rejected = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("rejected"))
        .count();
    assert_eq!(rejected, 0, "a journal of known entries is not rejected");
}

#[tokio::test]
async fn a_journal_that_does_not_fit_is_kept_aside_not_applied() {
    let (_dir, _primary, all, path) = journal_fixture(6).await;
    let replica = DataStore::open(&path).unwrap();
    replica.apply(1, &all[..2]).unwrap();
    let before = dump(&replica);
    drop(replica);
    // A record that skips entries (a gap after seq 2), and one that names another entry at
    // a seq this store has (a fork): neither may be applied.
    for bad in [all[3..5].to_vec(), {
        let mut e = all[1].clone();
        e.pos = Position::new(2, e.pos.seq);
        vec![e]
    }] {
        let mut j = Journal::new(&path);
        j.append(1, &bad).unwrap();
        let replica = DataStore::open(&path).unwrap();
        assert_eq!(replica.position(), all[1].pos);
        assert_eq!(dump(&replica), before);
        assert!(!Journal::path_for(&path).exists(), "moved aside");
        drop(replica);
    }
    let aside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replica.redb.journal.rejected-"))
        .collect();
    assert!(!aside.is_empty(), "the rejected journals are kept: {aside:?}");
}

#[tokio::test]
async fn rollback_and_snapshot_install_empty_the_journal_first() {
    let (_dir, primary, all, path) = journal_fixture(6).await;
    let replica = DataStore::open(&path).unwrap();
    replica.apply(1, &all).unwrap();
    let journal = Journal::path_for(&path);
    assert!(!Journal::read(&journal).unwrap().batches.is_empty());
    replica.rollback_to(all[2].pos).unwrap();
    assert!(
        Journal::read(&journal).unwrap().batches.is_empty(),
        "a restart must not apply the rolled-back entries again"
    );
    drop(replica);
    let replica = DataStore::open(&path).unwrap();
    assert_eq!(replica.position(), all[2].pos);

    replica.apply(1, &all[3..]).unwrap();
    assert!(!Journal::read(&journal).unwrap().batches.is_empty());
    let mut inst = replica.begin_install().unwrap();
    let mut reader = primary.snapshot().unwrap();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        inst.push_chunk(&chunk).unwrap();
    }
    inst.finish().unwrap();
    assert!(Journal::read(&journal).unwrap().batches.is_empty());
    assert_eq!(dump(&replica), dump(&primary));
}

#[tokio::test]
async fn replica_apply_matches_primary() {
    let (_d1, primary) = open_temp();
    let (_d2, replica) = open_temp();
    for i in 0..30 {
        primary
            .write(1, put(&format!("k{}", i % 12), format!("v{i}").as_bytes()))
            .await
            .unwrap();
    }
    primary.write(1, WriteOp::Delete { key: "k5".into() }).await.unwrap();
    primary.write(1, cas("k6", 19, b"cas")).await.unwrap();
    primary.write(2, put("k7", b"epoch2")).await.unwrap();

    // Stream it in small batches, as the apply worker would.
    let mut batches = Vec::new();
    loop {
        let batch = entries(primary.read_log(replica.position(), 7, usize::MAX).unwrap());
        if batch.is_empty() {
            break;
        }
        let pos = replica.apply(2, &batch).unwrap();
        assert_eq!(pos, batch.last().unwrap().pos);
        batches.push(batch);
    }
    assert!(batches.len() > 1);
    assert_eq!(replica.position(), primary.position());
    assert_eq!(replica.position(), Position::new(2, 33));
    assert_eq!(dump(&replica), dump(&primary));
    assert_eq!(dump(&replica).len(), 11);
    // The replica's log is the primary's log (so it can serve it after a failover).
    assert_eq!(
        replica.read_log(Position::default(), 100, usize::MAX).unwrap(),
        primary.read_log(Position::default(), 100, usize::MAX).unwrap()
    );

    // Re-delivery is a no-op, also when it overlaps new entries.
    let before = dump(&replica);
    assert_eq!(replica.apply(2, &batches[1]).unwrap(), Position::new(2, 33));
    assert_eq!(dump(&replica), before);
    primary.write(2, put("k8", b"new")).await.unwrap();
    let mut overlap = batches.last().unwrap().clone();
    overlap.extend(entries(primary.read_log(Position::new(2, 33), 10, usize::MAX).unwrap()));
    assert_eq!(replica.apply(2, &overlap).unwrap(), Position::new(2, 34));
    assert_eq!(dump(&replica), dump(&primary));

    // A gap is refused.
    primary.write(2, put("k9", b"a")).await.unwrap();
    primary.write(2, put("k9", b"b")).await.unwrap();
    let tail = entries(primary.read_log(Position::new(2, 35), 10, usize::MAX).unwrap());
    assert_eq!(
        replica.apply(2, &tail).unwrap_err(),
        DataError::Gap {
            expected: 35,
            found: 36,
            position: Position::new(2, 34)
        }
    );
    // Non-contiguous batches are refused before touching disk.
    let all = entries(primary.read_log(Position::new(2, 34), 10, usize::MAX).unwrap());
    let holey = vec![all[0].clone(), all[1].clone(), all[0].clone()];
    assert!(matches!(replica.apply(2, &holey), Err(DataError::InvalidEntries(_))));
    // A stale epoch (a deposed primary's frame) is refused, and so is an entry claiming an
    // epoch newer than its sender's.
    replica.observe_epoch(3).unwrap();
    assert_eq!(
        replica.apply(2, &all).unwrap_err(),
        DataError::StaleEpoch { epoch: 2, current: 3 }
    );
    assert_eq!(replica.position(), Position::new(2, 34));
    let mut future = all.clone();
    future[0].pos.epoch = 4;
    future[1].pos.epoch = 4;
    assert!(matches!(replica.apply(3, &future), Err(DataError::InvalidEntries(_))));
    // The primary of epoch 3 may still send entries of epoch 2 (written before the failover).
    assert_eq!(replica.apply(3, &all).unwrap(), Position::new(2, 36));
    assert_eq!(dump(&replica), dump(&primary));
    // A replica that already has another epoch at that seq reports a fork.
    let mut forked = all.clone();
    forked[1].pos.epoch = 3;
    assert_eq!(
        replica.apply(3, &forked[1..]).unwrap_err(),
        DataError::Fork {
            at: Position::new(3, 36),
            ours: Some(Position::new(2, 36))
        }
    );
    assert_eq!(replica.newest_epoch(), 3);
}

#[tokio::test]
async fn divergence_rollback_keeps_diverged_entries() {
    let (_da, a) = open_temp();
    let (_db, b) = open_temp();
    // A, primary of epoch 1, writes (1,1)..(1,5); B applies (1,1)..(1,3).
    a.write(1, put("x", b"x1")).await.unwrap();
    a.write(1, put("y", b"y2")).await.unwrap();
    a.write(1, put("z", b"z3")).await.unwrap();
    a.write(1, put("x", b"x4-lost")).await.unwrap();
    a.write(1, put("w", b"w5-lost")).await.unwrap();
    let a_log = entries(a.read_log(Position::default(), 100, usize::MAX).unwrap());
    assert_eq!(a_log.len(), 5);
    b.apply(1, &a_log[..3]).unwrap();
    let b_at_fork = dump(&b);
    assert_eq!(b.position(), Position::new(1, 3));

    // A dies. B becomes primary of epoch 2 and writes (2,4), (2,5).
    b.observe_epoch(2).unwrap();
    b.write(2, put("x", b"x-b")).await.unwrap();
    b.write(2, put("v", b"v-b")).await.unwrap();
    assert_eq!(b.position(), Position::new(2, 5));

    // A comes back and reads from B: fork detected at its position.
    a.observe_epoch(2).unwrap();
    assert_eq!(
        b.read_log(a.position(), 100, usize::MAX).unwrap_err(),
        DataError::Fork {
            at: Position::new(1, 5),
            ours: Some(Position::new(2, 5))
        }
    );
    assert_eq!(b.position_at(3).unwrap(), a.position_at(3).unwrap());
    assert_ne!(b.position_at(4).unwrap(), a.position_at(4).unwrap());

    // Rolling back to a position A does not have is refused.
    assert!(matches!(
        a.rollback_to(Position::new(2, 3)),
        Err(DataError::NotInLog { .. })
    ));
    let rolled = a.rollback_to(Position::new(1, 3)).unwrap();
    assert_eq!(rolled, a_log[3..].to_vec());
    assert_eq!(a.position(), Position::new(1, 3));
    assert_eq!(dump(&a), b_at_fork, "A equals B's state at the fork point");
    assert_eq!(
        a.get("x").unwrap().unwrap(),
        (
            b"x1".to_vec(),
            ValueMeta {
                version: 1,
                pos: Position::new(1, 1)
            }
        )
    );
    assert_eq!(a.get("w").unwrap(), None);

    // The diverged table holds A's entries 4 and 5 with their values, newest first.
    let div = a.diverged(100).unwrap();
    let div_entries: Vec<_> = div.iter().rev().map(|(_, e)| e.clone()).collect();
    assert_eq!(div_entries, a_log[3..].to_vec());
    assert_eq!(div[1].1.pos, Position::new(1, 4));
    assert_eq!(div[1].1.value.as_deref(), Some(&b"x4-lost"[..]));
    assert_eq!(div[0].1.value.as_deref(), Some(&b"w5-lost"[..]));
    assert!(div.iter().all(|(at, _)| *at > 1_600_000_000_000));
    assert_eq!(a.diverged(1).unwrap().len(), 1);

    // A now follows B and converges.
    let from_b = entries(b.read_log(a.position(), 100, usize::MAX).unwrap());
    assert_eq!(
        from_b.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [Position::new(2, 4), Position::new(2, 5)]
    );
    a.apply(2, &from_b).unwrap();
    assert_eq!(a.position(), b.position());
    assert_eq!(dump(&a), dump(&b));

    // The log after the fork was replaced, not appended to.
    assert_eq!(
        a.read_log(Position::default(), 100, usize::MAX).unwrap(),
        b.read_log(Position::default(), 100, usize::MAX).unwrap()
    );
    // A no-op rollback to the current position.
    assert!(a.rollback_to(a.position()).unwrap().is_empty());
}

#[tokio::test]
async fn rollback_restores_overwritten_and_deleted_keys_in_order() {
    let (_d, s) = open_temp();
    s.write(1, put("k", b"1")).await.unwrap();
    let base = dump(&s);
    s.write(1, put("k", b"2")).await.unwrap();
    s.write(1, WriteOp::Delete { key: "k".into() }).await.unwrap();
    s.write(1, put("k", b"4")).await.unwrap();
    s.write(1, put("j", b"5")).await.unwrap();
    s.rollback_to(Position::new(1, 1)).unwrap();
    assert_eq!(dump(&s), base);
    // Cannot roll back behind the retained log.
    s.write(1, put("k", b"6")).await.unwrap();
    s.write(1, put("k", b"7")).await.unwrap();
    s.trim(1).unwrap();
    assert!(matches!(
        s.rollback_to(Position::new(1, 1)),
        Err(DataError::NotInLog { .. })
    ));
    // To the log start itself is fine.
    let rolled = s.rollback_to(Position::new(1, 2)).unwrap();
    assert_eq!(rolled.len(), 1);
    assert_eq!(s.get("k").unwrap().unwrap().0, b"6");
    assert_eq!(s.diverged(100).unwrap().len(), 5);
}

/// Distinct seqs with chunks in the `values` table.
fn value_chunks(store: &DataStore) -> Vec<u64> {
    let rtx = store.inner.db.begin_read().unwrap();
    let t = rtx.open_table(VALUES).unwrap();
    let mut seqs: Vec<u64> = t.iter().unwrap().map(|r| r.unwrap().0.value().0).collect();
    seqs.dedup();
    seqs
}

fn big(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

pub(crate) fn open_temp_with(options: &StoreOptions) -> (tempfile::TempDir, DataStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DataStore::open_with(&dir.path().join("data.redb"), options).unwrap();
    (dir, store)
}

fn format(f: u8) -> StoreOptions {
    StoreOptions {
        format: Some(f),
        ..StoreOptions::default()
    }
}

/// The values log's books balance: each segment's live bytes in `value_segments` are exactly the
/// records that locations name (format 3), and every named record reads back.
fn assert_live_matches(store: &DataStore) {
    use crate::vlog::{read_live, record_len, Loc, LOC_CHUNK, SEGMENTS};
    let rtx = store.inner.db.begin_read().unwrap();
    let values = rtx.open_table(VALUES).unwrap();
    let mut named: std::collections::BTreeMap<u32, u64> = Default::default();
    for item in values.iter().unwrap() {
        let (k, v) = item.unwrap();
        let (seq, chunk) = k.value();
        if chunk == LOC_CHUNK {
            let loc = Loc::decode(seq, v.value()).unwrap();
            let len = store.inner.vlog.record_value_len(loc).unwrap();
            store.inner.vlog.read(seq, len, loc).unwrap();
            *named.entry(loc.segment).or_default() += record_len(len);
        }
    }
    let live: std::collections::BTreeMap<u32, u64> = read_live(&rtx.open_table(SEGMENTS).unwrap())
        .unwrap()
        .into_iter()
        .filter(|(_, l)| *l > 0)
        .collect();
    assert_eq!(live, named, "live bytes per segment against the records named");
}

#[tokio::test]
async fn large_values_are_stored_once_and_released() {
    large_values_are_stored_once_and_released_in(2).await;
    large_values_are_stored_once_and_released_in(3).await;
}

async fn large_values_are_stored_once_and_released_in(f: u8) {
    let (_d1, p) = open_temp_with(&format(f));
    let (_d2, r) = open_temp_with(&format(f));
    assert_eq!(p.inner.format, f);
    let check = |s: &DataStore| {
        if f >= 3 {
            assert_live_matches(s)
        }
    };
    let (a1, a2, b1) = (big(1, 16 * 1024), big(2, 5000), big(3, 100_000));
    p.write(1, put("a", &a1)).await.unwrap();
    p.write(1, put("small", b"tiny")).await.unwrap();
    p.write(1, put("b", &b1)).await.unwrap();
    p.write(1, put("a", &a2)).await.unwrap();
    p.write(1, WriteOp::Delete { key: "b".into() }).await.unwrap();
    p.write(1, put("c", &a1)).await.unwrap();
    // 1 and 3 are overwritten or deleted but still named by the before-images of 4 and 5.
    assert_eq!(value_chunks(&p), vec![1, 3, 4, 6]);
    check(&p);
    assert_eq!(p.get("a").unwrap().unwrap().0, a2);
    assert_eq!(p.get("b").unwrap(), None);
    assert_eq!(p.get("c").unwrap().unwrap().0, a1);
    let sizes: Vec<(String, u64)> = p
        .list("", None, 10)
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.key, i.size))
        .collect();
    assert_eq!(
        sizes,
        vec![("a".into(), 5000), ("c".into(), 16 * 1024), ("small".into(), 4)]
    );

    // The log carries the bytes, before-images included.
    let log = entries(p.read_log(Position::default(), 100, usize::MAX).unwrap());
    assert_eq!(log.len(), 6);
    assert_eq!(log[3].value.as_deref(), Some(&a2[..]));
    assert_eq!(log[3].prev, Some((a1.clone(), Position::new(1, 1))));
    assert_eq!(log[4].prev, Some((b1.clone(), Position::new(1, 3))));
    // max_bytes counts the external bytes: the 100,000-byte value does not join the batch.
    assert_eq!(entries(p.read_log(Position::default(), 100, 20_000).unwrap()).len(), 2);

    // A replica stores them the same way and serves the same log.
    r.apply(1, &log).unwrap();
    assert_eq!(dump(&r), dump(&p));
    assert_eq!(value_chunks(&r), vec![1, 3, 4, 6]);
    assert_eq!(
        r.read_log(Position::default(), 100, usize::MAX).unwrap(),
        p.read_log(Position::default(), 100, usize::MAX).unwrap()
    );

    // Trimming an entry releases its before-image (and nothing else).
    let before = dump(&p);
    assert_eq!(p.trim(2).unwrap(), 4);
    assert_eq!(value_chunks(&p), vec![3, 4, 6]);
    assert_eq!(p.trim(1).unwrap(), 1);
    assert_eq!(value_chunks(&p), vec![4, 6]);
    assert_eq!(dump(&p), before);
    check(&p);

    // A rollback restores external before-images and keeps the rolled-back bytes.
    let rolled = r.rollback_to(Position::new(1, 3)).unwrap();
    assert_eq!(rolled, log[3..].to_vec());
    assert_eq!(r.get("a").unwrap().unwrap().0, a1);
    assert_eq!(r.get("b").unwrap().unwrap().0, b1);
    assert_eq!(r.get("c").unwrap(), None);
    assert_eq!(value_chunks(&r), vec![1, 3]);
    check(&r);
    let diverged: Vec<Entry> = r.diverged(10).unwrap().into_iter().map(|d| d.1).collect();
    assert_eq!(diverged.iter().rev().cloned().collect::<Vec<_>>(), log[3..].to_vec());

    // A snapshot carries the bytes; the installer stores the large ones in chunks again, and
    // the target's old chunks go.
    let (_d3, t) = open_temp_with(&format(f));
    t.write(1, put("old", &b1)).await.unwrap();
    let mut reader = p.snapshot().unwrap();
    let mut installer = t.begin_install().unwrap();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        installer.push_chunk(&chunk).unwrap();
    }
    installer.finish().unwrap();
    assert_eq!(dump(&t), dump(&p));
    assert_eq!(value_chunks(&t), vec![4, 6]);
    check(&t);
    // And they are released as usual later: overwriting c and trimming drops c's chunks.
    t.write(1, put("c", b"short")).await.unwrap();
    t.trim(0).unwrap();
    assert_eq!(value_chunks(&t), vec![4]);
    assert_eq!(dump(&t).len(), 3);
    check(&t);
}

#[tokio::test]
async fn datastore_format_is_kept_raised_on_request_and_never_lowered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    let value = big(7, 9000);
    {
        let s = DataStore::open_with_format(&path, Some(1)).unwrap();
        s.write(1, put("v1", &value)).await.unwrap();
        assert_eq!(value_chunks(&s), Vec::<u64>::new(), "format 1 keeps values inline");
    }
    {
        // No format recorded (as in a file of an older release): it stays format 1.
        let s = DataStore::open(&path).unwrap();
        assert_eq!(s.inner.format, 1);
        s.write(1, put("v2", &value)).await.unwrap();
        assert_eq!(value_chunks(&s), Vec::<u64>::new());
    }
    {
        let s = DataStore::open_with_format(&path, Some(2)).unwrap();
        s.write(1, put("v3", &value)).await.unwrap();
        assert_eq!(value_chunks(&s), vec![3]);
        for k in ["v1", "v2", "v3"] {
            assert_eq!(s.get(k).unwrap().unwrap().0, value, "{k}");
        }
    }
    assert_eq!(DataStore::open(&path).unwrap().inner.format, 2);
    let e = DataStore::open_with_format(&path, Some(1)).unwrap_err().to_string();
    assert!(e.contains("format 2") && e.contains("resync"), "{e}");
    let e = DataStore::open_with_format(&path, Some(4)).unwrap_err().to_string();
    assert!(e.contains("format 4 is not supported"), "{e}");
    assert_eq!(DataStore::open(&path).unwrap().get("v3").unwrap().unwrap().0, value);
    {
        // Format 3: the new value goes to the values log; the older ones read as they are.
        let s = DataStore::open_with_format(&path, Some(3)).unwrap();
        s.write(1, put("v4", &value)).await.unwrap();
        assert_eq!(value_chunks(&s), vec![3, 4]);
        for k in ["v1", "v2", "v3", "v4"] {
            assert_eq!(s.get(k).unwrap().unwrap().0, value, "{k}");
        }
        assert_live_matches(&s);
    }
    assert!(ValuesLog::path_for(&path).is_dir());
    let e = DataStore::open_with_format(&path, Some(2)).unwrap_err().to_string();
    assert!(e.contains("format 3") && e.contains("resync"), "{e}");
    assert_eq!(DataStore::open(&path).unwrap().get("v4").unwrap().unwrap().0, value);
}

/// Overwritten values leave dead records in the values log; compaction copies the live ones out
/// of mostly-dead segments and removes those, the books stay balanced, and every value reads back,
/// also after a reopen.
#[tokio::test]
async fn compaction_keeps_the_values_log_near_the_live_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    let options = StoreOptions {
        segment_bytes: 64 << 10,
        ..StoreOptions::default()
    };
    let segments_on_disk = || {
        std::fs::read_dir(ValuesLog::path_for(&path))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect::<Vec<u64>>()
    };
    let s = DataStore::open_with(&path, &options).unwrap();
    // Four keys of 10 KB, overwritten 30 times: 1.2 MB written, 40 KB live.
    for round in 0..30u8 {
        for k in 0..4u8 {
            s.write(1, put(&format!("k{k}"), &big(round ^ k, 10_000)))
                .await
                .unwrap();
        }
        s.trim(0).unwrap();
    }
    assert_live_matches(&s);
    // Some compaction ran after the trims already (`compact_if_due`); finish it.
    let before: u64 = segments_on_disk().iter().sum();
    let steps = s.compact_all();
    assert_live_matches(&s);
    let after: u64 = segments_on_disk().iter().sum();
    assert!(
        after <= 3 * (64 << 10),
        "{before} bytes before the last {steps} steps, {after} after: {:?}",
        segments_on_disk()
    );
    for k in 0..4u8 {
        assert_eq!(s.get(&format!("k{k}")).unwrap().unwrap().0, big(29 ^ k, 10_000));
    }
    drop(s);
    let s = DataStore::open_with(&path, &options).unwrap();
    assert_live_matches(&s);
    for k in 0..4u8 {
        assert_eq!(s.get(&format!("k{k}")).unwrap().unwrap().0, big(29 ^ k, 10_000));
    }
}

/// Segment files that no durable commit names (a crash after the values were written, before the
/// commit) are removed at open; the journal's replay writes its values again.
#[tokio::test]
async fn unnamed_segments_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.redb");
    {
        let s = DataStore::open(&path).unwrap();
        s.write(1, put("a", &big(1, 20_000))).await.unwrap();
        s.checkpoint().unwrap();
    }
    let vdir = ValuesLog::path_for(&path);
    std::fs::write(vdir.join("0000000099.seg"), b"KEELVAL1 garbage").unwrap();
    let s = DataStore::open(&path).unwrap();
    assert!(!vdir.join("0000000099.seg").exists());
    assert_eq!(s.get("a").unwrap().unwrap().0, big(1, 20_000));
    assert_live_matches(&s);
}

/// The node shares the store across tasks, awaits writes in axum handlers and streams
/// snapshots from `spawn_blocking`.
#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let (_dir, s) = open_temp();
    send_sync(&s);
    send(&s.write(1, put("k", b"v")));
    send(&s.snapshot().unwrap());
    send(&s.begin_install().unwrap());
}

#[test]
fn stored_value_encodings_agree() {
    let pos = Position::new(3, 99);
    let bytes = encode_value(pos, b"hello");
    let owned = StoredKv::decode("k", &bytes).unwrap();
    assert_eq!((owned.pos, owned.held), (pos, Held::Inline(b"hello".to_vec())));
    assert_eq!(StoredKv::meta("k", &bytes).unwrap(), (pos, 5));
    let mut bad = bytes.clone();
    bad.push(0);
    assert!(matches!(StoredKv::meta("k", &bad), Err(DataError::Corrupt(_))));
    assert!(matches!(StoredKv::decode("k", &bad[..4]), Err(DataError::Corrupt(_))));
}
