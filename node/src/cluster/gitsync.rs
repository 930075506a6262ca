//! Git Sync on this node: build the agent from the config, push an edit under the lease (checked
//! before the commit and again after the push, like a datastore write in [`crate::cluster::write`]),
//! kick the other members' agents over the peer port, and run `--gitsync-hook` after every sync that
//! changed the served commit.

use std::sync::Arc;
use std::time::Duration;

use keel_gitsync::{CommitInfo, GitSync, GitSyncError, Trigger};
use serde_json::json;
use tracing::{debug, info};

use crate::state::Node;

/// Build the agent from the node's config (blocking: opens or creates the local repository).
/// The token for https remotes comes from `KEEL_GITSYNC_TOKEN` or the file named by
/// `KEEL_GITSYNC_TOKEN_FILE`; an ssh key and known_hosts file from `--gitsync-ssh-key` / `--gitsync-known-hosts`.
pub fn open(config: &crate::config::Config) -> Result<Option<Arc<GitSync>>, GitSyncError> {
    let Some(g) = &config.gitsync else { return Ok(None) };
    let mut c = g.agent.clone();
    c.token = match (
        std::env::var("KEEL_GITSYNC_TOKEN"),
        std::env::var("KEEL_GITSYNC_TOKEN_FILE"),
    ) {
        (Ok(t), _) if !t.is_empty() => Some(t),
        (_, Ok(f)) if !f.is_empty() => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| GitSyncError::Config(format!("read KEEL_GITSYNC_TOKEN_FILE {f}: {e}")))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    GitSync::new(c, &config.data_dir).map(|g| Some(Arc::new(g)))
}

/// Why an edit pushed by this primary is not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// This node is named primary but holds no valid lease: nothing was committed or pushed.
    #[error("this node holds no valid lease: it may not push edits")]
    NoLease,
    /// Pushed, but the lease lapsed meanwhile (a pause, a partition): another node may already be
    /// primary, so the push cannot be vouched for. The commit is on the branch unless a server-side
    /// guard refused it; the client must read the branch back.
    #[error("the lease for epoch {epoch} lapsed while commit {commit} was being pushed")]
    LeaseLapsed { epoch: u64, commit: String },
    /// The remote refused the push and the lease lapsed meanwhile: this node was deposed and a
    /// server-side guard (`keel git-guard`) kept its stale commit off the branch.
    #[error("the remote refused the push of an epoch {epoch} commit after this node lost its lease: {message}")]
    Deposed { epoch: u64, message: String },
    /// The agent failed (conflict, bad path, remote unreachable, refused while still primary, ...).
    #[error(transparent)]
    Git(#[from] GitSyncError),
}

/// An edit pushed and acknowledged by this primary.
#[derive(Debug)]
pub struct Edited {
    pub epoch: u64,
    pub commit: CommitInfo,
}

/// Commit and push one edit as the primary: only under a valid lease of the current epoch (the
/// commit carries `Keel-Epoch: <epoch>`), and the lease is checked *again* once the push is done,
/// so a primary paused mid-push whose lease ran out never answers success.
pub async fn edit(node: &Node, g: &GitSync, path: &str, contents: Option<&[u8]>) -> Result<Edited, EditError> {
    let Some(epoch) = crate::cluster::write::wait_write_epoch(node).await else {
        return Err(EditError::NoLease);
    };
    let author = ("keel".to_string(), format!("keel@node-{}", node.id));
    let pushed = g.write_file(path, contents, epoch, (&author.0, &author.1)).await;
    let still_holding = crate::cluster::write::write_epoch(node) == Some(epoch);
    match pushed {
        Ok(commit) if still_holding => Ok(Edited { epoch, commit }),
        Ok(commit) => Err(EditError::LeaseLapsed {
            epoch,
            commit: commit.sha,
        }),
        Err(GitSyncError::Rejected(message)) if !still_holding => Err(EditError::Deposed { epoch, message }),
        Err(e) => Err(EditError::Git(e)),
    }
}

