//! Linearizability of single-key registers (read / write / cas), checked per key.
//!
//! The search is Wing & Gong's, with Lowe's memoisation ("Testing for linearizability", 2017),
//! as in Porcupine and Knossos's `wgl`: walk the history's call/return events in time order,
//! tentatively linearize any op whose call has been reached, backtrack when a return is reached
//! for an op not yet linearized, and skip any configuration `(set of linearized ops, register
//! value)` already explored. Keys are independent registers, so each is its own search.
//!
//! `fail` ops are dropped (they did not happen). `info` writes and cas are optional: they may be
//! linearized at any point after their invocation, or never. `info` reads are dropped (a read
//! that returned nothing has no effect and constrains nothing).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{fmt_ns, OpFn, Outcome, PairedOp};
use crate::intern::Interner;
use crate::Verdict;

/// Search bounds, per key. Exceeding any of them gives [`KeyResult::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearizableConfig {
    /// Most distinct configurations `(linearized set, value)` remembered for one key.
    pub max_states: u64,
    /// Estimated memory of the remembered configurations for one key. One configuration costs
    /// about `ops / 8 + 40` bytes, so this is the binding bound on long histories.
    pub max_memory_bytes: u64,
    /// Wall-clock time for one key's search.
    pub time_limit_ms: u64,
}

impl Default for LinearizableConfig {
    fn default() -> Self {
        LinearizableConfig {
            max_states: 10_000_000,
            max_memory_bytes: 1 << 30,
            time_limit_ms: 60_000,
        }
    }
}

/// The outcome of one key's search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum KeyResult {
    Valid,
    Invalid {
        witness: Box<Witness>,
    },
    /// A bound was hit before the search finished; says nothing either way.
    Unknown {
        reason: String,
    },
}

impl KeyResult {
    pub fn verdict(&self) -> Verdict {
        match self {
            KeyResult::Valid => Verdict::Valid,
            KeyResult::Invalid { .. } => Verdict::Invalid,
            KeyResult::Unknown { .. } => Verdict::Unknown,
        }
    }
}

/// Why a key is not linearizable: the first completion no linearization gets past.
///
/// The history up to `op`'s completion is the smallest prefix (cut at a completion) that is not
/// linearizable; everything that completed before it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Witness {
    pub description: String,
    /// The op that cannot be linearized before it returned.
    pub op: PairedOp,
    /// How many ops with a definite completion returned before `op` did.
    pub prefix_ops: usize,
    /// Values the register could hold when `op` had to take effect (at most 8 listed).
    pub possible_values: Vec<Value>,
}

/// One key's result with search statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyReport {
    pub key: String,
    /// Ops in the search (`ok` ops plus `info` writes and cas).
    pub ops: usize,
    /// Of which `info` (optional).
    pub info_ops: usize,
    /// `info` writes and cas left out because no op could observe their value (they cannot
    /// matter; see `DESIGN.md`).
    pub info_dropped: usize,
    /// Distinct configurations explored.
    pub states: u64,
    pub elapsed_us: u64,
    #[serde(flatten)]
    pub result: KeyResult,
}

/// The register checker's result: worst verdict over keys, and every key's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearizableReport {
    pub verdict: Verdict,
    pub keys: Vec<KeyReport>,
}

/// Checks the read / write / cas ops of `ops` (other functions are ignored), key by key.
pub fn check(ops: &[PairedOp], config: &LinearizableConfig) -> LinearizableReport {
    let mut by_key: BTreeMap<&str, Vec<&PairedOp>> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|op| matches!(op.f, OpFn::Read | OpFn::Write | OpFn::Cas))
    {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<KeyReport> = by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, config))
        .collect();
    let verdict = keys.iter().map(|k| k.result.verdict()).max().unwrap_or(Verdict::Valid);
    LinearizableReport { verdict, keys }
}

