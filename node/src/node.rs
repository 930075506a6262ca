//! The node: opens the data dir (lock file, redb stores), starts openraft, serves the HTTP
//! API and the peer port, bootstraps or joins the cluster, and runs the small background
//! duties every node has (announce its API address, probe peers, set the cluster id).
//!
//! `Node::start(config) -> NodeHandle` is the whole life cycle: tests run nodes in-process
//! through it, `keel serve` calls it and waits for a signal.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::network::{PeerClient, PeerHealth, PeerNetwork};
use keel_raft::state::Request;
use keel_raft::store::StateView;
use keel_raft::{BasicNode, NodeId, Raft};
use openraft::error::{InitializeError, RaftError};
use openraft::{RaftMetrics, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::{self, AdminOp};
use crate::config::Config;
use crate::tls::ListenerKind;

/// A peer counts as reachable when a request to it succeeded this recently.
pub const REACHABLE_WITHIN: Duration = Duration::from_millis(2000);
/// Longest a role-change hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often followers probe peers they have not heard from (the leader's heartbeats already do).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("create data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(
        "data dir {path} is in use by another keel process (lock file {path}/LOCK is held); stop it first or pick another --data-dir"
    )]
    Locked { path: String },
    #[error("lock data dir {path}: {source}")]
    Lock { path: String, source: std::io::Error },
    #[error("open stores: {0}")]
    Store(#[from] keel_raft::store::StoreError),
    #[error("bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft config: {0}")]
    RaftConfig(String),
    #[error("start raft: {0}")]
    Raft(String),
    #[error("http client: {0}")]
    Client(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("datastore: {0}")]
    Data(String),
    #[error("git sync: {0}")]
    GitSync(String),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Shared state of a running node, handed to every request handler and background task.
pub struct Node {
    pub id: NodeId,
    pub config: Config,
    pub raft: Raft,
    pub state: watch::Receiver<Arc<StateView>>,
    pub peers: PeerClient,
    pub started: Instant,
    pub cancel: CancellationToken,
    /// Local address the API listener is bound to (useful with port 0 in tests).
    pub api_bound: SocketAddr,
    pub peer_bound: SocketAddr,
    /// Set when the node stopped itself because it cannot go on (e.g. refused to join).
    pub fatal: std::sync::Mutex<Option<String>>,
    /// This node's write lease as primary.
    pub lease: crate::primary::Lease,
    /// Coordinator memory (used while this node is the Raft leader).
    pub coordinator: crate::primary::Coordinator,
    /// Runs the role-change hook.
    pub hook: crate::hook::HookRunner,
    /// The datastore and its replication state.
    pub repl: crate::repl::Repl,
    /// HTTP client for API-to-API calls (forwarded writes).
    pub http: reqwest::Client,
    /// The Git Sync agent, when `--gitsync-repo` is set.
    pub gitsync: Option<Arc<keel_gitsync::GitSync>>,
    /// Certificates and TLS settings, when `--tls-cert` is set.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Node {
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn view(&self) -> Arc<StateView> {
        self.state.borrow().clone()
    }

    pub fn health(&self) -> &PeerHealth {
        self.peers.health()
    }

    /// Reachability of a member from this node's point of view.
    pub fn reachable(&self, id: NodeId) -> bool {
        id == self.id || self.health().reachable(id, REACHABLE_WITHIN)
    }

    /// Ids of voters in the current membership config.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics().membership_config.membership().voter_ids().collect()
    }

    /// Peer address of a member, from the Raft membership config.
    pub fn peer_addr_of(&self, id: NodeId) -> Option<String> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// After start, this node neither votes nor campaigns for this long (raft/DESIGN.md).
    pub fn vote_quiet_period(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_timeout_max_ms)
    }

    /// Still inside [`Node::vote_quiet_period`].
    pub fn in_vote_quiet_period(&self) -> bool {
        self.started.elapsed() < self.vote_quiet_period()
    }

    /// Stop the node because it cannot go on; `keel serve` then exits non-zero with `reason`.
    pub fn fail(&self, reason: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.cancel.cancel();
    }

    /// Base URL of another member's API from its advertised `host:port` (https when TLS is on).
    pub fn api_url(&self, api_addr: &str) -> String {
        format!("{}://{api_addr}", crate::tls::scheme(self.tls.as_ref()))
    }

    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A member that answered "another cluster", if any (shown in status and readyz).
    pub fn cluster_mismatch(&self) -> Option<(NodeId, String)> {
        self.health()
            .snapshot()
            .into_iter()
            .find_map(|(id, s)| s.cluster_mismatch.map(|m| (id, m)))
    }
}

