//! Role-change hooks: run an operator-configured shell command every time this node's role changes
//! (the equivalent of Patroni's `on_role_change` callback).
//!
//! **What runs.** `sh -c <command>`, with the node's environment inherited plus
//! `KEEL_ROLE` (the new role), `KEEL_PREVIOUS_ROLE`, `KEEL_EPOCH` (decimal) and `KEEL_NODE_ID`
//! (decimal). stdin is `/dev/null`; stdout is logged line by line at `debug`; the last
//! [`STDERR_TAIL_BYTES`] bytes of stderr are kept in the [`HookOutcome`] (and logged when the hook
//! fails). On Unix the hook runs in its own process group, so a timeout kill also reaches anything
//! it started in the foreground or background.
//!
//! **Ordering.** [`HookRunner::role_changed`] never blocks: it appends to a queue that a single
//! worker task drains, so hooks run one at a time, in the order the changes were queued, and a slow
//! hook delays (never reorders or overlaps) the next one. Role changes are rare, but the queue is
//! capped at [`MAX_PENDING`] entries: beyond that the *oldest* pending change is dropped with a
//! warning (the newest state is the one that matters).
//!
//! **Timeout.** Each run is bounded by the configured timeout. On expiry the hook's process group is
//! sent SIGKILL, the child is killed and reaped, and the outcome is marked `timed_out`. Output pipes
//! still held open by escaped grandchildren are abandoned after a short grace period
//! ([`PIPE_DRAIN_GRACE`]), so a run never takes much longer than `timeout + PIPE_DRAIN_GRACE`.
//! A run counts as a failure unless the hook exits with status 0 within the timeout; failures are
//! logged at `warn` and do not stop later runs.
//!
//! **Shutdown.** When the cancellation token fires, the hook currently running (if any) is allowed
//! to finish, bounded by its timeout; pending changes are then dropped with a log line, later calls
//! to `role_changed` are ignored, and the worker exits ([`HookRunner::wait_stopped`] resolves).
//!
//! With no command configured every call is a no-op and no task is spawned.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most role changes kept waiting; queuing more drops the oldest pending one.
pub const MAX_PENDING: usize = 1000;
/// How much of the end of a hook's stderr is kept in its [`HookOutcome`].
pub const STDERR_TAIL_BYTES: usize = 512;
/// After the hook process has exited (or been killed), how long to keep reading its output pipes
/// before abandoning them (a backgrounded grandchild may hold them open indefinitely).
pub const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Longest stdout line logged as one event; longer lines are split.
const MAX_STDOUT_LINE: usize = 4096;

/// The result of one hook run.
#[derive(Debug, Clone, Serialize)]
pub struct HookOutcome {
    /// The role the node changed to (`KEEL_ROLE`).
    pub role: String,
    /// The role the node changed from (`KEEL_PREVIOUS_ROLE`).
    pub previous_role: String,
    /// The epoch of the change (`KEEL_EPOCH`).
    pub epoch: u64,
    /// When the run started, Unix milliseconds (wall clock).
    pub started_at_ms: u64,
    /// How long the run took, including killing it and draining its output.
    pub duration_ms: u64,
    /// The exit code, if the hook exited normally (None when spawning failed, it timed out, or it was
    /// killed by a signal).
    pub exit_code: Option<i32>,
    /// The hook exceeded the timeout and was killed.
    pub timed_out: bool,
    /// Why the run failed (spawn error, non-zero exit, signal, timeout); None on success.
    pub error: Option<String>,
    /// The last ≤ [`STDERR_TAIL_BYTES`] bytes of the hook's stderr, decoded as lossy UTF-8.
    pub stderr_tail: String,
}

impl HookOutcome {
    /// The hook exited with status 0 within the timeout.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.error.is_none()
    }
}

/// A snapshot of the runner's state, for status endpoints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HookStatus {
    /// A (non-blank) command is configured.
    pub command_configured: bool,
    /// Role changes queued and not yet started (the one running, if any, is not counted).
    pub pending: usize,
    /// Completed runs, successful or not.
    pub runs: u64,
    /// Completed runs that did not succeed (see [`HookOutcome::succeeded`]).
    pub failures: u64,
    /// The most recent completed run.
    pub last: Option<HookOutcome>,
}

