//! `keel serve`'s settings as given: flags, `KEEL_*` environment variables and the TOML file all
//! fill the same [`ServeArgs`] (clap reads the first two, serde the file; `[raft]`, `[replication]`
//! and `[gitsync]` are its sub-structs, flattened into the flags). Every field is an `Option`
//! without a default, so "not given" stays visible to [`ServeArgs::or`], which lays the flags
//! over the file; [`Config::load`] then fills the defaults and validates.

use super::*;

/// The settings of `keel serve`, from one source. Each field is a flag, reads `KEEL_<FLAG>` from the
/// environment (clap: flag beats env), and is a key of the `--config` TOML file (see [`Config::load`]).
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Path to a TOML config file; its keys are the flag names in snake_case, with `[raft]`,
    /// `[replication]`, `[gitsync]` and `[sentinel]` tables. Flags and env override it.
    #[serde(skip)]
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
    #[arg(long, env = "KEEL_PEERS", value_name = "ID=HOST:PORT,...", value_parser = Peers::parse_flag)]
    pub peers: Option<Peers>,

    /// API address of any member of a running cluster to join as a learner, e.g. http://10.0.0.1:7101
    /// (the scheme defaults to http). Mutually exclusive with --peers.
    #[arg(long, env = "KEEL_JOIN", value_name = "URL")]
    pub join: Option<String>,

    /// Shared secret nodes present to each other on the peer port [default: none, peer traffic is
    /// unauthenticated].
    #[arg(long, env = "KEEL_CLUSTER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub cluster_token: Option<Secret>,

    /// Bearer token required by admin endpoints; it also reads and writes the data plane [default: none,
    /// admin endpoints are open]. Reloaded from the config file on SIGHUP.
    #[arg(long, env = "KEEL_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<Secret>,

    /// Bearer token that reads and writes the data plane (`/v1/kv*`, `/v1/diverged`,
    /// `/v1/gitsync/files/*`) [default: none]. With no token of any kind the data plane is open.
    /// Reloaded from the config file on SIGHUP.
    #[arg(long, env = "KEEL_CLIENT_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub client_token: Option<Secret>,

    /// Bearer token that only reads the data plane; a write with it gets 403 [default: none].
    /// Reloaded from the config file on SIGHUP.
    #[arg(long, env = "KEEL_READ_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub read_token: Option<Secret>,

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

    /// Command run (through the shell) when this node's role changes [default: none].
    #[arg(long, env = "KEEL_ROLE_CHANGE_HOOK", value_name = "CMD")]
    pub role_change_hook: Option<String>,

    /// Timeout for one HTTP request, including forwarding to the leader, in ms; at least 100
    /// [default: 10000].
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,

    /// Largest accepted HTTP request body in bytes; at least 1024 [default: 2162688 = 2 MiB + 64 KiB].
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Memory for the stores' page caches in MiB, the bulk of the node's memory: the datastore gets
    /// all of it but 16 MiB, which the two Raft stores share; at least 32 [default: 128].
    #[arg(long, env = "KEEL_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,

    #[command(flatten)]
    #[serde(default)]
    pub raft: RaftArgs,

    #[command(flatten)]
    #[serde(default)]
    pub replication: ReplicationArgs,

    #[command(flatten)]
    #[serde(default)]
    pub gitsync: GitSyncArgs,

    #[command(flatten)]
    #[serde(default)]
    pub sentinel: SentinelArgs,

    #[command(flatten)]
    #[serde(default)]
    pub redis: RedisArgs,
}

/// `[raft]`: the Raft timings.
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RaftArgs {
    /// Raft heartbeat interval in ms; at most half of --election-timeout-min-ms [default: 50].
    #[arg(long, env = "KEEL_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Lower bound of the randomised Raft election timeout in ms [default: 200].
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MIN_MS", value_name = "MS")]
    pub election_timeout_min_ms: Option<u64>,

    /// Upper bound of the randomised Raft election timeout in ms, above the minimum [default: 400].
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MAX_MS", value_name = "MS")]
    pub election_timeout_max_ms: Option<u64>,
}

/// `[replication]`: the datastore's replication.
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicationArgs {
    /// Datastore replication mode: async acknowledges writes on the primary, sync waits for --min-acks
    /// replicas [default: async].
    #[arg(id = "replication_mode", long = "replication-mode", env = "KEEL_REPLICATION_MODE", value_parser = ["async", "sync"])]
    pub mode: Option<String>,

    /// In sync mode, how many replicas must confirm a write before it is acknowledged [default: 1].
    #[arg(long, env = "KEEL_MIN_ACKS", value_name = "N")]
    pub min_acks: Option<u32>,

    /// On-disk format of this node's datastore: 3 appends each value over 512 bytes once to a values
    /// log beside the datastore file; 2 stores it once in page-sized chunks; 1 is what releases before
    /// format 2 read. Moving a datastore to a newer format is allowed, back is refused [default: 3
    /// for a new datastore, else the format it has].
    #[arg(long, env = "KEEL_DATASTORE_FORMAT", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub datastore_format: Option<u8>,
}

