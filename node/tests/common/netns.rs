//! The network-namespace lab now lives in the chaos harness crate (`keel_jepsen::netns`), so
//! the partition tests here and `keel-jepsen run --netns` share one implementation: bridge and
//! veth pairs, blackhole cuts, stale-lab cleanup by owner pid, idempotent teardown.

pub use keel_jepsen::netns::NetLab;
