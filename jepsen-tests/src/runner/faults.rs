//! The nemesis at work: each step of the seeded schedule ([`crate::nemesis`]) resolved against
//! the cluster as it is at that moment (the primary, the coordinator), applied (signals,
//! restarts, namespace cuts and link degradation, membership changes through the HTTP API),
//! timed for failover, and healed at the end of its window.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cluster::Cluster;
use super::partition::{self, choose};
use super::probe::{coordinator, primaries, Shared};
use super::RunOptions;
use crate::nemesis::{self, Planned, Step};

/// A fault in force, and how to undo it.
struct Active {
    kind: String,
    variant: String,
    nodes: Vec<u64>,
    start_ms: u64,
    detail: String,
    was_primary: bool,
    heal: Heal,
}

enum Heal {
    Nothing,
    /// Start these (0-based) nodes again.
    Restart(Vec<usize>),
    /// SIGCONT these nodes.
    Resume(Vec<usize>),
    /// Remove every network fault.
    Net,
    /// Restart the node without the fake clock.
    Unskew(usize),
    /// Promote the rejoined node back to voter.
    Promote(usize),
}

/// Starts and heals the faults of the schedule on the cluster.
pub(super) struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    http: reqwest::blocking::Client,
    apis: Vec<(u64, String)>,
    opts: &'a RunOptions,
    shared: Arc<Shared>,
    start: Instant,
    /// Length of the current step's fault window.
    step_for: Duration,
}

/// How a request retried by [`Nemesis::retry_post`] ended.
enum Retried {
    Done,
    /// Refused because it was already so (an earlier attempt whose answer was lost).
    Already,
    /// Never done within the time; the last answer or error.
    NotDone(String),
}

