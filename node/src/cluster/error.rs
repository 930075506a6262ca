//! [`ClusterError`]: why a decision-layer operation (an admin operation, a lease grant, a
//! promotion) failed, named for the condition. The HTTP edge turns it into a status code and the
//! JSON error body in one `match` (`http::error`); the peer edge sends it to the node that
//! forwarded the operation in the wire form [`RemoteError`], which that node turns back into a
//! `ClusterError` ([`ClusterError::from_remote`]).
//!
//! Retry decisions come from the variant ([`ClusterError::is_retryable`]), never from text.

use keel_raft::NodeId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No Raft leader is known: no quorum of voters reachable, or an election is running.
    #[error("the cluster has no leader right now (no quorum of voters reachable?)")]
    NoLeader,
    /// This node is not (or no longer) the leader the operation needs.
    #[error("{0}")]
    NotLeader(String),
    /// Forwarding the operation to the leader failed on the way (connect, timeout, decode).
    #[error("forward to leader {leader}: {reason}")]
    LeaderUnreachable { leader: NodeId, reason: String },
    /// A primary could not reach the coordinator to renew its lease.
    #[error("{0}")]
    CoordinatorUnreachable(String),
    /// Raft stopped (the node is shutting down).
    #[error("raft stopped: {0}")]
    ShuttingDown(String),
    /// The operation did not complete in time.
    #[error("{0}")]
    Timeout(String),
    /// A new epoch's lease must wait for the previous primary's lease to end.
    #[error("the previous primary's lease has not ended yet")]
    PreviousLeaseRunning,
    /// The lease of an epoch that is being replaced (switchover) is not renewed.
    #[error("epoch {0} is being replaced")]
    SteppedDown(u64),
    /// A renewal from a node that is not the committed primary of that epoch.
    #[error("{0}")]
    NotPrimary(String),
    /// Bad input: an invalid id, address or config.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The state machine refused the command.
    #[error("{0}")]
    Rejected(String),
    #[error("another membership change is still in progress ({0}); retry in a moment")]
    MembershipChangeInProgress(String),
    #[error("the change would leave the cluster without voters")]
    EmptyMembership,
    #[error("{0}")]
    DuplicateId(String),
    #[error("{0}")]
    DuplicateAddress(String),
    #[error("member {0} is already a voter")]
    AlreadyVoter(NodeId),
    /// A learner has not replicated enough to be promoted to voter.
    #[error("{0}")]
    NotCaughtUp(String),
    /// Removing the member would leave too few reachable voters for a quorum.
    #[error("{0}")]
    QuorumAtRisk(String),
    /// A switchover/failover target that cannot take the role.
    #[error("{0}")]
    BadTarget(String),
    #[error("there is no primary to switch over from")]
    NoPrimary,
    #[error("no member qualifies as target")]
    NoCandidate,
    /// A forced failover while the primary still renews its lease.
    #[error("{0}")]
    PrimaryHealthy(String),
    /// A state that should not happen (a reply of the wrong kind).
    #[error("{0}")]
    Internal(String),
    /// An error another node answered that has no variant of its own here, kept verbatim so the
    /// client sees the coordinator's error unchanged.
    #[error("{}", .0.message)]
    Remote(RemoteError),
}

/// A [`ClusterError`] as it travels between nodes: the HTTP status, the error code and the
/// message (the same fields, in the same order, as the API's JSON error body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ClusterError {
    /// Worth trying again after the leadership settles: the operation did not run.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader | ClusterError::NotLeader(_) | ClusterError::LeaderUnreachable { .. }
        )
    }

    /// Decode an error the leader answered. The codes a forwarding node acts on (the retryable
    /// ones) become their variants; every other error is kept as it came.
    pub fn from_remote(e: RemoteError) -> ClusterError {
        match e.code.as_str() {
            "no_leader" => ClusterError::NoLeader,
            "not_leader" => ClusterError::NotLeader(e.message),
            _ => ClusterError::Remote(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_leadership_errors_are_retried() {
        let remote = |code: &str| RemoteError {
            status: 503,
            code: code.into(),
            message: "m".into(),
        };
        assert!(ClusterError::from_remote(remote("not_leader")).is_retryable());
        assert!(ClusterError::from_remote(remote("no_leader")).is_retryable());
        assert!(!ClusterError::from_remote(remote("stepped_down")).is_retryable());
        assert!(!ClusterError::from_remote(remote("timeout")).is_retryable());
        assert!(ClusterError::LeaderUnreachable {
            leader: 2,
            reason: "connect".into()
        }
        .is_retryable());
        assert!(!ClusterError::QuorumAtRisk("x".into()).is_retryable());
    }
}
