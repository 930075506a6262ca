//! Keel's own key-value store as a [`ManagedService`] (kind `"kv"`).
//!
//! The store's roles already have mechanisms, and this wrapper calls them rather than adding
//! new ones:
//!
//! | method | what it does |
//! |---|---|
//! | `run` | the replica apply worker and the view feeder ([`KvHost::replicate`]: the node's replication task; the store itself is opened at node start, so this attaches) |
//! | `health` | [`kv_health`]: master while this node may write (named primary with a valid lease), fenced while named primary without one, else a replica of the member its apply worker pulls from |
//! | `position` | the seq of the store's position (what the node reports to the coordinator for ranking) |
//! | `promote` | the new primary's catch-up ([`KvHost::catch_up`], what the node runs before asking for its first lease) |
//! | `follow` | publish the primary view naming the upstream member and epoch ([`crate::Repl::publish_view`]): the apply worker pulls from it |
//! | `fence` | drop this node's lease ([`KvHost::drop_lease`]): the lease check on every write refuses from that instant |
//! | `unfence` | renew the lease now ([`KvHost::renew_lease`]) |
//!
//! Which member is primary is the cluster's decision (Raft), not the store's: `promote` runs only
//! on the member the cluster state names primary, and `fence` lasts until the lease is renewed
//! (the node's renewal task asks again while the cluster state still names this node, as after any
//! lapse). The node does not call `promote`, `follow`, `fence` or `unfence` itself: its lease and
//! replication tasks run the same code at the moments the failover timing was measured with
//! (node/DESIGN.md, "Managed datastores").
//!
//! This crate knows no roles or lease: the node supplies them through [`KvHost`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ManagedService, ServiceError, ServiceHealth, ServiceRole, Upstream};
use crate::protocol::PULL_WAIT;
use crate::{NodeId, Position, PrimaryRef, Repl, ReplError, ReplicaStatus};

/// A replica's link to its source counts as up while its last answer is at most this old: two
/// long polls and some slack, the window in which [`Repl::lag_ms`] calls a caught-up replica current.
pub const LINK_FRESH: Duration = Duration::from_millis(PULL_WAIT.as_millis() as u64 * 2 + 500);

/// What the store needs from the node to act as a managed service: its roles and lease (which
/// this crate does not own) and its replication tasks. Implemented by `keel-node`.
pub trait KvHost: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// The node's replication state (store, replica status, published view).
    fn repl(&self) -> &Repl;
    /// The primary the cluster state names, and its epoch (whether or not it holds a lease).
    fn primary(&self) -> Option<PrimaryRef>;
    /// The epoch this node may write in right now: it is the named primary and holds a valid lease
    /// for that epoch (the lease check every write passes).
    fn write_epoch(&self) -> Option<u64>;
    /// Where `node` serves its change stream (its advertised peer address), if known.
    fn stream_addr(&self, node: NodeId) -> Option<String>;
    /// The replica apply worker and the feeder of the primary view, until `cancel`.
    fn replicate(&self, cancel: CancellationToken) -> impl Future<Output = ()> + Send;
    /// The new primary's catch-up for `epoch`: pull what it lacks from the most advanced member.
    fn catch_up(&self, epoch: u64) -> impl Future<Output = Result<(), ReplError>> + Send;
    /// Give up this node's lease at once.
    fn drop_lease(&self);
    /// Ask the coordinator for (a renewal of) this node's lease in `epoch` now, within a bounded time.
    fn renew_lease(&self, epoch: u64) -> impl Future<Output = ()> + Send;
}

/// The facts [`kv_health`] reads, taken at one moment.
#[derive(Debug, Clone, Default)]
pub struct KvSample {
    pub me: NodeId,
    /// This node's stream address.
    pub addr: String,
    pub primary: Option<PrimaryRef>,
    pub write_epoch: Option<u64>,
    pub position: Position,
    /// The apply worker's status.
    pub replica: ReplicaStatus,
    /// How long ago the apply worker last heard from its source.
    pub contact_age: Option<Duration>,
    /// [`Repl::lag_ms`].
    pub lag_ms: Option<u64>,
    /// The stream address of the member a replica follows (its source, else the named primary).
    pub following: Option<String>,
}