/// `[sentinel]`: the Sentinel-compatible discovery listener (flags `--sentinel-*`).
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct SentinelArgs {
    /// Listen address of the Redis Sentinel-compatible discovery listener, ip:port (Sentinel's own
    /// port is 26379); turns it on [default: none, off].
    #[arg(
        id = "sentinel_addr",
        long = "sentinel-addr",
        env = "KEEL_SENTINEL_ADDR",
        value_name = "IP:PORT"
    )]
    pub addr: Option<String>,

    /// The master name Sentinel clients ask for [default: keel].
    #[arg(
        id = "sentinel_name",
        long = "sentinel-name",
        env = "KEEL_SENTINEL_NAME",
        value_name = "NAME"
    )]
    pub name: Option<String>,

    /// Each member's Redis, `id=host:port` comma-separated, for a Redis that Keel does not start
    /// itself: discovery names the lease-holding primary's entry as the master [default: none, no
    /// master is named].
    #[arg(
        id = "sentinel_redis_addrs",
        long = "sentinel-redis-addrs",
        env = "KEEL_SENTINEL_REDIS_ADDRS",
        value_name = "ID=HOST:PORT,...",
        value_parser = Peers::parse_flag
    )]
    pub redis_addrs: Option<Peers>,
}

/// `[gitsync]`: Git Sync (flags `--gitsync-*`).
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct GitSyncArgs {
    /// Git repository URL to keep checked out; enables Git Sync [default: none, Git Sync off].
    #[arg(
        id = "gitsync_repo",
        long = "gitsync-repo",
        env = "KEEL_GITSYNC_REPO",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub repo: Option<String>,

    /// Branch Git Sync follows [default: main].
    #[arg(
        id = "gitsync_branch",
        long = "gitsync-branch",
        env = "KEEL_GITSYNC_BRANCH",
        value_name = "BRANCH"
    )]
    pub branch: Option<String>,

    /// Relative path inside the repository to materialise [default: empty, the whole repository].
    #[arg(
        id = "gitsync_path",
        long = "gitsync-path",
        env = "KEEL_GITSYNC_PATH",
        value_name = "PATH"
    )]
    pub path: Option<String>,

    /// Git Sync polling interval in ms [default: 60000].
    #[arg(
        id = "gitsync_interval_ms",
        long = "gitsync-interval-ms",
        env = "KEEL_GITSYNC_INTERVAL_MS",
        value_name = "MS"
    )]
    pub interval_ms: Option<u64>,

    /// `GET /replica` answers 503 when Git Sync is in conflict or its last successful sync is older
    /// than this (over the interval); `?max_gitsync_age_ms=` overrides it [default: none, not checked].
    #[arg(
        id = "gitsync_max_age_ms",
        long = "gitsync-max-age-ms",
        env = "KEEL_GITSYNC_MAX_AGE_MS",
        value_name = "MS"
    )]
    pub max_age_ms: Option<u64>,

    /// Secret verifying the X-Hub-Signature-256 of Git Sync webhooks [default: none, webhooks are
    /// rejected].
    #[arg(
        id = "gitsync_webhook_secret",
        long = "gitsync-webhook-secret",
        env = "KEEL_GITSYNC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<Secret>,

    /// Command run (`sh -c`) after every sync that changed the served commit, with
    /// `KEEL_GIT_COMMIT`, `KEEL_GIT_PATH` (the served tree) and `KEEL_NODE_ID` set; bounded by
    /// a 30 s timeout, like git-sync's exec hook, so the served application can reload.
    #[arg(
        id = "gitsync_hook",
        long = "gitsync-hook",
        env = "KEEL_GITSYNC_HOOK",
        value_name = "CMD"
    )]
    pub hook: Option<String>,

    /// Private key file (OpenSSH or PEM) for `ssh://` and `user@host:path` repositories [default: none].
    #[arg(
        id = "gitsync_ssh_key",
        long = "gitsync-ssh-key",
        env = "KEEL_GITSYNC_SSH_KEY",
        value_name = "FILE"
    )]
    pub ssh_key: Option<PathBuf>,

    /// known_hosts file that must list the ssh server's host key (`ssh-keyscan -p PORT HOST`)
    /// [default: none, libgit2 checks ~/.ssh/known_hosts].
    #[arg(
        id = "gitsync_known_hosts",
        long = "gitsync-known-hosts",
        env = "KEEL_GITSYNC_KNOWN_HOSTS",
        value_name = "FILE"
    )]
    pub known_hosts: Option<PathBuf>,
}

/// `[redis]`: managed Redis (flags `--redis-*`).
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisArgs {
    /// Run and supervise a `redis-server` on this node's API host at this port: the primary's is the
    /// master, every other node's replicates from it [default: none, no managed Redis].
    #[arg(id = "redis_port", long = "redis-port", env = "KEEL_REDIS_PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// The `redis-server` program to run (a path, or a name looked up in PATH) [default: redis-server].
    #[arg(
        id = "redis_server",
        long = "redis-server",
        env = "KEEL_REDIS_SERVER",
        value_name = "PATH"
    )]
    pub server: Option<PathBuf>,

    /// Extra redis.conf settings, included before Keel's own (port, bind, dir and replication settings
    /// are Keel's) [default: none].
    #[arg(id = "redis_conf", long = "redis-conf", env = "KEEL_REDIS_CONF", value_name = "FILE")]
    pub conf: Option<PathBuf>,
}
