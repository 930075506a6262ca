//! `keel up --tls`: a throwaway certificate authority and one certificate per node, in
//! `<data-dir>/tls/` (`ca.pem`, `node-N.crt`, `node-N.key`).
//!
//! Each node serves its certificate on both ports (`--tls-cert`, `--tls-key`) and requires one
//! signed by the same CA from peers (`--peer-ca`, mutual TLS). Every certificate names `127.0.0.1`
//! and `localhost`, where `keel up` runs its nodes, and serves as server and client certificate.
//! The CA's private key is not kept: the files are made once, when any is missing, and reused by the
//! next `keel up --tls` on the same data dir, so a `--ca` path the user saved stays valid. This is
//! for trying TLS out locally, not for production certificates.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Folder of the certificates, under the `keel up` data dir.
pub(super) const TLS_DIR: &str = "tls";
/// Names every node certificate carries: the loopback address the nodes listen on, and localhost.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Where the certificates of a `keel up --tls` cluster are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpTls {
    dir: PathBuf,
}

impl UpTls {
    pub(super) fn new(data_dir: &Path) -> UpTls {
        UpTls {
            dir: data_dir.join(TLS_DIR),
        }
    }

    /// The CA certificate: `--peer-ca` of every node, `--ca` of the CLI.
    pub(super) fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.crt"))
    }

    fn key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }

    /// The `keel serve` flags of node `id`.
    pub(super) fn serve_flags(&self, id: u64) -> Vec<OsString> {
        vec![
            "--tls-cert".into(),
            self.cert(id).into(),
            "--tls-key".into(),
            self.key(id).into(),
            "--peer-ca".into(),
            self.ca().into(),
        ]
    }

    fn files(&self, ids: &[u64]) -> Vec<PathBuf> {
        let mut files = vec![self.ca()];
        for id in ids {
            files.push(self.cert(*id));
            files.push(self.key(*id));
        }
        files
    }

    /// Makes a new CA and certificates for the nodes `ids` unless every file is there already;
    /// true when it made them.
    pub(super) fn ensure(&self, ids: &[u64]) -> anyhow::Result<bool> {
        if self.files(ids).iter().all(|f| f.is_file()) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("create {}", self.dir.display()))?;
        let ca = Ca::new().context("make the throwaway CA")?;
        for id in ids {
            let (cert, key) = ca
                .leaf(&format!("keel node {id}"))
                .with_context(|| format!("make the certificate of node {id}"))?;
            write_file(&self.cert(*id), &cert, 0o644)?;
            write_file(&self.key(*id), &key, 0o600)?;
        }
        // The CA last: a run interrupted before it left no complete set, so the next one starts over.
        write_file(&self.ca(), &ca.pem, 0o644)?;
        Ok(true)
    }
}

/// A certificate authority that lives only as long as `keel up` makes its certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "keel up throwaway CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A node certificate for [`NAMES`], usable as server and client certificate: (certificate
    /// PEM, key PEM).
    fn leaf(&self, name: &str) -> Result<(String, String), rcgen::Error> {
        let mut params = CertificateParams::new(NAMES.map(String::from).to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `text` to `path` with permissions `mode` (a temp file renamed over it).
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn makes_the_files_once_and_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let tls = UpTls::new(dir.path());
        assert!(tls.ensure(&[1, 2]).unwrap());
        let ca = std::fs::read_to_string(tls.ca()).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        let key = dir.path().join("tls/node-2.key");
        assert!(std::fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        // Everything there: reused as is.
        assert!(!tls.ensure(&[1, 2]).unwrap());
        assert_eq!(std::fs::read_to_string(tls.ca()).unwrap(), ca);
        // A file missing: a new set (a new CA) for every node.
        std::fs::remove_file(dir.path().join("tls/node-1.crt")).unwrap();
        assert!(tls.ensure(&[1, 2]).unwrap());
        assert_ne!(std::fs::read_to_string(tls.ca()).unwrap(), ca);
    }

    #[test]
    fn leaves_verify_against_the_ca_for_both_names() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let dir = tempfile::tempdir().unwrap();
        let tls = UpTls::new(dir.path());
        tls.ensure(&[1]).unwrap();
        let ca = CertificateDer::from_pem_file(tls.ca()).unwrap();
        let leaf = CertificateDer::from_pem_file(tls.cert(1)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        for name in NAMES {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let flags: Vec<String> = tls
            .serve_flags(1)
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        let d = dir.path().display();
        assert_eq!(
            flags.join(" "),
            format!("--tls-cert {d}/tls/node-1.crt --tls-key {d}/tls/node-1.key --peer-ca {d}/tls/ca.pem")
        );
    }
}