impl<'a> Nemesis<'a> {
    pub(super) fn new(
        cluster: &'a mut Cluster,
        apis: &[(u64, String)],
        opts: &'a RunOptions,
        shared: &Arc<Shared>,
        start: Instant,
        step_for: Duration,
    ) -> Nemesis<'a> {
        Nemesis {
            cluster,
            http: super::probe::new_http(),
            apis: apis.to_vec(),
            opts,
            shared: shared.clone(),
            start,
            step_for,
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn primary(&self) -> Option<u64> {
        primaries(&self.http, &self.apis).first().copied()
    }

    fn ids(&self) -> Vec<u64> {
        self.apis.iter().map(|(id, _)| *id).collect()
    }

    /// A node not yet hit in this step, chosen by `pick`, preferring ones outside `avoid`.
    fn free_node(&self, pick: u64, taken: &BTreeSet<u64>, avoid: &[u64]) -> Option<u64> {
        let free: Vec<u64> = self.ids().into_iter().filter(|i| !taken.contains(i)).collect();
        let preferred: Vec<u64> = free.iter().copied().filter(|i| !avoid.contains(i)).collect();
        let from = if preferred.is_empty() { free } else { preferred };
        choose(pick, &from, 1).first().copied()
    }

    fn url_of_other(&self, not: u64) -> Option<String> {
        self.apis
            .iter()
            .filter(|(id, _)| *id != not && self.cluster.nodes[(*id - 1) as usize].child.is_some())
            .find(|(id, _)| !self.cluster.nodes[(*id - 1) as usize].paused)
            .map(|(_, a)| format!("http://{a}"))
    }

    /// Start one planned fault. `None` when it cannot apply now (recorded as skipped).
    fn apply(&mut self, f: &Planned, taken: &mut BTreeSet<u64>) -> Result<Active, String> {
        let primary = self.primary();
        let n = self.apis.len();
        let mut a = Active {
            kind: f.kind.clone(),
            variant: f.variant.clone(),
            nodes: Vec::new(),
            start_ms: self.ms(),
            detail: String::new(),
            was_primary: false,
            heal: Heal::Nothing,
        };
        match f.kind.as_str() {
            "kill" | "kill-primary" => {
                a.nodes = match (f.kind.as_str(), f.variant.as_str()) {
                    ("kill-primary", _) => primary.filter(|p| !taken.contains(p)).into_iter().collect(),
                    (_, "majority") => choose(f.pick, &self.ids(), n / 2 + 1),
                    _ => self.free_node(f.pick, taken, &[]).into_iter().collect(),
                };
                if a.nodes.is_empty() {
                    a.detail = "skipped: no primary to kill".into();
                }
                for id in &a.nodes {
                    self.cluster.kill((*id - 1) as usize);
                }
                a.heal = Heal::Restart(a.nodes.iter().map(|id| (*id - 1) as usize).collect());
            }
            "pause" => {
                let target = match (f.variant.as_str(), primary) {
                    ("primary", Some(p)) if !taken.contains(&p) => Some(p),
                    _ => self.free_node(f.pick, taken, &[]),
                };
                a.nodes = target.into_iter().collect();
                for id in &a.nodes {
                    self.cluster.pause((*id - 1) as usize);
                }
                a.heal = Heal::Resume(a.nodes.iter().map(|id| (*id - 1) as usize).collect());
            }
            "partition" => {
                self.partition(f, primary, &mut a)?;
                a.heal = Heal::Net;
            }
            "netem" => {
                let lab = self.cluster.lab.as_ref().ok_or("netem needs --netns")?;
                let target = self.free_node(f.pick, taken, &[]).ok_or("no node")?;
                let loss = [5, 10, 20][(f.pick >> 8) as usize % 3];
                let delay = [20, 50, 100][(f.pick >> 16) as usize % 3];
                let (delay, loss) = match f.variant.as_str() {
                    "loss" => (0, loss),
                    "delay" => (delay, 0),
                    _ => (delay, loss),
                };
                let how = lab.degrade(target, delay, loss)?;
                a.nodes = vec![target];
                a.detail = format!("{how:?}");
                a.heal = Heal::Net;
            }
            "skew" => {
                let target = self.free_node(f.pick, taken, &[]).ok_or("no node")?;
                let rate = self
                    .opts
                    .skew_rate
                    .unwrap_or(nemesis::SKEW_RATES[(f.pick >> 8) as usize % nemesis::SKEW_RATES.len()]);
                let offset = ((f.pick >> 16) % 601) as i64 - 300;
                let spec = format!("{offset:+}s x{rate}");
                let i = (target - 1) as usize;
                self.cluster.kill(i);
                self.cluster.nodes[i].faketime = Some(spec.clone());
                self.cluster.spawn(i)?;
                a.nodes = vec![target];
                // Make the skewed node the primary, so its drifting clock measures the lease.
                let switched = self.switch_to(target, Duration::from_secs(8));
                a.detail = format!("FAKETIME={spec:?}; switchover to it: {switched}");
                a.heal = Heal::Unskew(i);
            }
            "wipe" => {
                let coord = coordinator(&self.http, &self.apis);
                let avoid: Vec<u64> = primary.into_iter().chain(coord).collect();
                let target = self.free_node(f.pick, taken, &avoid).ok_or("no node")?;
                if avoid.contains(&target) {
                    a.detail = "skipped: no node is neither primary nor coordinator".into();
                } else {
                    a.nodes = vec![target];
                    a.detail = self.wipe(target)?;
                    if !a.detail.starts_with("skipped") {
                        a.heal = Heal::Promote((target - 1) as usize);
                    }
                }
            }
            other => return Err(format!("unknown nemesis {other:?}")),
        }
        taken.extend(a.nodes.iter().copied());
        // A primary that is killed, paused, restarted or cut off from the majority.
        a.was_primary = primary.is_some_and(|p| {
            a.nodes.contains(&p)
                && match a.kind.as_str() {
                    "partition" => a.variant != "bridge",
                    "netem" | "wipe" => false,
                    _ => true,
                }
        });
        Ok(a)
    }

    /// Cut the network as the partition variant says; `a` gets the nodes on the (first) small
    /// side and the detail.
    fn partition(&self, f: &Planned, primary: Option<u64>, a: &mut Active) -> Result<(), String> {
        let lab = self.cluster.lab.as_ref().ok_or("partition needs --netns")?;
        let coordinator = (f.variant == "isolate-coordinator")
            .then(|| coordinator(&self.http, &self.apis))
            .flatten();
        let sides = partition::sides(&f.variant, f.pick, &self.ids(), primary, coordinator);
        partition::cut(lab, &sides);
        a.nodes = sides.small.iter().copied().collect();
        a.detail = sides.detail();
        Ok(())
    }

    /// `POST /v1/switchover {"to": id}` until it succeeds or `within` passes; what happened.
    fn switch_to(&self, id: u64, within: Duration) -> String {
        // No live node left to ask: give up at once.
        let r = self.retry_post(id, within, true, "already the primary", |url| {
            self.http
                .post(format!("{url}/v1/switchover"))
                .timeout(Duration::from_secs(5))
                .json(&json!({ "to": id }))
        });
        match r {
            Retried::Done => "done".into(),
            // An earlier attempt whose answer was lost, or a promotion of its own.
            Retried::Already => "done (already primary)".into(),
            Retried::NotDone(last) => format!("not done ({last})"),
        }
    }

    /// Send the request that `build` makes (given the URL of a live node other than `id`)
    /// every 300 ms until it succeeds, its answer contains `already`, or `within` passes.
    /// Without a live node to ask, it gives up if `give_up_without_peer`, else waits for one.
    fn retry_post(
        &self,
        id: u64,
        within: Duration,
        give_up_without_peer: bool,
        already: &str,
        build: impl Fn(&str) -> reqwest::blocking::RequestBuilder,
    ) -> Retried {
        let deadline = Instant::now() + within;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            match self.url_of_other(id) {
                Some(url) => match build(&url).send() {
                    Ok(r) if r.status().is_success() => return Retried::Done,
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().unwrap_or_default();
                        if body.contains(already) {
                            return Retried::Already;
                        }
                        last = format!("{status} {}", body.chars().take(160).collect::<String>());
                    }
                    Err(e) => last = e.to_string(),
                },
                None if give_up_without_peer => break,
                None => {}
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Retried::NotDone(last)
    }

    /// Kill the node, remove it from the membership, wipe its data dir, and start it empty
    /// with `--join`. openraft (without `loosen-follower-log-revert`) asserts when a node that
    /// the leader already replicated to comes back with an empty log under the same id, so the
    /// member is removed first: the leader drops its replication progress, and the rejoining
    /// node is added as a new learner (promoted back to voter when the fault heals).
    fn wipe(&mut self, id: u64) -> Result<String, String> {
        let i = (id - 1) as usize;
        self.cluster.kill(i);
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut last = String::new();
        let removed = loop {
            if Instant::now() > deadline {
                break false;
            }
            let Some(url) = self.url_of_other(id) else { break false };
            match self
                .http
                .delete(format!("{url}/v1/members/{id}"))
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(r) if r.status().is_success() => break true,
                // The member is already gone (an earlier wipe whose rejoin never completed).
                Ok(r) if r.status().as_u16() == 404 => break true,
                Ok(r) if r.status().as_u16() == 409 => {
                    last = r.text().unwrap_or_default();
                    break false;
                }
                Ok(r) => last = format!("{} {}", r.status().as_u16(), r.text().unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if !removed {
            // Not removed: restart it as it was (wiping it now would trip the assertion).
            self.cluster.spawn(i)?;
            return Ok(format!(
                "skipped: could not remove member: {}",
                last.chars().take(200).collect::<String>()
            ));
        }
        if self.cluster.nodes[i].data.exists() {
            std::fs::remove_dir_all(&self.cluster.nodes[i].data)
                .map_err(|e| format!("wipe {}: {e}", self.cluster.nodes[i].data.display()))?;
        }
        self.shared.wiped.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        let join = self.url_of_other(id).ok_or("no live member to join through")?;
        self.cluster.nodes[i].join = Some(join.clone());
        self.cluster.spawn(i)?;
        Ok(format!("removed, data dir wiped, rejoining via {join}"))
    }

    /// Promote node `i` back to voter, retrying while it catches up.
    pub(super) fn promote(&self, i: usize, within: Duration) -> String {
        let id = self.cluster.nodes[i].id;
        let r = self.retry_post(id, within, false, "already_voter", |url| {
            self.http
                .post(format!("{url}/v1/members/{id}/promote"))
                .timeout(Duration::from_secs(12))
        });
        match r {
            Retried::Done | Retried::Already => "promoted".into(),
            Retried::NotDone(last) => format!("not promoted ({last})"),
        }
    }

    /// After the run: a wiped node whose promotion did not complete in its window is promoted
    /// now, and its fault's detail says how that went.
    pub(super) fn promote_unfinished(&self, faults: &mut [Value]) {
        for f in faults.iter_mut().filter(|f| f["kind"] == "wipe") {
            if f["detail"].as_str().is_some_and(|d| d.contains("not promoted")) {
                let i = (f["node"].as_u64().unwrap_or(1) - 1) as usize;
                let r = self.promote(i, Duration::from_secs(30));
                f["detail"] = json!(format!("{}; after the run: {r}", f["detail"].as_str().unwrap_or("")));
            }
        }
    }

    fn heal(&mut self, a: &mut Active) -> Result<(), String> {
        match std::mem::replace(&mut a.heal, Heal::Nothing) {
            Heal::Nothing => {}
            Heal::Restart(v) => {
                for i in v {
                    if self.cluster.nodes[i].child.is_none() {
                        self.cluster.spawn(i)?;
                    }
                }
            }
            Heal::Resume(v) => {
                for i in v {
                    self.cluster.resume(i);
                }
            }
            Heal::Net => {
                if let Some(lab) = &self.cluster.lab {
                    lab.heal();
                }
            }
            Heal::Unskew(i) => {
                self.cluster.kill(i);
                self.cluster.nodes[i].faketime = None;
                self.cluster.spawn(i)?;
            }
            Heal::Promote(i) => {
                // Bounded by the step; a promotion still missing is retried after the run.
                let r = self.promote(i, self.step_for.max(Duration::from_secs(3)));
                a.detail.push_str(&format!("; {r}"));
            }
        }
        Ok(())
    }
}

/// Play the schedule: each step's faults start together, the failover (if the primary was hit)
/// is timed, and the faults are healed together at the end of the step.
pub(super) fn run_schedule(
    nem: &mut Nemesis,
    steps: &[Step],
    end: Instant,
    faults: &mut Vec<Value>,
    failover_ms: &mut Vec<u64>,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    for step in steps {
        let at = nem.start + Duration::from_millis(step.at_ms);
        // A slow step (a skew's switchover, a wipe's rejoin) may push later ones past the end of
        // the run: those are dropped, never run after the clients stopped.
        if Instant::now() + Duration::from_millis(step.for_ms) > end {
            break;
        }
        nem.step_for = Duration::from_millis(step.for_ms);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t0 = Instant::now();
        let mut taken = BTreeSet::new();
        let mut active = Vec::new();
        for f in &step.faults {
            let a = nem.apply(f, &mut taken)?;
            let on = match a.nodes.as_slice() {
                [] => "skipped".to_string(),
                nodes => nodes.iter().map(|n| format!("n{n}")).collect::<Vec<_>>().join(" "),
            };
            progress(&format!("fault {} ({}) {on}", a.kind, a.variant));
            active.push(a);
        }
        let hit: Vec<u64> = active
            .iter()
            .filter(|a| a.was_primary)
            .flat_map(|a| a.nodes.iter().copied())
            .collect();
        let until = at + Duration::from_millis(step.for_ms);
        if !hit.is_empty() {
            let others: Vec<(u64, String)> = nem.apis.iter().filter(|(id, _)| !hit.contains(id)).cloned().collect();
            while Instant::now() < until {
                if primaries(&nem.http, &others).len() == 1 {
                    failover_ms.push(t0.elapsed().as_millis() as u64);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        for mut a in active {
            nem.heal(&mut a)?;
            faults.push(json!({
                "kind": a.kind,
                "variant": a.variant,
                "node": a.nodes.first(),
                "nodes": a.nodes,
                "start_ms": a.start_ms,
                "end_ms": nem.ms(),
                "was_primary": a.was_primary,
                "detail": a.detail,
            }));
        }
    }
    Ok(())
}
