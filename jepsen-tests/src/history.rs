//! The history record format (`history.jsonl`) and the pairing of invocations with completions.
//!
//! A history is what the clients saw: every operation is recorded once when it is invoked and
//! once when it completes (`ok`, `fail` or `info`), one JSON object per line. The checkers never
//! look at raw lines; they work on [`PairedOp`]s, which [`History::pair`] builds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a history could not be read, written or paired.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("read history {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("history i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("parse history line {line}: {source}")]
    Parse { line: usize, source: serde_json::Error },
    /// The history breaks the recording contract (e.g. two outstanding ops on one process);
    /// this is a harness bug, not a finding about the system under test.
    #[error("malformed history at op {index}: {reason}")]
    Malformed { index: u64, reason: String },
}

/// What a record says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// The client is about to send the request.
    Invoke,
    /// The operation happened (and, for reads, returned `value`).
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// The operation may or may not have happened (timeout, `outcome_unknown`, crash).
    Info,
}

/// The operation's function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpFn {
    /// Register read; `value` on completion is the value read, `null` if never written.
    Read,
    /// Register write of `value`.
    Write,
    /// Register compare-and-set; `value` is `[from, to]`, succeeds iff the register holds `from`.
    Cas,
    /// Append the (unique) element `value` to the list at `key`.
    Append,
    /// Read the whole list at `key`; `value` on completion is the list.
    ReadList,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history; strictly increasing in file order.
    pub index: u64,
    /// Client id. A process has at most one outstanding operation.
    pub process: u64,
    pub kind: OpKind,
    pub f: OpFn,
    pub key: String,
    /// write: the value; cas: `[from, to]`; append: the element; read / read-list: `null` on
    /// invoke, the result on `ok`.
    #[serde(default)]
    pub value: Value,
    /// Monotonic nanoseconds since the start of the run (one clock for all clients).
    pub time_ns: u64,
    /// The node the request was sent to (or answered from), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// The epoch the answering node reported, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Error text for `fail` / `info` completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a paired operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    /// Includes invocations that never completed before the history ended.
    Info,
}

/// An invocation together with its completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedOp {
    pub process: u64,
    pub f: OpFn,
    pub key: String,
    pub outcome: Outcome,
    /// What the client sent: write value, cas `[from, to]`, append element; `null` for reads.
    pub input: Value,
    /// What the op returned: the value / list read on `ok`; `null` otherwise.
    pub output: Value,
    pub invoke_index: u64,
    /// `None` when the history ended with the op still outstanding.
    pub complete_index: Option<u64>,
    pub invoke_ns: u64,
    /// The recorded completion time, if any. For `info` ops this is only when the client gave
    /// up: the checkers treat their completion as +infinity (see [`PairedOp::return_ns`]).
    pub complete_ns: Option<u64>,
    /// From the completion if it says, else from the invocation.
    pub node: Option<u64>,
    pub epoch: Option<u64>,
    pub error: Option<String>,
}

impl PairedOp {
    /// The time by which the op's effect certainly took place, or `None` for +infinity (`info`:
    /// the request may still be in flight and take effect at any later time).
    pub fn return_ns(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Info => None,
            Outcome::Ok | Outcome::Fail => self.complete_ns,
        }
    }

    /// A one-line human description, e.g. `p3 read -> 1 [idx 17, 1.204ms..1.530ms]`.
    pub fn describe(&self) -> String {
        let what = match (self.f, self.outcome) {
            (OpFn::Read | OpFn::ReadList, Outcome::Ok) => format!("{} -> {}", fn_name(self.f), self.output),
            (OpFn::Read | OpFn::ReadList, _) => fn_name(self.f).to_string(),
            (_, _) => format!("{} {}", fn_name(self.f), self.input),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "",
            Outcome::Fail => " (fail)",
            Outcome::Info => " (info)",
        };
        let until = match self.complete_ns {
            Some(t) => fmt_ns(t),
            None => "never completed".to_string(),
        };
        format!(
            "p{} {}{} [idx {}, {}..{}]",
            self.process,
            what,
            outcome,
            self.invoke_index,
            fmt_ns(self.invoke_ns),
            until
        )
    }
}