/// Checks one key's register ops.
pub fn check_key(key: &str, ops: &[&PairedOp], config: &LinearizableConfig) -> KeyReport {
    let start = Instant::now();
    let mut values = Interner::default();
    let mut lin = Vec::with_capacity(ops.len());
    for (src, op) in ops.iter().enumerate() {
        let step = match (op.f, op.outcome) {
            (_, Outcome::Fail) | (OpFn::Read, Outcome::Info) => continue,
            (OpFn::Read, Outcome::Ok) => Step::Read(values.intern(&op.output)),
            (OpFn::Write, _) => Step::Write(values.intern(&op.input)),
            (OpFn::Cas, _) => match op.input.as_array().map(Vec::as_slice) {
                Some([from, to]) => Step::Cas(values.intern(from), values.intern(to)),
                _ => {
                    let reason = format!("cas value is not [from, to]: {}", op.describe());
                    return report(key, [0; 3], 0, start, KeyResult::Unknown { reason });
                }
            },
            (OpFn::Append | OpFn::ReadList, _) => continue,
        };
        lin.push(LinOp {
            step,
            call_ns: op.invoke_ns,
            ret_ns: op.return_ns(),
            src,
        });
    }
    let (lin, info_dropped) = drop_unobservable(lin);
    let info_ops = lin.iter().filter(|op| op.ret_ns.is_none()).count();
    let (outcome, states) = Search::new(&lin).run(config, start);
    let result = match outcome {
        SearchOutcome::Valid => KeyResult::Valid,
        SearchOutcome::Unknown(reason) => KeyResult::Unknown { reason },
        SearchOutcome::Invalid { op, prefix_ops, states } => {
            let op = ops[lin[op].src].clone();
            let possible_values: Vec<Value> = states.iter().map(|&s| values.value(s).clone()).collect();
            let held = possible_values
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            let until = op.complete_ns.map(fmt_ns).unwrap_or_default();
            let description = format!(
                "{} cannot be linearized: after the {prefix_ops} ops that completed before it, the register \
                 could only hold {held}; the history up to {until} is not linearizable",
                op.describe()
            );
            KeyResult::Invalid {
                witness: Box::new(Witness {
                    description,
                    op,
                    prefix_ops,
                    possible_values,
                }),
            }
        }
    };
    report(key, [lin.len(), info_ops, info_dropped], states, start, result)
}