/// A running node. Dropping it does not stop it: call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub node: Arc<Node>,
    api_task: JoinHandle<()>,
    peer_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Held for the life of the process: a second keel on the same data dir is refused.
    _lock: File,
}

impl NodeHandle {
    pub fn api_addr(&self) -> SocketAddr {
        self.node.api_bound
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.node.peer_bound
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, stop Raft (flushing its
    /// stores), then return.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.node.cancel.cancel();
        for t in self.background {
            t.abort();
        }
        let _ = self.api_task.await;
        if let Err(e) = self.node.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        let _ = self.peer_task.await;
        // Leave every entry in data.redb and the datastore journal empty, so the data dir
        // needs no journal replay (and a release without the journal reads all of it).
        if let Err(e) = self.node.repl.store.checkpoint() {
            warn!(error = %e, "datastore checkpoint at shutdown; the journal keeps the applied entries");
        }
        info!("stopped");
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    let path = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: path.clone(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|source| StartError::Lock {
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(StartError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => return Err(StartError::Lock { path, source }),
    }
    // Informational: which process holds the lock.
    let _ = f.set_len(0).and_then(|_| writeln!(f, "{}", std::process::id()));
    Ok(f)
}

fn raft_config(config: &Config) -> Result<openraft::Config, StartError> {
    let c = openraft::Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        // Cluster state changes rarely; snapshot and purge every 1000 entries, keep 200 for
        // followers that are slightly behind.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        // No campaigning until election_timeout_max after start: a restarted node must not
        // help elect a coordinator while an old lease may still run (raft/DESIGN.md, step 3).
        enable_elect: false,
        ..Default::default()
    };
    c.validate().map_err(|e| StartError::RaftConfig(e.to_string()))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Node {
    /// Start a node: everything it needs is in `config` and its data dir.
    pub async fn start(config: Config) -> Result<NodeHandle, StartError> {
        let lock = lock_data_dir(&config.data_dir)?;
        // A bad certificate file stops the start here, before anything listens.
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::Tls::load(files)?),
            None => None,
        };
        let (log_store, sm_store) = keel_raft::store::open(&config.data_dir)?;
        let state = sm_store.subscribe();

        // Bind both listeners before starting Raft, so a port clash fails fast and cleanly.
        let api_listener = bind("api", config.api_addr).await?;
        let peer_listener = bind("peer", config.peer_addr).await?;
        let api_bound = api_listener.local_addr().map_err(|source| StartError::Bind {
            what: "api",
            addr: config.api_addr,
            source,
        })?;
        let peer_bound = peer_listener.local_addr().map_err(|source| StartError::Bind {
            what: "peer",
            addr: config.peer_addr,
            source,
        })?;

        let peers = PeerClient::with_transport(
            config.id,
            config.cluster_token.as_ref().map(|s| s.expose().to_string()),
            state.clone(),
            PeerHealth::default(),
            crate::tls::peer_transport(tls.as_ref())?,
        )
        .map_err(|e| StartError::Client(e.to_string()))?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            PeerNetwork::new(peers.clone()),
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let data_path = config.data_dir.join("data.redb");
        let store = keel_replication::DataStore::open_with_format(&data_path, config.replication.datastore_format)
            .map_err(|e| StartError::Data(format!("open {}: {e}", data_path.display())))?;
        let repl = crate::repl::Repl::new(store);
        let http = crate::tls::client_builder(tls.as_ref())
            .connect_timeout(keel_raft::network::CONNECT_TIMEOUT)
            .build()
            .map_err(|e| StartError::Client(e.to_string()))?;
        let gitsync = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::gitsync_api::open(&config))
                .await
                .map_err(|e| StartError::GitSync(e.to_string()))?
                .map_err(StartError::GitSync)?
        };
        let cancel = CancellationToken::new();
        let hook =
            crate::hook::HookRunner::start(config.role_change_hook.clone(), config.id, HOOK_TIMEOUT, cancel.clone());
        let node = Arc::new(Node {
            id: config.id,
            config,
            raft,
            state,
            peers,
            started: Instant::now(),
            cancel,
            api_bound,
            peer_bound,
            fatal: std::sync::Mutex::new(None),
            lease: Default::default(),
            coordinator: Default::default(),
            hook,
            repl,
            http,
            gitsync,
            tls,
        });

        let peer_task = tokio::spawn(serve(
            peer_listener,
            crate::peer::router(node.clone()),
            node.cancel.clone(),
            node.tls.clone(),
            ListenerKind::Peer,
        ));
        let api_task = tokio::spawn(serve(
            api_listener,
            crate::api::router(node.clone()),
            node.cancel.clone(),
            node.tls.clone(),
            ListenerKind::Api,
        ));
        info!(
            id = node.id,
            api = %api_bound,
            peer = %peer_bound,
            data_dir = %node.config.data_dir.display(),
            tls = match &node.tls {
                None => "off",
                Some(t) if t.mutual() => "on, mutual between peers",
                Some(_) => "on",
            },
            "node started"
        );

        if !node.config.peers.is_empty() {
            bootstrap(&node).await?;
        }
        {
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(node.vote_quiet_period()).await;
                node.raft.runtime_config().elect(true);
                debug!("elections enabled");
            });
        }
        let mut background = vec![
            tokio::spawn(announce_task(node.clone())),
            tokio::spawn(probe_task(node.clone())),
            tokio::spawn(leader_duties_task(node.clone())),
            tokio::spawn(crate::primary::renew_task(node.clone())),
            tokio::spawn(crate::primary::lease_expiry_task(node.clone())),
            tokio::spawn(crate::primary::controller_task(node.clone())),
            tokio::spawn(role_task(node.clone())),
            tokio::spawn(crate::repl::apply_task(node.clone())),
            tokio::spawn(crate::repl::report_task(node.clone())),
            tokio::spawn(crate::repl::retention_task(node.clone())),
            tokio::spawn(crate::tls::reload_task(node.tls.clone(), node.cancel.clone())),
        ];
        if let Some(g) = node.gitsync.clone() {
            background.push(tokio::spawn(g.clone().run(node.cancel.clone())));
            if let Some(cmd) = node.config.gitsync.as_ref().and_then(|c| c.hook.clone()) {
                background.push(tokio::spawn(crate::gitsync_api::sync_hook_task(node.clone(), g, cmd)));
            }
        }
        if let Some(join) = node.config.join.clone() {
            background.push(tokio::spawn(crate::join::join_task(node.clone(), join)));
        }

        Ok(NodeHandle {
            node,
            api_task,
            peer_task,
            background,
            _lock: lock,
        })
    }
}

