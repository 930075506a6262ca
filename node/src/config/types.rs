//! The value types of a [`Config`]: secrets, log format, replication, Raft timings, Git Sync and TLS.

use super::*;

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

/// The API port's bearer tokens (docs/operations.md, "Security"). The admin token also opens the data
/// plane; the client token reads and writes it; the read token only reads it. The rule that says which
/// token allows what is [`crate::auth::decide`].
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    pub admin: Option<Secret>,
    pub client: Option<Secret>,
    pub read: Option<Secret>,
}

impl ApiTokens {
    /// Each token of `self` where set, else `other`'s (flags and env over the file).
    pub fn or(self, other: ApiTokens) -> ApiTokens {
        ApiTokens {
            admin: self.admin.or(other.admin),
            client: self.client.or(other.client),
            read: self.read.or(other.read),
        }
    }

    /// The tokens by kind name, in the order admin, client, read.
    pub fn by_kind(&self) -> [(&'static str, Option<&Secret>); 3] {
        [
            ("admin", self.admin.as_ref()),
            ("client", self.client.as_ref()),
            ("read", self.read.as_ref()),
        ]
    }

    /// No token is empty, and no two kinds share a value (a request's token must name one kind).
    pub fn validate(&self) -> Result<(), ConfigError> {
        const FIELDS: [&str; 3] = ["admin_token", "client_token", "read_token"];
        let kinds = self.by_kind();
        for (field, (_, secret)) in FIELDS.into_iter().zip(kinds) {
            check_secret(field, secret.map(Secret::expose))?;
        }
        for (i, (a, sa)) in kinds.iter().enumerate() {
            for (j, (b, sb)) in kinds.iter().enumerate().skip(i + 1) {
                if let (Some(x), Some(y)) = (sa, sb) {
                    if x.expose() == y.expose() {
                        return Err(bad_value(
                            FIELDS[j],
                            "***",
                            format!("the {a} and the {b} token are the same; give every kind its own token"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Names of the kinds whose token differs between `self` and `new` (set, unset or changed).
    pub fn changed_kinds(&self, new: &ApiTokens) -> Vec<&'static str> {
        self.by_kind()
            .into_iter()
            .zip(new.by_kind())
            .filter(|((_, a), (_, b))| a.map(Secret::expose) != b.map(Secret::expose))
            .map(|((kind, _), _)| kind)
            .collect()
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

/// How the primary acknowledges datastore writes: the cluster-wide setting this node seeds a new
/// cluster with (one type with the Raft state's, so nothing is copied between two).
pub use keel_raft::state::ReplicationMode;

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
#[derive(Debug, Clone)]
pub struct GitSyncConfig {
    /// What the agent syncs, in keel-gitsync's own type (its `Debug` hides the webhook secret and
    /// any password in the repository URL). The token for https remotes is not here: the node reads
    /// it from `KEEL_GITSYNC_TOKEN` / `KEEL_GITSYNC_TOKEN_FILE` when the agent opens.
    pub agent: keel_gitsync::GitSyncConfig,
    /// On-sync hook command.
    pub hook: Option<String>,
    /// `GET /replica` answers 503 when this node's Git Sync is in conflict or its last successful
    /// sync is older than this (`?max_gitsync_age_ms=` overrides it per request); `None`: not checked.
    pub max_age_ms: Option<u64>,
}

/// The Sentinel-compatible discovery listener; present only when `--sentinel-addr` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The master name clients ask for.
    pub name: String,
    /// Member id -> its Redis `host:port` (`--sentinel-redis-addrs`), for a Redis Keel does not start.
    pub redis_addrs: BTreeMap<u64, String>,
}

impl SentinelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The name goes into space-separated pub/sub messages (`+switch-master <name> ...`).
        if self.name.is_empty() || self.name.len() > 128 || !self.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad_value(
                "sentinel.name",
                &self.name,
                "must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        for addr in self.redis_addrs.values() {
            check_advertise_addr("sentinel.redis_addrs", addr)?;
        }
        Ok(())
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

/// Each file given (`Some`) must be a file: else the error names its key and says `hint`.
fn files_exist(files: &[(&'static str, Option<&PathBuf>)], hint: &str) -> Result<(), ConfigError> {
    for (key, file) in files {
        if let Some(file) = file.filter(|f| !f.is_file()) {
            return Err(bad_value(
                key,
                file.display(),
                format!("is not a readable file; {hint}"),
            ));
        }
    }
    Ok(())
}

impl TlsConfig {
    /// The files must exist; their contents are checked when the node loads them (`keel serve` refuses
    /// to start on a bad file, a reload keeps the old certificate).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let files = [
            ("tls_cert", Some(&self.cert)),
            ("tls_key", Some(&self.key)),
            ("peer_ca", self.peer_ca.as_ref()),
        ];
        files_exist(&files, "give the path of a PEM file")
    }
}

impl GitSyncConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.agent;
        let interval_ms = g.interval.as_millis() as u64;
        if g.repo.trim().is_empty() {
            return Err(bad_value(
                "gitsync.repo",
                "",
                "must not be empty; omit it to disable Git Sync",
            ));
        }
        if g.branch.is_empty() || g.branch.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_value(
                "gitsync.branch",
                &g.branch,
                "must be a non-empty branch name without spaces",
            ));
        }
        let path = Path::new(&g.path);
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad_value(
                "gitsync.path",
                &g.path,
                "must be a relative path inside the repository, without `..`",
            ));
        }
        if interval_ms < MIN_GITSYNC_INTERVAL_MS {
            return Err(bad_value(
                "gitsync.interval_ms",
                interval_ms,
                format!("must be at least {MIN_GITSYNC_INTERVAL_MS}"),
            ));
        }
        if let Some(max_age_ms) = self.max_age_ms.filter(|m| *m <= interval_ms) {
            return Err(bad_value(
                "gitsync.max_age_ms",
                max_age_ms,
                format!(
                    "must be over gitsync.interval_ms ({interval_ms}): a healthy node syncs only once per interval, \
                     so a smaller age would take it out of /replica between two good syncs"
                ),
            ));
        }
        files_exist(
            &[
                ("gitsync.ssh_key", g.ssh_key.as_ref()),
                ("gitsync.known_hosts", g.known_hosts.as_ref()),
            ],
            "check the path (it is read when Git Sync connects)",
        )?;
        check_secret("gitsync.webhook_secret", g.webhook_secret.as_deref())
    }
}

/// Managed Redis (`--redis-port`, `--redis-server`, `--redis-conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub port: u16,
    pub server: PathBuf,
    /// Extra settings included in the generated redis.conf.
    pub conf: Option<PathBuf>,
}

impl RedisSettings {
    pub(crate) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        if self.port == 0 {
            return Err(bad_value(
                "redis.port",
                self.port,
                "must be a fixed port: the other nodes' Redis replicate from it",
            ));
        }
        for (what, port) in [
            ("api_addr", config.api_addr.port()),
            ("peer_addr", config.peer_addr.port()),
        ] {
            if port == self.port {
                return Err(bad_value(
                    "redis.port",
                    self.port,
                    format!("is also this node's {what} port; pick another"),
                ));
            }
        }
        if let Some(conf) = &self.conf {
            if !conf.is_file() {
                return Err(bad_value(
                    "redis.conf",
                    conf.display(),
                    "no such file (give a readable redis.conf with extra settings)",
                ));
            }
        }
        Ok(())
    }

    /// The host:port where this node's Redis is reached: the advertised API host at the Redis port.
    pub fn advertise_addr(&self, advertise_api_addr: &str) -> String {
        let host = match advertise_api_addr.rsplit_once(':') {
            Some((h, _)) => h,
            None => advertise_api_addr,
        };
        format!("{host}:{}", self.port)
    }
}
