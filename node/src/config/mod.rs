//! Configuration of `keel serve`: flags, `KEEL_*` environment variables and the TOML file, merged into
//! one validated [`Config`].
//!
//! Precedence is flag > env > file > default. clap merges the first two into [`ServeArgs`] (every field is
//! an `Option` without a clap default, so "not given" stays visible); [`Config::load`] reads the TOML file
//! named by `--config`, fills the gaps from it and then from [`defaults`], and runs [`Config::validate`].
//!
//! Secrets (tokens, the webhook secret) are held in [`Secret`], whose `Debug` prints `***`, so a config can
//! be logged with `?config` safely.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// Every default value, in one place. The `--help` texts in [`ServeArgs`] repeat them for the reader.
pub mod defaults {
    /// HTTP API listen address.
    pub const API_ADDR: &str = "127.0.0.1:7101";
    /// Raft peer listen address (when this node's `--peers` entry is not an `ip:port` to listen on).
    pub const PEER_ADDR: &str = "127.0.0.1:7201";
    /// Parent of the default data dir, which is `keel-data/node-{id}`.
    pub const DATA_DIR_PARENT: &str = "keel-data";
    pub const HEARTBEAT_MS: u64 = 50;
    pub const ELECTION_TIMEOUT_MIN_MS: u64 = 200;
    pub const ELECTION_TIMEOUT_MAX_MS: u64 = 400;
    pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
    /// 2 MiB of value plus 64 KiB of headroom for the request envelope.
    pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024 + 64 * 1024;
    pub const MIN_ACKS: u32 = 1;
    pub const GITSYNC_BRANCH: &str = "main";
    /// Path inside the repository; empty means the whole repository.
    pub const GITSYNC_PATH: &str = "";
    pub const GITSYNC_INTERVAL_MS: u64 = 60_000;
}

/// Lower bounds enforced by [`Config::validate`].
const MIN_REQUEST_TIMEOUT_MS: u64 = 100;
const MIN_MAX_BODY_BYTES: usize = 1024;
const MIN_GITSYNC_INTERVAL_MS: u64 = 100;

/// Flags of `keel serve`. Each also reads `KEEL_<FLAG>` from the environment (clap: flag beats env) and
/// the matching key from the `--config` TOML file (see [`Config::load`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Path to a TOML config file; its keys are the flag names in snake_case, with `[raft]`,
    /// `[replication]` and `[gitsync]` tables. Flags and env override it.
    #[arg(long, env = "KEEL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// This node's id (non-zero, unique in the cluster). Required.
    #[arg(long, env = "KEEL_ID")]
    pub id: Option<u64>,

    /// Listen address of the HTTP API, ip:port [default: 127.0.0.1:7101].
    #[arg(long, env = "KEEL_API_ADDR", value_name = "IP:PORT")]
    pub api_addr: Option<String>,

    /// Listen address for Raft peer traffic, ip:port [default: this node's --peers entry if it is an
    /// ip:port, else 127.0.0.1:7201].
    #[arg(long, env = "KEEL_PEER_ADDR", value_name = "IP:PORT")]
    pub peer_addr: Option<String>,

    /// API address clients and other nodes use to reach this node, host:port [default: --api-addr].
    #[arg(long, env = "KEEL_ADVERTISE_API_ADDR", value_name = "HOST:PORT")]
    pub advertise_api_addr: Option<String>,

    /// Peer address other nodes use to reach this node, host:port [default: this node's --peers entry,
    /// else --peer-addr]. Must agree with this node's --peers entry.
    #[arg(long, env = "KEEL_ADVERTISE_PEER_ADDR", value_name = "HOST:PORT")]
    pub advertise_peer_addr: Option<String>,

    /// Directory holding everything this node persists [default: keel-data/node-{id}].
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Initial members, `id=host:port` of their peer addresses, comma-separated, e.g.
    /// 1=10.0.0.1:7201,2=10.0.0.2:7201,3=10.0.0.3:7201. Nodes started with the same list bootstrap the
    /// cluster once. Mutually exclusive with --join.
    #[arg(long, env = "KEEL_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,

    /// API address of any member of a running cluster to join as a learner, e.g. http://10.0.0.1:7101
    /// (the scheme defaults to http). Mutually exclusive with --peers.
    #[arg(long, env = "KEEL_JOIN", value_name = "URL")]
    pub join: Option<String>,

    /// Shared secret nodes present to each other on the peer port [default: none, peer traffic is
    /// unauthenticated].
    #[arg(long, env = "KEEL_CLUSTER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub cluster_token: Option<Secret>,

    /// Bearer token required by admin endpoints [default: none, admin endpoints are open].
    #[arg(long, env = "KEEL_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<Secret>,

    /// PEM certificate (chain) served on both the API and the peer listener; turns on TLS, needs
    /// --tls-key. Reloaded on SIGHUP and when the file changes [default: none, plain HTTP].
    #[arg(long, env = "KEEL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "KEEL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle for mutual TLS between peers: the peer port accepts only client certificates
    /// from this CA, and peers are verified against it; needs --tls-cert [default: none, peers are
    /// verified with the system trust store and need no client certificate].
    #[arg(long, env = "KEEL_PEER_CA", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,

    /// Log output format [default: text].
    #[arg(long, env = "KEEL_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    /// Datastore replication mode: async acknowledges writes on the primary, sync waits for --min-acks
    /// replicas [default: async].
    #[arg(long, env = "KEEL_REPLICATION_MODE", value_parser = ["async", "sync"])]
    pub replication_mode: Option<String>,

    /// In sync mode, how many replicas must confirm a write before it is acknowledged [default: 1].
    #[arg(long, env = "KEEL_MIN_ACKS", value_name = "N")]
    pub min_acks: Option<u32>,

    /// On-disk format of this node's datastore: 2 stores each value over 512 bytes once, in page-sized
    /// chunks; 1 is what releases before it read. Moving a datastore from 1 to 2 is allowed, back is
    /// refused [default: 2 for a new datastore, else the format it has].
    #[arg(long, env = "KEEL_DATASTORE_FORMAT", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub datastore_format: Option<u8>,

    /// Command run (through the shell) when this node's role changes [default: none].
    #[arg(long, env = "KEEL_ROLE_CHANGE_HOOK", value_name = "CMD")]
    pub role_change_hook: Option<String>,

    /// Raft heartbeat interval in ms; at most half of --election-timeout-min-ms [default: 50].
    #[arg(long, env = "KEEL_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Lower bound of the randomised Raft election timeout in ms [default: 200].
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MIN_MS", value_name = "MS")]
    pub election_timeout_min_ms: Option<u64>,

    /// Upper bound of the randomised Raft election timeout in ms, above the minimum [default: 400].
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MAX_MS", value_name = "MS")]
    pub election_timeout_max_ms: Option<u64>,

    /// Timeout for one HTTP request, including forwarding to the leader, in ms; at least 100
    /// [default: 10000].
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,

    /// Largest accepted HTTP request body in bytes; at least 1024 [default: 2162688 = 2 MiB + 64 KiB].
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Git repository URL to keep checked out; enables Git Sync [default: none, Git Sync off].
    #[arg(long, env = "KEEL_GITSYNC_REPO", hide_env_values = true, value_name = "URL")]
    pub gitsync_repo: Option<String>,

    /// Branch Git Sync follows [default: main].
    #[arg(long, env = "KEEL_GITSYNC_BRANCH", value_name = "BRANCH")]
    pub gitsync_branch: Option<String>,

    /// Relative path inside the repository to materialise [default: empty, the whole repository].
    #[arg(long, env = "KEEL_GITSYNC_PATH", value_name = "PATH")]
    pub gitsync_path: Option<String>,

    /// Git Sync polling interval in ms [default: 60000].
    #[arg(long, env = "KEEL_GITSYNC_INTERVAL_MS", value_name = "MS")]
    pub gitsync_interval_ms: Option<u64>,

    /// Secret verifying the X-Hub-Signature-256 of Git Sync webhooks [default: none, webhooks are
    /// rejected].
    #[arg(
        long,
        env = "KEEL_GITSYNC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub gitsync_webhook_secret: Option<Secret>,

    /// Command run (`sh -c`) after every sync that changed the served commit, with
    /// `KEEL_GIT_COMMIT`, `KEEL_GIT_PATH` (the served tree) and `KEEL_NODE_ID` set; bounded by
    /// a 30 s timeout, like git-sync's exec hook, so the served application can reload.
    #[arg(long, env = "KEEL_GITSYNC_HOOK", value_name = "CMD")]
    pub gitsync_hook: Option<String>,

    /// Private key file (OpenSSH or PEM) for `ssh://` and `user@host:path` repositories [default: none].
    #[arg(long, env = "KEEL_GITSYNC_SSH_KEY", value_name = "FILE")]
    pub gitsync_ssh_key: Option<PathBuf>,

    /// known_hosts file that must list the ssh server's host key (`ssh-keyscan -p PORT HOST`)
    /// [default: none, libgit2 checks ~/.ssh/known_hosts].
    #[arg(long, env = "KEEL_GITSYNC_KNOWN_HOSTS", value_name = "FILE")]
    pub gitsync_known_hosts: Option<PathBuf>,
}

