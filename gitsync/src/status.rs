//! Status as data: what `GET /v1/gitsync` and `/v1/status` show. All times are unix milliseconds.

use serde::Serialize;

/// What the agent is doing / how its last sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// No sync has finished since the process started (a tree from before the restart may be served).
    Idle,
    /// A sync or an edit is running.
    Syncing,
    /// The last sync succeeded; `commit` is served.
    Ok,
    /// Upstream is not a fast-forward of `commit`; `commit` is still served until `accept_reset`.
    Conflict,
    /// The last sync failed (network, auth, ...); `commit` is still served.
    Error,
}

/// Why a sync ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// First sync of `run`.
    Startup,
    /// The poll timer.
    Interval,
    /// A retry after a failure (back-off).
    Retry,
    /// A verified webhook (on this or another node).
    Webhook,
    /// An operator (`keel gitsync sync`) or the node.
    Manual,
}

/// One commit, as shown in status and returned by edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitInfo {
    /// Full hex id.
    pub sha: String,
    /// Committer time, unix ms.
    pub time_ms: i64,
    /// First line of the message.
    pub summary: String,
}

/// The last webhook this node received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookRecord {
    pub at_ms: u64,
    pub event: Option<String>,
    pub delivery: Option<String>,
    /// `sync`, `ping`, `ignored`, `duplicate` or `unauthorized`.
    pub outcome: String,
    /// Why it was ignored or refused.
    pub reason: Option<String>,
}

/// The agent's state, counters and last results. Secrets never appear here (errors are redacted when made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GitSyncStatus {
    pub state: SyncState,
    /// Repository URL with passwords/tokens replaced by `***`.
    pub repo: String,
    pub branch: String,
    pub path: String,
    /// The commit whose tree is served (`current`), if any.
    pub commit: Option<String>,
    /// Its committer time, unix ms (commit age = now - this).
    pub commit_time_ms: Option<i64>,
    /// The upstream commit seen by the last fetch (differs from `commit` in `conflict`).
    pub upstream_commit: Option<String>,
    pub last_trigger: Option<Trigger>,
    /// When the last sync finished, whatever its result.
    pub last_sync_at_ms: Option<u64>,
    /// When a sync last succeeded.
    pub last_success_at_ms: Option<u64>,
    pub last_duration_ms: Option<u64>,
    /// The last error or conflict, redacted; cleared by a successful sync.
    pub last_error: Option<String>,
    /// `GitSyncError::kind()` of `last_error`.
    pub last_error_kind: Option<String>,
    /// Failures (not conflicts) in a row; drives the back-off.
    pub consecutive_failures: u32,
    /// When `run` will try next (timer or back-off), if it runs.
    pub next_attempt_at_ms: Option<u64>,
    pub last_webhook: Option<WebhookRecord>,
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    pub syncs_conflict: u64,
    pub edits_pushed: u64,
    /// Symlinks and submodules left out of the served tree by the last materialisation.
    pub skipped_entries: u64,
}

impl GitSyncStatus {
    /// A status with nothing synced yet: idle, no commit, every counter at zero.
    pub fn new(repo: String, branch: String, path: String) -> GitSyncStatus {
        GitSyncStatus {
            state: SyncState::Idle,
            repo,
            branch,
            path,
            commit: None,
            commit_time_ms: None,
            upstream_commit: None,
            last_trigger: None,
            last_sync_at_ms: None,
            last_success_at_ms: None,
            last_duration_ms: None,
            last_error: None,
            last_error_kind: None,
            consecutive_failures: 0,
            next_attempt_at_ms: None,
            last_webhook: None,
            syncs_ok: 0,
            syncs_failed: 0,
            syncs_conflict: 0,
            edits_pushed: 0,
            skipped_entries: 0,
        }
    }
}
