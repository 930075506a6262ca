//! `keel backup --out FILE`: fetch a backup from a node into a file, atomically (a partial file is
//! renamed into place only when complete and checked).

use super::*;

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

pub(crate) fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

pub(crate) fn fsync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `812 B`, `4.0 KiB`, `12.3 MiB`, `1.2 GiB`.
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", mib(b)),
        b => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

/// `GET {base}/v1/backup` with the client options (CA, token, timeouts), answered 2xx: the stream.
async fn open_backup_stream(base: &str, opts: &ClientOpts) -> anyhow::Result<reqwest::Response> {
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
    // The admin token; a node without one takes a data-plane token for a backup (`--token`).
    let token = [&opts.admin_token, &opts.token]
        .into_iter()
        .flatten()
        .map(|t| t.expose())
        .find(|t| !t.is_empty());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
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
    Ok(resp)
}

pub(crate) async fn backup_to_file(args: &BackupArgs, opts: &ClientOpts) -> anyhow::Result<i32> {
    use std::io::IsTerminal as _;
    let out = &args.out;
    if out.exists() && !args.force {
        bail!(
            "{} already exists: choose another --out, or pass --force to replace it",
            out.display()
        );
    }
    let base = crate::cli::normalize_addr(&opts.addr).context("check --addr")?;
    let mut resp = open_backup_stream(&base, opts).await?;
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