/// The store's health from its state: pure, so the mapping is tested as a table.
///
/// - `master`: this node may write (named primary, valid lease for that epoch).
/// - `fenced`: named primary without a valid lease: every write is refused (the lease check).
/// - `replica`: any other member, following the member its apply worker pulls from (the named
///   primary before the first pull). The link is up while the last answer is at most
///   [`LINK_FRESH`] old; `lag` is then the seconds since it was last caught up.
///
/// The store runs in the node's process, so it is always `healthy`; `last_error` is the apply
/// worker's.
pub fn kv_health(s: &KvSample) -> ServiceHealth {
    let named = s.primary.is_some_and(|p| p.node == s.me);
    let role = match (s.write_epoch, s.primary) {
        (Some(e), Some(p)) if named && p.epoch == e => ServiceRole::Master,
        _ if named => ServiceRole::Fenced,
        _ => ServiceRole::Replica,
    };
    let replica = role == ServiceRole::Replica;
    let link_up = replica && s.contact_age.is_some_and(|a| a <= LINK_FRESH);
    ServiceHealth {
        kind: "kv",
        addr: s.addr.clone(),
        role,
        offset: Some(s.position.seq),
        lag: s.lag_ms.filter(|_| link_up).map(|ms| ms / 1000),
        following: s.following.clone().filter(|_| replica),
        link_up,
        healthy: true,
        last_error: s.replica.last_error.clone(),
        restarts: 0,
    }
}

/// The built-in store of the node `H`.
pub struct KvService<H> {
    host: Arc<H>,
}

impl<H: KvHost> KvService<H> {
    pub fn new(host: Arc<H>) -> KvService<H> {
        KvService { host }
    }

    /// The facts of [`kv_health`], now.
    pub fn sample(&self) -> KvSample {
        let h = &self.host;
        let repl = h.repl();
        let me = h.node_id();
        let primary = h.primary();
        let replica = repl.replica_status();
        let following = replica
            .source
            .or(primary.map(|p| p.node))
            .filter(|n| *n != me)
            .and_then(|n| h.stream_addr(n));
        KvSample {
            me,
            addr: h.stream_addr(me).unwrap_or_default(),
            primary,
            write_epoch: h.write_epoch(),
            position: repl.position(),
            contact_age: replica.last_contact.map(|t| t.elapsed()),
            replica,
            lag_ms: repl.lag_ms(),
            following,
        }
    }

    /// The epoch in which the cluster state names this node primary.
    fn named_epoch(&self, what: &str) -> Result<u64, ServiceError> {
        let me = self.host.node_id();
        match self.host.primary() {
            Some(p) if p.node == me => Ok(p.epoch),
            other => Err(ServiceError::Role(format!(
                "{what}: the cluster state names {} primary, not this node ({me}); a switchover moves the role",
                other.map_or("no member".to_string(), |p| format!("node {}", p.node))
            ))),
        }
    }
}

