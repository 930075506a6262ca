//! TLS for both listeners and for the node's own clients (rustls with the ring provider).
//!
//! - `--tls-cert`/`--tls-key` (PEM) turn on HTTPS on the API and the peer listener; both serve the
//!   same certificate, so it must name the node's API and peer host (or IP) in its SANs.
//! - `--peer-ca` (PEM bundle) turns on mutual TLS between peers: the peer listener requires a client
//!   certificate chaining to that CA and refuses every other handshake; the peer client presents the
//!   node's own certificate and trusts only that CA for peer (and member API) servers. Without
//!   `--peer-ca`, peers are dialled over HTTPS verified against the system trust store and the peer
//!   listener asks for no client certificate (the cluster token still authenticates peers).
//! - The API listener never asks for a client certificate: clients authenticate with the admin token,
//!   and load balancers' health checks and browsers (`/ui`) must reach it without one.
//!
//! Everything loaded from the files lives in one `Material` behind a lock. [`reload_task`] replaces it
//! on SIGHUP and when a file's mtime/size changes (polled every [`POLL_INTERVAL`]); a file that does not
//! load is logged and the old material kept. Each accepted connection takes the material current at
//! accept time, and the client side resolves its certificate and trust anchors per handshake, so new
//! handshakes see new certificates while established connections keep theirs.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: `axum::serve` (and its graceful shutdown) runs
//! unchanged on top of it. Handshakes run in their own tasks with a timeout, so one slow client cannot
//! stall the accept loop; a plain-HTTP request on a TLS port gets a JSON 400 saying to use https.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;

/// How often the certificate files' mtimes and sizes are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A TLS handshake (including reading the first byte) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener; connections beyond this are closed at once.
const MAX_PENDING_HANDSHAKES: usize = 512;
/// At most one handshake-failure warning per listener in this window (a misconfigured peer retries
/// every 200 ms); the others are counted and reported with the next warning.
const HANDSHAKE_WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the TLS files could not be used. Messages name the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {}: {reason}", path.display())]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "--tls-key {} does not belong to the certificate in --tls-cert {}: {reason}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("build TLS settings: {0}")]
    Build(String),
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Api,
    Peer,
}

impl ListenerKind {
    fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Api => "api",
            ListenerKind::Peer => "peer",
        }
    }
}

/// Everything built from the files at one moment; replaced whole on reload.
struct Material {
    key: Arc<CertifiedKey>,
    api: Arc<ServerConfig>,
    peer: Arc<ServerConfig>,
    /// Verifies peer servers (and other members' APIs) against `--peer-ca`; `None` without it.
    peer_verifier: Option<Arc<dyn ServerCertVerifier>>,
}

/// Modification time and size of each file, to notice replacements.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The node's TLS state: current certificate, server configs and peer trust anchors.
pub struct Tls {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
    /// Stamps of the files when they were last read, and whether that read failed (then the next poll
    /// retries quietly until the files change again).
    seen: Mutex<(Stamps, bool)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Load the files named in `files`; fails with a message naming the bad file.
    pub fn load(files: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        keel_raft::network::install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = stamps(files);
        let material = build_material(files, &provider)?;
        Ok(Arc::new(Tls {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(material)),
            seen: Mutex::new((stamps, false)),
        }))
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server config new connections on `kind` get.
    pub fn server_config(&self, kind: ListenerKind) -> Arc<ServerConfig> {
        let m = self.material();
        match kind {
            ListenerKind::Api => m.api.clone(),
            ListenerKind::Peer => m.peer.clone(),
        }
    }

    /// True when `--peer-ca` is set (mutual TLS between peers).
    pub fn mutual(&self) -> bool {
        self.files.peer_ca.is_some()
    }

