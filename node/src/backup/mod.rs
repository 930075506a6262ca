//! Backup and restore: `GET /v1/backup`, `keel backup --out FILE` and `keel restore --from FILE`.
//!
//! A backup is one consistent snapshot of a live node: its view of the cluster state (members,
//! dynamic config, failover history, primary and epoch, cluster id, Raft membership) and its whole
//! datastore at ONE replication position, streamed end to end (the datastore is read from one redb
//! read transaction by keel-replication's [`keel_replication::SnapshotReader`], the same machinery a
//! replica behind the retained log resyncs with), never held in memory.
//!
//! File format (version [`BACKUP_FORMAT`]):
//!
//! ```text
//! MAGIC "KEELBKUP" (8 bytes) | format version (1 byte)
//! frames: kind (1 byte) | payload length (u32 big-endian) | payload
//!   'H' header: keel_raft codec (format byte + postcard) of BackupHeader   (first, once)
//!   'D' datastore snapshot chunk, as keel-replication encodes it           (zero or more, in order)
//!   'E' end: keel_raft codec of BackupEnd (chunk and record counts)        (last, once)
//! trailer: SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! Restore checks the magic, the format version and the checksum before it writes anything, then
//! builds the data dir in a staging directory next to the target and renames it into place, so a
//! corrupt, truncated or foreign file leaves the target untouched. How the restored cluster starts
//! (same positions and epoch, a new cluster id, Raft membership from `--peers`) is described in
//! docs/operations.md, "Backup and restore".

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use keel_raft::state::ClusterState;
use keel_raft::store::StateView;
use keel_raft::{BasicNode, NodeId};
use keel_replication::Position;
use openraft::storage::RaftStateMachine;
use openraft::{LogId, Membership, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::cli::{ClientOpts, OutputFormat};
use crate::http::error::ApiError;
use crate::state::Node;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"KEELBKUP";
/// Version of the file layout above. Bump it (and keep reading the old one) when the layout or the
/// meaning of a frame changes; the header and end frames carry keel-raft's codec version too.
pub const BACKUP_FORMAT: u8 = 1;
const KIND_HEADER: u8 = b'H';
const KIND_DATA: u8 = b'D';
const KIND_END: u8 = b'E';
/// Largest frame accepted: a datastore chunk is about 1 MiB, or one record of up to 1 MiB.
const MAX_FRAME: usize = 16 << 20;
const TRAILER_LEN: u64 = 32;
/// How long the backup endpoint waits for this node's cluster state to reach the epoch of its
/// datastore position (a replica may apply entries of a new epoch before it applied the promotion).
const STATE_CATCH_UP: Duration = Duration::from_secs(5);

/// A member of the Raft membership at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMember {
    pub id: NodeId,
    pub peer_addr: String,
    pub voter: bool,
}

/// First frame of a backup: where it comes from and the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// Unix time in milliseconds when the snapshot was taken (informational).
    pub created_at_ms: u64,
    /// `CARGO_PKG_VERSION` of the node that wrote it.
    pub keel_version: String,
    /// The node that served the backup.
    pub source_node: NodeId,
    /// The datastore position the snapshot is consistent with.
    pub position: Position,
    /// Keys in the datastore snapshot.
    pub keys: u64,
    /// Raft index of the cluster state below (informational).
    pub raft_last_applied: Option<u64>,
    /// The cluster state (members, config, history, primary and epoch, cluster id).
    pub cluster: ClusterState,
    pub membership: Vec<BackupMember>,
}

/// Last frame: what the data frames must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEnd {
    pub chunks: u64,
    pub records: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 5);
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Produces the pieces of a backup file in order (see the module doc), hashing and counting them.
#[derive(Default)]
struct Framer {
    hasher: Sha256,
    chunks: u64,
    bytes: u64,
}

impl Framer {
    fn out(&mut self, piece: Vec<u8>) -> Vec<u8> {
        self.hasher.update(&piece);
        self.bytes += piece.len() as u64;
        piece
    }

    /// Magic, format version and the header frame.
    fn header(&mut self, header: &BackupHeader) -> Vec<u8> {
        let mut head = MAGIC.to_vec();
        head.push(BACKUP_FORMAT);
        head.extend(frame(KIND_HEADER, &keel_raft::codec::encode(header)));
        self.out(head)
    }