/// Serve `router` on `listener` (over TLS when `tls` is set) until `cancel`, then finish in-flight
/// requests (axum's graceful shutdown, the same on both paths).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
    tls: Option<Arc<crate::tls::Tls>>,
    kind: ListenerKind,
) {
    use axum::serve::ListenerExt as _;
    let what = match kind {
        ListenerKind::Api => "api",
        ListenerKind::Peer => "peer",
    };
    let shutdown = async move { cancel.cancelled().await };
    let res = match tls {
        None => {
            // Small answers go out at once (no Nagle delay behind an unacknowledged segment), as
            // on the TLS path (`TlsListener::accept`) and the peer client (`PeerClient::new`).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            // `tap_io` (a no-op here) is what gives a custom listener axum's `ConnectInfo<SocketAddr>`.
            let listener = crate::tls::TlsListener::new(listener, tls, kind).tap_io(|_| {});
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = res {
        warn!(error = %e, listener = what, "server stopped with an error");
    }
}

/// Initialise the Raft group from `--peers`. Every node started with the same list calls
/// this; openraft's initial membership entry is identical on all of them (log id 0), so
/// calling it on several nodes, in any order, forms one cluster. A node that already has
/// state gets `NotAllowed`, which is how restarts never re-initialise.
async fn bootstrap(node: &Node) -> Result<(), StartError> {
    if node
        .raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Bootstrap(e.to_string()))?
    {
        debug!("raft state already initialised; not bootstrapping again");
        return Ok(());
    }
    let members: BTreeMap<NodeId, BasicNode> = node
        .config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    match node.raft.initialize(members).await {
        Ok(()) => info!(peers = ?node.config.peers, "bootstrapped a new cluster state from --peers"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            debug!("raft state already initialised; not bootstrapping again")
        }
        Err(e) => return Err(StartError::Bootstrap(e.to_string())),
    }
    Ok(())
}

/// Record this node's advertised API address in the cluster state whenever it differs (first
/// start, or restart with a new address).
async fn announce_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut state = node.state.clone();
    loop {
        let want = node.config.advertise_api_addr.clone();
        let is_member = node
            .metrics()
            .membership_config
            .membership()
            .get_node(&node.id)
            .is_some();
        let current = node.view().state.members.get(&node.id).map(|m| m.api_addr.clone());
        let leader = node.metrics().current_leader;
        if is_member && leader.is_some() && current.as_deref() != Some(want.as_str()) {
            let op = AdminOp::Write(Request::UpsertMember {
                id: node.id,
                api_addr: Some(want.clone()),
                tags: None,
            });
            match admin::submit(&node, op, Duration::from_secs(3)).await {
                Ok(_) => info!(api_addr = %want, "announced API address"),
                Err(e) => debug!(error = %e, "announce API address (will retry)"),
            }
            tokio::select! {
                _ = node.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            continue;
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Followers hear from the leader but not from each other: ping members not heard from
/// recently, so every node can say which members are reachable.
async fn probe_task(node: Arc<Node>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = node.metrics();
        let mut set = tokio::task::JoinSet::new();
        for (id, n) in m.membership_config.membership().nodes() {
            if *id == node.id || node.health().reachable(*id, PROBE_INTERVAL) {
                continue;
            }
            let (id, addr, client) = (*id, n.addr.clone(), node.peers.clone());
            set.spawn(async move {
                let r: Result<crate::peer::Ping, _> =
                    client.call(Some(id), &addr, "/peer/ping", &(), PROBE_INTERVAL).await;
                if let Err(e) = r {
                    debug!(peer = id, error = %e, "probe failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Work only the leader does: give a new cluster its id.
async fn leader_duties_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        let m = metrics.borrow_and_update().clone();
        if m.state == ServerState::Leader && node.view().state.cluster_id.is_none() {
            // A new cluster: seed the cluster-wide replication settings from this node's
            // `--replication-mode` / `--min-acks` (later changes go through PATCH /v1/config).
            let mut cfg = node.view().state.config.clone();
            cfg.replication_mode = match node.config.replication.mode {
                crate::config::ReplicationMode::Async => keel_raft::state::ReplicationMode::Async,
                crate::config::ReplicationMode::Sync => keel_raft::state::ReplicationMode::Sync,
            };
            cfg.min_acks = node.config.replication.min_acks;
            if cfg != node.view().state.config {
                if let Err(e) = admin::submit(
                    &node,
                    AdminOp::Write(Request::SetConfig { config: cfg }),
                    Duration::from_secs(3),
                )
                .await
                {
                    debug!(error = %e, "seed replication settings (will retry)");
                    continue;
                }
            }
            let id = random_cluster_id();
            let op = AdminOp::Write(Request::InitClusterId { cluster_id: id });
            match admin::submit(&node, op, Duration::from_secs(3)).await {
                Ok(_) => info!(cluster_id = %crate::util::opt(node.view().state.cluster_id.clone()), "cluster id set"),
                Err(e) => debug!(error = %e, "set cluster id (will retry)"),
            }
            continue;
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

fn random_cluster_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

/// The role the hook and the logs talk about: `primary` only while holding a lease.
pub fn hook_role(node: &Node) -> &'static str {
    match crate::api::role(node) {
        "primary" => "primary",
        "learner" => "learner",
        _ => "replica",
    }
}

/// Track role and leader changes: log them, count them, run the role-change hook.
async fn role_task(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut state = node.state.clone();
    let mut lease = node.lease.subscribe();
    let mut role = hook_role(&node);
    let mut leader = node.metrics().current_leader;
    info!(role, "initial role");
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
            r = lease.changed() => if r.is_err() { return },
        }
        let l = node.metrics().current_leader;
        if l != leader {
            crate::metrics::leader_changed();
            leader = l;
        }
        let now = hook_role(&node);
        if now != role {
            let epoch = node.view().state.epoch();
            info!(from = role, to = now, epoch, "role changed");
            crate::metrics::role_changed();
            node.hook.role_changed(role, now, epoch);
            role = now;
        }
    }
}
