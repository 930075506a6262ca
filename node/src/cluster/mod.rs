//! The decision layer: everything that decides and acts for the cluster — the lease and the
//! coordinator ([`primary`]), the failover rules ([`failover`], pure), admin operations routed to
//! the coordinator ([`admin`]), the role-change hook ([`hook`]), joining a cluster ([`join`]),
//! the duties every node runs ([`duties`]), and the managed datastores: Redis ([`service`]) and the
//! built-in store's side of the `ManagedService` trait ([`kv`]).
//!
//! Nothing here knows HTTP: no module under `cluster/` imports [`crate::http`], [`crate::cli`]
//! or axum. Operations take and return domain types and fail with [`ClusterError`]; the HTTP and
//! peer edges turn that into their answers.

pub mod admin;
pub mod duties;
pub mod error;
pub mod failover;
pub mod gitsync;
pub mod hook;
pub mod join;
pub mod kv;
pub mod lease;
pub mod members;
pub mod primary;
pub mod probe;
pub mod service;
pub mod write;

pub use error::ClusterError;
