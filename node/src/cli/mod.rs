//! Client side of the `keel` CLI: `status`, `members`, `history`, `maintenance`, `kv` and `diverged` talk to
//! the HTTP API of any node (`--addr`, env `KEEL_ADDR`): JSON, except the datastore's values, which travel
//! as raw bytes with their metadata in `Keel-*` headers.
//!
//! Every command returns the process exit code instead of exiting, so it can be tested in-process.
//! `keel status` follows the Nagios convention (0 healthy, 1 degraded, 2 critical); its decision is the
//! pure [`verdict`] function. Everything else exits 0 on success and 1 on any error. Tables are rendered
//! by one helper, [`render_table`], with column widths taken from the content.

pub mod git_guard;
pub mod serve;
pub mod up;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{IsTerminal as _, Read, Write as _};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use crate::config::Secret;

mod client;
mod gitsync;
mod kv;
mod members;
mod render;
mod status;
pub(crate) use client::*;
pub(crate) use gitsync::*;
pub use kv::*;
pub(crate) use members::*;
pub use render::*;
pub use status::*;

/// Timeout of each per-node `GET /v1/status` made by `keel status`.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Printed under every "cannot reach" error.
const UNREACHABLE_HINT: &str = "hint: is a node running there? set --addr or KEEL_ADDR";
/// Longest raw (non-JSON) error body echoed to the user.
const MAX_RAW_BODY_CHARS: usize = 1000;

const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_CRITICAL: i32 = 2;

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The server's JSON, pretty-printed, for scripts.
    Json,
}

