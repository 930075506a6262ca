//! Unit tests of `keel status` (the verdict and its rendering) and `keel gitsync status`.
use super::*;

pub(crate) fn member(id: u64, voter: bool) -> Value {
    json!({"id": id, "api_addr": format!("127.0.0.1:710{id}"), "peer_addr": format!("127.0.0.1:720{id}"),
           "voter": voter, "reachable": true, "tags": {"nofailover": false, "priority": 0}})
}

fn cluster(members: &[(u64, bool)]) -> Value {
    let members: Vec<Value> = members.iter().map(|(id, voter)| member(*id, *voter)).collect();
    json!({"cluster_id": "abc", "leader": 1, "term": 3, "members": members,
           "primary": {"node": 1, "epoch": 2}, "maintenance": false, "failover_blocked": null,
           "config": {"max_lag_on_failover": 100}})
}

/// A member's `/v1/status`: node 1 is the named primary and holds its lease when it sees itself
/// leading; replication running, at position `2:12`; Git Sync off.
fn node_status(id: u64, leader: Option<u64>) -> Value {
    json!({"node_id": id, "role": if id == 1 && leader == Some(1) { "primary" } else { "replica" },
           "raft": {"state": if leader == Some(id) { "leader" } else { "follower" }, "term": 3,
                    "leader": leader, "last_applied": 12, "last_log_index": 12, "voter": true},
           "primary": {"node": 1, "epoch": 2}, "lease_remaining_ms": null, "maintenance": false, "cluster_id": "abc",
           "failover_blocked": null, "gitsync": null, "service": null,
           "replication": {"mode": "async", "position": "2:12", "paused": false, "lag_ms": 0},
           "api_addr": format!("127.0.0.1:710{id}"), "peer_addr": format!("127.0.0.1:720{id}")})
}

/// `(id, Some(leader seen) | None = unreachable)`; `Some(None)` = answered without a leader.
fn statuses(views: &[(u64, Option<Option<u64>>)]) -> BTreeMap<u64, Option<Value>> {
    views
        .iter()
        .map(|(id, view)| (*id, view.map(|leader| node_status(*id, leader))))
        .collect()
}

/// Three voters, all answering, all following leader 1, which is the primary.
fn healthy3() -> (Value, BTreeMap<u64, Option<Value>>) {
    (
        cluster(&[(1, true), (2, true), (3, true)]),
        statuses(&[(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(Some(1)))]),
    )
}

/// Sets the field at JSON pointer `at` of member `id`'s status.
fn set(statuses: &mut BTreeMap<u64, Option<Value>>, id: u64, at: &str, v: Value) {
    let s = statuses.get_mut(&id).and_then(Option::as_mut).expect("member answered");
    *s.pointer_mut(at).unwrap_or_else(|| panic!("no {at} in the fixture")) = v;
}

#[test]
fn lone_leader_without_quorum_is_critical() {
    let cluster = json!({"members": [member(1, true), member(2, true), member(3, true)]});
    let lone = json!({"role": "primary", "raft": {"leader": 1, "quorum": false}});
    let statuses = BTreeMap::from([(1, Some(lone)), (2, None), (3, None)]);
    assert_eq!(verdict(&cluster, &statuses).0, Verdict::Critical);
    let with_quorum = json!({"role": "primary", "raft": {"leader": 1, "quorum": true}});
    let statuses = BTreeMap::from([(1, Some(with_quorum)), (2, None), (3, None)]);
    assert_eq!(verdict(&cluster, &statuses).0, Verdict::Degraded);
}

