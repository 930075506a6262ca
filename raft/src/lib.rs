//! keel-raft: the Raft layer of Keel.
//!
//! Owns the openraft type configuration ([`TypeConfig`]), the replicated cluster state
//! ([`state::ClusterState`] and the [`state::Request`]s that change it), the durable redb
//! stores ([`store::LogStore`], [`store::StateMachineStore`]), and the peer transport: an
//! HTTP client ([`network::PeerNetwork`]) and the axum routes that serve it
//! ([`server::raft_router`]). It knows nothing of the HTTP API, the datastore or Git Sync.

// openraft's error types (StorageError, RaftError) are large by design; boxing them at every
// trait boundary openraft defines is not ours to change.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod network;
pub mod server;
pub mod state;
pub mod store;

pub use openraft::BasicNode;

/// Node ids are operator-chosen positive integers.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration for Keel.
    pub TypeConfig:
        D = state::Request,
        R = state::Response,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
