//! Logs people can read: the tracing setup of `keel serve` and the layer that keeps WARN and ERROR
//! lines that repeat from flooding the log.
//!
//! With one member down, a three-node cluster used to write about 28 WARN/ERROR lines a second,
//! nearly all of them openraft's: every heartbeat, replication retry and read-index round to the
//! dead peer logged the same error three or four times. Two things bring that down:
//!
//! - Keel says it itself, once: the peer client logs a peer going unreachable, a summary at most
//!   every 30 s, and its return (`keel_raft::peer_log`, target `keel::peer`). openraft's lines for
//!   the same condition, and its two known start-up races, are dropped ([`openraft_noise`]).
//! - Every other WARN or ERROR event passes the [`RateLimiter`], keyed by its call site, the peer
//!   it names and the [`shape`] of its text (the text with numbers blanked, so a retry counter, a
//!   port or a duration does not make each line new, but another error from the same call site is
//!   not hidden): the first passes, repeats within [`WINDOW`] are counted and dropped, and the
//!   first repeat after the window is replaced by one line "N similar messages suppressed in the
//!   last 30 s: `<the first of them>`" (target `keel::log`).
//!
//! `KEEL_LOG_RATE_LIMIT=off` turns this layer off: openraft's lines and every repeat are written (the
//! peer client's own lines are limited where they are made and stay as they are).
//!
//! The limiter is a plain struct with the clock passed in; the layer only reads events and feeds
//! it. The summary is written as a new event from inside the layer: that reaches the process's
//! global subscriber, which is how `keel serve` installs it (a scoped subscriber, as some tests
//! use, would drop the summary line and nothing else).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_raft::peer_log::PEER_LOG_TARGET;
use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How long repeats of one event are counted before the next one is let through as a summary.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Target of the summary lines (never limited themselves).
pub const SUMMARY_TARGET: &str = "keel::log";
/// The environment variable that turns the limiting off (`off`, `0` or `false`).
pub const RATE_LIMIT_ENV: &str = "KEEL_LOG_RATE_LIMIT";
/// Keys tracked at most; past that, windows that saw no repeat are forgotten first.
const MAX_KEYS: usize = 4096;
/// The text kept of the first suppressed event, in bytes.
const MAX_TEXT: usize = 400;
/// Fields whose value tells one peer's errors from another's: a dead peer must not hide the
/// first error of another.
const PEER_FIELDS: &[&str] = &["peer", "target", "node", "to"];

/// openraft's WARN/ERROR lines that are left out, by a piece of their text, and why.
pub const OPENRAFT_NOISE: &[(&str, &str)] = &[
    (
        "Unreachable node:",
        "a peer Keel's client could not reach: Keel logs it going unreachable and coming back",
    ),
    (
        "error sending request for url",
        "a request to a peer that got no answer (a timeout, a reset): Keel logs the peer unreachable",
    ),
    // openraft logs one failed replication or heartbeat four times; the line kept is
    // "error replication to target=N error=...", which names the peer.
    ("RPCError err=", "the same failure as the \"error replication to\" line"),
    (
        "update progress error",
        "the same failure as the \"error replication to\" line",
    ),
    (
        "heartbeat error:",
        "the same failure as the \"error replication to\" line",
    ),
    (
        "backoff mode: drain events",
        "openraft backing off from an unreachable peer, which Keel logs",
    ),
    (
        "not voting yet",
        "a node that has just started does not vote for a moment, by design",
    ),
    (
        "A message will be ignored because vote changed",
        "a late answer of an election that is already decided",
    ),
];

/// Why an openraft event with this text is left out of the log, if it is.
pub fn openraft_noise(text: &str) -> Option<&'static str> {
    OPENRAFT_NOISE
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, why)| *why)
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Emit,
    /// Count it and drop it.
    Suppress,
    /// Drop it and write a summary instead: `count` events (this one included) were dropped in the
    /// window that just ended; `first` is the text of the first of them.
    Summary { count: u64, first: String },
}

#[derive(Debug)]
struct Window {
    start: Instant,
    suppressed: u64,
    first: Option<String>,
}

/// Per-key windows: the first event of a key passes, repeats within the window are counted, and
/// the first repeat after it becomes a [`Verdict::Summary`] that opens the next window.
#[derive(Debug)]
pub struct RateLimiter<K> {
    window: Duration,
    max_keys: usize,
    entries: HashMap<K, Window>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(window: Duration) -> Self {
        Self::with_capacity(window, MAX_KEYS)
    }

