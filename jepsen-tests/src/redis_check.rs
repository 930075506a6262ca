//! Pure checks of the Redis workloads (the runner is `runner::redis`):
//!
//! - [`lost_writes`]: which acknowledged `RPUSH`es are missing from the final `LRANGE` of their
//!   list, read after every fault was healed. Elements are unique, so this names exactly the
//!   acknowledged writes that were lost (the append checker's `lost` also counts them, but only
//!   against reads that happened to run after them).
//! - [`judge_namings`]: was discovery (`SENTINEL get-master-addr-by-name`) ever seen naming a
//!   server that was fenced or a replica? A watcher samples every node's Redis (role and
//!   `min-replicas-to-write`) just before and just after each question, so an answer is judged
//!   against the named server's state on both sides of it.
//!
//! What the naming check can and cannot see: it sees the state of the named server within a few
//! milliseconds on both sides of the answer, not at the instant the listener answered. Fenced (or
//! a replica) on both sides is a definite finding unless the server flipped twice in between
//! (unfenced and fenced again within a few ms, which no failover does); on one side only, the
//! fence may have been applied or lifted between the probe and the answer, so it is counted
//! apart (`racy`). A server that does not answer (killed, paused) cannot be judged: those answers
//! are counted as `named_unreachable`, the window in which a client is told a dead master.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{OpFn, Outcome, PairedOp};

/// Acknowledged appends against the final contents of each list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrites {
    /// `ok` appends on keys with a final read.
    pub acknowledged: u64,
    /// Of those, missing from the final read.
    pub lost: u64,
    /// Up to 10 lost ones, described.
    pub examples: Vec<String>,
    /// Appends that ended `info` (timeout, WAIT short of its replicas) and are in the final list.
    pub indeterminate_present: u64,
    /// Appends that ended `info` and are not.
    pub indeterminate_absent: u64,
    /// Keys appended to but never read at the end (the final read failed): not judged.
    pub keys_unread: Vec<String>,
}

/// Compares every append with the final read of its key (`finals`: key → list).
pub fn lost_writes(pairs: &[PairedOp], finals: &BTreeMap<String, Vec<Value>>) -> LostWrites {
    let sets: BTreeMap<&str, BTreeSet<String>> = finals
        .iter()
        .map(|(k, l)| (k.as_str(), l.iter().map(|v| v.to_string()).collect()))
        .collect();
    let mut r = LostWrites::default();
    let mut unread = BTreeSet::new();
    for p in pairs.iter().filter(|p| p.f == OpFn::Append) {
        let Some(set) = sets.get(p.key.as_str()) else {
            unread.insert(p.key.clone());
            continue;
        };
        let present = set.contains(&p.input.to_string());
        match (p.outcome, present) {
            (Outcome::Ok, true) => r.acknowledged += 1,
            (Outcome::Ok, false) => {
                r.acknowledged += 1;
                r.lost += 1;
                if r.examples.len() < 10 {
                    r.examples.push(format!(
                        "{} on {}: acknowledged, not in the final list",
                        p.describe(),
                        p.key
                    ));
                }
            }
            (Outcome::Info, true) => r.indeterminate_present += 1,
            (Outcome::Info, false) => r.indeterminate_absent += 1,
            // A failed append in the final list is the append checker's `aborted_read`.
            (Outcome::Fail, _) => {}
        }
    }
    r.keys_unread = unread.into_iter().collect();
    r
}

/// A Redis server's state as a probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// A master that can take writes.
    Master,
    /// A master whose `min-replicas-to-write` exceeds the replicas it could ever have: every write
    /// is refused (Keel's fence).
    Fenced,
    Replica,
    /// No answer within the probe's timeout.
    Unreachable,
}

/// The state from `INFO replication`'s `role` and `CONFIG GET min-replicas-to-write`, in a
/// cluster of `nodes`.
pub fn classify(role: &str, min_replicas_to_write: Option<u64>, nodes: u64) -> Seen {
    match role {
        "master" if min_replicas_to_write.is_some_and(|m| m >= nodes) => Seen::Fenced,
        "master" => Seen::Master,
        "slave" | "replica" => Seen::Replica,
        _ => Seen::Unreachable,
    }
}

