//! What the log says about a peer's reachability: one line when it becomes unreachable, a
//! summary at most every [`SUMMARY_EVERY`] while it stays so, one line when it answers again.
//!
//! A dead peer fails every Raft heartbeat, every replication retry and every probe, several
//! times a second; logging each failure buried everything else (openraft's own per-retry lines
//! for the same condition are dropped by the node's log filter, which relies on these lines).
//! [`PeerLog`] is the pure state machine (the caller passes the clock); [`PeerHealth`](crate::network::PeerHealth)
//! (crate::network::PeerHealth) feeds it every outcome and writes the lines it returns.

use std::time::{Duration, Instant};

/// Target of the reachability lines. The node's log rate limiter leaves it alone: these lines
/// are already limited here.
pub const PEER_LOG_TARGET: &str = "keel::peer";
/// How long a peer must fail without a single success before it is reported unreachable: a
/// peer that is still starting, or one lost request, is not worth two lines.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// At most one "still unreachable" summary per peer per this long.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// A line to log about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLine {
    /// The peer has failed every request for [`DOWN_AFTER`]; `error` is the latest failure.
    Unreachable { error: String },
    /// Still failing: `failures` failed requests since the previous line, `down_for` since the
    /// first failure.
    StillUnreachable {
        failures: u64,
        down_for: Duration,
        error: String,
    },
    /// It answered again after being reported unreachable for `down_for`.
    Reachable { down_for: Duration },
}

/// Reachability log state of one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerLog {
    /// First failure of the current run of failures (None while the peer answers).
    failing_since: Option<Instant>,
    /// Set once the [`PeerLine::Unreachable`] line was written for this run.
    reported: bool,
    /// Failures since the last line written (or since the run began).
    failures: u64,
    last_line: Option<Instant>,
}

impl PeerLog {
    /// A request to the peer failed at `now` with `error`.
    pub fn failure(&mut self, now: Instant, error: &str) -> Option<PeerLine> {
        let since = *self.failing_since.get_or_insert(now);
        self.failures += 1;
        let down_for = now.saturating_duration_since(since);
        if !self.reported {
            if down_for < DOWN_AFTER {
                return None;
            }
            self.reported = true;
            self.failures = 0;
            self.last_line = Some(now);
            return Some(PeerLine::Unreachable {
                error: error.to_string(),
            });
        }
        let last = self.last_line.unwrap_or(since);
        if now.saturating_duration_since(last) < SUMMARY_EVERY {
            return None;
        }
        let failures = std::mem::take(&mut self.failures);
        self.last_line = Some(now);
        Some(PeerLine::StillUnreachable {
            failures,
            down_for,
            error: error.to_string(),
        })
    }

    /// A request to the peer succeeded at `now`.
    pub fn success(&mut self, now: Instant) -> Option<PeerLine> {
        let was = std::mem::take(self);
        match (was.reported, was.failing_since) {
            (true, Some(since)) => Some(PeerLine::Reachable {
                down_for: now.saturating_duration_since(since),
            }),
            _ => None,
        }
    }
}

/// Write `line` about `peer` to the log.
pub fn log_line(peer: u64, line: PeerLine) {
    match line {
        PeerLine::Unreachable { error } => {
            tracing::warn!(target: PEER_LOG_TARGET, peer, "peer {peer} unreachable: {error}")
        }
        PeerLine::StillUnreachable {
            failures,
            down_for,
            error,
        } => tracing::warn!(
            target: PEER_LOG_TARGET,
            peer,
            failures,
            down_s = down_for.as_secs(),
            "peer {peer} still unreachable ({failures} failed requests in the last {} s): {error}",
            SUMMARY_EVERY.as_secs()
        ),
        PeerLine::Reachable { down_for } => tracing::info!(
            target: PEER_LOG_TARGET,
            peer,
            down_s = down_for.as_secs(),
            "peer {peer} reachable again after {:.1} s",
            down_for.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds a peer that fails every 200 ms from `t0` for `span`, and returns the lines with
    /// their offsets.
    fn fail_for(log: &mut PeerLog, t0: Instant, span: Duration) -> Vec<(Duration, PeerLine)> {
        let mut out = Vec::new();
        let mut at = Duration::ZERO;
        while at <= span {
            if let Some(line) = log.failure(t0 + at, "connection refused") {
                out.push((at, line));
            }
            at += ms(200);
        }
        out
    }

    #[test]
    fn a_short_hiccup_writes_nothing() {
        let t0 = Instant::now();
        let mut log = PeerLog::default();
        assert_eq!(log.failure(t0, "x"), None);
        assert_eq!(log.failure(t0 + ms(800), "x"), None);
        assert_eq!(log.success(t0 + ms(900)), None);
        // The run restarted: another 900 ms of failures is again below the threshold.
        assert_eq!(log.failure(t0 + ms(1000), "x"), None);
        assert_eq!(log.failure(t0 + ms(1900), "x"), None);
    }

    #[test]
    fn a_dead_peer_gets_one_line_then_a_summary_every_30_s() {
        let t0 = Instant::now();
        let mut log = PeerLog::default();
        let lines = fail_for(&mut log, t0, Duration::from_secs(65));
        let at: Vec<Duration> = lines.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, vec![ms(1000), ms(31_000), ms(61_000)]);
        assert_eq!(
            lines[0].1,
            PeerLine::Unreachable {
                error: "connection refused".into()
            }
        );
        // 150 failures between the lines: one every 200 ms for 30 s.
        assert_eq!(
            lines[1].1,
            PeerLine::StillUnreachable {
                failures: 150,
                down_for: ms(31_000),
                error: "connection refused".into()
            }
        );
        assert_eq!(
            log.success(t0 + ms(70_000)),
            Some(PeerLine::Reachable { down_for: ms(70_000) })
        );
        // Back to normal: a later success writes nothing.
        assert_eq!(log.success(t0 + ms(70_200)), None);
    }

    #[test]
    fn sparse_failures_still_count_as_down_without_a_success() {
        let t0 = Instant::now();
        let mut log = PeerLog::default();
        assert_eq!(log.failure(t0, "x"), None);
        assert_eq!(
            log.failure(t0 + Duration::from_secs(5), "y"),
            Some(PeerLine::Unreachable { error: "y".into() })
        );
    }
}