/// Argument of `keel maintenance`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// Options shared by every client subcommand. `global` so they are accepted after the subcommand too.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// API address of any node
    #[arg(long, env = "KEEL_ADDR", default_value = "http://127.0.0.1:7101", global = true)]
    pub addr: String,

    /// Admin token, sent as `Authorization: Bearer <token>` by admin and status commands, and by
    /// data-plane commands (kv, diverged) when --token is not given
    // `Secret`, the type `keel serve --admin-token` uses: a global arg shares its id with the subcommand's
    // arg of the same name, and clap panics when their value types differ. `Debug` also prints `***`.
    #[arg(long, env = "KEEL_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Data-plane token (the node's --client-token, or --read-token for reads), sent as
    /// `Authorization: Bearer <token>` by kv and diverged commands
    #[arg(long, env = "KEEL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<Secret>,

    /// table or json
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: OutputFormat,

    /// Timeout of each request, in milliseconds
    #[arg(long, default_value_t = 15000, global = true)]
    pub timeout_ms: u64,

    /// PEM CA bundle to trust for https:// nodes (instead of the system trust store)
    #[arg(long, env = "KEEL_CA", global = true, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// cluster health table; exit 0 healthy, 1 degraded, 2 critical
    Status,
    /// membership
    #[command(subcommand)]
    Members(MembersCommand),
    /// failover history
    History,
    /// planned switchover: stop writes on the primary, promote the target (default: best candidate)
    Switchover {
        /// node to promote
        #[arg(long)]
        to: Option<u64>,
    },
    /// forced failover to a node, for when the primary is dead
    Failover {
        /// node to promote
        #[arg(long)]
        to: u64,
        /// promote even though the current primary still renews its lease
        #[arg(long)]
        force: bool,
    },
    /// maintenance on|off
    Maintenance {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// the replicated key-value datastore: get, put, del, cas, list
    #[command(subcommand)]
    Kv(KvCommand),
    /// writes an old primary rolled back when it rejoined (kept, never dropped)
    #[command(subcommand)]
    Diverged(DivergedCommand),
    /// Git Sync: every node's commit side by side, or sync now
    #[command(subcommand)]
    Gitsync(GitsyncCommand),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum GitsyncCommand {
    /// every node's Git Sync state and commit, and whether the cluster has converged (exit 1 if not; 0 when Git Sync is off)
    Status,
    /// sync the node at --addr now and ask every other node to sync
    Sync {
        /// accept a rewritten upstream history (after a force-push), on every node
        #[arg(long)]
        accept_reset: bool,
    },
}

/// `--consistency` of `keel kv get`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// the node's own copy; on a replica it may lag (see `lag_ms`)
    Local,
    /// forwarded to the primary, which answers only while it holds its lease
    Primary,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Primary => "primary",
        }
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum KvCommand {
    /// print a key's value as raw bytes (no newline added); 404 exits 1
    Get {
        key: String,
        /// local (default): this node's copy; primary: read on the primary
        #[arg(long, value_enum)]
        consistency: Option<Consistency>,
    },
    /// set a key; the value is VALUE, or stdin when VALUE is omitted or `-`
    Put {
        key: String,
        /// the value (use `--` before a value that starts with `-`)
        value: Option<OsString>,
    },
    /// delete a key
    Del { key: String },
    /// compare-and-set: write only if the key is at version N (0 = it must not exist)
    // `propagate_version` in main.rs gives every subcommand a `--version` flag; this one needs the name.
    #[command(disable_version_flag = true)]
    Cas {
        key: String,
        /// expected current version (0 = the key must not exist)
        #[arg(long)]
        version: u64,
        /// the new value; stdin when omitted or `-`
        value: Option<OsString>,
    },
    /// list keys: KEY, VERSION, SIZE
    List {
        /// only keys starting with this
        #[arg(long)]
        prefix: Option<String>,
        /// keys per page (server default 100, at most 1000)
        #[arg(long)]
        limit: Option<u32>,
        /// follow `next` until every matching key is listed
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DivergedCommand {
    /// list rolled-back writes: ROLLED_BACK_AT, POSITION, KEY, DELETED, VALUE
    List,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum MembersCommand {
    /// list members: ID, VOTER, REACHABLE, API, PEER, NOFAILOVER, PRIORITY
    List,
    /// add a node to the cluster as a learner
    Add {
        /// id of the new node
        id: u64,
        /// its API address, host:port
        #[arg(long)]
        api_addr: String,
        /// its Raft peer address, host:port
        #[arg(long)]
        peer_addr: String,
    },
    /// remove a node from the cluster
    Remove {
        id: u64,
        /// remove even when the server's safety checks refuse
        #[arg(long)]
        force: bool,
    },
    /// turn a learner into a voter
    Promote { id: u64 },
    /// set a member's failover tags (what is not given stays as it is)
    Tag {
        id: u64,
        /// never promote this member automatically (true/false)
        #[arg(long)]
        nofailover: Option<bool>,
        /// higher wins among equally advanced failover candidates
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
}

/// Runs one client subcommand and returns the process exit code. Errors the user should see (HTTP errors,
/// unreachable node) are printed to stderr here and turned into an exit code; `Err` is left for bad local
/// input such as an unparsable `--addr`.
pub async fn run(cmd: ClientCommand, opts: &ClientOpts) -> anyhow::Result<i32> {
    let api = Api::new(opts)?;
    let unreachable_code = match cmd {
        ClientCommand::Status => EXIT_CRITICAL,
        _ => EXIT_ERROR,
    };
    let result = match cmd {
        ClientCommand::Status => status(&api, opts.output).await,
        ClientCommand::Members(members_cmd) => members(&api, members_cmd, opts.output).await,
        ClientCommand::History => history(&api, opts.output).await,
        ClientCommand::Maintenance { state } => maintenance(&api, state, opts.output).await,
        ClientCommand::Switchover { to } => {
            let body = match to {
                Some(t) => json!({"to": t}),
                None => json!({}),
            };
            promotion(&api, "/v1/switchover", body, opts.output).await
        }
        ClientCommand::Failover { to, force } => {
            promotion(&api, "/v1/failover", json!({"to": to, "force": force}), opts.output).await
        }
        ClientCommand::Kv(kv_cmd) => kv(&api.data_plane(opts), kv_cmd, opts.output).await,
        ClientCommand::Diverged(DivergedCommand::List) => diverged(&api.data_plane(opts), opts.output).await,
        ClientCommand::Gitsync(GitsyncCommand::Status) => gitsync_status(&api, opts.output).await,
        ClientCommand::Gitsync(GitsyncCommand::Sync { accept_reset }) => {
            gitsync_sync(&api, accept_reset, opts.output).await
        }
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("{}", e.describe(&api.base));
            Ok(match e {
                CallError::Unreachable(_) => unreachable_code,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// Adds `http://` when `addr` has no scheme and strips trailing slashes. `http://` and `https://` only.
pub fn normalize_addr(addr: &str) -> anyhow::Result<String> {
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        bail!("the node address is empty");
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let base = with_scheme.trim_end_matches('/').to_string();
    let url = reqwest::Url::parse(&base).with_context(|| format!("parse node address {addr:?}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!("unsupported scheme in node address {addr:?}: use http:// or https://");
    }
    Ok(base)
}

#[cfg(test)]
mod tests;
