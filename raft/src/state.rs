//! The replicated cluster state (the Raft state machine's contents) and the commands that
//! change it.
//!
//! Everything here is pure: [`ClusterState::apply`] is a deterministic function of the state
//! and a [`Request`], so every node that applies the same log ends in the same state. Voter /
//! learner status is *not* stored here: it lives in openraft's membership config, which the
//! state machine stores next to this state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Most failover-history entries kept in the state; older ones are dropped first.
pub const MAX_HISTORY: usize = 1000;

/// Per-member metadata that is not part of Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMeta {
    /// Address clients and other nodes use for this member's HTTP API (`host:port`); empty
    /// until the member has announced it.
    pub api_addr: String,
    pub tags: Tags,
}

/// Operator-set tags, as in Patroni.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Never promote this member automatically.
    pub nofailover: bool,
    /// Higher wins among equally advanced failover candidates.
    pub priority: i32,
}

/// Which node may accept writes, and in which epoch. `epoch` strictly increases with every
/// promotion; every write, replication frame and push carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    pub node: NodeId,
    pub epoch: u64,
}

/// Serialised in lowercase (`"async"`, `"sync"`) in JSON, like the `--replication-mode` flag;
/// postcard encodes the variant index, so the rename does not change the stored format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Acknowledge once durable on the primary; replicas catch up.
    #[default]
    Async,
    /// Acknowledge once `min_acks` replicas have confirmed the write.
    Sync,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        }
    }
}

/// A replication mode that is neither `async` nor `sync`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `async` or `sync`")]
pub struct BadReplicationMode;

impl std::str::FromStr for ReplicationMode {
    type Err = BadReplicationMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "async" => Ok(ReplicationMode::Async),
            "sync" => Ok(ReplicationMode::Sync),
            _ => Err(BadReplicationMode),
        }
    }
}

