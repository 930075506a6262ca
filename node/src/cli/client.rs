//! The HTTP client of the CLI: one node's API at `--addr`, errors with the hints a user needs.

use super::*;

/// Why a request failed; each variant is reported differently.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No HTTP answer at all (connect error, timeout, connection dropped); the cause chain, joined.
    Unreachable(String),
    /// A non-2xx answer. `code` is `None` when the body was not the JSON error shape; `message` then holds
    /// the raw body.
    Status {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    /// A 2xx answer whose body is not JSON.
    Invalid(String),
    /// A problem on this side before or after the request (bad key, unreadable stdin).
    Local(String),
}

impl CallError {
    pub(crate) fn describe(&self, base: &str) -> String {
        match self {
            CallError::Unreachable(cause) => {
                format!("error: cannot reach {base}: {cause}\n{}", tls_hint(base, cause))
            }
            CallError::Status {
                status,
                code: Some(code),
                message,
            } => {
                let hint = status_hint(*status, Some(code), message);
                format!("error: {message} ({code}, HTTP {})\n{hint}", status.as_u16())
            }
            CallError::Status {
                status,
                code: None,
                message,
            } if message.is_empty() => format!("error: HTTP {status}\n{}", status_hint(*status, None, "")),
            CallError::Status {
                status,
                code: None,
                message,
            } => format!(
                "error: HTTP {status}: {message}\n{}",
                status_hint(*status, None, message)
            ),
            CallError::Invalid(cause) => format!("error: invalid answer from {base}: {cause}\n{NOT_KEEL_HINT}"),
            CallError::Local(message) => format!("error: {message}"),
        }
    }
}

/// Printed under an answer that is not Keel's.
pub(crate) const NOT_KEEL_HINT: &str =
    "hint: is --addr the API address (--api-addr) of a keel node, not its peer port or \
                             another service? keel and the node should be the same version";

/// What to do next after an error answer, from its code (the API's error codes, docs/http-api.md, "Errors").
pub(crate) fn status_hint(status: StatusCode, code: Option<&str>, message: &str) -> &'static str {
    match code {
        None => NOT_KEEL_HINT,
        Some("unauthorized") if message.contains("webhook") => {
            "hint: webhooks must be signed with the node's --gitsync-webhook-secret"
        }
        Some("unauthorized") if message.contains("data-plane token") => {
            "hint: pass the client token (or the read token to read): --token TOKEN or KEEL_TOKEN"
        }
        Some("unauthorized") => "hint: pass the admin token: --admin-token TOKEN or KEEL_ADMIN_TOKEN",
        Some("forbidden") => "hint: the read token only reads: pass the client token with --token to write",
        Some("bad_request") => "hint: check the arguments against `keel <command> --help`",
        Some("not_found") if message.starts_with("no member") => "hint: `keel members list` shows the member ids",
        Some("not_found") if message.starts_with("no key") => {
            "hint: `keel kv list --prefix P` shows which keys exist (a replica may lag: add --consistency primary)"
        }
        Some("not_found") if message.contains("no such endpoint") => NOT_KEEL_HINT,
        Some("gitsync_disabled") => "hint: start the nodes with --gitsync-repo URL to use Git Sync",
        Some("cas_mismatch") => {
            "hint: read the current version with `keel kv get KEY --output json` and retry `keel kv cas` with it"
        }
        Some("duplicate_id") | Some("duplicate_address") => {
            "hint: `keel members list` shows the ids and addresses in use; pick unused ones"
        }
        Some("already_voter") => "hint: nothing to do: the member already votes",
        Some("not_caught_up") => {
            "hint: wait until the learner has caught up (APPLIED in `keel status` matches the leader's), then retry"
        }
        Some("quorum_at_risk") => {
            "hint: bring the unreachable voters back first (`keel status`), or add --force if you accept losing quorum"
        }
        Some("membership_change_in_progress") => "hint: wait for the running membership change to finish, then retry",
        Some("empty_membership") => "hint: a cluster needs at least one voter: add a member before removing this one",
        Some("primary_healthy") => {
            "hint: the primary still renews its lease: use `keel switchover --to N` for a planned change, or add \
             --force to `keel failover`"
        }
        Some("bad_target") | Some("no_candidate") => {
            "hint: pick a reachable voter without the nofailover tag (`keel members list`), caught up with the primary"
        }
        Some("conflict") => {
            "hint: the upstream branch was rewritten: `keel gitsync sync --accept-reset` takes the new history"
        }
        Some("too_large") => "hint: keys are at most 1 KiB and values at most 1 MiB (and bodies --max-body-bytes)",
        Some("outcome_unknown") => {
            "hint: the write may or may not have been applied: read it back with `keel kv get KEY --consistency \
             primary` before retrying"
        }
        Some("shutting_down") => "hint: this node is stopping: use the address of another node in --addr",
        Some("upstream_unavailable") => {
            "hint: the Git remote is unreachable or refused the credentials: check --gitsync-repo and the token or \
             ssh key, then `keel gitsync sync`"
        }
        Some("state_behind") => "hint: retry in a moment, or back up another node (--addr)",
        Some("internal") => "hint: this is a bug in keel: please report it with the node's log",
        Some(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
            "hint: the cluster cannot answer this right now (a failover or election may be running): retry in a few \
             seconds; `keel status` shows its state"
        }
        Some(_) if status.is_client_error() => "hint: the cluster refused this in its current state: see `keel status`",
        Some(_) => "hint: retry; if it persists, look at the node's log",
    }
}