    /// One datastore snapshot chunk.
    fn data(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.chunks += 1;
        self.out(frame(KIND_DATA, chunk))
    }

    /// The end frame and the SHA-256 trailer; also the checksum (hex) and the file's size.
    fn finish(mut self, records: u64) -> (Vec<u8>, String, u64) {
        let end = BackupEnd {
            chunks: self.chunks,
            records,
        };
        let mut tail = self.out(frame(KIND_END, &keel_raft::codec::encode(&end)));
        let digest = self.hasher.finalize().to_vec();
        tail.extend_from_slice(&digest);
        (tail, hex(&digest), self.bytes + digest.len() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Server: GET /v1/backup
// ---------------------------------------------------------------------------------------------

/// A response body fed from a bounded channel: the producer (a blocking thread reading redb)
/// waits while the client is slow, so memory stays at a few chunks whatever the store's size.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// `GET /v1/backup`: stream a backup of this node (admin token required when one is configured).
/// Headers: `Keel-Position` (the snapshot's position) and `Keel-Backup-Keys`.
pub async fn serve_backup(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    match start_backup(node, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start_backup(node: Arc<Node>, headers: &HeaderMap) -> Result<Response, ApiError> {
    // Reads everything, secrets of the cluster's data included: admin only, like mutating endpoints.
    if let Some(token) = &node.config.admin_token {
        let auth = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !crate::util::bearer_matches(auth, token.expose()) {
            return Err(ApiError::unauthorized(
                "a backup needs the admin token: send `Authorization: Bearer <token>` (keel --admin-token)",
            ));
        }
    }
    let store = node.repl.store.clone();
    let reader = tokio::task::spawn_blocking(move || store.snapshot())
        .await
        .map_err(|e| ApiError::internal(format!("snapshot task: {e}")))?
        .map_err(|e| ApiError::internal(format!("open a datastore snapshot: {e}")))?;
    let position = reader.position();
    // The cluster state is read after the datastore snapshot, so its epoch is at least the epoch
    // of every entry in the snapshot once this node applied the promotion that opened it.
    let mut state = node.state.clone();
    let deadline = tokio::time::Instant::now() + STATE_CATCH_UP;
    while node.view().state.epoch() < position.epoch {
        if tokio::time::timeout_at(deadline, state.changed()).await.is_err() {
            return Err(ApiError::unavailable(
                "state_behind",
                format!(
                    "this node's cluster state (epoch {}) has not caught up with its datastore (epoch {}); retry, or back up another node",
                    node.view().state.epoch(),
                    position.epoch
                ),
            ));
        }
    }
    let view = node.view();
    let m = node.metrics();
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    let membership = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| BackupMember {
            id: *id,
            peer_addr: n.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let header = BackupHeader {
        created_at_ms: unix_ms(),
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        source_node: node.id,
        position,
        keys: reader.keys(),
        raft_last_applied: view.last_applied.map(|l| l.index),
        cluster: view.state.clone(),
        membership,
    };
    let keys = header.keys;
    info!(%position, keys, "streaming a backup");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cancel = node.cancel.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let started = Instant::now();
        let mut framer = Framer::default();
        let send = |piece: Vec<u8>| tx.blocking_send(Ok(bytes::Bytes::from(piece))).is_ok();
        let fail = |msg: String| {
            warn!(error = %msg, "backup stream aborted");
            // The client sees a broken body (no end frame, no trailer) and refuses the file.
            let _ = tx.blocking_send(Err(std::io::Error::other(msg)));
        };
        if !send(framer.header(&header)) {
            return;
        }
        loop {
            if cancel.is_cancelled() {
                return fail("the node is shutting down".into());
            }
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    if !send(framer.data(&chunk)) {
                        return; // the client went away
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(format!("read the datastore snapshot: {e}")),
            }
        }
        let records = reader.records_sent();
        drop(reader); // ends the read transaction
        let (tail, sum, bytes) = framer.finish(records);
        if send(tail) {
            info!(
                %position,
                records,
                bytes,
                sha256 = %sum,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup streamed"
            );
        }
    });
    let mut r = Response::new(axum::body::Body::from_stream(ChannelBody(rx)));
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        h.insert("keel-position", v);
    }
    if let Ok(v) = HeaderValue::from_str(&keys.to_string()) {
        h.insert("keel-backup-keys", v);
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Reading and checking a backup file
// ---------------------------------------------------------------------------------------------

/// What a complete, checked backup file holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: BackupHeader,
    pub end: BackupEnd,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file before the trailer (= the trailer), hex.
    pub sha256: String,
}

/// Reads and hashes everything that passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str, at: u64) -> anyhow::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            anyhow::anyhow!("the backup file is truncated: it ends inside {what} (at byte {at})")
        } else {
            anyhow::anyhow!("read {what}: {e}")
        }
    })
}