/// A token or secret. `Debug` prints `***` so it never reaches logs; use [`Secret::expose`] where the
/// value is really needed (and compare it in constant time there).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the primary acknowledges datastore writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl FromStr for ReplicationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "async" => Ok(ReplicationMode::Async),
            "sync" => Ok(ReplicationMode::Sync),
            _ => Err("expected `async` or `sync`".to_owned()),
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Raft timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: defaults::HEARTBEAT_MS,
            election_timeout_min_ms: defaults::ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: defaults::ELECTION_TIMEOUT_MAX_MS,
        }
    }
}

/// Datastore replication settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    pub mode: ReplicationMode,
    /// Replicas that must confirm a write in [`ReplicationMode::Sync`]; unused in async mode.
    pub min_acks: u32,
    /// Datastore format to open with (`None`: newest for a new file, else as it is).
    pub datastore_format: Option<u8>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            mode: ReplicationMode::default(),
            min_acks: defaults::MIN_ACKS,
            datastore_format: None,
        }
    }
}

/// Git Sync settings; present only when a repository is configured.
#[derive(Clone)]
pub struct GitSyncConfig {
    /// Repository URL. May carry credentials (`https://user:token@host/...`); `Debug` hides them.
    pub repo: String,
    pub branch: String,
    /// Relative path inside the repository, without a trailing `/`; empty means the whole repository.
    pub path: String,
    pub interval_ms: u64,
    pub webhook_secret: Option<Secret>,
    /// On-sync hook command.
    pub hook: Option<String>,
    /// Private key file for ssh remotes.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh remotes; `None` leaves host key checking to libgit2 (~/.ssh/known_hosts).
    pub known_hosts: Option<PathBuf>,
}

impl fmt::Debug for GitSyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSyncConfig")
            .field("repo", &redact_url_userinfo(&self.repo))
            .field("branch", &self.branch)
            .field("path", &self.path)
            .field("interval_ms", &self.interval_ms)
            .field("webhook_secret", &self.webhook_secret)
            .field("hook", &self.hook)
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

/// TLS files (PEM). Present only when `--tls-cert` and `--tls-key` are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle for mutual TLS between peers.
    pub peer_ca: Option<PathBuf>,
}

/// The resolved, validated configuration of one node. `Debug` never prints secrets.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where Raft peer traffic is accepted.
    pub peer_addr: SocketAddr,
    /// `host:port` clients and peers use for the API (may differ from `api_addr` behind NAT or `0.0.0.0`).
    pub advertise_api_addr: String,
    /// `host:port` peers dial; equals this node's entry in `peers` when it has one.
    pub advertise_peer_addr: String,
    pub data_dir: PathBuf,
    /// Initial members: id -> peer `host:port`. Empty when joining.
    pub peers: BTreeMap<u64, String>,
    /// API URL (`http://host:port`) of a member to join through; `None` when bootstrapping from `peers`.
    pub join: Option<String>,
    pub cluster_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub log_format: LogFormat,
    pub raft: RaftTimings,
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub replication: ReplicationConfig,
    pub role_change_hook: Option<String>,
    pub gitsync: Option<GitSyncConfig>,
    /// HTTPS on both listeners (and for calls to other members) when set.
    pub tls: Option<TlsConfig>,
}

