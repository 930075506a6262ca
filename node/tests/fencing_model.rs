//! A model of Keel's fencing layer (raft/DESIGN.md, "Fencing" and "The fencing model"),
//! explored exhaustively with `stateright`. It drives the real code where the decisions are
//! made: `keel_node::cluster::failover::decide` (when and whom the coordinator promotes), and the lease
//! arithmetic of `keel_node::cluster::lease` (`lease_len_ms`: the lease capped at 3/4 of
//! `election_timeout_max_ms`; `lease_deadline`: the lease counted from the renewal's send time;
//! `fence_deadline`: a new epoch's first lease waits for the last grant + `lease_ms`).
//!
//! Invariants: never two nodes that both believe they hold a valid lease, and epochs strictly
//! increase (each epoch is committed once, to one node, in order; a lease is only held for an
//! epoch committed to its holder).
//!
//! The model, in short:
//! - Time is discrete (one tick = `tick_ms` of real time). Every duration a node measures on its
//!   own clock is turned into real ticks at the worst rate the drift bound `ρ` allows *for
//!   safety*: a primary's lease at the slow extreme (it lasts up to `L/(1-ρ)`, rounded up),
//!   followers' vote refusal and the coordinator's timers at the fast extreme (`d/(1+ρ)`,
//!   rounded down; the coordinator sees `elapsed·(1+ρ)`, rounded up). Choosing each extreme per
//!   timer over-approximates any real pair of clocks whose rates differ by at most `ρ`.
//! - Raft is abstracted to what the argument uses: the leader of the newest term is the
//!   coordinator; it grants a renewal after a quorum (itself and one other node) acknowledged
//!   it, and every acknowledging follower then refuses votes for `election_timeout_max`
//!   (openraft's leader lease). A node is elected only with a quorum of nodes whose refusal has
//!   run out. A restarted node refuses votes for `election_timeout_max` (Keel's vote guard).
//! - Messages (renewal requests and grants) are delayed arbitrarily (up to a bound) or lost;
//!   processes are paused simply by not being scheduled (the monotonic clock runs on); a node
//!   may crash and restart; a node learns the committed state at any later time.
//! - A new coordinator's probe of the primary may fail (the fast path) or succeed.
//!
//! Limits (what the model does not cover) are listed in raft/DESIGN.md.

use std::time::Duration;

use keel_node::cluster::failover::{decide, Candidate, ClusterView, Decision};
use keel_node::cluster::lease::{fence_deadline, lease_deadline, lease_len_ms};
use keel_raft::state::{DynamicConfig, PrimaryRecord};
use stateright::{Checker, HasDiscoveries, Model, Property};

const NODES: usize = 3;

/// Milliseconds on some node's clock; `lease_deadline`/`fence_deadline` are generic over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ms(u64);

impl std::ops::Add<Duration> for Ms {
    type Output = Ms;
    fn add(self, d: Duration) -> Ms {
        Ms(self.0 + d.as_millis() as u64)
    }
}

/// Where the local clocks start in the model's conversions (any value larger than every
/// duration works: only differences matter).
const BASE: u64 = 1_000_000;

/// The parameters, and the mutations the checker must catch.
#[derive(Debug, Clone)]
struct Params {
    tick_ms: u64,
    election_timeout_max_ms: u64,
    lease_ms: u64,
    failover_timeout_ms: u64,
    /// Bound on clock-rate drift, in per mille (50 = 5 %).
    drift_permille: u64,
    /// Mutation: count the lease from when the grant *arrived* instead of the send time.
    lease_from_receive: bool,
    /// Mutation: ignore the 3/4 cap (`lease_len_ms`) and use `lease_ms` as it is.
    no_lease_cap: bool,
    /// Mutation: a restarted node votes at once (no vote guard).
    no_restart_guard: bool,
    /// The coordinator itself refuses votes for `election_timeout_max` after each quorum-
    /// confirmed grant, like the followers that acknowledged it. openraft 0.9.25 does not do
    /// this on its own (a leader's vote is touched only when it is elected); Keel's vote guard
    /// in `peer.rs` does (`Coordinator::since_any_grant`; see DESIGN.md).
    leader_refuses_votes_after_grant: bool,
    /// Bounds of the exploration.
    max_term: u8,
    max_epoch: u8,
    max_restarts: u8,
    /// Longest a renewal (request plus grant) stays in flight, in ticks.
    max_delay_ticks: u8,
}

