//! Unit tests of backups: the file format, checksum and truncation checks, restored state.
use super::*;

#[test]
fn restored_cluster_id_depends_on_file_and_peers() {
    let p1: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
    let mut p2 = p1.clone();
    p2.insert(3, "c:1".into());
    let a = restored_cluster_id("00ff", &p1);
    assert_eq!(a.len(), 32);
    assert_eq!(a, restored_cluster_id("00ff", &p1), "deterministic");
    assert_ne!(a, restored_cluster_id("00fe", &p1));
    assert_ne!(a, restored_cluster_id("00ff", &p2));
}

#[test]
fn restored_state_keeps_epoch_history_and_tags() {
    use keel_raft::state::{MemberMeta, PrimaryRecord, Request, Tags};
    let mut s = ClusterState::default();
    s.apply(&Request::InitClusterId {
        cluster_id: "old".into(),
    });
    for (id, prio) in [(1, 0), (2, 5), (9, 1)] {
        s.members.insert(
            id,
            MemberMeta {
                api_addr: format!("h{id}:1"),
                tags: Tags {
                    nofailover: false,
                    priority: prio,
                },
            },
        );
    }
    for e in 1..=3 {
        s.apply(&Request::Promote {
            node: 2,
            epoch: e,
            reason: "t".into(),
            at_ms: 0,
        });
    }
    let peers: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
    let r = restored_state(&s, "new".into(), &peers);
    assert_eq!(r.cluster_id.as_deref(), Some("new"));
    assert_eq!(r.primary, Some(PrimaryRecord { node: 2, epoch: 3 }));
    assert_eq!(r.history, s.history);
    assert_eq!(r.members.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(r.members[&2].tags.priority, 5);
    assert!(r.members.values().all(|m| m.api_addr.is_empty()));
}

/// A backup file of a real datastore snapshot, as the server frames it.
fn sample_file(dir: &Path) -> (PathBuf, keel_replication::DataStore) {
    let store = keel_replication::DataStore::open(&dir.join("src.redb")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Concurrent writes: the writer group-commits them (one fsync instead of 24).
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..24u32 {
            let (store, op) = (
                store.clone(),
                keel_replication::WriteOp::Put {
                    key: format!("k/{i:03}"),
                    value: vec![i as u8; 100_000],
                },
            );
            set.spawn(async move { store.write(1, op).await.unwrap() });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    let mut reader = store.snapshot().unwrap();
    let header = BackupHeader {
        created_at_ms: 1,
        keel_version: "test".into(),
        source_node: 1,
        position: reader.position(),
        keys: reader.keys(),
        raft_last_applied: None,
        cluster: ClusterState::default(),
        membership: vec![],
    };
    let mut framer = Framer::default();
    let mut bytes = framer.header(&header);
    while let Some(c) = reader.next_chunk().unwrap() {
        bytes.extend(framer.data(&c));
    }
    let (tail, sum, size) = framer.finish(reader.records_sent());
    bytes.extend(tail);
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(sum, hex(&Sha256::digest(&bytes[..bytes.len() - 32])));
    let path = dir.join("b.keelbak");
    std::fs::write(&path, &bytes).unwrap();
    (path, store)
}

#[test]
fn framed_file_verifies_and_installs_and_every_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, src) = sample_file(dir.path());
    let sum = verify_checksum(&path).unwrap();
    let dst = keel_replication::DataStore::open(&dir.path().join("dst.redb")).unwrap();
    let mut inst = dst.begin_install().unwrap();
    let v = scan(&path, |c| inst.push_chunk(c).map_err(|e| anyhow::anyhow!("{e}"))).unwrap();
    assert_eq!(v.sha256, sum);
    assert!(
        v.end.chunks >= 3,
        "2.4 MB of values: several chunks, got {}",
        v.end.chunks
    );
    assert_eq!((v.end.records, v.header.keys), (24, 24));
    assert_eq!(inst.finish().unwrap(), src.position());
    for i in [0u32, 17, 23] {
        let key = format!("k/{i:03}");
        assert_eq!(dst.get(&key).unwrap().unwrap().0, vec![i as u8; 100_000]);
    }

    let good = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.keelbak");
    // A flipped bit anywhere after the preamble fails the checksum; in the preamble it is
    // "not a Keel backup" or another format version. Never a panic, never an Ok.
    for at in [8, 9, 14, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        std::fs::write(&bad, &b).unwrap();
        let e = verify_checksum(&bad).unwrap_err().to_string();
        assert!(
            e.contains("checksum") || e.contains("format version") || e.contains("not a Keel backup"),
            "byte {at}: {e}"
        );
        assert!(scan(&bad, |_| Ok(())).is_err(), "byte {at}");
    }
    // Truncated anywhere, or with bytes appended.
    for len in [0, 9, 20, good.len() / 3, good.len() - 1] {
        std::fs::write(&bad, &good[..len]).unwrap();
        assert!(verify_checksum(&bad).is_err(), "truncated to {len}");
        assert!(scan(&bad, |_| Ok(())).is_err(), "truncated to {len}");
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"extra");
    std::fs::write(&bad, &longer).unwrap();
    assert!(verify_checksum(&bad).is_err());
    assert!(scan(&bad, |_| Ok(())).is_err());
}
