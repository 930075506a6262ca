//! Errors of the replication protocol.

use crate::codec::CodecError;
use crate::{DataError, NodeId, PeerCallError, Position};

/// Why a pull, a catch-up, a rollback or a resync failed. Messages are lowercase and end up in
/// the replica's `last_error` (`/v1/status`).
///
/// Retry policy by variant: the apply worker backs off and pulls again after any of them;
/// `Peer` carries the transport's own policy ([`PeerCallError`]); `DeposedPrimary` and
/// `NotPrimary` are answered by following the newer primary once the view names it;
/// `CatchUpTimeout`, `TrimmedAtSource` and `ForkInTrimmedHistory` fail a new primary's catch-up
/// (the coordinator picks again); `Data` with a disk fault (`Storage`, `Corrupt`) needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error(transparent)]
    Peer(#[from] PeerCallError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("apply {count} entries: {source}")]
    Apply { count: usize, source: DataError },
    #[error("roll back to {fork}: {source}")]
    RollBack { fork: Position, source: DataError },
    #[error("refused a frame of epoch {epoch} from a deposed primary")]
    DeposedPrimary { epoch: u64 },
    #[error("node {peer} is not the primary (it names {})", fmt_node(.names))]
    NotPrimary { peer: NodeId, names: Option<NodeId> },
    #[error("node {peer} no longer retains the entries after {position}")]
    TrimmedAtSource { peer: NodeId, position: Position },
    #[error("the fork with node {peer} lies in trimmed history")]
    ForkInTrimmedHistory { peer: NodeId },
    #[error("catch-up from node {peer} did not reach {target} in time")]
    CatchUpTimeout { peer: NodeId, target: Position },
    #[error("replication stream to node {peer} closed by the primary")]
    StreamClosed { peer: NodeId },
    #[error("replication stream to node {peer}: {source}")]
    StreamIo { peer: NodeId, source: std::io::Error },
    #[error("replication stream to node {peer}: no answer within {timeout_ms} ms")]
    StreamTimeout { peer: NodeId, timeout_ms: u64 },
    #[error("malformed answer on the replication stream from node {peer}: {source}")]
    MalformedAnswer { peer: NodeId, source: CodecError },
    #[error("snapshot stream from node {peer}: {error}")]
    SnapshotStream {
        peer: NodeId,
        #[source]
        error: PeerCallError,
    },
    #[error("snapshot installer stopped")]
    InstallerStopped,
    /// A blocking datastore task panicked or was cancelled.
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

fn fmt_node(node: &Option<NodeId>) -> String {
    node.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
}
