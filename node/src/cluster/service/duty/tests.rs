//! The duty loop's decision step and its `ManagedService` calls, driven with a fake datastore that
//! records what it is asked to do (no node, no Redis).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keel_replication::service::{ServiceError, ServiceHealth, ServiceRole};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::service::Directory;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    OnLead,
    BeforeWrites,
    KeepLeading,
    BeforeFollow,
    Promote,
    Unfence,
    Fence,
    Follow(String),
}

/// A datastore that only records the calls; fence and unfence set and clear its fence flag.
#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    fenced: AtomicBool,
}

impl Fake {
    fn push(&self, c: Call) -> Result<(), ServiceError> {
        self.calls.lock().unwrap().push(c);
        Ok(())
    }
}

impl ManagedService for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn addr(&self) -> String {
        "127.0.0.1:1".into()
    }
    async fn run(self: Arc<Self>, _cancel: CancellationToken) {}
    async fn health(&self) -> ServiceHealth {
        ServiceHealth::down("fake", self.addr(), None, 0)
    }
    async fn position(&self) -> Result<u64, ServiceError> {
        Ok(0)
    }
    async fn promote(&self) -> Result<(), ServiceError> {
        self.push(Call::Promote)
    }
    async fn follow(&self, primary: &Upstream) -> Result<(), ServiceError> {
        self.push(Call::Follow(primary.addr.clone()))
    }
    async fn fence(&self) -> Result<(), ServiceError> {
        self.fenced.store(true, Ordering::SeqCst);
        self.push(Call::Fence)
    }
    async fn unfence(&self) -> Result<(), ServiceError> {
        self.fenced.store(false, Ordering::SeqCst);
        self.push(Call::Unfence)
    }
}

#[derive(Debug, Default)]
struct FakeDriven {
    svc: Arc<Fake>,
    dir: Directory,
}

impl DrivenService for FakeDriven {
    type Service = Fake;
    fn service(&self) -> &Arc<Fake> {
        &self.svc
    }
    fn advertise_addr(&self) -> &str {
        "127.0.0.1:1"
    }
    fn directory(&self) -> &Directory {
        &self.dir
    }
    fn is_fenced(&self) -> bool {
        self.svc.fenced.load(Ordering::SeqCst)
    }
    fn is_running(&self) -> bool {
        true
    }
    async fn fresh_views(&self, _node: &Node, _ids: &[NodeId]) -> BTreeMap<NodeId, ServiceView> {
        BTreeMap::new()
    }
    async fn fence_member(&self, _node: &Node, _member: NodeId) {}
}

fn health(role: ServiceRole, following: Option<&str>) -> ServiceHealth {
    ServiceHealth {
        kind: "fake",
        addr: "127.0.0.1:1".into(),
        role,
        offset: Some(7),
        lag: None,
        following: following.map(str::to_string),
        link_up: following.is_some(),
        healthy: role != ServiceRole::Down,
        last_error: None,
        restarts: 0,
    }
}

const ME: NodeId = 1;

fn upstream(node: NodeId) -> Upstream {
    Upstream {
        node,
        epoch: 3,
        addr: format!("127.0.0.{node}:6379"),
    }
}

fn tick<'a>(h: &'a ServiceHealth, leased: Option<u64>, fenced: bool, primary: Option<Upstream>) -> Tick<'a> {
    Tick {
        me: ME,
        leased,
        health: h,
        running: true,
        fenced,
        primary,
        now: Instant::now(),
    }
}

/// The hooks, recorded in the same log as the service's calls; what they answer is set per test.
struct TestHooks<'a> {
    svc: &'a Fake,
    /// `before_writes` finds this replica holding more.
    behind: Option<(NodeId, u64)>,
    /// `before_follow` lets the follow go ahead.
    follow_ok: bool,
}

impl Hooks for TestHooks<'_> {
    fn on_lead(&self) {
        let _ = self.svc.push(Call::OnLead);
    }
    async fn before_writes(&self, _h: &ServiceHealth, _check_peers: bool) -> Option<(NodeId, u64)> {
        let _ = self.svc.push(Call::BeforeWrites);
        self.behind
    }
    async fn keep_leading(&self) -> bool {
        let _ = self.svc.push(Call::KeepLeading);
        false
    }
    async fn before_follow(&self, _h: &ServiceHealth, _primary: &Upstream) -> bool {
        let _ = self.svc.push(Call::BeforeFollow);
        self.follow_ok
    }
}

