//! The one error type of the crate.

use std::io;
use std::sync::Arc;

use crate::config::Redactor;

/// Everything that can go wrong in Git Sync. Messages are lowercase and never contain a secret: every message
/// that could quote a URL or server output passed through the config's redactor when the error was made.
///
/// `Clone` because one sync's outcome is handed to every caller that waited for it (see `GitSync::sync`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GitSyncError {
    /// Upstream is not a fast-forward of the materialised commit (sync), or an edit could not be applied on top
    /// of upstream (push). The previous tree is still served. HTTP 409.
    #[error("conflict: {reason}")]
    Conflict {
        reason: String,
        /// The commit still served.
        current: Option<String>,
        /// The upstream commit that could not be taken.
        upstream: Option<String>,
    },
    /// The remote could not be reached or the transfer failed; retried with back-off.
    #[error("network error: {0}")]
    Network(String),
    /// The remote refused our credentials (or we have none for it). Retrying will not help until the config is
    /// fixed, but the runner still retries with back-off in case the token is rotated upstream.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// An edit named a path that is absolute, contains `..`, or is a directory / below a file. HTTP 400.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// An edit deleted a file that does not exist. HTTP 404.
    #[error("no such file: {0}")]
    NotFound(String),
    /// The configuration cannot work (bad branch name, path missing in the repository, ...).
    #[error("invalid config: {0}")]
    Config(String),
    /// The remote refused the push although upstream had not moved: a server-side hook (such as
    /// `keel git-guard`) or a protected branch. Nothing was pushed; the message is the remote's.
    #[error("push rejected by the remote: {0}")]
    Rejected(String),
    /// libgit2 failed on the local repository.
    #[error("git: {0}")]
    Git(String),
    /// A file system operation on the data directory failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: Arc<io::Error>,
    },
}

impl GitSyncError {
    /// A short stable name for status, metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GitSyncError::Conflict { .. } => "conflict",
            GitSyncError::Network(_) => "network",
            GitSyncError::Auth(_) => "auth",
            GitSyncError::InvalidPath { .. } => "invalid_path",
            GitSyncError::NotFound(_) => "not_found",
            GitSyncError::Config(_) => "config",
            GitSyncError::Rejected(_) => "rejected",
            GitSyncError::Git(_) => "git",
            GitSyncError::Io { .. } => "io",
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        GitSyncError::Io {
            op: op.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn invalid_path(path: &str, reason: impl Into<String>) -> Self {
        GitSyncError::InvalidPath {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// An error of a local libgit2 operation, `op` being a verb phrase ("write tree").
    pub(crate) fn git(r: &Redactor, op: &str, e: git2::Error) -> Self {
        GitSyncError::Git(r.redact(&format!("{op}: {}", e.message())))
    }

    /// An error of talking to the remote: authentication, or else network (anything the transport reports,
    /// including "repository not found", is treated as upstream being unreachable).
    pub(crate) fn remote(r: &Redactor, op: &str, e: git2::Error) -> Self {
        let message = r.redact(&format!("{op}: {}", e.message()));
        let lower = e.message().to_ascii_lowercase();
        if e.code() == git2::ErrorCode::Auth
            || lower.contains("authentication")
            || lower.contains("401")
            || lower.contains("403")
            || lower.contains("credential")
        {
            GitSyncError::Auth(message)
        } else {
            GitSyncError::Network(message)
        }
    }
}

pub(crate) trait IoContext<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, GitSyncError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, GitSyncError> {
        self.map_err(|e| GitSyncError::io(op(), e))
    }
}
