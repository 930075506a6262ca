//! Anomalies of the append workload: per key, clients append unique elements to a list and
//! read the whole list.
//!
//! In a linearizable append-only list every state is a prefix of every later state, so every
//! successful read is a prefix of every longer one, and a read that starts after another
//! finished must extend it. The checker looks for the ways that fails:
//!
//! - `lost`: an `ok` append missing from an `ok` read invoked after the append completed;
//! - `duplicated`: an element appearing more than once in one read;
//! - `reordered`: two reads whose common elements are in different orders, or a read that does
//!   not have, as a prefix, a read that completed before it was invoked (this includes a read
//!   going back to a shorter list);
//! - `phantom`: an element no append was invoked for (on that key) before the read completed;
//! - `aborted_read`: an element whose append returned `fail` (definitely did not happen);
//! - `diverged`: two reads neither of which is a prefix of the other, with no order conflict
//!   (e.g. `[1, 2]` and `[1, 3]`, concurrent, so no real-time order says which is later).
//!
//! Counts: `lost`, `phantom`, `aborted_read` count distinct elements; `duplicated` counts
//! (read, element) pairs; `reordered` counts reads that fail to extend an earlier read plus pairs
//! of maximal lists in conflicting order; `diverged` counts the other pairs of maximal lists
//! (reads that are a prefix of no other read). The kinds overlap: one fault (a failover that
//! drops an acknowledged append) typically shows as lost, reordered and diverged at once.
//! `info` and `fail` reads are ignored; an `info` append may or may not appear.

use std::collections::{BTreeMap, HashMap};

use crate::history::{OpFn, Outcome, PairedOp};
use crate::intern::Interner;
use crate::Verdict;
use serde::{Deserialize, Serialize};

/// Examples kept per anomaly.
pub const MAX_EXAMPLES: usize = 5;

/// Element comparisons allowed when comparing maximal lists pairwise. Only spent when the reads
/// already diverge (the verdict is then `invalid` regardless), so running out only truncates the
/// `reordered` / `diverged` counts, and says so in `notes`.
const COMPARISON_BUDGET: u64 = 50_000_000;

/// How often one kind of anomaly occurred, with the first few examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Anomaly {
    fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }

    fn merge(&mut self, key: &str, other: &Anomaly) {
        self.count += other.count;
        for e in &other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(format!("key {key}: {e}"));
            }
        }
    }
}

/// Every anomaly kind; see the module docs for what each means and counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomalies {
    pub lost: Anomaly,
    pub duplicated: Anomaly,
    pub reordered: Anomaly,
    pub phantom: Anomaly,
    pub aborted_read: Anomaly,
    pub diverged: Anomaly,
}

impl Anomalies {
    fn all(&self) -> [&Anomaly; 6] {
        [
            &self.lost,
            &self.duplicated,
            &self.reordered,
            &self.phantom,
            &self.aborted_read,
            &self.diverged,
        ]
    }

    pub fn total(&self) -> u64 {
        self.all().iter().map(|a| a.count).sum()
    }

    fn merge(&mut self, key: &str, other: &Anomalies) {
        self.lost.merge(key, &other.lost);
        self.duplicated.merge(key, &other.duplicated);
        self.reordered.merge(key, &other.reordered);
        self.phantom.merge(key, &other.phantom);
        self.aborted_read.merge(key, &other.aborted_read);
        self.diverged.merge(key, &other.diverged);
    }
}

/// One key's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendKeyReport {
    pub key: String,
    /// Append invocations (any outcome).
    pub appends: usize,
    /// Successful reads.
    pub reads: usize,
    /// `invalid` if any anomaly; `unknown` if the key could not be checked (see `notes`).
    pub verdict: Verdict,
    pub anomalies: Anomalies,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The append checker's result: worst verdict over keys, anomaly totals, every key's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReport {
    pub verdict: Verdict,
    pub totals: Anomalies,
    pub keys: Vec<AppendKeyReport>,
}

