//! The nemesis schedule: which faults happen when, drawn up front from the seed, so the same
//! seed replays the same schedule (`schedule.json` in the report). Targets that depend on the
//! cluster's state at that moment (the primary, the coordinator) are resolved when the fault
//! starts; every other choice (which node, which half, how much loss, which clock rate) comes
//! from the fault's own `pick`, so it is fixed by the seed too.
//!
//! Kinds (CLI names): `kill` (kill -9 of a random node, or of a majority), `kill-primary`,
//! `pause` (SIGSTOP/SIGCONT of a random node or the primary), `partition` (isolate the
//! primary, isolate the coordinator, majority/minority halves, or a bridge: two halves that
//! both see one middle node), `netem` (loss and delay on one node's link), `skew` (restart a
//! node under libfaketime with a wall-clock offset and a clock rate within the lease's drift
//! margin, then switch the primary to it), `wipe` (kill a replica, remove it from the
//! membership, wipe its data dir, rejoin it under the same id and promote it back). A step
//! holds one fault, or two of different kinds at once (composition).

use serde::Serialize;

use crate::rng::Rng;

/// Every kind, in the order `all` expands to.
pub const ALL: &[&str] = &["kill", "kill-primary", "pause", "partition", "netem", "skew", "wipe"];

/// Partition variants. `primary-minority` puts the primary with `n/2 - 1` others on the
/// small side (the regression scenario for acknowledged writes lost with too few sync acks).
pub const PARTITIONS: &[&str] = &[
    "isolate-primary",
    "isolate-coordinator",
    "halves",
    "primary-minority",
    "bridge",
];

/// Kinds of the Redis workloads (`runner::redis`), in the order `all` expands to there: kill -9 of
/// a node, of the primary, SIGSTOP of the node's Keel process alone (`pause` is the same), of its
/// `redis-server` alone, and of both, and (with `--netns` only) a network partition that cuts a
/// node's Keel and Redis together off from the other nodes (the [`PARTITIONS`] variants). Against
/// the Sentinel baseline, "Keel" is the node's Sentinel.
pub const REDIS_KINDS: &[&str] = &[
    "kill",
    "kill-primary",
    "pause-keel",
    "pause-redis",
    "pause-both",
    "partition",
];

/// Check the kinds of a Redis run (`all` = [`REDIS_KINDS`], without `partition` unless `netns`;
/// `pause` = `pause-keel`; variants `kill:one`, `pause-*:one|primary`, `partition:<one of
/// PARTITIONS>`). A Redis run never kills a majority at once (Redis keeps its data in memory):
/// `kill:majority` is refused, and the runner cuts a drawn one down.
pub fn parse_redis_kinds(list: &[String], netns: bool) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for k in list {
        let k = if k == "pause" { "pause-keel" } else { k.as_str() };
        let add: Vec<String> = if k == "all" {
            REDIS_KINDS
                .iter()
                .filter(|k| netns || !NETNS_ONLY.contains(k))
                .map(|s| s.to_string())
                .collect()
        } else {
            let (kind, v) = k.split_once(':').map_or((k, None), |(a, b)| (a, Some(b)));
            let kind = if kind == "pause" { "pause-keel" } else { kind };
            let ok = REDIS_KINDS.contains(&kind)
                && match (kind, v) {
                    (_, None) => true,
                    ("kill", Some(v)) => v == "one",
                    (k, Some(v)) if k.starts_with("pause") => ["one", "primary"].contains(&v),
                    ("partition", Some(v)) => PARTITIONS.contains(&v),
                    _ => false,
                };
            if !ok {
                return Err(format!(
                    "unknown nemesis {k:?} for a Redis workload: use {} or all",
                    REDIS_KINDS.join(", ")
                ));
            }
            if NETNS_ONLY.contains(&kind) && !netns {
                return Err(format!("nemesis {kind} needs --netns (root, network namespaces)"));
            }
            vec![match v {
                Some(v) => format!("{kind}:{v}"),
                None => kind.to_string(),
            }]
        };
        for a in add {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Kinds that need network namespaces.
pub const NETNS_ONLY: &[&str] = &["partition", "netem"];

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub kind: String,
    /// The variant (e.g. `isolate-primary`, `majority`), fixed by the seed.
    pub variant: String,
    /// Random bits for the choices made when the fault starts (which node, which half).
    pub pick: u64,
}

/// One step of the schedule: faults that start together at `at_ms` and are healed together
/// `for_ms` later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub for_ms: u64,
    pub faults: Vec<Planned>,
}

