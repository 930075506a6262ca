//! TLS on both listeners, mutual TLS between peers, certificate reload, and the CLI's `--ca`.
//!
//! Certificates are generated per test with rcgen (a CA, and one leaf per node naming the cluster's
//! loopback IP), written to the test's temp dir, and handed to real `keel serve` processes. A raw rustls
//! client looks at the handshakes themselves: which certificate a listener serves, and whether the peer
//! port lets a client without a certificate from the cluster CA through.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_testkit::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// A certificate authority that signs node certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A node certificate for `ip` (and localhost), usable as server and client certificate:
    /// (certificate PEM, key PEM).
    fn leaf(&self, name: &str, ip: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![ip.to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }
}

/// Write a leaf to `dir/{name}.crt` and `.key`; returns the two paths.
fn write_leaf(dir: &Path, name: &str, leaf: &(String, String)) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    replace_file(&crt, &leaf.0);
    replace_file(&key, &leaf.1);
    (crt, key)
}

/// Replace a file the way deploy tools do: write a temp file next to it, then rename over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(ca_pem)).unwrap();
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A raw rustls client config trusting `ca_pem`, presenting `client` (cert, key PEM) if given.
fn raw_client(ca_pem: &str, client: Option<&(String, String)>, tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca_pem));
    Arc::new(match client {
        Some((crt, key)) => builder
            .with_client_auth_cert(
                vec![der_of(crt)],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// What a raw TLS connection to `addr` got.
#[derive(Debug)]
enum Outcome {
    /// The handshake passed and an HTTP answer came back; the served certificate.
    Http { status_line: String, served: Vec<u8> },
    /// No HTTP answer: the handshake (or the first read, where TLS 1.3 reports a refused client
    /// certificate) failed with this error.
    Refused(String),
}

/// Connect with a raw rustls client, send `GET /health`, and report what happened.
async fn raw_get(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Outcome {
    let run = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].to_vec())
            .unwrap_or_default();
        let req = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let res = tls.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        match text.lines().next() {
            Some(line) if line.starts_with("HTTP/1.1 ") => Ok(Outcome::Http {
                status_line: line.to_string(),
                served,
            }),
            _ => Err(format!("no HTTP answer: {res:?}, {} bytes", buf.len())),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Refused(e),
        Err(_) => Outcome::Refused("timed out".to_string()),
    }
}

/// The certificate `addr` serves to a client trusting `ca_pem` (DER).
async fn served_cert(addr: SocketAddr, ca_pem: &str, client: Option<&(String, String)>) -> Option<Vec<u8>> {
    match raw_get(addr, raw_client(ca_pem, client, false)).await {
        Outcome::Http { served, .. } => Some(served),
        Outcome::Refused(_) => None,
    }
}

/// An https client for the test itself, trusting `ca_pem` only.
fn https_client(ca_pem: &str) -> reqwest::Client {
    keel_raft::network::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// A cluster of `n` TLS nodes, each with its own certificate from `ca`, all with `--peer-ca` = `ca`.
/// Returns the cluster (its `http` trusts the CA) and each node's (cert, key) PEM.
fn tls_cluster(n: u64, ca: &Ca, common_flags: &[&str]) -> (Cluster, Vec<(String, String)>) {
    let mut c = Cluster::new(n, common_flags);
    let dir = c.dir.path().to_path_buf();
    let ca_path = dir.join("ca.pem");
    ca.write(&ca_path);
    let mut leaves = Vec::new();
    for id in 1..=n {
        let leaf = ca.leaf(&format!("node-{id}"), &c.ip);
        let (crt, key) = write_leaf(&dir, &format!("node-{id}"), &leaf);
        leaves.push(leaf);
        let node = &mut c.nodes[(id - 1) as usize];
        node.scheme = "https";
        node.extra.extend([
            "--tls-cert".to_string(),
            crt.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
            "--peer-ca".to_string(),
            ca_path.display().to_string(),
        ]);
    }
    c.http = https_client(&ca.pem);
    (c, leaves)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_elects_replicates_and_serves_the_cli() {
    let ca = Ca::new("keel test CA");
    let (mut c, _) = tls_cluster(3, &ca, &["--cluster-token", "peer-secret"]);
    c.start_all();
    c.wait_leader(&[1, 2, 3], T).await;
    let p = c.wait_primary(&[], T).await;
    let replicas: Vec<u64> = (1..=3).filter(|id| *id != p).collect();

    // A write on the primary reaches both replicas over the mTLS peer port.
    let r = c.put(p, "greeting", "hello over tls").await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    for id in &replicas {
        c.wait_value(T, *id, "greeting", "hello over tls").await;
        // Through the replication stream, the HTTP upgrade inside the TLS connection.
        let st = c.status(*id).await.unwrap();
        assert_eq!(st["replication"]["replica"]["transport"], "stream", "{st}");
    }
    // A write sent to a replica is forwarded to the primary's https API.
    let r = c.put(replicas[0], "forwarded", "via replica").await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    c.wait_value(T, replicas[1], "forwarded", "via replica").await;

    // Every member is reachable from every other (the peer client presents its cert and trusts the CA).
    c.wait_for(T, "all members reachable from node 1", || async {
        let v = c.get(1, "/v1/cluster").await?;
        let members = v["members"].as_array()?;
        (members.len() == 3 && members.iter().all(|m| m["reachable"] == Value::Bool(true))).then_some(())
    })
    .await;

    // The CLI: with --ca it works, over https, including `status` that asks every member.
    let ca_path = c.dir.path().join("ca.pem").display().to_string();
    let addr = c.node(replicas[0]).url();
    let o = c.cli(&["--addr", &addr, "--ca", &ca_path, "kv", "get", "greeting"]);
    assert!(o.status.success(), "stdout {} stderr {}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).trim(), "hello over tls");
    let o = c.cli(&["--addr", &addr, "--ca", &ca_path, "status"]);
    assert_eq!(o.status.code(), Some(0), "stdout {} stderr {}", stdout(&o), stderr(&o));
    // KEEL_CA works like --ca.
    let o = std::process::Command::new(keel_bin())
        .args(["--addr", &addr, "kv", "get", "forwarded"])
        .env_remove("KEEL_ADDR")
        .env("KEEL_CA", &ca_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "stderr {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "via replica");

    // Without --ca the node's certificate is not trusted, and the error says what to do.
    let o = c.cli(&["--addr", &addr, "kv", "get", "greeting"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("certificate not trusted: pass --ca FILE"), "{err}");
    // A --ca from another CA: same.
    let other = Ca::new("other CA");
    let other_path = c.dir.path().join("other-ca.pem");
    other.write(&other_path);
    let o = c.cli(&["--addr", &addr, "--ca", &other_path.display().to_string(), "status"]);
    assert_eq!(o.status.code(), Some(2), "status exits critical when it cannot ask");
    assert!(stderr(&o).contains("pass --ca FILE"), "{}", stderr(&o));
    // A --ca file that is not PEM.
    let junk = c.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let o = c.cli(&["--addr", &addr, "--ca", &junk.display().to_string(), "status"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("no `-----BEGIN CERTIFICATE-----` block"),
        "{}",
        stderr(&o)
    );

    // Plain http to either TLS listener fails, with an error that says to use https.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for a in [c.node(1).api, c.node(1).peer] {
        let r = plain.get(format!("http://{a}/health")).send().await.unwrap();
        assert_eq!(r.status(), 400, "plain http to {a}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "tls_required", "{v}");
    }
    let o = c.cli(&["--addr", &format!("http://{}", c.node(1).api), "kv", "get", "greeting"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("use https://"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_refuses_clients_without_a_cert_from_the_cluster_ca() {
    let ca = Ca::new("keel test CA");
    let (mut c, leaves) = tls_cluster(3, &ca, &[]);
    // Node 3 trusts the cluster CA but its own certificate comes from another CA: it must not be able
    // to take part, in either direction.
    let foreign_ca = Ca::new("foreign CA");
    let foreign = foreign_ca.leaf("intruder", &c.ip);
    let (crt, key) = write_leaf(c.dir.path(), "node-3", &foreign);
    assert!(c.nodes[2].extra.contains(&crt.display().to_string()));
    assert!(c.nodes[2].extra.contains(&key.display().to_string()));
    c.start_all();
    c.wait_leader(&[1, 2], T).await;
    let p = c.wait_primary(&[3], T).await;
    assert!(c.put(p, "k", "v").await.status().is_success());

    let peer = c.node(1).peer;
    let api = c.node(1).api;
    // Raw handshakes against the peer port, TLS 1.3 (default) and TLS 1.2.
    for tls12 in [false, true] {
        let no_cert = raw_get(peer, raw_client(&ca.pem, None, tls12)).await;
        assert!(
            matches!(no_cert, Outcome::Refused(_)),
            "no client cert (tls12={tls12}): {no_cert:?}"
        );
        let foreign_cert = raw_get(peer, raw_client(&ca.pem, Some(&foreign), tls12)).await;
        assert!(
            matches!(foreign_cert, Outcome::Refused(_)),
            "foreign client cert (tls12={tls12}): {foreign_cert:?}"
        );
        // The control: a certificate from the cluster CA gets through the handshake (the peer port has
        // no /health route; any HTTP answer means the handshake passed).
        let good = raw_get(peer, raw_client(&ca.pem, Some(&leaves[1]), tls12)).await;
        assert!(
            matches!(good, Outcome::Http { .. }),
            "cluster cert (tls12={tls12}): {good:?}"
        );
    }
    // In TLS 1.2 the refusal is the handshake itself failing.
    match raw_get(peer, raw_client(&ca.pem, None, true)).await {
        Outcome::Refused(e) => assert!(e.starts_with("handshake:"), "{e}"),
        o => panic!("{o:?}"),
    }
    // The API port asks for no client certificate.
    match raw_get(api, raw_client(&ca.pem, None, false)).await {
        Outcome::Http { status_line, .. } => assert!(status_line.contains("200"), "{status_line}"),
        o => panic!("api without client cert: {o:?}"),
    }

    // Node 3 stays outside: nodes 1 and 2 see it unreachable, it never learns the leader or any
    // log entry, and the refusals are logged.
    let http3 = https_client(&foreign_ca.pem);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let v = c.get(1, "/v1/cluster").await.expect("cluster view of node 1");
        let m3 = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == 3)
            .cloned()
            .unwrap();
        assert_eq!(m3["reachable"], Value::Bool(false), "{m3}");
        // Node 3's API serves its foreign certificate: ask it with a client trusting that CA.
        let s3: Value = http3
            .get(format!("{}/v1/status", c.node(3).url()))
            .send()
            .await
            .expect("node 3 answers its own API")
            .json()
            .await
            .unwrap();
        assert!(s3["raft"]["leader"].is_null(), "node 3 learned a leader: {s3}");
        assert!(s3["primary"].is_null(), "node 3 learned the primary: {s3}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.wait_for(T, "a logged handshake refusal on node 1 or 2", || async {
        (c.log(1) + &c.log(2)).contains("TLS handshake refused").then_some(())
    })
    .await;
}

/// Whether one line of node `id`'s log contains all of `parts` (field names may carry colour codes).
fn has_line(c: &Cluster, id: u64, parts: &[&str]) -> bool {
    c.log(id).lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// Send SIGHUP to node `id`.
fn sighup(c: &Cluster, id: u64) {
    let pid = c.node(id).child.as_ref().unwrap().id();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_served(c: &Cluster, what: &str, addr: SocketAddr, ca: &str, client: &(String, String), want: &str) {
    let want = der_of(want).to_vec();
    c.wait_for(T, what, || async {
        (served_cert(addr, ca, Some(client)).await? == want).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_on_file_change() {
    let ca = Ca::new("keel test CA");
    let (mut c, leaves) = tls_cluster(1, &ca, &[]);
    c.start_all();
    c.wait_leader(&[1], T).await;
    let dir = c.dir.path().to_path_buf();
    let (api, peer) = (c.node(1).api, c.node(1).peer);
    let client = ca.leaf("client", &c.ip);
    for a in [api, peer] {
        wait_served(&c, "the first certificate", a, &ca.pem, &client, &leaves[0].0).await;
    }

    // A stream opened before the reload: it keeps working afterwards.
    let before = c
        .http
        .get(format!("{}/v1/status", c.node(1).url()))
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);

    // 1. New files + SIGHUP: new connections on both listeners get the new certificate. A signal gets
    // there well before the 2 s poll, so check within 1.5 s of sending it.
    let second = ca.leaf("node-1 v2", &c.ip);
    write_leaf(&dir, "node-1", &second);
    sighup(&c, 1);
    let t0 = Instant::now();
    for a in [api, peer] {
        wait_served(&c, "the certificate after SIGHUP", a, &ca.pem, &client, &second.0).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "SIGHUP reload took {:?}",
        t0.elapsed()
    );
    assert!(
        has_line(&c, 1, &["TLS certificates reloaded", "\"SIGHUP\""]),
        "{}",
        c.log(1)
    );
    assert_eq!(
        c.status(1).await.unwrap()["node_id"],
        1,
        "still serving over the pooled client"
    );

    // 2. Only the files change (no signal): the poll picks them up.
    let third = ca.leaf("node-1 v3", &c.ip);
    write_leaf(&dir, "node-1", &third);
    for a in [api, peer] {
        wait_served(&c, "the certificate after a file change", a, &ca.pem, &client, &third.0).await;
    }
    assert!(
        has_line(&c, 1, &["TLS certificates reloaded", "\"file change\""]),
        "{}",
        c.log(1)
    );

    // 3. A bad new file (not PEM) is logged and the old certificate kept.
    std::fs::write(dir.join("node-1.crt"), "garbage\n").unwrap();
    sighup(&c, 1);
    c.wait_for(T, "the failed reload in the log", || async {
        c.log(1).contains("TLS certificates not reloaded").then_some(())
    })
    .await;
    assert_eq!(served_cert(api, &ca.pem, None).await, Some(der_of(&third.0).to_vec()));
    // 4. A certificate that does not match the key: also refused, old one kept.
    let fourth = ca.leaf("node-1 v4", &c.ip);
    replace_file(&dir.join("node-1.crt"), &fourth.0);
    sighup(&c, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_cert(peer, &ca.pem, Some(&client)).await,
        Some(der_of(&third.0).to_vec())
    );
    assert!(c.log(1).contains("does not belong to the certificate"), "{}", c.log(1));
    // 5. The matching key arrives: the next poll loads the pair.
    replace_file(&dir.join("node-1.key"), &fourth.1);
    wait_served(
        &c,
        "the certificate once its key arrived",
        api,
        &ca.pem,
        &client,
        &fourth.0,
    )
    .await;
    // The node stayed up all along.
    assert!(c.node(1).child.is_some());
    c.wait_leader(&[1], T).await;
}

/// Run `cmd` to completion, killing it (and failing) if it runs for more than 20 s.
fn run_bounded(mut cmd: std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("keel did not exit within 20 s: {}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_tls_settings_are_refused_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    let (crt, key) = write_leaf(dir.path(), "n", &ca.leaf("n", "127.0.0.1"));
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem\n").unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.leaf("x", "127.0.0.1").1).unwrap();
    let (crt, key, junk, other_key) = (
        crt.display().to_string(),
        key.display().to_string(),
        junk.display().to_string(),
        other_key.display().to_string(),
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    let ip = process_ip();
    let base = |data: &str| {
        vec![
            "serve".to_string(),
            "--id".into(),
            "1".into(),
            "--peers".into(),
            format!("1={ip}:{}", free_port(&ip)),
            "--api-addr".into(),
            format!("{ip}:{}", free_port(&ip)),
            "--data-dir".into(),
            dir.path().join(data).display().to_string(),
        ]
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--tls-cert", &crt], 2, "--tls-cert is set but --tls-key is not"),
        (vec!["--tls-key", &key], 2, "--tls-key is set but --tls-cert is not"),
        (vec!["--peer-ca", &crt], 2, "--peer-ca needs --tls-cert and --tls-key"),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            2,
            "is not a readable file",
        ),
        (
            vec!["--tls-cert", &junk, "--tls-key", &key],
            1,
            "no `-----BEGIN CERTIFICATE-----` block found",
        ),
        (vec!["--tls-cert", &crt, "--tls-key", &junk], 1, "no PEM private key"),
        (
            vec!["--tls-cert", &crt, "--tls-key", &other_key],
            1,
            "does not belong to the certificate",
        ),
        (
            vec!["--tls-cert", &crt, "--tls-key", &key, "--peer-ca", &junk],
            1,
            "--peer-ca",
        ),
    ];
    for (i, (flags, code, msg)) in cases.into_iter().enumerate() {
        let mut args = base(&format!("d{i}"));
        args.extend(flags.iter().map(|s| s.to_string()));
        let mut cmd = std::process::Command::new(keel_bin());
        cmd.args(&args);
        for var in ["KEEL_TLS_CERT", "KEEL_TLS_KEY", "KEEL_PEER_CA"] {
            cmd.env_remove(var);
        }
        let o = run_bounded(cmd);
        assert_eq!(o.status.code(), Some(code), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{flags:?}: want {msg:?} in {}", stderr(&o));
    }
    // The same settings from the environment and from the TOML file (flag > env > file).
    let exits_2_saying = |cmd, msg: &str| {
        let o = run_bounded(cmd);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{}", stderr(&o));
    };
    let toml = dir.path().join("keel.toml");
    std::fs::write(&toml, format!("tls_cert = {crt:?}\n")).unwrap();
    let mut args = base("file");
    args.extend(["--config".to_string(), toml.display().to_string()]);
    let mut cmd = std::process::Command::new(keel_bin());
    cmd.args(&args).env_remove("KEEL_TLS_CERT").env_remove("KEEL_TLS_KEY");
    exits_2_saying(cmd, "--tls-cert is set but --tls-key is not");
    let mut cmd = std::process::Command::new(keel_bin());
    cmd.args(base("env"))
        .env("KEEL_TLS_KEY", &key)
        .env_remove("KEEL_TLS_CERT");
    exits_2_saying(cmd, "--tls-key is set but --tls-cert is not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_peer_ca_verifies_peers_with_the_system_trust_store() {
    let ca = Ca::new("keel test CA");
    let (mut c, leaves) = tls_cluster(3, &ca, &["--cluster-token", "peer-secret"]);
    // No --peer-ca: drop it from every node's flags.
    for n in &mut c.nodes {
        let i = n.extra.iter().position(|a| a == "--peer-ca").unwrap();
        n.extra.drain(i..i + 2);
    }
    // The "system trust store" of these nodes is our CA: rustls-native-certs reads SSL_CERT_FILE.
    let ca_path = c.dir.path().join("ca.pem");
    for id in 1..=3u64 {
        let args = c.serve_args(id, Some(3));
        let log = std::fs::File::create(&c.node(id).log).unwrap();
        let child = std::process::Command::new(keel_bin())
            .args(&args)
            .env("RUST_LOG", "info,openraft=warn")
            .env("SSL_CERT_FILE", &ca_path)
            .env_remove("SSL_CERT_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        c.nodes[(id - 1) as usize].child = Some(child);
    }
    c.wait_leader(&[1, 2, 3], T).await;
    let p = c.wait_primary(&[], T).await;
    assert!(c.put(p, "k", "over https").await.status().is_success());
    for id in (1..=3).filter(|id| *id != p) {
        c.wait_value(T, id, "k", "over https").await;
    }
    assert!(has_line(&c, 1, &["node started", "\"on\""]), "{}", c.log(1));
    // Without --peer-ca the peer port asks for no client certificate (the token still guards it).
    match raw_get(c.node(1).peer, raw_client(&ca.pem, None, false)).await {
        Outcome::Http { status_line, served } => {
            assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
            assert_eq!(served, der_of(&leaves[0].0).to_vec());
        }
        o => panic!("peer port without client cert: {o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_up_tls_runs_an_mtls_cluster_with_a_throwaway_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let mut up = KeelUp::start(
        &["up", "--tls", "--data-dir", data.to_str().unwrap()],
        &dir.path().join("up.out"),
    );
    // Ready: the banner names the HTTPS API of node 1.
    let api = poll_until(Duration::from_secs(40), Duration::from_millis(100), || async {
        let text = up.output();
        let line = text.lines().find(|l| l.trim_start().starts_with("n1  api https://"))?;
        Some(
            line.split_whitespace()
                .nth(2)?
                .trim_start_matches("https://")
                .to_string(),
        )
    })
    .await
    .unwrap_or_else(|| panic!("keel up --tls did not come up:\n{}", up.output()));
    let banner = up.output();
    let ca = data.join("tls").join("ca.pem");
    let ca_arg = ca.display().to_string();
    assert!(
        banner.contains(&format!("keel status --addr https://{api} --ca {ca_arg}")),
        "{banner}"
    );

    // The CLI with the generated CA sees a healthy three-node cluster; without it, a clear refusal.
    let status = |with_ca: bool| {
        let mut cmd = std::process::Command::new(keel_bin());
        cmd.args(["status", "--addr", &format!("https://{api}")])
            .env_remove("KEEL_ADDR")
            .env_remove("KEEL_CA");
        if with_ca {
            cmd.args(["--ca", &ca_arg]);
        }
        run_bounded(cmd)
    };
    let o = status(true);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("healthy"), "{}", stdout(&o));
    let o = status(false);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("--ca"), "{}", stderr(&o));

    // Plain HTTPS trusting only that CA.
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let cluster: Value = https_client(&ca_pem)
        .get(format!("https://{api}/v1/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3), "{cluster}");

    // Mutual TLS between peers: the peer port lets in a node's certificate, not a client without one.
    let peer: SocketAddr = cluster["members"][0]["peer_addr"].as_str().unwrap().parse().unwrap();
    let leaf = (
        std::fs::read_to_string(data.join("tls/node-2.crt")).unwrap(),
        std::fs::read_to_string(data.join("tls/node-2.key")).unwrap(),
    );
    assert!(served_cert(peer, &ca_pem, Some(&leaf)).await.is_some());
    assert!(served_cert(peer, &ca_pem, None).await.is_none());

    // Ctrl-C / SIGTERM stops every node cleanly.
    assert_eq!(up.stop(), Some(0), "{}", up.output());
    let text = up.output();
    for id in 1..=3 {
        assert!(text.contains(&format!("[n{id}] stopped: exit status: 0")), "{text}");
    }
}