/// A fake datastore whose directory finished its first round (`ready`) and whose fence is `fenced`.
fn driven(ready: bool, fenced: bool) -> FakeDriven {
    let d = FakeDriven::default();
    if ready {
        d.dir.mark_ready();
    }
    d.svc.fenced.store(fenced, Ordering::SeqCst);
    d
}

/// One tick of the loop on the sample `t` (a fresh memory: the first tick of its epoch), with the
/// hooks answering `behind` and `follow_ok`: the decision, what `act` did, and the calls made.
async fn step_with(
    d: &FakeDriven,
    t: &Tick<'_>,
    behind: Option<(NodeId, u64)>,
    follow_ok: bool,
) -> (Duty, Outcome, Vec<Call>) {
    let duty = decide(t, &mut Memory::default());
    let hooks = TestHooks {
        svc: &d.svc,
        behind,
        follow_ok,
    };
    let outcome = act(d, &hooks, duty.clone(), t.health).await;
    let calls = std::mem::take(&mut *d.svc.calls.lock().unwrap());
    (duty, outcome, calls)
}

async fn step(d: &FakeDriven, t: &Tick<'_>) -> (Duty, Vec<Call>) {
    let (duty, _, calls) = step_with(d, t, None, true).await;
    (duty, calls)
}

#[tokio::test]
async fn the_lease_holder_promotes_and_unfences() {
    let d = driven(true, true);
    let h = health(ServiceRole::Replica, Some("127.0.0.2:6379"));
    let (duty, calls) = step(&d, &tick(&h, Some(3), true, Some(upstream(ME)))).await;
    assert_eq!(
        duty,
        Duty::Lead {
            epoch: 3,
            check_peers: true
        }
    );
    assert_eq!(
        calls,
        vec![Call::OnLead, Call::BeforeWrites, Call::Promote, Call::Unfence]
    );
    assert!(!d.is_fenced());

    // Already the unfenced master: only kept so (the datastore's own re-check).
    let h = health(ServiceRole::Master, None);
    let (_, calls) = step(&d, &tick(&h, Some(3), false, Some(upstream(ME)))).await;
    assert_eq!(calls, vec![Call::OnLead, Call::KeepLeading]);
}

#[tokio::test]
async fn the_lease_holder_waits_for_the_directory_and_yields_to_a_replica_that_holds_more() {
    // Just started: the other members' services are not known, so no promotion yet.
    let d = driven(false, true);
    let h = health(ServiceRole::Replica, Some("127.0.0.2:6379"));
    let t = tick(&h, Some(3), true, Some(upstream(ME)));
    let (_, outcome, calls) = step_with(&d, &t, None, true).await;
    assert_eq!(outcome, Outcome::Done(false));
    assert_eq!(calls, vec![Call::OnLead]);
    assert!(d.is_fenced());
    // A replica holds more: neither promoted nor unfenced, the role goes to it.
    let d = driven(true, true);
    let (_, outcome, calls) = step_with(&d, &t, Some((2, 99)), true).await;
    assert_eq!(
        outcome,
        Outcome::Behind {
            epoch: 3,
            peer: 2,
            offset: 99
        }
    );
    assert_eq!(calls, vec![Call::OnLead, Call::BeforeWrites]);
    assert!(d.is_fenced());
}

#[tokio::test]
async fn a_demoted_master_is_fenced_then_follows_the_primary() {
    let d = driven(true, false);
    let h = health(ServiceRole::Master, None);
    let t = tick(&h, None, false, Some(upstream(2)));
    let (duty, outcome, calls) = step_with(&d, &t, None, true).await;
    assert_eq!(
        duty,
        Duty::Follow {
            fence: true,
            upstream: Some(upstream(2))
        }
    );
    assert_eq!(outcome, Outcome::Done(true));
    assert_eq!(
        calls,
        vec![Call::Fence, Call::BeforeFollow, Call::Follow(upstream(2).addr)]
    );
    assert!(d.is_fenced());

    // The datastore's check holds the follow back (the new master is not ready): fenced all the same.
    let d = driven(true, false);
    let (_, outcome, calls) = step_with(&d, &t, None, false).await;
    assert_eq!(outcome, Outcome::Done(true));
    assert_eq!(calls, vec![Call::Fence, Call::BeforeFollow]);
    assert!(d.is_fenced());
}

