//! Helpers shared by the checkers' tests: a compact history builder, single records, and a
//! seeded PRNG.

use serde_json::Value;

use crate::history::{History, Op, OpFn, OpKind};

/// A row: (time_ns, process, kind, f, value as JSON text).
pub type Row = (u64, u64, &'static str, &'static str, &'static str);

/// Builds a history from rows per key; records are ordered by time (invocations first at equal
/// times) and indexed in that order.
pub fn history(key_rows: &[(&str, &[Row])]) -> History {
    let mut ops = Vec::new();
    for (key, rows) in key_rows {
        for &(time_ns, process, kind, f, value) in rows.iter() {
            ops.push(Op {
                index: 0,
                process,
                kind: serde_json::from_value(Value::String(kind.into())).unwrap(),
                f: serde_json::from_value(Value::String(f.into())).unwrap(),
                key: key.to_string(),
                value: serde_json::from_str(value).unwrap(),
                time_ns,
                node: None,
                epoch: None,
                error: None,
            });
        }
    }
    ops.sort_by_key(|op| (op.time_ns, op.kind != OpKind::Invoke));
    for (i, op) in ops.iter_mut().enumerate() {
        op.index = i as u64;
    }
    History::new(ops)
}

/// One record on key `x`, without node, epoch or error.
pub fn op(index: u64, process: u64, kind: OpKind, f: OpFn, value: Value, time_ns: u64) -> Op {
    Op {
        index,
        process,
        kind,
        f,
        key: "x".into(),
        value,
        time_ns,
        node: None,
        epoch: None,
        error: None,
    }
}

/// Appends a record to `ops`, indexed by its position, without node, epoch or error.
pub fn push_op(ops: &mut Vec<Op>, process: u64, kind: OpKind, f: OpFn, key: &str, value: Value, time_ns: u64) {
    let index = ops.len() as u64;
    ops.push(Op {
        index,
        process,
        kind,
        f,
        key: key.into(),
        value,
        time_ns,
        node: None,
        epoch: None,
        error: None,
    });
}

/// Position of the last `ok` completion of `f` in the history (a test corrupts it).
pub fn last_ok(h: &History, f: OpFn) -> usize {
    h.ops
        .iter()
        .rposition(|op| op.kind == OpKind::Ok && op.f == f)
        .expect("an ok completion of f")
}

/// A tiny deterministic PRNG (splitmix64) so generated histories replay from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