/// Check the magic and the format version (the first 9 bytes).
fn check_preamble(r: &mut impl Read, path: &Path) -> anyhow::Result<()> {
    let mut pre = [0u8; 9];
    match r.read_exact(&mut pre) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            bail!(
                "{} is not a Keel backup: it is shorter than the file header",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    if &pre[..8] != MAGIC {
        bail!(
            "{} is not a Keel backup (no KEELBKUP header); give a file written by `keel backup`",
            path.display()
        );
    }
    if pre[8] != BACKUP_FORMAT {
        bail!(
            "{} is a Keel backup of format version {}, but this keel reads version {BACKUP_FORMAT}; restore it with the keel release that wrote it (or a newer one)",
            path.display(),
            pre[8]
        );
    }
    Ok(())
}

/// Pass 1: magic, version, and the SHA-256 of everything before the trailer against the trailer.
/// Reads the file once, writes nothing. Returns the checksum (hex).
pub fn verify_checksum(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("open backup file {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    check_preamble(&mut r, path)?;
    if len < 9 + 5 + TRAILER_LEN {
        bail!(
            "the backup file {} is truncated ({len} bytes): it has no room for its frames and checksum",
            path.display()
        );
    }
    let mut hasher = Sha256::new();
    let mut pre = MAGIC.to_vec();
    pre.push(BACKUP_FORMAT);
    hasher.update(&pre);
    let mut left = len - TRAILER_LEN - 9;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n])
            .with_context(|| format!("read {}", path.display()))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    r.read_exact(&mut trailer)
        .with_context(|| format!("read {}", path.display()))?;
    let digest = hasher.finalize().to_vec();
    if digest.as_slice() != trailer {
        bail!(
            "the backup file {} is corrupt or truncated: its SHA-256 checksum does not match ({len} bytes); nothing was written — use another copy of the backup",
            path.display()
        );
    }
    Ok(hex(&digest))
}

/// Read the header frame only (the file must already have passed [`verify_checksum`]).
pub fn read_header(path: &Path) -> anyhow::Result<BackupHeader> {
    let file = std::fs::File::open(path).with_context(|| format!("open backup file {}", path.display()))?;
    let mut r = BufReader::new(file);
    check_preamble(&mut r, path)?;
    let (kind, payload) = read_frame(&mut r, 9)?;
    if kind != KIND_HEADER {
        bail!("corrupt backup: the first frame is not the header");
    }
    keel_raft::codec::decode(&payload).context("decode the backup header")
}

fn read_frame(r: &mut impl Read, at: u64) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    read_exact_or(r, &mut head, "a frame header", at)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        bail!("corrupt backup: frame of {len} bytes at byte {at} is over the {MAX_FRAME}-byte limit");
    }
    let mut payload = vec![0u8; len];
    read_exact_or(r, &mut payload, "a frame", at + 5)?;
    Ok((head[0], payload))
}

