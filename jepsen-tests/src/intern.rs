//! Small integer ids for JSON values, so the checkers compare and hash `u32`s.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::Value;

/// Interns values; id 0 is always `null` (a register's initial value).
///
/// Identity is the canonical JSON text: `1` and `1.0` are different values, as on the wire.
/// Non-negative integers, what the workloads use, take a path that does not allocate.
pub struct Interner {
    ints: HashMap<u64, u32, BuildHasherDefault<IntHasher>>,
    others: HashMap<String, u32>,
    values: Vec<Value>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            ints: HashMap::default(),
            others: HashMap::from([(Value::Null.to_string(), 0)]),
            values: vec![Value::Null],
        }
    }
}

impl Interner {
    pub fn intern(&mut self, v: &Value) -> u32 {
        let next = self.values.len() as u32;
        let id = match v.as_u64() {
            Some(n) => *self.ints.entry(n).or_insert(next),
            None => *self.others.entry(v.to_string()).or_insert(next),
        };
        if id == next {
            self.values.push(v.clone());
        }
        id
    }

    pub fn value(&self, id: u32) -> &Value {
        &self.values[id as usize]
    }

    /// Ids are `0..len()`.
    pub fn len(&self) -> usize {
        self.values.len()
    }
}

/// Multiplicative hashing for integer keys (Fx-style): several times faster than SipHash on the
/// millions of list elements a long append history holds. Histories are our own files, so
/// hash flooding is not a concern.
#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_follow_canonical_text() {
        let mut i = Interner::default();
        assert_eq!(i.intern(&Value::Null), 0);
        let one = i.intern(&json!(1));
        assert_eq!(i.intern(&json!(1)), one);
        assert_ne!(i.intern(&json!(1.0)), one);
        assert_ne!(i.intern(&json!("1")), one);
        assert_eq!(i.intern(&json!([1, 2])), i.intern(&json!([1, 2])));
        assert_eq!(i.value(one), &json!(1));
        assert_eq!(i.len(), 5);
    }
}