#[tokio::test]
async fn a_replica_follows_the_primary_once() {
    let d = driven(true, true);
    let h = health(ServiceRole::Replica, Some("127.0.0.9:6379"));
    let (_, calls) = step(&d, &tick(&h, None, true, Some(upstream(2)))).await;
    assert_eq!(calls, vec![Call::BeforeFollow, Call::Follow(upstream(2).addr)]);

    // Already following the primary's: nothing to do.
    let h = health(ServiceRole::Replica, Some(upstream(2).addr.as_str()));
    let (_, calls) = step(&d, &tick(&h, None, true, Some(upstream(2)))).await;
    assert_eq!(calls, vec![]);
    // No primary known, or the state names this node primary without its lease: no follow.
    let (_, calls) = step(&d, &tick(&h, None, true, None)).await;
    assert_eq!(calls, vec![]);
    let (_, calls) = step(&d, &tick(&h, None, true, Some(upstream(ME)))).await;
    assert_eq!(calls, vec![]);
}

#[test]
fn a_lease_holder_whose_service_is_down_hands_over_after_the_grace() {
    let mut mem = Memory::default();
    let h = health(ServiceRole::Down, None);
    let mut t = tick(&h, Some(3), true, None);
    let start = t.now;
    assert_eq!(decide(&t, &mut mem), Duty::Hold);
    t.now = start + GIVE_UP_AFTER / 2;
    assert_eq!(decide(&t, &mut mem), Duty::Hold);
    t.now = start + GIVE_UP_AFTER;
    assert_eq!(decide(&t, &mut mem), Duty::HandOver { epoch: 3 });
    // A process that exited is not waited for.
    let mut mem = Memory::default();
    t.running = false;
    t.now = start;
    assert_eq!(decide(&t, &mut mem), Duty::HandOver { epoch: 3 });
}

#[test]
fn a_lease_holder_whose_service_restarted_hands_over_until_it_is_alone() {
    let mut mem = Memory::default();
    let mut h = health(ServiceRole::Fenced, None);
    assert!(matches!(
        decide(&tick(&h, Some(3), true, None), &mut mem),
        Duty::Lead { .. }
    ));
    h.restarts = 1;
    assert_eq!(
        decide(&tick(&h, Some(3), true, None), &mut mem),
        Duty::HandOver { epoch: 3 }
    );
    // The hand-over was accepted: hold until the lease moves.
    mem.handing.gave_up = Some(3);
    assert_eq!(decide(&tick(&h, Some(3), true, None), &mut mem), Duty::Hold);
    // Refused for want of a candidate: lead again, without the peer check.
    mem.handing.alone = true;
    assert_eq!(
        decide(&tick(&h, Some(3), true, None), &mut mem),
        Duty::Lead {
            epoch: 3,
            check_peers: false
        }
    );
    // A new epoch starts from the restarts it sees.
    assert_eq!(
        decide(&tick(&h, Some(4), true, None), &mut mem),
        Duty::Lead {
            epoch: 4,
            check_peers: true
        }
    );
}

#[test]
fn the_most_advanced_healthy_service_wins() {
    let v = |healthy, offset| ServiceView { healthy, offset };
    let views = |list: &[(NodeId, ServiceView)]| list.iter().copied().collect::<BTreeMap<_, _>>();
    assert_eq!(
        most_advanced(views(&[(2, v(true, Some(10))), (3, v(true, Some(12)))])),
        Some(3)
    );
    assert_eq!(
        most_advanced(views(&[(2, v(true, Some(10))), (3, v(false, Some(12)))])),
        Some(2)
    );
    assert_eq!(
        most_advanced(views(&[(2, v(true, Some(10))), (3, v(true, Some(10)))])),
        Some(2)
    );
    assert_eq!(most_advanced(views(&[(2, v(false, None))])), None);
}