/// Why a configuration was rejected. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--id is required (or KEEL_ID / `id` in the config file)")]
    MissingId,
    #[error("invalid address for {field} ({value:?}): {reason}")]
    BadAddress {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid peers {value:?}: {reason}; expected `id=host:port,...`, e.g. 1=10.0.0.1:7201,2=10.0.0.2:7201")]
    BadPeers { value: String, reason: String },
    #[error(
        "node id {id} is not in peers ({peers}); add `{id}=host:port` to --peers, or use --join to join a \
         running cluster instead"
    )]
    IdNotInPeers { id: u64, peers: String },
    #[error(
        "both peers and join are set; use --peers to bootstrap a new cluster or --join to join a running one, \
         not both"
    )]
    PeersAndJoin,
    #[error(
        "neither peers nor join is set; give --peers (e.g. 1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203) \
         to bootstrap a cluster, or --join http://MEMBER:7101 to join a running one"
    )]
    NeitherPeersNorJoin,
    #[error("invalid {field} ({value:?}): {reason}")]
    BadValue {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {message}", path.display())]
    ParseFile { path: PathBuf, message: String },
}

fn bad_value(field: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn bad_address(field: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadAddress {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// The TOML file. Keys mirror the flags; unknown keys are an error.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    api_addr: Option<String>,
    peer_addr: Option<String>,
    advertise_api_addr: Option<String>,
    advertise_peer_addr: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<FilePeers>,
    join: Option<String>,
    cluster_token: Option<Secret>,
    admin_token: Option<Secret>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    log_format: Option<String>,
    request_timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    role_change_hook: Option<String>,
    #[serde(default)]
    raft: FileRaft,
    #[serde(default)]
    replication: FileReplication,
    #[serde(default)]
    gitsync: FileGitSync,
}

/// `peers = "1=a:7201,2=b:7201"` or `peers = { 1 = "a:7201", 2 = "b:7201" }`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`peers` must be a string like \"1=host:port,2=host:port\" or a table like { 1 = \"host:port\" }"
)]
enum FilePeers {
    List(String),
    // TOML keys are strings; ids are parsed (and checked) by `peers_from_table`.
    Table(BTreeMap<String, String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRaft {
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileReplication {
    mode: Option<String>,
    min_acks: Option<u32>,
    datastore_format: Option<u8>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileGitSync {
    repo: Option<String>,
    branch: Option<String>,
    path: Option<String>,
    interval_ms: Option<u64>,
    webhook_secret: Option<Secret>,
    hook: Option<String>,
    ssh_key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

impl Config {
    /// Resolves flag > env (both already in `args`) > file (`args.config`) > default, then validates.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let config = Config::resolve(args.clone(), file)?;
        config.validate()?;
        Ok(config)
    }

    /// Merges `args` over `file` over the defaults, parsing strings; checks only what parsing needs.
    fn resolve(args: ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let id = args.id.or(file.id).ok_or(ConfigError::MissingId)?;

        let peers = match (args.peers, file.peers) {
            (Some(s), _) | (None, Some(FilePeers::List(s))) => parse_peers(&s)?,
            (None, Some(FilePeers::Table(table))) => peers_from_table(table)?,
            (None, None) => BTreeMap::new(),
        };
        let own_peer = peers.get(&id).cloned();

        let api_addr = parse_listen_addr(
            "api_addr",
            args.api_addr.or(file.api_addr).as_deref().unwrap_or(defaults::API_ADDR),
        )?;
        let peer_addr = match args.peer_addr.or(file.peer_addr) {
            Some(s) => parse_listen_addr("peer_addr", &s)?,
            // Listening where the peers list says we are is what a local multi-node setup needs.
            None => match own_peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok()) {
                Some(addr) => addr,
                None => parse_listen_addr("peer_addr", defaults::PEER_ADDR)?,
            },
        };
        let advertise_api_addr = args
            .advertise_api_addr
            .or(file.advertise_api_addr)
            .unwrap_or_else(|| api_addr.to_string());
        let advertise_peer_addr = args
            .advertise_peer_addr
            .or(file.advertise_peer_addr)
            .or(own_peer)
            .unwrap_or_else(|| peer_addr.to_string());

        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.peer_ca.or(file.peer_ca),
        ) {
            (Some(cert), Some(key), peer_ca) => Some(TlsConfig { cert, key, peer_ca }),
            (None, None, None) => None,
            (Some(_), None, _) => {
                return Err(bad_value(
                    "tls_key",
                    "",
                    "--tls-cert is set but --tls-key is not; give both (PEM files) or neither",
                ))
            }
            (None, Some(_), _) => {
                return Err(bad_value(
                    "tls_cert",
                    "",
                    "--tls-key is set but --tls-cert is not; give both (PEM files) or neither",
                ))
            }
            (None, None, Some(_)) => {
                return Err(bad_value(
                    "peer_ca",
                    "",
                    "--peer-ca needs --tls-cert and --tls-key: mutual TLS is TLS with client certificates",
                ))
            }
        };
        // With TLS the cluster speaks HTTPS, so a bare `--join host:port` means https.
        let join_scheme = if tls.is_some() { "https" } else { "http" };

        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| Path::new(defaults::DATA_DIR_PARENT).join(format!("node-{id}")));

        let log_format = match args.log_format.or(file.log_format) {
            Some(s) => s.parse().map_err(|reason| bad_value("log_format", &s, reason))?,
            None => LogFormat::default(),
        };
        let mode = match args.replication_mode.or(file.replication.mode) {
            Some(s) => s.parse().map_err(|reason| bad_value("replication.mode", &s, reason))?,
            None => ReplicationMode::default(),
        };

        let gitsync_settings_given = args.gitsync_branch.is_some()
            || args.gitsync_path.is_some()
            || args.gitsync_interval_ms.is_some()
            || args.gitsync_webhook_secret.is_some()
            || args.gitsync_hook.is_some()
            || args.gitsync_ssh_key.is_some()
            || args.gitsync_known_hosts.is_some()
            || file.gitsync.ssh_key.is_some()
            || file.gitsync.known_hosts.is_some()
            || file.gitsync.hook.is_some()
            || file.gitsync.branch.is_some()
            || file.gitsync.path.is_some()
            || file.gitsync.interval_ms.is_some()
            || file.gitsync.webhook_secret.is_some();
        let gitsync = match args.gitsync_repo.or(file.gitsync.repo) {
            Some(repo) => Some(GitSyncConfig {
                repo,
                branch: args
                    .gitsync_branch
                    .or(file.gitsync.branch)
                    .unwrap_or_else(|| defaults::GITSYNC_BRANCH.to_owned()),
                path: normalize_gitsync_path(
                    &args
                        .gitsync_path
                        .or(file.gitsync.path)
                        .unwrap_or_else(|| defaults::GITSYNC_PATH.to_owned()),
                ),
                interval_ms: args
                    .gitsync_interval_ms
                    .or(file.gitsync.interval_ms)
                    .unwrap_or(defaults::GITSYNC_INTERVAL_MS),
                webhook_secret: args.gitsync_webhook_secret.or(file.gitsync.webhook_secret),
                hook: args.gitsync_hook.or(file.gitsync.hook).filter(|h| !h.trim().is_empty()),
                ssh_key: args.gitsync_ssh_key.or(file.gitsync.ssh_key),
                known_hosts: args.gitsync_known_hosts.or(file.gitsync.known_hosts),
            }),
            // Settings without a repository would be silently ignored; more likely a forgotten flag.
            None if gitsync_settings_given => {
                return Err(bad_value(
                    "gitsync.repo",
                    "",
                    "Git Sync settings are given but no repository; set --gitsync-repo (or `repo` in [gitsync]) \
                     or drop the other gitsync settings",
                ))
            }
            None => None,
        };

        Ok(Config {
            id,
            api_addr,
            peer_addr,
            advertise_api_addr,
            advertise_peer_addr,
            data_dir,
            peers,
            join: args.join.or(file.join).map(|j| normalize_url_scheme(&j, join_scheme)),
            cluster_token: args.cluster_token.or(file.cluster_token),
            admin_token: args.admin_token.or(file.admin_token),
            log_format,
            raft: RaftTimings {
                heartbeat_ms: args
                    .heartbeat_ms
                    .or(file.raft.heartbeat_ms)
                    .unwrap_or(defaults::HEARTBEAT_MS),
                election_timeout_min_ms: args
                    .election_timeout_min_ms
                    .or(file.raft.election_timeout_min_ms)
                    .unwrap_or(defaults::ELECTION_TIMEOUT_MIN_MS),
                election_timeout_max_ms: args
                    .election_timeout_max_ms
                    .or(file.raft.election_timeout_max_ms)
                    .unwrap_or(defaults::ELECTION_TIMEOUT_MAX_MS),
            },
            request_timeout_ms: args
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(defaults::REQUEST_TIMEOUT_MS),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(defaults::MAX_BODY_BYTES),
            replication: ReplicationConfig {
                mode,
                min_acks: args
                    .min_acks
                    .or(file.replication.min_acks)
                    .unwrap_or(defaults::MIN_ACKS),
                datastore_format: args.datastore_format.or(file.replication.datastore_format),
            },
            role_change_hook: args.role_change_hook.or(file.role_change_hook),
            gitsync,
            tls,
        })
    }

    /// Checks every invariant of a resolved config; [`Config::load`] calls it, and so should code that
    /// builds a `Config` by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(bad_value("id", self.id, "node ids start at 1"));
        }

