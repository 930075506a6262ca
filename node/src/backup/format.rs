//! The backup file format: frames, header and end records, and reading and checking a file
//! (magic, version, checksum) before anything is written.

use super::*;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"KEELBKUP";
/// Version of the file layout above. Bump it (and keep reading the old one) when the layout or the
/// meaning of a frame changes; the header and end frames carry keel-raft's codec version too.
pub const BACKUP_FORMAT: u8 = 1;
pub(crate) const KIND_HEADER: u8 = b'H';
pub(crate) const KIND_DATA: u8 = b'D';
pub(crate) const KIND_END: u8 = b'E';
/// Largest frame accepted: a datastore chunk is about 1 MiB, or one record of up to 1 MiB.
pub(crate) const MAX_FRAME: usize = 16 << 20;
pub(crate) const TRAILER_LEN: u64 = 32;
/// How long the backup endpoint waits for this node's cluster state to reach the epoch of its
/// datastore position (a replica may apply entries of a new epoch before it applied the promotion).
pub(crate) const STATE_CATCH_UP: Duration = Duration::from_secs(5);

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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 5);
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Produces the pieces of a backup file in order (see the module doc), hashing and counting them.
#[derive(Default)]
pub(crate) struct Framer {
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
    pub(crate) fn header(&mut self, header: &BackupHeader) -> Vec<u8> {
        let mut head = MAGIC.to_vec();
        head.push(BACKUP_FORMAT);
        head.extend(frame(KIND_HEADER, &keel_raft::codec::encode(header)));
        self.out(head)
    }

    /// One datastore snapshot chunk.
    pub(crate) fn data(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.chunks += 1;
        self.out(frame(KIND_DATA, chunk))
    }

    /// The end frame and the SHA-256 trailer; also the checksum (hex) and the file's size.
    pub(crate) fn finish(mut self, records: u64) -> (Vec<u8>, String, u64) {
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
pub(crate) struct HashingReader<R> {
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

pub(crate) fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str, at: u64) -> anyhow::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            anyhow::anyhow!("the backup file is truncated: it ends inside {what} (at byte {at})")
        } else {
            anyhow::anyhow!("read {what}: {e}")
        }
    })
}

/// Check the magic and the format version (the first 9 bytes).
pub(crate) fn check_preamble(r: &mut impl Read, path: &Path) -> anyhow::Result<()> {
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

pub(crate) fn read_frame(r: &mut impl Read, at: u64) -> anyhow::Result<(u8, Vec<u8>)> {
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
