//! The failover controller's decision, as a pure function.
//!
//! The coordinator (Raft leader) periodically builds a [`ClusterView`] — what it knows now,
//! with times as milliseconds on its own monotonic clock — and calls [`decide`]. The caller
//! carries out the [`Decision`] (commit a `Promote` through Raft) and publishes the reason
//! when no failover is possible. Nothing here does I/O, so the rules are tested as a table.

use keel_raft::state::{DynamicConfig, PrimaryRecord};
use keel_raft::NodeId;
use serde::Serialize;

/// One member as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    pub voter: bool,
    /// The coordinator heard from it recently.
    pub reachable: bool,
    pub nofailover: bool,
    pub priority: i32,
    /// Its built-in store's position (`ManagedService::position` of the `kv` service: this node's
    /// own asked through the trait, the others' as they reported it); higher is more advanced;
    /// `None` if unknown.
    pub position: Option<u64>,
    /// Its managed Redis (`--redis-port`), as last seen: `None` without one or when unknown.
    pub service: Option<ServiceView>,
}

/// A candidate's managed datastore, for ranking (issue 19: the most advanced replica wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceView {
    pub healthy: bool,
    /// Replication offset; offsets of one Redis primary/replica set are comparable across failovers.
    pub offset: Option<u64>,
}

impl ServiceView {
    /// What the ranking reads of a `ManagedService` health sample, whatever the datastore.
    pub fn of(h: &keel_replication::service::ServiceHealth) -> ServiceView {
        ServiceView {
            healthy: h.healthy,
            offset: h.offset,
        }
    }
}

/// What the coordinator knows when deciding.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node (the coordinator).
    pub me: NodeId,
    /// Current time (ms, coordinator's monotonic clock).
    pub now_ms: u64,
    /// When this node became the coordinator (ms). A new coordinator counts from here.
    pub leader_since_ms: u64,
    pub primary: Option<PrimaryRecord>,
    /// Last time the coordinator granted the current primary's epoch a lease (ms).
    pub last_renewal_ms: Option<u64>,
    /// At election, the current primary did not answer a probe (dead or cut off): the fast
    /// path may promote without waiting `failover_timeout_ms` (see raft/DESIGN.md).
    pub primary_lost_at_election: bool,
    pub maintenance: bool,
    pub config: DynamicConfig,
    pub members: Vec<Candidate>,
    /// Last automatic failover committed by this coordinator (ms), for anti-flap.
    pub last_auto_failover_ms: Option<u64>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to do: the primary is healthy (or this node is not the coordinator).
    Healthy,
    /// Commit `Promote { node, epoch, reason }`.
    Promote {
        node: NodeId,
        epoch: u64,
        reason: FailoverReason,
    },
    /// A failover is due but cannot happen; `reason` says why (shown in status).
    Blocked { reason: String },
}

/// Why a new primary is promoted. Its text (`Display`) is what the failover history and the logs
/// show; [`FailoverReason::label`] is the `reason` label of `keel_failovers_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverReason {
    /// The cluster has no primary yet.
    Bootstrap,
    /// The primary was removed from the voters.
    PrimaryRemoved { primary: NodeId },
    /// The primary did not answer when this coordinator was elected, and has not renewed since.
    PrimaryLost { primary: NodeId, coordinator: NodeId },
    /// The primary did not renew its lease for longer than `failover_timeout_ms`.
    LeaseExpired { primary: NodeId, silent_ms: u64 },
    /// A planned switchover.
    Switchover { from: NodeId, to: NodeId },
    /// An operator's forced failover.
    Manual { to: NodeId },
}

impl FailoverReason {
    /// The metric label: one word per kind of reason.
    pub fn label(&self) -> &'static str {
        match self {
            FailoverReason::Bootstrap => "bootstrap",
            FailoverReason::PrimaryRemoved { .. } => "primary_removed",
            FailoverReason::PrimaryLost { .. } => "primary_lost",
            FailoverReason::LeaseExpired { .. } => "lease_expired",
            FailoverReason::Switchover { .. } => "switchover",
            FailoverReason::Manual { .. } => "manual",
        }
    }
}