/// What a kick asks the other members' agents to do. On the wire (`/peer/gitsync/kick`) it is a
/// string, the form the previous release sends and reads (`"manual"`, `"webhook"`); a node that
/// does not know a value syncs as for a webhook, without accepting a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// An operator's `POST /v1/gitsync/sync`.
    Manual,
    /// The same with `accept_reset`: take a rewritten upstream history on every node.
    ManualAcceptReset,
    /// A verified webhook, or an edit pushed by the primary.
    Webhook,
}

impl Kick {
    pub fn wire(self) -> &'static str {
        match self {
            Kick::Manual => "manual",
            Kick::ManualAcceptReset => "manual+accept_reset",
            Kick::Webhook => "webhook",
        }
    }

    pub fn from_wire(s: &str) -> Kick {
        match s {
            "manual" => Kick::Manual,
            "manual+accept_reset" => Kick::ManualAcceptReset,
            _ => Kick::Webhook,
        }
    }
}

/// Ask every other member to sync now (best effort, concurrently, bounded).
pub async fn kick_all(node: &Node, kick: Kick) {
    let mut set = tokio::task::JoinSet::new();
    for (id, n) in node.metrics().membership_config.membership().nodes() {
        if *id == node.id {
            continue;
        }
        let (id, addr, peers) = (*id, n.addr.clone(), node.peers.clone());
        set.spawn(async move {
            let r: Result<(), _> = peers
                .call(
                    Some(id),
                    &addr,
                    "/peer/gitsync/kick",
                    &kick.wire(),
                    Duration::from_secs(2),
                )
                .await;
            if let Err(e) = r {
                debug!(peer = id, error = %e, "kick Git Sync on a peer");
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// A kick from another member. With `accept_reset` the sync runs here and now (the agent's timer
/// loop never accepts a reset); otherwise the agent's loop is woken.
pub fn kick_local(node: &Node, kick: Kick) {
    let Some(g) = &node.gitsync else { return };
    match kick {
        Kick::Manual => g.kick(Trigger::Manual),
        Kick::Webhook => g.kick(Trigger::Webhook),
        Kick::ManualAcceptReset => {
            let g = g.clone();
            // The outcome is recorded in the agent's status (and logged) by `sync`.
            tokio::spawn(async move { g.sync(Trigger::Manual, true).await });
        }
    }
}

/// Why this node's Git Sync is not fresh enough to serve reads (`GET /replica` with a max age).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// Upstream was rewritten and the node keeps its previous commit until a reset is accepted.
    #[error("Git Sync is in conflict (serving {commit}): {reason}")]
    Conflict { commit: String, reason: String },
    /// No sync has succeeded since the process started.
    #[error("Git Sync has not synced successfully since this node started")]
    NeverSynced,
    /// The last successful sync is too old.
    #[error("last successful Git Sync {age_ms} ms ago, over {max_age_ms} ms")]
    TooOld { age_ms: u64, max_age_ms: u64 },
}

impl Stale {
    /// The probe's 503 code.
    pub fn code(&self) -> &'static str {
        match self {
            Stale::Conflict { .. } => "gitsync_conflict",
            Stale::NeverSynced | Stale::TooOld { .. } => "gitsync_stale",
        }
    }
}

/// Whether Git Sync's `status` at `now_ms` is fresh: not in conflict, and a sync succeeded within
/// `max_age_ms`. A failing sync (remote down) keeps the node fresh until the age runs out: the
/// served commit is still the newest one it could know.
pub fn freshness(status: &keel_gitsync::GitSyncStatus, max_age_ms: u64, now_ms: u64) -> Result<(), Stale> {
    if status.state == keel_gitsync::SyncState::Conflict {
        return Err(Stale::Conflict {
            commit: status.commit.clone().unwrap_or_else(|| "nothing".into()),
            reason: status.last_error.clone().unwrap_or_default(),
        });
    }
    let last = status.last_success_at_ms.ok_or(Stale::NeverSynced)?;
    let age_ms = now_ms.saturating_sub(last);
    if age_ms > max_age_ms {
        return Err(Stale::TooOld { age_ms, max_age_ms });
    }
    Ok(())
}

/// Outcome of the last on-sync hook run, shown in `GET /v1/gitsync` as `hook`.
static LAST_HOOK: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// Longest an on-sync hook may run before it is killed.
const SYNC_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `--gitsync-hook` after every sync that changed the served commit, one at a time.
pub async fn sync_hook_task(node: Arc<Node>, g: Arc<GitSync>, cmd: String) {
    let mut last = g.status().commit.clone();
    let mut tick = crate::util::Ticker::new(Duration::from_millis(100), node.cancel.clone());
    while tick.tick().await {
        let now = g.status().commit.clone();
        let Some(commit) = now.clone().filter(|_| now != last) else {
            continue;
        };
        last = now;
        let path = g.current_tree().map(|p| p.display().to_string()).unwrap_or_default();
        let started = std::time::Instant::now();
        let mut child = match tokio::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("KEEL_GIT_COMMIT", &commit)
            .env("KEEL_GIT_PATH", &path)
            .env("KEEL_NODE_ID", node.id.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gitsync hook: could not start");
                continue;
            }
        };
        let mut stderr = child.stderr.take();
        let outcome = match tokio::time::timeout(SYNC_HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(s)) => json!({"exit_code": s.code(), "timed_out": false}),
            Ok(Err(e)) => json!({"error": e.to_string(), "timed_out": false}),
            Err(_) => {
                let _ = child.kill().await;
                json!({"timed_out": true})
            }
        };
        let mut err = Vec::new();
        if let Some(s) = stderr.as_mut() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut err)).await;
        }
        let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(512)..]).into_owned();
        let mut v = outcome;
        v["commit"] = json!(commit);
        v["duration_ms"] = json!(started.elapsed().as_millis() as u64);
        v["stderr_tail"] = json!(tail);
        v["at_ms"] = json!(crate::util::unix_ms());
        if v["exit_code"] == json!(0) {
            info!(commit = %commit, "gitsync hook ran");
        } else {
            tracing::warn!(commit = %commit, outcome = %v, "gitsync hook failed");
        }
        *LAST_HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }
}