/// Runs the role-change hook; cheap to clone (all clones share one queue and worker).
#[derive(Debug, Clone)]
pub struct HookRunner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    command: Option<String>,
    node_id: u64,
    timeout: Duration,
    queue: Mutex<Queue>,
    wake: Notify,
    stats: Mutex<Stats>,
    /// `true` once the worker has exited (or was never started).
    stopped: watch::Sender<bool>,
    #[cfg(test)]
    history: Mutex<Vec<HookOutcome>>,
}

#[derive(Debug)]
struct Change {
    previous_role: String,
    role: String,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Change>,
    /// The worker has stopped: nothing queued from now on would ever run.
    closed: bool,
}

#[derive(Debug, Default)]
struct Stats {
    runs: u64,
    failures: u64,
    last: Option<HookOutcome>,
}

/// Lock a mutex, ignoring poisoning (the guarded data stays consistent: every critical section is a
/// handful of non-panicking field updates).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HookRunner {
    /// Create the runner and, if `command` is set (and not blank), spawn its worker task — which
    /// requires being called inside a Tokio runtime. `command` None: every call is a no-op (status
    /// still counts nothing). `timeout` bounds each run; `cancel` stops the worker (see the module
    /// docs for what happens to the current and pending runs).
    pub fn start(command: Option<String>, node_id: u64, timeout: Duration, cancel: CancellationToken) -> HookRunner {
        let command = command.filter(|c| !c.trim().is_empty());
        let (stopped, _) = watch::channel(command.is_none());
        let inner = Arc::new(Inner {
            command: command.clone(),
            node_id,
            timeout,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stats: Mutex::new(Stats::default()),
            stopped,
            #[cfg(test)]
            history: Mutex::new(Vec::new()),
        });
        if let Some(command) = command {
            tokio::spawn(worker(inner.clone(), command, cancel));
        }
        HookRunner { inner }
    }

    /// Queue a role change; never blocks; changes run one at a time, in the order queued.
    pub fn role_changed(&self, previous_role: &str, role: &str, epoch: u64) {
        if self.inner.command.is_none() {
            return;
        }
        {
            let mut queue = lock(&self.inner.queue);
            if queue.closed {
                debug!(
                    previous_role,
                    role, epoch, "hook runner stopped; role-change hook not run"
                );
                return;
            }
            if queue.entries.len() >= MAX_PENDING {
                if let Some(old) = queue.entries.pop_front() {
                    warn!(
                        dropped_previous_role = %old.previous_role,
                        dropped_role = %old.role,
                        dropped_epoch = old.epoch,
                        max_pending = MAX_PENDING,
                        "role-change hook queue full; dropping the oldest pending change"
                    );
                }
            }
            queue.entries.push_back(Change {
                previous_role: previous_role.to_owned(),
                role: role.to_owned(),
                epoch,
            });
        }
        self.inner.wake.notify_one();
    }

    /// A snapshot of the queue and run counters.
    pub fn status(&self) -> HookStatus {
        let pending = lock(&self.inner.queue).entries.len();
        let stats = lock(&self.inner.stats);
        HookStatus {
            command_configured: self.inner.command.is_some(),
            pending,
            runs: stats.runs,
            failures: stats.failures,
            last: stats.last.clone(),
        }
    }

    /// Resolve once the worker has exited (after cancellation, once the current run has finished).
    /// Resolves immediately when no command is configured.
    pub async fn wait_stopped(&self) {
        let mut rx = self.inner.stopped.subscribe();
        // The sender lives in `self.inner`, so this cannot fail while we hold `self`.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Marks the worker stopped (and the queue closed) however the worker future ends — normally,
/// by panic, or by being dropped at runtime shutdown.
struct StoppedGuard(Arc<Inner>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        lock(&self.0.queue).closed = true;
        self.0.stopped.send_replace(true);
    }
}

async fn worker(inner: Arc<Inner>, command: String, cancel: CancellationToken) {
    let _guard = StoppedGuard(inner.clone());
    debug!(
        node_id = inner.node_id,
        timeout_ms = inner.timeout.as_millis() as u64,
        "role-change hook runner started"
    );
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let next = lock(&inner.queue).entries.pop_front();
        let Some(change) = next else {
            // `notify_one` stores a permit if nobody is waiting, so a change queued between the
            // pop above and this wait is not missed.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = inner.wake.notified() => continue,
            }
        };
        // Deliberately not raced against `cancel`: the current run finishes (bounded by its timeout).
        let outcome = run_hook(&command, inner.node_id, inner.timeout, &change).await;
        log_outcome(&outcome);
        let mut stats = lock(&inner.stats);
        stats.runs += 1;
        if !outcome.succeeded() {
            stats.failures += 1;
        }
        #[cfg(test)]
        lock(&inner.history).push(outcome.clone());
        stats.last = Some(outcome);
    }
    let dropped = {
        let mut queue = lock(&inner.queue);
        queue.closed = true;
        std::mem::take(&mut queue.entries)
    };
    if let Some(newest) = dropped.back() {
        info!(
            dropped = dropped.len(),
            newest_role = %newest.role,
            newest_epoch = newest.epoch,
            "role-change hook runner shutting down; dropping pending role changes"
        );
    } else {
        debug!("role-change hook runner shut down");
    }
}

