//! Client side of the `keel` CLI: `status`, `members`, `history`, `maintenance`, `kv` and `diverged` talk to
//! the HTTP API of any node (`--addr`, env `KEEL_ADDR`): JSON, except the datastore's values, which travel
//! as raw bytes with their metadata in `Keel-*` headers.
//!
//! Every command returns the process exit code instead of exiting, so it can be tested in-process.
//! `keel status` follows the Nagios convention (0 healthy, 1 degraded, 2 critical); its decision is the
//! pure [`verdict`] function. Everything else exits 0 on success and 1 on any error. Tables are rendered
//! by one helper, [`render_table`], with column widths taken from the content.

pub mod serve;
pub mod up;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{IsTerminal as _, Read, Write as _};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use crate::config::Secret;

/// Timeout of each per-node `GET /v1/status` made by `keel status`.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Printed under every "cannot reach" error.
const UNREACHABLE_HINT: &str = "hint: is a node running there? set --addr or KEEL_ADDR";
/// Longest raw (non-JSON) error body echoed to the user.
const MAX_RAW_BODY_CHARS: usize = 1000;

const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_CRITICAL: i32 = 2;

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The server's JSON, pretty-printed, for scripts.
    Json,
}

/// Argument of `keel maintenance`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// Options shared by every client subcommand. `global` so they are accepted after the subcommand too.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// API address of any node
    #[arg(long, env = "KEEL_ADDR", default_value = "http://127.0.0.1:7101", global = true)]
    pub addr: String,

    /// Admin token, sent as `Authorization: Bearer <token>`
    // `Secret`, the type `keel serve --admin-token` uses: a global arg shares its id with the subcommand's
    // arg of the same name, and clap panics when their value types differ. `Debug` also prints `***`.
    #[arg(long, env = "KEEL_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// table or json
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: OutputFormat,

    /// Timeout of each request, in milliseconds
    #[arg(long, default_value_t = 15000, global = true)]
    pub timeout_ms: u64,

    /// PEM CA bundle to trust for https:// nodes (instead of the system trust store)
    #[arg(long, env = "KEEL_CA", global = true, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// cluster health table; exit 0 healthy, 1 degraded, 2 critical
    Status,
    /// membership
    #[command(subcommand)]
    Members(MembersCommand),
    /// failover history
    History,
    /// planned switchover: stop writes on the primary, promote the target (default: best candidate)
    Switchover {
        /// node to promote
        #[arg(long)]
        to: Option<u64>,
    },
    /// forced failover to a node, for when the primary is dead
    Failover {
        /// node to promote
        #[arg(long)]
        to: u64,
        /// promote even though the current primary still renews its lease
        #[arg(long)]
        force: bool,
    },
    /// maintenance on|off
    Maintenance {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// the replicated key-value datastore: get, put, del, cas, list
    #[command(subcommand)]
    Kv(KvCommand),
    /// writes an old primary rolled back when it rejoined (kept, never dropped)
    #[command(subcommand)]
    Diverged(DivergedCommand),
    /// Git Sync: every node's commit side by side, or sync now
    #[command(subcommand)]
    Gitsync(GitsyncCommand),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum GitsyncCommand {
    /// every node's Git Sync state and commit, and whether the cluster has converged (exit 1 if not)
    Status,
    /// sync the node at --addr now and ask every other node to sync
    Sync {
        /// accept a rewritten upstream history (after a force-push) on this node
        #[arg(long)]
        accept_reset: bool,
    },
}

/// `--consistency` of `keel kv get`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// the node's own copy; on a replica it may lag (see `lag_ms`)
    Local,
    /// forwarded to the primary, which answers only while it holds its lease
    Primary,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Primary => "primary",
        }
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum KvCommand {
    /// print a key's value as raw bytes (no newline added); 404 exits 1
    Get {
        key: String,
        /// local (default): this node's copy; primary: read on the primary
        #[arg(long, value_enum)]
        consistency: Option<Consistency>,
    },
    /// set a key; the value is VALUE, or stdin when VALUE is omitted or `-`
    Put {
        key: String,
        /// the value (use `--` before a value that starts with `-`)
        value: Option<OsString>,
    },
    /// delete a key
    Del { key: String },
    /// compare-and-set: write only if the key is at version N (0 = it must not exist)
    // `propagate_version` in main.rs gives every subcommand a `--version` flag; this one needs the name.
    #[command(disable_version_flag = true)]
    Cas {
        key: String,
        /// expected current version (0 = the key must not exist)
        #[arg(long)]
        version: u64,
        /// the new value; stdin when omitted or `-`
        value: Option<OsString>,
    },
    /// list keys: KEY, VERSION, SIZE
    List {
        /// only keys starting with this
        #[arg(long)]
        prefix: Option<String>,
        /// keys per page (server default 100, at most 1000)
        #[arg(long)]
        limit: Option<u32>,
        /// follow `next` until every matching key is listed
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DivergedCommand {
    /// list rolled-back writes: ROLLED_BACK_AT, POSITION, KEY, DELETED, VALUE
    List,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum MembersCommand {
    /// list members: ID, VOTER, REACHABLE, API, PEER, NOFAILOVER, PRIORITY
    List,
    /// add a node to the cluster as a learner
    Add {
        /// id of the new node
        id: u64,
        /// its API address, host:port
        #[arg(long)]
        api_addr: String,
        /// its Raft peer address, host:port
        #[arg(long)]
        peer_addr: String,
    },
    /// remove a node from the cluster
    Remove {
        id: u64,
        /// remove even when the server's safety checks refuse
        #[arg(long)]
        force: bool,
    },
    /// turn a learner into a voter
    Promote { id: u64 },
    /// set a member's failover tags (what is not given stays as it is)
    Tag {
        id: u64,
        /// never promote this member automatically (true/false)
        #[arg(long)]
        nofailover: Option<bool>,
        /// higher wins among equally advanced failover candidates
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
}

/// Outcome of `keel status`, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Healthy,
    Degraded,
    Critical,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Critical => "critical",
        }
    }

    /// Nagios exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => EXIT_OK,
            Verdict::Degraded => EXIT_ERROR,
            Verdict::Critical => EXIT_CRITICAL,
        }
    }
}

