//! The TOML file named by `--config`: the same [`ServeArgs`] as the flags, read by serde, and
//! [`ServeArgs::or`], which lays one source over another, each field once.

use super::*;

/// `--peers` as given: `"1=a:7201,2=b:7201"` (the flag, or the same string in the file) or, in the
/// file only, a table `{ 1 = "a:7201", 2 = "b:7201" }`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "`peers` must be a string like \"1=host:port,2=host:port\" or a table like { 1 = \"host:port\" }"
)]
pub enum Peers {
    List(String),
    // TOML keys are strings; ids are parsed (and checked) by `peers_from_table`.
    Table(BTreeMap<String, String>),
}

impl Peers {
    /// clap's parser for `--peers` (checked later, with the rest, by [`Config::load`]).
    pub fn parse_flag(s: &str) -> Result<Peers, std::convert::Infallible> {
        Ok(Peers::List(s.to_owned()))
    }

    /// The members they name, checked.
    pub(crate) fn resolve(self) -> Result<BTreeMap<u64, String>, ConfigError> {
        match self {
            Peers::List(s) => parse_peers(&s),
            Peers::Table(table) => peers_from_table(table),
        }
    }
}

impl From<&str> for Peers {
    fn from(s: &str) -> Peers {
        Peers::List(s.to_owned())
    }
}

impl ServeArgs {
    /// The TOML file at `path`. Keys mirror the flags; unknown keys are an error.
    pub(crate) fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        ServeArgs::parse_file(&text, path)
    }

    pub(crate) fn parse_file(text: &str, path: &Path) -> Result<ServeArgs, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// The API tokens these settings give.
    pub(crate) fn tokens(&self) -> ApiTokens {
        ApiTokens {
            admin: self.admin_token.clone(),
            client: self.client_token.clone(),
            read: self.read_token.clone(),
        }
    }

    /// Every setting of `self`, and those it lacks from `under` (flags and env over the file).
    pub fn or(self, under: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(under.config),
            id: self.id.or(under.id),
            api_addr: self.api_addr.or(under.api_addr),
            peer_addr: self.peer_addr.or(under.peer_addr),
            advertise_api_addr: self.advertise_api_addr.or(under.advertise_api_addr),
            advertise_peer_addr: self.advertise_peer_addr.or(under.advertise_peer_addr),
            data_dir: self.data_dir.or(under.data_dir),
            peers: self.peers.or(under.peers),
            join: self.join.or(under.join),
            cluster_token: self.cluster_token.or(under.cluster_token),
            admin_token: self.admin_token.or(under.admin_token),
            client_token: self.client_token.or(under.client_token),
            read_token: self.read_token.or(under.read_token),
            tls_cert: self.tls_cert.or(under.tls_cert),
            tls_key: self.tls_key.or(under.tls_key),
            peer_ca: self.peer_ca.or(under.peer_ca),
            log_format: self.log_format.or(under.log_format),
            role_change_hook: self.role_change_hook.or(under.role_change_hook),
            request_timeout_ms: self.request_timeout_ms.or(under.request_timeout_ms),
            max_body_bytes: self.max_body_bytes.or(under.max_body_bytes),
            cache_mb: self.cache_mb.or(under.cache_mb),
            raft: RaftArgs {
                heartbeat_ms: self.raft.heartbeat_ms.or(under.raft.heartbeat_ms),
                election_timeout_min_ms: self.raft.election_timeout_min_ms.or(under.raft.election_timeout_min_ms),
                election_timeout_max_ms: self.raft.election_timeout_max_ms.or(under.raft.election_timeout_max_ms),
            },
            replication: ReplicationArgs {
                mode: self.replication.mode.or(under.replication.mode),
                min_acks: self.replication.min_acks.or(under.replication.min_acks),
                datastore_format: self.replication.datastore_format.or(under.replication.datastore_format),
            },
            gitsync: self.gitsync.or(under.gitsync),
            sentinel: SentinelArgs {
                addr: self.sentinel.addr.or(under.sentinel.addr),
                name: self.sentinel.name.or(under.sentinel.name),
                redis_addrs: self.sentinel.redis_addrs.or(under.sentinel.redis_addrs),
            },
            redis: RedisArgs {
                port: self.redis.port.or(under.redis.port),
                server: self.redis.server.or(under.redis.server),
                conf: self.redis.conf.or(under.redis.conf),
            },
        }
    }
}

