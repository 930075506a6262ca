//! What the Sentinel listener tells clients, as pure data ([`SentinelView`]), and the pure
//! function that computes it from the node's knowledge ([`compute`]). The task that feeds the
//! view from the running node is in the parent module.

use std::collections::{BTreeMap, BTreeSet};

use keel_raft::state::PrimaryRecord;
use keel_raft::NodeId;

/// A Redis (or Sentinel) address as clients get it: host and port apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    /// `host:port` or `[v6]:port`; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Addr> {
        let (host, port) = s.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        Some(Addr {
            host: host.to_owned(),
            port: port.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One replica as `SENTINEL replicas` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub node: NodeId,
    pub addr: Addr,
    /// Reachable from this node; an unhealthy replica is flagged `s_down,disconnected`.
    pub healthy: bool,
}

/// Everything the listener answers from. `master` is only ever the primary that holds a valid
/// lease as far as this node can tell; with none, no master is named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SentinelView {
    /// The master name (`--sentinel-name`).
    pub name: String,
    /// The primary's epoch (Sentinel's `config-epoch`); 0 before the first promotion.
    pub epoch: u64,
    /// The lease-holding primary and its Redis address.
    pub master: Option<(NodeId, Addr)>,
    /// Every other member with a Redis address.
    pub replicas: Vec<ReplicaView>,
    /// The other nodes' Sentinel listeners (for `SENTINEL sentinels`).
    pub sentinels: Vec<Addr>,
    /// When the node's view task computed it (`None`: a view not fed by the task, as in tests). A
    /// connection names no master from a view older than [`STALE_VIEW`] ([`answer_master`]): after
    /// a pause of the process, a connection may answer before the task has computed the view again.
    pub computed_at: Option<std::time::Instant>,
}

/// Age past which a computed view names no master (the task recomputes every 20 ms).
pub const STALE_VIEW: std::time::Duration = std::time::Duration::from_millis(80);

/// What the node knows at the instant a connection answers, read then rather than when the view
/// was computed: a view may be up to [`STALE_VIEW`] old, and in that time the lease can lapse and
/// the node fence its Redis (within a millisecond of each other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveState {
    /// This node.
    pub me: NodeId,
    /// The epoch of this node's lease, when it holds a valid one right now.
    pub own_lease: Option<u64>,
    /// What Keel knows of the managed Redis now; `None` without managed Redis (`--redis-port`).
    pub managed: Option<ManagedNow>,
}

/// The managed Redis as Keel knows it at answer time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNow {
    /// Keel's fence flag on this node's Redis (set before the fence is sent to the server, cleared
    /// only after an unfence succeeded).
    pub fenced: bool,
    /// The member whose Redis is to be named master now
    /// ([`crate::cluster::service::master_addr`]): this node's only with its lease valid and its
    /// Redis last seen the master; another's only while a direct probe, at most 75 ms old, found
    /// it taking writes.
    pub master: Option<NodeId>,
}

/// The master a connection may name at `now`, from `view` and the node's state at that instant
/// (`live`): none from a view older than [`STALE_VIEW`]; this node's own Redis only while its
/// lease for the view's epoch is valid and Keel has not fenced it; with managed Redis, only the
/// member [`ManagedNow::master`] names now. A static view (no `computed_at`) is only checked
/// against `live`.
pub fn answer_master<'a>(
    view: &'a SentinelView,
    live: &LiveState,
    now: std::time::Instant,
) -> Option<&'a (NodeId, Addr)> {
    let stale = view
        .computed_at
        .is_some_and(|t| now.saturating_duration_since(t) > STALE_VIEW);
    let (node, _) = view.master.as_ref().filter(|_| !stale)?;
    if *node == live.me && live.own_lease != Some(view.epoch) {
        return None;
    }
    let ok = match &live.managed {
        None => true,
        Some(m) => m.master == Some(*node) && !(*node == live.me && m.fenced),
    };
    view.master.as_ref().filter(|_| ok)
}