/// Runs one client subcommand and returns the process exit code. Errors the user should see (HTTP errors,
/// unreachable node) are printed to stderr here and turned into an exit code; `Err` is left for bad local
/// input such as an unparsable `--addr`.
pub async fn run(cmd: ClientCommand, opts: &ClientOpts) -> anyhow::Result<i32> {
    let api = Api::new(opts)?;
    let unreachable_code = match cmd {
        ClientCommand::Status => EXIT_CRITICAL,
        _ => EXIT_ERROR,
    };
    let result = match cmd {
        ClientCommand::Status => status(&api, opts.output).await,
        ClientCommand::Members(members_cmd) => members(&api, members_cmd, opts.output).await,
        ClientCommand::History => history(&api, opts.output).await,
        ClientCommand::Maintenance { state } => maintenance(&api, state, opts.output).await,
        ClientCommand::Switchover { to } => {
            let body = match to {
                Some(t) => json!({"to": t}),
                None => json!({}),
            };
            promotion(&api, "/v1/switchover", body, opts.output).await
        }
        ClientCommand::Failover { to, force } => {
            promotion(&api, "/v1/failover", json!({"to": to, "force": force}), opts.output).await
        }
        ClientCommand::Kv(kv_cmd) => kv(&api, kv_cmd, opts.output).await,
        ClientCommand::Diverged(DivergedCommand::List) => diverged(&api, opts.output).await,
        ClientCommand::Gitsync(GitsyncCommand::Status) => gitsync_status(&api, opts.output).await,
        ClientCommand::Gitsync(GitsyncCommand::Sync { accept_reset }) => {
            gitsync_sync(&api, accept_reset, opts.output).await
        }
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("{}", e.describe(&api.base));
            Ok(match e {
                CallError::Unreachable(_) => unreachable_code,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// Adds `http://` when `addr` has no scheme and strips trailing slashes. `http://` and `https://` only.
pub fn normalize_addr(addr: &str) -> anyhow::Result<String> {
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        bail!("the node address is empty");
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let base = with_scheme.trim_end_matches('/').to_string();
    let url = reqwest::Url::parse(&base).with_context(|| format!("parse node address {addr:?}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!("unsupported scheme in node address {addr:?}: use http:// or https://");
    }
    Ok(base)
}

/// Why a request failed; each variant is reported differently.
#[derive(Debug)]
enum CallError {
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
    fn describe(&self, base: &str) -> String {
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
const NOT_KEEL_HINT: &str = "hint: is --addr the API address (--api-addr) of a keel node, not its peer port or \
                             another service? keel and the node should be the same version";

/// What to do next after an error answer, from its code (the API's error codes, README "Errors").
fn status_hint(status: StatusCode, code: Option<&str>, message: &str) -> &'static str {
    match code {
        None => NOT_KEEL_HINT,
        Some("unauthorized") if message.contains("webhook") => {
            "hint: webhooks must be signed with the node's --gitsync-webhook-secret"
        }
        Some("unauthorized") => "hint: pass the admin token: --admin-token TOKEN or KEEL_ADMIN_TOKEN",
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
fn tls_hint(base: &str, cause: &str) -> &'static str {
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
fn status_error(status: StatusCode, body: &[u8]) -> CallError {
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
fn error_chain(err: &dyn std::error::Error) -> String {
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
struct Api {
    http: reqwest::Client,
    /// Normalised `--addr`, e.g. `http://127.0.0.1:7101`.
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(opts: &ClientOpts) -> anyhow::Result<Self> {
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

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CallError> {
        let url = format!("{}{path}", self.base);
        send(&self.http, method, &url, self.token.as_deref(), body, None).await
    }

    /// Like [`Api::call`], but the body goes as raw bytes and the answer comes back unparsed, with its
    /// status and headers (the datastore's values are bytes, and its metadata travels in headers).
    async fn call_raw(&self, method: Method, path: &str, body: ReqBody) -> Result<RawAnswer, CallError> {
        let url = format!("{}{path}", self.base);
        send_raw(&self.http, method, &url, self.token.as_deref(), body, None).await
    }
}

/// The certificates of `--ca`, or an error saying what is wrong with the file.
fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
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
enum ReqBody {
    Empty,
    Json(Value),
    /// Sent as `application/octet-stream`.
    Bytes(Vec<u8>),
}

/// A 2xx answer as received.
struct RawAnswer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl RawAnswer {
    /// The body as JSON (`null` when empty).
    fn json(&self) -> Result<Value, CallError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| CallError::Invalid(e.to_string()))
    }
}

async fn send(
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
async fn send_raw(
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

/// Writes raw bytes to stdout, like [`print_out`].
fn print_bytes(bytes: &[u8]) {
    if cfg!(test) {
        print!("{}", String::from_utf8_lossy(bytes));
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    print_out(&format!("{text}\n"));
}

/// Renders rows under headers, columns separated by two spaces and as wide as their widest cell. The last
/// column is not padded, so no line has trailing whitespace. Missing cells are blank; extra cells dropped.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One table cell from a JSON value: `-` for null, missing or empty string, `yes`/`no` for booleans.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `members` array of a `/v1/cluster` or `/v1/members` answer, sorted by id.
fn member_list(v: &Value) -> Vec<&Value> {
    let mut members: Vec<&Value> = v["members"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    members.sort_by_key(|m| m["id"].as_u64().unwrap_or(u64::MAX));
    members
}

/// "1", "1 and 2", "1, 2 and 3".
fn join_ids(ids: &[u64]) -> String {
    match ids {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => {
            format!(
                "{} and {last}",
                rest.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Health of the cluster from the `/v1/cluster` answer of one node and the `/v1/status` answer of every
/// member (`None`: it did not answer). Critical when no member that answered knows a leader; degraded when
/// a voter did not answer or the members that answered disagree on who leads; healthy otherwise. The
/// string is the reason, empty when healthy.
pub fn verdict(cluster: &Value, statuses: &BTreeMap<u64, Option<Value>>) -> (Verdict, String) {
    let reports: BTreeMap<u64, Option<u64>> = statuses
        .iter()
        .filter_map(|(id, status)| {
            // A node that cannot reach a quorum of voters has no usable leader, whatever it
            // last heard (a lone leader keeps claiming leadership until it hears otherwise).
            status.as_ref().map(|s| {
                (
                    *id,
                    s["raft"]["leader"].as_u64().filter(|_| s["raft"]["quorum"] != false),
                )
            })
        })
        .collect();
    if reports.is_empty() {
        return (Verdict::Critical, "no member answered /v1/status".to_string());
    }
    if reports.values().all(Option::is_none) {
        return (Verdict::Critical, "no leader".to_string());
    }

    let mut problems = Vec::new();
    let unreachable_voters: Vec<u64> = member_list(cluster)
        .into_iter()
        .filter(|m| m["voter"].as_bool().unwrap_or(true))
        .filter_map(|m| m["id"].as_u64())
        .filter(|id| statuses.get(id).is_none_or(Option::is_none))
        .collect();
    match unreachable_voters.as_slice() {
        [] => {}
        [id] => problems.push(format!("voter {id} unreachable")),
        ids => problems.push(format!("voters {} unreachable", join_ids(ids))),
    }
    let leaders: BTreeSet<Option<u64>> = reports.values().copied().collect();
    if leaders.len() > 1 {
        let views: Vec<String> = reports
            .iter()
            .map(|(id, leader)| format!("{id} says {}", leader.map_or("none".to_string(), |l| l.to_string())))
            .collect();
        problems.push(format!("members disagree on the leader ({})", views.join(", ")));
    }
    if problems.is_empty() {
        (Verdict::Healthy, String::new())
    } else {
        (Verdict::Degraded, problems.join("; "))
    }
}

/// `healthy`, or `degraded: <reason>`.
fn verdict_line(v: Verdict, reason: &str) -> String {
    if reason.is_empty() {
        v.as_str().to_string()
    } else {
        format!("{}: {reason}", v.as_str())
    }
}

/// The summary line, the per-node table and the verdict line of `keel status`.
fn render_status(cluster: &Value, statuses: &BTreeMap<u64, Option<Value>>, verdict: Verdict, reason: &str) -> String {
    let cluster_id = cluster["cluster_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("(none)");
    let leader = cluster["leader"].as_u64().map_or("none".to_string(), |l| l.to_string());
    let primary = match cluster["primary"]["node"].as_u64() {
        Some(node) => format!("primary {node} (epoch {})", cell(&cluster["primary"]["epoch"])),
        None => "primary none".to_string(),
    };
    let maintenance = if cluster["maintenance"].as_bool().unwrap_or(false) {
        "on"
    } else {
        "off"
    };
    let mut out = format!("cluster {cluster_id} — leader {leader}, {primary}, maintenance {maintenance}\n");

    let rows: Vec<Vec<String>> = member_list(cluster)
        .into_iter()
        .map(|m| {
            let id = m["id"].as_u64();
            let status = id.and_then(|id| statuses.get(&id)).and_then(Option::as_ref);
            let per_node = |f: &dyn Fn(&Value) -> &Value| status.map_or("-".to_string(), |s| cell(f(s)));
            vec![
                cell(&m["id"]),
                per_node(&|s| &s["role"]),
                per_node(&|s| &s["raft"]["state"]),
                per_node(&|s| &s["raft"]["term"]),
                per_node(&|s| &s["raft"]["leader"]),
                if status.is_some() { "yes" } else { "no" }.to_string(),
                per_node(&|s| &s["raft"]["last_applied"]),
                cell(&m["voter"]),
                cell(&m["api_addr"]),
            ]
        })
        .collect();
    let headers = [
        "NODE",
        "ROLE",
        "RAFT",
        "TERM",
        "LEADER",
        "REACHABLE",
        "APPLIED",
        "VOTER",
        "API",
    ];
    out.push_str(&render_table(&headers, &rows));
    out.push_str(&verdict_line(verdict, reason));
    out.push('\n');
    out
}

/// `GET /v1/status` of every member at its own API address, concurrently, [`NODE_STATUS_TIMEOUT`] each.
async fn fetch_statuses(api: &Api, cluster: &Value) -> BTreeMap<u64, Option<Value>> {
    let mut set = JoinSet::new();
    let mut statuses = BTreeMap::new();
    for m in member_list(cluster) {
        let Some(id) = m["id"].as_u64() else { continue };
        statuses.insert(id, None);
        // A member that has not announced its API address cannot be asked; it counts as unreachable.
        // Members are reached the way --addr reaches the first one: a TLS cluster is TLS throughout.
        let scheme = if api.base.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let Some(base) = m["api_addr"]
            .as_str()
            .and_then(|a| normalize_addr(&crate::config::normalize_url_scheme(a, scheme)).ok())
        else {
            continue;
        };
        let http = api.http.clone();
        let token = api.token.clone();
        set.spawn(async move {
            let url = format!("{base}/v1/status");
            let status = send(
                &http,
                Method::GET,
                &url,
                token.as_deref(),
                None,
                Some(NODE_STATUS_TIMEOUT),
            )
            .await;
            (id, status.ok())
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((id, status)) = joined {
            statuses.insert(id, status);
        }
    }
    statuses
}

async fn status(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let cluster = api.call(Method::GET, "/v1/cluster", None).await?;
    let statuses = fetch_statuses(api, &cluster).await;
    let (v, reason) = verdict(&cluster, &statuses);
    match output {
        OutputFormat::Json => {
            let nodes: Map<String, Value> = statuses
                .iter()
                .map(|(id, s)| (id.to_string(), s.clone().unwrap_or(Value::Null)))
                .collect();
            print_json(&json!({"cluster": cluster, "nodes": nodes, "verdict": v.as_str(), "reason": reason}));
        }
        OutputFormat::Table => print_out(&render_status(&cluster, &statuses, v, &reason)),
    }
    Ok(v.exit_code())
}

fn render_members(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = member_list(answer)
        .into_iter()
        .map(|m| {
            vec![
                cell(&m["id"]),
                cell(&m["voter"]),
                cell(&m["reachable"]),
                cell(&m["api_addr"]),
                cell(&m["peer_addr"]),
                cell(&m["tags"]["nofailover"]),
                cell(&m["tags"]["priority"]),
            ]
        })
        .collect();
    render_table(
        &["ID", "VOTER", "REACHABLE", "API", "PEER", "NOFAILOVER", "PRIORITY"],
        &rows,
    )
}

/// `voter` or `learner`, from a member object.
fn member_kind(member: &Value) -> &'static str {
    if member["voter"].as_bool().unwrap_or(false) {
        "voter"
    } else {
        "learner"
    }
}

async fn members(api: &Api, cmd: MembersCommand, output: OutputFormat) -> Result<i32, CallError> {
    let (answer, confirmation) = match cmd {
        MembersCommand::List => {
            let answer = api.call(Method::GET, "/v1/members", None).await?;
            let table = render_members(&answer);
            (answer, table)
        }
        MembersCommand::Add {
            id,
            api_addr,
            peer_addr,
        } => {
            let body = json!({"id": id, "api_addr": api_addr, "peer_addr": peer_addr});
            let answer = api.call(Method::POST, "/v1/members", Some(body)).await?;
            let line = format!(
                "added member {id} as {} (api {api_addr}, peer {peer_addr})\n",
                member_kind(&answer["member"])
            );
            (answer, line)
        }
        MembersCommand::Remove { id, force } => {
            let answer = api
                .call(Method::DELETE, &format!("/v1/members/{id}?force={force}"), None)
                .await?;
            (answer, format!("removed member {id}\n"))
        }
        MembersCommand::Tag {
            id,
            nofailover,
            priority,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = nofailover {
                body.insert("nofailover".into(), json!(n));
            }
            if let Some(p) = priority {
                body.insert("priority".into(), json!(p));
            }
            let answer = api
                .call(
                    Method::PUT,
                    &format!("/v1/members/{id}/tags"),
                    Some(Value::Object(body)),
                )
                .await?;
            let t = &answer["member"]["tags"];
            let line = format!(
                "member {id}: nofailover {}, priority {}\n",
                cell(&t["nofailover"]),
                cell(&t["priority"])
            );
            (answer, line)
        }
        MembersCommand::Promote { id } => {
            let answer = api
                .call(Method::POST, &format!("/v1/members/{id}/promote"), None)
                .await?;
            let line = format!("member {id} is now a {}\n", member_kind(&answer["member"]));
            (answer, line)
        }
    };
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => print_out(&confirmation),
    }
    Ok(EXIT_OK)
}

fn render_history(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["history"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let at = if h["at"].is_null() { &h["at_ms"] } else { &h["at"] };
            vec![
                cell(&h["epoch"]),
                cell(&h["from"]),
                cell(&h["to"]),
                cell(&h["reason"]),
                cell(at),
            ]
        })
        .collect();
    render_table(&["EPOCH", "FROM", "TO", "REASON", "AT"], &rows)
}

async fn gitsync_sync(api: &Api, accept_reset: bool, output: OutputFormat) -> Result<i32, CallError> {
    let path = if accept_reset {
        "/v1/gitsync/sync?accept_reset=true"
    } else {
        "/v1/gitsync/sync"
    };
    let answer = api.call(Method::POST, path, None).await?;
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => print_out(&format!(
            "node {}: {} at {}\n",
            cell(&answer["node_id"]),
            cell(&answer["outcome"]["change"]),
            short_sha(&answer["outcome"]["commit"]["sha"])
        )),
    }
    Ok(EXIT_OK)
}

fn short_sha(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".to_string())
}

/// Every node's Git Sync state side by side; exit 1 unless all reachable nodes serve one commit.
async fn gitsync_status(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let cluster = api.call(Method::GET, "/v1/cluster", None).await?;
    let statuses = fetch_statuses(api, &cluster).await;
    let (converged, text) = render_gitsync(&statuses);
    match output {
        OutputFormat::Json => {
            let nodes: Map<String, Value> = statuses
                .iter()
                .map(|(id, s)| {
                    (
                        id.to_string(),
                        s.as_ref().map(|s| s["gitsync"].clone()).unwrap_or(Value::Null),
                    )
                })
                .collect();
            print_json(&json!({"nodes": nodes, "converged": converged}));
        }
        OutputFormat::Table => print_out(&text),
    }
    Ok(if converged { EXIT_OK } else { EXIT_ERROR })
}

/// The table and whether every node serves the same commit.
fn render_gitsync(statuses: &BTreeMap<u64, Option<Value>>) -> (bool, String) {
    let mut commits = BTreeSet::new();
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|(id, s)| match s.as_ref().map(|s| &s["gitsync"]) {
            Some(g) if g.is_object() => {
                commits.insert(g["commit"].as_str().unwrap_or("").to_string());
                vec![
                    id.to_string(),
                    cell(&g["state"]),
                    short_sha(&g["commit"]),
                    g["last_success_at_ms"]
                        .as_u64()
                        .map(crate::util::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    g["last_error"].as_str().unwrap_or("-").chars().take(60).collect(),
                ]
            }
            Some(_) => vec![id.to_string(), "disabled".into(), "-".into(), "-".into(), "-".into()],
            None => vec![id.to_string(), "unreachable".into(), "-".into(), "-".into(), "-".into()],
        })
        .collect();
    let converged = commits.len() == 1 && !commits.contains("") && rows.iter().all(|r| r[1] != "unreachable");
    let mut out = render_table(&["NODE", "STATE", "COMMIT", "LAST SUCCESS", "LAST ERROR"], &rows);
    out.push_str(if converged { "converged\n" } else { "not converged\n" });
    (converged, out)
}

async fn history(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::GET, "/v1/history", None).await?;
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => print_out(&render_history(&answer)),
    }
    Ok(EXIT_OK)
}

async fn maintenance(api: &Api, state: OnOff, output: OutputFormat) -> Result<i32, CallError> {
    let enabled = state == OnOff::On;
    let answer = api
        .call(Method::PUT, "/v1/maintenance", Some(json!({"enabled": enabled})))
        .await?;
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => {
            let now = answer["maintenance"].as_bool().unwrap_or(enabled);
            print_out(&format!("maintenance {}\n", if now { "on" } else { "off" }));
        }
    }
    Ok(EXIT_OK)
}

async fn promotion(api: &Api, path: &str, body: Value, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::POST, path, Some(body)).await?;
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => print_out(&format!(
            "primary is now node {} (epoch {}), was {}\n",
            answer["to"],
            answer["epoch"],
            if answer["from"].is_null() {
                "none".to_string()
            } else {
                format!("node {}", answer["from"])
            }
        )),
    }
    Ok(EXIT_OK)
}

/// The datastore's value limit. Stdin is read up to one byte more, so an oversized value reaches the server
/// as oversized and is refused there (413), never cut silently to fit.
const MAX_VALUE_BYTES: usize = keel_replication::MAX_VALUE_BYTES;

/// Percent-encodes everything in `s` but RFC 3986 unreserved characters, and `/` when `keep_slash`.
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `/v1/kv/{key}` with the key percent-encoded. `/` stays readable unless the key has a `.` or `..`
/// segment, which an HTTP client would resolve away (`a/../b` becomes `b`); then `/` is encoded too.
pub fn kv_path(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("the key is empty: give a non-empty key".to_string());
    }
    if key == "." || key == ".." {
        return Err(format!(
            "the key {key:?} cannot be put in a URL path (clients resolve it away): use another key"
        ));
    }
    let dot_segment = key.split('/').any(|seg| seg == "." || seg == "..");
    Ok(format!("/v1/kv/{}", percent_encode(key, !dot_segment)))
}

/// `/v1/kv?prefix=&limit=&after=`, leaving out what is not set.
pub fn kv_list_path(prefix: Option<&str>, limit: Option<u32>, after: Option<&str>) -> String {
    let mut params = Vec::new();
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        params.push(format!("prefix={}", percent_encode(p, false)));
    }
    if let Some(l) = limit {
        params.push(format!("limit={l}"));
    }
    if let Some(a) = after {
        params.push(format!("after={}", percent_encode(a, false)));
    }
    if params.is_empty() {
        "/v1/kv".to_string()
    } else {
        format!("/v1/kv?{}", params.join("&"))
    }
}

/// A header as JSON: a number when it is one, else a string, `null` when absent or not text.
fn header_json(headers: &reqwest::header::HeaderMap, name: &str) -> Value {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None => Value::Null,
        Some(s) => s.trim().parse::<u64>().map_or_else(|_| json!(s), |n| json!(n)),
    }
}

/// `keel kv get --output json`: the value (UTF-8, lossy) and the metadata headers of the answer.
pub fn kv_get_json(key: &str, value: &[u8], headers: &reqwest::header::HeaderMap) -> Value {
    json!({
        "key": key,
        "value": String::from_utf8_lossy(value),
        "version": header_json(headers, "keel-version"),
        "epoch": header_json(headers, "keel-epoch"),
        "position": headers.get("keel-position").and_then(|v| v.to_str().ok()),
        "lag_ms": header_json(headers, "keel-lag-ms"),
    })
}

/// Reads `r` to the end, but at most `limit + 1` bytes; `true` when there was more than `limit`.
fn read_bounded(r: impl Read, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut buf)?;
    let over = buf.len() > limit;
    Ok((buf, over))
}

/// The value of `kv put` / `kv cas`: the argument, or stdin when it is absent or `-`. `true` when stdin
/// held more than [`MAX_VALUE_BYTES`] (only the first `MAX_VALUE_BYTES + 1` bytes are returned).
async fn value_arg(value: Option<OsString>) -> Result<(Vec<u8>, bool), CallError> {
    if let Some(v) = value.filter(|v| v != "-") {
        return Ok((v.into_encoded_bytes(), false));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("reading the value from stdin; end it with Ctrl-D");
    }
    tokio::task::spawn_blocking(|| read_bounded(std::io::stdin().lock(), MAX_VALUE_BYTES))
        .await
        .map_err(|e| CallError::Local(format!("read the value from stdin: {e}")))?
        .map_err(|e| CallError::Local(format!("read the value from stdin: {}", error_chain(&e))))
}

/// Up to `max_chars` characters of `bytes` (UTF-8, lossy) with control characters escaped, and `…` when cut.
fn preview(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Standard base64 (padding optional); `None` on a character outside the alphabet.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn render_kv_list(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| vec![cell(&i["key"]), cell(&i["version"]), cell(&i["size"])])
        .collect();
    render_table(&["KEY", "VERSION", "SIZE"], &rows)
}

/// Longest value preview in `keel diverged list`.
const DIVERGED_VALUE_CHARS: usize = 40;

fn render_diverged(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["diverged"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let value = match d["value_base64"].as_str() {
                None => "-".to_string(),
                Some(b64) => match base64_decode(b64) {
                    Some(bytes) => preview(&bytes, DIVERGED_VALUE_CHARS),
                    None => "(not base64)".to_string(),
                },
            };
            vec![
                cell(&d["rolled_back_at"]),
                cell(&d["position"]),
                cell(&d["key"]),
                cell(&d["deleted"]),
                value,
            ]
        })
        .collect();
    render_table(&["ROLLED_BACK_AT", "POSITION", "KEY", "DELETED", "VALUE"], &rows)
}

/// `kv put` and `kv cas`: send the value, print `KEY: version V at position P` or the server's JSON.
/// `stdin_over_limit`: the value is the cut-off start of a longer stdin, so a 413 is about all of it.
async fn kv_write(
    api: &Api,
    method: Method,
    path: &str,
    key: &str,
    value: Vec<u8>,
    stdin_over_limit: bool,
    output: OutputFormat,
) -> Result<i32, CallError> {
    let answer = api
        .call_raw(method, path, ReqBody::Bytes(value))
        .await
        .map_err(|e| match e {
            CallError::Status { status, code, .. } if stdin_over_limit && status == StatusCode::PAYLOAD_TOO_LARGE => {
                CallError::Status {
                    status,
                    code,
                    message: format!(
                        "the value on stdin is over the datastore's {MAX_VALUE_BYTES}-byte limit \
                         (keel stopped reading it after {} bytes): store a smaller value",
                        MAX_VALUE_BYTES + 1
                    ),
                }
            }
            other => other,
        })?;
    let v = answer.json()?;
    match output {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Table => print_out(&format!(
            "{key}: version {} at position {}\n",
            cell(&v["version"]),
            cell(&v["position"])
        )),
    }
    Ok(EXIT_OK)
}

async fn kv(api: &Api, cmd: KvCommand, output: OutputFormat) -> Result<i32, CallError> {
    match cmd {
        KvCommand::Get { key, consistency } => {
            let mut path = kv_path(&key).map_err(CallError::Local)?;
            if let Some(c) = consistency {
                path.push_str("?consistency=");
                path.push_str(c.as_str());
            }
            let answer = api.call_raw(Method::GET, &path, ReqBody::Empty).await?;
            match output {
                OutputFormat::Json => print_json(&kv_get_json(&key, &answer.body, &answer.headers)),
                OutputFormat::Table => print_bytes(&answer.body),
            }
            Ok(EXIT_OK)
        }
        KvCommand::Put { key, value } => {
            let path = kv_path(&key).map_err(CallError::Local)?;
            let (value, over) = value_arg(value).await?;
            kv_write(api, Method::PUT, &path, &key, value, over, output).await
        }
        KvCommand::Cas { key, version, value } => {
            let path = format!("{}/cas?version={version}", kv_path(&key).map_err(CallError::Local)?);
            let (value, over) = value_arg(value).await?;
            kv_write(api, Method::POST, &path, &key, value, over, output).await
        }
        KvCommand::Del { key } => {
            let path = kv_path(&key).map_err(CallError::Local)?;
            let answer = api.call_raw(Method::DELETE, &path, ReqBody::Empty).await?;
            let v = answer.json()?;
            match output {
                OutputFormat::Json => print_json(&v),
                // 201: the key did not exist; the delete is recorded anyway.
                OutputFormat::Table if answer.status == StatusCode::CREATED => print_out(&format!(
                    "{key}: was not set (delete recorded at position {})\n",
                    cell(&v["position"])
                )),
                OutputFormat::Table => print_out(&format!("{key}: deleted at position {}\n", cell(&v["position"]))),
            }
            Ok(EXIT_OK)
        }
        KvCommand::List { prefix, limit, all } => {
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            let next = loop {
                let path = kv_list_path(prefix.as_deref(), limit, after.as_deref());
                let page = api.call(Method::GET, &path, None).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                let next = page["next"].as_str().map(str::to_string);
                match next {
                    // A `next` that does not move on would loop forever; stop there.
                    Some(n) if all && after.as_ref() != Some(&n) => after = Some(n),
                    other => break other,
                }
            };
            match output {
                OutputFormat::Json => print_json(&json!({"items": items, "next": next})),
                OutputFormat::Table => {
                    print_out(&render_kv_list(&items));
                    if next.is_some() {
                        eprintln!("(more keys follow: add --all to list them all)");
                    }
                }
            }
            Ok(EXIT_OK)
        }
    }
}

async fn diverged(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::GET, "/v1/diverged", None).await?;
    match output {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table => print_out(&render_diverged(&answer)),
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn member(id: u64, voter: bool) -> Value {
        json!({"id": id, "api_addr": format!("127.0.0.1:710{id}"), "peer_addr": format!("127.0.0.1:720{id}"),
               "voter": voter, "reachable": true, "tags": {"nofailover": false, "priority": 0}})
    }

    fn cluster(members: &[(u64, bool)]) -> Value {
        let members: Vec<Value> = members.iter().map(|(id, voter)| member(*id, *voter)).collect();
        json!({"cluster_id": "abc", "leader": 1, "term": 3, "members": members,
               "primary": {"node": 1, "epoch": 2}, "maintenance": false, "config": {}})
    }

    fn node_status(id: u64, leader: Option<u64>) -> Value {
        json!({"node_id": id, "role": if leader == Some(id) { "primary" } else { "replica" },
               "raft": {"state": if leader == Some(id) { "leader" } else { "follower" }, "term": 3,
                        "leader": leader, "last_applied": 12, "last_log_index": 12, "voter": true},
               "primary": null, "lease_remaining_ms": null, "maintenance": false, "cluster_id": "abc",
               "api_addr": format!("127.0.0.1:710{id}"), "peer_addr": format!("127.0.0.1:720{id}")})
    }

    /// `(id, Some(leader seen) | None = unreachable)`; `Some(None)` = answered without a leader.
    fn statuses(views: &[(u64, Option<Option<u64>>)]) -> BTreeMap<u64, Option<Value>> {
        views
            .iter()
            .map(|(id, view)| (*id, view.map(|leader| node_status(*id, leader))))
            .collect()
    }

    #[test]
    fn lone_leader_without_quorum_is_critical() {
        let cluster = json!({"members": [member(1, true), member(2, true), member(3, true)]});
        let lone = json!({"raft": {"leader": 1, "quorum": false}});
        let statuses = BTreeMap::from([(1, Some(lone)), (2, None), (3, None)]);
        assert_eq!(verdict(&cluster, &statuses).0, Verdict::Critical);
        let with_quorum = json!({"raft": {"leader": 1, "quorum": true}});
        let statuses = BTreeMap::from([(1, Some(with_quorum)), (2, None), (3, None)]);
        assert_eq!(verdict(&cluster, &statuses).0, Verdict::Degraded);
    }

    #[test]
    fn verdict_table() {
        let three = [(1, true), (2, true), (3, true)];
        let with_learner = [(1, true), (2, true), (3, true), (4, false)];
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, &[(u64, bool)], Vec<(u64, Option<Option<u64>>)>, Verdict, &str)> = vec![
            (
                "all agree",
                &three,
                vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(Some(1)))],
                Verdict::Healthy,
                "",
            ),
            (
                "one voter down",
                &three,
                vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, None)],
                Verdict::Degraded,
                "voter 3 unreachable",
            ),
            (
                "two voters down",
                &three,
                vec![(1, Some(Some(1))), (2, None), (3, None)],
                Verdict::Degraded,
                "voters 2 and 3 unreachable",
            ),
            (
                "learner down is fine",
                &with_learner,
                vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(Some(1))), (4, None)],
                Verdict::Healthy,
                "",
            ),
            (
                "disagreement",
                &three,
                vec![(1, Some(Some(1))), (2, Some(Some(2))), (3, Some(Some(1)))],
                Verdict::Degraded,
                "members disagree on the leader (1 says 1, 2 says 2, 3 says 1)",
            ),
            (
                "one member sees no leader",
                &three,
                vec![(1, Some(Some(1))), (2, Some(Some(1))), (3, Some(None))],
                Verdict::Degraded,
                "members disagree on the leader (1 says 1, 2 says 1, 3 says none)",
            ),
            (
                "down and disagreeing",
                &three,
                vec![(1, Some(Some(1))), (2, Some(Some(2))), (3, None)],
                Verdict::Degraded,
                "voter 3 unreachable; members disagree on the leader (1 says 1, 2 says 2)",
            ),
            (
                "no leader anywhere",
                &three,
                vec![(1, Some(None)), (2, Some(None)), (3, None)],
                Verdict::Critical,
                "no leader",
            ),
            (
                "nobody answers",
                &three,
                vec![(1, None), (2, None), (3, None)],
                Verdict::Critical,
                "no member answered /v1/status",
            ),
            (
                "single node",
                &[(1, true)],
                vec![(1, Some(Some(1)))],
                Verdict::Healthy,
                "",
            ),
        ];
        for (name, members, views, want, want_reason) in cases {
            let (got, reason) = verdict(&cluster(members), &statuses(&views));
            assert_eq!((got, reason.as_str()), (want, want_reason), "case {name}");
        }
    }

    #[test]
    fn verdict_exit_codes() {
        assert_eq!(Verdict::Healthy.exit_code(), 0);
        assert_eq!(Verdict::Degraded.exit_code(), 1);
        assert_eq!(Verdict::Critical.exit_code(), 2);
    }

    #[test]
    fn table_widths_follow_content() {
        let rows = vec![
            vec!["1".to_string(), "primary".to_string(), "x".to_string()],
            vec!["10".to_string()],
        ];
        let got = render_table(&["ID", "ROLE", "API"], &rows);
        assert_eq!(got, "ID  ROLE     API\n1   primary  x\n10\n");
    }

    #[test]
    fn table_header_only_and_unicode() {
        assert_eq!(render_table(&["A", "B"], &[]), "A  B\n");
        let rows = vec![
            vec!["é".to_string(), "z".to_string()],
            vec!["ab".to_string(), "".to_string()],
        ];
        assert_eq!(render_table(&["A", "B"], &rows), "A   B\né   z\nab\n");
    }

    #[test]
    fn cells() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!("")), "-");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(cell(&json!(false)), "no");
        assert_eq!(cell(&json!(12)), "12");
        assert_eq!(cell(&json!("a b")), "a b");
    }

    #[test]
    fn normalize_addr_cases() {
        let ok = [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("http://127.0.0.1:7101/", "http://127.0.0.1:7101"),
            ("  localhost:7101//", "http://localhost:7101"),
            ("http://[::1]:7101", "http://[::1]:7101"),
            ("https://127.0.0.1:7101/", "https://127.0.0.1:7101"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_addr(input).unwrap(), want, "{input}");
        }
        for bad in ["", "ftp://127.0.0.1:7101", "http://"] {
            assert!(normalize_addr(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn error_messages() {
        let body = br#"{"error":{"code":"not_found","message":"no member 9"}}"#;
        let e = status_error(StatusCode::NOT_FOUND, body);
        assert_eq!(
            e.describe("http://a"),
            "error: no member 9 (not_found, HTTP 404)\nhint: `keel members list` shows the member ids"
        );

        let e = status_error(StatusCode::BAD_GATEWAY, b"upstream down\n");
        assert_eq!(
            e.describe("http://a"),
            format!("error: HTTP 502 Bad Gateway: upstream down\n{NOT_KEEL_HINT}")
        );

        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(
            e.describe("http://a"),
            format!("error: HTTP 503 Service Unavailable\n{NOT_KEEL_HINT}")
        );

        // Every error the API can answer names a next step.
        for (status, code) in [
            (401, "unauthorized"),
            (400, "bad_request"),
            (404, "not_found"),
            (404, "gitsync_disabled"),
            (409, "cas_mismatch"),
            (409, "quorum_at_risk"),
            (409, "primary_healthy"),
            (409, "some_new_code"),
            (413, "too_large"),
            (500, "internal"),
            (503, "outcome_unknown"),
            (503, "no_primary"),
            (503, "timeout"),
        ] {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
            let text = status_error(StatusCode::from_u16(status).unwrap(), body.as_bytes()).describe("http://a");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(lines[1].starts_with("hint: ") && lines[1].len() > 20, "{text}");
        }
        let e = status_error(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"cas_mismatch","message":"key k is at version 3, not 2"}}"#,
        );
        assert!(
            e.describe("http://a").contains("--output json"),
            "{}",
            e.describe("http://a")
        );

        let e = CallError::Unreachable("connection refused".into());
        assert_eq!(
            e.describe("http://a"),
            format!("error: cannot reach http://a: connection refused\n{UNREACHABLE_HINT}")
        );
    }

    #[test]
    fn status_rendering() {
        let c = cluster(&[(1, true), (2, true), (3, false)]);
        let s = statuses(&[(1, Some(Some(1))), (2, Some(Some(1))), (3, None)]);
        let (v, reason) = verdict(&c, &s);
        let text = render_status(&c, &s, v, &reason);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cluster abc — leader 1, primary 1 (epoch 2), maintenance off");
        assert_eq!(
            lines[1],
            "NODE  ROLE     RAFT      TERM  LEADER  REACHABLE  APPLIED  VOTER  API"
        );
        assert_eq!(
            lines[2],
            "1     primary  leader    3     1       yes        12       yes    127.0.0.1:7101"
        );
        assert_eq!(
            lines[4],
            "3     -        -         -     -       no         -        no     127.0.0.1:7103"
        );
        assert_eq!(lines[5], "healthy");

        let c = json!({"cluster_id": null, "leader": null, "members": [], "primary": null, "maintenance": true});
        let text = render_status(&c, &BTreeMap::new(), Verdict::Critical, "no leader");
        assert!(
            text.starts_with("cluster (none) — leader none, primary none, maintenance on\n"),
            "{text}"
        );
        assert!(text.ends_with("critical: no leader\n"), "{text}");
    }

    #[test]
    fn members_and_history_rendering() {
        let mut answer = json!({"members": [member(2, false), member(1, true)]});
        answer["members"][0]["api_addr"] = json!("");
        let text = render_members(&answer);
        assert_eq!(
            text,
            "ID  VOTER  REACHABLE  API             PEER            NOFAILOVER  PRIORITY\n\
             1   yes    yes        127.0.0.1:7101  127.0.0.1:7201  no          0\n\
             2   no     yes        -               127.0.0.1:7202  no          0\n"
        );
        let answer = json!({"history": [
            {"epoch": 1, "from": null, "to": 1, "reason": "bootstrap", "at": "2024-01-01T00:00:00Z", "at_ms": 1},
            {"epoch": 2, "from": 1, "to": 2, "reason": "switchover", "at_ms": 1700000000000u64},
        ]});
        assert_eq!(
            render_history(&answer),
            "EPOCH  FROM  TO  REASON      AT\n\
             1      -     1   bootstrap   2024-01-01T00:00:00Z\n\
             2      1     2   switchover  1700000000000\n"
        );
        assert_eq!(render_history(&json!({})), "EPOCH  FROM  TO  REASON  AT\n");
    }

    /// The `keel` command line the lead wires in main.rs: client options flattened at the top level, and
    /// `--version` propagated to every subcommand (which `kv cas --version N` must not clash with).
    #[derive(clap::Parser, Debug)]
    #[command(name = "keel", version, propagate_version = true)]
    struct TestCli {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TestCommand {
        Serve(Box<crate::config::ServeArgs>),
        Up(crate::cli::up::UpArgs),
        #[command(flatten)]
        Client(ClientCommand),
    }

    #[test]
    fn command_line_shape() {
        TestCli::command().debug_assert();
        let cli = TestCli::try_parse_from(["keel", "status", "--addr", "10.0.0.1:7101", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, TestCommand::Client(ClientCommand::Status)));
        assert_eq!(cli.client.addr, "10.0.0.1:7101");
        assert_eq!(cli.client.output, OutputFormat::Json);

        let cli = TestCli::try_parse_from(["keel", "members", "remove", "4", "--force", "--timeout-ms", "10"]).unwrap();
        assert!(matches!(
            cli.command,
            TestCommand::Client(ClientCommand::Members(MembersCommand::Remove { id: 4, force: true }))
        ));
        assert_eq!(cli.client.timeout_ms, 10);

        let cli = TestCli::try_parse_from(["keel", "maintenance", "on", "--admin-token", "t"]).unwrap();
        assert!(matches!(
            cli.command,
            TestCommand::Client(ClientCommand::Maintenance { state: OnOff::On })
        ));
        assert_eq!(cli.client.admin_token.as_ref().map(Secret::expose), Some("t"));

        let cli = TestCli::try_parse_from(["keel", "up", "--nodes", "5", "--", "--heartbeat-ms", "50"]).unwrap();
        let TestCommand::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(
            (up.nodes, up.serve_args),
            (5, vec!["--heartbeat-ms".to_string(), "50".to_string()])
        );
        assert!(TestCli::try_parse_from(["keel", "up", "--nodes", "10"]).is_err());

        // `serve` has its own `--admin-token`; the global one must not clash with it.
        let cli = TestCli::try_parse_from(["keel", "serve", "--id", "1", "--admin-token", "s"]).unwrap();
        let TestCommand::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.admin_token.as_ref().map(Secret::expose), Some("s"));
        assert!(format!("{:?}", cli.client).contains("***"));
    }

    /// A tiny HTTP server answering fixed JSON per path, for end-to-end runs of [`run`].
    async fn mock(routes: Vec<(&'static str, u16, String)>) -> String {
        use axum::http::StatusCode as S;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes: Vec<(String, u16, String)> = routes
            .into_iter()
            .map(|(p, s, b)| (p.to_string(), s, b.replace("SELF", &addr)))
            .collect();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let routes = routes.clone();
            async move {
                match routes.iter().find(|(p, _, _)| *p == uri.path()) {
                    Some((_, status, body)) => (S::from_u16(*status).unwrap(), body.clone()),
                    None => (
                        S::NOT_FOUND,
                        r#"{"error":{"code":"not_found","message":"no route"}}"#.to_string(),
                    ),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn opts(addr: &str) -> ClientOpts {
        ClientOpts {
            addr: addr.to_string(),
            admin_token: None,
            output: OutputFormat::Table,
            timeout_ms: 2000,
            ca: None,
        }
    }

    #[tokio::test]
    async fn run_against_mock_node() {
        let cluster = r#"{"cluster_id":"abc","leader":1,"term":3,"primary":{"node":1,"epoch":2},"maintenance":false,
            "members":[{"id":1,"api_addr":"SELF","peer_addr":"x","voter":true,"reachable":true,"tags":{}},
                       {"id":2,"api_addr":"127.0.0.1:1","peer_addr":"y","voter":true,"reachable":false,"tags":{}}]}"#;
        let status = r#"{"node_id":1,"role":"primary","raft":{"state":"leader","term":3,"leader":1,"last_applied":5}}"#;
        let addr = mock(vec![
            ("/v1/cluster", 200, cluster.to_string()),
            ("/v1/status", 200, status.to_string()),
            ("/v1/history", 200, r#"{"history":[]}"#.to_string()),
            ("/v1/maintenance", 503, "overloaded".to_string()),
        ])
        .await;
        let o = opts(&addr);
        // Node 2 (a voter) is unreachable: degraded.
        assert_eq!(run(ClientCommand::Status, &o).await.unwrap(), 1);
        assert_eq!(run(ClientCommand::History, &o).await.unwrap(), 0);
        assert_eq!(
            run(ClientCommand::Members(MembersCommand::Promote { id: 9 }), &o)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            run(ClientCommand::Maintenance { state: OnOff::On }, &o).await.unwrap(),
            1
        );
        let json_opts = ClientOpts {
            output: OutputFormat::Json,
            ..o
        };
        assert_eq!(run(ClientCommand::Status, &json_opts).await.unwrap(), 1);
    }

    #[test]
    fn kv_command_line() {
        let parse = |args: &[&str]| TestCli::try_parse_from(args).map(|c| c.command);
        let Ok(TestCommand::Client(ClientCommand::Kv(KvCommand::Cas { key, version, value }))) =
            parse(&["keel", "kv", "cas", "a/b", "--version", "3", "new value"])
        else {
            panic!("not cas")
        };
        assert_eq!(
            (key.as_str(), version, value),
            ("a/b", 3, Some(OsString::from("new value")))
        );
        assert!(matches!(
            parse(&["keel", "kv", "get", "k", "--consistency", "primary", "--output", "json"]),
            Ok(TestCommand::Client(ClientCommand::Kv(KvCommand::Get {
                consistency: Some(Consistency::Primary),
                ..
            })))
        ));
        assert!(matches!(
            parse(&["keel", "kv", "put", "k"]),
            Ok(TestCommand::Client(ClientCommand::Kv(KvCommand::Put {
                value: None,
                ..
            })))
        ));
        // A value starting with `-` goes after `--`.
        let Ok(TestCommand::Client(ClientCommand::Kv(KvCommand::Put { value, .. }))) =
            parse(&["keel", "kv", "put", "k", "--", "-5"])
        else {
            panic!("not put")
        };
        assert_eq!(value, Some(OsString::from("-5")));
        assert!(matches!(
            parse(&["keel", "kv", "list", "--prefix", "a/", "--limit", "2", "--all"]),
            Ok(TestCommand::Client(ClientCommand::Kv(KvCommand::List {
                limit: Some(2),
                all: true,
                ..
            })))
        ));
        assert!(matches!(
            parse(&["keel", "diverged", "list"]),
            Ok(TestCommand::Client(ClientCommand::Diverged(DivergedCommand::List)))
        ));
        assert!(parse(&["keel", "kv", "cas", "k", "v"]).is_err(), "cas needs --version");
        assert!(parse(&["keel", "kv", "get", "k", "--consistency", "eventual"]).is_err());
    }

    #[test]
    fn kv_urls() {
        assert_eq!(kv_path("a").unwrap(), "/v1/kv/a");
        assert_eq!(kv_path("dir/sub/key").unwrap(), "/v1/kv/dir/sub/key");
        assert_eq!(
            kv_path("a b?c#d%e&f=g+h").unwrap(),
            "/v1/kv/a%20b%3Fc%23d%25e%26f%3Dg%2Bh"
        );
        assert_eq!(kv_path("ü/.x").unwrap(), "/v1/kv/%C3%BC/.x");
        assert_eq!(kv_path("a/../b").unwrap(), "/v1/kv/a%2F..%2Fb");
        assert_eq!(kv_path("./a").unwrap(), "/v1/kv/.%2Fa");
        assert!(kv_path("").is_err());
        assert!(kv_path("..").is_err());
        // What the HTTP client really sends: nothing resolved away, nothing re-encoded.
        for key in ["a/../b", "x/./y", "a b/c", "a//b", "..."] {
            let path = kv_path(key).unwrap();
            let url = reqwest::Url::parse(&format!("http://h{path}")).unwrap();
            assert_eq!(url.path(), path, "{key}");
        }
        assert_eq!(kv_list_path(None, None, None), "/v1/kv");
        assert_eq!(kv_list_path(Some(""), None, None), "/v1/kv");
        assert_eq!(
            kv_list_path(Some("a b/+"), Some(10), Some("a b/x&y")),
            "/v1/kv?prefix=a%20b%2F%2B&limit=10&after=a%20b%2Fx%26y"
        );
    }

    #[test]
    fn kv_get_headers_to_json() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        h.insert("keel-version", HeaderValue::from_static("7"));
        h.insert("keel-epoch", HeaderValue::from_static("2"));
        h.insert("keel-position", HeaderValue::from_static("2:9"));
        h.insert("keel-lag-ms", HeaderValue::from_static("15"));
        assert_eq!(
            kv_get_json("k", b"v \xff", &h),
            json!({"key": "k", "value": "v \u{fffd}", "version": 7, "epoch": 2, "position": "2:9", "lag_ms": 15})
        );
        // On the primary there is no lag header.
        h.remove("keel-lag-ms");
        assert_eq!(kv_get_json("k", b"", &h)["lag_ms"], Value::Null);
        assert_eq!(kv_get_json("k", b"", &HeaderMap::new())["position"], Value::Null);
    }

    #[test]
    fn bounded_stdin_read() {
        let (v, over) = read_bounded(&b"hello"[..], 10).unwrap();
        assert_eq!((v.as_slice(), over), (&b"hello"[..], false));
        let (v, over) = read_bounded(&b"0123456789"[..], 10).unwrap();
        assert_eq!((v.len(), over), (10, false));
        let big = vec![7u8; 25];
        let (v, over) = read_bounded(big.as_slice(), 10).unwrap();
        assert_eq!((v.len(), over), (11, true));
    }

    #[test]
    fn kv_and_diverged_rendering() {
        let items = [
            json!({"key": "a", "version": 3, "size": 12}),
            json!({"key": "dir/long key", "version": 10, "size": 0}),
        ];
        assert_eq!(
            render_kv_list(&items),
            "KEY           VERSION  SIZE\n\
             a             3        12\n\
             dir/long key  10       0\n"
        );
        assert_eq!(render_kv_list(&[]), "KEY  VERSION  SIZE\n");

        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGkh"), Some(b"hi!".to_vec()));
        assert_eq!(base64_decode("aA"), Some(b"h".to_vec()));
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("a?=="), None);
        assert_eq!(preview(b"line\nnext", 40), "line\\nnext");
        assert_eq!(preview("é".repeat(41).as_bytes(), 40), format!("{}…", "é".repeat(40)));
        assert_eq!(preview("é".repeat(40).as_bytes(), 40), "é".repeat(40));

        let answer = json!({"diverged": [
            {"rolled_back_at": "2026-11-26T13:05:08.210Z", "position": "3:12", "key": "k",
             "value_base64": "aGVsbG8=", "deleted": false},
            {"rolled_back_at": "2026-11-26T13:05:08.210Z", "position": "3:13", "key": "gone",
             "value_base64": null, "deleted": true},
            {"rolled_back_at": "2026-11-26T13:05:08.210Z", "position": "3:14", "key": "big",
             // 50 × "x"
             "value_base64": "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA==", "deleted": false},
        ]});
        assert_eq!(
            render_diverged(&answer),
            format!(
                "ROLLED_BACK_AT            POSITION  KEY   DELETED  VALUE\n\
                 2026-11-26T13:05:08.210Z  3:12      k     no       hello\n\
                 2026-11-26T13:05:08.210Z  3:13      gone  yes      -\n\
                 2026-11-26T13:05:08.210Z  3:14      big   no       {}…\n",
                "x".repeat(40)
            )
        );
        assert_eq!(
            render_diverged(&json!({"diverged": []})),
            "ROLLED_BACK_AT  POSITION  KEY  DELETED  VALUE\n"
        );
    }

    /// Requests a [`kv_mock`] saw, as `METHOD decoded-key-or-path ?query`.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    /// A stateful mock of the datastore API: PUT stores, GET answers the bytes with `Keel-*` headers (404
    /// when absent), DELETE removes, POST (cas) always conflicts, `GET /v1/kv` lists one key per page.
    async fn kv_mock() -> (String, Seen) {
        use axum::extract::{Path, RawQuery};
        use axum::http::{HeaderMap, StatusCode as S};
        use axum::response::IntoResponse;
        use std::sync::{Arc, Mutex};
        type Store = Arc<Mutex<BTreeMap<String, (Vec<u8>, u64)>>>;
        let store: Store = Arc::default();
        let seen: Seen = Arc::default();
        let not_found = |key: &str| {
            let body = json!({"error": {"code": "not_found", "message": format!("no key {key:?}")}});
            (S::NOT_FOUND, body.to_string()).into_response()
        };
        let (st, sn) = (store.clone(), seen.clone());
        let put = move |Path(key): Path<String>, body: bytes::Bytes| {
            let (store, seen) = (st.clone(), sn.clone());
            async move {
                seen.lock().unwrap().push(format!("PUT {key}"));
                let mut store = store.lock().unwrap();
                let version = store.values().map(|(_, v)| *v).max().unwrap_or(0) + 1;
                let existed = store.insert(key, (body.to_vec(), version)).is_some();
                let status = if existed { S::OK } else { S::CREATED };
                let body = json!({"version": version, "position": format!("1:{version}"), "epoch": 1});
                (status, body.to_string()).into_response()
            }
        };
        let (st, sn) = (store.clone(), seen.clone());
        let get = move |Path(key): Path<String>, RawQuery(q): RawQuery| {
            let (store, seen) = (st.clone(), sn.clone());
            async move {
                seen.lock()
                    .unwrap()
                    .push(format!("GET {key} ?{}", q.unwrap_or_default()));
                match store.lock().unwrap().get(&key) {
                    Some((value, version)) => {
                        let mut h = HeaderMap::new();
                        h.insert("keel-version", version.to_string().parse().unwrap());
                        h.insert("keel-epoch", "1".parse().unwrap());
                        h.insert("keel-position", format!("1:{version}").parse().unwrap());
                        (S::OK, h, value.clone()).into_response()
                    }
                    None => not_found(&key),
                }
            }
        };
        let (st, sn) = (store.clone(), seen.clone());
        let del = move |Path(key): Path<String>| {
            let (store, seen) = (st.clone(), sn.clone());
            async move {
                seen.lock().unwrap().push(format!("DELETE {key}"));
                let existed = store.lock().unwrap().remove(&key).is_some();
                let status = if existed { S::OK } else { S::CREATED };
                (status, r#"{"version":0,"position":"1:99","epoch":1}"#).into_response()
            }
        };
        let cas = || async {
            let body = json!({"error": {"code": "cas_mismatch", "message": "compare-and-set failed"}});
            (S::CONFLICT, body.to_string())
        };
        let (st, sn) = (store.clone(), seen.clone());
        let list = move |RawQuery(q): RawQuery| {
            let (store, seen) = (st.clone(), sn.clone());
            async move {
                let q = q.unwrap_or_default();
                seen.lock().unwrap().push(format!("LIST ?{q}"));
                // One key per page; `after` is the last key of the previous page.
                let url = reqwest::Url::parse(&format!("http://mock/?{q}")).unwrap();
                let after = url
                    .query_pairs()
                    .find(|(k, _)| k == "after")
                    .map(|(_, v)| v.into_owned());
                let store = store.lock().unwrap();
                let mut keys = store
                    .iter()
                    .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()));
                let items: Vec<Value> = keys
                    .next()
                    .map(|(k, (v, ver))| json!({"key": k, "version": ver, "size": v.len()}))
                    .into_iter()
                    .collect();
                let next = keys.next().and(items.first().map(|i| i["key"].clone()));
                json!({"items": items, "next": next}).to_string()
            }
        };
        let app = axum::Router::new()
            .route("/v1/kv", axum::routing::get(list))
            .route("/v1/kv/{*key}", axum::routing::put(put).get(get).delete(del).post(cas));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, seen)
    }

    #[tokio::test]
    async fn kv_put_then_get_against_mock() {
        let (addr, seen) = kv_mock().await;
        let o = opts(&addr);
        let kv = |c: KvCommand| ClientCommand::Kv(c);
        let put = |key: &str, value: &str| {
            kv(KvCommand::Put {
                key: key.to_string(),
                value: Some(value.into()),
            })
        };
        let get = |key: &str, consistency| {
            kv(KvCommand::Get {
                key: key.to_string(),
                consistency,
            })
        };
        assert_eq!(run(put("dir/a b", "hello world"), &o).await.unwrap(), 0);
        assert_eq!(run(put("z", "2"), &o).await.unwrap(), 0);
        assert_eq!(run(get("dir/a b", Some(Consistency::Primary)), &o).await.unwrap(), 0);
        let json_opts = ClientOpts {
            output: OutputFormat::Json,
            ..opts(&addr)
        };
        assert_eq!(run(get("dir/a b", None), &json_opts).await.unwrap(), 0);
        assert_eq!(run(get("missing", None), &o).await.unwrap(), 1);
        let cas = kv(KvCommand::Cas {
            key: "z".into(),
            version: 1,
            value: Some("3".into()),
        });
        assert_eq!(run(cas, &o).await.unwrap(), 1);
        let list = kv(KvCommand::List {
            prefix: None,
            limit: Some(1),
            all: true,
        });
        assert_eq!(run(list, &json_opts).await.unwrap(), 0);
        assert_eq!(run(kv(KvCommand::Del { key: "z".into() }), &o).await.unwrap(), 0);
        assert_eq!(run(kv(KvCommand::Del { key: "z".into() }), &o).await.unwrap(), 0);
        assert_eq!(run(get("", None), &o).await.unwrap(), 1);
        assert_eq!(
            seen.lock().unwrap().clone(),
            [
                "PUT dir/a b",
                "PUT z",
                "GET dir/a b ?consistency=primary",
                "GET dir/a b ?",
                "GET missing ?",
                "LIST ?limit=1",
                "LIST ?limit=1&after=dir%2Fa%20b",
                "DELETE z",
                "DELETE z",
            ]
        );
    }

    #[tokio::test]
    async fn run_unreachable() {
        // Bind then drop to get a port nothing listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let o = opts(&addr);
        assert_eq!(run(ClientCommand::Status, &o).await.unwrap(), 2);
        assert_eq!(run(ClientCommand::History, &o).await.unwrap(), 1);
        assert!(run(ClientCommand::Status, &opts("ftp://x")).await.is_err());
        // A --ca file that does not exist is a local error, before any request.
        let mut o = opts("https://127.0.0.1:1");
        o.ca = Some("/nonexistent/ca.pem".into());
        let e = run(ClientCommand::Status, &o).await.unwrap_err();
        assert!(format!("{e:#}").contains("read --ca /nonexistent/ca.pem"), "{e:#}");
    }
}
