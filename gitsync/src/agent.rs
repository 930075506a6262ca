//! The agent: `GitSync` owns the data dir's `gitsync/` folder and serialises all git work on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use git2::{Oid, Repository, Signature};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{split_components, GitSyncConfig, Redactor};
use crate::error::GitSyncError;
use crate::git::{self, Edit, PushResult, CURRENT_REF};
use crate::status::{CommitInfo, GitSyncStatus, SyncState, Trigger, WebhookRecord};
use crate::tree::{self, Layout};
use crate::webhook::{self, DeliveryLog, WebhookVerdict};

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Upstream is the served commit.
    Unchanged,
    /// Nothing was served before; now upstream is.
    Initial,
    /// Upstream descends from the served commit and is now served.
    FastForward,
    /// Upstream rewrote history and `accept_reset` took it.
    Reset,
}

/// The result of one successful sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncOutcome {
    pub change: Change,
    /// The commit served now.
    pub commit: CommitInfo,
    /// The commit served before, if any.
    pub previous: Option<String>,
    /// Symlinks/submodules left out of the tree.
    pub skipped_entries: u64,
    /// True when this caller waited while another caller's sync (started after it asked) ran, and got that
    /// sync's outcome instead of fetching once more.
    pub coalesced: bool,
}

/// The pure part of a sync: what to do given the served commit and the fetched upstream commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Take(Change),
    Conflict,
}

pub(crate) fn decide(current: Option<Oid>, upstream: Oid, upstream_descends: bool, accept_reset: bool) -> Decision {
    match current {
        None => Decision::Take(Change::Initial),
        Some(c) if c == upstream => Decision::Take(Change::Unchanged),
        Some(_) if upstream_descends => Decision::Take(Change::FastForward),
        Some(_) if accept_reset => Decision::Take(Change::Reset),
        Some(_) => Decision::Conflict,
    }
}