impl std::fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailoverReason::Bootstrap => write!(f, "no primary yet"),
            FailoverReason::PrimaryRemoved { primary } => write!(f, "primary {primary} is no longer a voter"),
            FailoverReason::PrimaryLost { primary, coordinator } => {
                write!(
                    f,
                    "primary {primary} unreachable when coordinator {coordinator} was elected"
                )
            }
            FailoverReason::LeaseExpired { primary, silent_ms } => {
                write!(f, "primary {primary} did not renew its lease for {silent_ms} ms")
            }
            FailoverReason::Switchover { from, to } => write!(f, "switchover from {from} to {to}"),
            FailoverReason::Manual { to } => write!(f, "manual failover to {to}"),
        }
    }
}

/// Serialized as its text, as the reason was before it had a type.
impl Serialize for FailoverReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Decide whether to promote a new primary, and whom.
pub fn decide(v: &ClusterView) -> Decision {
    let epoch = v.primary.map(|p| p.epoch).unwrap_or(0) + 1;
    let reason = match v.primary {
        None => FailoverReason::Bootstrap,
        Some(p) if p.node == v.me => return Decision::Healthy,
        Some(p) => {
            let still_member = v.members.iter().any(|m| m.id == p.node && m.voter);
            let since = v.last_renewal_ms.unwrap_or(0).max(v.leader_since_ms);
            let silent_ms = v.now_ms.saturating_sub(since);
            if !still_member {
                FailoverReason::PrimaryRemoved { primary: p.node }
            } else if v.primary_lost_at_election && v.last_renewal_ms.is_none() {
                FailoverReason::PrimaryLost {
                    primary: p.node,
                    coordinator: v.me,
                }
            } else if silent_ms > v.config.failover_timeout_ms {
                FailoverReason::LeaseExpired {
                    primary: p.node,
                    silent_ms,
                }
            } else {
                return Decision::Healthy;
            }
        }
    };
    if v.maintenance {
        return Decision::Blocked {
            reason: format!("{reason}; maintenance mode is on: automatic failover is paused"),
        };
    }
    if let (Some(last), Some(_)) = (v.last_auto_failover_ms, v.primary) {
        let since = v.now_ms.saturating_sub(last);
        if since < v.config.min_failover_interval_ms {
            return Decision::Blocked {
                reason: format!(
                    "{reason}; last automatic failover was {since} ms ago (min_failover_interval_ms = {})",
                    v.config.min_failover_interval_ms
                ),
            };
        }
    }
    match pick(v) {
        Ok(node) => Decision::Promote { node, epoch, reason },
        Err(why) => Decision::Blocked {
            reason: format!("{reason}; no candidate qualifies: {why}"),
        },
    }
}

/// The candidates whose managed service should be asked again at decision time: every voter but
/// the current primary.
pub fn recheck_ids(v: &ClusterView) -> Vec<NodeId> {
    let old = v.primary.map(|p| p.node);
    v.members
        .iter()
        .filter(|m| m.voter && Some(m.id) != old)
        .map(|m| m.id)
        .collect()
}

/// `v` with the managed-service views sampled just now (`fresh`, from asking each candidate's
/// service directly) in place of the directory's, which may be up to half a second old: a replica
/// that acknowledged the last writes (`WAIT`) then ranks above one that did not. A member missing
/// from `fresh` keeps what it had.
pub fn with_fresh_services(mut v: ClusterView, fresh: &std::collections::BTreeMap<NodeId, ServiceView>) -> ClusterView {
    for m in v.members.iter_mut() {
        if let Some(f) = fresh.get(&m.id) {
            m.service = Some(*f);
        }
    }
    v
}

/// Rank candidates: a managed service that is down disqualifies; then the most advanced managed-service
/// offset (the data clients wrote), then the most advanced position, then priority, then the coordinator itself (the
/// fast path: a primary that is also the Raft leader renews its lease locally), then lowest id.
fn pick(v: &ClusterView) -> Result<NodeId, NoCandidate> {
    let old = v.primary.map(|p| p.node);
    let best_pos = v
        .members
        .iter()
        .filter(|m| m.voter)
        .filter_map(|m| m.position)
        .max()
        .unwrap_or(0);
    let mut skipped = Vec::new();
    let mut ok: Vec<&Candidate> = Vec::new();
    for m in &v.members {
        let why = if Some(m.id) == old {
            Some("current primary")
        } else if !m.voter {
            Some("learner")
        } else if m.nofailover {
            Some("nofailover tag")
        } else if !m.reachable {
            Some("unreachable")
        } else if m.service.is_some_and(|s| !s.healthy) {
            Some("managed service down")
        } else if best_pos.saturating_sub(m.position.unwrap_or(0)) > v.config.max_lag_on_failover {
            Some("lagging more than max_lag_on_failover")
        } else {
            None
        };
        match why {
            Some(w) => skipped.push((m.id, w)),
            None => ok.push(m),
        }
    }
    ok.sort_by_key(|m| {
        (
            std::cmp::Reverse(m.service.and_then(|s| s.offset).unwrap_or(0)),
            std::cmp::Reverse(m.position.unwrap_or(0)),
            std::cmp::Reverse(m.priority),
            m.id != v.me,
            m.id,
        )
    });
    ok.first().map(|m| m.id).ok_or(NoCandidate { skipped })
}