impl<H: KvHost> ManagedService for KvService<H> {
    fn kind(&self) -> &'static str {
        "kv"
    }

    fn addr(&self) -> String {
        self.host.stream_addr(self.host.node_id()).unwrap_or_default()
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        self.host.replicate(cancel).await
    }

    async fn health(&self) -> ServiceHealth {
        kv_health(&self.sample())
    }

    async fn position(&self) -> Result<u64, ServiceError> {
        Ok(self.host.repl().position().seq)
    }

    async fn promote(&self) -> Result<(), ServiceError> {
        let epoch = self.named_epoch("promote")?;
        Ok(self.host.catch_up(epoch).await?)
    }

    async fn follow(&self, primary: &Upstream) -> Result<(), ServiceError> {
        if primary.node == self.host.node_id() {
            return Err(ServiceError::Role(
                "follow: a node does not follow its own store".into(),
            ));
        }
        let repl = self.host.repl();
        let mut view = repl.view();
        view.primary = Some(PrimaryRef {
            node: primary.node,
            epoch: primary.epoch,
        });
        view.newest_epoch = view.newest_epoch.max(primary.epoch);
        repl.publish_view(view);
        Ok(())
    }

    async fn fence(&self) -> Result<(), ServiceError> {
        self.host.drop_lease();
        Ok(())
    }

    async fn unfence(&self) -> Result<(), ServiceError> {
        let epoch = self.named_epoch("unfence")?;
        self.host.renew_lease(epoch).await;
        match self.host.write_epoch() {
            Some(e) if e == epoch => Ok(()),
            _ => Err(ServiceError::Role(format!(
                "unfence: the coordinator did not grant a lease for epoch {epoch}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{DataStore, WriteOp};

    fn at(node: NodeId, epoch: u64) -> Option<PrimaryRef> {
        Some(PrimaryRef { node, epoch })
    }

    fn sample(primary: Option<PrimaryRef>, write_epoch: Option<u64>) -> KvSample {
        KvSample {
            me: 2,
            addr: "10.0.0.2:7001".into(),
            primary,
            write_epoch,
            position: Position::new(3, 41),
            following: Some("10.0.0.1:7001".into()),
            ..Default::default()
        }
    }

    #[test]
    fn role_follows_the_named_primary_and_the_lease() {
        let h = kv_health(&sample(at(2, 3), Some(3)));
        assert_eq!((h.role, h.offset, h.kind), (ServiceRole::Master, Some(41), "kv"));
        assert_eq!((h.following, h.link_up, h.lag), (None, false, None));
        // Named primary without a lease, or with one of an older epoch: the lease check refuses writes.
        assert_eq!(kv_health(&sample(at(2, 3), None)).role, ServiceRole::Fenced);
        assert_eq!(kv_health(&sample(at(2, 4), Some(3))).role, ServiceRole::Fenced);
        // Another member is primary (a lease left over from an old epoch does not make a master).
        let r = kv_health(&sample(at(1, 4), Some(3)));
        assert_eq!(r.role, ServiceRole::Replica);
        assert_eq!(r.following.as_deref(), Some("10.0.0.1:7001"));
        // No primary yet: a replica of nobody.
        let mut none = sample(None, None);
        none.following = None;
        let r = kv_health(&none);
        assert_eq!((r.role, r.following, r.link_up), (ServiceRole::Replica, None, false));
        assert!(r.healthy);
    }

    #[test]
    fn a_replicas_link_and_lag_come_from_its_last_contact() {
        let mut s = sample(at(1, 3), None);
        s.contact_age = Some(Duration::from_millis(100));
        s.lag_ms = Some(2500);
        s.replica.last_error = Some("pull from node 1: timed out".into());
        let h = kv_health(&s);
        assert!(h.link_up);
        assert_eq!(h.lag, Some(2));
        assert_eq!(h.last_error.as_deref(), Some("pull from node 1: timed out"));
        // Silent for longer than the window: link down, no lag figure.
        s.contact_age = Some(LINK_FRESH + Duration::from_millis(1));
        let h = kv_health(&s);
        assert_eq!((h.link_up, h.lag), (false, None));
        // Never heard from its source.
        s.contact_age = None;
        assert!(!kv_health(&s).link_up);
    }

    /// A node as the store sees it: roles and lease in memory, the catch-ups and renewals it was asked for.
    struct Fake {
        repl: Repl,
        primary: Mutex<Option<PrimaryRef>>,
        lease: Mutex<Option<u64>>,
        /// Whether the coordinator grants a renewal.
        grants: bool,
        caught_up: Mutex<Vec<u64>>,
    }

    impl KvHost for Fake {
        fn node_id(&self) -> NodeId {
            2
        }
        fn repl(&self) -> &Repl {
            &self.repl
        }
        fn primary(&self) -> Option<PrimaryRef> {
            *self.primary.lock().unwrap()
        }
        fn write_epoch(&self) -> Option<u64> {
            let p = self.primary()?;
            let lease = *self.lease.lock().unwrap();
            (p.node == 2 && lease == Some(p.epoch)).then_some(p.epoch)
        }
        fn stream_addr(&self, node: NodeId) -> Option<String> {
            (node <= 3).then(|| format!("127.0.0.{node}:7001"))
        }
        async fn replicate(&self, cancel: CancellationToken) {
            cancel.cancelled().await
        }
        async fn catch_up(&self, epoch: u64) -> Result<(), ReplError> {
            self.caught_up.lock().unwrap().push(epoch);
            Ok(())
        }
        fn drop_lease(&self) {
            *self.lease.lock().unwrap() = None;
        }
        async fn renew_lease(&self, epoch: u64) {
            if self.grants {
                *self.lease.lock().unwrap() = Some(epoch);
            }
        }
    }

    fn service(grants: bool) -> (tempfile::TempDir, KvService<Fake>) {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(&dir.path().join("data.redb")).unwrap();
        let host = Fake {
            repl: Repl::new(store),
            primary: Mutex::new(None),
            lease: Mutex::new(None),
            grants,
            caught_up: Mutex::new(Vec::new()),
        };
        (dir, KvService::new(Arc::new(host)))
    }

    #[tokio::test]
    async fn the_service_maps_onto_the_stores_state_and_the_lease() {
        let (_dir, s) = service(true);
        assert_eq!((s.kind(), s.addr()), ("kv", "127.0.0.2:7001".to_string()));
        for i in 0..3 {
            let op = WriteOp::Put {
                key: format!("k{i}"),
                value: b"v".to_vec(),
            };
            s.host.repl.store.write(1, op).await.unwrap();
        }
        assert_eq!(s.position().await.unwrap(), 3);
        // Not named primary: promote and unfence refuse, nothing was caught up.
        assert!(matches!(s.promote().await, Err(ServiceError::Role(_))));
        assert!(matches!(s.unfence().await, Err(ServiceError::Role(_))));
        assert!(s.host.caught_up.lock().unwrap().is_empty());

        *s.host.primary.lock().unwrap() = at(2, 5);
        s.promote().await.unwrap();
        assert_eq!(*s.host.caught_up.lock().unwrap(), vec![5]);
        assert_eq!(s.health().await.role, ServiceRole::Fenced, "promoted, no lease yet");
        s.unfence().await.unwrap();
        let h = s.health().await;
        assert_eq!((h.role, h.offset), (ServiceRole::Master, Some(3)));
        s.fence().await.unwrap();
        assert_eq!(s.health().await.role, ServiceRole::Fenced);
        assert_eq!(s.host.write_epoch(), None, "the lease check refuses writes");

        // Follow: the view the apply worker reads names the upstream.
        let up = Upstream {
            node: 3,
            epoch: 6,
            addr: "127.0.0.3:7001".into(),
        };
        s.follow(&up).await.unwrap();
        let v = s.host.repl.view();
        assert_eq!((v.primary, v.newest_epoch), (at(3, 6), 6));
        *s.host.primary.lock().unwrap() = at(3, 6);
        let h = s.health().await;
        assert_eq!(
            (h.role, h.following.as_deref()),
            (ServiceRole::Replica, Some("127.0.0.3:7001"))
        );
        let me = Upstream { node: 2, ..up };
        assert!(matches!(s.follow(&me).await, Err(ServiceError::Role(_))));
    }

    #[tokio::test]
    async fn unfence_fails_when_the_coordinator_grants_no_lease() {
        let (_dir, s) = service(false);
        *s.host.primary.lock().unwrap() = at(2, 1);
        assert!(matches!(s.unfence().await, Err(ServiceError::Role(_))));
        assert_eq!(s.health().await.role, ServiceRole::Fenced);
    }
}