/// Checks the append / read-list ops of `ops` (other functions are ignored), key by key.
pub fn check(ops: &[PairedOp]) -> AppendReport {
    let mut by_key: BTreeMap<&str, Vec<&PairedOp>> = BTreeMap::new();
    for op in ops.iter().filter(|op| matches!(op.f, OpFn::Append | OpFn::ReadList)) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<AppendKeyReport> = by_key.into_iter().map(|(key, ops)| check_key(key, &ops)).collect();
    let mut totals = Anomalies::default();
    for k in &keys {
        totals.merge(&k.key, &k.anomalies);
    }
    let verdict = keys.iter().map(|k| k.verdict).max().unwrap_or(Verdict::Valid);
    AppendReport { verdict, totals, keys }
}

struct Read<'a> {
    op: &'a PairedOp,
    list: Vec<u32>,
    invoke_ns: u64,
    complete_ns: u64,
}

/// Checks one key's append and read-list ops.
pub fn check_key(key: &str, ops: &[&PairedOp]) -> AppendKeyReport {
    let mut elems = Interner::default();
    let mut notes = Vec::new();
    let mut append_of: Vec<Option<&PairedOp>> = Vec::new();
    let mut reads: Vec<Read> = Vec::new();
    let appends = ops.iter().filter(|op| op.f == OpFn::Append).count();
    for op in ops {
        match (op.f, op.outcome) {
            (OpFn::Append, _) => {
                let e = elems.intern(&op.input) as usize;
                append_of.resize(append_of.len().max(e + 1), None);
                if let Some(first) = append_of[e] {
                    notes.push(format!(
                        "element {} appended twice ({} and {}): the checker needs unique elements",
                        op.input,
                        first.describe(),
                        op.describe()
                    ));
                }
                append_of[e] = Some(op);
            }
            (OpFn::ReadList, Outcome::Ok) => {
                let Some(list) = op.output.as_array() else {
                    notes.push(format!("read-list value is not a list: {}", op.describe()));
                    continue;
                };
                let list = list.iter().map(|v| elems.intern(v)).collect();
                // Paired ok ops always have a completion time; +infinity for hand-built ones without.
                let complete_ns = op.complete_ns.unwrap_or(u64::MAX);
                reads.push(Read {
                    op,
                    list,
                    invoke_ns: op.invoke_ns,
                    complete_ns,
                });
            }
            _ => {}
        }
    }
    let n_reads = reads.len();
    if !notes.is_empty() {
        notes.truncate(MAX_EXAMPLES);
        return AppendKeyReport {
            key: key.to_string(),
            appends,
            reads: n_reads,
            verdict: Verdict::Unknown,
            anomalies: Anomalies::default(),
            notes,
        };
    }
    append_of.resize(elems.len(), None);
    reads.sort_by_key(|r| (r.invoke_ns, r.complete_ns, r.op.invoke_index));
    let mut anomalies = Anomalies::default();
    let show = |e: u32| elems.value(e).to_string();

    per_read_anomalies(&reads, &append_of, &show, &mut anomalies);
    lost(&reads, &append_of, &show, &mut anomalies);
    let trie = Trie::build(&reads);
    trie.real_time_order(&reads, &mut anomalies);
    if !trie.maximal_lists_compared(&reads, &show, &mut anomalies) {
        notes.push(format!(
            "comparison budget ({COMPARISON_BUDGET} elements) ran out: reordered / diverged counts are lower bounds"
        ));
    }
    let verdict = if anomalies.total() > 0 {
        Verdict::Invalid
    } else {
        Verdict::Valid
    };
    AppendKeyReport {
        key: key.to_string(),
        appends,
        reads: n_reads,
        verdict,
        anomalies,
        notes,
    }
}

