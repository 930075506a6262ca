//! Peer transport client: openraft RPCs as HTTP POSTs to `/peer/raft/*` on the target's
//! peer address, bodies in the versioned postcard format of [`crate::codec`].
//!
//! Each RPC carries the cluster token (`Authorization: Bearer`), this node's cluster id
//! (`Keel-Cluster-Id`) and id (`Keel-Node-Id`). Every request has a timeout taken from
//! openraft's [`RPCOption`] plus a short connect timeout, so a dead or black-holed peer costs
//! one bounded wait in that peer's own replication task and never blocks the Raft loop.
//! Connect failures map to [`Unreachable`] (openraft backs off), everything else to
//! [`NetworkError`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::codec::{decode, encode};
use crate::peer_log::{log_line, PeerLog};
use crate::store::StateView;
use crate::{BasicNode, NodeId, TypeConfig};

/// Header carrying the sender's cluster id; a receiver of another cluster answers 409.
pub const CLUSTER_ID_HEADER: &str = "keel-cluster-id";
/// Header carrying the sender's node id (for logs and reachability).
pub const NODE_ID_HEADER: &str = "keel-node-id";
/// Connect timeout for every peer request: loopback and LAN peers connect in well under this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What this node last saw of each peer: used for `reachable` in the cluster view.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
    /// Set when the peer answered that it belongs to another cluster.
    pub cluster_mismatch: Option<String>,
    /// What the log last said about the peer (see [`crate::peer_log`]).
    log: PeerLog,
}

/// Reachability of peers as seen by this node's outgoing requests. Every outcome also goes to
/// the peer's [`PeerLog`], which logs a peer going unreachable and coming back.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    inner: Arc<Mutex<BTreeMap<NodeId, PeerStatus>>>,
}

impl PeerHealth {
    pub fn record_ok(&self, peer: NodeId) {
        let line = {
            let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let s = m.entry(peer).or_default();
            let now = Instant::now();
            s.last_ok = Some(now);
            s.last_error = None;
            s.cluster_mismatch = None;
            s.log.success(now)
        };
        if let Some(line) = line {
            log_line(peer, line);
        }
    }

    /// A request to `peer` failed without an answer (or was refused for its token or cluster
    /// id): it counts towards the peer being unreachable.
    pub fn record_err(&self, peer: NodeId, err: String, mismatch: Option<String>) {
        let line = {
            let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let s = m.entry(peer).or_default();
            let line = s.log.failure(Instant::now(), &err);
            s.last_error = Some(err);
            if mismatch.is_some() {
                s.cluster_mismatch = mismatch;
            }
            line
        };
        if let Some(line) = line {
            log_line(peer, line);
        }
    }

    /// `peer` answered, but with an error (a status, an undecodable body): it is reachable, so
    /// this is remembered as its last error but neither reports it unreachable nor back.
    pub fn record_answer_err(&self, peer: NodeId, err: String) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(peer).or_default().last_error = Some(err);
    }

    pub fn get(&self, peer: NodeId) -> PeerStatus {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&peer).cloned().unwrap_or_default()
    }

    /// True when a request to `peer` succeeded within `within`.
    pub fn reachable(&self, peer: NodeId, within: Duration) -> bool {
        self.get(peer).last_ok.is_some_and(|t| t.elapsed() <= within)
    }

    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerStatus> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Make ring rustls' process-wide crypto provider. reqwest is built without a provider of its
/// own (aws-lc-rs takes minutes to build on 2 cores), so every process must install one before
/// it builds its first `reqwest::Client`, or that build panics. Idempotent and cheap.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// How this node dials its peers.
#[derive(Clone, Debug, Default)]
pub enum PeerTransport {
    /// `http://`.
    #[default]
    Plain,
    /// `https://`, verifying peers with the platform's trust store.
    Https,
    /// `https://` with this rustls config: the cluster CA as trust anchor and this node's own
    /// certificate for mutual TLS.
    HttpsWith(Box<rustls::ClientConfig>),
}