/// How a connection confirms the master [`answer_master`] allows, with a direct probe of its
/// Redis made after the request arrived (so it cannot predate a fence the client could have seen
/// before asking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Another member's Redis must take writes (the unfenced master with its acknowledging
    /// replicas, as the background probe asks): this node knows it only from that probe, up to
    /// 75 ms old, in which time that member's lease can lapse and its Redis be fenced.
    TakesWrites,
    /// This node's own Redis must be the master with no fence set: Keel's flag covers its own
    /// fence, not one another node set directly (a coordinator that resumed from a pause fences
    /// the primary's Redis before a promotion that then fails; the duty loop lifts it within a
    /// tick).
    Unfenced,
}

/// The probe a master needs before it is named: only with managed Redis (`None` otherwise).
pub fn confirm_by_probe(master: NodeId, live: &LiveState) -> Option<Confirm> {
    live.managed.as_ref()?;
    Some(if master == live.me {
        Confirm::Unfenced
    } else {
        Confirm::TakesWrites
    })
}

/// What [`compute`] needs to know, all of it read from the node at one moment.
#[derive(Debug, Clone, Default)]
pub struct ViewInputs {
    pub name: String,
    /// This node.
    pub me: NodeId,
    /// The primary and epoch of the replicated cluster state.
    pub primary: Option<PrimaryRecord>,
    /// The epoch of this node's own lease, when it holds a valid one.
    pub own_lease: Option<u64>,
    /// This node heard from the primary recently enough to take it as holding its lease (only read
    /// when the primary is another node: this node cannot see another node's lease).
    pub primary_seen: bool,
    /// The members of the cluster.
    pub members: BTreeSet<NodeId>,
    /// Member id -> Redis `host:port`. A member without one is not listed.
    pub redis_addrs: BTreeMap<NodeId, String>,
    /// Members this node reaches (itself included).
    pub reachable: BTreeSet<NodeId>,
    /// The other nodes' Sentinel addresses.
    pub sentinels: Vec<String>,
}

/// Whether the cluster state's primary holds a valid lease as far as this node can tell: its own
/// lease for that very epoch when it is the primary, else recent contact with the primary.
pub fn lease_holder(i: &ViewInputs) -> Option<PrimaryRecord> {
    let p = i.primary?;
    let holds = if p.node == i.me {
        i.own_lease == Some(p.epoch)
    } else {
        i.primary_seen
    };
    holds.then_some(p)
}

