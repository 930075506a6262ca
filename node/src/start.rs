//! The node: opens the data dir (lock file, redb stores), starts openraft, serves the HTTP
//! API and the peer port, bootstraps or joins the cluster, and runs the small background
//! duties every node has (announce its API address, probe peers, set the cluster id).
//!
//! `Node::start(config) -> NodeHandle` is the whole life cycle: tests run nodes in-process
//! through it, `keel serve` calls it and waits for a signal.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::network::{PeerClient, PeerHealth, PeerNetwork};
use keel_raft::{BasicNode, NodeId, Raft};
use openraft::error::{InitializeError, RaftError};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::state::Node;
use crate::tls::ListenerKind;

/// Longest a role-change hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for the background tasks to finish their current unit of work.
const TASK_GRACE: Duration = Duration::from_secs(2);

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
    GitSync(#[from] keel_gitsync::GitSyncError),
    #[error("start task {what}: {reason}")]
    Task { what: &'static str, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A running node. Dropping it does not stop it: call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub node: Arc<Node>,
    api_task: JoinHandle<()>,
    peer_task: JoinHandle<()>,
    /// Background tasks by name; they stop on `node.cancel`.
    background: Vec<(&'static str, JoinHandle<()>)>,
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
        let _ = self.api_task.await;
        // Every background task watches `cancel` and returns once its current unit of work
        // (a pull, a renewal, a sync, a hook run) is done; one that is still busy after the
        // grace period is stopped where it is.
        let deadline = tokio::time::Instant::now() + TASK_GRACE;
        for (name, mut task) in self.background {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                warn!(
                    task = name,
                    grace_ms = TASK_GRACE.as_millis() as u64,
                    "background task still busy at shutdown: stopped"
                );
                task.abort();
            }
        }
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

/// Bind a listener, and say where it is bound (port 0 picks a free one).
async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bound = |source| StartError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
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
        let (api_listener, api_bound) = bind("api", config.api_addr).await?;
        let (peer_listener, peer_bound) = bind("peer", config.peer_addr).await?;
        let sentinel_listener = match &config.sentinel {
            Some(s) => Some((s.clone(), bind("sentinel", s.addr).await?.0)),
            None => None,
        };

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
        let options = keel_replication::StoreOptions {
            format: config.replication.datastore_format,
            cache_bytes: config.datastore_cache_bytes(),
            ..Default::default()
        };
        let store = keel_replication::DataStore::open_with(&data_path, &options)
            .map_err(|e| StartError::Data(format!("open {}: {e}", data_path.display())))?;
        let repl = crate::repl::Repl::new(store);
        let http = crate::tls::client_builder(tls.as_ref())
            .connect_timeout(keel_raft::network::CONNECT_TIMEOUT)
            .build()
            .map_err(|e| StartError::Client(e.to_string()))?;
        let gitsync = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::cluster::gitsync::open(&config))
                .await
                .map_err(|e| StartError::Task {
                    what: "open git sync",
                    reason: e.to_string(),
                })??
        };
        let cancel = CancellationToken::new();
        let hook = crate::cluster::hook::HookRunner::start(
            config.role_change_hook.clone(),
            config.id,
            HOOK_TIMEOUT,
            cancel.clone(),
        );
        let tokens = Arc::new(crate::auth::TokenStore::new(config.tokens()));
        let service = crate::cluster::service::ManagedRedis::open(&config);
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
            tokens,
            service,
        });

        let listen =
            |listener, router, kind| tokio::spawn(serve(listener, router, node.cancel.clone(), node.tls.clone(), kind));
        let peer_task = listen(peer_listener, crate::peer::router(node.clone()), ListenerKind::Peer);
        let api_task = listen(api_listener, crate::http::router(node.clone()), ListenerKind::Api);
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
        crate::auth::warn_at_start(&node.tokens.get());

        if !node.config.peers.is_empty() {
            bootstrap(&node).await?;
        }
        let mut background = spawn_background(&node);
        if let Some((config, listener)) = sentinel_listener {
            background.extend(crate::sentinel::spawn(&node, config, listener));
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

/// Start the node's background tasks (elections after the quiet period, the duties, the lease,
/// the failover controller, replication, TLS reload, Git Sync, join). Each stops on `node.cancel`.
fn spawn_background(node: &Arc<Node>) -> Vec<(&'static str, JoinHandle<()>)> {
    {
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(node.vote_quiet_period()).await;
            node.raft.runtime_config().elect(true);
            debug!("elections enabled");
        });
    }
    let mut background = vec![
        (
            "announce",
            tokio::spawn(crate::cluster::duties::announce_task(node.clone())),
        ),
        ("probe", tokio::spawn(crate::cluster::duties::probe_task(node.clone()))),
        (
            "leader duties",
            tokio::spawn(crate::cluster::duties::leader_duties_task(node.clone())),
        ),
        (
            "lease renewal",
            tokio::spawn(crate::cluster::primary::renew_task(node.clone())),
        ),
        (
            "lease expiry",
            tokio::spawn(crate::cluster::primary::lease_expiry_task(node.clone())),
        ),
        (
            "failover controller",
            tokio::spawn(crate::cluster::primary::controller_task(node.clone())),
        ),
        (
            "role tracker",
            tokio::spawn(crate::cluster::duties::role_task(node.clone())),
        ),
        (
            "replication apply",
            tokio::spawn(crate::cluster::kv::apply_task(node.clone())),
        ),
        (
            "replication report",
            tokio::spawn(crate::repl::report_task(node.clone())),
        ),
        ("log retention", tokio::spawn(crate::repl::retention_task(node.clone()))),
        (
            "tls reload",
            tokio::spawn(crate::tls::reload_task(node.tls.clone(), node.cancel.clone())),
        ),
        (
            "token reload",
            tokio::spawn(crate::auth::reload_task(
                node.tokens.clone(),
                node.config.clone(),
                node.cancel.clone(),
            )),
        ),
    ];
    if let Some(g) = node.gitsync.clone() {
        background.push(("git sync", tokio::spawn(g.clone().run(node.cancel.clone()))));
        if let Some(cmd) = node.config.gitsync.as_ref().and_then(|c| c.hook.clone()) {
            background.push((
                "git sync hook",
                tokio::spawn(crate::cluster::gitsync::sync_hook_task(node.clone(), g, cmd)),
            ));
        }
    }
    if node.service.is_some() {
        background.push((
            "redis supervisor",
            tokio::spawn(crate::cluster::service::supervise_task(node.clone())),
        ));
        background.push((
            "redis duty",
            tokio::spawn(crate::cluster::service::duty_task(node.clone())),
        ));
        background.push((
            "redis directory",
            tokio::spawn(crate::cluster::service::directory_task(node.clone())),
        ));
        background.push((
            "redis primary watch",
            tokio::spawn(crate::cluster::service::primary_watch_task(node.clone())),
        ));
    }
    if let Some(join) = node.config.join.clone() {
        background.push((
            "join",
            tokio::spawn(crate::cluster::join::join_task(node.clone(), join)),
        ));
    }
    background
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
