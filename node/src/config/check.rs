//! Parsing and checking of single values: peer lists, listen and advertised addresses, URLs, secrets.

use super::*;

/// Parses `id=host:port,id=host:port,...` (spaces around entries and a trailing comma are allowed).
/// Rejects malformed entries, id 0, duplicate ids and duplicate addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let bad = |reason: String| ConfigError::BadPeers {
        value: s.to_owned(),
        reason,
    };
    let mut peers = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("entry `{entry}` is not `id=host:port`")))?;
        let id = parse_peer_id(id.trim()).map_err(|reason| bad(format!("entry `{entry}`: {reason}")))?;
        let addr = addr.trim();
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(bad(format!("duplicate id {id}")));
        }
    }
    if peers.is_empty() {
        return Err(bad("no `id=host:port` entries".to_owned()));
    }
    check_peers(&peers, s)?;
    Ok(peers)
}

/// The TOML table form of peers.
pub(crate) fn peers_from_table(table: BTreeMap<String, String>) -> Result<BTreeMap<u64, String>, ConfigError> {
    let shown = table
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut peers = BTreeMap::new();
    for (key, addr) in table {
        let id = parse_peer_id(key.trim()).map_err(|reason| ConfigError::BadPeers {
            value: shown.clone(),
            reason: format!("key `{key}`: {reason}"),
        })?;
        // "1" and "01" are different TOML keys but the same id.
        if peers.insert(id, addr.trim().to_owned()).is_some() {
            return Err(ConfigError::BadPeers {
                value: shown,
                reason: format!("duplicate id {id}"),
            });
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::BadPeers {
            value: shown,
            reason: "no entries".to_owned(),
        });
    }
    check_peers(&peers, &shown)?;
    Ok(peers)
}

/// Why a peer id is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    #[error("id 0 is reserved; ids start at 1")]
    Zero,
    #[error("id `{0}` is not a positive integer")]
    NotANumber(String),
}

pub(crate) fn parse_peer_id(s: &str) -> Result<u64, PeerIdError> {
    match s.parse::<u64>() {
        Ok(0) => Err(PeerIdError::Zero),
        Ok(id) => Ok(id),
        Err(_) => Err(PeerIdError::NotANumber(s.to_owned())),
    }
}

/// Addresses well-formed and distinct (case-insensitively), ids non-zero. `shown` is the value for errors.
pub(crate) fn check_peers(peers: &BTreeMap<u64, String>, shown: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadPeers {
        value: shown.to_owned(),
        reason,
    };
    let mut seen = BTreeSet::new();
    for (id, addr) in peers {
        if *id == 0 {
            return Err(bad("id 0 is reserved; ids start at 1".to_owned()));
        }
        check_host_port(addr, true).map_err(|reason| bad(format!("address of {id} `{addr}`: {reason}")))?;
        if !seen.insert(addr.to_ascii_lowercase()) {
            return Err(bad(format!("duplicate address {addr}")));
        }
    }
    Ok(())
}

/// `1=a:7201,2=b:7201`, for error messages.
pub(crate) fn format_peers(peers: &BTreeMap<u64, String>) -> String {
    peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prefixes `http://` when `addr` has no scheme and strips trailing `/`s.
pub fn normalize_url(addr: &str) -> String {
    normalize_url_scheme(addr, "http")
}

/// Prefixes `{scheme}://` when `addr` has no scheme and strips trailing `/`s.
pub fn normalize_url_scheme(addr: &str, scheme: &str) -> String {
    let addr = addr.trim();
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{scheme}://{addr}")
    };
    url.trim_end_matches('/').to_owned()
}

pub(crate) fn normalize_gitsync_path(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed == "." {
        String::new()
    } else {
        trimmed.to_owned()
    }
}

pub(crate) fn parse_listen_addr(field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        bad_address(
            field,
            value,
            "expected ip:port, e.g. 127.0.0.1:7101, 0.0.0.0:7101 or [::]:7101 (listen addresses are IP \
             literals, not host names)",
        )
    })
}

pub(crate) fn check_advertise_addr(field: &'static str, value: &str) -> Result<(), ConfigError> {
    check_host_port(value, true).map_err(|reason| bad_address(field, value, reason.to_string()))?;
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.ip().is_unspecified() {
            return Err(bad_address(
                field,
                value,
                format!(
                    "{} means \"every interface\" and cannot be dialled; set --{} to an address other nodes can \
                     reach",
                    addr.ip(),
                    field.replace('_', "-")
                ),
            ));
        }
    }
    Ok(())
}

/// `http(s)://host[:port]`, nothing after the authority but an optional path.
pub(crate) fn check_url(field: &'static str, url: &str) -> Result<(), ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad_address(field, url, "expected a URL like http://10.0.0.1:7101"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad_address(field, url, "the scheme must be http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad_address(field, url, "credentials in the URL are not supported"));
    }
    check_host_port(authority, false).map_err(|reason| bad_address(field, url, reason.to_string()))
}

/// Why a `host:port` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("expected host:port without a scheme")]
    Scheme,
    #[error("missing `]` after the IPv6 address")]
    UnclosedBracket,
    #[error("`{0}` is not an IPv6 address")]
    NotIpv6(String),
    #[error("expected `:port` after `]`")]
    PortAfterBracket,
    #[error("IPv6 addresses need brackets, e.g. [::1]:7201")]
    Ipv6WithoutBrackets,
    #[error("missing host")]
    MissingHost,
    #[error("`{0}` is not a host name or IP address")]
    BadHost(String),
    #[error("missing `:port`")]
    MissingPort,
    #[error("port 0 cannot be dialled")]
    PortZero,
    #[error("port `{0}` is not a number in 1..=65535")]
    BadPort(String),
}

/// Checks `host:port` (or `host` when `require_port` is false): non-empty host name or IP, IPv6 in
/// brackets, port 1..=65535.
pub fn check_host_port(s: &str, require_port: bool) -> Result<(), AddrError> {
    if s.contains("://") {
        return Err(AddrError::Scheme);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(AddrError::UnclosedBracket)?;
        ip.parse::<Ipv6Addr>().map_err(|_| AddrError::NotIpv6(ip.to_owned()))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(AddrError::PortAfterBracket)?),
        };
        (None, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => return Err(AddrError::Ipv6WithoutBrackets),
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(s), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(AddrError::MissingHost);
        }
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid || host.starts_with(['-', '.']) {
            return Err(AddrError::BadHost(host.to_owned()));
        }
    }
    match port {
        None if require_port => Err(AddrError::MissingPort),
        None => Ok(()),
        Some(port) => match port.parse::<u16>() {
            Ok(0) => Err(AddrError::PortZero),
            Ok(_) => Ok(()),
            Err(_) => Err(AddrError::BadPort(port.to_owned())),
        },
    }
}

pub(crate) fn check_secret(field: &'static str, secret: Option<&str>) -> Result<(), ConfigError> {
    match secret {
        // Never echo the value, not even a whitespace-only one.
        Some(s) if s.trim().is_empty() => Err(bad_value(
            field,
            "***",
            "must not be empty; omit it (and unset its KEEL_* variable) to disable it",
        )),
        _ => Ok(()),
    }
}