    /// A limiter tracking at most `max_keys` keys.
    pub fn with_capacity(window: Duration, max_keys: usize) -> Self {
        RateLimiter {
            window,
            max_keys,
            entries: HashMap::new(),
        }
    }

    /// The verdict on an event of `key` at `now` whose text is `text`.
    pub fn check(&mut self, key: K, now: Instant, text: &str) -> Verdict {
        let window = self.window;
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.max_keys {
                // Forget windows that ended with nothing to report; if every key is busy, let the
                // event through untracked rather than grow without bound.
                self.entries
                    .retain(|_, w| w.suppressed > 0 || now.saturating_duration_since(w.start) < window);
                if self.entries.len() >= self.max_keys {
                    return Verdict::Emit;
                }
            }
            self.entries.insert(
                key,
                Window {
                    start: now,
                    suppressed: 0,
                    first: None,
                },
            );
            return Verdict::Emit;
        }
        let Some(w) = self.entries.get_mut(&key) else {
            return Verdict::Emit;
        };
        if now.saturating_duration_since(w.start) < window {
            w.suppressed += 1;
            if w.first.is_none() {
                w.first = Some(truncate(text, MAX_TEXT));
            }
            return Verdict::Suppress;
        }
        w.start = now;
        let suppressed = std::mem::take(&mut w.suppressed);
        let first = w.first.take();
        if suppressed == 0 {
            return Verdict::Emit;
        }
        Verdict::Summary {
            count: suppressed + 1,
            first: first.unwrap_or_else(|| truncate(text, MAX_TEXT)),
        }
    }
}

/// What makes two events "similar": their text with every run of digits, and every long run of hex
/// digits (ids, hashes), replaced by `#`.
pub fn shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hex_id = word.len() >= 16 && word.bytes().all(|b| b.is_ascii_hexdigit());
        if hex_id {
            out.push('#');
        } else {
            let mut in_digits = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('#');
                    }
                    in_digits = true;
                } else {
                    out.push(c);
                    in_digits = false;
                }
            }
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// An event's message and fields as one line (`message key=value ...`), and the peer it names.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
    peer: Option<String>,
}

impl EventText {
    fn of(event: &Event<'_>) -> Self {
        let mut v = EventText::default();
        event.record(&mut v);
        v
    }

    fn text(&self) -> String {
        format!("{}{}", self.message, self.fields)
    }
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl EventText {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
            return;
        }
        if PEER_FIELDS.contains(&field.name()) && self.peer.is_none() {
            self.peer = Some(value.clone());
        }
        let _ = write!(self.fields, " {}={value}", field.name());
    }
}

/// The tracing layer around [`RateLimiter`] and [`openraft_noise`]: it decides in `event_enabled`,
/// so a dropped event reaches no layer at all.
pub struct RateLimitLayer {
    /// Keyed by call site, peer field and [`shape`].
    limiter: Mutex<RateLimiter<(Identifier, Option<String>, String)>>,
    window: Duration,
}

impl RateLimitLayer {
    pub fn new() -> Self {
        Self::with_window(WINDOW)
    }

    /// A layer whose windows last `window` (tests use a short one).
    pub fn with_window(window: Duration) -> Self {
        RateLimitLayer {
            limiter: Mutex::new(RateLimiter::new(window)),
            window,
        }
    }

    /// The layer, unless [`RATE_LIMIT_ENV`] turns it off.
    pub fn from_env() -> Option<Self> {
        let off = std::env::var(RATE_LIMIT_ENV)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false"));
        (!off).then(Self::new)
    }
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Subscriber> Layer<S> for RateLimitLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // More verbose levels compare greater: INFO, DEBUG and TRACE pass untouched.
        if *meta.level() > Level::WARN || meta.target() == SUMMARY_TARGET || meta.target() == PEER_LOG_TARGET {
            return true;
        }
        let fields = EventText::of(event);
        let text = fields.text();
        if meta.target().starts_with("openraft") && openraft_noise(&text).is_some() {
            return false;
        }
        let key = (meta.callsite(), fields.peer, shape(&text));
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(key, Instant::now(), &text);
        match verdict {
            Verdict::Emit => true,
            Verdict::Suppress => false,
            Verdict::Summary { count, first } => {
                // The lock is released: the summary comes back through this layer (and passes).
                summarise(*meta.level(), meta.target(), count, self.window, &first);
                false
            }
        }
    }
}