/// Duplicates within a read, phantoms, and reads of failed appends.
fn per_read_anomalies(
    reads: &[Read],
    append_of: &[Option<&PairedOp>],
    show: &dyn Fn(u32) -> String,
    anomalies: &mut Anomalies,
) {
    // seen[e] = 1 + index of the last read that contained e; dup[e] likewise for reported dups.
    let mut seen = vec![0usize; append_of.len()];
    let mut dup = vec![0usize; append_of.len()];
    let mut reported = vec![false; append_of.len()];
    for (i, r) in reads.iter().enumerate() {
        for &e in &r.list {
            let eu = e as usize;
            if seen[eu] == i + 1 && dup[eu] != i + 1 {
                dup[eu] = i + 1;
                anomalies
                    .duplicated
                    .add(|| format!("{} appears more than once in {}", show(e), r.op.describe()));
            }
            seen[eu] = i + 1;
            if reported[eu] {
                continue;
            }
            match append_of[eu] {
                None => {
                    reported[eu] = true;
                    anomalies
                        .phantom
                        .add(|| format!("{} was never appended, yet {}", show(e), r.op.describe()));
                }
                Some(a) if a.invoke_ns > r.complete_ns => {
                    reported[eu] = true;
                    anomalies.phantom.add(|| {
                        format!(
                            "{} was read by {} before its append {} was invoked",
                            show(e),
                            r.op.describe(),
                            a.describe()
                        )
                    });
                }
                Some(a) if a.outcome == Outcome::Fail => {
                    reported[eu] = true;
                    anomalies
                        .aborted_read
                        .add(|| format!("failed append {} was read by {}", a.describe(), r.op.describe()));
                }
                Some(_) => {}
            }
        }
    }
}

/// `ok` appends missing from reads invoked after they completed.
fn lost(reads: &[Read], append_of: &[Option<&PairedOp>], show: &dyn Fn(u32) -> String, anomalies: &mut Anomalies) {
    let mut acked: Vec<(u64, u32)> = append_of
        .iter()
        .enumerate()
        .filter_map(|(e, a)| {
            let a = (*a)?;
            (a.outcome == Outcome::Ok).then(|| (a.complete_ns.unwrap_or(u64::MAX), e as u32))
        })
        .collect();
    acked.sort_unstable();
    let mut seen = vec![0usize; append_of.len()];
    let mut lost = vec![false; append_of.len()];
    for (i, r) in reads.iter().enumerate() {
        for &e in &r.list {
            seen[e as usize] = i + 1;
        }
        // Appends acknowledged strictly before the read was invoked must all be in it.
        let due = acked.partition_point(|&(t, _)| t < r.invoke_ns);
        for &(_, e) in &acked[..due] {
            let eu = e as usize;
            if seen[eu] != i + 1 && !lost[eu] {
                lost[eu] = true;
                let append = append_of[eu].map(PairedOp::describe).unwrap_or_default();
                anomalies
                    .lost
                    .add(|| format!("{} (append {append}) is missing from {}", show(e), r.op.describe()));
            }
        }
    }
}

/// A trie of every read list: reads end at nodes, and two reads are prefix-consistent iff one's
/// node is an ancestor of (or equal to) the other's. In a correct history the trie is a path.
/// The root is node 0.
struct Trie {
    parent: Vec<usize>,
    depth: Vec<usize>,
    children: Vec<Vec<usize>>,
    /// Euler-tour entry / exit times for O(1) ancestor tests.
    tin: Vec<usize>,
    tout: Vec<usize>,
    /// The node each read ends at, by read index.
    read_node: Vec<usize>,
    /// A read that ends at each node (if any).
    node_read: Vec<Option<usize>>,
}

