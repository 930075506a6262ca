//! Managed datastores: a datastore Keel runs and keeps in step with the cluster's roles (issue 19).
//! A [`ManagedService`] is started or attached, sampled ([`ServiceHealth`]), ranked by its
//! [`ManagedService::position`], and promoted, pointed at the primary's ([`Upstream`]), fenced and
//! unfenced. The failover code only sees [`ServiceHealth`] and the position, so a third datastore
//! (PostgreSQL: start = `pg_ctl start`, follow = `primary_conninfo` + standby.signal naming
//! [`Upstream::addr`], promote = `pg_promote()`, fence = `default_transaction_read_only` +
//! terminating sessions) fits the same trait without touching it.
//!
//! Implementations:
//! - [`redis::RedisService`]: a supervised `redis-server`. The node's duty loop
//!   (`keel-node`, `cluster/service/duty.rs`, generic over the node-side `DrivenService` whose
//!   `Service` is a `ManagedService`) calls every method from the cluster state and the lease; a
//!   third datastore implements this trait here and `DrivenService` in the node.
//! - [`kv::KvService`]: Keel's own key-value store. Its roles are the replication protocol and the
//!   lease, which already run at the right moments in the node (the view feeder, the new primary's
//!   catch-up before its first lease, the lease check on every write), so the node does not drive
//!   it through the duty loop (that would put a 100 ms tick between a state change and the
//!   store's reaction). Each method does exactly what that existing mechanism does, by calling
//!   it: promote = the catch-up step, follow = publish the view naming the primary, fence = drop
//!   the lease, unfence = renew it. The node reads its health and position through the trait for
//!   `/v1/status` (`datastore`) and for the coordinator's own entry in the failover ranking.

pub mod kv;
pub mod redis;
pub mod resp;

use std::future::Future;

use serde::Serialize;

/// What a managed service is doing, as `/v1/status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceRole {
    /// Takes writes.
    Master,
    /// Follows another node's service.
    Replica,
    /// Not running, or not answering.
    Down,
    /// A master that refuses writes: Keel fenced it (its lease lapsed, or it is not the primary), or
    /// fewer replicas acknowledge it than its `min-replicas-to-write` asks for.
    Fenced,
}

/// One health sample of a managed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceHealth {
    /// `"redis"` or `"kv"`.
    pub kind: &'static str,
    /// Where clients reach it (`host:port`; the built-in store: where other nodes reach its change
    /// stream, the node's peer address).
    pub addr: String,
    pub role: ServiceRole,
    /// Replication offset (Redis: `master_repl_offset` on a master, `slave_repl_offset` on a replica;
    /// the built-in store: the seq of its position).
    pub offset: Option<u64>,
    /// On a replica: seconds since it last heard from its master (Redis `master_last_io_seconds_ago`;
    /// the built-in store: seconds since it was last caught up, 0 while it is); `None` on a master or
    /// when the link is down.
    pub lag: Option<u64>,
    /// On a replica: the master it follows (`host:port`).
    pub following: Option<String>,
    /// On a replica: is its link to the master up?
    pub link_up: bool,
    /// Up and answering.
    pub healthy: bool,
    pub last_error: Option<String>,
    /// How often the supervisor restarted the process after it died.
    pub restarts: u64,
}

impl ServiceHealth {
    /// A service of `kind` at `addr` that is down (or not sampled yet): no role, offset or link.
    pub fn down(kind: &'static str, addr: String, last_error: Option<String>, restarts: u64) -> ServiceHealth {
        ServiceHealth {
            kind,
            addr,
            role: ServiceRole::Down,
            offset: None,
            lag: None,
            following: None,
            link_up: false,
            healthy: false,
            last_error,
            restarts,
        }
    }
}