async fn run_hook(command: &str, node_id: u64, timeout: Duration, change: &Change) -> HookOutcome {
    let start = Instant::now();
    let mut outcome = HookOutcome {
        role: change.role.clone(),
        previous_role: change.previous_role.clone(),
        epoch: change.epoch,
        started_at_ms: crate::util::unix_ms(),
        duration_ms: 0,
        exit_code: None,
        timed_out: false,
        error: None,
        stderr_tail: String::new(),
    };
    debug!(role = %change.role, previous_role = %change.previous_role, epoch = change.epoch, "running role-change hook");

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("KEEL_ROLE", &change.role)
        .env("KEEL_PREVIOUS_ROLE", &change.previous_role)
        .env("KEEL_EPOCH", change.epoch.to_string())
        .env("KEEL_NODE_ID", node_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            outcome.error = Some(format!("failed to spawn `sh -c`: {e}"));
            outcome.duration_ms = elapsed_ms(start);
            return outcome;
        }
    };

    let tail = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(log_stdout(stdout, change.role.clone(), change.epoch)));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(collect_tail(stderr, tail.clone())));
    }

    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            outcome.exit_code = status.code();
            if !status.success() {
                outcome.error = Some(describe_exit(status));
            }
        }
        Ok(Err(e)) => {
            outcome.error = Some(format!("waiting for the hook failed: {e}"));
            let _ = child.kill().await;
        }
        Err(_) => {
            outcome.timed_out = true;
            outcome.error = Some(format!("timed out after {} ms; killed", timeout.as_millis()));
            // Kill the whole process group first (while its leader is unreaped, so the id cannot
            // have been reused), then the child itself (which also reaps it).
            #[cfg(unix)]
            if let Some(pid) = child.id() {
                kill_process_group(pid).await;
            }
            if let Err(e) = child.kill().await {
                warn!(error = %e, epoch = change.epoch, "failed to kill timed-out role-change hook");
            }
        }
    }

    let drain_deadline = tokio::time::Instant::now() + PIPE_DRAIN_GRACE;
    for mut reader in readers {
        if tokio::time::timeout_at(drain_deadline, &mut reader).await.is_err() {
            debug!(
                epoch = change.epoch,
                "role-change hook output still open after exit; abandoning it"
            );
            reader.abort();
        }
    }
    outcome.stderr_tail = tail_string(&lock(&tail));
    outcome.duration_ms = elapsed_ms(start);
    outcome
}

/// SIGKILL the process group `pgid` (best effort), using the shell's `kill` builtin so that no
/// extra binary or crate is needed.
#[cfg(unix)]
async fn kill_process_group(pgid: u32) {
    let result = Command::new("sh")
        .arg("-c")
        .arg("kill -s KILL -- \"-$1\" 2>/dev/null")
        .arg("sh")
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(2), result).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => debug!(error = %e, pgid, "could not kill the role-change hook's process group"),
        Err(_) => debug!(pgid, "killing the role-change hook's process group timed out"),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    format!("exited abnormally ({status})")
}

fn log_outcome(o: &HookOutcome) {
    if o.succeeded() {
        info!(
            role = %o.role,
            previous_role = %o.previous_role,
            epoch = o.epoch,
            exit_code = ?o.exit_code,
            duration_ms = o.duration_ms,
            "role-change hook succeeded"
        );
    } else {
        warn!(
            role = %o.role,
            previous_role = %o.previous_role,
            epoch = o.epoch,
            exit_code = ?o.exit_code,
            timed_out = o.timed_out,
            duration_ms = o.duration_ms,
            error = o.error.as_deref().unwrap_or("unknown"),
            stderr_tail = %o.stderr_tail.trim_end(),
            "role-change hook failed"
        );
    }
}

