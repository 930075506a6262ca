//! Waiting on observable state: poll until a condition holds or a deadline passes. There are no
//! fixed sleeps anywhere in the kit; the poll interval is only how often to look.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `f` every `every` until it returns `Some`, or return `None` once `timeout` has passed
/// (`f` is always called at least once, and once more at or after the deadline).
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll_until`] for blocking code (benchmarks, threads without a runtime).
pub fn poll_until_blocking<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Blocking: poll `f` every `every` until it returns `Some`; panic naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, every: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until_blocking(timeout, every, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}
