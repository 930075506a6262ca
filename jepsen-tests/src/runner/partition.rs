//! Network partitions (`--netns` only), for the key-value and the Redis workloads: which nodes a
//! [`PARTITIONS`] variant puts on which side, as a pure function ([`sides`]), and the cut itself.
//! A node's Keel (and, in the Redis workload, its `redis-server`) share the node's namespace, so a
//! cut separates them from the other nodes at once, while the harness (clients, watcher) still
//! reaches every node over the lab's bridge: a client that holds the isolated old primary's
//! address keeps writing to it, which is what the fencing must make harmless.
//!
//! [`PARTITIONS`]: crate::nemesis::PARTITIONS

use std::collections::BTreeSet;

use crate::netns::NetLab;
use crate::rng::Rng;

/// Two sides of a cut: every link between `small` and `other` is cut. With `bridge`, one node is on
/// neither side and still sees both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sides {
    pub(crate) small: BTreeSet<u64>,
    pub(crate) other: BTreeSet<u64>,
    pub(crate) bridge: Option<u64>,
}

/// `k` of `from`, drawn by `pick`.
pub(crate) fn choose(pick: u64, from: &[u64], k: usize) -> Vec<u64> {
    let mut v = from.to_vec();
    let mut rng = Rng::new(pick);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v.truncate(k);
    v
}

/// The sides of partition `variant` over nodes `all` (the primary and the Raft coordinator as the
/// harness found them when the fault started; a random node stands in for an unknown one).
pub(crate) fn sides(variant: &str, pick: u64, all: &[u64], primary: Option<u64>, coordinator: Option<u64>) -> Sides {
    let n = all.len();
    let rest = |small: &BTreeSet<u64>| all.iter().copied().filter(|i| !small.contains(i)).collect();
    let small: BTreeSet<u64> = match variant {
        "isolate-primary" | "isolate-coordinator" => {
            let target = if variant == "isolate-primary" {
                primary
            } else {
                coordinator
            };
            target
                .or_else(|| choose(pick, all, 1).first().copied())
                .into_iter()
                .collect()
        }
        // The primary and n/2 - 1 others on the small side.
        "primary-minority" if primary.is_some() => {
            let p = primary.unwrap_or_default();
            let others: Vec<u64> = all.iter().copied().filter(|i| *i != p).collect();
            let mut m = choose(pick, &others, n / 2 - 1);
            m.push(p);
            m.into_iter().collect()
        }
        "halves" | "primary-minority" => choose(pick, all, n / 2).into_iter().collect(),
        _ => {
            // bridge: two halves that both still see one middle node.
            let order = choose(pick, all, n);
            let (middle, rest) = (order[0], &order[1..]);
            return Sides {
                small: rest[..rest.len() / 2].iter().copied().collect(),
                other: rest[rest.len() / 2..].iter().copied().collect(),
                bridge: Some(middle),
            };
        }
    };
    Sides {
        other: rest(&small),
        small,
        bridge: None,
    }
}

impl Sides {
    /// The report's words for the cut: `[1] | [2, 3]`, with `, bridged by nN` for a bridge.
    pub(crate) fn detail(&self) -> String {
        match self.bridge {
            Some(m) => format!("{:?} | {:?}, bridged by n{m}", self.small, self.other),
            None => format!("{:?} | {:?}", self.small, self.other),
        }
    }
}

/// Cut every link between the two sides (healed by [`NetLab::heal`]).
pub(crate) fn cut(lab: &NetLab, s: &Sides) {
    lab.split(&s.small, &s.other);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn each_variant_puts_the_right_nodes_on_the_small_side() {
        let all = [1, 2, 3];
        let s = sides("isolate-primary", 7, &all, Some(2), Some(3));
        assert_eq!((s.small, s.other, s.bridge), (set(&[2]), set(&[1, 3]), None));
        let s = sides("isolate-coordinator", 7, &all, Some(2), Some(3));
        assert_eq!((s.small, s.other), (set(&[3]), set(&[1, 2])));
        // Three nodes: the primary alone on the small side.
        let s = sides("primary-minority", 7, &all, Some(1), None);
        assert_eq!((s.small, s.other), (set(&[1]), set(&[2, 3])));
        // Five: the primary and one other.
        let s = sides("primary-minority", 7, &[1, 2, 3, 4, 5], Some(4), None);
        assert!(s.small.contains(&4) && s.small.len() == 2 && s.other.len() == 3);
        let s = sides("halves", 7, &[1, 2, 3, 4, 5], None, None);
        assert_eq!((s.small.len(), s.other.len()), (2, 3));
        assert!(s.small.is_disjoint(&s.other));
        let s = sides("bridge", 7, &all, None, None);
        let middle = s.bridge.expect("a bridge node");
        assert_eq!(s.small.len() + s.other.len(), 2);
        assert!(!s.small.contains(&middle) && !s.other.contains(&middle));
    }

    #[test]
    fn an_unknown_target_is_a_node_drawn_by_the_pick() {
        let a = sides("isolate-primary", 11, &[1, 2, 3], None, None);
        assert_eq!(a.small.len(), 1);
        assert_eq!(a, sides("isolate-primary", 11, &[1, 2, 3], None, None));
        assert_eq!(sides("primary-minority", 11, &[1, 2, 3], None, None).small.len(), 1);
    }
}