    /// Read the files again and, if they load, use them for every new handshake. On error the old
    /// material stays in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.files);
        let res = build_material(&self.files, &self.provider);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = (stamps, res.is_err());
        let material = res?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
        Ok(())
    }

    /// Whether a file changed since it was last read, or the last read failed and should be retried.
    /// The second value says whether the change is new (worth logging a failure again).
    fn changed(&self) -> (bool, bool) {
        let now = stamps(&self.files);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let new = now != seen.0;
        (new || seen.1, new)
    }

    /// The rustls config the node's clients use with `--peer-ca`: trust only that CA (re-read on
    /// reload) and present this node's certificate when a server asks for one.
    pub fn peer_client_config(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Build(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentPeerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(CurrentClientCert(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A reqwest client builder for this node's calls to other members (peer port and API), with the
/// transport `tls` calls for: plain, HTTPS with the system roots, or HTTPS with the peer CA and mTLS.
pub fn client_builder(tls: Option<&Arc<Tls>>) -> reqwest::ClientBuilder {
    keel_raft::network::install_crypto_provider();
    let builder = reqwest::Client::builder().no_proxy();
    match tls {
        Some(t) if t.mutual() => match t.peer_client_config() {
            Ok(c) => builder.tls_backend_preconfigured(c),
            // Building a client config from already-built parts does not fail in practice; if it
            // does, the default roots still give a working (if stricter) client.
            Err(e) => {
                warn!(error = %e, "peer TLS client config; falling back to the system trust store");
                builder
            }
        },
        _ => builder,
    }
}

/// The transport of the Raft/peer client for this node.
pub fn peer_transport(tls: Option<&Arc<Tls>>) -> Result<keel_raft::network::PeerTransport, TlsError> {
    use keel_raft::network::PeerTransport;
    Ok(match tls {
        None => PeerTransport::Plain,
        Some(t) if t.mutual() => PeerTransport::HttpsWith(Box::new(t.peer_client_config()?)),
        Some(_) => PeerTransport::Https,
    })
}

/// `http` or `https`: how this node reaches other members (a cluster is all TLS or all plain).
pub fn scheme(tls: Option<&Arc<Tls>>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

fn stamps(files: &TlsConfig) -> Stamps {
    let mut paths: Vec<&Path> = vec![&files.cert, &files.key];
    if let Some(ca) = &files.peer_ca {
        paths.push(ca);
    }
    paths
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(p).ok()?;
            Some((md.modified().ok()?, md.len()))
        })
        .collect()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what,
            path: path.to_owned(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            what,
            path: path.to_owned(),
            reason: "no `-----BEGIN CERTIFICATE-----` block found; expected PEM".to_owned(),
        });
    }
    Ok(certs)
}

/// Load the key pair and CA, check they fit together, and build both server configs.
fn build_material(files: &TlsConfig, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
    let chain = parse_certs("--tls-cert", &files.cert)?;
    let key_bytes = read("--tls-key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Parse {
        what: "--tls-key",
        path: files.key.clone(),
        reason: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    let key = Arc::new(key);

    let roots = match &files.peer_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs("--peer-ca", path)? {
                roots.add(cert).map_err(|e| TlsError::Parse {
                    what: "--peer-ca",
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };

    let build = |e: rustls::Error| TlsError::Build(e.to_string());
    let resolver = Arc::new(FixedCert(key.clone()));
    let mut api = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(build)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    api.alpn_protocols = vec![b"http/1.1".to_vec()];

    let peer_builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(build)?;
    let (peer_builder, peer_verifier) = match &roots {
        Some(roots) => {
            let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Build(format!("--peer-ca: {e}")))?;
            let server_verifier: Arc<dyn ServerCertVerifier> =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Build(format!("--peer-ca: {e}")))?;
            (
                peer_builder.with_client_cert_verifier(client_verifier),
                Some(server_verifier),
            )
        }
        None => (peer_builder.with_no_client_auth(), None),
    };
    let mut peer = peer_builder.with_cert_resolver(resolver);
    peer.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(Material {
        key,
        api: Arc::new(api),
        peer: Arc::new(peer),
        peer_verifier,
    })
}

/// Serves the certificate of one [`Material`].
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Client side of mutual TLS: the node's current certificate.
#[derive(Debug)]
struct CurrentClientCert(Arc<Tls>);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies servers against the current `--peer-ca` (which a reload may replace).
#[derive(Debug)]
struct CurrentPeerVerifier(Arc<Tls>);

impl CurrentPeerVerifier {
    fn inner(&self) -> Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
        self.0
            .material()
            .peer_verifier
            .clone()
            .ok_or_else(|| rustls::Error::General("no --peer-ca configured".to_owned()))
    }
}

impl ServerCertVerifier for CurrentPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Reload the certificates on SIGHUP and when their files change, until `cancel`. Without TLS it still
/// takes SIGHUP (and says there is nothing to reload), so `systemctl reload` never kills a node.
pub async fn reload_task(tls: Option<Arc<Tls>>, cancel: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = hup_recv => {
                if r.is_none() {
                    hup = None;
                    continue;
                }
                match &tls {
                    Some(t) => reload_and_log(t, "SIGHUP", true),
                    None => info!("SIGHUP received; TLS is not configured, no certificates to reload"),
                }
            }
            _ = tick.tick() => {
                if let Some(t) = &tls {
                    let (changed, new) = t.changed();
                    if changed {
                        reload_and_log(t, "file change", new);
                    }
                }
            }
        }
    }
}