fn summarise(level: Level, origin: &str, count: u64, window: Duration, first: &str) {
    let window = if window.subsec_millis() == 0 {
        format!("{} s", window.as_secs())
    } else {
        format!("{} ms", window.as_millis())
    };
    if level == Level::ERROR {
        tracing::error!(target: SUMMARY_TARGET, suppressed = count, origin, "{count} similar messages suppressed in the last {window}: {first}");
    } else {
        tracing::warn!(target: SUMMARY_TARGET, suppressed = count, origin, "{count} similar messages suppressed in the last {window}: {first}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn summary(count: u64, first: &str) -> Verdict {
        Verdict::Summary {
            count,
            first: first.into(),
        }
    }

    #[test]
    fn first_passes_repeats_are_counted_and_summarised_once_per_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(s(30));
        assert_eq!(rl.check("a", t0, "a1"), Verdict::Emit);
        // Another key is independent.
        assert_eq!(rl.check("b", t0, "b1"), Verdict::Emit);
        for i in 1..30 {
            assert_eq!(rl.check("a", t0 + s(i), &format!("a{}", i + 1)), Verdict::Suppress);
        }
        // The first repeat after the window: a summary of the 29 dropped and this one.
        assert_eq!(rl.check("a", t0 + s(30), "a31"), summary(30, "a2"));
        // ... which opened the next window.
        assert_eq!(rl.check("a", t0 + s(31), "a32"), Verdict::Suppress);
        assert_eq!(rl.check("a", t0 + s(60), "a33"), summary(2, "a32"));
        // A key that did not repeat in its window just passes again.
        assert_eq!(rl.check("b", t0 + s(45), "b2"), Verdict::Emit);
        assert_eq!(rl.check("b", t0 + s(46), "b3"), Verdict::Suppress);
    }

    #[test]
    fn steady_repeats_write_one_line_per_window() {
        // An event every 200 ms for 60 s: the first, then one summary per 30 s.
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(s(30));
        let written = (0..300)
            .map(|i| rl.check((), t0 + Duration::from_millis(200 * i), "x"))
            .filter(|v| *v != Verdict::Suppress)
            .count();
        assert_eq!(written, 2);
    }

    #[test]
    fn keys_are_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::with_capacity(s(30), 2);
        assert_eq!(rl.check(1, t0, "1"), Verdict::Emit);
        assert_eq!(rl.check(2, t0, "2"), Verdict::Emit);
        assert_eq!(rl.check(2, t0, "2"), Verdict::Suppress);
        // Full, every window open: untracked, so it passes every time.
        assert_eq!(rl.check(3, t0 + s(1), "3"), Verdict::Emit);
        assert_eq!(rl.check(3, t0 + s(1), "3"), Verdict::Emit);
        assert_eq!(rl.entries.len(), 2);
        // Key 1's window ended with nothing dropped: it is forgotten to make room; key 2 waits
        // for its summary.
        assert_eq!(rl.check(4, t0 + s(31), "4"), Verdict::Emit);
        assert!(rl.entries.contains_key(&2) && rl.entries.contains_key(&4));
        assert_eq!(rl.check(2, t0 + s(32), "2"), summary(2, "2"));
    }

    #[test]
    fn shapes_blank_numbers_and_ids_only() {
        let cases = [
            ("backoff mode interval=199.998648ms", "backoff mode interval=#.#ms"),
            (
                "peer 127.0.0.1:44691 unreachable after 3 tries",
                "peer #.#.#.#:# unreachable after # tries",
            ),
            ("cluster 10ce7cb7a15fce2fea3c8745c58964cb refused", "cluster # refused"),
            ("node1 on tls13, café", "node# on tls#, café"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(shape(text), want, "{text}");
        }
        // Two different errors of one call site stay apart.
        assert_ne!(
            shape("TLS certificates not reloaded error=not PEM"),
            shape("TLS certificates not reloaded error=key does not belong to the certificate")
        );
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let cut = truncate(&long, MAX_TEXT);
        assert!(cut.ends_with("...") && cut.len() <= MAX_TEXT + 3, "{}", cut.len());
        assert_eq!(truncate("short", MAX_TEXT), "short");
    }

    #[test]
    fn openraft_noise_is_what_keel_reports_itself() {
        // Lines seen with one member down and at start-up (openraft 0.9).
        let dropped = [
            "timeout while confirming leadership for read request error=Unreachable node: keel_raft::network::PeerError: peer 127.0.0.1:1 unreachable: connection refused target=3",
            "RPCError err=Unreachable node: keel_raft::network::PeerError: peer 127.0.0.1:1 unreachable",
            "openraft::replication::ReplicationCore<_, _, _>::backoff_drain_events backoff mode: drain events without processing them interval=199.9ms",
            "while requesting vote error=NetworkError: keel_raft::network::PeerError: peer 127.0.0.1:1 answered 503: just started: not voting yet target=2",
            "A message will be ignored because vote changed: msg sent by vote: T2-N2:uncommitted; current my vote: None; when (VoteResponse)",
            // A paused peer (SIGSTOP): Keel's client times out.
            "error replication to target=1 error=NetworkError: keel_raft::network::PeerError: peer 127.0.0.1:1: error sending request for url (http://127.0.0.1:1/peer/raft/append): operation timed out",
            "RPCError err=timeout after 50ms when AppendEntries 3->1",
            "update progress error request_id=HeartBeat result=timeout after 50ms when AppendEntries 3->1",
            "heartbeat error: timeout after 50ms when AppendEntries 3->1, no update to inflight data",
        ];
        for text in dropped {
            assert!(openraft_noise(text).is_some(), "{text}");
        }
        let kept = [
            "error replication to target=3 error=NetworkError: peer 127.0.0.1:1 answered 500: disk full",
            "timeout while confirming leadership for read request error=timeout after 150ms when AppendEntries 1->3",
            "error replication to target=1 error=timeout after 50ms when AppendEntries 3->1",
            "error replication to target=3 error=storage error",
        ];
        for text in kept {
            assert_eq!(openraft_noise(text), None, "{text}");
        }
    }

    #[test]
    fn event_text_and_peer_field() {
        use tracing_subscriber::layer::SubscriberExt;
        // A layer that records what it was given, to check the visitor on real events.
        type Seen = std::sync::Arc<Mutex<Vec<(String, Option<String>)>>>;
        struct Grab(Seen);
        impl<S: Subscriber> Layer<S> for Grab {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let t = EventText::of(event);
                self.0.lock().unwrap().push((t.text(), t.peer));
            }
        }
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Grab(got.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(peer = 3, error = %"refused", "peer {} down", 3);
            tracing::error!(target = "2", "while requesting vote");
            tracing::warn!(attempt = 1u8, "no peer here");
        });
        let got = got.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                ("peer 3 down peer=3 error=refused".to_string(), Some("3".to_string())),
                ("while requesting vote target=2".to_string(), Some("2".to_string())),
                ("no peer here attempt=1".to_string(), None),
            ]
        );
    }

    #[test]
    fn the_layer_drops_repeats_and_openraft_noise() {
        use tracing_subscriber::layer::SubscriberExt;
        struct Count(std::sync::Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Count {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                self.0.lock().unwrap().push(EventText::of(event).text());
            }
        }
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry()
            .with(RateLimitLayer::new())
            .with(Count(got.clone()));
        tracing::subscriber::with_default(sub, || {
            for i in 0..50 {
                tracing::warn!(peer = 3, "lost {i}");
                tracing::warn!(peer = 4, "lost {i}");
                // Another message of the same call site is not hidden by the first.
                let what = if i < 25 { "disk" } else { "net" };
                tracing::warn!("failed: {what}");
                tracing::info!("info {i}");
                tracing::error!(target: "openraft::replication", "RPCError err=Unreachable node: x");
                tracing::warn!(target: PEER_LOG_TARGET, "peer 3 still unreachable {i}");
            }
        });
        let got = got.lock().unwrap().clone();
        let count = |p: &str| got.iter().filter(|l| l.starts_with(p)).count();
        // One per peer (same call site), every INFO and every already-limited peer line.
        assert_eq!(count("lost 0 peer="), 2);
        assert_eq!(count("lost "), 2);
        assert_eq!(
            got.iter().filter(|l| l.starts_with("failed: ")).collect::<Vec<_>>(),
            ["failed: disk", "failed: net"]
        );
        assert_eq!(count("info "), 50);
        assert_eq!(count("RPCError"), 0);
        assert_eq!(count("peer 3 still"), 50);
    }
}
