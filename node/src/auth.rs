//! Who may use the API port's data plane (`/v1/kv*`, `/v1/diverged`, `/v1/gitsync/files/*`):
//! the pure rule ([`data_plane_access`] says what a request needs, [`decide`] whether a token
//! kind allows it), the node's token set ([`TokenStore`]), and its reload on SIGHUP
//! ([`reload_task`]), which re-reads the config file and swaps the set in place.
//!
//! The data plane is open only while no token of any kind is configured. Reads take the read,
//! client or admin token; writes the client or admin token. A missing or unknown token is
//! refused (401), a read token on a write too (403). Admin endpoints keep their own rule
//! (`http::requires_admin`); probes, `/metrics` and `/v1/status` stay open.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ApiTokens, Config};
use crate::util::constant_time_eq;

/// The kind of a token a request presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Read,
    Client,
    Admin,
}

/// What a data-plane request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The answer to a data-plane request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// No token, or one that is none of the configured ones: 401.
    Unauthorized,
    /// A read token on a write: 403.
    Forbidden,
}

/// The access a request on the data plane needs; `None` for every other path (admin endpoints,
/// probes, status and metrics have rules of their own). GET and HEAD read; every other method,
/// unknown ones included, counts as a write.
pub fn data_plane_access(method: &str, path: &str) -> Option<Access> {
    let data = path == "/v1/kv"
        || path.starts_with("/v1/kv/")
        || path == "/v1/diverged"
        || path.starts_with("/v1/gitsync/files/");
    if !data {
        return None;
    }
    Some(match method {
        "GET" | "HEAD" => Access::Read,
        _ => Access::Write,
    })
}

/// The rule: with no token configured (`any_configured` false) everything is allowed; otherwise
/// a request needs a known token, and a write one that is not the read token.
pub fn decide(any_configured: bool, presented: Option<TokenKind>, access: Access) -> Verdict {
    match (any_configured, presented, access) {
        (false, _, _) => Verdict::Allow,
        (true, None, _) => Verdict::Unauthorized,
        (true, Some(TokenKind::Read), Access::Write) => Verdict::Forbidden,
        (true, Some(_), _) => Verdict::Allow,
    }
}

impl ApiTokens {
    /// At least one token of any kind is configured, so the data plane is closed.
    pub fn any(&self) -> bool {
        self.admin.is_some() || self.client.is_some() || self.read.is_some()
    }

    /// `open` or `tokens`, as `/v1/status` shows it.
    pub fn mode(&self) -> &'static str {
        if self.any() {
            "tokens"
        } else {
            "open"
        }
    }

    /// The kind of the token in an `Authorization: Bearer <token>` header value. Every configured
    /// token is compared, each in constant time, so the answer's timing tells nothing about which
    /// one (nearly) matched.
    pub fn kind_of(&self, header: Option<&str>) -> Option<TokenKind> {
        let given = header?.strip_prefix("Bearer ")?.trim().as_bytes();
        let mut found = None;
        for (kind, secret) in [
            (TokenKind::Admin, &self.admin),
            (TokenKind::Client, &self.client),
            (TokenKind::Read, &self.read),
        ] {
            if let Some(secret) = secret {
                if constant_time_eq(given, secret.expose().as_bytes()) && found.is_none() {
                    found = Some(kind);
                }
            }
        }
        found
    }

    /// [`decide`] for a request with this `Authorization` header value.
    pub fn check(&self, header: Option<&str>, access: Access) -> Verdict {
        decide(self.any(), self.kind_of(header), access)
    }
}

/// The token set in force, swapped whole on reload (a request sees the old or the new set, never
/// a mix).
pub struct TokenStore {
    current: RwLock<Arc<ApiTokens>>,
}

impl TokenStore {
    pub fn new(tokens: ApiTokens) -> TokenStore {
        TokenStore {
            current: RwLock::new(Arc::new(tokens)),
        }
    }

    /// The set in force now.
    pub fn get(&self) -> Arc<ApiTokens> {
        // A poisoned lock still holds a whole set: the swap is one assignment.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Put `new` in force; returns the kinds whose token changed.
    pub fn replace(&self, new: ApiTokens) -> Vec<&'static str> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.changed_kinds(&new);
        *current = Arc::new(new);
        changed
    }
}

/// Say at start what the API port lets anyone do.
pub fn warn_at_start(tokens: &ApiTokens) {
    if !tokens.any() {
        warn!(
            "no API token is configured: anyone who reaches --api-addr can read and write the datastore and \
             call admin endpoints; set --client-token, --read-token and --admin-token (docs/operations.md, \
             \"Security\")"
        );
    } else if tokens.admin.is_none() {
        warn!("no --admin-token: admin endpoints (membership, failover, config) are open to anyone who reaches --api-addr");
    }
    if tokens.read.is_some() && tokens.client.is_none() && tokens.admin.is_none() {
        warn!("a read token but neither a client nor an admin token: no request can write to the datastore");
    }
}

/// Re-read the API tokens from the config file on every SIGHUP, until `cancel`. Tokens given as
/// flags or `KEEL_*` variables stay as they are: a running process cannot see them change. A file
/// that does not parse, or tokens that do not validate, leave the previous set in force.
pub async fn reload_task(store: Arc<TokenStore>, config: Config, cancel: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; API tokens cannot be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = hup.recv() => {
                if r.is_none() {
                    return;
                }
                reload(&store, &config);
            }
        }
    }
}

