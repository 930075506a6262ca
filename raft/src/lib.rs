//! keel-raft: the Raft layer of Keel, on openraft.
//!
//! **Owns**
//! - the openraft type configuration ([`TypeConfig`], [`NodeId`], [`Raft`]);
//! - the replicated cluster state ([`state::ClusterState`]: cluster id, member metadata, the
//!   primary record `{node, epoch}`, the maintenance flag, the dynamic config, the failover
//!   history) and the [`state::Request`]s that change it, applied by a pure function;
//! - Raft's durable storage: two redb files in the data dir, `raft-log.redb` and
//!   `raft-state.redb` ([`store::open`], [`store::LogStore`], [`store::StateMachineStore`]), and the
//!   [`store::StateView`] watch of the applied state that the node reads;
//! - the peer transport: an HTTP client ([`network::PeerClient`], with per-peer health in
//!   [`network::PeerHealth`]; the node sends its other peer calls through it too), openraft's
//!   network on top of it ([`network::PeerNetwork`]), and the axum routes that serve openraft's
//!   three RPCs ([`server::raft_router`]); what the log says about a peer going unreachable and
//!   coming back ([`peer_log`]);
//! - [`codec`]: the versioned encoding of all of the above (the shared `keel-codec` crate).
//!
//! **Must not touch**: it holds no datastore and does not depend on keel-replication or
//! keel-gitsync; it knows nothing of the node's HTTP API, of leases as they run, or of failover
//! decisions. The state records what the node decided (a `Promote` request, the lease settings in
//! the dynamic config); deciding is the node's job. The peer router's authentication and
//! cluster-id check are layered on by the node, which owns the whole peer listener.

// openraft's error types (StorageError, RaftError) are large by design; boxing them at every
// trait boundary openraft defines is not ours to change.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod network;
pub mod peer_log;
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