/// Delay before the next attempt after `consecutive_failures` failures in a row: the interval when healthy;
/// after a failure, exponential from `min(interval, 1 s)`, capped at `interval × 8` clamped to [1 s, 5 min]. So
/// a blip is retried quickly, a long outage is polled at most every few intervals, and a webhook or a manual sync
/// (which bypass the delay) still recover at once. No jitter: nodes fail at different moments anyway.
pub fn retry_delay(interval: Duration, consecutive_failures: u32) -> Duration {
    if consecutive_failures == 0 {
        return interval;
    }
    let base = interval.min(Duration::from_secs(1));
    let cap = (interval.saturating_mul(8)).clamp(Duration::from_secs(1), Duration::from_secs(300));
    base.saturating_mul(1u32 << (consecutive_failures - 1).min(20)).min(cap)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Immutable parts, shared with the blocking jobs.
struct Shared {
    config: GitSyncConfig,
    redactor: Redactor,
    layout: Layout,
    /// `config.path` split into components.
    path: Vec<String>,
    /// Whether the first fetch may be depth 1.
    shallow: bool,
}

/// State guarded by the work lock (held for a whole sync or edit, across the `spawn_blocking`).
#[derive(Default)]
struct Work {
    /// The last sync that ran, for coalescing waiters.
    last: Option<Finished>,
    /// The commit served before the current one; its tree is kept by GC for readers still inside it.
    previous_tree: Option<String>,
}

struct Finished {
    ticket: u64,
    accept_reset: bool,
    result: Result<SyncOutcome, GitSyncError>,
}

/// The Git Sync agent of one node. Cheap to share (`Arc<GitSync>`); every method takes `&self`.
pub struct GitSync {
    shared: Arc<Shared>,
    /// Serialises every fetch, materialisation and push: never two at once on the repository. A tokio mutex
    /// because it is held across the await of the blocking job; waiters queue in FIFO order.
    work: Arc<tokio::sync::Mutex<Work>>,
    /// Number of syncs started; a caller compares it with the ticket of the last finished sync to know whether a
    /// sync began after it asked (then that sync's outcome is fresh enough and is shared).
    syncs_started: AtomicU64,
    /// Never held across an await or blocking git work.
    status: Arc<Mutex<GitSyncStatus>>,
    deliveries: Mutex<DeliveryLog>,
    kick: Notify,
    kick_trigger: Mutex<Option<Trigger>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave them inconsistent (plain field writes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GitSync {
    /// Opens (or creates) `<data_dir>/gitsync/`: the bare repository, the trees and `current`. Cleans what a crash
    /// can leave (temp trees, temp symlinks, stale git lock files) and checks the served tree against the object
    /// store, rebuilding it if a power loss damaged it. Blocking; call before serving.
    pub fn new(config: GitSyncConfig, data_dir: &Path) -> Result<GitSync, GitSyncError> {
        config.validate()?;
        let path = config.path_components()?;
        let redactor = config.redactor();
        let layout = Layout::new(data_dir);
        layout.prepare()?;
        git::remove_stale_locks(&layout.repo)
            .map_err(|e| GitSyncError::io(format!("remove stale locks in {}", layout.repo.display()), e))?;
        let repo = git::open_or_init(&layout.repo, &redactor)?;
        let shallow = git::transport_allows_shallow(&config.repo);

        let mut status = GitSyncStatus::new(config.redacted_repo(), config.branch.clone(), path.join("/"));
        if let Some(sha) = layout.current_sha() {
            status.commit = Some(sha.clone());
            if let Ok(info) = Oid::from_str(&sha)
                .map_err(|_| ())
                .and_then(|o| git::commit_info(&repo, o, &redactor).map_err(|_| ()))
            {
                status.commit_time_ms = Some(info.time_ms);
                // Not fatal: keep serving what is there; the next sync reports the problem (e.g. `path` now names
                // a directory the commit does not have) and serves a fresh tree when it can.
                if let Err(e) = repair_current(&repo, &layout, &path, &sha) {
                    tracing::warn!(error = %e, commit = %sha, "gitsync: could not check the served tree");
                    status.last_error_kind = Some(e.kind().into());
                    status.last_error = Some(e.to_string());
                }
            }
        }
        drop(repo);

        Ok(GitSync {
            shared: Arc::new(Shared {
                config,
                redactor,
                layout,
                path,
                shallow,
            }),
            work: Arc::new(tokio::sync::Mutex::new(Work::default())),
            syncs_started: AtomicU64::new(0),
            status: Arc::new(Mutex::new(status)),
            deliveries: Mutex::new(DeliveryLog::default()),
            kick: Notify::new(),
            kick_trigger: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &GitSyncConfig {
        &self.shared.config
    }

    /// A snapshot of the status.
    pub fn status(&self) -> GitSyncStatus {
        lock(&self.status).clone()
    }

    /// `<data_dir>/gitsync/current`. Readers that read several files should resolve it once
    /// ([`current_tree`](Self::current_tree)) and read below the resolved directory: every lookup through the
    /// symlink may land in a different commit. A resolved tree stays on disk for at least one more sync.
    pub fn current_link(&self) -> &Path {
        &self.shared.layout.current
    }

    /// The served tree resolved to `<data_dir>/gitsync/trees/<sha>`, if any.
    pub fn current_tree(&self) -> Option<PathBuf> {
        std::fs::canonicalize(&self.shared.layout.current).ok()
    }

    /// Asks [`run`](Self::run) to sync now (a webhook, an operator). Kicks during a sync coalesce into one more.
    pub fn kick(&self, trigger: Trigger) {
        *lock(&self.kick_trigger) = Some(trigger);
        self.kick.notify_one();
    }

    /// Verifies a webhook against the configured secret and branch (see [`webhook::verify_webhook`]) and records
    /// it in status. Does not sync: on `Sync` the node makes every node sync, this one included.
    pub fn handle_webhook(&self, headers: &[(String, String)], body: &[u8]) -> WebhookVerdict {
        let config = &self.shared.config;
        let verdict = {
            let mut seen = lock(&self.deliveries);
            webhook::verify_webhook(
                headers,
                body,
                config.webhook_secret.as_deref(),
                &config.branch,
                &mut seen,
            )
        };
        let reason = match &verdict {
            WebhookVerdict::Ignored { reason } | WebhookVerdict::Unauthorized { reason } => Some(reason.clone()),
            _ => None,
        };
        let record = WebhookRecord {
            at_ms: now_ms(),
            event: webhook::event_name(headers),
            delivery: webhook::delivery_id(headers),
            outcome: verdict.kind().to_string(),
            reason,
        };
        tracing::info!(outcome = %record.outcome, event = ?record.event, delivery = ?record.delivery, reason = ?record.reason, "gitsync: webhook");
        lock(&self.status).last_webhook = Some(record);
        verdict
    }

    /// Fetches the branch and serves its `path/` if upstream fast-forwards the served commit (or, with
    /// `accept_reset`, whatever upstream is). A non-fast-forward is `Err(Conflict)` and the served tree stays.
    ///
    /// Concurrency: one sync at a time. A caller that finds a sync running waits; if a sync that *started after
    /// it asked* has finished by the time it gets the lock, it returns that outcome (`coalesced: true`) instead of
    /// fetching again — so N concurrent callers cost at most two fetches, and every caller's answer reflects
    /// upstream as of some moment after its call. A caller asking `accept_reset` only reuses an outcome of a sync
    /// that also accepted a reset.
    pub async fn sync(&self, trigger: Trigger, accept_reset: bool) -> Result<SyncOutcome, GitSyncError> {
        let asked_after = self.syncs_started.load(Ordering::SeqCst);
        let mut work = self.work.clone().lock_owned().await;
        if let Some(last) = &work.last {
            if last.ticket > asked_after && (last.accept_reset || !accept_reset) {
                return last.result.clone().map(|o| SyncOutcome { coalesced: true, ..o });
            }
        }
        let ticket = self.syncs_started.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut s = lock(&self.status);
            s.state = SyncState::Syncing;
            s.last_trigger = Some(trigger);
        }
        let (shared, status) = (self.shared.clone(), self.status.clone());
        // The lock guard moves into the job, and the job records its own result: if the caller goes away (an
        // HTTP client disconnects) the sync still finishes, is recorded, and only then lets the next one start.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut upstream = None;
            let result = sync_blocking(&shared, &mut work.previous_tree, accept_reset, &mut upstream);
            record_sync(&status, trigger, &result, upstream, started.elapsed());
            work.last = Some(Finished {
                ticket,
                accept_reset,
                result: result.clone(),
            });
            result
        })
        .await
        .unwrap_or_else(|e| Err(GitSyncError::Git(format!("sync task failed: {e}"))))
    }
    /// Runs until `cancel`: a sync at start, then one every `interval` (or [`retry_delay`] after failures), and one
    /// right away whenever [`kick`](Self::kick)ed. A sync in progress when `cancel` fires is finished first.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut trigger = Trigger::Startup;
        while !cancel.is_cancelled() {
            // The outcome is recorded in status (and logged) by `sync`.
            let _ = self.sync(trigger, false).await;
            let failures = lock(&self.status).consecutive_failures;
            let delay = retry_delay(self.shared.config.interval, failures);
            lock(&self.status).next_attempt_at_ms = Some(now_ms() + delay.as_millis() as u64);
            trigger = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.kick.notified() => lock(&self.kick_trigger).take().unwrap_or(Trigger::Manual),
                _ = tokio::time::sleep(delay) => if failures > 0 { Trigger::Retry } else { Trigger::Interval },
            };
        }
        lock(&self.status).next_attempt_at_ms = None;
    }

    /// Commits one change to `path/rel_path` on top of the served commit — `contents` written, or the file
    /// deleted when `None` — with the message `keel: update <rel_path>` (`keel: delete <rel_path>`) and the
    /// trailer `Keel-Epoch: <epoch>`, and pushes it to the branch. If the push is rejected because upstream moved,
    /// fetches, re-applies the change on the new upstream commit (only if upstream did not touch the same file)
    /// and pushes once more; otherwise `Conflict`. The pushed commit is then served. Writing what is already
    /// there pushes nothing and returns the served commit.
    ///
    /// The caller checks the lease: it passes `epoch` only while it holds it.
    pub async fn write_file(
        &self,
        rel_path: &str,
        contents: Option<&[u8]>,
        epoch: u64,
        author: (&str, &str),
    ) -> Result<CommitInfo, GitSyncError> {
        if rel_path.starts_with('/') {
            return Err(GitSyncError::invalid_path(rel_path, "absolute paths are not allowed"));
        }
        let components = split_components(rel_path).map_err(|reason| GitSyncError::invalid_path(rel_path, reason))?;
        let mut full = self.shared.path.clone();
        full.extend(components);
        // `Signature` is not `Send`: take what we need and drop it before the first await, so
        // this future can run on a multi-threaded runtime (axum handlers).
        let when = Signature::now(author.0, author.1)
            .map_err(|e| GitSyncError::Config(format!("invalid author: {}", e.message())))?
            .when();
        let verb = if contents.is_some() { "update" } else { "delete" };
        let message = format!("keel: {verb} {rel_path}\n\nKeel-Epoch: {epoch}\n");
        let edit = Edit {
            display_path: rel_path.to_string(),
            path: full,
            contents: contents.map(<[u8]>::to_vec),
            author: (author.0.to_string(), author.1.to_string()),
            time: when,
            message,
        };

        let mut work = self.work.clone().lock_owned().await;
        let (shared, status) = (self.shared.clone(), self.status.clone());
        let rel_path = rel_path.to_string();
        // As in `sync`: the job owns the lock and records its result, so a push whose caller went away is still
        // served and counted.
        tokio::task::spawn_blocking(move || {
            let result = edit_blocking(&shared, &mut work.previous_tree, &edit);
            match &result {
                Ok((info, pushed)) => {
                    let mut s = lock(&status);
                    s.commit = Some(info.sha.clone());
                    s.commit_time_ms = Some(info.time_ms);
                    s.upstream_commit = Some(info.sha.clone());
                    if *pushed {
                        s.edits_pushed += 1;
                        tracing::info!(path = %rel_path, epoch, commit = %info.sha, "gitsync: pushed edit");
                    }
                }
                Err(e) => tracing::warn!(path = %rel_path, epoch, error = %e, "gitsync: edit not pushed"),
            }
            result.map(|(info, _)| info)
        })
        .await
        .unwrap_or_else(|e| Err(GitSyncError::Git(format!("edit task failed: {e}"))))
    }
}

/// Writes one sync's result into status (and the log: this is where a failed sync is handled).
fn record_sync(
    status: &Mutex<GitSyncStatus>,
    trigger: Trigger,
    result: &Result<SyncOutcome, GitSyncError>,
    upstream: Option<String>,
    took: Duration,
) {
    let mut s = lock(status);
    let now = now_ms();
    s.last_sync_at_ms = Some(now);
    s.last_duration_ms = Some(took.as_millis() as u64);
    if upstream.is_some() {
        s.upstream_commit = upstream;
    }
    match result {
        Ok(o) => {
            if o.change != Change::Unchanged {
                tracing::info!(?trigger, change = ?o.change, commit = %o.commit.sha, previous = ?o.previous, "gitsync: serving new commit");
            }
            s.state = SyncState::Ok;
            s.commit = Some(o.commit.sha.clone());
            s.commit_time_ms = Some(o.commit.time_ms);
            s.last_success_at_ms = Some(now);
            s.last_error = None;
            s.last_error_kind = None;
            s.consecutive_failures = 0;
            s.syncs_ok += 1;
            if o.change != Change::Unchanged {
                s.skipped_entries = o.skipped_entries;
            }
        }
        Err(e @ GitSyncError::Conflict { .. }) => {
            tracing::warn!(?trigger, error = %e, "gitsync: upstream conflict, keeping the served commit");
            s.state = SyncState::Conflict;
            s.last_error = Some(e.to_string());
            s.last_error_kind = Some(e.kind().into());
            s.consecutive_failures = 0;
            s.syncs_conflict += 1;
        }
        Err(e) => {
            tracing::warn!(?trigger, error = %e, "gitsync: sync failed, keeping the served commit");
            s.state = SyncState::Error;
            s.last_error = Some(e.to_string());
            s.last_error_kind = Some(e.kind().into());
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.syncs_failed += 1;
        }
    }
}

/// At start-up: if the served tree is missing or does not match its commit (power loss), rebuild it.
fn repair_current(repo: &Repository, layout: &Layout, path: &[String], sha: &str) -> Result<(), GitSyncError> {
    let Ok(oid) = Oid::from_str(sha) else { return Ok(()) };
    let dir = layout.tree_dir(sha);
    if dir.is_dir() && tree::verify(repo, oid, path, &dir)? {
        return Ok(());
    }
    tracing::warn!(
        commit = sha,
        "gitsync: served tree is missing or damaged, rebuilding it"
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| GitSyncError::io(format!("remove {}", dir.display()), e))?;
    }
    tree::materialise(repo, layout, oid, path)?;
    layout.swap_current(sha)
}