/// Why a call to a managed service failed. Messages are lowercase and end up in `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("io: {0}")]
    Io(#[source] std::io::Error),
    #[error("{command}: no answer within {timeout_ms} ms")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("{command} refused: {message}")]
    Command { command: String, message: String },
    #[error("malformed answer: {0}")]
    Protocol(String),
    #[error("start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The built-in store's replication step failed (e.g. the new primary's catch-up).
    #[error("replication: {0}")]
    Replication(#[from] crate::ReplError),
    /// The call does not fit the service's role now (e.g. promote on a node the cluster state does
    /// not name primary).
    #[error("{0}")]
    Role(String),
    #[error("write config {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The primary's service, for [`ManagedService::follow`]: the member, its epoch, and where its
/// service is reached. Each implementation uses what its replication names the master by: Redis
/// and PostgreSQL the address, the built-in store the member and epoch (its replication resolves
/// the member's peer address itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub node: crate::NodeId,
    pub epoch: u64,
    /// `host:port` of the primary's service.
    pub addr: String,
}

/// A datastore Keel runs and keeps in step with the cluster's roles. Every call is bounded in time.
pub trait ManagedService: Send + Sync {
    /// Short name (`"redis"`, `"kv"`).
    fn kind(&self) -> &'static str;
    /// Where clients and other nodes' services reach this one.
    fn addr(&self) -> String;
    /// Start the service (or attach to the one already running) and supervise it until `cancel`,
    /// then stop it. Restarts a service that died.
    fn run(self: std::sync::Arc<Self>, cancel: tokio_util::sync::CancellationToken) -> impl Future<Output = ()> + Send;
    /// One health sample (never fails: a service that does not answer is [`ServiceRole::Down`]).
    fn health(&self) -> impl Future<Output = ServiceHealth> + Send;
    /// Replication position, for ranking failover candidates.
    fn position(&self) -> impl Future<Output = Result<u64, ServiceError>> + Send;
    /// Become the writable master (stop following).
    fn promote(&self) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// Follow the primary's service.
    fn follow(&self, primary: &Upstream) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// Refuse writes from now on.
    fn fence(&self) -> impl Future<Output = Result<(), ServiceError>> + Send;
    /// Take writes again (only ever called on the lease holder).
    fn unfence(&self) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

/// The fields of Redis `INFO replication` that Keel uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationInfo {
    /// `master` or `slave`.
    pub role: String,
    pub master_repl_offset: Option<u64>,
    pub slave_repl_offset: Option<u64>,
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    pub master_link_up: bool,
    pub master_last_io_seconds_ago: Option<u64>,
    pub connected_slaves: u64,
    /// The replication history this server's offsets belong to.
    pub master_replid: Option<String>,
    /// The history it continued from when it was promoted (Redis keeps one step of it).
    pub master_replid2: Option<String>,
    /// The first offset of `master_replid` that is not shared with `master_replid2`: the history is
    /// common up to `second_repl_offset - 1` (`-1` when there is no second id).
    pub second_repl_offset: Option<u64>,
    /// On a master with `min-replicas-to-write` set: the replicas that count towards it now
    /// (online, acknowledged within `min-replicas-max-lag`).
    pub good_replicas: Option<u64>,
}

impl ReplicationInfo {
    /// Parse the text of `INFO replication` (`key:value` lines, `#` comments).
    pub fn parse(text: &str) -> ReplicationInfo {
        let mut r = ReplicationInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "role" => r.role = v.to_string(),
                "master_repl_offset" => r.master_repl_offset = v.parse().ok(),
                "slave_repl_offset" => r.slave_repl_offset = v.parse().ok(),
                "master_host" => r.master_host = Some(v.to_string()),
                "master_port" => r.master_port = v.parse().ok(),
                "master_link_status" => r.master_link_up = v == "up",
                // -1 before the first contact.
                "master_last_io_seconds_ago" => r.master_last_io_seconds_ago = v.parse().ok(),
                "connected_slaves" => r.connected_slaves = v.parse().unwrap_or(0),
                "master_replid" => r.master_replid = Some(v.to_string()),
                "master_replid2" => r.master_replid2 = Some(v.to_string()),
                // -1 without a second id.
                "second_repl_offset" => r.second_repl_offset = v.parse().ok(),
                "min_slaves_good_slaves" => r.good_replicas = v.parse().ok(),
                _ => {}
            }
        }
        r
    }

    pub fn is_master(&self) -> bool {
        self.role == "master"
    }

    /// The master a replica follows, as `host:port`.
    pub fn following(&self) -> Option<String> {
        match (&self.master_host, self.master_port) {
            (Some(h), Some(p)) if !self.is_master() => Some(format!("{h}:{p}")),
            _ => None,
        }
    }

    /// The replication offset this server has.
    pub fn offset(&self) -> Option<u64> {
        if self.is_master() {
            self.master_repl_offset
        } else {
            self.slave_repl_offset.or(self.master_repl_offset)
        }
    }
}

/// What a master that is demoted to a replica of `new` loses: bytes of its replication stream that
/// `new` does not have (they are dropped by the resync). See [`lost_on_demotion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "bytes")]
pub enum Loss {
    /// `new` has everything it had.
    None,
    /// This many bytes of its replication stream (commands, not a count of writes) are not in `new`.
    Bytes(u64),
    /// The two histories are not related in a way Redis records (the new master was not promoted
    /// from this one's history, or more than one failover happened meanwhile): the loss cannot be
    /// computed. Up to `offset` bytes.
    Unknown(u64),
}

