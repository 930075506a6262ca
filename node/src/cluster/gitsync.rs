//! Git Sync on this node: build the agent from the config, kick the other members' agents over
//! the peer port, and run `--gitsync-hook` after every sync that changed the served commit.

use std::sync::Arc;
use std::time::Duration;

use keel_gitsync::{GitSync, GitSyncError, Trigger};
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

/// Ask every other member to sync now (best effort, concurrently, bounded).
pub async fn kick_all(node: &Node, trigger: &'static str) {
    let mut set = tokio::task::JoinSet::new();
    for (id, n) in node.metrics().membership_config.membership().nodes() {
        if *id == node.id {
            continue;
        }
        let (id, addr, peers) = (*id, n.addr.clone(), node.peers.clone());
        set.spawn(async move {
            let r: Result<(), _> = peers
                .call(Some(id), &addr, "/peer/gitsync/kick", &trigger, Duration::from_secs(2))
                .await;
            if let Err(e) = r {
                debug!(peer = id, error = %e, "kick Git Sync on a peer");
            }
        });
    }
    while set.join_next().await.is_some() {}
}

pub fn kick_local(node: &Node, trigger: &str) {
    if let Some(g) = &node.gitsync {
        g.kick(if trigger == "manual" {
            Trigger::Manual
        } else {
            Trigger::Webhook
        });
    }
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