/// Shared client state: one connection pool for all peers.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// `http` or `https`, from the [`PeerTransport`].
    scheme: &'static str,
    self_id: NodeId,
    token: Option<String>,
    state: watch::Receiver<Arc<StateView>>,
    health: PeerHealth,
}

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    #[error("peer {addr}: {message}")]
    Network { addr: String, message: String },
    #[error("peer {addr} belongs to another cluster: {message}")]
    ClusterMismatch { addr: String, message: String },
    #[error("peer {addr} refused the cluster token (401)")]
    Unauthorized { addr: String },
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    #[error("decode answer from {addr}: {message}")]
    Decode { addr: String, message: String },
}

impl PeerClient {
    /// A plain-HTTP client.
    pub fn new(
        self_id: NodeId,
        token: Option<String>,
        state: watch::Receiver<Arc<StateView>>,
        health: PeerHealth,
    ) -> Result<Self, reqwest::Error> {
        Self::with_transport(self_id, token, state, health, PeerTransport::Plain)
    }

    pub fn with_transport(
        self_id: NodeId,
        token: Option<String>,
        state: watch::Receiver<Arc<StateView>>,
        health: PeerHealth,
        transport: PeerTransport,
    ) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy();
        let scheme = match transport {
            PeerTransport::Plain => "http",
            PeerTransport::Https => "https",
            PeerTransport::HttpsWith(config) => {
                builder = builder.tls_backend_preconfigured(*config);
                "https"
            }
        };
        let http = builder.build()?;
        Ok(PeerClient {
            http,
            scheme,
            self_id,
            token,
            state,
            health,
        })
    }

    pub fn health(&self) -> &PeerHealth {
        &self.health
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// POST an encoded body to `{scheme}://{addr}{path}` and decode the answer. Records the
    /// outcome in [`PeerHealth`] when `peer` is given.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: Option<NodeId>,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        self.call_sized(peer, addr, path, req, timeout).await.map(|(r, _)| r)
    }

    /// [`PeerClient::call`], also returning the answer's size in bytes (as encoded).
    pub async fn call_sized<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: Option<NodeId>,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<(Resp, usize), PeerError> {
        self.recorded(peer, self.call_inner(addr, path, req, timeout).await)
    }

    /// Record the outcome of a call to `peer`, if given, in [`PeerHealth`]; hand it back.
    fn recorded<T>(&self, peer: Option<NodeId>, res: Result<T, PeerError>) -> Result<T, PeerError> {
        let Some(peer) = peer else { return res };
        match &res {
            Ok(_) => self.health.record_ok(peer),
            Err(e @ PeerError::ClusterMismatch { message, .. }) => {
                self.health.record_err(peer, e.to_string(), Some(message.clone()))
            }
            Err(e @ (PeerError::Status { .. } | PeerError::Decode { .. })) => {
                self.health.record_answer_err(peer, e.to_string())
            }
            Err(e) => self.health.record_err(peer, e.to_string(), None),
        }
        res
    }

    /// POST an encoded body and hand back the raw response (for streamed answers, e.g. a
    /// datastore snapshot). Non-2xx answers are errors.
    pub async fn call_raw<Req: Serialize>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<reqwest::Response, PeerError> {
        let resp = self
            .request(addr, path, req, timeout)
            .send()
            .await
            .map_err(|e| PeerError::Network {
                addr: addr.to_string(),
                message: error_chain(&e),
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            return Err(PeerError::Status {
                addr: addr.to_string(),
                status,
                body,
            });
        }
        Ok(resp)
    }

    fn request<Req: Serialize>(&self, addr: &str, path: &str, req: &Req, timeout: Duration) -> reqwest::RequestBuilder {
        let url = format!("{}://{addr}{path}", self.scheme);
        let mut rb = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(NODE_ID_HEADER, self.self_id.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(encode(req));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let cluster_id = self.state.borrow().state.cluster_id.clone();
        if let Some(c) = cluster_id {
            rb = rb.header(CLUSTER_ID_HEADER, c);
        }
        rb
    }

    async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<(Resp, usize), PeerError> {
        let rb = self.request(addr, path, req, timeout);
        let resp = rb.send().await.map_err(|e| send_error(addr, &e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| PeerError::Network {
            addr: addr.to_string(),
            message: error_chain(&e),
        })?;
        match status.as_u16() {
            200 => decode(&body).map(|r| (r, body.len())).map_err(|e| PeerError::Decode {
                addr: addr.to_string(),
                message: e.to_string(),
            }),
            s => Err(status_error(addr, s, &body)),
        }
    }

    /// Open a byte stream to `addr`: a POST to `path` asking to switch the connection to
    /// `protocol` (HTTP/1.1 `Upgrade`), with the headers of every peer call (node id, cluster id,
    /// cluster token), so the peer's checks are the same as for a call. On `101 Switching
    /// Protocols` both ends speak `protocol` on the connection from then on; any other answer is
    /// an error (`Status` 404 from a peer that predates `path`). `timeout` bounds the opening only:
    /// the caller bounds each exchange on the stream itself (and records their outcomes). Records
    /// the opening's outcome in [`PeerHealth`] when `peer` is given.
    pub async fn open_stream(
        &self,
        peer: Option<NodeId>,
        addr: &str,
        path: &str,
        protocol: &'static str,
        timeout: Duration,
    ) -> Result<reqwest::Upgraded, PeerError> {
        self.recorded(peer, self.open_stream_inner(addr, path, protocol, timeout).await)
    }

    async fn open_stream_inner(
        &self,
        addr: &str,
        path: &str,
        protocol: &'static str,
        timeout: Duration,
    ) -> Result<reqwest::Upgraded, PeerError> {
        let network = |e: reqwest::Error| PeerError::Network {
            addr: addr.to_string(),
            message: error_chain(&e),
        };
        let resp = self
            .request(addr, path, &(), timeout)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol)
            .send()
            .await
            .map_err(|e| send_error(addr, &e))?;
        let status = resp.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let body = resp.bytes().await.map_err(network)?;
            return Err(status_error(addr, status.as_u16(), &body));
        }
        resp.upgrade().await.map_err(network)
    }
}

