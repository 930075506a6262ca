//! Configuration of `keel serve`: flags, `KEEL_*` environment variables and the TOML file, merged into
//! one validated [`Config`].
//!
//! Precedence is flag > env > file > default. Flags, env and the TOML file all fill one settings
//! struct, [`ServeArgs`] (clap merges the first two; serde reads the file named by `--config` into
//! the same struct; every field is an `Option` without a default, so "not given" stays visible).
//! [`Config::load`] lays the flags over the file ([`ServeArgs::or`]), fills the gaps from
//! [`defaults`], parses, and runs [`Config::validate`].
//!
//! Secrets (tokens, the webhook secret) are held in [`Secret`], whose `Debug` prints `***`, so a config can
//! be logged with `?config` safely.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

mod args;
mod check;
mod file;
mod types;
pub use args::*;
pub use check::*;
pub use file::*;
pub use types::*;

/// Every default value, in one place. The `--help` texts in [`ServeArgs`] repeat them for the reader.
pub mod defaults {
    /// `--redis-server`: found in PATH.
    pub const REDIS_SERVER: &str = "redis-server";
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
    /// Page-cache memory of the stores, in MiB (see [`super::Config::datastore_cache_bytes`]).
    pub const CACHE_MB: u64 = 128;
    pub const GITSYNC_BRANCH: &str = "main";
    /// Path inside the repository; empty means the whole repository.
    pub const GITSYNC_PATH: &str = "";
    pub const GITSYNC_INTERVAL_MS: u64 = 60_000;
    /// The master name of the Sentinel-compatible listener.
    pub const SENTINEL_NAME: &str = "keel";
}

/// Lower bounds enforced by [`Config::validate`].
const MIN_REQUEST_TIMEOUT_MS: u64 = 100;
const MIN_MAX_BODY_BYTES: usize = 1024;
const MIN_CACHE_MB: u64 = 32;
const MIN_GITSYNC_INTERVAL_MS: u64 = 100;

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
    /// Reads and writes the data plane.
    pub client_token: Option<Secret>,
    /// Reads the data plane.
    pub read_token: Option<Secret>,
    /// The `--config` file; SIGHUP re-reads its API tokens ([`Config::reread_tokens`]).
    pub config_file: Option<PathBuf>,
    /// The API tokens given as flags or `KEEL_*` variables: they win over the file, on reload too.
    pub pinned_tokens: ApiTokens,
    pub log_format: LogFormat,
    pub raft: RaftTimings,
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Page-cache memory of the stores in MiB (`--cache-mb`).
    pub cache_mb: u64,
    pub replication: ReplicationConfig,
    pub role_change_hook: Option<String>,
    pub gitsync: Option<GitSyncConfig>,
    /// Managed Redis (`--redis-port`), when set.
    pub redis: Option<RedisSettings>,
    /// HTTPS on both listeners (and for calls to other members) when set.
    pub tls: Option<TlsConfig>,
    /// The Sentinel-compatible discovery listener, when `--sentinel-addr` is set.
    pub sentinel: Option<SentinelConfig>,
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

impl Config {
    /// The datastore's page-cache budget: `cache_mb` less what the two Raft stores get.
    pub fn datastore_cache_bytes(&self) -> usize {
        ((self.cache_mb as usize) << 20).saturating_sub(2 * keel_raft::store::CACHE_BYTES)
    }