        match (self.peers.is_empty(), &self.join) {
            (false, Some(_)) => return Err(ConfigError::PeersAndJoin),
            (true, None) => return Err(ConfigError::NeitherPeersNorJoin),
            _ => {}
        }
        if !self.peers.is_empty() {
            check_peers(&self.peers, &format_peers(&self.peers))?;
            match self.peers.get(&self.id) {
                None => {
                    return Err(ConfigError::IdNotInPeers {
                        id: self.id,
                        peers: format_peers(&self.peers),
                    })
                }
                Some(own) if *own != self.advertise_peer_addr => {
                    return Err(bad_address(
                        "advertise_peer_addr",
                        &self.advertise_peer_addr,
                        format!(
                            "this node's entry in peers is {}={own}; make them agree, or drop \
                             --advertise-peer-addr to use the peers entry",
                            self.id
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(join) = &self.join {
            check_url("join", join)?;
        }

        check_advertise_addr("advertise_api_addr", &self.advertise_api_addr)?;
        check_advertise_addr("advertise_peer_addr", &self.advertise_peer_addr)?;

        if self.data_dir.as_os_str().is_empty() {
            return Err(bad_value("data_dir", "", "must not be empty"));
        }
        check_secret("cluster_token", &self.cluster_token)?;
        check_secret("admin_token", &self.admin_token)?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if let Some(hook) = &self.role_change_hook {
            if hook.trim().is_empty() {
                return Err(bad_value(
                    "role_change_hook",
                    hook,
                    "must not be empty; omit it to run no hook",
                ));
            }
        }

        self.raft.validate()?;
        if self.request_timeout_ms < MIN_REQUEST_TIMEOUT_MS {
            return Err(bad_value(
                "request_timeout_ms",
                self.request_timeout_ms,
                format!("must be at least {MIN_REQUEST_TIMEOUT_MS}"),
            ));
        }
        if self.max_body_bytes < MIN_MAX_BODY_BYTES {
            return Err(bad_value(
                "max_body_bytes",
                self.max_body_bytes,
                format!("must be at least {MIN_MAX_BODY_BYTES}"),
            ));
        }
        if let Some(f) = self.replication.datastore_format {
            if !(1..=keel_replication::NEWEST_FORMAT).contains(&f) {
                return Err(bad_value(
                    "replication.datastore_format",
                    f,
                    format!("must be 1 or {}", keel_replication::NEWEST_FORMAT),
                ));
            }
        }
        if self.replication.min_acks < 1 {
            return Err(bad_value(
                "replication.min_acks",
                self.replication.min_acks,
                "must be at least 1",
            ));
        }
        if let Some(gitsync) = &self.gitsync {
            gitsync.validate()?;
        }
        Ok(())
    }
}

impl RaftTimings {
    /// Heartbeats must fit at least twice into the shortest election timeout, or followers start elections
    /// against a healthy leader; the election window must be non-empty so timeouts are randomised.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ms == 0 {
            return Err(bad_value(
                "raft.heartbeat_ms",
                self.heartbeat_ms,
                "must be greater than 0",
            ));
        }
        if self.heartbeat_ms.saturating_mul(2) > self.election_timeout_min_ms {
            return Err(bad_value(
                "raft.heartbeat_ms",
                self.heartbeat_ms,
                format!(
                    "must be at most half of raft.election_timeout_min_ms ({}); lower the heartbeat or raise \
                     the election timeout",
                    self.election_timeout_min_ms
                ),
            ));
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(bad_value(
                "raft.election_timeout_max_ms",
                self.election_timeout_max_ms,
                format!(
                    "must be greater than raft.election_timeout_min_ms ({})",
                    self.election_timeout_min_ms
                ),
            ));
        }
        Ok(())
    }
}

impl TlsConfig {
    /// The files must exist; their contents are checked when the node loads them (`keel serve` refuses
    /// to start on a bad file, a reload keeps the old certificate).
    fn validate(&self) -> Result<(), ConfigError> {
        let files = [
            ("tls_cert", Some(&self.cert)),
            ("tls_key", Some(&self.key)),
            ("peer_ca", self.peer_ca.as_ref()),
        ];
        for (key, file) in files {
            if let Some(file) = file {
                if !file.is_file() {
                    return Err(bad_value(
                        key,
                        file.display(),
                        "is not a readable file; give the path of a PEM file",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl GitSyncConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.repo.trim().is_empty() {
            return Err(bad_value(
                "gitsync.repo",
                "",
                "must not be empty; omit it to disable Git Sync",
            ));
        }
        if self.branch.is_empty() || self.branch.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_value(
                "gitsync.branch",
                &self.branch,
                "must be a non-empty branch name without spaces",
            ));
        }
        let path = Path::new(&self.path);
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad_value(
                "gitsync.path",
                &self.path,
                "must be a relative path inside the repository, without `..`",
            ));
        }
        if self.interval_ms < MIN_GITSYNC_INTERVAL_MS {
            return Err(bad_value(
                "gitsync.interval_ms",
                self.interval_ms,
                format!("must be at least {MIN_GITSYNC_INTERVAL_MS}"),
            ));
        }
        for (key, file) in [
            ("gitsync.ssh_key", &self.ssh_key),
            ("gitsync.known_hosts", &self.known_hosts),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    return Err(bad_value(
                        key,
                        file.display(),
                        "is not a readable file; check the path (it is read when Git Sync connects)",
                    ));
                }
            }
        }
        check_secret("gitsync.webhook_secret", &self.webhook_secret)
    }
}

/// Parses `id=host:port,id=host:port,...` (spaces around entries and a trailing comma are allowed).
/// Rejects malformed entries, id 0, duplicate ids and duplicate addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let bad = |reason: String| ConfigError::BadPeers {
        value: s.to_owned(),
        reason,
    };
    let mut peers = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("entry `{entry}` is not `id=host:port`")))?;
        let id = parse_peer_id(id.trim()).map_err(|reason| bad(format!("entry `{entry}`: {reason}")))?;
        let addr = addr.trim();
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(bad(format!("duplicate id {id}")));
        }
    }
    if peers.is_empty() {
        return Err(bad("no `id=host:port` entries".to_owned()));
    }
    check_peers(&peers, s)?;
    Ok(peers)
}