/// Outcome of the last on-sync hook run, if any ran since the process started.
pub fn last_hook() -> Option<serde_json::Value> {
    LAST_HOOK.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_gitsync::{GitSyncStatus, SyncState};

    fn status(state: SyncState, last_success_at_ms: Option<u64>) -> GitSyncStatus {
        let mut s = GitSyncStatus::new("file:///r".into(), "main".into(), String::new());
        s.state = state;
        s.last_success_at_ms = last_success_at_ms;
        s.commit = Some("abc".into());
        s.last_error = Some("rewritten".into());
        s
    }

    #[test]
    fn freshness_cases() {
        let now = 1_000_000;
        let cases: &[(SyncState, Option<u64>, u64, Option<&str>)] = &[
            (SyncState::Ok, Some(now - 100), 1000, None),
            (SyncState::Ok, Some(now - 1000), 1000, None),
            (SyncState::Ok, Some(now - 1001), 1000, Some("gitsync_stale")),
            // A failing remote keeps the node in rotation until the age runs out.
            (SyncState::Error, Some(now - 500), 1000, None),
            (SyncState::Error, Some(now - 5000), 1000, Some("gitsync_stale")),
            (SyncState::Syncing, None, 1000, Some("gitsync_stale")),
            // A conflict takes it out at once, however recent the last success.
            (SyncState::Conflict, Some(now), 1000, Some("gitsync_conflict")),
            // A clock that stepped back does not make a sync look older.
            (SyncState::Ok, Some(now + 50), 1000, None),
        ];
        for (state, last, max, want) in cases {
            let got = freshness(&status(*state, *last), *max, now);
            assert_eq!(
                got.as_ref().err().map(Stale::code),
                *want,
                "{state:?} {last:?} {max}: {got:?}"
            );
        }
        let e = freshness(&status(SyncState::Conflict, None), 10, now).unwrap_err();
        assert!(
            e.to_string().contains("serving abc") && e.to_string().contains("rewritten"),
            "{e}"
        );
    }
}