#[test]
fn verdict_table() {
    let three = [(1, true), (2, true), (3, true)];
    let with_learner = [(1, true), (2, true), (3, true), (4, false)];
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &[(u64, bool)], Vec<(u64, Option<Option<u64>>)>, Verdict, &str)> = vec![
        (
            "all agree",
            &three,
            vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(Some(1)))],
            Verdict::Healthy,
            "",
        ),
        (
            "one voter down",
            &three,
            vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, None)],
            Verdict::Degraded,
            "voter 3 unreachable",
        ),
        (
            "two voters down",
            &three,
            vec![(1, Some(Some(1))), (2, None), (3, None)],
            Verdict::Degraded,
            "voters 2 and 3 unreachable",
        ),
        (
            "learner down is fine",
            &with_learner,
            vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(Some(1))), (4, None)],
            Verdict::Healthy,
            "",
        ),
        (
            "disagreement",
            &three,
            vec![(1, Some(Some(1))), (2, Some(Some(2))), (3, Some(Some(1)))],
            Verdict::Degraded,
            "members disagree on the leader (1 says 1, 2 says 2, 3 says 1)",
        ),
        (
            "one member sees no leader",
            &three,
            vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(None))],
            Verdict::Degraded,
            "members disagree on the leader (1 says 1, 2 says 1, 3 says none)",
        ),
        (
            "down and disagreeing",
            &three,
            vec![(1, Some(Some(1))), (2, Some(Some(2))), (3, None)],
            Verdict::Degraded,
            "voter 3 unreachable; members disagree on the leader (1 says 1, 2 says 2)",
        ),
        (
            "no leader anywhere: every reason, the critical ones first",
            &three,
            vec![(1, Some(None)), (2, Some(None)), (3, None)],
            Verdict::Critical,
            "no leader; no primary: 1 is named primary but holds no lease (role replica); voter 3 unreachable",
        ),
        (
            "the primary is down",
            &three,
            vec![(1, None), (2, Some(Some(2))), (3, Some(Some(2)))],
            Verdict::Critical,
            "no primary: primary 1 did not answer; voter 1 unreachable",
        ),
        (
            "nobody answers",
            &three,
            vec![(1, None), (2, None), (3, None)],
            Verdict::Critical,
            "no member answered /v1/status",
        ),
        (
            "single node",
            &[(1, true)],
            vec![(1, Some(Some(1)))],
            Verdict::Healthy,
            "",
        ),
    ];
    for (name, members, views, want, want_reason) in cases {
        let (got, reason) = verdict(&cluster(members), &statuses(&views));
        assert_eq!((got, reason.as_str()), (want, want_reason), "case {name}");
    }
}

/// The unhealthy states the leader and reachability do not show: each changes the healthy
/// three-node fixture, and all of them together list every reason.
#[test]
fn verdict_table_beyond_the_leader() {
    type Change = fn(&mut Value, &mut BTreeMap<u64, Option<Value>>);
    let cases: Vec<(&str, Change, Verdict, &str)> =
        vec![
        ("healthy", |_, _| {}, Verdict::Healthy, ""),
        (
            "no primary named",
            |c, s| {
                c["primary"] = Value::Null;
                for id in 1..=3 {
                    set(s, id, "/role", json!("replica"));
                    set(s, id, "/primary", Value::Null);
                }
            },
            Verdict::Critical,
            "no primary",
        ),
        (
            "named primary without a lease",
            |_, s| set(s, 1, "/role", json!("fenced")),
            Verdict::Critical,
            "no primary: 1 is named primary but holds no lease (role fenced)",
        ),
        (
            "failover blocked with no primary",
            |_, s| {
                set(s, 1, "/role", json!("fenced"));
                set(s, 1, "/failover_blocked", json!("no primary yet; maintenance mode is on"));
            },
            Verdict::Critical,
            "no primary: 1 is named primary but holds no lease (role fenced); \
             failover blocked: no primary yet; maintenance mode is on",
        ),
        (
            "failover blocked while a primary holds its lease, seen in /v1/cluster and the leader's status",
            |c, s| {
                c["failover_blocked"] = json!("primary 1 did not renew its lease for 900 ms; no candidate qualifies");
                set(
                    s,
                    1,
                    "/failover_blocked",
                    json!("primary 1 did not renew its lease for 900 ms; no candidate qualifies"),
                );
            },
            Verdict::Degraded,
            "failover blocked: primary 1 did not renew its lease for 900 ms; no candidate qualifies",
        ),
        (
            "replication paused on two replicas",
            |_, s| {
                set(s, 2, "/replication/paused", json!(true));
                set(s, 3, "/replication/paused", json!(true));
            },
            Verdict::Degraded,
            "replication paused on 2 and 3",
        ),
        (
            "a replica lags past max_lag_on_failover",
            |_, s| {
                set(s, 1, "/replication/position", json!("2:500"));
                set(s, 2, "/replication/position", json!("2:450"));
                set(s, 3, "/replication/position", json!("2:399"));
            },
            Verdict::Degraded,
            "replica 3 lags 101 entries, more than max_lag_on_failover 100: it cannot be promoted",
        ),
        (
            "lag exactly max_lag_on_failover is fine (failover takes it)",
            |_, s| set(s, 1, "/replication/position", json!("2:112")),
            Verdict::Healthy,
            "",
        ),
        (
            "two replicas lag",
            |_, s| set(s, 1, "/replication/position", json!("3:1000")),
            Verdict::Degraded,
            "replicas 2 (988 entries), 3 (988 entries) lag more than max_lag_on_failover 100: they cannot be promoted",
        ),
        (
            "a learner's lag does not matter for failover",
            |c, s| {
                c["members"][2]["voter"] = json!(false);
                set(s, 3, "/replication/position", json!("2:1"));
            },
            Verdict::Healthy,
            "",
        ),
        (
            "Git Sync conflict",
            |_, s| {
                set(s, 2, "/gitsync", json!({"state": "conflict", "commit": "abc"}));
                set(s, 3, "/gitsync", json!({"state": "ok", "commit": "abc"}));
            },
            Verdict::Degraded,
            "Git Sync conflict on 2 (upstream is not a fast-forward of the served commit)",
        ),
        (
            "everything at once, every reason",
            |c, s| {
                c["failover_blocked"] = json!("no candidate qualifies");
                *s.get_mut(&3).unwrap() = None;
                set(s, 1, "/role", json!("fenced"));
                set(s, 1, "/replication/position", json!("2:300"));
                set(s, 2, "/replication/paused", json!(true));
                set(s, 2, "/replication/position", json!("2:1"));
                set(s, 2, "/gitsync", json!({"state": "conflict"}));
            },
            Verdict::Critical,
            "no primary: 1 is named primary but holds no lease (role fenced); \
             failover blocked: no candidate qualifies; voter 3 unreachable; replication paused on 2; \
             replica 2 lags 299 entries, more than max_lag_on_failover 100: it cannot be promoted; \
             Git Sync conflict on 2 (upstream is not a fast-forward of the served commit)",
        ),
    ];
    for (name, change, want, want_reason) in cases {
        let (mut c, mut s) = healthy3();
        change(&mut c, &mut s);
        let (got, reason) = verdict(&c, &s);
        assert_eq!((got, reason.as_str()), (want, want_reason), "case {name}");
    }
}

