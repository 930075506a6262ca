//! Host key checking for ssh remotes against an OpenSSH `known_hosts` file.
//!
//! libgit2 (with libssh2) hands the certificate callback the server's raw host key: the same SSH wire-format
//! blob that a `known_hosts` line carries in base64. A key is accepted when a line whose host patterns match
//! the remote's host (`host` on port 22, `[host]:port` otherwise) carries exactly that blob; a matching
//! `@revoked` line refuses it. Supported: comma-separated patterns, `*` / `?` wildcards, `!` negation,
//! comments. Not supported: hashed host names (`ssh-keyscan -H`, `HashKnownHosts yes`) and `@cert-authority`
//! lines; both are skipped, and the error says so.

use sha2::{Digest, Sha256};

/// The host and port of an ssh remote URL: `ssh://[user@]host[:port]/path` (also `git+ssh://`, `ssh+git://`)
/// or scp-like `[user@]host:path` (port 22). `None` for other URLs.
pub(crate) fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    let lower = url.to_ascii_lowercase();
    let rest = ["ssh://", "git+ssh://", "ssh+git://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| &url[s.len()..]);
    let Some(rest) = rest else {
        // scp-like: a colon before any slash, and no scheme.
        if url.contains("://") {
            return None;
        }
        let colon = url.find(':')?;
        if url[..colon].contains('/') {
            return None;
        }
        let host = url[..colon].rsplit_once('@').map_or(&url[..colon], |(_, h)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return (!host.is_empty()).then(|| (host.to_string(), 22));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 22,
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, 22),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The name of `host:port` as `known_hosts` writes it.
pub(crate) fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH's fingerprint of a key blob: `SHA256:` + unpadded base64 of its SHA-256.
pub(crate) fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    let mut b64 = base64_encode(&digest);
    while b64.ends_with('=') {
        b64.pop();
    }
    format!("SHA256:{b64}")
}

/// Outcome of looking a host key up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted,
    Revoked,
    /// The host is listed, but with other keys.
    Mismatch,
    /// The host is not listed; `hashed` counts hashed lines that could not be checked.
    Unknown {
        hashed: usize,
    },
}

/// Looks `blob` up for the host named `name` (from [`known_hosts_name`]) in the text of a `known_hosts` file.
pub(crate) fn check(text: &str, name: &str, blob: &[u8]) -> Verdict {
    let mut listed = false;
    let mut trusted = false;
    let mut hashed = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or("");
        let mut marker = None;
        if first.starts_with('@') {
            marker = Some(first);
            first = fields.next().unwrap_or("");
        }
        if first.starts_with("|1|") {
            hashed += 1;
            continue;
        }
        let (Some(_key_type), Some(key_b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, name) {
            continue;
        }
        let same_key = base64_decode(key_b64).is_some_and(|k| k == blob);
        match marker {
            Some("@revoked") if same_key => return Verdict::Revoked,
            Some(_) => {}
            None => {
                listed = true;
                trusted |= same_key;
            }
        }
    }
    match (trusted, listed) {
        (true, _) => Verdict::Trusted,
        (false, true) => Verdict::Mismatch,
        (false, false) => Verdict::Unknown { hashed },
    }
}

/// OpenSSH pattern-list matching: some non-negated pattern matches and no negated one does.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards, ASCII case-insensitive (host names are).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, trest)| t.eq_ignore_ascii_case(c) && glob(rest, trest)),
    }
}

/// Standard base64 (the `base64` crate). Decoding is as lenient as OpenSSH's reader: padding
/// optional, non-zero trailing bits accepted.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    B64.encode(data)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    B64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_ssh_urls() {
        assert_eq!(
            ssh_host_port("ssh://git@h.example/o/r.git"),
            Some(("h.example".into(), 22))
        );
        assert_eq!(
            ssh_host_port("ssh://git@127.0.0.1:2222/srv/r.git"),
            Some(("127.0.0.1".into(), 2222))
        );
        assert_eq!(ssh_host_port("git+ssh://h:22/r"), Some(("h".into(), 22)));
        assert_eq!(ssh_host_port("ssh://[::1]:2200/r"), Some(("::1".into(), 2200)));
        assert_eq!(ssh_host_port("git@github.com:o/r.git"), Some(("github.com".into(), 22)));
        assert_eq!(ssh_host_port("https://h/r.git"), None);
        assert_eq!(ssh_host_port("/srv/r.git"), None);
        assert_eq!(ssh_host_port("file:///srv/r.git"), None);
        assert_eq!(ssh_host_port("ssh://h:notaport/r"), None);
        assert_eq!(known_hosts_name("h", 22), "h");
        assert_eq!(known_hosts_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn base64_round_trips() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0, 255, 128, 7],
        ] {
            let enc = base64_encode(data);
            assert_eq!(base64_decode(&enc).unwrap(), data, "{enc}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn known_hosts_lookup() {
        let key = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let other = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
        let k = base64_encode(key);
        let o = base64_encode(other);
        let text = format!(
            "# comment\n\n[127.0.0.1]:2222 ssh-ed25519 {k} me@host\nh1,h2 ssh-ed25519 {o}\n*.example ssh-ed25519 {k}\n\
             |1|c2FsdA==|aGFzaA== ssh-ed25519 {k}\n"
        );
        assert_eq!(check(&text, "[127.0.0.1]:2222", key), Verdict::Trusted);
        assert_eq!(check(&text, "[127.0.0.1]:2223", key), Verdict::Unknown { hashed: 1 });
        assert_eq!(check(&text, "h2", key), Verdict::Mismatch);
        assert_eq!(check(&text, "h2", other), Verdict::Trusted);
        assert_eq!(check(&text, "git.EXAMPLE", key), Verdict::Trusted);
        let negated = format!("*,!bad ssh-ed25519 {k}\n");
        assert_eq!(check(&negated, "good", key), Verdict::Trusted);
        assert_eq!(check(&negated, "bad", key), Verdict::Unknown { hashed: 0 });
        let revoked = format!("h ssh-ed25519 {k}\n@revoked h ssh-ed25519 {k}\n");
        assert_eq!(check(&revoked, "h", key), Verdict::Revoked);
        assert!(fingerprint(key).starts_with("SHA256:") && !fingerprint(key).ends_with('='));
    }
}