impl Params {
    /// Keel's defaults (raft/DESIGN.md) and the drift bound the design assumes.
    fn keel_defaults() -> Params {
        let d = DynamicConfig::default();
        Params {
            tick_ms: 50,
            election_timeout_max_ms: 400,
            lease_ms: d.lease_ms,
            failover_timeout_ms: d.failover_timeout_ms,
            drift_permille: 50,
            lease_from_receive: false,
            no_lease_cap: false,
            no_restart_guard: false,
            leader_refuses_votes_after_grant: true,
            max_term: 2,
            max_epoch: 3,
            max_restarts: 1,
            max_delay_ticks: 2,
        }
    }

    fn lease_len_ms(&self) -> u64 {
        if self.no_lease_cap {
            self.lease_ms
        } else {
            lease_len_ms(self.lease_ms, self.election_timeout_max_ms)
        }
    }

    /// Local ms elapsed on a clock running slow, for `ticks` real ticks (rounded down).
    fn slow_elapsed(&self, ticks: u64) -> u64 {
        ticks * self.tick_ms * (1000 - self.drift_permille) / 1000
    }
    /// Real ticks for `local_ms` on a slow clock (rounded up): the longest it can last.
    fn slow_ticks(&self, local_ms: u64) -> u64 {
        (local_ms * 1000).div_ceil((1000 - self.drift_permille) * self.tick_ms)
    }
    /// Local ms elapsed on a fast clock, for `ticks` real ticks (rounded up).
    fn fast_elapsed(&self, ticks: u64) -> u64 {
        (ticks * self.tick_ms * (1000 + self.drift_permille)).div_ceil(1000)
    }
    /// Real ticks for `local_ms` on a fast clock (rounded down): the shortest it can last.
    fn fast_ticks(&self, local_ms: u64) -> u64 {
        local_ms * 1000 / ((1000 + self.drift_permille) * self.tick_ms)
    }

    /// How long a node refuses votes after acknowledging a leader (or after starting).
    fn refuse_ticks(&self) -> u8 {
        self.fast_ticks(self.election_timeout_max_ms) as u8
    }

    /// The grant age saturates once the fence it implies (`lease_ms` on a fast clock) has passed.
    fn grant_age_cap(&self) -> u8 {
        (self.lease_ms / self.tick_ms + 1) as u8
    }