/// Serves `commit`: materialise, swap `current`, record it in the repository, collect old trees.
fn serve(
    repo: &Repository,
    shared: &Shared,
    previous_tree: &mut Option<String>,
    commit: Oid,
    before: Option<Oid>,
) -> Result<u64, GitSyncError> {
    let sha = commit.to_string();
    let skipped = tree::materialise(repo, &shared.layout, commit, &shared.path)?;
    shared.layout.swap_current(&sha)?;
    repo.reference(CURRENT_REF, commit, true, "keel: serve")
        .map_err(|e| GitSyncError::git(&shared.redactor, "record served commit", e))?;
    if let Some(before) = before.filter(|b| *b != commit) {
        *previous_tree = Some(before.to_string());
    }
    if let Err(e) = shared.layout.gc(&sha, previous_tree.as_deref()) {
        // Serving succeeded; a tree left behind is collected next time.
        tracing::warn!(error = %e, "gitsync: could not remove old trees");
    }
    Ok(skipped)
}

fn served_commit(layout: &Layout) -> Option<Oid> {
    layout.current_sha().and_then(|s| Oid::from_str(&s).ok())
}

fn sync_blocking(
    shared: &Shared,
    previous_tree: &mut Option<String>,
    accept_reset: bool,
    upstream_seen: &mut Option<String>,
) -> Result<SyncOutcome, GitSyncError> {
    let r = &shared.redactor;
    let repo = git::open_or_init(&shared.layout.repo, r)?;
    let current = served_commit(&shared.layout);
    // Depth 1 only for the first fetch: later fetches must connect the new tip to the served commit so the
    // fast-forward check can walk from one to the other (with depth 0 the server sends what is missing).
    let depth = if current.is_none() && shared.shallow { 1 } else { 0 };
    let upstream = git::fetch(&repo, &shared.config, r, depth)?;
    *upstream_seen = Some(upstream.to_string());
    // An error here (e.g. the served commit is not in the object store) counts as "not a descendant": a
    // conflict the operator resolves, never a silent reset.
    let descends = current.is_some_and(|c| c != upstream && repo.graph_descendant_of(upstream, c).unwrap_or(false));
    let change = match decide(current, upstream, descends, accept_reset) {
        Decision::Conflict => {
            let cur = current.map(|c| c.to_string()).unwrap_or_default();
            return Err(GitSyncError::Conflict {
                reason: format!(
                    "upstream {} is at {upstream}, which does not descend from the served commit {cur} \
                     (history rewritten or force-pushed); sync with accept_reset to take it",
                    shared.config.branch
                ),
                current: current.map(|c| c.to_string()),
                upstream: Some(upstream.to_string()),
            });
        }
        Decision::Take(change) => change,
    };
    let mut skipped = 0;
    let tree_present = shared.layout.tree_dir(&upstream.to_string()).is_dir();
    if change != Change::Unchanged || !tree_present {
        skipped = serve(&repo, shared, previous_tree, upstream, current)?;
    }
    Ok(SyncOutcome {
        change,
        commit: git::commit_info(&repo, upstream, r)?,
        previous: current.filter(|c| *c != upstream).map(|c| c.to_string()),
        skipped_entries: skipped,
        coalesced: false,
    })
}

