//! keel-jepsen: Keel's Jepsen-style chaos harness, and the history model and checkers that
//! judge what it records.
//!
//! **What it owns.**
//! - The record format: every client operation is recorded twice, at invocation and at
//!   completion (`ok`, `fail` or `info`), to `history.jsonl` ([`history::Op`],
//!   [`history::History`]).
//! - The checkers, which are pure (no processes, no network): [`linearizable`] checks the
//!   register workload (read / write / cas) with a bounded Wing & Gong / Lowe search per key;
//!   [`append`] looks for lost, duplicated, reordered, phantom, aborted and diverged elements in
//!   the append workload; [`history::overlapping_primaries`] looks for an operation acknowledged
//!   in an older epoch after one of a newer epoch had completed (two primaries acting at once).
//!   [`check`] runs all three and returns a serializable [`Report`] whose verdict is the worst
//!   of the checkers' (`invalid` > `unknown` > `valid`); `unknown` means a search bound was hit
//!   and nothing was concluded.
//! - The harness that produces histories ([`runner`], `keel-jepsen run`): real `keel serve`
//!   processes on loopback or each in its own network namespace ([`netns`]), the clients, the
//!   seeded fault schedule ([`nemesis`]) and the faults it injects, the `/primary` sampler, and
//!   the report directory (`index.html`, `latency.svg`, `summary.json`). The namespace lab and
//!   the loopback ports of [`ports`] are shared with the test kit `keel-testkit`.
//!
//! **What it must not touch.** The harness treats Keel as a black box, as Jepsen does: it starts
//! the `keel` binary through its CLI (`keel serve` and its flags), talks to the nodes only
//! through their HTTP API (`/primary`, `/v1/status`, `/v1/kv`, `/v1/switchover`,
//! `/v1/members`), and acts on them only from outside (signals, network namespaces, libfaketime,
//! deleting a whole data directory for the `wipe` fault). It never links the daemon's crates:
//! no `keel-*` crate is a dependency (a test below checks `Cargo.toml`), so a checker cannot
//! lean on an internal that the system under test might get wrong. The one exception is
//! `keel-codec`, for RESP2's bytes only (a request's encoding and the reply parser, as Redis
//! defines them, no Keel type or logic): the Redis workloads' client talks to real
//! `redis-server`s with it, and Keel's Sentinel listener encodes its replies with code of its own.
//! Only tests and the test kit depend on it; the daemon never does.
//!
//! See `DESIGN.md` for the model and the meaning of `info`.

pub mod append;
pub mod history;
mod intern;
pub mod linearizable;
pub mod nemesis;
pub mod netns;
pub mod ports;
pub mod redis_check;
pub mod resp;
mod rng;
pub mod runner;
#[cfg(test)]
mod testutil;

use serde::{Deserialize, Serialize};

pub use history::{History, HistoryError, Op, OpFn, OpKind, Outcome, PairedOp};
pub use linearizable::LinearizableConfig;

/// A checker's judgement. Ordered so that the worst is the greatest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    /// The checker could not decide within its bounds (or the input was unusable for it).
    Unknown,
    Invalid,
}

/// Bounds for [`check_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub linearizable: LinearizableConfig,
}

/// How many records of each kind the history holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub invoke: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Invocations that never completed (counted as `info` by the checkers).
    pub pending: u64,
}

/// Every checker's verdict and details; `verdict` is the worst of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub ops: OpCounts,
    pub linearizable: linearizable::LinearizableReport,
    pub append: append::AppendReport,
    /// Two primaries acting at once, as the acknowledged operations' epochs show it
    /// ([`history::overlapping_primaries`]): any makes the verdict `invalid`.
    pub overlapping_primaries: Vec<history::EpochOverlap>,
}

/// Checks a history with the default bounds.
pub fn check(history: &History) -> Result<Report, HistoryError> {
    check_with(history, &CheckConfig::default())
}