/// The TOML table form of peers.
fn peers_from_table(table: BTreeMap<String, String>) -> Result<BTreeMap<u64, String>, ConfigError> {
    let shown = table
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut peers = BTreeMap::new();
    for (key, addr) in table {
        let id = parse_peer_id(key.trim()).map_err(|reason| ConfigError::BadPeers {
            value: shown.clone(),
            reason: format!("key `{key}`: {reason}"),
        })?;
        // "1" and "01" are different TOML keys but the same id.
        if peers.insert(id, addr.trim().to_owned()).is_some() {
            return Err(ConfigError::BadPeers {
                value: shown,
                reason: format!("duplicate id {id}"),
            });
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::BadPeers {
            value: shown,
            reason: "no entries".to_owned(),
        });
    }
    check_peers(&peers, &shown)?;
    Ok(peers)
}

fn parse_peer_id(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("id 0 is reserved; ids start at 1".to_owned()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("id `{s}` is not a positive integer")),
    }
}

/// Addresses well-formed and distinct (case-insensitively), ids non-zero. `shown` is the value for errors.
fn check_peers(peers: &BTreeMap<u64, String>, shown: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadPeers {
        value: shown.to_owned(),
        reason,
    };
    let mut seen = BTreeSet::new();
    for (id, addr) in peers {
        if *id == 0 {
            return Err(bad("id 0 is reserved; ids start at 1".to_owned()));
        }
        check_host_port(addr, true).map_err(|reason| bad(format!("address of {id} `{addr}`: {reason}")))?;
        if !seen.insert(addr.to_ascii_lowercase()) {
            return Err(bad(format!("duplicate address {addr}")));
        }
    }
    Ok(())
}

/// `1=a:7201,2=b:7201`, for error messages.
fn format_peers(peers: &BTreeMap<u64, String>) -> String {
    peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prefixes `http://` when `addr` has no scheme and strips trailing `/`s.
pub fn normalize_url(addr: &str) -> String {
    normalize_url_scheme(addr, "http")
}

/// Prefixes `{scheme}://` when `addr` has no scheme and strips trailing `/`s.
pub fn normalize_url_scheme(addr: &str, scheme: &str) -> String {
    let addr = addr.trim();
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{scheme}://{addr}")
    };
    url.trim_end_matches('/').to_owned()
}

fn normalize_gitsync_path(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed == "." {
        String::new()
    } else {
        trimmed.to_owned()
    }
}

fn parse_listen_addr(field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        bad_address(
            field,
            value,
            "expected ip:port, e.g. 127.0.0.1:7101, 0.0.0.0:7101 or [::]:7101 (listen addresses are IP \
             literals, not host names)",
        )
    })
}

fn check_advertise_addr(field: &'static str, value: &str) -> Result<(), ConfigError> {
    check_host_port(value, true).map_err(|reason| bad_address(field, value, reason))?;
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.ip().is_unspecified() {
            return Err(bad_address(
                field,
                value,
                format!(
                    "{} means \"every interface\" and cannot be dialled; set --{} to an address other nodes can \
                     reach",
                    addr.ip(),
                    field.replace('_', "-")
                ),
            ));
        }
    }
    Ok(())
}

/// `http(s)://host[:port]`, nothing after the authority but an optional path.
fn check_url(field: &'static str, url: &str) -> Result<(), ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad_address(field, url, "expected a URL like http://10.0.0.1:7101"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad_address(field, url, "the scheme must be http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad_address(field, url, "credentials in the URL are not supported"));
    }
    check_host_port(authority, false).map_err(|reason| bad_address(field, url, reason))
}