impl Trie {
    fn build(reads: &[Read]) -> Self {
        // The longest read is laid down first as a spine, node i at depth i, so that a read that
        // is a prefix of it (every read, in a correct history) costs one slice comparison and no
        // hashing; only suffixes that leave the spine go through `edges`.
        let spine: &[u32] = reads
            .iter()
            .map(|r| r.list.as_slice())
            .max_by_key(|l| l.len())
            .unwrap_or(&[]);
        let m = spine.len();
        let mut parent: Vec<usize> = (0..=m).map(|i| i.saturating_sub(1)).collect();
        let mut depth: Vec<usize> = (0..=m).collect();
        let mut children: Vec<Vec<usize>> = (0..=m).map(|i| if i < m { vec![i + 1] } else { Vec::new() }).collect();
        let mut edges: HashMap<(usize, u32), usize> = HashMap::new();
        let mut read_node = Vec::with_capacity(reads.len());
        for r in reads {
            let on_spine = r.list.iter().zip(spine).take_while(|(a, b)| a == b).count();
            let mut node = on_spine;
            for &e in &r.list[on_spine..] {
                node = *edges.entry((node, e)).or_insert_with(|| {
                    parent.push(node);
                    depth.push(depth[node] + 1);
                    children.push(Vec::new());
                    children[node].push(parent.len() - 1);
                    parent.len() - 1
                });
            }
            read_node.push(node);
        }
        let n = parent.len();
        let mut node_read = vec![None; n];
        for (i, &node) in read_node.iter().enumerate() {
            node_read[node].get_or_insert(i);
        }
        let (mut tin, mut tout) = (vec![0; n], vec![0; n]);
        let mut clock = 0;
        let mut stack = vec![(0usize, 0usize)];
        while let Some((node, child)) = stack.pop() {
            if child == 0 {
                tin[node] = clock;
                clock += 1;
            }
            if let Some(&c) = children[node].get(child) {
                stack.push((node, child + 1));
                stack.push((c, 0));
            } else {
                tout[node] = clock;
                clock += 1;
            }
        }
        Trie {
            parent,
            depth,
            children,
            tin,
            tout,
            read_node,
            node_read,
        }
    }

    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        self.tin[a] <= self.tin[b] && self.tout[b] <= self.tout[a]
    }

    /// A read must extend every read that completed before it was invoked. Walks reads in
    /// invocation order while admitting earlier-completed reads; as long as those form a chain
    /// only its deepest node needs comparing.
    fn real_time_order(&self, reads: &[Read], anomalies: &mut Anomalies) {
        let mut by_completion: Vec<usize> = (0..reads.len()).collect();
        by_completion.sort_by_key(|&i| reads[i].complete_ns);
        let mut admitted = 0;
        // Deepest admitted read, while the admitted reads form a chain; None once they branch.
        let mut deepest: Option<usize> = None;
        let mut chain = true;
        for (i, r) in reads.iter().enumerate() {
            while admitted < by_completion.len() && reads[by_completion[admitted]].complete_ns < r.invoke_ns {
                let j = by_completion[admitted];
                admitted += 1;
                let (nj, deep) = (self.read_node[j], deepest.map(|d| self.read_node[d]));
                match deep {
                    None if chain => deepest = Some(j),
                    Some(nd) if self.is_ancestor(nj, nd) => {}
                    Some(nd) if self.is_ancestor(nd, nj) => deepest = Some(j),
                    _ => chain = false,
                }
            }
            if admitted == 0 {
                continue;
            }
            let ni = self.read_node[i];
            if let (true, Some(d)) = (chain, deepest) {
                if self.is_ancestor(self.read_node[d], ni) {
                    continue;
                }
            }
            // Either the deepest earlier read is not a prefix of this one, or the earlier reads
            // branch, and then no read can extend them all: find one for the example.
            anomalies.reordered.add(|| {
                let earlier = match (chain, deepest) {
                    (true, Some(d)) => d,
                    _ => by_completion[..admitted]
                        .iter()
                        .copied()
                        .find(|&j| !self.is_ancestor(self.read_node[j], ni))
                        .unwrap_or(by_completion[0]),
                };
                let how = if self.is_ancestor(ni, self.read_node[earlier]) {
                    "went back to a shorter list"
                } else {
                    "does not extend it"
                };
                format!(
                    "{} {how}: {} completed before it was invoked",
                    r.op.describe(),
                    reads[earlier].op.describe()
                )
            });
        }
    }

    /// Compares the maximal lists (trie leaves) pairwise: each pair is an order conflict
    /// (`reordered`) or a divergence. Returns false if the comparison budget ran out.
    fn maximal_lists_compared(&self, reads: &[Read], show: &dyn Fn(u32) -> String, anomalies: &mut Anomalies) -> bool {
        let leaves: Vec<usize> = (1..self.parent.len())
            .filter(|&n| self.children[n].is_empty() && self.node_read[n].is_some())
            .collect();
        let mut budget = COMPARISON_BUDGET;
        let mut pos: HashMap<u32, usize> = HashMap::new();
        for (x, &la) in leaves.iter().enumerate() {
            for &lb in &leaves[x + 1..] {
                let (ra, rb) = (
                    &reads[self.node_read[la].unwrap_or(0)],
                    &reads[self.node_read[lb].unwrap_or(0)],
                );
                let common = self.common_prefix(la, lb);
                let (sa, sb) = (&ra.list[common..], &rb.list[common..]);
                let cost = (sa.len() + sb.len()) as u64;
                if cost > budget {
                    return false;
                }
                budget -= cost;
                // Elements of the shared prefix are in the same order in both; a conflict needs
                // two elements common to both suffixes in different orders.
                pos.clear();
                for (p, &e) in sb.iter().enumerate() {
                    pos.entry(e).or_insert(p);
                }
                let mut last: Option<(u32, usize)> = None;
                let mut conflict = None;
                for &e in sa {
                    if let Some(&p) = pos.get(&e) {
                        match last {
                            Some((prev, lp)) if p < lp => {
                                conflict = Some((prev, e));
                                break;
                            }
                            _ => last = Some((e, p)),
                        }
                    }
                }
                match conflict {
                    Some((x, y)) => anomalies.reordered.add(|| {
                        format!(
                            "{} has {} before {}, {} has them the other way round",
                            ra.op.describe(),
                            show(x),
                            show(y),
                            rb.op.describe()
                        )
                    }),
                    None => anomalies.diverged.add(|| {
                        format!(
                            "{} and {} agree on {common} elements and then diverge",
                            ra.op.describe(),
                            rb.op.describe()
                        )
                    }),
                }
            }
        }
        true
    }

    /// Depth of the lowest common ancestor of two nodes.
    fn common_prefix(&self, mut a: usize, mut b: usize) -> usize {
        while self.depth[a] > self.depth[b] {
            a = self.parent[a];
        }
        while self.depth[b] > self.depth[a] {
            b = self.parent[b];
        }
        while a != b {
            a = self.parent[a];
            b = self.parent[b];
        }
        self.depth[a]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, OpKind};
    use crate::testutil::{history, last_ok, push_op, Rng, Row};
    use serde_json::Value;

    fn check_rows(rows: &[Row]) -> AppendReport {
        let h = history(&[("k", rows)]);
        check(&h.pair().unwrap())
    }

    fn counts(a: &Anomalies) -> [u64; 6] {
        a.all().map(|x| x.count)
    }

    #[test]
    fn append_histories() {
        //                    lost dup reord phantom aborted diverged
        #[rustfmt::skip]
        let cases: &[(&str, &[Row], [u64; 6])] = &[
            ("valid: reads grow as appends complete", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "ok", "append", "1"),
                (2, 2, "invoke", "read-list", "null"), (3, 2, "ok", "read-list", "[1]"),
                (4, 1, "invoke", "append", "2"), (6, 1, "ok", "append", "2"),
                (5, 2, "invoke", "read-list", "null"), (7, 2, "ok", "read-list", "[1, 2]"),
                (8, 3, "invoke", "read-list", "null"), (9, 3, "ok", "read-list", "[1, 2]"),
            ], [0, 0, 0, 0, 0, 0]),
            ("valid: concurrent read may miss an append; info append may show up late", &[
                (0, 1, "invoke", "append", "1"), (1, 2, "invoke", "read-list", "null"),
                (2, 2, "ok", "read-list", "[]"), (3, 1, "info", "append", "1"),
                (4, 2, "invoke", "read-list", "null"), (5, 2, "ok", "read-list", "[]"),
                (6, 2, "invoke", "read-list", "null"), (7, 2, "ok", "read-list", "[1]"),
            ], [0, 0, 0, 0, 0, 0]),
            ("lost: acknowledged append missing from a later read", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "ok", "append", "1"),
                (2, 1, "invoke", "append", "2"), (3, 1, "ok", "append", "2"),
                (4, 2, "invoke", "read-list", "null"), (5, 2, "ok", "read-list", "[1]"),
            ], [1, 0, 0, 0, 0, 0]),
            ("duplicated element in one read", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "ok", "append", "1"),
                (2, 2, "invoke", "read-list", "null"), (3, 2, "ok", "read-list", "[1, 1]"),
            ], [0, 1, 0, 0, 0, 0]),
            ("reordered: common elements in different orders", &[
                (0, 1, "invoke", "append", "1"), (0, 2, "invoke", "append", "2"),
                (1, 3, "invoke", "read-list", "null"), (1, 4, "invoke", "read-list", "null"),
                (2, 3, "ok", "read-list", "[1, 2]"), (2, 4, "ok", "read-list", "[2, 1]"),
                (3, 1, "ok", "append", "1"), (3, 2, "ok", "append", "2"),
            ], [0, 0, 1, 0, 0, 0]),
            ("reordered: a later read does not extend an earlier one (and the two diverge)", &[
                (0, 1, "invoke", "append", "1"), (0, 2, "invoke", "append", "2"),
                (1, 3, "invoke", "read-list", "null"), (2, 3, "ok", "read-list", "[1]"),
                (3, 3, "invoke", "read-list", "null"), (4, 3, "ok", "read-list", "[2, 1]"),
                (5, 1, "info", "append", "1"), (5, 2, "info", "append", "2"),
            ], [0, 0, 1, 0, 0, 1]),
            ("reordered: a later read goes back to a shorter list (info append)", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "info", "append", "1"),
                (2, 2, "invoke", "read-list", "null"), (3, 2, "ok", "read-list", "[1]"),
                (4, 2, "invoke", "read-list", "null"), (5, 2, "ok", "read-list", "[]"),
            ], [0, 0, 1, 0, 0, 0]),
            ("phantom: element never appended", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "ok", "append", "1"),
                (2, 2, "invoke", "read-list", "null"), (3, 2, "ok", "read-list", "[1, 9]"),
            ], [0, 0, 0, 1, 0, 0]),
            ("phantom: element read before its append was invoked", &[
                (0, 2, "invoke", "read-list", "null"), (1, 2, "ok", "read-list", "[1]"),
                (2, 1, "invoke", "append", "1"), (3, 1, "ok", "append", "1"),
            ], [0, 0, 0, 1, 0, 0]),
            ("aborted read: a failed append is visible", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "fail", "append", "1"),
                (2, 2, "invoke", "read-list", "null"), (3, 2, "ok", "read-list", "[1]"),
            ], [0, 0, 0, 0, 1, 0]),
            ("diverged: concurrent reads on different branches", &[
                (0, 1, "invoke", "append", "1"), (0, 2, "invoke", "append", "2"), (0, 3, "invoke", "append", "3"),
                (1, 4, "invoke", "read-list", "null"), (1, 5, "invoke", "read-list", "null"),
                (2, 4, "ok", "read-list", "[1, 2]"), (2, 5, "ok", "read-list", "[1, 3]"),
                (3, 1, "info", "append", "1"), (3, 2, "info", "append", "2"), (3, 3, "info", "append", "3"),
            ], [0, 0, 0, 0, 0, 1]),
            ("failover loses an acknowledged append: lost, reordered and diverged", &[
                (0, 1, "invoke", "append", "1"), (1, 1, "ok", "append", "1"),
                (2, 1, "invoke", "append", "2"), (3, 1, "ok", "append", "2"),
                (4, 2, "invoke", "read-list", "null"), (5, 2, "ok", "read-list", "[1, 2]"),
                (6, 1, "invoke", "append", "3"), (7, 1, "ok", "append", "3"),
                (8, 2, "invoke", "read-list", "null"), (9, 2, "ok", "read-list", "[1, 3]"),
            ], [1, 0, 1, 0, 0, 1]),
        ];
        for (name, rows, expected) in cases {
            let report = check_rows(rows);
            assert_eq!(counts(&report.totals), *expected, "{name}: {:#?}", report.totals);
            let verdict = if expected.iter().sum::<u64>() > 0 {
                Verdict::Invalid
            } else {
                Verdict::Valid
            };
            assert_eq!(report.verdict, verdict, "{name}");
        }
    }

    #[test]
    fn examples_say_what_and_when() {
        let report = check_rows(&[
            (0, 1, "invoke", "append", "1"),
            (1_000_000, 1, "ok", "append", "1"),
            (2_000_000, 2, "invoke", "read-list", "null"),
            (3_000_000, 2, "ok", "read-list", "[]"),
        ]);
        assert_eq!(
            report.totals.lost.examples,
            ["key k: 1 (append p1 append 1 [idx 0, 0.000ms..1.000ms]) is missing from p2 read-list -> [] [idx 2, 2.000ms..3.000ms]"]
        );
    }

    #[test]
    fn elements_appended_twice_make_the_key_unknown() {
        let report = check_rows(&[
            (0, 1, "invoke", "append", "1"),
            (1, 1, "ok", "append", "1"),
            (2, 1, "invoke", "append", "1"),
            (3, 1, "ok", "append", "1"),
        ]);
        assert_eq!(report.verdict, Verdict::Unknown);
        assert!(
            report.keys[0].notes[0].contains("appended twice"),
            "{:?}",
            report.keys[0].notes
        );
    }

    /// Clients append unique elements and read whole lists against a real list per key; each op
    /// takes effect at a random step between invocation and completion, some time out.
    fn simulated_history(seed: u64, processes: u64, keys: u64, total_ops: usize) -> History {
        let mut rng = Rng(seed);
        let mut lists: HashMap<String, Vec<u64>> = HashMap::new();
        // Per process: (f, key, element, result once applied).
        type Pending = (OpFn, String, u64, Option<Value>);
        let mut pending: Vec<Option<Pending>> = (0..processes).map(|_| None).collect();
        let mut ops = Vec::new();
        let (mut invoked, mut time, mut next) = (0, 0u64, 0u64);
        while invoked < total_ops || pending.iter().any(Option::is_some) {
            time += 1 + rng.below(1_000);
            let p = rng.below(processes) as usize;
            let mut record =
                |kind: OpKind, f: OpFn, key: &str, value: Value| push_op(&mut ops, p as u64, kind, f, key, value, time);
            match pending[p].take() {
                None if invoked < total_ops => {
                    invoked += 1;
                    let key = format!("k{}", rng.below(keys));
                    next += 1;
                    let f = if rng.below(2) == 0 {
                        OpFn::Append
                    } else {
                        OpFn::ReadList
                    };
                    let value = if f == OpFn::Append {
                        Value::from(next)
                    } else {
                        Value::Null
                    };
                    record(OpKind::Invoke, f, &key, value);
                    pending[p] = Some((f, key, next, None));
                }
                None => {}
                Some((f, key, e, None)) => {
                    let list = lists.entry(key.clone()).or_default();
                    let result = if f == OpFn::Append {
                        list.push(e);
                        Value::from(e)
                    } else {
                        Value::from(list.clone())
                    };
                    pending[p] = Some((f, key, e, Some(result)));
                }
                Some((f, key, _, Some(result))) => {
                    let kind = if rng.below(10) == 0 { OpKind::Info } else { OpKind::Ok };
                    record(kind, f, &key, result);
                }
            }
        }
        History::new(ops)
    }

    #[test]
    fn simulated_histories_are_valid() {
        for seed in 0..20 {
            let h = simulated_history(seed, 6, 5, 400);
            let report = check(&h.pair().unwrap());
            assert_eq!(report.verdict, Verdict::Valid, "seed {seed}: {:#?}", report.totals);
            assert!(report.keys.iter().all(|k| k.reads > 10), "seed {seed}");
        }
    }

    #[test]
    fn simulated_history_with_a_dropped_element_is_caught() {
        let mut h = simulated_history(3, 6, 1, 400);
        // Drop the first element from the last successful read: an acknowledged append lost.
        let i = last_ok(&h, OpFn::ReadList);
        h.ops[i].value.as_array_mut().unwrap().remove(0);
        let report = check(&h.pair().unwrap());
        assert_eq!(report.verdict, Verdict::Invalid);
        assert!(
            report.totals.lost.count >= 1 && report.totals.reordered.count >= 1,
            "{:#?}",
            report.totals
        );
    }
}