    /// Resolves flag > env (both already in `args`) > file (`args.config`) > default, then validates.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => ServeArgs::read_file(path)?,
            None => ServeArgs::default(),
        };
        let config = Config::resolve(args.clone(), file)?;
        config.validate()?;
        Ok(config)
    }

    /// Lays `args` over `file`, fills the defaults and parses strings; checks only what parsing needs.
    fn resolve(args: ServeArgs, file: ServeArgs) -> Result<Config, ConfigError> {
        // Tokens given as flags or env stay for the life of the process; the file's may be reloaded.
        let pinned_tokens = args.tokens();
        let s = args.or(file);
        let id = s.id.ok_or(ConfigError::MissingId)?;
        let tokens = s.tokens();
        let gitsync = gitsync_config(s.gitsync)?;
        let sentinel = sentinel_config(s.sentinel)?;

        let peers = match s.peers {
            Some(p) => p.resolve()?,
            None => BTreeMap::new(),
        };
        let own_peer = peers.get(&id).cloned();

        let api_addr = parse_listen_addr("api_addr", s.api_addr.as_deref().unwrap_or(defaults::API_ADDR))?;
        let peer_addr = match s.peer_addr {
            Some(a) => parse_listen_addr("peer_addr", &a)?,
            // Listening where the peers list says we are is what a local multi-node setup needs.
            None => match own_peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok()) {
                Some(addr) => addr,
                None => parse_listen_addr("peer_addr", defaults::PEER_ADDR)?,
            },
        };
        let advertise_api_addr = s.advertise_api_addr.unwrap_or_else(|| api_addr.to_string());
        let advertise_peer_addr = s
            .advertise_peer_addr
            .or(own_peer)
            .unwrap_or_else(|| peer_addr.to_string());

        let tls = tls_files(s.tls_cert, s.tls_key, s.peer_ca)?;
        // With TLS the cluster speaks HTTPS, so a bare `--join host:port` means https.
        let join_scheme = if tls.is_some() { "https" } else { "http" };

        let data_dir = s
            .data_dir
            .unwrap_or_else(|| Path::new(defaults::DATA_DIR_PARENT).join(format!("node-{id}")));

        let log_format = match s.log_format {
            Some(f) => f.parse().map_err(|reason| bad_value("log_format", &f, reason))?,
            None => LogFormat::default(),
        };
        let mode = match s.replication.mode {
            Some(m) => m.parse().map_err(|reason: keel_raft::state::BadReplicationMode| {
                bad_value("replication.mode", &m, reason.to_string())
            })?,
            None => ReplicationMode::default(),
        };

        Ok(Config {
            id,
            api_addr,
            peer_addr,
            advertise_api_addr,
            advertise_peer_addr,
            data_dir,
            peers,
            join: s.join.map(|j| normalize_url_scheme(&j, join_scheme)),
            cluster_token: s.cluster_token,
            admin_token: tokens.admin,
            client_token: tokens.client,
            read_token: tokens.read,
            config_file: s.config,
            pinned_tokens,
            log_format,
            raft: RaftTimings {
                heartbeat_ms: s.raft.heartbeat_ms.unwrap_or(defaults::HEARTBEAT_MS),
                election_timeout_min_ms: s
                    .raft
                    .election_timeout_min_ms
                    .unwrap_or(defaults::ELECTION_TIMEOUT_MIN_MS),
                election_timeout_max_ms: s
                    .raft
                    .election_timeout_max_ms
                    .unwrap_or(defaults::ELECTION_TIMEOUT_MAX_MS),
            },
            request_timeout_ms: s.request_timeout_ms.unwrap_or(defaults::REQUEST_TIMEOUT_MS),
            max_body_bytes: s.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            cache_mb: s.cache_mb.unwrap_or(defaults::CACHE_MB),
            replication: ReplicationConfig {
                mode,
                min_acks: s.replication.min_acks.unwrap_or(defaults::MIN_ACKS),
                datastore_format: s.replication.datastore_format,
            },
            role_change_hook: s.role_change_hook,
            gitsync,
            redis: s.redis.port.map(|port| RedisSettings {
                port,
                server: s.redis.server.unwrap_or_else(|| PathBuf::from(defaults::REDIS_SERVER)),
                conf: s.redis.conf,
            }),
            tls,
            sentinel,
        })
    }

    /// The API tokens in force at start.
    pub fn tokens(&self) -> ApiTokens {
        ApiTokens {
            admin: self.admin_token.clone(),
            client: self.client_token.clone(),
            read: self.read_token.clone(),
        }
    }

    /// The API tokens as the config file says now, under those given as flags or env (which a running
    /// process cannot change). `None` without a config file: nothing can have changed.
    pub fn reread_tokens(&self) -> Result<Option<ApiTokens>, ConfigError> {
        let Some(path) = &self.config_file else {
            return Ok(None);
        };
        let tokens = self.pinned_tokens.clone().or(ServeArgs::read_file(path)?.tokens());
        tokens.validate()?;
        Ok(Some(tokens))
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
        check_secret("cluster_token", self.cluster_token.as_ref().map(Secret::expose))?;
        self.tokens().validate()?;
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
        if !(MIN_CACHE_MB..=1 << 20).contains(&self.cache_mb) {
            return Err(bad_value(
                "cache_mb",
                self.cache_mb,
                format!("must be between {MIN_CACHE_MB} and 1048576 (MiB)"),
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
        if let Some(sentinel) = &self.sentinel {
            sentinel.validate()?;
        }
        if let Some(redis) = &self.redis {
            redis.validate(self)?;
        }
        Ok(())
    }
}

/// The TLS files: all of cert and key (and optionally the peer CA), or none.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
) -> Result<Option<TlsConfig>, ConfigError> {
    Ok(match (cert, key, peer_ca) {
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
    })
}

#[cfg(test)]
mod tests;