/// Checks a history. Errors only if the history breaks the recording contract (see
/// [`History::pair`]); findings about the system are in the [`Report`].
pub fn check_with(history: &History, config: &CheckConfig) -> Result<Report, HistoryError> {
    let pairs = history.pair()?;
    let mut ops = OpCounts::default();
    for op in &history.ops {
        match op.kind {
            OpKind::Invoke => ops.invoke += 1,
            OpKind::Ok => ops.ok += 1,
            OpKind::Fail => ops.fail += 1,
            OpKind::Info => ops.info += 1,
        }
    }
    ops.pending = pairs.iter().filter(|p| p.complete_index.is_none()).count() as u64;
    let linearizable = linearizable::check(&pairs, &config.linearizable);
    let append = append::check(&pairs);
    let overlapping_primaries = history::overlapping_primaries(&pairs);
    let fencing = if overlapping_primaries.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    let verdict = linearizable.verdict.max(append.verdict).max(fencing);
    Ok(Report {
        verdict,
        ops,
        linearizable,
        append,
        overlapping_primaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Register `r`: a write of 1 by node 1 acknowledged in `write_epoch`, then a read of 1 by
    /// node 2 acknowledged in `read_epoch`.
    fn write_then_read(write_epoch: u64, read_epoch: u64) -> String {
        format!(
            r#"
{{"index":0,"process":1,"kind":"invoke","f":"write","key":"r","value":1,"time_ns":0}}
{{"index":1,"process":1,"kind":"ok","f":"write","key":"r","value":1,"time_ns":10,"node":1,"epoch":{write_epoch}}}
{{"index":2,"process":2,"kind":"invoke","f":"read","key":"r","time_ns":20}}
{{"index":3,"process":2,"kind":"ok","f":"read","key":"r","value":1,"time_ns":30,"node":2,"epoch":{read_epoch}}}
"#
        )
    }

    #[test]
    fn an_older_epoch_acknowledged_after_a_newer_one_fails_the_verdict() {
        // Linearizable values, but the read was acknowledged in epoch 3 after a write of epoch 4
        // had completed: a deposed primary still answering.
        let jsonl = write_then_read(4, 3);
        let report = check(&History::from_reader(jsonl.as_bytes()).unwrap()).unwrap();
        assert_eq!(report.linearizable.verdict, Verdict::Valid);
        assert_eq!(report.overlapping_primaries.len(), 1);
        assert_eq!(report.overlapping_primaries[0].older.epoch, Some(3));
        assert_eq!(report.verdict, Verdict::Invalid);

        // The same read in epoch 4 (or 5) is fine.
        let ok = write_then_read(4, 5);
        let report = check(&History::from_reader(ok.as_bytes()).unwrap()).unwrap();
        assert!(report.overlapping_primaries.is_empty());
        assert_eq!(report.verdict, Verdict::Valid);
    }

    #[test]
    fn report_combines_checkers_and_serializes() {
        let jsonl = write_then_read(3, 3)
            + r#"{"index":4,"process":1,"kind":"invoke","f":"append","key":"l","value":7,"time_ns":40}
{"index":5,"process":1,"kind":"ok","f":"append","key":"l","value":7,"time_ns":50}
{"index":6,"process":2,"kind":"invoke","f":"read-list","key":"l","time_ns":60}
{"index":7,"process":2,"kind":"ok","f":"read-list","key":"l","value":[],"time_ns":70}
{"index":8,"process":3,"kind":"invoke","f":"write","key":"r","value":2,"time_ns":80}
"#;
        let history = History::from_reader(jsonl.as_bytes()).unwrap();
        let report = check(&history).unwrap();
        assert_eq!(report.linearizable.verdict, Verdict::Valid);
        assert_eq!(report.append.verdict, Verdict::Invalid);
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(
            report.ops,
            OpCounts {
                invoke: 5,
                ok: 4,
                fail: 0,
                info: 0,
                pending: 1
            }
        );

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["verdict"], "invalid");
        assert_eq!(json["linearizable"]["keys"][0]["verdict"], "valid");
        assert_eq!(json["append"]["totals"]["lost"]["count"], 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn invalid_witness_serializes_flat() {
        let jsonl = r#"
{"index":0,"process":1,"kind":"invoke","f":"write","key":"r","value":1,"time_ns":0}
{"index":1,"process":1,"kind":"ok","f":"write","key":"r","value":1,"time_ns":10}
{"index":2,"process":2,"kind":"invoke","f":"read","key":"r","time_ns":20}
{"index":3,"process":2,"kind":"ok","f":"read","key":"r","value":null,"time_ns":30}
"#;
        let report = check(&History::from_reader(jsonl.as_bytes()).unwrap()).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let key = &json["linearizable"]["keys"][0];
        assert_eq!(key["verdict"], "invalid");
        assert_eq!(key["witness"]["op"]["invoke_index"], 2);
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);
    }

    /// The harness drives `keel` as a black box: none of Keel's crates is a dependency, except
    /// keel-codec for RESP2's bytes.
    #[test]
    fn no_keel_crate_is_a_dependency() {
        let manifest = include_str!("../Cargo.toml");
        let mut section = "";
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section.ends_with("dependencies]") {
                assert!(
                    !line.starts_with("keel") || line.starts_with("keel-codec "),
                    "keel-jepsen depends on a Keel crate: {line}"
                );
            }
        }
    }

    #[test]
    fn malformed_history_is_an_error_not_a_verdict() {
        let jsonl = r#"{"index":0,"process":1,"kind":"ok","f":"read","key":"r","value":1,"time_ns":0}"#;
        let err = check(&History::from_reader(jsonl.as_bytes()).unwrap()).unwrap_err();
        assert!(matches!(err, HistoryError::Malformed { index: 0, .. }), "{err}");
    }
}