/// Checks `host:port` (or `host` when `require_port` is false): non-empty host name or IP, IPv6 in
/// brackets, port 1..=65535.
pub fn check_host_port(s: &str, require_port: bool) -> Result<(), String> {
    if s.contains("://") {
        return Err("expected host:port without a scheme".to_owned());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after the IPv6 address".to_owned())?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "expected `:port` after `]`".to_owned())?,
            ),
        };
        (None, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("IPv6 addresses need brackets, e.g. [::1]:7201".to_owned());
            }
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(s), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("missing host".to_owned());
        }
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid || host.starts_with(['-', '.']) {
            return Err(format!("`{host}` is not a host name or IP address"));
        }
    }
    match port {
        None if require_port => Err("missing `:port`".to_owned()),
        None => Ok(()),
        Some(port) => match port.parse::<u16>() {
            Ok(0) => Err("port 0 cannot be dialled".to_owned()),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("port `{port}` is not a number in 1..=65535")),
        },
    }
}

fn check_secret(field: &'static str, secret: &Option<Secret>) -> Result<(), ConfigError> {
    match secret {
        // Never echo the value, not even a whitespace-only one.
        Some(s) if s.expose().trim().is_empty() => Err(bad_value(
            field,
            "***",
            "must not be empty; omit it (and unset its KEEL_* variable) to disable it",
        )),
        _ => Ok(()),
    }
}