impl GitSyncArgs {
    fn or(self, under: GitSyncArgs) -> GitSyncArgs {
        GitSyncArgs {
            repo: self.repo.or(under.repo),
            branch: self.branch.or(under.branch),
            path: self.path.or(under.path),
            interval_ms: self.interval_ms.or(under.interval_ms),
            max_age_ms: self.max_age_ms.or(under.max_age_ms),
            webhook_secret: self.webhook_secret.or(under.webhook_secret),
            hook: self.hook.or(under.hook),
            ssh_key: self.ssh_key.or(under.ssh_key),
            known_hosts: self.known_hosts.or(under.known_hosts),
        }
    }

    /// Any setting besides the repository.
    fn any_besides_repo(&self) -> bool {
        self.branch.is_some()
            || self.path.is_some()
            || self.interval_ms.is_some()
            || self.max_age_ms.is_some()
            || self.webhook_secret.is_some()
            || self.hook.is_some()
            || self.ssh_key.is_some()
            || self.known_hosts.is_some()
    }
}

/// Git Sync's settings, when a repository is given; an error for settings without one.
pub(crate) fn gitsync_config(g: GitSyncArgs) -> Result<Option<GitSyncConfig>, ConfigError> {
    let Some(repo) = g.repo.clone() else {
        // Settings without a repository would be silently ignored; more likely a forgotten flag.
        if g.any_besides_repo() {
            return Err(bad_value(
                "gitsync.repo",
                "",
                "Git Sync settings are given but no repository; set --gitsync-repo (or `repo` in [gitsync]) \
                 or drop the other gitsync settings",
            ));
        }
        return Ok(None);
    };
    let branch = g.branch.unwrap_or_else(|| defaults::GITSYNC_BRANCH.to_owned());
    let mut agent = keel_gitsync::GitSyncConfig::new(repo, branch);
    agent.path = normalize_gitsync_path(&g.path.unwrap_or_else(|| defaults::GITSYNC_PATH.to_owned()));
    agent.interval = Duration::from_millis(g.interval_ms.unwrap_or(defaults::GITSYNC_INTERVAL_MS));
    agent.webhook_secret = g.webhook_secret.map(|s| s.expose().to_owned());
    agent.ssh_key = g.ssh_key;
    agent.known_hosts = g.known_hosts;
    Ok(Some(GitSyncConfig {
        agent,
        hook: g.hook.filter(|h| !h.trim().is_empty()),
        max_age_ms: g.max_age_ms,
    }))
}

/// The discovery listener's settings, when `--sentinel-addr` is given; an error for settings
/// without it.
pub(crate) fn sentinel_config(s: SentinelArgs) -> Result<Option<SentinelConfig>, ConfigError> {
    let Some(addr) = s.addr else {
        if s.name.is_some() || s.redis_addrs.is_some() {
            return Err(bad_value(
                "sentinel.addr",
                "",
                "Sentinel settings are given but no listen address; set --sentinel-addr (or `addr` in \
                 [sentinel]) or drop the other sentinel settings",
            ));
        }
        return Ok(None);
    };
    let redis_addrs = match s.redis_addrs {
        None => BTreeMap::new(),
        Some(p) => p.resolve().map_err(|e| match e {
            ConfigError::BadPeers { value, reason } => bad_value("sentinel.redis_addrs", value, reason),
            other => other,
        })?,
    };
    Ok(Some(SentinelConfig {
        addr: parse_listen_addr("sentinel.addr", &addr)?,
        name: s.name.unwrap_or_else(|| defaults::SENTINEL_NAME.to_owned()),
        redis_addrs,
    }))
}