/// No member qualifies as the new primary: each member with why it was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NoCandidate {
    skipped: Vec<(NodeId, &'static str)>,
}

impl std::fmt::Display for NoCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.skipped.is_empty() {
            return write!(f, "no members");
        }
        for (i, (id, why)) in self.skipped.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{id}: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is what the failover history keeps (older entries included), the label what
    /// `keel_failovers_total{reason}` counts: both are part of the contract.
    #[test]
    fn failover_reason_texts_and_labels() {
        let cases = [
            (FailoverReason::Bootstrap, "no primary yet", "bootstrap"),
            (
                FailoverReason::LeaseExpired {
                    primary: 1,
                    silent_ms: 900,
                },
                "primary 1 did not renew its lease for 900 ms",
                "lease_expired",
            ),
            (
                FailoverReason::PrimaryLost {
                    primary: 1,
                    coordinator: 2,
                },
                "primary 1 unreachable when coordinator 2 was elected",
                "primary_lost",
            ),
            (
                FailoverReason::PrimaryRemoved { primary: 1 },
                "primary 1 is no longer a voter",
                "primary_removed",
            ),
            (
                FailoverReason::Switchover { from: 1, to: 2 },
                "switchover from 1 to 2",
                "switchover",
            ),
            (FailoverReason::Manual { to: 3 }, "manual failover to 3", "manual"),
        ];
        for (reason, text, label) in cases {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.label(), label, "{text}");
            assert_eq!(serde_json::to_value(&reason).unwrap(), serde_json::json!(text));
        }
    }

    fn member(id: NodeId) -> Candidate {
        Candidate {
            id,
            voter: true,
            reachable: true,
            nofailover: false,
            priority: 0,
            position: Some(10),
            service: None,
        }
    }

    fn view() -> ClusterView {
        ClusterView {
            me: 2,
            now_ms: 10_000,
            leader_since_ms: 1_000,
            primary: Some(PrimaryRecord { node: 1, epoch: 4 }),
            last_renewal_ms: Some(9_900),
            primary_lost_at_election: false,
            maintenance: false,
            config: DynamicConfig {
                failover_timeout_ms: 1000,
                min_failover_interval_ms: 3000,
                ..Default::default()
            },
            members: vec![member(1), member(2), member(3)],
            last_auto_failover_ms: None,
        }
    }

    fn promote(node: NodeId) -> impl Fn(&Decision) -> bool {
        move |d| matches!(d, Decision::Promote { node: n, epoch: 5, .. } if *n == node)
    }
    fn healthy(d: &Decision) -> bool {
        *d == Decision::Healthy
    }
    fn blocked(needle: &'static str) -> impl Fn(&Decision) -> bool {
        move |d| matches!(d, Decision::Blocked { reason } if reason.contains(needle))
    }

    fn svc(healthy: bool, offset: Option<u64>) -> ServiceView {
        ServiceView { healthy, offset }
    }

    #[test]
    fn fresh_service_offsets_decide_the_ranking() {
        let mut v = view();
        v.last_renewal_ms = Some(8_000);
        // The directory (half a second old) says 2 and 3 are level; 2 wins as the coordinator.
        v.members[1].service = Some(svc(true, Some(100)));
        v.members[2].service = Some(svc(true, Some(100)));
        assert!(promote(2)(&decide(&v)));
        assert_eq!(recheck_ids(&v), vec![2, 3]);
        // Asked just now: 3 has the write 2 never acknowledged.
        let fresh = [(2, svc(true, Some(100))), (3, svc(true, Some(180)))]
            .into_iter()
            .collect();
        assert!(promote(3)(&decide(&with_fresh_services(v.clone(), &fresh))));
        // 3's service did not answer just now: skipped, even though the directory had it ahead.
        v.members[2].service = Some(svc(true, Some(500)));
        let fresh = [(3, svc(false, None))].into_iter().collect();
        assert!(promote(2)(&decide(&with_fresh_services(v.clone(), &fresh))));
        // A member missing from the fresh answers keeps its directory view.
        assert!(promote(3)(&decide(&with_fresh_services(v, &Default::default()))));
    }

    #[test]
    fn decision_table() {
        type Case = (
            &'static str,
            Box<dyn Fn(&mut ClusterView)>,
            Box<dyn Fn(&Decision) -> bool>,
        );
        let cases: Vec<Case> = vec![
            ("renewed recently", Box::new(|_| {}), Box::new(healthy)),
            (
                "silent but within timeout",
                Box::new(|v| v.last_renewal_ms = Some(9_100)),
                Box::new(healthy),
            ),
            (
                "silent past timeout: coordinator preferred",
                Box::new(|v| v.last_renewal_ms = Some(8_000)),
                Box::new(promote(2)),
            ),
            (
                "new coordinator counts from its election",
                Box::new(|v| {
                    v.last_renewal_ms = None;
                    v.leader_since_ms = 9_500;
                }),
                Box::new(healthy),
            ),
            (
                "fast path: primary lost at election",
                Box::new(|v| {
                    v.last_renewal_ms = None;
                    v.leader_since_ms = 9_950;
                    v.primary_lost_at_election = true;
                }),
                Box::new(promote(2)),
            ),
            (
                "fast path ignored once the primary renewed",
                Box::new(|v| v.primary_lost_at_election = true),
                Box::new(healthy),
            ),
            ("I am the primary", Box::new(|v| v.me = 1), Box::new(healthy)),
            (
                "no primary yet: promote at once",
                Box::new(|v| {
                    v.primary = None;
                    v.last_auto_failover_ms = Some(9_999);
                }),
                Box::new(|d: &Decision| matches!(d, Decision::Promote { node: 2, epoch: 1, .. })),
            ),
            (
                "maintenance blocks",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.maintenance = true;
                }),
                Box::new(blocked("maintenance")),
            ),
            (
                "anti-flap blocks",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.last_auto_failover_ms = Some(8_000);
                }),
                Box::new(blocked("min_failover_interval_ms")),
            ),
            (
                "anti-flap expired",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.last_auto_failover_ms = Some(5_000);
                }),
                Box::new(promote(2)),
            ),
            (
                "most advanced position wins over coordinator",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[2].position = Some(11);
                }),
                Box::new(promote(3)),
            ),
            (
                "priority breaks a position tie",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[2].priority = 5;
                }),
                Box::new(promote(3)),
            ),
            (
                "nofailover and learner skipped",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[1].nofailover = true;
                    v.members[2].voter = false;
                }),
                Box::new(blocked("2: nofailover tag, 3: learner")),
            ),
            (
                "unreachable skipped",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[1].reachable = false;
                }),
                Box::new(promote(3)),
            ),
            (
                "lagging skipped",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.config.max_lag_on_failover = 5;
                    v.members[0].position = Some(100); // the dead primary was far ahead
                    v.members[1].position = Some(90);
                    v.members[2].position = Some(20);
                }),
                Box::new(blocked("lagging")),
            ),
            (
                "the most advanced managed Redis wins over the datastore position",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[1].position = Some(50);
                    v.members[1].service = Some(svc(true, Some(100)));
                    v.members[2].service = Some(svc(true, Some(200)));
                }),
                Box::new(promote(3)),
            ),
            (
                "a member whose managed Redis is down is skipped",
                Box::new(|v| {
                    v.last_renewal_ms = Some(1_000);
                    v.members[1].service = Some(svc(true, Some(100)));
                    v.members[2].service = Some(svc(false, Some(200)));
                }),
                Box::new(promote(2)),
            ),
            (
                "primary removed from voters",
                Box::new(|v| v.members[0].voter = false),
                Box::new(promote(2)),
            ),
        ];
        for (name, setup, check) in cases {
            let mut v = view();
            setup(&mut v);
            let d = decide(&v);
            assert!(check(&d), "{name}: got {d:?}");
        }
    }
}