    /// Counters of elapsed time saturate here: past every threshold the model compares with.
    fn age_cap(&self) -> u8 {
        let ft = self.failover_timeout_ms.max(self.lease_ms);
        (ft / self.tick_ms + 3) as u8
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct NodeState {
    /// The epoch for which this node, as it last learned the committed state, is the primary.
    primary_of: Option<u8>,
    /// Real ticks for which this node still believes it holds a lease (0: none), and its epoch.
    lease: u8,
    lease_epoch: u8,
    /// Real ticks for which it still refuses vote requests.
    refuse: u8,
    /// A granted renewal whose answer is on its way: epoch, ticks since the request was sent.
    renewal: Option<(u8, u8)>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct State {
    nodes: [NodeState; NODES],
    term: u8,
    /// The coordinator: the leader of the newest term (None after it crashed).
    leader: Option<u8>,
    committed: Option<(u8, u8)>,
    /// Which node each epoch was committed to (index = epoch - 1).
    owners: Vec<u8>,
    /// Coordinator memory (reset at election). `silent`: ticks since the later of its election,
    /// its last promotion and its last grant to the current primary (what `decide` measures;
    /// the real controller passes those instants, `decide` takes the latest). `granted_current`:
    /// it granted the current primary's epoch a lease. `grant_age`: ticks since its last grant
    /// to anyone (for the fence; saturates once the fence it implies has passed). `fence`: ticks
    /// until the fence ends. `primary_lost_at_election`: the probe result.
    silent: u8,
    granted_current: bool,
    grant_age: Option<u8>,
    fence: u8,
    primary_lost_at_election: bool,
    restarts: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    /// The primary sends a renewal and the coordinator grants it in the same tick (the worst
    /// case: a later grant only starts the followers' refusal later); `follower` is the other
    /// member of the acknowledging quorum.
    Renew {
        node: u8,
        follower: u8,
    },
    /// The grant reaches the node.
    Reply(u8),
    /// The grant is lost (or arrives after the request timed out).
    Lose(u8),
    /// The node learns the committed state.
    Learn(u8),
    /// `candidate` is elected with `voter`'s vote; `probe_ok`: its probe of the primary answered.
    Elect {
        candidate: u8,
        voter: u8,
        probe_ok: bool,
    },
    /// The coordinator runs `decide()`; `reachable`: bit mask of members it heard from.
    Decide {
        reachable: u8,
    },
    /// kill -9 and restart.
    Restart(u8),
}

struct Fencing {
    p: Params,
}

impl Fencing {
    fn decide(&self, s: &State, reachable: u8) -> Decision {
        let c = s.leader.expect("decide runs on the coordinator");
        let p = &self.p;
        let primary = s.committed.map(|(n, e)| PrimaryRecord {
            node: n as u64,
            epoch: e as u64,
        });
        let silent_since = BASE - p.fast_elapsed(s.silent as u64);
        let last_renewal_ms = s.granted_current.then_some(silent_since);
        let view = ClusterView {
            me: c as u64,
            now_ms: BASE,
            leader_since_ms: silent_since,
            primary,
            last_renewal_ms,
            primary_lost_at_election: s.primary_lost_at_election,
            maintenance: false,
            config: DynamicConfig {
                lease_ms: p.lease_ms,
                failover_timeout_ms: p.failover_timeout_ms,
                // Anti-flap only delays failovers; without it the model explores more.
                min_failover_interval_ms: 0,
                ..Default::default()
            },
            members: (1..=NODES as u8)
                .map(|id| Candidate {
                    id: id as u64,
                    voter: true,
                    reachable: id == c || reachable & (1 << id) != 0,
                    nofailover: false,
                    priority: 0,
                    position: Some(0),
                    service: None,
                })
                .collect(),
            last_auto_failover_ms: None,
        };
        decide(&view)
    }
}

fn idx(n: u8) -> usize {
    n as usize - 1
}

impl Model for Fencing {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        // Node 1 was just elected in term 1 with everyone's vote; no primary yet (the first
        // decide() promotes one, as at bootstrap).
        let refuse = self.p.refuse_ticks();
        let node = NodeState {
            primary_of: None,
            lease: 0,
            lease_epoch: 0,
            refuse,
            renewal: None,
        };
        vec![State {
            nodes: std::array::from_fn(|_| node.clone()),
            term: 1,
            leader: Some(1),
            committed: None,
            owners: Vec::new(),
            silent: 0,
            granted_current: false,
            grant_age: None,
            fence: 0,
            primary_lost_at_election: false,
            restarts: 0,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        out.push(Action::Tick);
        for n in 1..=NODES as u8 {
            let ns = &s.nodes[idx(n)];
            match ns.renewal {
                None => {
                    if let (Some(c), Some(_)) = (s.leader, ns.primary_of) {
                        for follower in 1..=NODES as u8 {
                            if follower != c {
                                out.push(Action::Renew { node: n, follower });
                            }
                        }
                    }
                }
                Some(_) => {
                    out.push(Action::Reply(n));
                    out.push(Action::Lose(n));
                }
            }
            let learned = match s.committed {
                Some((p, e)) if p == n => Some(e),
                _ => None,
            };
            if ns.primary_of != learned || (learned.is_none() && ns.lease > 0) {
                out.push(Action::Learn(n));
            }
            if s.restarts < self.p.max_restarts {
                out.push(Action::Restart(n));
            }
        }
        if s.term < self.p.max_term {
            for candidate in 1..=NODES as u8 {
                for voter in 1..=NODES as u8 {
                    if voter != candidate {
                        for probe_ok in [true, false] {
                            out.push(Action::Elect {
                                candidate,
                                voter,
                                probe_ok,
                            });
                        }
                    }
                }
            }
        }
        if s.leader.is_some() && s.committed.map(|c| c.1).unwrap_or(0) < self.p.max_epoch {
            for reachable in 0..(1u8 << (NODES + 1)) {
                if reachable & 1 == 0 {
                    out.push(Action::Decide { reachable });
                }
            }
        }
    }

    fn next_state(&self, s: &State, a: Action) -> Option<State> {
        let p = &self.p;
        let mut s = s.clone();
        match a {
            Action::Tick => {
                let cap = p.age_cap();
                for ns in &mut s.nodes {
                    ns.lease = ns.lease.saturating_sub(1);
                    ns.refuse = ns.refuse.saturating_sub(1);
                    if let Some((e, age)) = ns.renewal {
                        // Past the bound the request timed out (its answer is dropped).
                        ns.renewal = (age < p.max_delay_ticks).then_some((e, age + 1));
                    }
                }
                s.silent = (s.silent + 1).min(cap);
                s.grant_age = s.grant_age.map(|a| (a + 1).min(p.grant_age_cap()));
                s.fence = s.fence.saturating_sub(1);
            }
            Action::Renew { node, follower } => {
                let c = s.leader?;
                let e = s.nodes[idx(node)].primary_of?;
                // cluster::primary::grant: refused while the fence runs; after ensure_linearizable
                // (a quorum acknowledged this term now), only if the committed state still
                // names that node and epoch.
                if s.fence > 0 || s.committed != Some((node, e)) {
                    return None;
                }
                let refuse = p.refuse_ticks();
                s.nodes[idx(follower)].refuse = refuse;
                if p.leader_refuses_votes_after_grant {
                    s.nodes[idx(c)].refuse = refuse;
                }
                s.nodes[idx(node)].renewal = Some((e, 0));
                s.silent = 0;
                s.granted_current = true;
                s.grant_age = Some(0);
            }
            Action::Reply(n) => {
                let (e, age) = s.nodes[idx(n)].renewal.take()?;
                // renew_once: lease until send time + lease, on this node's (slow) clock.
                let now = Ms(BASE);
                let sent = if p.lease_from_receive {
                    now
                } else {
                    Ms(BASE - p.slow_elapsed(age as u64))
                };
                let until = lease_deadline(sent, Duration::from_millis(p.lease_len_ms()));
                let left = p.slow_ticks(until.0.saturating_sub(now.0));
                let ns = &mut s.nodes[idx(n)];
                ns.lease = left as u8;
                ns.lease_epoch = e;
            }
            Action::Lose(n) => {
                s.nodes[idx(n)].renewal.take()?;
            }
            Action::Learn(n) => {
                let ns = &mut s.nodes[idx(n)];
                ns.primary_of = match s.committed {
                    Some((p, e)) if p == n => Some(e),
                    _ => None,
                };
                // renew_task: not the primary in the committed state any more: drop the lease.
                if ns.primary_of.is_none() {
                    ns.lease = 0;
                }
            }
            Action::Elect {
                candidate,
                voter,
                probe_ok,
            } => {
                // A node campaigns, and votes, only once its own refusal has run out.
                if s.nodes[idx(candidate)].refuse > 0 || s.nodes[idx(voter)].refuse > 0 {
                    return None;
                }
                let refuse = p.refuse_ticks();
                s.nodes[idx(candidate)].refuse = refuse;
                s.nodes[idx(voter)].refuse = refuse;
                s.term += 1;
                s.leader = Some(candidate);
                s.silent = 0;
                s.granted_current = false;
                s.grant_age = None;
                s.fence = 0;
                // controller_task: probe the primary once at election.
                s.primary_lost_at_election = matches!(s.committed, Some((n, _)) if n != candidate) && !probe_ok;
            }
            Action::Decide { reachable } => {
                match self.decide(&s, reachable) {
                    Decision::Promote { node, epoch, .. } => {
                        let cur = s.committed.map(|c| c.1).unwrap_or(0) as u64;
                        // ClusterState::apply: Promote applies only if epoch == current + 1.
                        if epoch != cur + 1 || epoch > p.max_epoch as u64 {
                            return None;
                        }
                        // promote(): fence the new epoch's first lease behind the last grant.
                        if let Some(age) = s.grant_age {
                            let now = Ms(BASE);
                            let granted_at = Ms(BASE - p.fast_elapsed(age as u64));
                            let until = fence_deadline(granted_at, p.lease_ms);
                            let left = p.fast_ticks(until.0.saturating_sub(now.0)) as u8;
                            s.fence = s.fence.max(left);
                        }
                        s.committed = Some((node as u8, epoch as u8));
                        s.owners.push(node as u8);
                        s.silent = 0;
                        s.granted_current = false;
                    }
                    Decision::Healthy | Decision::Blocked { .. } => return None,
                }
            }
            Action::Restart(n) => {
                s.restarts += 1;
                let ns = &mut s.nodes[idx(n)];
                ns.lease = 0;
                ns.renewal = None;
                ns.refuse = if p.no_restart_guard { 0 } else { p.refuse_ticks() };
                if s.leader == Some(n) {
                    s.leader = None;
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::<Self>::always("at most one lease holder", |_, s: &State| {
                s.nodes.iter().filter(|n| n.lease > 0).count() <= 1
            }),
            Property::<Self>::always("epochs strictly increase", |_, s: &State| {
                let epoch = s.committed.map(|c| c.1 as usize).unwrap_or(0);
                epoch == s.owners.len()
                    && s.committed.is_none_or(|(n, _)| s.owners.last() == Some(&n))
                    && s.nodes
                        .iter()
                        .enumerate()
                        .all(|(i, n)| n.lease == 0 || s.owners.get(n.lease_epoch as usize - 1) == Some(&(i as u8 + 1)))
            }),
        ]
    }
}

struct Outcome {
    states: usize,
    counterexample: Option<String>,
    secs: f64,
}

/// Explore every state (BFS, so a counterexample is a shortest one), stopping at the first
/// property violated.
fn check(p: Params) -> Outcome {
    let started = std::time::Instant::now();
    let checker = Fencing { p }
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    assert!(checker.is_done(), "the exploration did not finish");
    let mut counterexample = None;
    for name in ["at most one lease holder", "epochs strictly increase"] {
        if let Some(path) = checker.discovery(name) {
            counterexample = Some(format!("{name} violated:\n{path}"));
            break;
        }
    }
    Outcome {
        states: checker.unique_state_count(),
        counterexample,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn assert_safe(name: &str, p: Params) {
    let o = check(p);
    println!("{name}: {} states in {:.1} s", o.states, o.secs);
    if let Some(c) = o.counterexample {
        panic!("{name}: {c}");
    }
}

fn assert_unsafe(name: &str, p: Params) {
    let o = check(p);
    println!("{name}: {} states in {:.1} s", o.states, o.secs);
    match o.counterexample {
        Some(c) => println!("{name}: counterexample found as expected\n{c}"),
        None => panic!("{name}: the mutation broke the safety margin, but no counterexample was found"),
    }
}

/// Keel's defaults, explored up to `max_term` Raft terms and `max_epoch` primary epochs.
fn defaults_up_to(max_term: u8, max_epoch: u8) -> Params {
    Params {
        max_term,
        max_epoch,
        ..Params::keel_defaults()
    }
}

#[test]
fn fencing_defaults_are_safe() {
    // Bootstrap promotion, one failover, two elections after the first.
    assert_safe("defaults, drift 5 %, 3 terms, 2 epochs", defaults_up_to(3, 2));
}

#[test]
fn fencing_defaults_are_safe_across_two_failovers() {
    assert_safe("defaults, drift 5 %, 2 terms, 3 epochs", defaults_up_to(2, 3));
}

#[test]
fn mutation_failover_timeout_not_above_lease_is_caught() {
    let mut p = Params::keel_defaults();
    p.failover_timeout_ms = p.lease_ms;
    // The API refuses this configuration (PATCH /v1/config); the model shows why.
    let cfg = DynamicConfig {
        lease_ms: p.lease_ms,
        failover_timeout_ms: p.failover_timeout_ms,
        ..Default::default()
    };
    assert!(keel_node::cluster::admin::validate_dynamic(&cfg, p.election_timeout_max_ms).is_err());
    assert_unsafe("failover_timeout_ms = lease_ms", p);
}

/// One test per mutation of Keel's defaults that the model must catch: `name: "what", |p| change;`
/// makes test `name`, which checks that the defaults changed by `change` are unsafe.
macro_rules! mutations_are_caught {
    ($($(#[$doc:meta])* $name:ident: $what:literal, |$p:ident| $change:expr;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                let mut $p = Params::keel_defaults();
                $change;
                assert_unsafe($what, $p);
            }
        )*
    };
}

mutations_are_caught! {
    mutation_drift_above_bound_is_caught: "drift 20 %", |p| p.drift_permille = 200;
    mutation_lease_from_receive_time_is_caught: "lease counted from receive time", |p| p.lease_from_receive = true;
    mutation_no_lease_cap_is_caught: "lease not capped at 3/4 of election_timeout_max", |p| {
        p.lease_ms = p.election_timeout_max_ms;
        p.failover_timeout_ms = p.lease_ms * 2;
        p.no_lease_cap = true;
    };
    mutation_no_restart_vote_guard_is_caught: "restarted node votes at once", |p| p.no_restart_guard = true;
    /// openraft 0.9.25 touches a leader's own vote only when it is elected, so a leader that has
    /// led for longer than `election_timeout_max` votes for a higher-term candidate at once, even
    /// right after a quorum (itself and one follower) confirmed a lease grant. With only that
    /// follower refusing, a candidate elected by {itself, the old leader} may promote at once (fast
    /// path) while the old primary's lease runs. Keel's vote guard closes this (`peer.rs`;
    /// `failover.rs` `coordinator_refuses_votes_while_it_grants_leases` pins the wiring). See
    /// raft/DESIGN.md, "The fencing model".
    leader_that_does_not_refuse_votes_after_grant_is_unsafe: "leader votes during its followers' lease",
        |p| p.leader_refuses_votes_after_grant = false;
}
