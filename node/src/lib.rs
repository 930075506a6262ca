//! keel-node: the Keel daemon and CLI.
//!
//! Layers, each importing only the ones below it:
//! - [`cli`]: the `keel` commands (`serve`, `up`, the client commands) — the top.
//! - [`http`] (the API port: router, handlers, [`http::error::ApiError`], OpenAPI, `/ui`) and
//!   [`peer`] (the peer port's listener and its RPCs), and [`sentinel`] (the Redis
//!   Sentinel-compatible discovery listener): the edges where requests are answered.
//! - [`backup`]: backup files, serving them and restoring from them.
//! - [`cluster`]: decisions and duties (lease, coordinator, failover, admin operations, hook,
//!   join). It never imports `http`, `cli` or axum.
//! - [`start`] (`Node::start` → [`start::NodeHandle`]) and [`state`] (the shared [`state::Node`]),
//!   [`repl`] (replication glue), [`auth`] (the data plane's tokens), [`config`], [`logging`],
//!   [`metrics`], [`tls`], [`util`]: the ground floor.
//!
//! It must not hold storage or protocol logic that belongs to a lower crate: the Raft stores
//! and transport are `keel-raft`, the datastore and its replication are `keel-replication`,
//! Git is `keel-gitsync`. See `node/DESIGN.md`.

pub mod auth;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod repl;
pub mod sentinel;
pub mod start;
pub mod state;
pub mod tls;
pub mod util;