impl std::fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cluster-wide settings changed at run time through the log (`PATCH /v1/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicConfig {
    /// Length of the primary's write lease.
    pub lease_ms: u64,
    /// How long the coordinator waits without a lease renewal before promoting another node.
    pub failover_timeout_ms: u64,
    /// Minimum time between two automatic failovers (anti-flap).
    pub min_failover_interval_ms: u64,
    pub replication_mode: ReplicationMode,
    /// Replicas that must hold a write durably before a sync-mode write is acknowledged.
    pub min_acks: u32,
    /// A replica lagging more than this many entries is not promoted automatically.
    pub max_lag_on_failover: u64,
    /// Change-log entries every node keeps; a replica further behind takes a snapshot.
    pub log_retention_entries: u64,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            // Chosen with the failover benchmark; see raft/DESIGN.md for the constraints
            // (lease <= 3/4 election_timeout_max, failover timeout > 1.5 x lease).
            lease_ms: 300,
            failover_timeout_ms: 600,
            min_failover_interval_ms: 3_000,
            replication_mode: ReplicationMode::Async,
            min_acks: 1,
            max_lag_on_failover: 1_000_000,
            log_retention_entries: 100_000,
        }
    }
}

/// One failover or switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub epoch: u64,
    pub from: Option<NodeId>,
    pub to: NodeId,
    pub reason: String,
    /// Unix time in milliseconds, as proposed by the coordinator (informational only: no
    /// decision depends on wall clocks).
    pub at_ms: u64,
}

/// The replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Random id chosen once by the first leader; a node refuses peers of another cluster.
    pub cluster_id: Option<String>,
    pub members: BTreeMap<NodeId, MemberMeta>,
    pub primary: Option<PrimaryRecord>,
    pub maintenance: bool,
    pub config: DynamicConfig,
    pub history: Vec<HistoryEntry>,
}

/// A command proposed through Raft. Append new variants at the end only: postcard encodes
/// the variant index, so reordering would change the meaning of existing logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Set the cluster id if none is set yet (first writer wins).
    InitClusterId {
        cluster_id: String,
    },
    /// Create or update a member's metadata; `None` fields are left as they are.
    UpsertMember {
        id: NodeId,
        api_addr: Option<String>,
        tags: Option<Tags>,
    },
    /// Forget a member's metadata (after it left the Raft membership).
    RemoveMember {
        id: NodeId,
    },
    SetMaintenance {
        enabled: bool,
    },
    SetConfig {
        config: DynamicConfig,
    },
    /// Make `node` the primary of `epoch`; refused unless `epoch` is exactly one more than the
    /// current epoch (so two racing promotions cannot both win).
    Promote {
        node: NodeId,
        epoch: u64,
        reason: String,
        at_ms: u64,
    },
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    None,
    Ok,
    ClusterId {
        cluster_id: String,
    },
    Promoted {
        node: NodeId,
        epoch: u64,
    },
    /// The command was well-formed but not applicable to the current state.
    Rejected {
        reason: String,
    },
}

impl ClusterState {
    /// Current epoch (0 before any primary was ever chosen).
    pub fn epoch(&self) -> u64 {
        self.primary.map(|p| p.epoch).unwrap_or(0)
    }

    /// Apply one command. Deterministic: depends only on `self` and `req`.
    pub fn apply(&mut self, req: &Request) -> Response {
        match req {
            Request::InitClusterId { cluster_id } => {
                let id = self.cluster_id.get_or_insert_with(|| cluster_id.clone());
                Response::ClusterId { cluster_id: id.clone() }
            }
            Request::UpsertMember { id, api_addr, tags } => {
                let m = self.members.entry(*id).or_default();
                if let Some(a) = api_addr {
                    m.api_addr = a.clone();
                }
                if let Some(t) = tags {
                    m.tags = t.clone();
                }
                Response::Ok
            }
            Request::RemoveMember { id } => {
                self.members.remove(id);
                Response::Ok
            }
            Request::SetMaintenance { enabled } => {
                self.maintenance = *enabled;
                Response::Ok
            }
            Request::SetConfig { config } => {
                self.config = config.clone();
                Response::Ok
            }
            Request::Promote {
                node,
                epoch,
                reason,
                at_ms,
            } => {
                let current = self.epoch();
                if *epoch != current + 1 {
                    return Response::Rejected {
                        reason: format!("stale promotion: epoch {epoch} proposed, current epoch is {current}"),
                    };
                }
                self.history.push(HistoryEntry {
                    epoch: *epoch,
                    from: self.primary.map(|p| p.node),
                    to: *node,
                    reason: reason.clone(),
                    at_ms: *at_ms,
                });
                if self.history.len() > MAX_HISTORY {
                    let excess = self.history.len() - MAX_HISTORY;
                    self.history.drain(..excess);
                }
                self.primary = Some(PrimaryRecord {
                    node: *node,
                    epoch: *epoch,
                });
                Response::Promoted {
                    node: *node,
                    epoch: *epoch,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_set_once() {
        let mut s = ClusterState::default();
        let r1 = s.apply(&Request::InitClusterId { cluster_id: "a".into() });
        let r2 = s.apply(&Request::InitClusterId { cluster_id: "b".into() });
        assert_eq!(r1, Response::ClusterId { cluster_id: "a".into() });
        assert_eq!(r2, Response::ClusterId { cluster_id: "a".into() });
        assert_eq!(s.cluster_id.as_deref(), Some("a"));
    }

    #[test]
    fn upsert_keeps_unset_fields() {
        let mut s = ClusterState::default();
        s.apply(&Request::UpsertMember {
            id: 1,
            api_addr: Some("h:1".into()),
            tags: None,
        });
        let tags = Tags {
            nofailover: true,
            priority: 5,
        };
        s.apply(&Request::UpsertMember {
            id: 1,
            api_addr: None,
            tags: Some(tags.clone()),
        });
        assert_eq!(
            s.members[&1],
            MemberMeta {
                api_addr: "h:1".into(),
                tags
            }
        );
        s.apply(&Request::RemoveMember { id: 1 });
        assert!(s.members.is_empty());
    }

    #[test]
    fn promotion_requires_next_epoch() {
        let mut s = ClusterState::default();
        let cases = [
            (1, 1, true),  // first primary: epoch 1
            (2, 1, false), // replayed / racing proposal with an old epoch
            (2, 3, false), // skipping an epoch
            (2, 2, true),
        ];
        for (node, epoch, ok) in cases {
            let r = s.apply(&Request::Promote {
                node,
                epoch,
                reason: "test".into(),
                at_ms: 0,
            });
            assert_eq!(matches!(r, Response::Promoted { .. }), ok, "node {node} epoch {epoch}");
        }
        assert_eq!(s.primary, Some(PrimaryRecord { node: 2, epoch: 2 }));
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.history[1].from, Some(1));
    }
}