/// `counts`: ops in the search, of which optional, and optional ops dropped.
fn report(key: &str, counts: [usize; 3], states: u64, start: Instant, result: KeyResult) -> KeyReport {
    let elapsed_us = start.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
    let [ops, info_ops, info_dropped] = counts;
    KeyReport {
        key: key.to_string(),
        ops,
        info_ops,
        info_dropped,
        states,
        elapsed_us,
        result,
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

/// The search state: the register's value, and whether an optional (`info`) op set it and no
/// op has observed it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    value: u32,
    unobserved: bool,
}

impl State {
    const INITIAL: State = State {
        value: 0,
        unobserved: false,
    };

    fn word(self) -> u64 {
        u64::from(self.value) | (u64::from(self.unobserved) << 32)
    }
}

/// The register model, restricted to the normal form: the new state, or `None` if the op
/// cannot take effect in `state`.
///
/// Normal form: any valid linearization stays valid when an optional op whose value is not
/// observed by the very next op (a read of it, or a cas from it) is deleted; the next op is then
/// a write, which does not care, or there is none. Deleting such ops until none is left gives a
/// linearization in which every optional op is immediately observed. So it is enough to search
/// those, and a write may not directly follow an unobserved optional op. Without this, `n`
/// timed-out writes that never took effect make the search try all `2^n` subsets of them.
fn apply(state: State, step: Step, optional: bool) -> Option<State> {
    let value = match step {
        Step::Read(v) => (state.value == v).then_some(v)?,
        Step::Write(_) if state.unobserved => return None,
        Step::Write(v) => v,
        Step::Cas(from, to) => (state.value == from).then_some(to)?,
    };
    let changes = !matches!(step, Step::Read(_));
    Some(State {
        value,
        unobserved: optional && changes,
    })
}

/// Drops optional ops whose resulting value no op could observe: in the normal form (see
/// [`apply`]) they are never linearized. Observers are `ok` reads and cas, and kept optional cas
/// (so this runs to a fixpoint). Returns the kept ops and how many were dropped.
fn drop_unobservable(ops: Vec<LinOp>) -> (Vec<LinOp>, usize) {
    let observes = |op: &LinOp| match op.step {
        Step::Read(v) | Step::Cas(v, _) => Some(v),
        Step::Write(_) => None,
    };
    let result = |op: &LinOp| match op.step {
        Step::Read(v) | Step::Write(v) | Step::Cas(_, v) => v,
    };
    let mut keep: Vec<bool> = ops.iter().map(|op| op.ret_ns.is_some()).collect();
    let mut observed: HashSet<u32> = ops
        .iter()
        .filter(|op| op.ret_ns.is_some())
        .filter_map(observes)
        .collect();
    loop {
        let mut changed = false;
        for (i, op) in ops.iter().enumerate() {
            if !keep[i] && observed.contains(&result(op)) {
                keep[i] = true;
                changed = true;
                observed.extend(observes(op));
            }
        }
        if !changed {
            break;
        }
    }
    let dropped = keep.iter().filter(|&&k| !k).count();
    let kept = ops
        .into_iter()
        .zip(keep)
        .filter_map(|(op, k)| k.then_some(op))
        .collect();
    (kept, dropped)
}

struct LinOp {
    step: Step,
    call_ns: u64,
    /// `None`: +infinity (an `info` op, optional).
    ret_ns: Option<u64>,
    /// Index into the key's paired ops.
    src: usize,
}

enum SearchOutcome {
    Valid,
    Invalid {
        op: usize,
        prefix_ops: usize,
        states: Vec<u32>,
    },
    Unknown(String),
}

const NIL: usize = usize::MAX;
const MAX_WITNESS_VALUES: usize = 8;

/// The event list: nodes are call / return events sorted by time, threaded as a doubly linked
/// list that lifting an op unlinks (dancing links); node `head` is the sentinel.
struct Search<'a> {
    ops: &'a [LinOp],
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [LinOp]) -> Self {
        // Calls sort before returns at the same instant: equal timestamps count as concurrent,
        // which can only make the checker more permissive, never report a false violation.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call_ns, false, i));
            if let Some(t) = op.ret_ns {
                events.push((t, true, i));
            }
        }
        events.sort_unstable();
        let n = events.len();
        let mut call_node = vec![NIL; ops.len()];
        let mut ret_node = vec![NIL; ops.len()];
        for (node, &(_, is_ret, op)) in events.iter().enumerate() {
            if is_ret {
                ret_node[op] = node;
            } else {
                call_node[op] = node;
            }
        }
        let head = n;
        let next = (0..=n)
            .map(|i| {
                if i == head {
                    if n == 0 {
                        NIL
                    } else {
                        0
                    }
                } else if i + 1 < n {
                    i + 1
                } else {
                    NIL
                }
            })
            .collect();
        let prev = (0..=n).map(|i| if i == 0 { head } else { i.wrapping_sub(1) }).collect();
        Search {
            ops,
            node_op: events.iter().map(|e| e.2).collect(),
            node_is_call: events.iter().map(|e| !e.1).collect(),
            next,
            prev,
            head,
            call_node,
            ret_node,
        }
    }

    fn unlink(&mut self, n: usize) {
        let (p, nx) = (self.prev[n], self.next[n]);
        self.next[p] = nx;
        if nx != NIL {
            self.prev[nx] = p;
        }
    }

    fn relink(&mut self, n: usize) {
        let (p, nx) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if nx != NIL {
            self.prev[nx] = n;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NIL {
            self.unlink(self.ret_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NIL {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }

    /// Returns the outcome and the number of configurations explored.
    fn run(mut self, config: &LinearizableConfig, start: Instant) -> (SearchOutcome, u64) {
        let required = self.ops.iter().filter(|op| op.ret_ns.is_some()).count();
        if required == 0 {
            return (SearchOutcome::Valid, 0);
        }
        let deadline = start + Duration::from_millis(config.time_limit_ms);
        let words = self.ops.len().div_ceil(64);
        // The configuration key: the linearized-set bitset followed by one word for the state.
        let mut key = vec![0u64; words + 1];
        let entry_bytes = (words as u64 + 1) * 8 + 32;
        let mut cache: HashSet<Box<[u64]>> = HashSet::new();
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut state = State::INITIAL;
        let mut done = 0usize;
        let mut most_done = 0usize;
        // The furthest return event at which the search got stuck, and the values seen there.
        let mut stuck_node = 0usize;
        let mut stuck_states: Vec<u32> = Vec::new();
        let mut steps = 0u64;
        let mut entry = self.next[self.head];
        loop {
            steps += 1;
            if steps.is_multiple_of(4096) && Instant::now() >= deadline {
                let reason = format!(
                    "time limit of {}ms exceeded after {} states; at most {most_done} of {required} completed ops \
                     linearized",
                    config.time_limit_ms,
                    cache.len()
                );
                return (SearchOutcome::Unknown(reason), cache.len() as u64);
            }
            if entry != NIL && self.node_is_call[entry] {
                let op = self.node_op[entry];
                let optional = self.ops[op].ret_ns.is_none();
                if let Some(new_state) = apply(state, self.ops[op].step, optional) {
                    key[op / 64] |= 1 << (op % 64);
                    key[words] = new_state.word();
                    if !cache.contains(&key[..]) {
                        cache.insert(key.clone().into_boxed_slice());
                        let n = cache.len() as u64;
                        if n > config.max_states || n * entry_bytes > config.max_memory_bytes {
                            let reason = format!(
                                "state bound exceeded: {n} states (max_states {}, ~{} MiB of max_memory_bytes {} MiB); \
                                 at most {most_done} of {required} completed ops linearized",
                                config.max_states,
                                (n * entry_bytes) >> 20,
                                config.max_memory_bytes >> 20
                            );
                            return (SearchOutcome::Unknown(reason), n);
                        }
                        stack.push((op, state));
                        state = new_state;
                        if self.ops[op].ret_ns.is_some() {
                            done += 1;
                            most_done = most_done.max(done);
                            if done == required {
                                return (SearchOutcome::Valid, n);
                            }
                        }
                        self.lift(op);
                        entry = self.next[self.head];
                        continue;
                    }
                    key[op / 64] &= !(1 << (op % 64));
                }
                entry = self.next[entry];
                continue;
            }
            // A return for an op not yet linearized (or, defensively, the end of the list, which
            // only optional calls can leave unvisited): this branch is dead; backtrack.
            if entry != NIL {
                if entry > stuck_node {
                    stuck_node = entry;
                    stuck_states.clear();
                }
                if entry == stuck_node
                    && stuck_states.len() < MAX_WITNESS_VALUES
                    && !stuck_states.contains(&state.value)
                {
                    stuck_states.push(state.value);
                }
            }
            let Some((op, prev_state)) = stack.pop() else {
                let prefix_ops = (0..stuck_node).filter(|&n| !self.node_is_call[n]).count();
                stuck_states.sort_unstable();
                let outcome = SearchOutcome::Invalid {
                    op: self.node_op[stuck_node],
                    prefix_ops,
                    states: stuck_states,
                };
                return (outcome, cache.len() as u64);
            };
            key[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            if self.ops[op].ret_ns.is_some() {
                done -= 1;
            }
            self.unlift(op);
            entry = self.next[self.call_node[op]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, OpKind};
    use crate::testutil::{history, last_ok, op, push_op, Rng, Row};
    use std::collections::HashMap;

    fn check_rows(rows: &[Row], config: &LinearizableConfig) -> LinearizableReport {
        check(&history(&[("x", rows)]).pair().unwrap(), config)
    }

    #[test]
    fn register_histories() {
        use Verdict::{Invalid, Valid};
        #[rustfmt::skip]
        let cases: &[(&str, &[Row], Verdict)] = &[
            ("empty history", &[], Valid),
            ("read of a never-written key is null", &[
                (0, 1, "invoke", "read", "null"), (1, 1, "ok", "read", "null"),
            ], Valid),
            ("sequential write then read", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1"),
                (2, 2, "invoke", "read", "null"), (3, 2, "ok", "read", "1"),
            ], Valid),
            ("stale read after a completed write", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1"),
                (2, 1, "invoke", "write", "2"), (3, 1, "ok", "write", "2"),
                (4, 2, "invoke", "read", "null"), (5, 2, "ok", "read", "1"),
            ], Invalid),
            ("null read after a completed write", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1"),
                (2, 2, "invoke", "read", "null"), (3, 2, "ok", "read", "null"),
            ], Invalid),
            ("concurrent write and read sees the old value", &[
                (0, 1, "invoke", "write", "1"), (1, 2, "invoke", "read", "null"),
                (2, 2, "ok", "read", "null"), (3, 1, "ok", "write", "1"),
            ], Valid),
            ("concurrent write and read sees the new value", &[
                (0, 1, "invoke", "write", "1"), (1, 2, "invoke", "read", "null"),
                (2, 2, "ok", "read", "1"), (3, 1, "ok", "write", "1"),
            ], Valid),
            ("read sees a write invoked only after the read returned", &[
                (0, 2, "invoke", "read", "null"), (1, 2, "ok", "read", "1"),
                (2, 1, "invoke", "write", "1"), (3, 1, "ok", "write", "1"),
            ], Invalid),
            ("read of a value never written", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1"),
                (2, 2, "invoke", "read", "null"), (3, 2, "ok", "read", "7"),
            ], Invalid),
            ("equal timestamps count as concurrent", &[
                (0, 1, "invoke", "write", "1"), (5, 1, "ok", "write", "1"),
                (5, 2, "invoke", "read", "null"), (6, 2, "ok", "read", "null"),
            ], Valid),
            ("two reads concurrent with a write cannot see new then old", &[
                (0, 1, "invoke", "write", "1"),
                (1, 2, "invoke", "read", "null"), (2, 2, "ok", "read", "1"),
                (3, 3, "invoke", "read", "null"), (4, 3, "ok", "read", "null"),
                (9, 1, "ok", "write", "1"),
            ], Invalid),
            ("info write takes effect long after it timed out", &[
                (0, 1, "invoke", "write", "1"), (2, 1, "info", "write", "1"),
                (5, 2, "invoke", "read", "null"), (6, 2, "ok", "read", "null"),
                (10, 2, "invoke", "read", "null"), (11, 2, "ok", "read", "1"),
            ], Valid),
            ("info write never visible", &[
                (0, 1, "invoke", "write", "1"), (2, 1, "info", "write", "1"),
                (5, 2, "invoke", "read", "null"), (6, 2, "ok", "read", "null"),
            ], Valid),
            ("write never completed, visible later", &[
                (0, 1, "invoke", "write", "1"),
                (5, 2, "invoke", "read", "null"), (6, 2, "ok", "read", "1"),
            ], Valid),
            ("info write visible, then gone", &[
                (0, 1, "invoke", "write", "1"), (2, 1, "info", "write", "1"),
                (5, 2, "invoke", "read", "null"), (6, 2, "ok", "read", "1"),
                (7, 2, "invoke", "read", "null"), (8, 2, "ok", "read", "null"),
            ], Invalid),
            ("info write cannot take effect before its invocation", &[
                (0, 2, "invoke", "read", "null"), (1, 2, "ok", "read", "1"),
                (2, 1, "invoke", "write", "1"), (3, 1, "info", "write", "1"),
            ], Invalid),
            ("failed write is visible", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "fail", "write", "1"),
                (2, 2, "invoke", "read", "null"), (3, 2, "ok", "read", "1"),
            ], Invalid),
            ("info and failed reads constrain nothing", &[
                (0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1"),
                (2, 2, "invoke", "read", "null"), (3, 2, "info", "read", "null"),
                (4, 2, "invoke", "read", "null"), (5, 2, "fail", "read", "null"),
            ], Valid),
            ("cas from the current value", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[0, 1]"), (3, 1, "ok", "cas", "[0, 1]"),
                (4, 2, "invoke", "read", "null"), (5, 2, "ok", "read", "1"),
            ], Valid),
            ("cas succeeds from a value the register does not hold", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[5, 6]"), (3, 1, "ok", "cas", "[5, 6]"),
            ], Invalid),
            ("cas from null on a never-written key", &[
                (0, 1, "invoke", "cas", "[null, 1]"), (1, 1, "ok", "cas", "[null, 1]"),
                (2, 2, "invoke", "read", "null"), (3, 2, "ok", "read", "1"),
            ], Valid),
            ("failed cas did not happen", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[1, 2]"), (3, 1, "fail", "cas", "[1, 2]"),
                (4, 2, "invoke", "read", "null"), (5, 2, "ok", "read", "0"),
            ], Valid),
            ("info cas takes effect", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[0, 1]"), (3, 1, "info", "cas", "[0, 1]"),
                (4, 2, "invoke", "read", "null"), (5, 2, "ok", "read", "1"),
            ], Valid),
            ("info cas cannot apply when its from does not match", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[3, 1]"), (3, 1, "info", "cas", "[3, 1]"),
                (4, 2, "invoke", "read", "null"), (5, 2, "ok", "read", "1"),
            ], Invalid),
            ("lost update: two concurrent cas from the same value both succeed", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[0, 1]"), (2, 2, "invoke", "cas", "[0, 2]"),
                (3, 1, "ok", "cas", "[0, 1]"), (4, 2, "ok", "cas", "[0, 2]"),
            ], Invalid),
            ("lost update: sequential cas from the same value both succeed", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[0, 1]"), (3, 1, "ok", "cas", "[0, 1]"),
                (4, 2, "invoke", "cas", "[0, 2]"), (5, 2, "ok", "cas", "[0, 2]"),
            ], Invalid),
            ("concurrent cas chain in either order", &[
                (0, 1, "invoke", "write", "0"), (1, 1, "ok", "write", "0"),
                (2, 1, "invoke", "cas", "[1, 2]"), (2, 2, "invoke", "cas", "[0, 1]"),
                (5, 1, "ok", "cas", "[1, 2]"), (6, 2, "ok", "cas", "[0, 1]"),
                (7, 3, "invoke", "read", "null"), (8, 3, "ok", "read", "2"),
            ], Valid),
        ];
        for (name, rows, expected) in cases {
            let report = check_rows(rows, &LinearizableConfig::default());
            assert_eq!(report.verdict, *expected, "{name}: {report:#?}");
        }
    }

    #[test]
    fn witness_names_the_stale_read_and_the_values() {
        let rows: &[Row] = &[
            (0, 1, "invoke", "write", "1"),
            (1_000_000, 1, "ok", "write", "1"),
            (2_000_000, 1, "invoke", "write", "2"),
            (3_000_000, 1, "ok", "write", "2"),
            (4_000_000, 2, "invoke", "read", "null"),
            (5_000_000, 2, "ok", "read", "1"),
            // Later ops do not move the witness: it is the smallest failing prefix.
            (6_000_000, 2, "invoke", "read", "null"),
            (7_000_000, 2, "ok", "read", "5"),
        ];
        let report = check_rows(rows, &LinearizableConfig::default());
        let KeyResult::Invalid { witness } = &report.keys[0].result else {
            panic!("{report:#?}")
        };
        assert_eq!(witness.op.invoke_index, 4);
        assert_eq!(witness.prefix_ops, 2);
        assert_eq!(witness.possible_values, vec![serde_json::json!(2)]);
        assert_eq!(
            witness.description,
            "p2 read -> 1 [idx 4, 4.000ms..5.000ms] cannot be linearized: after the 2 ops that completed before it, \
             the register could only hold 2; the history up to 5.000ms is not linearizable"
        );
    }

    #[test]
    fn keys_are_independent_and_the_worst_wins() {
        let ok: &[Row] = &[(0, 1, "invoke", "write", "1"), (1, 1, "ok", "write", "1")];
        let bad: &[Row] = &[(0, 2, "invoke", "read", "null"), (1, 2, "ok", "read", "1")];
        let ok2: &[Row] = &[(0, 3, "invoke", "write", "1"), (1, 3, "ok", "write", "1")];
        let h = history(&[("a", ok), ("b", bad), ("c", ok2)]);
        let report = check(&h.pair().unwrap(), &LinearizableConfig::default());
        let verdicts: Vec<_> = report
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.result.verdict()))
            .collect();
        assert_eq!(
            verdicts,
            [("a", Verdict::Valid), ("b", Verdict::Invalid), ("c", Verdict::Valid)]
        );
        assert_eq!(report.verdict, Verdict::Invalid);
    }

    /// `n` concurrent writes of distinct values and, overlapping all of them, a read of a value
    /// nobody wrote that returns first: not linearizable, but only after trying every subset
    /// of the writes before the read (about `2^n * n` configurations).
    fn pathological(n: u64) -> Vec<PairedOp> {
        let mut ops = Vec::new();
        for p in 0..n {
            ops.push(op(p, p, OpKind::Invoke, OpFn::Write, Value::from(p), p));
        }
        ops.push(op(n, n, OpKind::Invoke, OpFn::Read, Value::Null, n));
        ops.push(op(n + 1, n, OpKind::Ok, OpFn::Read, Value::from(999), n + 1));
        for p in 0..n {
            ops.push(op(n + 2 + p, p, OpKind::Ok, OpFn::Write, Value::from(p), n + 2 + p));
        }
        History::new(ops).pair().unwrap()
    }

    #[test]
    fn bounds_give_unknown_never_a_guess() {
        let ops = pathological(12);
        // Each bound alone, too tight for this history: `unknown`, and the reason names it.
        let cases = [
            (
                "state bound exceeded",
                LinearizableConfig {
                    max_states: 1_000,
                    ..LinearizableConfig::default()
                },
            ),
            (
                "state bound exceeded",
                LinearizableConfig {
                    max_memory_bytes: 64 * 1024,
                    ..LinearizableConfig::default()
                },
            ),
            (
                "time limit",
                LinearizableConfig {
                    time_limit_ms: 0,
                    ..LinearizableConfig::default()
                },
            ),
        ];
        for (bound, config) in cases {
            let report = check(&ops, &config);
            let KeyResult::Unknown { reason } = &report.keys[0].result else {
                panic!("{report:#?}")
            };
            assert!(reason.contains(bound), "{reason}");
            assert_eq!(report.verdict, Verdict::Unknown);
        }

        // With room to finish, the same history is decided.
        let report = check(&ops, &LinearizableConfig::default());
        assert_eq!(report.verdict, Verdict::Invalid, "{report:#?}");
        assert!(report.keys[0].states > 1_000);
    }

    #[test]
    fn unknown_is_worse_than_valid_but_not_than_invalid() {
        let mut ops = pathological(12);
        let valid = history(&[("b", &[(0, 9, "invoke", "write", "1"), (1, 9, "ok", "write", "1")])]);
        let invalid = history(&[("c", &[(0, 9, "invoke", "read", "null"), (1, 9, "ok", "read", "1")])]);
        let tight = LinearizableConfig {
            max_states: 100,
            ..LinearizableConfig::default()
        };
        let mut with_valid = ops.clone();
        with_valid.extend(valid.pair().unwrap());
        assert_eq!(check(&with_valid, &tight).verdict, Verdict::Unknown);
        ops.extend(invalid.pair().unwrap());
        assert_eq!(check(&ops, &tight).verdict, Verdict::Invalid);
    }

    /// The register model without the normal-form restriction.
    fn plain_apply(state: u32, step: Step) -> Option<u32> {
        match step {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas(from, to) => (state == from).then_some(to),
        }
    }

    /// Is there an order of all `ok` ops and any subset of the optional ones that respects
    /// real time and the plain register model? Exhaustive, for tiny histories only.
    fn brute_force(ops: &[LinOp], placed: &mut Vec<bool>, state: u32) -> bool {
        let required_left = ops.iter().zip(placed.iter()).any(|(op, &p)| !p && op.ret_ns.is_some());
        if !required_left {
            return true;
        }
        for c in 0..ops.len() {
            if placed[c] {
                continue;
            }
            // Every unplaced op that must precede `c` (returned strictly before `c` was called)
            // blocks it; optional ops never return, so never block.
            let blocked = (0..ops.len()).any(|a| !placed[a] && ops[a].ret_ns.is_some_and(|r| r < ops[c].call_ns));
            if blocked {
                continue;
            }
            if let Some(next) = plain_apply(state, ops[c].step) {
                placed[c] = true;
                let ok = brute_force(ops, placed, next);
                placed[c] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = Rng(42);
        let (mut valid, mut invalid) = (0, 0);
        for case in 0..5_000 {
            let n = 1 + rng.below(7);
            let mut rows = Vec::new();
            for p in 0..n {
                let call = rng.below(10);
                let ret = call + rng.below(6);
                let value = |rng: &mut Rng| match rng.below(4) {
                    0 => Value::Null,
                    v => Value::from(v),
                };
                let (f, input, output) = match rng.below(3) {
                    0 => (OpFn::Read, Value::Null, value(&mut rng)),
                    1 => (OpFn::Write, Value::from(1 + rng.below(3)), Value::Null),
                    _ => (
                        OpFn::Cas,
                        Value::Array(vec![value(&mut rng), Value::from(1 + rng.below(3))]),
                        Value::Null,
                    ),
                };
                let kind = match rng.below(6) {
                    0 | 1 => OpKind::Info,
                    2 => OpKind::Fail,
                    _ => OpKind::Ok,
                };
                rows.push(op(0, p, OpKind::Invoke, f, input.clone(), call));
                let done = if kind == OpKind::Ok && f == OpFn::Read {
                    output
                } else {
                    input
                };
                rows.push(op(0, p, kind, f, done, ret));
            }
            rows.sort_by_key(|op| (op.time_ns, op.kind != OpKind::Invoke));
            for (i, op) in rows.iter_mut().enumerate() {
                op.index = i as u64;
            }
            let pairs = History::new(rows).pair().unwrap();
            let report = check(&pairs, &LinearizableConfig::default());

            let refs: Vec<&PairedOp> = pairs.iter().collect();
            let mut values = Interner::default();
            let lin: Vec<LinOp> = refs
                .iter()
                .filter(|op| op.outcome != Outcome::Fail && !(op.f == OpFn::Read && op.outcome == Outcome::Info))
                .map(|op| LinOp {
                    step: match op.f {
                        OpFn::Read => Step::Read(values.intern(&op.output)),
                        OpFn::Write => Step::Write(values.intern(&op.input)),
                        _ => Step::Cas(values.intern(&op.input[0]), values.intern(&op.input[1])),
                    },
                    call_ns: op.invoke_ns,
                    ret_ns: op.return_ns(),
                    src: 0,
                })
                .collect();
            let expected = if brute_force(&lin, &mut vec![false; lin.len()], 0) {
                valid += 1;
                Verdict::Valid
            } else {
                invalid += 1;
                Verdict::Invalid
            };
            assert_eq!(report.verdict, expected, "case {case}: {pairs:#?}\n{report:#?}");
        }
        // Both outcomes well represented, or the comparison proves little.
        assert!(valid > 500 && invalid > 500, "valid {valid}, invalid {invalid}");
    }

    /// Simulates `processes` clients against real registers: each op is invoked, takes effect
    /// atomically at a random later step, and completes at a random step after that, so
    /// intervals overlap. Some ops time out (`info`), before or after taking effect; cas that
    /// do not match fail. The result is linearizable by construction.
    fn simulated_history(seed: u64, processes: u64, keys: u64, total_ops: usize) -> History {
        struct Pending {
            f: OpFn,
            key: String,
            value: Value,
            applied: Option<Value>,
        }
        let mut rng = Rng(seed);
        let mut registers: HashMap<String, Value> = HashMap::new();
        let mut pending: Vec<Option<Pending>> = (0..processes).map(|_| None).collect();
        // Info ops that have not taken effect yet and may do so any time later.
        let mut limbo: Vec<(String, OpFn, Value)> = Vec::new();
        let mut ops = Vec::new();
        let mut invoked = 0;
        let mut time = 0u64;
        let mut next_value = 1u64;
        let record = push_op;
        let apply_op = |registers: &mut HashMap<String, Value>, f: OpFn, key: &str, value: &Value| -> Option<Value> {
            let current = registers.get(key).cloned().unwrap_or(Value::Null);
            match f {
                OpFn::Read => Some(current),
                OpFn::Write => {
                    registers.insert(key.into(), value.clone());
                    Some(Value::Null)
                }
                _ => {
                    if current == value[0] {
                        registers.insert(key.into(), value[1].clone());
                        Some(Value::Null)
                    } else {
                        None
                    }
                }
            }
        };
        while invoked < total_ops || pending.iter().any(Option::is_some) {
            time += 1 + rng.below(1_000);
            let p = rng.below(processes) as usize;
            if rng.below(20) == 0 && !limbo.is_empty() {
                let (key, f, value) = limbo.swap_remove(rng.below(limbo.len() as u64) as usize);
                apply_op(&mut registers, f, &key, &value);
                continue;
            }
            match pending[p].take() {
                None if invoked < total_ops => {
                    invoked += 1;
                    let key = format!("k{}", rng.below(keys));
                    let current = registers.get(&key).cloned().unwrap_or(Value::Null);
                    let (f, value) = match rng.below(3) {
                        0 => (OpFn::Read, Value::Null),
                        1 => {
                            next_value += 1;
                            (OpFn::Write, Value::from(next_value))
                        }
                        _ => {
                            next_value += 1;
                            let from = if rng.below(2) == 0 {
                                current
                            } else {
                                Value::from(rng.below(next_value))
                            };
                            (OpFn::Cas, Value::Array(vec![from, Value::from(next_value)]))
                        }
                    };
                    record(&mut ops, p as u64, OpKind::Invoke, f, &key, value.clone(), time);
                    pending[p] = Some(Pending {
                        f,
                        key,
                        value,
                        applied: None,
                    });
                }
                None => {}
                Some(mut op) if op.applied.is_none() => {
                    match rng.below(10) {
                        0 if op.f != OpFn::Read => {
                            // Times out before taking effect: it may take effect later, or never.
                            record(&mut ops, p as u64, OpKind::Info, op.f, &op.key, op.value.clone(), time);
                            limbo.push((op.key, op.f, op.value));
                        }
                        _ => match apply_op(&mut registers, op.f, &op.key, &op.value) {
                            Some(v) => {
                                op.applied = Some(v);
                                pending[p] = Some(op);
                            }
                            None => record(&mut ops, p as u64, OpKind::Fail, op.f, &op.key, op.value.clone(), time),
                        },
                    }
                }
                Some(op) => {
                    let applied = op.applied.unwrap_or(Value::Null);
                    let (kind, value) = match (rng.below(10), op.f) {
                        (0, _) => (OpKind::Info, op.value),
                        (_, OpFn::Read) => (OpKind::Ok, applied),
                        _ => (OpKind::Ok, op.value),
                    };
                    record(&mut ops, p as u64, kind, op.f, &op.key, value, time);
                }
            }
        }
        History::new(ops)
    }

    #[test]
    fn simulated_histories_are_valid_and_fast() {
        for seed in 0..20 {
            let h = simulated_history(seed, 6, 5, 200);
            let pairs = h.pair().unwrap();
            let start = Instant::now();
            let report = check(&pairs, &LinearizableConfig::default());
            let elapsed = start.elapsed();
            assert_eq!(report.verdict, Verdict::Valid, "seed {seed}: {report:#?}");
            assert_eq!(report.keys.len(), 5);
            assert!(
                pairs.iter().any(|p| p.outcome == Outcome::Info),
                "seed {seed}: no info ops generated"
            );
            assert!(elapsed < Duration::from_secs(1), "seed {seed}: took {elapsed:?}");
        }
    }

    #[test]
    fn simulated_history_with_a_corrupted_read_is_invalid() {
        // The same generator, with one read late in the history changed to a value no one wrote:
        // proves the generated test above is not vacuous.
        let mut h = simulated_history(7, 6, 5, 200);
        let i = last_ok(&h, OpFn::Read);
        h.ops[i].value = Value::from(1_000_000);
        let report = check(&h.pair().unwrap(), &LinearizableConfig::default());
        assert_eq!(report.verdict, Verdict::Invalid, "{report:#?}");
    }

    /// `dead` writes that time out, then a read of the old value, then a run of ordinary writes
    /// and reads; if `observed`, each timed-out write is read (so took effect) at the end; if
    /// `invalid_tail`, a final read returns a value nobody wrote.
    fn timed_out_writes(dead: u64, observed: bool, invalid_tail: bool) -> Vec<PairedOp> {
        fn write_read(push: &mut impl FnMut(u64, OpKind, OpFn, Value), written: Option<u64>, read: Value) {
            if let Some(w) = written {
                push(1, OpKind::Invoke, OpFn::Write, Value::from(w));
                push(1, OpKind::Ok, OpFn::Write, Value::from(w));
            }
            push(2, OpKind::Invoke, OpFn::Read, Value::Null);
            push(2, OpKind::Ok, OpFn::Read, read);
        }
        let mut ops = Vec::new();
        let mut push = |p: u64, kind: OpKind, f: OpFn, v: Value| {
            let i = ops.len() as u64;
            ops.push(op(i, p, kind, f, v, i));
        };
        for p in 0..dead {
            push(100 + p, OpKind::Invoke, OpFn::Write, Value::from(1000 + p));
            push(100 + p, OpKind::Info, OpFn::Write, Value::from(1000 + p));
        }
        write_read(&mut push, None, Value::Null);
        for k in 0..50 {
            write_read(&mut push, Some(k), Value::from(k));
        }
        if observed {
            for p in 0..dead {
                write_read(&mut push, None, Value::from(1000 + p));
            }
        }
        if invalid_tail {
            write_read(&mut push, None, Value::from(999_999));
        }
        History::new(ops).pair().unwrap()
    }

    #[test]
    fn many_timed_out_writes_stay_cheap() {
        // Without the normal-form reductions each case below explores about 2^100 configurations;
        // with them, a few thousand.
        let bounded = LinearizableConfig {
            max_states: 50_000,
            ..LinearizableConfig::default()
        };
        #[rustfmt::skip]
        let cases = [
            // (observed, invalid_tail, verdict, info ops dropped before the search)
            (false, false, Verdict::Valid, 100),
            (false, true, Verdict::Invalid, 100),
            (true, false, Verdict::Valid, 0),
            (true, true, Verdict::Invalid, 0),
        ];
        for (observed, invalid_tail, verdict, dropped) in cases {
            let report = check(&timed_out_writes(100, observed, invalid_tail), &bounded);
            let key = &report.keys[0];
            assert_eq!(
                report.verdict, verdict,
                "observed {observed} invalid_tail {invalid_tail}: {key:#?}"
            );
            assert_eq!(key.info_dropped, dropped);
        }
    }
}
