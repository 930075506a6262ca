//! Progress lines on stdout while a run goes (`RunOptions::progress`): one at the start of each
//! fault and one every [`EVERY`], each with the operations completed so far (ok, failed, unknown)
//! and the node the `/primary` sampler saw last. A long run no longer stays silent until its
//! verdict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::{Counts, Recorder};
use super::probe::Shared;

/// How often the periodic line is printed.
pub(super) const EVERY: Duration = Duration::from_secs(10);

/// Prints the progress lines of one run (or nothing, when disabled).
pub(super) struct Progress {
    rec: Arc<Recorder>,
    shared: Arc<Shared>,
    enabled: bool,
}

impl Progress {
    pub(super) fn new(rec: &Arc<Recorder>, shared: &Arc<Shared>, enabled: bool) -> Progress {
        Progress {
            rec: rec.clone(),
            shared: shared.clone(),
            enabled,
        }
    }

    /// Prints one line about `event` with the counts and the primary as they are now.
    pub(super) fn say(&self, event: &str) {
        if !self.enabled {
            return;
        }
        let primaries = self.shared.primaries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        println!(
            "{}",
            line(self.rec.start.elapsed(), event, self.rec.counts(), &primaries)
        );
    }

    /// The periodic line, every [`EVERY`] until `stop` (checked every 100 ms, so the thread ends
    /// promptly with the run).
    pub(super) fn spawn_ticker(self: &Arc<Self>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            let mut next = Instant::now() + EVERY;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    me.say("progress");
                    next += EVERY;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }
}

/// `[  12.0 s] progress: 1234 ops ok, 3 failed, 12 unknown; primary n2`.
pub(super) fn line(elapsed: Duration, event: &str, c: Counts, primaries: &[u64]) -> String {
    let primary = match primaries {
        [] => "none".to_string(),
        [p] => format!("n{p}"),
        many => format!(
            "{} (more than one answers /primary)",
            many.iter().map(|p| format!("n{p}")).collect::<Vec<_>>().join(" and ")
        ),
    };
    format!(
        "[{:6.1} s] {event}: {} ops ok, {} failed, {} unknown; primary {primary}",
        elapsed.as_secs_f64(),
        c.ok,
        c.fail,
        c.info
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let c = Counts {
            ok: 1234,
            fail: 3,
            info: 12,
        };
        assert_eq!(
            line(Duration::from_millis(12_040), "progress", c, &[2]),
            "[  12.0 s] progress: 1234 ops ok, 3 failed, 12 unknown; primary n2"
        );
        assert_eq!(
            line(Duration::from_secs(4), "fault kill (one) n3", Counts::default(), &[]),
            "[   4.0 s] fault kill (one) n3: 0 ops ok, 0 failed, 0 unknown; primary none"
        );
        assert!(line(Duration::ZERO, "progress", c, &[1, 3])
            .ends_with("primary n1 and n3 (more than one answers /primary)"));
    }
}