fn reload(store: &TokenStore, config: &Config) {
    match config.reread_tokens() {
        Ok(None) => info!("SIGHUP received; no --config file, so the API tokens stay as they are"),
        Ok(Some(tokens)) => {
            let mode = tokens.mode();
            let changed = store.replace(tokens);
            if changed.is_empty() {
                info!(auth = mode, "API tokens re-read from the config file; none changed");
            } else {
                info!(
                    changed = %changed.join(","),
                    auth = mode,
                    "API tokens reloaded from the config file; requests from now on need the new ones"
                );
            }
            if mode == "open" {
                warn!("the reload removed every API token: the data plane is open");
            }
        }
        // The first line only: a TOML parse error quotes the offending line, which may hold a token.
        Err(e) => warn!(
            error = %e.to_string().lines().next().unwrap_or_default(),
            "API tokens not reloaded; the previous ones stay in force (fix the config file, then SIGHUP again)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn tokens(admin: Option<&str>, client: Option<&str>, read: Option<&str>) -> ApiTokens {
        ApiTokens {
            admin: admin.map(Secret::new),
            client: client.map(Secret::new),
            read: read.map(Secret::new),
        }
    }

    #[test]
    fn which_requests_are_on_the_data_plane() {
        use Access::{Read, Write};
        let cases = [
            ("GET", "/v1/kv", Some(Read)),
            ("GET", "/v1/kv/a/b", Some(Read)),
            ("HEAD", "/v1/kv/a", Some(Read)),
            ("PUT", "/v1/kv/a", Some(Write)),
            ("POST", "/v1/kv/a", Some(Write)),
            ("DELETE", "/v1/kv/a", Some(Write)),
            ("PATCH", "/v1/kv/a", Some(Write)),
            ("OPTIONS", "/v1/kv/a", Some(Write)),
            ("PUT", "/v1/kv/", Some(Write)),
            ("GET", "/v1/diverged", Some(Read)),
            ("DELETE", "/v1/diverged", Some(Write)),
            ("PUT", "/v1/gitsync/files/a.txt", Some(Write)),
            ("DELETE", "/v1/gitsync/files/d/a.txt", Some(Write)),
            ("GET", "/v1/gitsync/files/a.txt", Some(Read)),
            // Off the data plane: status, probes, metrics, admin endpoints, Git Sync's own.
            ("GET", "/v1/status", None),
            ("GET", "/v1/kvx", None),
            ("GET", "/primary", None),
            ("GET", "/replica", None),
            ("GET", "/metrics", None),
            ("GET", "/health", None),
            ("GET", "/readyz", None),
            ("PUT", "/v1/maintenance", None),
            ("GET", "/v1/gitsync", None),
            ("POST", "/v1/gitsync/sync", None),
            ("POST", "/v1/gitsync/webhook", None),
            ("GET", "/v1/backup", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(data_plane_access(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn which_token_kind_allows_what() {
        use Access::{Read, Write};
        use TokenKind::{Admin, Client};
        use Verdict::{Allow, Forbidden, Unauthorized};
        let cases = [
            // Nothing configured: open, whatever is sent.
            (false, None, Read, Allow),
            (false, None, Write, Allow),
            (false, Some(TokenKind::Read), Write, Allow),
            (true, None, Read, Unauthorized),
            (true, None, Write, Unauthorized),
            (true, Some(TokenKind::Read), Read, Allow),
            (true, Some(TokenKind::Read), Write, Forbidden),
            (true, Some(Client), Read, Allow),
            (true, Some(Client), Write, Allow),
            (true, Some(Admin), Read, Allow),
            (true, Some(Admin), Write, Allow),
        ];
        for (configured, kind, access, want) in cases {
            assert_eq!(
                decide(configured, kind, access),
                want,
                "{configured} {kind:?} {access:?}"
            );
        }
    }

    #[test]
    fn a_header_names_the_kind_of_its_token() {
        let t = tokens(Some("adm"), Some("cli"), Some("rd"));
        assert_eq!(t.kind_of(Some("Bearer adm")), Some(TokenKind::Admin));
        assert_eq!(t.kind_of(Some("Bearer cli")), Some(TokenKind::Client));
        assert_eq!(t.kind_of(Some("Bearer rd ")), Some(TokenKind::Read));
        for header in [
            None,
            Some("Bearer "),
            Some("Bearer nope"),
            Some("cli"),
            Some("Basic cli"),
            Some("Bearer cl"),
        ] {
            assert_eq!(t.kind_of(header), None, "{header:?}");
        }
        assert_eq!(t.check(Some("Bearer rd"), Access::Write), Verdict::Forbidden);
        assert_eq!(t.check(Some("Bearer nope"), Access::Read), Verdict::Unauthorized);
        assert_eq!(t.mode(), "tokens");

        // Only an admin token: it alone opens the data plane.
        let admin_only = tokens(Some("adm"), None, None);
        assert_eq!(admin_only.check(None, Access::Write), Verdict::Unauthorized);
        assert_eq!(admin_only.check(Some("Bearer adm"), Access::Write), Verdict::Allow);

        let open = ApiTokens::default();
        assert_eq!(open.mode(), "open");
        assert_eq!(open.check(None, Access::Write), Verdict::Allow);
        assert_eq!(open.kind_of(Some("Bearer ")), None);
    }

    #[test]
    fn a_swap_reports_the_changed_kinds() {
        let store = TokenStore::new(tokens(Some("adm"), Some("c1"), None));
        assert_eq!(
            store.replace(tokens(Some("adm"), Some("c2"), Some("r"))),
            vec!["client", "read"]
        );
        assert_eq!(store.get().kind_of(Some("Bearer c2")), Some(TokenKind::Client));
        assert_eq!(store.get().kind_of(Some("Bearer c1")), None);
        assert!(store.replace(tokens(Some("adm"), Some("c2"), Some("r"))).is_empty());
        assert_eq!(store.replace(ApiTokens::default()), vec!["admin", "client", "read"]);
        assert_eq!(store.get().mode(), "open");
    }
}
