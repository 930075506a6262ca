//! Helpers shared by the checkers' tests: a compact history builder and a seeded PRNG.

use serde_json::Value;

use crate::history::{History, Op, OpKind};

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