/// One discovery answer, with the named server's state probed just before and just after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Naming {
    pub t_ns: u64,
    /// The node whose listener answered.
    pub listener: u64,
    /// `host:port`, or `None` when no master was named (nil).
    pub named: Option<String>,
    pub before: Seen,
    pub after: Seen,
}

/// What discovery told the watcher over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamingReport {
    pub answers: u64,
    /// Answers naming no master (nil: no lease-holding primary, or Sentinel not answering).
    pub named_nobody: u64,
    /// Named a server that was fenced or a replica on both sides of the answer: a client would be
    /// sent to a server that refuses its writes, or worse, to a stale one.
    pub named_fenced: u64,
    /// Of those, a replica in both probes: a demoted (old) primary, or one not yet promoted.
    pub named_replica: u64,
    /// Fenced or a replica on one side only (the state may have changed in between).
    pub named_fenced_racy: u64,
    /// Named a server that did not answer the probes (killed or paused).
    pub named_unreachable: u64,
    /// Up to 10 `named_fenced` answers, described.
    pub examples: Vec<String>,
}

fn stale(s: Seen) -> bool {
    matches!(s, Seen::Fenced | Seen::Replica)
}

/// Judges every answer (see the module's notes on what this can see).
pub fn judge_namings(namings: &[Naming]) -> NamingReport {
    let mut r = NamingReport::default();
    for n in namings {
        r.answers += 1;
        let Some(addr) = &n.named else {
            r.named_nobody += 1;
            continue;
        };
        match (stale(n.before), stale(n.after)) {
            (true, true) => {
                r.named_fenced += 1;
                if n.before == Seen::Replica && n.after == Seen::Replica {
                    r.named_replica += 1;
                }
                if r.examples.len() < 10 {
                    r.examples.push(format!(
                        "at {} listener n{} named {addr}, which was {:?} before and {:?} after",
                        crate::history::fmt_ns(n.t_ns),
                        n.listener,
                        n.before,
                        n.after
                    ));
                }
            }
            (true, false) | (false, true) => r.named_fenced_racy += 1,
            (false, false) if n.before == Seen::Unreachable && n.after == Seen::Unreachable => r.named_unreachable += 1,
            _ => {}
        }
    }
    r
}