/// What a server at `old` (its `INFO replication`, taken once it was fenced, just before it follows
/// `new`) loses by following `new` (the new master's `INFO replication`). Redis offsets count bytes
/// of the replication stream; a promoted replica keeps its old history id as `master_replid2`, valid
/// up to `second_repl_offset - 1`, so the old master's bytes past that point were never on the new
/// master and are dropped by the resync.
pub fn lost_on_demotion(old: &ReplicationInfo, new: &ReplicationInfo) -> Loss {
    let offset = old.offset().unwrap_or(0);
    if offset == 0 {
        return Loss::None;
    }
    let Some(id) = old.master_replid.as_deref() else {
        return Loss::Unknown(offset);
    };
    let have = if new.master_replid.as_deref() == Some(id) {
        // Same history (no promotion since): the new master has what its own offset says.
        new.offset()
    } else if new.master_replid2.as_deref() == Some(id) {
        new.second_repl_offset.map(|s| s.saturating_sub(1))
    } else {
        None
    };
    match have {
        Some(h) if offset <= h => Loss::None,
        Some(h) => Loss::Bytes(offset - h),
        None => Loss::Unknown(offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=6381,state=online,offset=1234,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:8c1f\r\nmaster_replid2:77aa\r\nmaster_repl_offset:1234\r\nsecond_repl_offset:1001\r\nmin_slaves_good_slaves:2\r\n";
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:6380\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:1\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:1200\r\nslave_repl_offset:1200\r\nconnected_slaves:0\r\nmaster_repl_offset:1200\r\n";

    #[test]
    fn parses_a_masters_info() {
        let i = ReplicationInfo::parse(MASTER);
        assert!(i.is_master());
        assert_eq!(i.offset(), Some(1234));
        assert_eq!(i.connected_slaves, 2);
        assert_eq!(i.following(), None);
        assert_eq!(i.master_replid.as_deref(), Some("8c1f"));
        assert_eq!(i.master_replid2.as_deref(), Some("77aa"));
        assert_eq!(i.second_repl_offset, Some(1001));
        assert_eq!(i.good_replicas, Some(2));
    }

    #[test]
    fn parses_a_replicas_info() {
        let i = ReplicationInfo::parse(REPLICA);
        assert!(!i.is_master());
        assert_eq!(i.offset(), Some(1200));
        assert_eq!(i.following().as_deref(), Some("127.0.0.1:6380"));
        assert!(i.master_link_up);
        assert_eq!(i.master_last_io_seconds_ago, Some(1));
    }

    fn at(replid: &str, offset: u64) -> ReplicationInfo {
        ReplicationInfo {
            role: "master".into(),
            master_repl_offset: Some(offset),
            master_replid: Some(replid.into()),
            ..Default::default()
        }
    }

    fn promoted(replid: &str, offset: u64, replid2: &str, second: u64) -> ReplicationInfo {
        ReplicationInfo {
            master_replid2: Some(replid2.into()),
            second_repl_offset: Some(second),
            ..at(replid, offset)
        }
    }

    #[test]
    fn loss_on_demotion_counts_the_bytes_past_the_shared_history() {
        // The new master was promoted at offset 1000 (second_repl_offset 1001) from history A.
        let new = promoted("B", 1500, "A", 1001);
        assert_eq!(lost_on_demotion(&at("A", 1000), &new), Loss::None);
        assert_eq!(lost_on_demotion(&at("A", 900), &new), Loss::None);
        assert_eq!(lost_on_demotion(&at("A", 1234), &new), Loss::Bytes(234));
        // Unrelated history: unknown, bounded by what it had.
        assert_eq!(lost_on_demotion(&at("C", 50), &new), Loss::Unknown(50));
        // An empty server loses nothing, whatever its id.
        assert_eq!(lost_on_demotion(&at("C", 0), &new), Loss::None);
        // Same history, no promotion in between: compared with the new master's own offset.
        assert_eq!(lost_on_demotion(&at("B", 1600), &new), Loss::Bytes(100));
        assert_eq!(lost_on_demotion(&at("B", 1400), &new), Loss::None);
        // A new master without a second id (-1 does not parse) cannot vouch for history A.
        let fresh = ReplicationInfo::parse(
            "role:master\nmaster_replid:B\nmaster_replid2:0000\nsecond_repl_offset:-1\nmaster_repl_offset:10\n",
        );
        assert_eq!(fresh.second_repl_offset, None);
        assert_eq!(lost_on_demotion(&at("A", 5), &fresh), Loss::Unknown(5));
    }

    #[test]
    fn a_replica_before_first_contact_has_no_lag() {
        let i = ReplicationInfo::parse(
            "role:slave\nmaster_host:127.0.0.1\nmaster_port:1\nmaster_link_status:down\nmaster_last_io_seconds_ago:-1\n",
        );
        assert!(!i.master_link_up);
        assert_eq!(i.master_last_io_seconds_ago, None);
        assert_eq!(i.offset(), None);
    }
}