fn reload_and_log(tls: &Tls, why: &'static str, log_failure: bool) {
    match tls.reload() {
        Ok(()) => info!(
            trigger = why,
            cert = %tls.files.cert.display(),
            key = %tls.files.key.display(),
            peer_ca = %tls.files.peer_ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "TLS certificates reloaded; new connections use them"
        ),
        Err(e) if log_failure => warn!(
            trigger = why,
            error = %e,
            "TLS certificates not reloaded; still serving the previous ones (fix the files, then SIGHUP or \
             wait for the next change)"
        ),
        Err(e) => debug!(error = %e, "TLS reload retry failed"),
    }
}

/// Accepts TCP connections and hands out those whose TLS handshake succeeded.
pub struct TlsListener {
    tcp: TcpListener,
    tls: Arc<Tls>,
    kind: ListenerKind,
    pending: JoinSet<Result<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr), HandshakeError>>,
    warned: Arc<Mutex<WarnLimiter>>,
}

#[derive(Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

struct HandshakeError {
    from: SocketAddr,
    message: String,
    /// Worth a warning (a failed or refused TLS handshake), not just a debug line (timeouts, plain
    /// HTTP, clients that hang up).
    warn: bool,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<Tls>, kind: ListenerKind) -> Self {
        TlsListener {
            tcp,
            tls,
            kind,
            pending: JoinSet::new(),
            warned: Default::default(),
        }
    }

    fn report(&self, e: HandshakeError) {
        if !e.warn {
            debug!(listener = self.kind.as_str(), from = %e.from, error = %e.message, "TLS connection dropped");
            return;
        }
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if w.last.is_some_and(|t| t.elapsed() < HANDSHAKE_WARN_EVERY) {
            w.suppressed += 1;
            debug!(listener = self.kind.as_str(), from = %e.from, error = %e.message, "TLS handshake refused");
            return;
        }
        // On the peer port a refused handshake is a misconfigured or foreign node: warn. On the API it
        // is usually a client that does not trust our CA (its own problem, and its error says so).
        if self.kind == ListenerKind::Peer {
            warn!(
                listener = self.kind.as_str(),
                from = %e.from,
                error = %e.message,
                similar_since_last = w.suppressed,
                "TLS handshake refused"
            );
        } else {
            info!(
                listener = self.kind.as_str(),
                from = %e.from,
                error = %e.message,
                similar_since_last = w.suppressed,
                "TLS handshake refused"
            );
        }
        w.last = Some(Instant::now());
        w.suppressed = 0;
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                r = self.tcp.accept() => match r {
                    Ok((tcp, from)) => {
                        if self.pending.len() >= MAX_PENDING_HANDSHAKES {
                            debug!(listener = self.kind.as_str(), %from, "too many TLS handshakes in progress; closing");
                            continue;
                        }
                        let _ = tcp.set_nodelay(true);
                        let config = self.tls.server_config(self.kind);
                        self.pending.spawn(handshake(tcp, from, config));
                    }
                    Err(e) => {
                        // Same policy as axum's TcpListener: per-connection errors are ignored, others
                        // (out of file descriptors) back off a moment.
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                        ) {
                            warn!(listener = self.kind.as_str(), error = %e, "accept error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                },
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => match done {
                    Ok(Ok((io, from))) => return (io, from),
                    Ok(Err(e)) => self.report(e),
                    Err(e) => debug!(error = %e, "TLS handshake task ended"),
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn handshake(
    tcp: TcpStream,
    from: SocketAddr,
    config: Arc<ServerConfig>,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr), HandshakeError> {
    let err = |message: String, warn: bool| HandshakeError { from, message, warn };
    let run = async {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) => return Err(err("closed before the handshake".to_owned(), false)),
            Ok(_) => {}
            Err(e) => return Err(err(format!("read: {e}"), false)),
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if first[0].is_ascii_uppercase() {
                refuse_plain_http(tcp).await;
                return Err(err("plain HTTP request on a TLS port; answered 400".to_owned(), false));
            }
            return Err(err(format!("not a TLS handshake (first byte {:#04x})", first[0]), true));
        }
        tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map(|io| (io, from))
            .map_err(|e| err(e.to_string(), true))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(err(
            format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            false,
        )),
    }
}

/// Answer a plain-HTTP request on a TLS port with the JSON error format, so `curl http://` and
/// `keel --addr http://` say what to change instead of "connection reset".
async fn refuse_plain_http(mut tcp: TcpStream) {
    let body = r#"{"error":{"code":"tls_required","message":"this port serves HTTPS only: use https:// (and --ca FILE if its certificate is from a private CA)"}}"#;
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if tcp.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    // Drain what the client still sends (briefly), so closing does not turn into a reset that
    // destroys the answer before the client reads it.
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut total = 0usize;
    while total < 64 * 1024 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}