/// Expand `all`, check names and that the mode supports them.
pub fn parse_kinds(list: &[String], netns: bool) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for k in list {
        // `partition:primary-minority` fixes the variant of a kind.
        if let Some((kind, v)) = k.split_once(':') {
            let ok = match kind {
                "partition" => PARTITIONS.contains(&v),
                "kill" => ["one", "majority"].contains(&v),
                "pause" => ["one", "primary"].contains(&v),
                "netem" => ["loss", "delay", "loss+delay"].contains(&v),
                _ => false,
            };
            if !ok {
                return Err(format!("unknown nemesis variant {k:?}"));
            }
            if NETNS_ONLY.contains(&kind) && !netns {
                return Err(format!("nemesis {kind} needs --netns (root, network namespaces)"));
            }
            if !out.contains(k) {
                out.push(k.clone());
            }
            continue;
        }
        let add: Vec<&str> = if k == "all" {
            ALL.iter()
                .copied()
                .filter(|k| netns || !NETNS_ONLY.contains(k))
                .collect()
        } else if ALL.contains(&k.as_str()) {
            vec![k.as_str()]
        } else {
            return Err(format!("unknown nemesis {k:?}: use {} or all", ALL.join(", ")));
        };
        for a in add {
            if NETNS_ONLY.contains(&a) && !netns {
                return Err(format!("nemesis {a} needs --netns (root, network namespaces)"));
            }
            if !out.iter().any(|o| o == a) {
                out.push(a.to_string());
            }
        }
    }
    Ok(out)
}

fn variant(kind: &str, rng: &mut Rng) -> String {
    let pick = |rng: &mut Rng, v: &[&str]| v[rng.below(v.len() as u64) as usize].to_string();
    match kind {
        "kill" => pick(rng, &["one", "one", "one", "majority"]),
        "pause" | "pause-keel" | "pause-redis" | "pause-both" => pick(rng, &["one", "primary"]),
        "partition" => pick(rng, PARTITIONS),
        "netem" => pick(rng, &["loss", "delay", "loss+delay"]),
        _ => String::new(),
    }
}

/// The schedule for a run of `time_ms`: a step every `every_ms` (the first after `every_ms`)
/// lasting `for_ms`, as long as it ends before the run does.
pub fn schedule(kinds: &[String], seed: u64, time_ms: u64, every_ms: u64, for_ms: u64) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x006e_656d_6573_6973);
    let mut steps = Vec::new();
    if kinds.is_empty() || every_ms == 0 {
        return steps;
    }
    let mut at = every_ms;
    while at + for_ms <= time_ms {
        let first = kinds[rng.below(kinds.len() as u64) as usize].clone();
        let mut chosen = vec![first];
        // Composition: a third of the steps add a second fault of another kind.
        if kinds.len() > 1 && rng.below(3) == 0 {
            let others: Vec<&String> = kinds.iter().filter(|k| !chosen.contains(k)).collect();
            chosen.push(others[rng.below(others.len() as u64) as usize].clone());
        }
        let faults = chosen
            .into_iter()
            .map(|kind| {
                let (kind, variant) = match kind.split_once(':') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => {
                        let v = variant(&kind, &mut rng);
                        (kind, v)
                    }
                };
                Planned {
                    kind,
                    variant,
                    pick: rng.next_u64(),
                }
            })
            .collect();
        steps.push(Step {
            at_ms: at,
            for_ms,
            faults,
        });
        at += every_ms;
    }
    steps
}