/// The error for a request to a peer that got no answer: `Unreachable` when it could not connect.
fn send_error(addr: &str, e: &reqwest::Error) -> PeerError {
    let (addr, message) = (addr.to_string(), error_chain(e));
    if e.is_connect() {
        PeerError::Unreachable { addr, message }
    } else {
        PeerError::Network { addr, message }
    }
}

/// The error for a peer's non-success answer.
fn status_error(addr: &str, status: u16, body: &[u8]) -> PeerError {
    let text = String::from_utf8_lossy(body).into_owned();
    match status {
        401 => PeerError::Unauthorized { addr: addr.to_string() },
        409 => PeerError::ClusterMismatch {
            addr: addr.to_string(),
            message: text,
        },
        _ => PeerError::Status {
            addr: addr.to_string(),
            status,
            body: text,
        },
    }
}

/// The whole `source()` chain of an error on one line (reqwest hides the useful part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// openraft network factory.
#[derive(Clone)]
pub struct PeerNetwork {
    client: PeerClient,
}

impl PeerNetwork {
    pub fn new(client: PeerClient) -> Self {
        PeerNetwork { client }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl PeerConnection {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        let res: Result<Result<Resp, E>, PeerError> = self
            .client
            .call(Some(self.target), &self.addr, path, req, timeout)
            .await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e @ PeerError::Unreachable { .. })
            | Err(e @ PeerError::ClusterMismatch { .. })
            | Err(e @ PeerError::Unauthorized { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/peer/raft/append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        // Snapshot chunks may be large and land on a busy disk: give them more room.
        self.rpc(
            "/peer/raft/snapshot",
            &rpc,
            option.hard_ttl().max(Duration::from_secs(10)),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/peer/raft/vote", &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer every 200 ms: quick to notice a restarted node, and the
        // request itself is bounded by the connect timeout.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