/// A managed Redis in member `id`'s status.
fn redis(role: &str, healthy: bool, offset: Option<u64>, lag: Option<u64>) -> Value {
    json!({"kind": "redis", "addr": "127.0.0.1:6379", "role": role, "offset": offset, "lag": lag,
           "following": null, "link_up": role == "replica", "healthy": healthy, "last_error": null,
           "restarts": 0})
}

/// The healthy fixture with managed Redis: node 1's is the master, the others replicate.
fn healthy3_with_redis() -> (Value, BTreeMap<u64, Option<Value>>) {
    let (c, mut s) = healthy3();
    set(&mut s, 1, "/service", redis("master", true, Some(1200), None));
    for id in [2, 3] {
        set(&mut s, id, "/service", redis("replica", true, Some(1200), Some(0)));
    }
    (c, s)
}

#[test]
fn verdict_with_a_managed_service() {
    type Change = fn(&mut BTreeMap<u64, Option<Value>>);
    let cases: Vec<(&str, Change, Verdict, &str)> = vec![
        ("all healthy", |_| {}, Verdict::Healthy, ""),
        (
            "a replica's redis down",
            |s| set(s, 3, "/service", redis("down", false, None, None)),
            Verdict::Degraded,
            "redis down on 3",
        ),
        (
            "a replica's redis answering but unhealthy",
            |s| set(s, 2, "/service/healthy", json!(false)),
            Verdict::Degraded,
            "redis down on 2",
        ),
        (
            "two replicas' redis down",
            |s| {
                set(s, 2, "/service", redis("down", false, None, None));
                set(s, 3, "/service", redis("down", false, None, None));
            },
            Verdict::Degraded,
            "redis down on 2 and 3",
        ),
        (
            "the primary's redis down: named once, as not the master",
            |s| set(s, 1, "/service", redis("down", false, None, None)),
            Verdict::Critical,
            "primary 1's redis is not the master (role down)",
        ),
        (
            "the primary's redis fenced",
            |s| set(s, 1, "/service/role", json!("fenced")),
            Verdict::Critical,
            "primary 1's redis is not the master (role fenced)",
        ),
        (
            "the primary's redis still a replica, and a replica's down",
            |s| {
                set(s, 1, "/service", redis("replica", true, Some(1100), Some(1)));
                set(s, 2, "/service", redis("down", false, None, None));
            },
            Verdict::Critical,
            "primary 1's redis is not the master (role replica); redis down on 2",
        ),
        (
            "a replica lagging seconds is not a verdict of its own",
            |s| set(s, 2, "/service/lag", json!(4)),
            Verdict::Healthy,
            "",
        ),
    ];
    for (name, change, want, want_reason) in cases {
        let (c, mut s) = healthy3_with_redis();
        change(&mut s);
        let (got, reason) = verdict(&c, &s);
        assert_eq!((got, reason.as_str()), (want, want_reason), "case {name}");
    }
    // Without a service object nothing about services is said (the healthy fixture has none).
    let (c, s) = healthy3();
    assert_eq!(verdict(&c, &s), (Verdict::Healthy, String::new()));
}

