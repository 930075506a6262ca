//! Keel's Git Sync agent (library part; the node wires HTTP and the cluster-wide webhook fan-out).
//!
//! Every node keeps one branch of a shared Git repository checked out: [`GitSync`] fetches the branch (depth 1
//! the first time where the transport allows), checks that upstream fast-forwards the served commit, writes
//! `path/` of the new commit to `<data_dir>/gitsync/trees/<sha>/` and swaps the symlink
//! `<data_dir>/gitsync/current` to it with one rename, so readers see one commit or the next, never a mix.
//! A rewritten upstream is a [`GitSyncError::Conflict`] until an operator syncs with `accept_reset`.
//! [`GitSync::run`] polls on a timer, syncs at once when kicked (webhook), and backs off on errors.
//! [`GitSync::write_file`] commits an edit (trailer `Keel-Epoch: N`) and pushes it, retrying once on a race.
//! [`verify_webhook`] authenticates GitHub / Gitea / Forgejo / GitLab webhooks (pure function).
//!
//! **Owns**: `<data_dir>/gitsync/` (the bare repository `repo.git`, `trees/`, `current`) and the agent's state
//! and counters ([`GitSyncStatus`]). Key types: [`GitSync`], [`GitSyncConfig`] (its `Debug`, the status and every
//! error redact secrets), [`GitSyncError`], [`SyncOutcome`], [`WebhookVerdict`].
//!
//! **Must not touch**: it depends on no other Keel crate and knows nothing of Raft, the datastore, roles or leases
//! (the caller checks its lease and passes the epoch for the commit trailer), nor of HTTP servers: the node serves
//! the status and the webhook endpoint and fans a delivery out to the other members; this crate only judges a
//! delivery's headers and body. Its only network traffic is Git's own transports (libgit2).
//!
//! See `DESIGN.md` next to this crate for the data flow, locking and crash safety.

mod agent;
mod config;
mod error;
mod git;
mod known_hosts;
mod status;
mod tree;
mod webhook;

pub use agent::{retry_delay, Change, GitSync, SyncOutcome};
pub use config::{redact_url, GitSyncConfig};
pub use error::GitSyncError;
pub use status::{CommitInfo, GitSyncStatus, SyncState, Trigger, WebhookRecord};
pub use webhook::{verify_webhook, DeliveryLog, WebhookVerdict};

use std::time::Duration;

/// Sets libgit2's process-wide socket timeouts (connect, and each read/write), so a remote that accepts the
/// connection and then sends nothing cannot hold the agent's work lock forever. libgit2 has no per-operation
/// timeout; the progress-callback deadline only fires while data still arrives.
///
/// # Safety
/// Writes a libgit2 global without synchronisation: call it once from `main` before starting the async
/// runtime or any other thread.
pub unsafe fn set_network_timeouts(connect: Duration, io: Duration) -> Result<(), GitSyncError> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let err = |e: git2::Error| GitSyncError::Config(format!("set libgit2 timeouts: {}", e.message()));
    // SAFETY: forwarded to the caller (no other thread is running).
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect)).map_err(err)?;
        git2::opts::set_server_timeout_in_milliseconds(ms(io)).map_err(err)?;
    }
    Ok(())
}