/// The wire name of an [`OpFn`] (`read-list`, ...).
pub fn fn_name(f: OpFn) -> &'static str {
    match f {
        OpFn::Read => "read",
        OpFn::Write => "write",
        OpFn::Cas => "cas",
        OpFn::Append => "append",
        OpFn::ReadList => "read-list",
    }
}

/// Nanoseconds as milliseconds with microsecond precision, e.g. `1.204ms`.
pub fn fmt_ns(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

/// A whole history, in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
    }

    /// Reads a `history.jsonl` file. Blank lines are skipped; any other line that does not
    /// parse is an error (a truncated last line from a crashed runner included: the runner
    /// should flush whole lines).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HistoryError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| HistoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(BufReader::new(file)).map_err(|e| match e {
            HistoryError::Io(source) => HistoryError::Read {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses JSON lines from any reader.
    pub fn from_reader(reader: impl BufRead) -> Result<Self, HistoryError> {
        let mut ops = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse { line: i + 1, source })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Writes one JSON object per line.
    pub fn write_jsonl(&self, writer: impl Write) -> Result<(), HistoryError> {
        let mut w = BufWriter::new(writer);
        for op in &self.ops {
            serde_json::to_writer(&mut w, op).map_err(std::io::Error::from)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    /// Writes the history to `path` (created or truncated).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        self.write_jsonl(File::create(path)?)
    }

    /// Pairs every invocation with the next completion of the same process, in index order.
    ///
    /// An invocation still outstanding at the end of the history becomes `info` (it may have
    /// happened). Errors on: a process invoking while it has an op outstanding, a completion
    /// with nothing outstanding, a completion whose `f` / `key` differ from its invocation,
    /// a completion earlier than its invocation, and values of the wrong shape (write / append
    /// of `null`, cas not `[from, to]`, a successful read-list that is not a list).
    /// The result is ordered by invocation index.
    pub fn pair(&self) -> Result<Vec<PairedOp>, HistoryError> {
        let mut order: Vec<&Op> = self.ops.iter().collect();
        order.sort_by_key(|op| op.index);
        if let Some(w) = order.windows(2).find(|w| w[0].index == w[1].index) {
            return Err(malformed(w[1].index, "duplicate index"));
        }
        let mut pending: HashMap<u64, &Op> = HashMap::new();
        let mut pairs: Vec<PairedOp> = Vec::with_capacity(order.len() / 2 + 1);
        for op in order {
            if op.kind == OpKind::Invoke {
                if let Some(prev) = pending.get(&op.process) {
                    return Err(malformed(
                        op.index,
                        format!("process {} invoked while op {} is outstanding", op.process, prev.index),
                    ));
                }
                validate_invoke(op)?;
                pending.insert(op.process, op);
                continue;
            }
            let Some(inv) = pending.remove(&op.process) else {
                return Err(malformed(
                    op.index,
                    format!("completion with no outstanding op on process {}", op.process),
                ));
            };
            if inv.f != op.f || inv.key != op.key {
                return Err(malformed(
                    op.index,
                    format!(
                        "completion {} {:?} does not match invocation {} ({} {:?})",
                        fn_name(op.f),
                        op.key,
                        inv.index,
                        fn_name(inv.f),
                        inv.key
                    ),
                ));
            }
            if op.time_ns < inv.time_ns {
                return Err(malformed(
                    op.index,
                    format!("completes before its invocation {}", inv.index),
                ));
            }
            let outcome = match op.kind {
                OpKind::Ok => Outcome::Ok,
                OpKind::Fail => Outcome::Fail,
                OpKind::Info | OpKind::Invoke => Outcome::Info,
            };
            if outcome == Outcome::Ok && op.f == OpFn::ReadList && !op.value.is_array() {
                return Err(malformed(op.index, "ok read-list value is not a list"));
            }
            let output = match (op.f, outcome) {
                (OpFn::Read | OpFn::ReadList, Outcome::Ok) => op.value.clone(),
                _ => Value::Null,
            };
            pairs.push(PairedOp {
                process: inv.process,
                f: inv.f,
                key: inv.key.clone(),
                outcome,
                input: input_of(inv),
                output,
                invoke_index: inv.index,
                complete_index: Some(op.index),
                invoke_ns: inv.time_ns,
                complete_ns: Some(op.time_ns),
                node: op.node.or(inv.node),
                epoch: op.epoch.or(inv.epoch),
                error: op.error.clone(),
            });
        }
        for inv in pending.into_values() {
            pairs.push(PairedOp {
                process: inv.process,
                f: inv.f,
                key: inv.key.clone(),
                outcome: Outcome::Info,
                input: input_of(inv),
                output: Value::Null,
                invoke_index: inv.index,
                complete_index: None,
                invoke_ns: inv.time_ns,
                complete_ns: None,
                node: inv.node,
                epoch: inv.epoch,
                error: None,
            });
        }
        pairs.sort_by_key(|p| p.invoke_index);
        Ok(pairs)
    }
}

fn malformed(index: u64, reason: impl Into<String>) -> HistoryError {
    HistoryError::Malformed {
        index,
        reason: reason.into(),
    }
}

fn input_of(inv: &Op) -> Value {
    match inv.f {
        OpFn::Read | OpFn::ReadList => Value::Null,
        _ => inv.value.clone(),
    }
}

fn validate_invoke(op: &Op) -> Result<(), HistoryError> {
    match op.f {
        OpFn::Write | OpFn::Append if op.value.is_null() => {
            Err(malformed(op.index, format!("{} of null", fn_name(op.f))))
        }
        OpFn::Cas if op.value.as_array().is_none_or(|a| a.len() != 2) => {
            Err(malformed(op.index, "cas value is not [from, to]"))
        }
        _ => Ok(()),
    }
}

/// Evidence of two primaries acting at once, from the epochs the answers carried: `older` was
/// acknowledged in an older epoch than `newer`, yet invoked only after `newer` had completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochOverlap {
    pub newer: PairedOp,
    pub older: PairedOp,
}