/// Returns the commit now served and whether something was pushed.
fn edit_blocking(
    shared: &Shared,
    previous_tree: &mut Option<String>,
    edit: &Edit,
) -> Result<(CommitInfo, bool), GitSyncError> {
    let r = &shared.redactor;
    let repo = git::open_or_init(&shared.layout.repo, r)?;
    let base = match served_commit(&shared.layout) {
        Some(c) => c,
        None => {
            let mut upstream = None;
            let outcome = sync_blocking(shared, previous_tree, false, &mut upstream)?;
            Oid::from_str(&outcome.commit.sha).map_err(|e| GitSyncError::Git(e.message().into()))?
        }
    };
    let author = Signature::new(&edit.author.0, &edit.author.1, &edit.time)
        .map_err(|e| GitSyncError::Config(format!("invalid author: {}", e.message())))?;
    let make = |parent: Oid| git::commit_change(&repo, parent, edit, &author, r);
    let finish = |commit: Oid, previous_tree: &mut Option<String>| -> Result<(CommitInfo, bool), GitSyncError> {
        // The push moved upstream to `commit`; record it as fetched too, then serve it.
        repo.reference(&git::tracking_ref(&shared.config.branch), commit, true, "keel: pushed")
            .map_err(|e| GitSyncError::git(r, "update tracking ref", e))?;
        serve(&repo, shared, previous_tree, commit, served_commit(&shared.layout))?;
        Ok((git::commit_info(&repo, commit, r)?, true))
    };

    let Some(first) = make(base)? else {
        return Ok((git::commit_info(&repo, base, r)?, false));
    };
    let rejection = match git::push(&repo, &shared.config, r, first)? {
        PushResult::Pushed => return finish(first, previous_tree),
        PushResult::Rejected(message) => message,
    };
    tracing::info!(path = %edit.display_path, reason = %rejection, "gitsync: push rejected, fetching and retrying once");

    let upstream = git::fetch(&repo, &shared.config, r, 0)?;
    let conflict = |reason: String| GitSyncError::Conflict {
        reason,
        current: Some(base.to_string()),
        upstream: Some(upstream.to_string()),
    };
    if upstream == base {
        // Upstream did not move: the server refuses the push for another reason (protected branch, hook).
        return Err(GitSyncError::Rejected(rejection));
    }
    if !repo.graph_descendant_of(upstream, base).unwrap_or(false) {
        return Err(conflict(format!(
            "upstream {} was rewritten since {base}; accept the new history before editing",
            shared.config.branch
        )));
    }
    if git::entry_at(&repo, base, &edit.path)? != git::entry_at(&repo, upstream, &edit.path)? {
        return Err(conflict(format!("upstream changed {} since {base}", edit.display_path)));
    }
    let Some(second) = make(upstream)? else {
        return finish(upstream, previous_tree).map(|(i, _)| (i, false));
    };
    match git::push(&repo, &shared.config, r, second)? {
        PushResult::Pushed => finish(second, previous_tree),
        PushResult::Rejected(message) => Err(conflict(format!("push rejected twice: {message}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let a = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let b = Oid::from_str("2222222222222222222222222222222222222222").unwrap();
        assert_eq!(decide(None, a, false, false), Decision::Take(Change::Initial));
        assert_eq!(decide(Some(a), a, false, false), Decision::Take(Change::Unchanged));
        assert_eq!(decide(Some(a), b, true, false), Decision::Take(Change::FastForward));
        assert_eq!(decide(Some(a), b, false, false), Decision::Conflict);
        assert_eq!(decide(Some(a), b, false, true), Decision::Take(Change::Reset));
    }

    #[test]
    fn backoff() {
        let minute = Duration::from_secs(60);
        assert_eq!(retry_delay(minute, 0), minute);
        assert_eq!(retry_delay(minute, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(minute, 3), Duration::from_secs(4));
        assert_eq!(retry_delay(minute, 30), Duration::from_secs(300));
        let fast = Duration::from_millis(100);
        assert_eq!(retry_delay(fast, 1), Duration::from_millis(100));
        assert_eq!(retry_delay(fast, 10), Duration::from_secs(1));
    }
}