/// Read the whole file frame by frame, hashing it, handing each datastore chunk to `on_chunk`,
/// and check its structure, its counts and its checksum. `on_chunk` may fail (the restore's
/// installer); that error is returned as is.
pub fn scan(path: &Path, mut on_chunk: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<Verified> {
    let file = std::fs::File::open(path).with_context(|| format!("open backup file {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        read: 0,
    };
    check_preamble(&mut r, path)?;
    let at = r.read;
    let (kind, payload) = read_frame(&mut r, at)?;
    if kind != KIND_HEADER {
        bail!("corrupt backup: the first frame is not the header");
    }
    let header: BackupHeader = keel_raft::codec::decode(&payload).context("decode the backup header")?;
    let mut chunks = 0u64;
    let end = loop {
        let at = r.read;
        let (kind, payload) = read_frame(&mut r, at)?;
        match kind {
            KIND_DATA => {
                chunks += 1;
                on_chunk(&payload)?;
            }
            KIND_END => break keel_raft::codec::decode::<BackupEnd>(&payload).context("decode the end frame")?,
            other => bail!("corrupt backup: unknown frame kind {other:#04x} at byte {at}"),
        }
    };
    let digest = std::mem::take(&mut r.hasher).finalize().to_vec();
    let mut trailer = [0u8; TRAILER_LEN as usize];
    read_exact_or(&mut r.inner, &mut trailer, "the checksum", r.read)?;
    if digest.as_slice() != trailer {
        bail!(
            "the backup file {} is corrupt: its SHA-256 checksum does not match",
            path.display()
        );
    }
    if r.read + TRAILER_LEN != len {
        bail!(
            "corrupt backup: {} unexpected bytes after the checksum",
            len.saturating_sub(r.read + TRAILER_LEN)
        );
    }
    if end.chunks != chunks {
        bail!(
            "corrupt backup: the end frame counts {} chunks, the file has {chunks}",
            end.chunks
        );
    }
    Ok(Verified {
        header,
        end,
        bytes: len,
        sha256: hex(&digest),
    })
}

// ---------------------------------------------------------------------------------------------
// CLI: keel backup
// ---------------------------------------------------------------------------------------------

/// `keel backup`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// File to write (written as FILE.partial, fsynced, then renamed)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists
    #[arg(long)]
    pub force: bool,
}

/// Run `keel backup`; returns the exit code (0 written, 1 failed: nothing left at FILE).
pub async fn run_backup(args: BackupArgs, opts: &ClientOpts) -> anyhow::Result<i32> {
    match backup_to_file(&args, opts).await {
        Ok(v) => Ok(v),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn fsync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `812 B`, `4.0 KiB`, `12.3 MiB`, `1.2 GiB`.
fn human(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", mib(b)),
        b => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

async fn backup_to_file(args: &BackupArgs, opts: &ClientOpts) -> anyhow::Result<i32> {
    use std::io::IsTerminal as _;
    let out = &args.out;
    if out.exists() && !args.force {
        bail!(
            "{} already exists: choose another --out, or pass --force to replace it",
            out.display()
        );
    }
    let base = crate::cli::normalize_addr(&opts.addr).context("check --addr")?;
    let timeout = Duration::from_millis(opts.timeout_ms);
    // No total timeout: a large backup takes as long as it takes. A stalled connection is caught
    // by the read timeout instead.
    keel_raft::network::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeout)
        .read_timeout(timeout);
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca).with_context(|| format!("read --ca {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca {}: not a PEM certificate bundle", ca.display()))?;
        if certs.is_empty() {
            bail!(
                "--ca {}: no certificate found; pass the PEM file of the CA that signed the node's certificate",
                ca.display()
            );
        }
        builder = builder.tls_certs_only(certs);
    }
    let http = builder.build().context("build http client")?;
    let mut req = http.get(format!("{base}/v1/backup"));
    if let Some(t) = opts.admin_token.as_ref().map(|t| t.expose()).filter(|t| !t.is_empty()) {
        req = req.bearer_auth(t);
    }
    let mut resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {base} (is a node running there? set --addr or KEEL_ADDR)"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match v["error"]["message"].as_str() {
            Some(m) => bail!(
                "{m} ({}, HTTP {})",
                v["error"]["code"].as_str().unwrap_or("error"),
                status.as_u16()
            ),
            None => bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
        }
    }
    let position = resp
        .headers()
        .get("keel-position")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let partial = partial_path(out);
    let mut file = std::fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut received = 0u64;
    let res: anyhow::Result<()> = async {
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("the backup stream from {base} broke after {received} bytes"))?
        {
            file.write_all(&chunk)
                .with_context(|| format!("write {}", partial.display()))?;
            received += chunk.len() as u64;
            let every = if tty {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            };
            if started.elapsed() > Duration::from_secs(2) && last_progress.elapsed() >= every {
                last_progress = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                let line = format!(
                    "backup at {position}: {:.1} MiB received in {secs:.0} s ({:.1} MiB/s)",
                    mib(received),
                    mib(received) / secs
                );
                if tty {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
            }
        }
        // Durability point of the backup: the data is on disk before it gets its final name.
        file.sync_all()
            .with_context(|| format!("fsync {}", partial.display()))?;
        Ok(())
    }
    .await;
    if tty && started.elapsed() > Duration::from_secs(2) {
        eprintln!();
    }
    drop(file);
    let verified = res.and_then(|()| {
        // Read back what is on disk: the same checks `keel restore` makes.
        scan(&partial, |_| Ok(())).with_context(|| format!("check the downloaded backup {}", partial.display()))
    });
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("rename {} to {}", partial.display(), out.display()))?;
    fsync_parent(out);
    let h = &verified.header;
    let elapsed = started.elapsed();
    if opts.output == OutputFormat::Json {
        let v = json!({
            "file": out.display().to_string(),
            "position": h.position.to_string(),
            "keys": verified.end.records,
            "bytes": verified.bytes,
            "sha256": verified.sha256,
            "cluster_id": h.cluster.cluster_id,
            "epoch": h.cluster.epoch(),
            "source_node": h.source_node,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        crate::cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        crate::cli::print_out(&format!(
            "backup written to {}\n  position  {}\n  keys      {}\n  bytes     {} ({})\n  sha256    {}\n  cluster   {} (epoch {}, from node {})\n  took      {:.1} s\n",
            out.display(),
            h.position,
            verified.end.records,
            verified.bytes,
            human(verified.bytes),
            verified.sha256,
            h.cluster.cluster_id.as_deref().unwrap_or("-"),
            h.cluster.epoch(),
            h.source_node,
            elapsed.as_secs_f64(),
        ));
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// CLI: keel restore
// ---------------------------------------------------------------------------------------------

/// `keel restore`.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Backup file written by `keel backup`
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Data dir to create for one node of the new cluster (must be absent or empty)
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Members of the new cluster, id=host:port of their peer addresses, the same list for every
    /// node and for `keel serve --peers` (e.g. 1=10.0.0.1:7201,2=10.0.0.2:7201,3=10.0.0.3:7201)
    #[arg(long)]
    pub peers: String,
    /// Id of the node that will serve this data dir (checked against --peers)
    #[arg(long)]
    pub id: Option<u64>,
    /// Restore even though DIR is not empty: its contents are moved into DIR/.before-restore-<time>/,
    /// never deleted
    #[arg(long)]
    pub force: bool,
}

/// Run `keel restore`; returns the exit code (0 restored, 1 refused or failed: DIR untouched).
pub async fn run_restore(args: RestoreArgs, output: OutputFormat) -> anyhow::Result<i32> {
    match restore(&args).await {
        Ok(report) => {
            if output == OutputFormat::Json {
                crate::cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                crate::cli::print_out(&format!(
                    "restored {} into {}\n  position  {}\n  keys      {}\n  epoch     {}\n  cluster   {} (new; backup of {})\n  sha256    {}\nstart every node of the new cluster with `keel serve ... --peers {}`\n",
                    args.from.display(),
                    args.data_dir.display(),
                    report["position"].as_str().unwrap_or(""),
                    report["keys"],
                    report["epoch"],
                    report["cluster_id"].as_str().unwrap_or(""),
                    report["source_cluster_id"].as_str().unwrap_or("-"),
                    report["sha256"].as_str().unwrap_or(""),
                    report["peers"].as_str().unwrap_or(""),
                ));
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}

/// The cluster id of a cluster restored from a backup with checksum `sha256` onto `peers`: new
/// (the restored cluster must not be mistaken for the source, whose nodes may still run), and the
/// same for every data dir restored from the same file with the same `--peers`, which is what
/// lets them form one cluster. Dirs restored with different peer lists get different ids and
/// refuse each other's traffic.
pub fn restored_cluster_id(sha256: &str, peers: &BTreeMap<NodeId, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"keel-restore\0");
    h.update(sha256.as_bytes());
    for (id, addr) in peers {
        h.update(format!("\0{id}={addr}").as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// The cluster state a restored cluster starts from: the backup's, with a new cluster id, the
/// members' API addresses cleared (each node announces its own at start) and only the members of
/// the new `peers` kept (their tags survive).
pub fn restored_state(backup: &ClusterState, cluster_id: String, peers: &BTreeMap<NodeId, String>) -> ClusterState {
    let mut s = backup.clone();
    s.cluster_id = Some(cluster_id);
    s.members.retain(|id, _| peers.contains_key(id));
    for m in s.members.values_mut() {
        m.api_addr.clear();
    }
    s
}

fn dir_is_empty(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("read data dir {}", dir.display()))?
        .next()
        .is_none())
}

async fn restore(args: &RestoreArgs) -> anyhow::Result<serde_json::Value> {
    let peers = crate::config::parse_peers(&args.peers).map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    if let Some(id) = args.id {
        if !peers.contains_key(&id) {
            bail!("--id {id} is not in --peers ({}); give this node's id", args.peers);
        }
    }
    // 1. The file: magic, version, checksum. Nothing is written before these pass.
    let from = args.from.clone();
    let sha256 = tokio::task::spawn_blocking(move || verify_checksum(&from)).await??;
    let header = read_header(&args.from)?;

    // 2. The target.
    let dir = &args.data_dir;
    let exists = dir.exists();
    if exists {
        if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        }
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(dir.join("LOCK")) {
            if f.try_lock().is_err() {
                bail!(
                    "data dir {} is in use by a running keel (its LOCK is held): stop that node first",
                    dir.display()
                );
            }
        }
    }
    let non_empty = exists && !dir_is_empty(dir)?;
    if non_empty && !args.force {
        bail!(
            "data dir {} is not empty: restore into a new or empty directory, or pass --force to move its contents aside",
            dir.display()
        );
    }

    // 3. Build the new data dir in a staging directory: next to DIR when DIR does not exist (then
    //    renamed into place in one step), else inside DIR, whose files are then moved up (DIR may
    //    be a mount point or systemd's StateDirectory, which cannot be renamed over).
    let pid = std::process::id();
    let staging = if exists {
        dir.join(format!(".keel-restoring-{pid}"))
    } else {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
        let name = dir
            .file_name()
            .with_context(|| format!("--data-dir {} has no directory name", dir.display()))?
            .to_string_lossy()
            .into_owned();
        parent.join(format!(".{name}.restoring-{pid}"))
    };
    std::fs::create_dir(&staging).with_context(|| format!("create {}", staging.display()))?;
    let cluster_id = restored_cluster_id(&sha256, &peers);
    let built = build_staging(&staging, &args.from, &sha256, &header, &peers, &cluster_id).await;
    if let Err(e) = built {
        // Only the staging directory was written: remove it and DIR is as it was.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    // 4. Into place.
    let mut moved_aside = None;
    if !exists {
        if let Err(e) = std::fs::rename(&staging, dir) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e).with_context(|| format!("move the restored data into {}", dir.display()));
        }
    } else {
        let staging_name = staging.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        if non_empty {
            // --force: keep everything that was there, inside DIR, never delete it.
            let aside = dir.join(format!(".before-restore-{}", unix_ms()));
            std::fs::create_dir(&aside).with_context(|| format!("create {}", aside.display()))?;
            for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
                let entry = entry.with_context(|| format!("read {}", dir.display()))?;
                let name = entry.file_name();
                if name == staging_name || entry.path() == aside {
                    continue;
                }
                std::fs::rename(entry.path(), aside.join(&name))
                    .with_context(|| format!("move {} aside into {}", entry.path().display(), aside.display()))?;
            }
            moved_aside = Some(aside);
        }
        for f in std::fs::read_dir(&staging).with_context(|| format!("read {}", staging.display()))? {
            let f = f.with_context(|| format!("read {}", staging.display()))?;
            std::fs::rename(f.path(), dir.join(f.file_name())).with_context(|| {
                format!(
                    "move {} into {} (run the restore again with --force)",
                    f.path().display(),
                    dir.display()
                )
            })?;
        }
        std::fs::remove_dir(&staging).with_context(|| format!("remove {}", staging.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    fsync_parent(dir);
    info!(dir = %dir.display(), position = %header.position, "restored a backup");
    Ok(json!({
        "data_dir": dir.display().to_string(),
        "position": header.position.to_string(),
        "keys": header.keys,
        "epoch": header.cluster.epoch(),
        "cluster_id": cluster_id,
        "source_cluster_id": header.cluster.cluster_id,
        "sha256": sha256,
        "peers": args.peers,
        "moved_aside": moved_aside.map(|p| p.display().to_string()),
    }))
}

async fn build_staging(
    staging: &Path,
    from: &Path,
    sha256: &str,
    header: &BackupHeader,
    peers: &BTreeMap<NodeId, String>,
    cluster_id: &str,
) -> anyhow::Result<()> {
    // The datastore: the backup's chunks through the same installer a resyncing replica uses.
    let data_path = staging.join("data.redb");
    let from_owned = from.to_path_buf();
    let (verified, pos) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Verified, Position)> {
        let store = keel_replication::DataStore::open(&data_path)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", data_path.display()))?;
        let mut inst = store
            .begin_install()
            .map_err(|e| anyhow::anyhow!("start the datastore install: {e}"))?;
        let verified = scan(&from_owned, |chunk| {
            inst.push_chunk(chunk)
                .map_err(|e| anyhow::anyhow!("install a datastore chunk: {e}"))
        })?;
        let pos = inst
            .finish()
            .map_err(|e| anyhow::anyhow!("finish the datastore install: {e}"))?;
        Ok((verified, pos))
    })
    .await??;
    if verified.sha256 != sha256 {
        bail!("the backup file changed while it was being restored; try again");
    }
    if pos != header.position {
        bail!(
            "corrupt backup: the datastore snapshot is at {pos}, the header says {}",
            header.position
        );
    }

    // The Raft state: installed as a snapshot of log index 0 covering the membership from
    // --peers and the backup's cluster state. openraft treats the empty log below it as purged, so
    // the nodes start initialised (no bootstrap) and a member added later gets this snapshot, not
    // a replay of a log that never held the restored state. Identical on every node restored from
    // the same file with the same --peers.
    let state = restored_state(&header.cluster, cluster_id.to_string(), peers);
    let (_log, mut sm) = keel_raft::store::open(staging).context("create the raft stores")?;
    let log_id = LogId::<NodeId>::default();
    let nodes: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes));
    let view = StateView {
        last_applied: Some(log_id),
        membership: membership.clone(),
        state,
    };
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: format!("restore-{}", &sha256[..16]),
    };
    sm.install_snapshot(&meta, Box::new(std::io::Cursor::new(keel_raft::codec::encode(&view))))
        .await
        .map_err(|e| anyhow::anyhow!("write the restored cluster state: {e}"))?;
    drop(sm);

    // A note for operators: where this data dir came from.
    let from_abs = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    let note = json!({
        "restored_from": from_abs.display().to_string(),
        "sha256": sha256,
        "position": header.position.to_string(),
        "source_cluster_id": header.cluster.cluster_id,
        "source_node": header.source_node,
        "backup_created_at_ms": header.created_at_ms,
        "cluster_id": cluster_id,
        "restored_at_ms": unix_ms(),
    });
    let note_path = staging.join("RESTORED.json");
    std::fs::write(&note_path, format!("{}\n", serde_json::to_string_pretty(&note)?))
        .with_context(|| format!("write {}", note_path.display()))?;
    for f in ["RESTORED.json", "data.redb", "raft-state.redb", "raft-log.redb"] {
        if let Ok(file) = std::fs::File::open(staging.join(f)) {
            file.sync_all().with_context(|| format!("fsync {f}"))?;
        }
    }
    if let Ok(d) = std::fs::File::open(staging) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_cluster_id_depends_on_file_and_peers() {
        let p1: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
        let mut p2 = p1.clone();
        p2.insert(3, "c:1".into());
        let a = restored_cluster_id("00ff", &p1);
        assert_eq!(a.len(), 32);
        assert_eq!(a, restored_cluster_id("00ff", &p1), "deterministic");
        assert_ne!(a, restored_cluster_id("00fe", &p1));
        assert_ne!(a, restored_cluster_id("00ff", &p2));
    }

    #[test]
    fn restored_state_keeps_epoch_history_and_tags() {
        use keel_raft::state::{MemberMeta, PrimaryRecord, Request, Tags};
        let mut s = ClusterState::default();
        s.apply(&Request::InitClusterId {
            cluster_id: "old".into(),
        });
        for (id, prio) in [(1, 0), (2, 5), (9, 1)] {
            s.members.insert(
                id,
                MemberMeta {
                    api_addr: format!("h{id}:1"),
                    tags: Tags {
                        nofailover: false,
                        priority: prio,
                    },
                },
            );
        }
        for e in 1..=3 {
            s.apply(&Request::Promote {
                node: 2,
                epoch: e,
                reason: "t".into(),
                at_ms: 0,
            });
        }
        let peers: BTreeMap<u64, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
        let r = restored_state(&s, "new".into(), &peers);
        assert_eq!(r.cluster_id.as_deref(), Some("new"));
        assert_eq!(r.primary, Some(PrimaryRecord { node: 2, epoch: 3 }));
        assert_eq!(r.history, s.history);
        assert_eq!(r.members.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(r.members[&2].tags.priority, 5);
        assert!(r.members.values().all(|m| m.api_addr.is_empty()));
    }

    /// A backup file of a real datastore snapshot, as the server frames it.
    fn sample_file(dir: &Path) -> (PathBuf, keel_replication::DataStore) {
        let store = keel_replication::DataStore::open(&dir.join("src.redb")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Concurrent writes: the writer group-commits them (one fsync instead of 24).
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..24u32 {
                let (store, op) = (
                    store.clone(),
                    keel_replication::WriteOp::Put {
                        key: format!("k/{i:03}"),
                        value: vec![i as u8; 100_000],
                    },
                );
                set.spawn(async move { store.write(1, op).await.unwrap() });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
        });
        let mut reader = store.snapshot().unwrap();
        let header = BackupHeader {
            created_at_ms: 1,
            keel_version: "test".into(),
            source_node: 1,
            position: reader.position(),
            keys: reader.keys(),
            raft_last_applied: None,
            cluster: ClusterState::default(),
            membership: vec![],
        };
        let mut framer = Framer::default();
        let mut bytes = framer.header(&header);
        while let Some(c) = reader.next_chunk().unwrap() {
            bytes.extend(framer.data(&c));
        }
        let (tail, sum, size) = framer.finish(reader.records_sent());
        bytes.extend(tail);
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(sum, hex(&Sha256::digest(&bytes[..bytes.len() - 32])));
        let path = dir.join("b.keelbak");
        std::fs::write(&path, &bytes).unwrap();
        (path, store)
    }

    #[test]
    fn framed_file_verifies_and_installs_and_every_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, src) = sample_file(dir.path());
        let sum = verify_checksum(&path).unwrap();
        let dst = keel_replication::DataStore::open(&dir.path().join("dst.redb")).unwrap();
        let mut inst = dst.begin_install().unwrap();
        let v = scan(&path, |c| inst.push_chunk(c).map_err(|e| anyhow::anyhow!("{e}"))).unwrap();
        assert_eq!(v.sha256, sum);
        assert!(
            v.end.chunks >= 3,
            "2.4 MB of values: several chunks, got {}",
            v.end.chunks
        );
        assert_eq!((v.end.records, v.header.keys), (24, 24));
        assert_eq!(inst.finish().unwrap(), src.position());
        for i in [0u32, 17, 23] {
            let key = format!("k/{i:03}");
            assert_eq!(dst.get(&key).unwrap().unwrap().0, vec![i as u8; 100_000]);
        }

        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.keelbak");
        // A flipped bit anywhere after the preamble fails the checksum; in the preamble it is
        // "not a Keel backup" or another format version. Never a panic, never an Ok.
        for at in [8, 9, 14, good.len() / 2, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x10;
            std::fs::write(&bad, &b).unwrap();
            let e = verify_checksum(&bad).unwrap_err().to_string();
            assert!(
                e.contains("checksum") || e.contains("format version") || e.contains("not a Keel backup"),
                "byte {at}: {e}"
            );
            assert!(scan(&bad, |_| Ok(())).is_err(), "byte {at}");
        }
        // Truncated anywhere, or with bytes appended.
        for len in [0, 9, 20, good.len() / 3, good.len() - 1] {
            std::fs::write(&bad, &good[..len]).unwrap();
            assert!(verify_checksum(&bad).is_err(), "truncated to {len}");
            assert!(scan(&bad, |_| Ok(())).is_err(), "truncated to {len}");
        }
        let mut longer = good.clone();
        longer.extend_from_slice(b"extra");
        std::fs::write(&bad, &longer).unwrap();
        assert!(verify_checksum(&bad).is_err());
        assert!(scan(&bad, |_| Ok(())).is_err());
    }
}
