//! The TOML file named by `--config` ([`FileConfig`]): the same settings as the flags, in sections.

use super::*;

/// The TOML file. Keys mirror the flags; unknown keys are an error.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) id: Option<u64>,
    pub(crate) api_addr: Option<String>,
    pub(crate) peer_addr: Option<String>,
    pub(crate) advertise_api_addr: Option<String>,
    pub(crate) advertise_peer_addr: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) peers: Option<FilePeers>,
    pub(crate) join: Option<String>,
    pub(crate) cluster_token: Option<Secret>,
    pub(crate) admin_token: Option<Secret>,
    pub(crate) client_token: Option<Secret>,
    pub(crate) read_token: Option<Secret>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) peer_ca: Option<PathBuf>,
    pub(crate) log_format: Option<String>,
    pub(crate) request_timeout_ms: Option<u64>,
    pub(crate) max_body_bytes: Option<usize>,
    pub(crate) cache_mb: Option<u64>,
    pub(crate) role_change_hook: Option<String>,
    #[serde(default)]
    pub(crate) raft: FileRaft,
    #[serde(default)]
    pub(crate) replication: FileReplication,
    #[serde(default)]
    pub(crate) gitsync: FileGitSync,
}

/// `peers = "1=a:7201,2=b:7201"` or `peers = { 1 = "a:7201", 2 = "b:7201" }`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`peers` must be a string like \"1=host:port,2=host:port\" or a table like { 1 = \"host:port\" }"
)]
pub(crate) enum FilePeers {
    List(String),
    // TOML keys are strings; ids are parsed (and checked) by `peers_from_table`.
    Table(BTreeMap<String, String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRaft {
    pub(crate) heartbeat_ms: Option<u64>,
    pub(crate) election_timeout_min_ms: Option<u64>,
    pub(crate) election_timeout_max_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileReplication {
    pub(crate) mode: Option<String>,
    pub(crate) min_acks: Option<u32>,
    pub(crate) datastore_format: Option<u8>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileGitSync {
    pub(crate) repo: Option<String>,
    pub(crate) branch: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) interval_ms: Option<u64>,
    pub(crate) max_age_ms: Option<u64>,
    pub(crate) webhook_secret: Option<Secret>,
    pub(crate) hook: Option<String>,
    pub(crate) ssh_key: Option<PathBuf>,
    pub(crate) known_hosts: Option<PathBuf>,
}

impl FileConfig {
    pub(crate) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    /// The API tokens the file sets.
    pub(crate) fn tokens(&self) -> ApiTokens {
        ApiTokens {
            admin: self.admin_token.clone(),
            client: self.client_token.clone(),
            read: self.read_token.clone(),
        }
    }

    pub(crate) fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}