/// Clock rates a skewed node runs at: within the lease's drift margin (raft/DESIGN.md: one
/// node's rate r must satisfy ¾ < r < 4⁄3), with room for scheduling delay.
pub const SKEW_RATES: &[f64] = &[0.85, 0.93, 1.07, 1.15];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_all_kinds_appear() {
        let kinds = parse_kinds(&["all".into()], true).unwrap();
        assert_eq!(kinds.len(), ALL.len());
        let a = schedule(&kinds, 42, 600_000, 4_000, 2_000);
        let b = schedule(&kinds, 42, 600_000, 4_000, 2_000);
        assert_eq!(a, b);
        assert_ne!(a, schedule(&kinds, 43, 600_000, 4_000, 2_000));
        assert_eq!(a.len(), 149);
        for k in ALL {
            assert!(
                a.iter().any(|s| s.faults.iter().any(|f| f.kind == *k)),
                "{k} never scheduled"
            );
        }
        assert!(a.iter().any(|s| s.faults.len() == 2), "no composed step");
        assert!(a
            .iter()
            .all(|s| s.faults.len() < 2 || s.faults[0].kind != s.faults[1].kind));
        assert!(a.last().is_some_and(|s| s.at_ms + s.for_ms <= 600_000));
    }

    #[test]
    fn redis_kinds() {
        assert_eq!(parse_redis_kinds(&["all".into()], true).unwrap(), REDIS_KINDS);
        assert_eq!(
            parse_redis_kinds(&["all".into()], false).unwrap(),
            REDIS_KINDS[..REDIS_KINDS.len() - 1]
        );
        assert_eq!(
            parse_redis_kinds(
                &["pause".into(), "pause-keel".into(), "pause-redis:primary".into()],
                false
            )
            .unwrap(),
            vec!["pause-keel", "pause-redis:primary"]
        );
        assert!(parse_redis_kinds(&["partition".into()], false)
            .unwrap_err()
            .contains("--netns"));
        assert!(parse_redis_kinds(&["partition:isolate-primary".into()], false).is_err());
        assert_eq!(
            parse_redis_kinds(&["partition:isolate-primary".into()], true).unwrap(),
            vec!["partition:isolate-primary"]
        );
        assert!(parse_redis_kinds(&["partition:nope".into()], true).is_err());
        assert!(parse_redis_kinds(&["netem".into()], true).is_err());
        assert!(parse_redis_kinds(&["pause-both:majority".into()], false).is_err());
        assert!(parse_redis_kinds(&["kill:majority".into()], false).is_err());
        let kinds = parse_redis_kinds(&["all".into()], true).unwrap();
        let steps = schedule(&kinds, 3, 120_000, 4_000, 2_000);
        for k in REDIS_KINDS {
            assert!(
                steps.iter().any(|s| s.faults.iter().any(|f| f.kind == *k)),
                "{k} never scheduled"
            );
        }
        assert!(steps
            .iter()
            .flat_map(|s| &s.faults)
            .filter(|f| f.kind.starts_with("pause"))
            .all(|f| f.variant == "one" || f.variant == "primary"));
        assert!(steps
            .iter()
            .flat_map(|s| &s.faults)
            .filter(|f| f.kind == "partition")
            .all(|f| PARTITIONS.contains(&f.variant.as_str())));
    }

    #[test]
    fn kinds_are_checked_against_the_mode() {
        assert!(parse_kinds(&["partition".into()], false)
            .unwrap_err()
            .contains("--netns"));
        assert!(parse_kinds(&["bogus".into()], true)
            .unwrap_err()
            .contains("unknown nemesis"));
        assert!(parse_kinds(&["partition:nope".into()], true).is_err());
        assert!(parse_kinds(&["partition:halves".into()], false).is_err());
        let fixed = parse_kinds(&["partition:primary-minority".into()], true).unwrap();
        let steps = schedule(&fixed, 1, 20_000, 4_000, 2_000);
        assert!(steps.iter().all(|s| s.faults.len() == 1
            && s.faults[0].kind == "partition"
            && s.faults[0].variant == "primary-minority"));
        let loopback = parse_kinds(&["all".into()], false).unwrap();
        assert!(!loopback.contains(&"netem".to_string()) && loopback.contains(&"wipe".to_string()));
        assert_eq!(
            parse_kinds(&["kill".into(), "kill".into(), "pause".into()], false).unwrap(),
            vec!["kill", "pause"]
        );
    }
}