/// The view these inputs give.
pub fn compute(i: &ViewInputs) -> SentinelView {
    let addr_of = |id: NodeId| {
        i.members
            .contains(&id)
            .then(|| i.redis_addrs.get(&id))
            .flatten()
            .and_then(|a| Addr::parse(a))
    };
    let master = lease_holder(i).and_then(|p| addr_of(p.node).map(|a| (p.node, a)));
    let master_node = master.as_ref().map(|(n, _)| *n);
    let replicas = i
        .members
        .iter()
        .filter(|id| Some(**id) != master_node)
        .filter_map(|&id| {
            addr_of(id).map(|addr| ReplicaView {
                node: id,
                addr,
                healthy: i.reachable.contains(&id),
            })
        })
        .collect();
    let mut sentinels: Vec<Addr> = i.sentinels.iter().filter_map(|s| Addr::parse(s)).collect();
    sentinels.sort();
    sentinels.dedup();
    SentinelView {
        name: i.name.clone(),
        epoch: i.primary.map_or(0, |p| p.epoch),
        master,
        replicas,
        sentinels,
        computed_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(me: NodeId, own_lease: Option<u64>, managed: Option<(bool, Option<NodeId>)>) -> LiveState {
        LiveState {
            me,
            own_lease,
            managed: managed.map(|(fenced, master)| ManagedNow { fenced, master }),
        }
    }

    fn named(v: &SentinelView, l: &LiveState, now: std::time::Instant) -> Option<NodeId> {
        answer_master(v, l, now).map(|(n, _)| *n)
    }

    #[test]
    fn a_stale_view_names_no_master() {
        let now = std::time::Instant::now();
        let mut v = SentinelView {
            epoch: 3,
            master: Some((1, Addr::parse("10.0.0.1:6379").unwrap())),
            ..SentinelView::default()
        };
        let other = live(2, None, None);
        // Not fed by the view task (tests, static views): named.
        assert_eq!(named(&v, &other, now), Some(1));
        v.computed_at = Some(now);
        assert_eq!(named(&v, &other, now), Some(1));
        assert_eq!(named(&v, &other, now + STALE_VIEW), Some(1));
        // Answered more than STALE_VIEW after it was computed (a pause of the process): not named.
        assert_eq!(named(&v, &other, now + STALE_VIEW * 2), None);
    }

    #[test]
    fn own_redis_is_named_only_while_the_lease_is_valid_and_keel_has_not_fenced_it_at_answer_time() {
        let now = std::time::Instant::now();
        let v = SentinelView {
            epoch: 3,
            master: Some((1, Addr::parse("10.0.0.1:6379").unwrap())),
            computed_at: Some(now),
            ..SentinelView::default()
        };
        // Computed while node 1 held its lease with its Redis unfenced: named while that holds.
        assert_eq!(named(&v, &live(1, Some(3), Some((false, Some(1)))), now), Some(1));
        assert_eq!(named(&v, &live(1, Some(3), None), now), Some(1));
        // The lease lapsed since (and the node is about to fence its Redis): not named, even with
        // the fence not yet applied and the health sample still saying master.
        assert_eq!(named(&v, &live(1, None, Some((false, Some(1)))), now), None);
        assert_eq!(named(&v, &live(1, None, None), now), None);
        // A lease of another epoch (lost and granted again after a promotion elsewhere).
        assert_eq!(named(&v, &live(1, Some(4), Some((false, Some(1)))), now), None);
        // Lease valid, but Keel set its fence (a restarted redis-server, a hand-over in progress).
        assert_eq!(named(&v, &live(1, Some(3), Some((true, Some(1)))), now), None);
        // Lease valid and unfenced, but the node's last sample says not the master.
        assert_eq!(named(&v, &live(1, Some(3), Some((false, None))), now), None);
    }

    #[test]
    fn another_members_redis_is_named_only_while_it_is_the_live_master() {
        let now = std::time::Instant::now();
        let v = SentinelView {
            epoch: 3,
            master: Some((2, Addr::parse("10.0.0.2:6379").unwrap())),
            computed_at: Some(now),
            ..SentinelView::default()
        };
        // This node's own lease and fence say nothing about another member's Redis.
        assert_eq!(named(&v, &live(1, None, Some((true, Some(2)))), now), Some(2));
        // The probe of the primary's Redis lapsed, or names another member: not named.
        assert_eq!(named(&v, &live(1, None, Some((false, None))), now), None);
        assert_eq!(named(&v, &live(1, None, Some((false, Some(3)))), now), None);
        // Without managed Redis the view's own criterion (recent contact) is all there is.
        assert_eq!(named(&v, &live(1, None, None), now), Some(2));
        // No master in the view: none, whatever the live state.
        let none = SentinelView {
            master: None,
            ..v.clone()
        };
        assert_eq!(named(&none, &live(1, None, Some((false, Some(2)))), now), None);
    }

    #[test]
    fn a_managed_redis_is_confirmed_by_a_probe_before_it_is_named() {
        assert_eq!(
            confirm_by_probe(2, &live(1, None, Some((false, Some(2))))),
            Some(Confirm::TakesWrites)
        );
        assert_eq!(
            confirm_by_probe(1, &live(1, Some(3), Some((false, Some(1))))),
            Some(Confirm::Unfenced)
        );
        // Without managed Redis there is no Redis of Keel's to probe.
        assert_eq!(confirm_by_probe(2, &live(1, None, None)), None);
        assert_eq!(confirm_by_probe(1, &live(1, Some(3), None)), None);
    }

    fn inputs(primary: Option<(NodeId, u64)>, own_lease: Option<u64>, seen: bool) -> ViewInputs {
        ViewInputs {
            name: "keel".into(),
            me: 1,
            primary: primary.map(|(node, epoch)| PrimaryRecord { node, epoch }),
            own_lease,
            primary_seen: seen,
            members: [1, 2, 3].into(),
            redis_addrs: [(1, "10.0.0.1:6379"), (2, "10.0.0.2:6379"), (3, "10.0.0.3:6379")]
                .into_iter()
                .map(|(id, a)| (id, a.to_owned()))
                .collect(),
            reachable: [1, 2].into(),
            sentinels: vec!["10.0.0.3:26379".into(), "10.0.0.2:26379".into()],
        }
    }

    fn addr(s: &str) -> Addr {
        Addr::parse(s).unwrap()
    }

    #[test]
    fn a_primary_of_this_node_is_named_only_while_its_lease_for_that_epoch_is_valid() {
        let v = compute(&inputs(Some((1, 4)), Some(4), false));
        assert_eq!(v.master, Some((1, addr("10.0.0.1:6379"))));
        assert_eq!(v.epoch, 4);
        // No lease, or a lease of an older epoch: no master.
        assert_eq!(compute(&inputs(Some((1, 4)), None, true)).master, None);
        assert_eq!(compute(&inputs(Some((1, 4)), Some(3), true)).master, None);
    }

    #[test]
    fn another_nodes_primary_is_named_only_when_seen() {
        assert_eq!(
            compute(&inputs(Some((2, 4)), None, true)).master,
            Some((2, addr("10.0.0.2:6379")))
        );
        assert_eq!(compute(&inputs(Some((2, 4)), None, false)).master, None);
        // This node's own lease says nothing about another primary.
        assert_eq!(compute(&inputs(Some((2, 4)), Some(4), false)).master, None);
    }

    #[test]
    fn no_primary_no_master_and_every_member_is_a_replica() {
        let v = compute(&inputs(None, Some(1), true));
        assert_eq!(v.master, None);
        assert_eq!(v.epoch, 0);
        assert_eq!(v.replicas.iter().map(|r| r.node).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_new_primary_is_a_new_master_in_a_higher_epoch() {
        let before = compute(&inputs(Some((1, 4)), Some(4), false));
        let after = compute(&inputs(Some((2, 5)), None, true));
        assert_ne!(before.master, after.master);
        assert_eq!(after.master, Some((2, addr("10.0.0.2:6379"))));
        assert!(after.epoch > before.epoch);
        // The old master is a replica now; the new one is not.
        let replicas: Vec<_> = after.replicas.iter().map(|r| (r.node, r.healthy)).collect();
        assert_eq!(replicas, vec![(1, true), (3, false)]);
    }

    #[test]
    fn members_without_a_redis_address_are_not_listed() {
        let mut i = inputs(Some((2, 4)), None, true);
        i.redis_addrs.remove(&2);
        i.redis_addrs.insert(9, "10.0.0.9:6379".into()); // not a member
        let v = compute(&i);
        assert_eq!(v.master, None, "a primary without a Redis address cannot be named");
        assert_eq!(v.replicas.iter().map(|r| r.node).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn sentinels_sorted_and_parsed() {
        let v = compute(&inputs(None, None, false));
        assert_eq!(v.sentinels, vec![addr("10.0.0.2:26379"), addr("10.0.0.3:26379")]);
    }

    #[test]
    fn addresses() {
        assert_eq!(addr("[::1]:6379").host, "::1");
        assert_eq!(addr("[::1]:6379").to_string(), "[::1]:6379");
        assert_eq!(addr("redis-1:6380").to_string(), "redis-1:6380");
        assert_eq!(Addr::parse("nohost"), None);
        assert_eq!(Addr::parse(":6379"), None);
        assert_eq!(Addr::parse("h:99999"), None);
    }
}