/// At most this many overlaps are returned (the first ones in invocation order).
pub const MAX_OVERLAPS: usize = 20;

/// Overlapping primaries as a history shows them. Keel acknowledges an operation only under a
/// valid lease for the epoch it reports (`Keel-Epoch`), and a newer epoch's first lease starts
/// after every older lease ended; so once an operation acknowledged in epoch `f` has completed,
/// no operation invoked later may be acknowledged in an epoch older than `f`. Only `ok`
/// operations that carry an epoch count. Linear after sorting; at most [`MAX_OVERLAPS`].
pub fn overlapping_primaries(ops: &[PairedOp]) -> Vec<EpochOverlap> {
    let acked: Vec<&PairedOp> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.epoch.is_some() && o.complete_ns.is_some())
        .collect();
    let mut by_return = acked.clone();
    by_return.sort_by_key(|o| o.complete_ns);
    let mut by_invoke = acked;
    by_invoke.sort_by_key(|o| (o.invoke_ns, o.invoke_index));
    let mut next = 0;
    // The op with the newest epoch among those completed so far.
    let mut newest: Option<&PairedOp> = None;
    let mut found = Vec::new();
    for op in by_invoke {
        while next < by_return.len() && by_return[next].complete_ns < Some(op.invoke_ns) {
            let done = by_return[next];
            if newest.is_none_or(|n| done.epoch > n.epoch) {
                newest = Some(done);
            }
            next += 1;
        }
        if let Some(n) = newest {
            if op.epoch < n.epoch {
                found.push(EpochOverlap {
                    newer: n.clone(),
                    older: op.clone(),
                });
                if found.len() == MAX_OVERLAPS {
                    break;
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::op;
    use serde_json::json;

    #[test]
    fn line_format_round_trips() {
        let line = r#"{"index":3,"process":1,"kind":"ok","f":"read-list","key":"k1","value":[1,2],"time_ns":1500,"node":2,"epoch":7}"#;
        let h = History::from_reader(line.as_bytes()).unwrap();
        assert_eq!(h.ops[0].f, OpFn::ReadList);
        assert_eq!(h.ops[0].kind, OpKind::Ok);
        assert_eq!(h.ops[0].error, None);
        let mut out = Vec::new();
        h.write_jsonl(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));

        // Missing value / node / epoch / error default to null / None.
        let short = r#"{"index":0,"process":0,"kind":"invoke","f":"read","key":"x","time_ns":0}"#;
        let h = History::from_reader(short.as_bytes()).unwrap();
        assert_eq!(h.ops[0].value, Value::Null);
    }

    #[test]
    fn load_and_save_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let h = History::new(vec![
            op(0, 1, OpKind::Invoke, OpFn::Write, json!(1), 10),
            op(1, 1, OpKind::Info, OpFn::Write, json!(1), 20),
        ]);
        h.save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), h);
        assert!(matches!(
            History::load(dir.path().join("nope")),
            Err(HistoryError::Read { .. })
        ));
        std::fs::write(&path, "{\"index\":0}\n").unwrap();
        assert!(matches!(History::load(&path), Err(HistoryError::Parse { line: 1, .. })));
    }

    #[test]
    fn pairing() {
        use OpFn::*;
        use OpKind::*;
        let h = History::new(vec![
            op(0, 1, Invoke, Write, json!(1), 0),
            op(1, 2, Invoke, Read, Value::Null, 1),
            op(2, 2, Ok, Read, json!(1), 5),
            op(3, 1, Info, Write, Value::Null, 6),
            op(4, 1, Invoke, Cas, json!([1, 2]), 7),
            op(5, 2, Invoke, Read, Value::Null, 8),
            op(6, 2, Fail, Read, Value::Null, 9),
        ]);
        let p = h.pair().unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(
            (p[0].outcome, &p[0].input, p[0].return_ns()),
            (Outcome::Info, &json!(1), None)
        );
        assert_eq!(p[0].complete_ns, Some(6));
        assert_eq!(
            (p[1].outcome, &p[1].output, p[1].return_ns()),
            (Outcome::Ok, &json!(1), Some(5))
        );
        // Never completed: info, no completion.
        assert_eq!((p[2].f, p[2].outcome, p[2].complete_index), (Cas, Outcome::Info, None));
        assert_eq!((p[3].outcome, &p[3].output), (Outcome::Fail, &Value::Null));
    }

    #[test]
    fn pairing_rejects_broken_contracts() {
        use OpFn::*;
        use OpKind::*;
        let cases: &[(&str, Vec<Op>)] = &[
            (
                "two outstanding",
                vec![
                    op(0, 1, Invoke, Read, Value::Null, 0),
                    op(1, 1, Invoke, Read, Value::Null, 1),
                ],
            ),
            ("completion without invoke", vec![op(0, 1, Ok, Read, json!(1), 0)]),
            (
                "f mismatch",
                vec![op(0, 1, Invoke, Read, Value::Null, 0), op(1, 1, Ok, Write, json!(1), 1)],
            ),
            (
                "time goes back",
                vec![op(0, 1, Invoke, Read, Value::Null, 5), op(1, 1, Ok, Read, json!(1), 4)],
            ),
            (
                "duplicate index",
                vec![op(0, 1, Invoke, Read, Value::Null, 0), op(0, 1, Ok, Read, json!(1), 1)],
            ),
            ("write null", vec![op(0, 1, Invoke, Write, Value::Null, 0)]),
            ("cas shape", vec![op(0, 1, Invoke, Cas, json!([1]), 0)]),
            (
                "read-list shape",
                vec![
                    op(0, 1, Invoke, ReadList, Value::Null, 0),
                    op(1, 1, Ok, ReadList, json!(3), 1),
                ],
            ),
        ];
        for (name, ops) in cases {
            let err = History::new(ops.clone()).pair();
            assert!(matches!(err, Err(HistoryError::Malformed { .. })), "{name}: {err:?}");
        }
    }

    #[test]
    fn describe_is_readable() {
        let h = History::new(vec![
            op(0, 3, OpKind::Invoke, OpFn::Read, Value::Null, 1_204_000),
            op(1, 3, OpKind::Ok, OpFn::Read, json!(1), 1_530_500),
        ]);
        assert_eq!(
            h.pair().unwrap()[0].describe(),
            "p3 read -> 1 [idx 0, 1.204ms..1.530ms]"
        );
    }

    /// Acceptance: two overlapping primaries in a hand-made history are caught.
    #[test]
    fn overlapping_primaries_are_caught() {
        // Node 2 (epoch 5) acknowledges a write; afterwards node 1, deposed, still acknowledges
        // a write and a primary read in epoch 4.
        let jsonl = r#"
{"index":0,"process":1,"kind":"invoke","f":"write","key":"r","value":1,"time_ns":0}
{"index":1,"process":1,"kind":"ok","f":"write","key":"r","value":1,"time_ns":10,"node":1,"epoch":4}
{"index":2,"process":2,"kind":"invoke","f":"write","key":"r","value":2,"time_ns":20}
{"index":3,"process":2,"kind":"ok","f":"write","key":"r","value":2,"time_ns":30,"node":2,"epoch":5}
{"index":4,"process":1,"kind":"invoke","f":"write","key":"s","value":3,"time_ns":40}
{"index":5,"process":1,"kind":"ok","f":"write","key":"s","value":3,"time_ns":50,"node":1,"epoch":4}
{"index":6,"process":3,"kind":"invoke","f":"read","key":"s","time_ns":60}
{"index":7,"process":3,"kind":"ok","f":"read","key":"s","value":3,"time_ns":70,"node":1,"epoch":4}
"#;
        let pairs = History::from_reader(jsonl.as_bytes()).unwrap().pair().unwrap();
        let found = overlapping_primaries(&pairs);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].newer.invoke_index, 2);
        assert_eq!(found[0].older.invoke_index, 4);
        assert_eq!(found[1].older.invoke_index, 6);
    }

    #[test]
    fn epochs_that_only_overlap_concurrent_ops_are_fine() {
        let jsonl = r#"
{"index":0,"process":1,"kind":"invoke","f":"write","key":"r","value":1,"time_ns":0}
{"index":1,"process":2,"kind":"invoke","f":"write","key":"r","value":2,"time_ns":5}
{"index":2,"process":2,"kind":"ok","f":"write","key":"r","value":2,"time_ns":10,"epoch":5}
{"index":3,"process":1,"kind":"ok","f":"write","key":"r","value":1,"time_ns":20,"epoch":4}
{"index":4,"process":3,"kind":"invoke","f":"write","key":"r","value":3,"time_ns":30}
{"index":5,"process":3,"kind":"info","f":"write","key":"r","value":3,"time_ns":40,"epoch":4}
{"index":6,"process":4,"kind":"invoke","f":"write","key":"r","value":4,"time_ns":50}
{"index":7,"process":4,"kind":"fail","f":"write","key":"r","value":4,"time_ns":60,"epoch":3}
{"index":8,"process":5,"kind":"invoke","f":"read","key":"r","time_ns":70}
{"index":9,"process":5,"kind":"ok","f":"read","key":"r","value":2,"time_ns":80}
{"index":10,"process":5,"kind":"invoke","f":"read","key":"r","time_ns":90}
{"index":11,"process":5,"kind":"ok","f":"read","key":"r","value":2,"time_ns":95,"epoch":5}
"#;
        // Epoch 4 acknowledged while epoch 5's op was in flight (concurrent: either order);
        // info, failed and epoch-less ops say nothing; the same epoch later is fine.
        let pairs = History::from_reader(jsonl.as_bytes()).unwrap().pair().unwrap();
        assert_eq!(overlapping_primaries(&pairs), Vec::new());
    }
}