async fn log_stdout(mut stdout: ChildStdout, role: String, epoch: u64) {
    let emit = |line: &[u8]| {
        let line = String::from_utf8_lossy(line);
        debug!(role = %role, epoch, line = %line.trim_end_matches('\r'), "role-change hook stdout");
    };
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&line);
                line.clear();
            } else {
                line.push(b);
                if line.len() >= MAX_STDOUT_LINE {
                    emit(&line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

async fn collect_tail(mut stderr: ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut tail = lock(&tail);
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL_BYTES {
            let excess = tail.len() - STDERR_TAIL_BYTES;
            tail.drain(..excess);
        }
    }
}

/// Lossy UTF-8 of the kept stderr bytes, skipping continuation bytes left at the front by the cut.
fn tail_string(bytes: &[u8]) -> String {
    let skip = bytes.iter().take(3).take_while(|b| (**b & 0xC0) == 0x80).count();
    String::from_utf8_lossy(&bytes[skip..]).into_owned()
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(20);

    /// Poll until `runs >= n` (the success condition), failing after a generous deadline.
    async fn wait_runs(runner: &HookRunner, n: u64) -> HookStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = runner.status();
            if status.runs >= n {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {n} runs: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A started runner, the file its hook may write to, and its cancel token.
    struct Fixture {
        runner: HookRunner,
        file: std::path::PathBuf,
        cancel: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        /// A runner of `command(file)` as node `node_id`, each run limited to `timeout`.
        fn start(command: impl FnOnce(&std::path::Path) -> String, node_id: u64, timeout: Duration) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("hook.log");
            let cancel = CancellationToken::new();
            let runner = HookRunner::start(Some(command(&file)), node_id, timeout, cancel.clone());
            Fixture {
                runner,
                file,
                cancel,
                _dir: dir,
            }
        }

        /// Cancel, and wait until the runner has stopped.
        async fn stop(&self) {
            self.cancel.cancel();
            tokio::time::timeout(DEADLINE, self.runner.wait_stopped())
                .await
                .unwrap();
        }
    }

    fn read_lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn changes_run_in_order_one_at_a_time() {
        let command = |file: &std::path::Path| {
            format!(
                "f='{}'; echo \"start $KEEL_EPOCH\" >> \"$f\"; \
                 echo \"$KEEL_PREVIOUS_ROLE>$KEEL_ROLE@$KEEL_EPOCH:$KEEL_NODE_ID\" >> \"$f\"; \
                 sleep 0.05; echo \"end $KEEL_EPOCH\" >> \"$f\"",
                file.display()
            )
        };
        let f = Fixture::start(command, 7, Duration::from_secs(10));
        let (runner, file) = (&f.runner, &f.file);
        runner.role_changed("follower", "candidate", 1);
        runner.role_changed("candidate", "leader", 2);
        runner.role_changed("leader", "follower", 3);

        let status = wait_runs(runner, 3).await;
        assert_eq!(status.runs, 3);
        assert_eq!(status.failures, 0, "{status:?}");
        assert_eq!(status.pending, 0);
        assert!(status.command_configured);
        let last = status.last.unwrap();
        assert_eq!(
            (last.previous_role.as_str(), last.role.as_str(), last.epoch),
            ("leader", "follower", 3)
        );
        assert_eq!(last.exit_code, Some(0));
        assert!(last.succeeded());
        assert!(last.duration_ms >= 50, "{last:?}");

        let lines = read_lines(file);
        let roles: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("start ") && !l.starts_with("end "))
            .collect();
        assert_eq!(
            roles,
            ["follower>candidate@1:7", "candidate>leader@2:7", "leader>follower@3:7"]
        );
        // Start/end markers strictly alternate: no two runs overlapped.
        assert_eq!(
            lines,
            [
                "start 1",
                "follower>candidate@1:7",
                "end 1",
                "start 2",
                "candidate>leader@2:7",
                "end 2",
                "start 3",
                "leader>follower@3:7",
                "end 3",
            ]
        );
        f.stop().await;
    }

    #[tokio::test]
    async fn timed_out_hook_is_killed_and_next_change_still_runs() {
        // Epoch 1 sleeps in a forked child (not exec'd), which holds the pipes open: only killing
        // the whole process group lets the run end promptly.
        let command = |file: &std::path::Path| {
            format!(
                "if [ \"$KEEL_EPOCH\" = 1 ]; then echo begin >&2; sleep 5; echo after-sleep >> '{f}'; \
                 else echo \"ran $KEEL_EPOCH\" >> '{f}'; fi",
                f = file.display()
            )
        };
        let f = Fixture::start(command, 1, Duration::from_millis(200));
        let (runner, file) = (&f.runner, &f.file);
        let queued = Instant::now();
        runner.role_changed("follower", "leader", 1);
        runner.role_changed("leader", "follower", 2);

        let status = wait_runs(runner, 2).await;
        assert!(
            queued.elapsed() < Duration::from_secs(4),
            "the first hook was not killed"
        );
        assert_eq!(status.runs, 2);
        assert_eq!(status.failures, 1, "{status:?}");
        let last = status.last.unwrap();
        assert_eq!(last.epoch, 2);
        assert!(last.succeeded(), "{last:?}");

        let history = lock(&runner.inner.history).clone();
        let first = &history[0];
        assert_eq!(first.epoch, 1);
        assert!(first.timed_out, "{first:?}");
        assert_eq!(first.exit_code, None);
        assert!(!first.succeeded());
        assert!(first.error.as_deref().unwrap().contains("timed out"), "{first:?}");
        assert!(first.stderr_tail.contains("begin"), "{first:?}");
        assert!(first.duration_ms >= 200, "{first:?}");
        // Well under timeout + PIPE_DRAIN_GRACE: the sleeping grandchild was killed with its group.
        assert!(first.duration_ms < 1000, "{first:?}");
        assert_eq!(read_lines(file), ["ran 2"]);

        f.stop().await;
    }

    #[tokio::test]
    async fn failing_hook_reports_exit_code_and_stderr_tail() {
        let command = "echo oops >&2; i=0; while [ $i -lt 100 ]; do echo xxxxxxxxxxxxxxxxxxxx >&2; i=$((i+1)); done; \
                       echo 'last words' >&2; exit 3";
        let f = Fixture::start(|_| command.to_owned(), 2, Duration::from_secs(10));
        let runner = &f.runner;
        runner.role_changed("leader", "follower", 9);

        let status = wait_runs(runner, 1).await;
        assert_eq!(status.runs, 1);
        assert_eq!(status.failures, 1);
        let last = status.last.unwrap();
        assert_eq!(last.exit_code, Some(3));
        assert!(!last.timed_out);
        assert!(!last.succeeded());
        assert_eq!(last.error.as_deref(), Some("exited with code 3"));
        assert!(
            last.stderr_tail.len() <= STDERR_TAIL_BYTES,
            "{}",
            last.stderr_tail.len()
        );
        assert!(
            last.stderr_tail.ends_with("xxxxxxxxxxxxxxxxxxxx\nlast words\n"),
            "{:?}",
            last.stderr_tail
        );
        assert!(!last.stderr_tail.contains("oops"), "only the tail is kept");

        f.stop().await;
    }

    #[tokio::test]
    async fn no_command_is_a_no_op() {
        for command in [None, Some("   ".to_owned())] {
            let runner = HookRunner::start(command, 1, Duration::from_secs(1), CancellationToken::new());
            runner.role_changed("follower", "leader", 1);
            let status = runner.status();
            assert!(!status.command_configured);
            assert_eq!((status.pending, status.runs, status.failures), (0, 0, 0));
            assert!(status.last.is_none());
            tokio::time::timeout(DEADLINE, runner.wait_stopped()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn cancel_finishes_current_run_and_drops_pending() {
        let command = |file: &std::path::Path| {
            format!(
                "echo \"start $KEEL_EPOCH\" >> '{f}'; sleep 0.3; echo \"end $KEEL_EPOCH\" >> '{f}'",
                f = file.display()
            )
        };
        let f = Fixture::start(command, 1, Duration::from_secs(10));
        let (runner, file) = (&f.runner, &f.file);
        for epoch in 1..=3 {
            runner.role_changed("a", "b", epoch);
        }
        // Wait until the first run is under way, then cancel.
        let deadline = Instant::now() + DEADLINE;
        while read_lines(file).is_empty() {
            assert!(Instant::now() < deadline, "first hook never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f.stop().await;

        let status = runner.status();
        assert_eq!(status.runs, 1, "{status:?}");
        assert_eq!(status.failures, 0);
        assert_eq!(status.pending, 0);
        assert_eq!(read_lines(file), ["start 1", "end 1"]);
        // After shutdown, changes are ignored.
        runner.role_changed("b", "a", 4);
        assert_eq!(runner.status().pending, 0);
    }
}