/// What to do next when a request got no answer, from the cause: TLS trust and name problems first.
pub(crate) fn tls_hint(base: &str, cause: &str) -> &'static str {
    if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") || cause.contains("UnknownCA") {
        "hint: certificate not trusted: pass --ca FILE (or set KEEL_CA) with the CA that signed the node's certificate"
    } else if cause.contains("not valid for name") || cause.contains("NotValidForName") {
        "hint: the node's certificate does not name the host in --addr: use a host name or IP listed in its \
         subject alternative names"
    } else if cause.contains("expired") || cause.contains("NotValidYet") {
        "hint: the node's certificate is expired or not yet valid (check both clocks); renew it and send the node SIGHUP"
    } else if base.starts_with("https://")
        && (cause.contains("InvalidContentType") || cause.contains("corrupt message"))
    {
        "hint: the node does not serve TLS there: use http:// in --addr"
    } else {
        UNREACHABLE_HINT
    }
}

/// Turns a non-2xx answer into a [`CallError::Status`], reading the `{"error": {"code", "message"}}` body.
pub(crate) fn status_error(status: StatusCode, body: &[u8]) -> CallError {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = v["error"]["message"].as_str() {
            let code = v["error"]["code"].as_str().unwrap_or("error").to_string();
            return CallError::Status {
                status,
                code: Some(code),
                message: message.to_string(),
            };
        }
    }
    let raw = String::from_utf8_lossy(body);
    let raw = raw.trim();
    let mut message: String = raw.chars().take(MAX_RAW_BODY_CHARS).collect();
    if raw.chars().count() > MAX_RAW_BODY_CHARS {
        message.push('…');
    }
    CallError::Status {
        status,
        code: None,
        message,
    }
}

/// `err` and its sources joined with `": "`, skipping a source that repeats its parent.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// A client bound to one node.
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    /// Normalised `--addr`, e.g. `http://127.0.0.1:7101`.
    pub(crate) base: String,
    pub(crate) token: Option<String>,
}

impl Api {
    pub(crate) fn new(opts: &ClientOpts) -> anyhow::Result<Self> {
        let base = normalize_addr(&opts.addr).context("check --addr")?;
        keel_raft::network::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(opts.timeout_ms));
        if let Some(ca) = &opts.ca {
            builder = builder.tls_certs_only(read_ca(ca)?);
        }
        let http = builder.build().context("build http client")?;
        let token = opts
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_string())
            .filter(|t| !t.is_empty());
        Ok(Api { http, base, token })
    }

    /// The same client, sending the data-plane token: `--token`, else `--admin-token` (which the data
    /// plane takes as well), so one admin token still works everywhere.
    pub(crate) fn data_plane(&self, opts: &ClientOpts) -> Api {
        let token = opts
            .token
            .as_ref()
            .map(|t| t.expose().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone());
        Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
        }
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CallError> {
        let url = format!("{}{path}", self.base);
        send(&self.http, method, &url, self.token.as_deref(), body, None).await
    }

    /// Like [`Api::call`], but the body goes as raw bytes and the answer comes back unparsed, with its
    /// status and headers (the datastore's values are bytes, and its metadata travels in headers).
    pub(crate) async fn call_raw(&self, method: Method, path: &str, body: ReqBody) -> Result<RawAnswer, CallError> {
        let url = format!("{}{path}", self.base);
        send_raw(&self.http, method, &url, self.token.as_deref(), body, None).await
    }
}

/// The certificates of `--ca`, or an error saying what is wrong with the file.
pub(crate) fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("read --ca {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("--ca {}: not a PEM certificate bundle", path.display()))?;
    if certs.is_empty() {
        bail!(
            "--ca {}: no `-----BEGIN CERTIFICATE-----` block found; pass the PEM file of the CA that signed the \
             node's certificate",
            path.display()
        );
    }
    Ok(certs)
}

/// What a request carries.
pub(crate) enum ReqBody {
    Empty,
    Json(Value),
    /// Sent as `application/octet-stream`.
    Bytes(Vec<u8>),
}

/// A 2xx answer as received.
pub(crate) struct RawAnswer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: bytes::Bytes,
}

impl RawAnswer {
    /// The body as JSON (`null` when empty).
    pub(crate) fn json(&self) -> Result<Value, CallError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| CallError::Invalid(e.to_string()))
    }
}

pub(crate) async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
    timeout: Option<Duration>,
) -> Result<Value, CallError> {
    let body = body.map_or(ReqBody::Empty, ReqBody::Json);
    send_raw(http, method, url, token, body, timeout).await?.json()
}

/// One request; a non-2xx answer becomes [`CallError::Status`] and no answer [`CallError::Unreachable`].
pub(crate) async fn send_raw(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: ReqBody,
    timeout: Option<Duration>,
) -> Result<RawAnswer, CallError> {
    let mut req = http.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req = match body {
        ReqBody::Empty => req,
        ReqBody::Json(v) => req.json(&v),
        ReqBody::Bytes(b) => req
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(b),
    };
    if let Some(timeout) = timeout {
        req = req.timeout(timeout);
    }
    let resp = req.send().await.map_err(|e| CallError::Unreachable(error_chain(&e)))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
    if !status.is_success() {
        return Err(status_error(status, &body));
    }
    Ok(RawAnswer { status, headers, body })
}

/// Writes to stdout, ignoring a closed pipe (`keel history | head`) instead of panicking like `print!`.
pub(crate) fn print_out(text: &str) {
    // `print!` is what the test harness captures.
    if cfg!(test) {
        print!("{text}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