/// How many servers in one probe round could take writes (more than one: split brain).
pub fn writable_masters(round: &[Seen]) -> usize {
    round.iter().filter(|s| **s == Seen::Master).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    fn pairs(jsonl: &str) -> Vec<PairedOp> {
        History::from_reader(jsonl.as_bytes()).unwrap().pair().unwrap()
    }

    #[test]
    fn lost_writes_are_the_acknowledged_appends_missing_from_the_final_list() {
        let h = pairs(
            r#"
{"index":0,"process":1,"kind":"invoke","f":"append","key":"l0","value":1,"time_ns":0}
{"index":1,"process":1,"kind":"ok","f":"append","key":"l0","value":1,"time_ns":10}
{"index":2,"process":1,"kind":"invoke","f":"append","key":"l0","value":2,"time_ns":20}
{"index":3,"process":1,"kind":"ok","f":"append","key":"l0","value":2,"time_ns":30}
{"index":4,"process":2,"kind":"invoke","f":"append","key":"l0","value":3,"time_ns":20}
{"index":5,"process":2,"kind":"info","f":"append","key":"l0","value":3,"time_ns":40,"error":"timeout"}
{"index":6,"process":2,"kind":"invoke","f":"append","key":"l0","value":4,"time_ns":50}
{"index":7,"process":2,"kind":"info","f":"append","key":"l0","value":4,"time_ns":60,"error":"WAIT 0 of 1"}
{"index":8,"process":3,"kind":"invoke","f":"append","key":"l0","value":5,"time_ns":50}
{"index":9,"process":3,"kind":"fail","f":"append","key":"l0","value":5,"time_ns":60,"error":"NOREPLICAS"}
{"index":10,"process":3,"kind":"invoke","f":"append","key":"l1","value":6,"time_ns":70}
{"index":11,"process":3,"kind":"ok","f":"append","key":"l1","value":6,"time_ns":80}
{"index":12,"process":3,"kind":"invoke","f":"write","key":"r0","value":7,"time_ns":90}
{"index":13,"process":3,"kind":"ok","f":"write","key":"r0","value":7,"time_ns":95}
"#,
        );
        let finals = BTreeMap::from([("l0".to_string(), vec![Value::from(1), Value::from(3)])]);
        let r = lost_writes(&h, &finals);
        assert_eq!(r.acknowledged, 2);
        assert_eq!(r.lost, 1);
        assert!(r.examples[0].contains("append 2"), "{:?}", r.examples);
        assert_eq!((r.indeterminate_present, r.indeterminate_absent), (1, 1));
        assert_eq!(r.keys_unread, vec!["l1".to_string()]);

        let all = BTreeMap::from([
            ("l0".to_string(), vec![Value::from(1), Value::from(2)]),
            ("l1".to_string(), vec![Value::from(6)]),
        ]);
        let r = lost_writes(&h, &all);
        assert_eq!((r.acknowledged, r.lost), (3, 0));
        assert!(r.keys_unread.is_empty());
    }

    #[test]
    fn states_from_role_and_min_replicas() {
        assert_eq!(classify("master", Some(0), 3), Seen::Master);
        assert_eq!(classify("master", Some(1), 3), Seen::Master);
        assert_eq!(classify("master", Some(2_147_483_647), 3), Seen::Fenced);
        assert_eq!(classify("master", Some(3), 3), Seen::Fenced);
        assert_eq!(classify("master", None, 3), Seen::Master);
        assert_eq!(classify("slave", Some(0), 3), Seen::Replica);
        assert_eq!(classify("", None, 3), Seen::Unreachable);
    }

    #[test]
    fn namings_of_fenced_servers_are_counted_by_how_sure() {
        let n = |named: Option<&str>, before, after| Naming {
            t_ns: 5_000_000,
            listener: 2,
            named: named.map(String::from),
            before,
            after,
        };
        let r = judge_namings(&[
            n(Some("127.0.0.1:1"), Seen::Master, Seen::Master),
            n(Some("127.0.0.1:1"), Seen::Fenced, Seen::Fenced),
            n(Some("127.0.0.1:1"), Seen::Replica, Seen::Fenced),
            n(Some("127.0.0.1:1"), Seen::Replica, Seen::Replica),
            n(Some("127.0.0.1:1"), Seen::Master, Seen::Fenced),
            n(Some("127.0.0.1:1"), Seen::Fenced, Seen::Master),
            n(Some("127.0.0.1:1"), Seen::Unreachable, Seen::Unreachable),
            n(Some("127.0.0.1:1"), Seen::Unreachable, Seen::Master),
            n(None, Seen::Unreachable, Seen::Unreachable),
        ]);
        assert_eq!(r.answers, 9);
        assert_eq!(r.named_fenced, 3);
        assert_eq!(r.named_replica, 1);
        assert_eq!(r.named_fenced_racy, 2);
        assert_eq!(r.named_unreachable, 1);
        assert_eq!(r.named_nobody, 1);
        assert_eq!(r.examples.len(), 3);
        assert!(
            r.examples[0].contains("listener n2 named 127.0.0.1:1"),
            "{}",
            r.examples[0]
        );
    }

    #[test]
    fn writable_masters_in_a_round() {
        assert_eq!(writable_masters(&[Seen::Master, Seen::Fenced, Seen::Replica]), 1);
        assert_eq!(writable_masters(&[Seen::Master, Seen::Master, Seen::Unreachable]), 2);
    }
}
