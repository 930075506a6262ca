//! The watcher, on its own thread for the whole run: every 50 ms it probes every node's Redis
//! (role and `min-replicas-to-write`), asks every discovery listener which master it names, and
//! probes again, so that each answer can be judged against the named server's state on both
//! sides of it ([`crate::redis_check::judge_namings`]). It also counts the rounds in which more
//! than one Redis could take writes, and the changes of the named master (failovers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::clients::ask;
use crate::redis_check::{classify, writable_masters, Naming, Seen};
use crate::resp::{info_fields, Conn, Reply};

/// Timeout of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// What the watcher saw.
#[derive(Debug, Default)]
pub(super) struct Watched {
    pub(super) namings: Vec<Naming>,
    pub(super) rounds: u64,
    /// Rounds in which more than one Redis was a master that takes writes.
    pub(super) split_rounds: u64,
    /// Changes of the master most listeners named (a nil answer is not a change).
    pub(super) failovers: u64,
    /// (ms since start, node named) at every change.
    pub(super) timeline: Vec<(u64, u64)>,
}

/// One Redis's state, by probe.
pub(super) fn probe(addr: &str, nodes: u64) -> Seen {
    let Ok(mut c) = Conn::connect(addr, PROBE_TIMEOUT) else {
        return Seen::Unreachable;
    };
    let Ok(r) = c.pipeline(&[&["INFO", "replication"], &["CONFIG", "GET", "min-replicas-to-write"]]) else {
        return Seen::Unreachable;
    };
    let role = r[0]
        .text()
        .map(|t| info_fields(&t).get("role").cloned().unwrap_or_default());
    let min = match &r[1] {
        Reply::Array(Some(v)) => v.get(1).and_then(|x| x.text()).and_then(|t| t.parse().ok()),
        _ => None,
    };
    match role {
        Some(role) => classify(&role, min, nodes),
        None => Seen::Unreachable,
    }
}

pub(super) fn spawn_watcher(
    redis: Vec<(u64, String)>,
    listeners: Vec<(u64, String)>,
    name: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    shared: Arc<super::super::probe::Shared>,
) -> JoinHandle<Watched> {
    std::thread::spawn(move || {
        let nodes = redis.len() as u64;
        let node_of = |a: &str| redis.iter().find(|(_, r)| r == a).map(|(id, _)| *id);
        let mut w = Watched::default();
        let mut current: Option<u64> = None;
        let probe_all = || -> BTreeMap<u64, Seen> { redis.iter().map(|(id, a)| (*id, probe(a, nodes))).collect() };
        while !stop.load(Ordering::Relaxed) {
            let before = probe_all();
            let answers: Vec<(u64, u64, Option<String>)> = listeners
                .iter()
                .filter_map(|(id, l)| {
                    let named = ask(l, &name).ok()?;
                    Some((start.elapsed().as_nanos() as u64, *id, named))
                })
                .collect();
            let after = probe_all();
            w.rounds += 1;
            if writable_masters(&before.values().copied().collect::<Vec<_>>()) > 1 {
                w.split_rounds += 1;
            }
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for (t, listener, named) in answers {
                let id = named.as_deref().and_then(node_of);
                let state = |m: &BTreeMap<u64, Seen>| id.and_then(|i| m.get(&i).copied()).unwrap_or(Seen::Unreachable);
                if let Some(i) = id {
                    *votes.entry(i).or_default() += 1;
                }
                w.namings.push(Naming {
                    t_ns: t,
                    listener,
                    before: state(&before),
                    after: state(&after),
                    named,
                });
            }
            if let Some((&named, _)) = votes.iter().max_by_key(|(_, n)| **n) {
                *shared.primaries.lock().unwrap_or_else(|e| e.into_inner()) = vec![named];
                if current != Some(named) {
                    if current.is_some() {
                        w.failovers += 1;
                    }
                    current = Some(named);
                    w.timeline.push((start.elapsed().as_millis() as u64, named));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    })
}