/// `https://user:token@host/x` -> `https://user:***@host/x`, for `Debug`.
fn redact_url_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // A lone token (`https://TOKEN@github.com`) is the secret itself.
                "***".to_owned()
            };
            format!("{scheme}://{masked}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const PEERS3: &str = "1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203";

    /// Minimal valid args: node 1 of a three-node cluster.
    fn args() -> ServeArgs {
        ServeArgs {
            id: Some(1),
            peers: Some(PEERS3.to_owned()),
            ..ServeArgs::default()
        }
    }

    fn from_toml(args: ServeArgs, toml: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(toml, Path::new("test.toml"))?;
        let config = Config::resolve(args, file)?;
        config.validate()?;
        Ok(config)
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn tls_files_resolve_flag_over_file_and_make_join_default_to_https() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "pem").unwrap();
            p
        };
        let (crt, key, ca, other) = (file("n.crt"), file("n.key"), file("ca.pem"), file("other.crt"));
        let toml = format!("tls_cert = {:?}\ntls_key = {:?}\npeer_ca = {:?}\n", other, key, ca);
        let c = from_toml(
            ServeArgs {
                tls_cert: Some(crt.clone()),
                ..args()
            },
            &toml,
        )
        .unwrap();
        let want = TlsConfig {
            cert: crt,
            key: key.clone(),
            peer_ca: Some(ca),
        };
        assert_eq!(c.tls, Some(want));
        assert!(Config::load(&args()).unwrap().tls.is_none());

        let join = ServeArgs {
            peers: None,
            join: Some("10.0.0.1:7101".into()),
            tls_cert: Some(other),
            tls_key: Some(key),
            ..args()
        };
        assert_eq!(
            Config::load(&join).unwrap().join.as_deref(),
            Some("https://10.0.0.1:7101")
        );
        let plain = ServeArgs {
            peers: None,
            join: Some("10.0.0.1:7101".into()),
            ..args()
        };
        assert_eq!(
            Config::load(&plain).unwrap().join.as_deref(),
            Some("http://10.0.0.1:7101")
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = Config::load(&args()).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.api_addr, "127.0.0.1:7101".parse().unwrap());
        assert_eq!(c.peer_addr, "127.0.0.1:7201".parse().unwrap());
        assert_eq!(c.advertise_api_addr, "127.0.0.1:7101");
        assert_eq!(c.advertise_peer_addr, "127.0.0.1:7201");
        assert_eq!(c.data_dir, PathBuf::from("keel-data/node-1"));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.raft, RaftTimings::default());
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.request_timeout_ms, 10_000);
        assert_eq!(c.max_body_bytes, 2_162_688);
        assert_eq!(c.replication.mode, ReplicationMode::Async);
        assert_eq!(c.replication.min_acks, 1);
        assert_eq!(c.replication.datastore_format, None);
        assert!(c.join.is_none() && c.cluster_token.is_none() && c.admin_token.is_none());
        assert!(c.role_change_hook.is_none() && c.gitsync.is_none());
    }

    #[test]
    fn peer_addr_and_advertise_default_to_own_peers_entry() {
        let c = Config::load(&ServeArgs { id: Some(2), ..args() }).unwrap();
        assert_eq!(c.peer_addr, "127.0.0.1:7202".parse().unwrap());
        assert_eq!(c.advertise_peer_addr, "127.0.0.1:7202");

        // A host name entry cannot be listened on: listen on the default, advertise the entry.
        let c = Config::load(&ServeArgs {
            id: Some(2),
            peers: Some("1=host1:7201,2=host2:7201".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.peer_addr, "127.0.0.1:7201".parse().unwrap());
        assert_eq!(c.advertise_peer_addr, "host2:7201");
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            r#"
            id = 3
            api_addr = "127.0.0.1:8101"
            peers = "1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203"
            log_format = "json"
            admin_token = "file-token"
            request_timeout_ms = 5000
            [raft]
            heartbeat_ms = 50
            [replication]
            mode = "sync"
            min_acks = 2
            datastore_format = 1
            [gitsync]
            repo = "https://example.com/cfg.git"
            path = "shared/"
            "#,
        );
        let flags = ServeArgs {
            config: Some(path),
            api_addr: Some("0.0.0.0:9101".into()),
            advertise_api_addr: Some("node3.example:9101".into()),
            admin_token: Some(Secret::new("flag-token")),
            heartbeat_ms: Some(20),
            min_acks: Some(1),
            ..ServeArgs::default()
        };
        let c = Config::load(&flags).unwrap();
        // From flags.
        assert_eq!(c.api_addr, "0.0.0.0:9101".parse().unwrap());
        assert_eq!(c.advertise_api_addr, "node3.example:9101");
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), "flag-token");
        assert_eq!(c.raft.heartbeat_ms, 20);
        assert_eq!(c.replication.min_acks, 1);
        assert_eq!(c.replication.datastore_format, Some(1), "from the file");
        // From the file.
        assert_eq!(c.id, 3);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.request_timeout_ms, 5000);
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        let g = c.gitsync.as_ref().unwrap();
        assert_eq!(g.repo, "https://example.com/cfg.git");
        assert_eq!(g.path, "shared");
        // Defaults.
        assert_eq!(g.branch, "main");
        assert_eq!(g.interval_ms, 60_000);
        assert_eq!(c.raft.election_timeout_min_ms, 200);
        assert_eq!(c.max_body_bytes, defaults::MAX_BODY_BYTES);
        assert_eq!(c.data_dir, PathBuf::from("keel-data/node-3"));
        assert_eq!(c.peer_addr, "127.0.0.1:7203".parse().unwrap());
    }

    #[test]
    fn missing_and_unreadable_file() {
        let err = Config::load(&ServeArgs {
            config: Some("/nonexistent/keel.toml".into()),
            ..args()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/keel.toml"), "{err}");
    }

    #[test]
    fn unknown_toml_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (toml, key) in [
            ("id = 1\nhearbeat_ms = 5\n", "hearbeat_ms"),
            ("id = 1\n[raft]\nheartbeat = 5\n", "heartbeat"),
            ("id = 1\n[gitsync]\nrepository = \"x\"\n", "repository"),
            ("id = 1\n[replikation]\nmode = \"sync\"\n", "replikation"),
        ] {
            let path = write_file(&dir, toml);
            let err = Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..args()
            })
            .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::ParseFile { .. }), "{msg}");
            assert!(msg.contains(&format!("`{key}`")), "{key}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn peers_in_both_toml_forms() {
        let want: BTreeMap<u64, String> = [(1, "127.0.0.1:7201"), (2, "127.0.0.1:7202"), (3, "host3:7203")]
            .into_iter()
            .map(|(id, a)| (id, a.to_owned()))
            .collect();
        for toml in [
            r#"peers = "1=127.0.0.1:7201, 2=127.0.0.1:7202,3=host3:7203""#,
            r#"peers = { 1 = "127.0.0.1:7201", 2 = "127.0.0.1:7202", 3 = "host3:7203" }"#,
            "[peers]\n1 = \"127.0.0.1:7201\"\n2 = \"127.0.0.1:7202\"\n3 = \"host3:7203\"\n",
        ] {
            let c = from_toml(
                ServeArgs {
                    id: Some(1),
                    ..ServeArgs::default()
                },
                toml,
            )
            .unwrap();
            assert_eq!(c.peers, want, "{toml}");
        }

        for (toml, needle) in [
            ("peers = 3", "`peers` must be a string like"),
            (r#"peers = { 0 = "a:1" }"#, "id 0"),
            (r#"peers = { x = "a:1" }"#, "not a positive integer"),
            (r#"peers = { 1 = "a:1", 01 = "b:1" }"#, "duplicate id 1"),
            (r#"peers = { 1 = "a:1", 2 = "a:1" }"#, "duplicate address"),
        ] {
            let err = from_toml(
                ServeArgs {
                    id: Some(1),
                    ..ServeArgs::default()
                },
                toml,
            )
            .unwrap_err();
            assert!(err.to_string().contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn parse_peers_cases() {
        let ok: &[(&str, &[(u64, &str)])] = &[
            ("1=a:1", &[(1, "a:1")]),
            (
                " 1 = a:1 , 2=b.example.com:7201, ",
                &[(1, "a:1"), (2, "b.example.com:7201")],
            ),
            (
                "7=[::1]:7201,8=[fe80::1]:7202",
                &[(7, "[::1]:7201"), (8, "[fe80::1]:7202")],
            ),
            ("1=10.0.0.1:65535", &[(1, "10.0.0.1:65535")]),
        ];
        for (input, want) in ok {
            let want: BTreeMap<u64, String> = want.iter().map(|(id, a)| (*id, a.to_string())).collect();
            assert_eq!(parse_peers(input).unwrap(), want, "{input}");
        }

        let bad = [
            ("", "no `id=host:port` entries"),
            (" , ", "no `id=host:port` entries"),
            ("1", "not `id=host:port`"),
            ("a=h:1", "not a positive integer"),
            ("0=h:1", "id 0"),
            ("-1=h:1", "not a positive integer"),
            ("1=h:1,1=h:2", "duplicate id 1"),
            ("1=h:1,2=H:1", "duplicate address"),
            ("1=h", "missing `:port`"),
            ("1=:7201", "missing host"),
            ("1=h:0", "port 0"),
            ("1=h:70000", "not a number"),
            ("1=h:x", "not a number"),
            ("1=::1:7201", "need brackets"),
            ("1=[::1", "missing `]`"),
            ("1=[zz]:1", "not an IPv6 address"),
            ("1=[::1]7201", "expected `:port`"),
            ("1=h h:1", "not a host name"),
            ("1=http://h:1", "without a scheme"),
        ];
        for (input, needle) in bad {
            let err = parse_peers(input).unwrap_err();
            assert!(matches!(err, ConfigError::BadPeers { .. }), "{input}: {err}");
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn rejected_configs() {
        type Case = (&'static str, fn(&mut ServeArgs), &'static str);
        let cases: &[Case] = &[
            ("no id", |a| a.id = None, "--id is required"),
            ("id 0", |a| a.id = Some(0), "ids start at 1"),
            ("id not in peers", |a| a.id = Some(4), "node id 4 is not in peers"),
            (
                "peers and join",
                |a| a.join = Some("127.0.0.1:7101".into()),
                "both peers and join",
            ),
            ("neither", |a| a.peers = None, "neither peers nor join"),
            (
                "bad api addr",
                |a| a.api_addr = Some("localhost:7101".into()),
                "api_addr",
            ),
            ("bad peer addr", |a| a.peer_addr = Some("127.0.0.1".into()), "peer_addr"),
            (
                "advertise disagrees with peers",
                |a| a.advertise_peer_addr = Some("10.0.0.9:7201".into()),
                "this node's entry in peers is 1=127.0.0.1:7201",
            ),
            (
                "unspecified advertise",
                |a| a.api_addr = Some("0.0.0.0:7101".into()),
                "set --advertise-api-addr",
            ),
            (
                "bad advertise",
                |a| a.advertise_api_addr = Some("host".into()),
                "missing `:port`",
            ),
            ("bad log format", |a| a.log_format = Some("yaml".into()), "log_format"),
            (
                "bad mode",
                |a| a.replication_mode = Some("semi".into()),
                "replication.mode",
            ),
            ("zero heartbeat", |a| a.heartbeat_ms = Some(0), "greater than 0"),
            ("heartbeat too slow", |a| a.heartbeat_ms = Some(201), "at most half"),
            (
                "election window empty",
                |a| a.election_timeout_max_ms = Some(200),
                "greater than raft.election_timeout_min_ms",
            ),
            (
                "election window inverted",
                |a| {
                    a.election_timeout_min_ms = Some(1000);
                    a.election_timeout_max_ms = Some(900);
                },
                "election_timeout_max_ms",
            ),
            ("request timeout", |a| a.request_timeout_ms = Some(99), "at least 100"),
            ("body limit", |a| a.max_body_bytes = Some(1023), "at least 1024"),
            ("min acks", |a| a.min_acks = Some(0), "at least 1"),
            ("empty token", |a| a.admin_token = Some(Secret::new("")), "admin_token"),
            (
                "empty hook",
                |a| a.role_change_hook = Some(" ".into()),
                "role_change_hook",
            ),
            (
                "gitsync without repo",
                |a| a.gitsync_branch = Some("dev".into()),
                "no repository",
            ),
            (
                "gitsync path escapes",
                |a| {
                    a.gitsync_repo = Some("https://x/r.git".into());
                    a.gitsync_path = Some("../etc".into());
                },
                "without `..`",
            ),
            (
                "gitsync absolute path",
                |a| {
                    a.gitsync_repo = Some("https://x/r.git".into());
                    a.gitsync_path = Some("/etc".into());
                },
                "relative path",
            ),
            (
                "gitsync interval",
                |a| {
                    a.gitsync_repo = Some("https://x/r.git".into());
                    a.gitsync_interval_ms = Some(10);
                },
                "gitsync.interval_ms",
            ),
        ];
        for (name, edit, needle) in cases {
            let mut a = args();
            edit(&mut a);
            match Config::load(&a) {
                Ok(c) => panic!("{name}: accepted {c:?}"),
                Err(err) => assert!(err.to_string().contains(needle), "{name}: {err}"),
            }
        }
    }

    #[test]
    fn error_variants() {
        let load = |edit: fn(&mut ServeArgs)| {
            let mut a = args();
            edit(&mut a);
            Config::load(&a).unwrap_err()
        };
        assert!(matches!(load(|a| a.id = None), ConfigError::MissingId));
        assert!(matches!(
            load(|a| a.id = Some(9)),
            ConfigError::IdNotInPeers { id: 9, ref peers } if peers == PEERS3
        ));
        assert!(matches!(
            load(|a| a.join = Some("x:1".into())),
            ConfigError::PeersAndJoin
        ));
        assert!(matches!(load(|a| a.peers = None), ConfigError::NeitherPeersNorJoin));
        assert!(matches!(
            load(|a| a.api_addr = Some("nope".into())),
            ConfigError::BadAddress { field: "api_addr", .. }
        ));
        assert!(matches!(
            load(|a| a.peers = Some("1=a:1,2=a:1".into())),
            ConfigError::BadPeers { .. }
        ));
        assert!(matches!(
            load(|a| a.log_format = Some("xml".into())),
            ConfigError::BadValue {
                field: "log_format",
                ..
            }
        ));
    }

    #[test]
    fn join_mode() {
        for (input, want) in [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("http://127.0.0.1:7101/", "http://127.0.0.1:7101"),
            ("https://keel.example", "https://keel.example"),
            ("[::1]:7101", "http://[::1]:7101"),
        ] {
            let c = Config::load(&ServeArgs {
                id: Some(4),
                join: Some(input.into()),
                peer_addr: Some("127.0.0.1:7204".into()),
                ..ServeArgs::default()
            })
            .unwrap();
            assert_eq!(c.join.as_deref(), Some(want));
            assert!(c.peers.is_empty());
            assert_eq!(c.advertise_peer_addr, "127.0.0.1:7204");
        }
        for bad in ["", "ftp://h:1", "http://h:0", "http://user@h:1", "h:x"] {
            let err = Config::load(&ServeArgs {
                id: Some(4),
                join: Some(bad.into()),
                ..ServeArgs::default()
            })
            .unwrap_err();
            assert!(
                matches!(err, ConfigError::BadAddress { field: "join", .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn normalize_url_cases() {
        for (input, want) in [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("127.0.0.1:7101/", "http://127.0.0.1:7101"),
            ("http://a:1", "http://a:1"),
            ("https://a:1//", "https://a:1"),
            (" a:1 ", "http://a:1"),
        ] {
            assert_eq!(normalize_url(input), want, "{input}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::load(&ServeArgs {
            cluster_token: Some(Secret::new("cluster-s3cret")),
            admin_token: Some(Secret::new("admin-s3cret")),
            gitsync_repo: Some("https://bot:repo-s3cret@git.example/cfg.git".into()),
            gitsync_webhook_secret: Some(Secret::new("hook-s3cret")),
            ..args()
        })
        .unwrap();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***"));
        assert!(shown.contains("https://bot:***@git.example/cfg.git"), "{shown}");
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), "admin-s3cret");
        assert_eq!(
            c.gitsync.as_ref().unwrap().repo,
            "https://bot:repo-s3cret@git.example/cfg.git"
        );

        // The raw args are safe to log too.
        let a = ServeArgs {
            admin_token: Some(Secret::new("admin-s3cret")),
            ..args()
        };
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_eq!(redact_url_userinfo("https://tok@h/x"), "https://***@h/x");
        assert_eq!(redact_url_userinfo("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // Every flag has its KEEL_* variable, named after the flag.
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let env = arg.get_env().unwrap_or_else(|| panic!("--{long} has no env"));
            assert_eq!(env, format!("KEEL_{}", long.replace('-', "_").to_uppercase()).as_str());
        }
    }

    #[test]
    fn clap_parses_flag_names() {
        // Only flags that no test environment is expected to set as KEEL_* variables matter here.
        let cli = Cli::try_parse_from([
            "keel",
            "--id",
            "2",
            "--peers",
            PEERS3,
            "--api-addr",
            "127.0.0.1:7102",
            "--log-format",
            "json",
            "--replication-mode",
            "sync",
            "--min-acks",
            "2",
            "--gitsync-repo",
            "https://x/r.git",
            "--gitsync-webhook-secret",
            "s",
            "--election-timeout-max-ms",
            "900",
        ])
        .unwrap();
        let c = Config::load(&cli.serve).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.api_addr, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.replication,
            ReplicationConfig {
                mode: ReplicationMode::Sync,
                min_acks: 2,
                datastore_format: None,
            }
        );
        assert_eq!(c.raft.election_timeout_max_ms, 900);
        assert_eq!(c.gitsync.unwrap().webhook_secret.unwrap().expose(), "s");

        assert!(Cli::try_parse_from(["keel", "--log-format", "yaml"]).is_err());
    }
}