#[test]
fn status_rendering_with_a_managed_service() {
    let (c, mut s) = healthy3_with_redis();
    set(&mut s, 2, "/service/lag", json!(2));
    set(&mut s, 3, "/service", redis("down", false, None, None));
    let (v, reason) = verdict(&c, &s);
    let text = render_status(&c, &s, v, &reason);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        "NODE  ROLE     RAFT      TERM  LEADER  REACHABLE  APPLIED  VOTER  API             \
         SERVICE        OFFSET  LAG  HEALTHY"
    );
    assert_eq!(
        lines[2],
        "1     primary  leader    3     1       yes        12       yes    127.0.0.1:7101  \
         redis:master   1200    -    yes"
    );
    assert_eq!(
        lines[3],
        "2     replica  follower  3     1       yes        12       yes    127.0.0.1:7102  \
         redis:replica  1200    2s   yes"
    );
    assert_eq!(
        lines[4],
        "3     replica  follower  3     1       yes        12       yes    127.0.0.1:7103  \
         redis:down     -       -    no"
    );
    assert_eq!(lines[5], "degraded: redis down on 3");

    // An unreachable member shows dashes in the service columns too.
    *s.get_mut(&3).unwrap() = None;
    let text = render_status(&c, &s, Verdict::Degraded, "voter 3 unreachable");
    let row3 = text.lines().nth(4).unwrap();
    assert!(
        row3.ends_with("127.0.0.1:7103  -              -       -    -"),
        "{row3:?}"
    );
}

#[test]
fn verdict_exit_codes() {
    assert_eq!(Verdict::Healthy.exit_code(), 0);
    assert_eq!(Verdict::Degraded.exit_code(), 1);
    assert_eq!(Verdict::Critical.exit_code(), 2);
}

#[test]
fn status_rendering() {
    let c = cluster(&[(1, true), (2, true), (3, false)]);
    let s = statuses(&[(1, Some(Some(1))), (2, Some(Some(1))), (3, None)]);
    let (v, reason) = verdict(&c, &s);
    let text = render_status(&c, &s, v, &reason);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "cluster abc — leader 1, primary 1 (epoch 2), maintenance off");
    assert_eq!(
        lines[1],
        "NODE  ROLE     RAFT      TERM  LEADER  REACHABLE  APPLIED  VOTER  API"
    );
    assert_eq!(
        lines[2],
        "1     primary  leader    3     1       yes        12       yes    127.0.0.1:7101"
    );
    assert_eq!(
        lines[4],
        "3     -        -         -     -       no         -        no     127.0.0.1:7103"
    );
    assert_eq!(lines[5], "healthy");

    let c = json!({"cluster_id": null, "leader": null, "members": [], "primary": null, "maintenance": true});
    let text = render_status(&c, &BTreeMap::new(), Verdict::Critical, "no leader");
    assert!(
        text.starts_with("cluster (none) — leader none, primary none, maintenance on\n"),
        "{text}"
    );
    assert!(text.ends_with("critical: no leader\n"), "{text}");
}

#[test]
fn gitsync_rendering() {
    let gs = |commit: &str| json!({"gitsync": {"state": "ok", "commit": commit, "last_success_at_ms": null}});
    let off = json!({"gitsync": null});
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(u64, Option<Value>)>, GitSyncVerdict, &str)> = vec![
        (
            "one commit everywhere",
            vec![(1, Some(gs("aaa"))), (2, Some(gs("aaa")))],
            GitSyncVerdict::Converged,
            "converged",
        ),
        (
            "two commits",
            vec![(1, Some(gs("aaa"))), (2, Some(gs("bbb")))],
            GitSyncVerdict::NotConverged,
            "not converged",
        ),
        (
            "a node unreachable",
            vec![(1, Some(gs("aaa"))), (2, None)],
            GitSyncVerdict::NotConverged,
            "not converged",
        ),
        (
            "off on every node",
            vec![(1, Some(off.clone())), (2, Some(off.clone())), (3, None)],
            GitSyncVerdict::Off,
            "Git Sync is off (no node runs with --gitsync-repo)",
        ),
        (
            "off on one node only",
            vec![(1, Some(gs("aaa"))), (2, Some(off.clone()))],
            GitSyncVerdict::NotConverged,
            "not converged",
        ),
    ];
    for (name, statuses, want, last_line) in cases {
        let (got, text) = render_gitsync(&statuses.into_iter().collect());
        assert_eq!(got, want, "case {name}");
        assert_eq!(text.lines().last(), Some(last_line), "case {name}: {text}");
    }
}
