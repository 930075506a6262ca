//! keel-node: the Keel daemon and CLI.
//!
//! Owns configuration ([`config::Config`]), the node life cycle ([`node::Node::start`] →
//! [`node::NodeHandle`]), the HTTP API ([`api`]), the peer listener ([`peer`]), admin
//! operations routed to the coordinator ([`admin`]), and the CLI: the client commands
//! ([`cli`]) and the local-cluster launcher `keel up` ([`up`]).

pub mod admin;
pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod failover;
pub mod gitsync_api;
pub mod hook;
pub mod join;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod peer;
pub mod primary;
pub mod repl;
pub mod repl_stream;
pub mod serve;
pub mod tls;
pub mod ui;
pub mod up;
pub mod util;
