//! `GET /v1/openapi.json`: an OpenAPI 3.0 description of every public endpoint on the API port
//! (the router in [`crate::http::router`]): methods, path and query parameters, request bodies,
//! status codes with the JSON error format, and the admin token.
//!
//! The spec is built from one table, [`operations`]. Two tests keep it in step with the router:
//! `spec_matches_router` (below) reads the `.route(...)` calls of `api.rs` and fails when a route
//! is missing from the table or the table names a route the router does not have, and the live
//! test `node/tests/openapi.rs` sends every operation of the spec to a real node and fails when
//! one lands in the router's fallback (404 `no such endpoint` / 405). Whether an operation needs
//! the admin token is not written twice: it is [`crate::http::requires_admin`], evaluated here.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// One operation of the spec.
pub struct Op {
    /// Lower-case HTTP method, as OpenAPI spells it.
    pub method: &'static str,
    /// OpenAPI path template (`/v1/members/{id}`).
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Path, query and header parameters (OpenAPI parameter objects).
    pub params: Vec<Value>,
    /// Request body (OpenAPI request body object), if any.
    pub body: Option<Value>,
    /// Status code → OpenAPI response object or `$ref`.
    pub responses: Vec<(&'static str, Value)>,
}

/// Routes of the router that are deliberately not in the spec, with the reason.
pub const UNDOCUMENTED: &[(&str, &str, &str)] = &[(
    "*",
    "/v1/kv/",
    "not an endpoint: any method on the bare prefix answers 400 `bad_request` naming the empty key",
)];

/// Router routes whose spec path differs from the axum pattern beyond `{*x}` → `{x}`:
/// `(method, axum path, spec path)`.
pub const ALIASES: &[(&str, &str, &str)] = &[
    // One wildcard route serves `/v1/kv/{key}/cas`; any other POST under /v1/kv/ is a 405.
    ("post", "/v1/kv/{*key}", "/v1/kv/{key}/cas"),
];

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn header(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": description, "schema": {"type": "string"}})
}

fn member_id() -> Value {
    path_param(
        "id",
        "member id (a positive integer; anything else is 400)",
        json!({"type": "integer", "format": "int64", "minimum": 1}),
    )
}

fn json_body(schema: Value, required: bool) -> Option<Value> {
    Some(json!({"required": required, "content": {"application/json": {"schema": schema}}}))
}

fn raw_body(description: &str) -> Option<Value> {
    let mut body = binary(description);
    body["required"] = json!(false);
    Some(body)
}

/// Raw bytes, described.
fn binary(description: &str) -> Value {
    json!({"description": description, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn obj(required: &[&str]) -> Value {
    json!({"type": "object", "required": required})
}

/// A GET without parameters or body: 200 with `answer`, or 503.
fn get(path: &'static str, tag: &'static str, summary: &'static str, answer: Value) -> Op {
    Op {
        method: "get",
        path,
        tag,
        summary,
        params: vec![],
        body: None,
        responses: vec![("200", answer), ("503", r("Unavailable"))],
    }
}

/// A 200 answer of `mime` text.
fn text(description: &str, mime: &str) -> Value {
    json!({"description": description, "content": {mime: {"schema": {"type": "string"}}}})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// The standard error answers for these status codes, as `$ref`s to `components/responses`.
fn errors(statuses: &[&'static str]) -> Vec<(&'static str, Value)> {
    statuses
        .iter()
        .map(|status| {
            let name = match *status {
                "400" => "BadRequest",
                "401" => "Unauthorized",
                "403" => "Forbidden",
                "404" => "NotFound",
                "409" => "Conflict",
                "413" => "TooLarge",
                "503" => "Unavailable",
                other => panic!("no standard error answer for {other}"),
            };
            (*status, r(name))
        })
        .collect()
}

/// `success`, then the standard error answers for `statuses`.
fn and_errors(success: (&'static str, Value), statuses: &[&'static str]) -> Vec<(&'static str, Value)> {
    let mut v = vec![success];
    v.extend(errors(statuses));
    v
}

/// The standard error answers, shared through `components/responses`.
fn error_responses() -> Value {
    let e = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "BadRequest": e("`bad_request`: malformed JSON, unknown fields, bad ids or query values, invalid config"),
        "Unauthorized": e("`unauthorized`: the admin token (admin endpoints) or a data-plane token (`/v1/kv*`, \
    `/v1/diverged`, `/v1/gitsync/files/*`) is configured and no token that allows the request was sent as \
    `Authorization: Bearer <token>`"),
        "Forbidden": e("`forbidden`: a write on the data plane with the read token (writes need the client or admin token)"),
        "NotFound": e("`not_found` (no such member or key), `gitsync_disabled` (Git Sync not configured on this node)"),
        "Conflict": e("conflicts with the cluster's state: `duplicate_id`, `duplicate_address`, `already_voter`, \
    `not_caught_up`, `quorum_at_risk`, `membership_change_in_progress`, `empty_membership`, `primary_healthy`, \
    `rejected`, `cas_mismatch`, `conflict` (Git Sync)"),
        "TooLarge": e("`too_large`: body over `--max-body-bytes` (refused before it is read), key over 1 KiB or value over 1 MiB"),
        "Unavailable": e("no answer possible right now, retry: `no_leader`, `not_leader`, `leader_unreachable`, \
    `timeout` (request not finished within --request-timeout-ms), `shutting_down`, `no_primary`, \
    `primary_unreachable`, `no_lease`, `not_primary`, `stale_epoch`, `state_behind` (backup), `outcome_unknown` (a write may or may not \
    have been applied), `not_replicated` (a sync-mode primary read whose data is not yet on `min_acks` \
    replicas), `upstream_unavailable` (Git Sync remote); the probes' answers: `not_primary`, `service_not_master`, `is_primary`, \
    `lagging`, `not_replicating`, `gitsync_conflict`, `gitsync_stale`, `not_member`, `no_quorum`, `raft_stopped`, \
    `data_unreadable`, `cluster_id_mismatch`"),
    })
}

/// Every public operation of the API port.
pub fn operations() -> Vec<Op> {
    let member = json!({"$ref": "#/components/schemas/Member"});
    let std = |extra: &[(&'static str, Value)], first: (&'static str, Value)| {
        let mut v = vec![first];
        v.extend(extra.iter().cloned());
        v
    };
    let write_answer = json!({"type": "object", "required": ["version", "position", "epoch"], "properties": {
        "version": {"type": "integer"}, "position": {"type": "string"}, "epoch": {"type": "integer"}}});
    let kv_key = path_param(
        "key",
        "the key, percent-encoded (`%2F` for `/`); at most 1 KiB",
        json!({"type": "string", "minLength": 1}),
    );
    let file_path = path_param(
        "path",
        "file path inside the Git Sync path, percent-encoded",
        json!({"type": "string", "minLength": 1}),
    );
    let promoted = obj(&["to", "epoch"]);
    let admin_errs = errors(&["400", "409", "413", "503"]);
    // Switchover and failover name a target member, which may not exist.
    let promotion_errs = errors(&["400", "404", "409", "413", "503"]);
    vec![
        get(
            "/v1/status",
            "cluster",
            "this node's view: role, Raft state, primary, lease, replication, Git Sync, managed datastores",
            ok(
                "this node's status",
                obj(&["node_id", "role", "raft", "primary", "auth", "memory", "datastore"]),
            ),
        ),
        get(
            "/v1/cluster",
            "cluster",
            "members, leader, primary, maintenance, dynamic config",
            ok("the cluster", obj(&["members", "primary", "maintenance", "config"])),
        ),
        get(
            "/v1/members",
            "members",
            "the members",
            ok(
                "members",
                json!({"type": "object", "required": ["members"], "properties": {"members": {"type": "array", "items": member}}}),
            ),
        ),
        Op {
            method: "post",
            path: "/v1/members",
            tag: "members",
            summary: "add a node as a learner",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "required": ["id", "api_addr", "peer_addr"], "properties": {
                    "id": {"type": "integer", "format": "int64", "minimum": 1},
                    "api_addr": {"type": "string", "description": "host:port"},
                    "peer_addr": {"type": "string", "description": "host:port"}}}),
                true,
            ),
            responses: std(
                &admin_errs,
                (
                    "201",
                    ok(
                        "added",
                        json!({"type": "object", "required": ["member"], "properties": {"member": member}}),
                    ),
                ),
            ),
        },
        Op {
            method: "delete",
            path: "/v1/members/{id}",
            tag: "members",
            summary: "remove a member",
            params: vec![
                member_id(),
                query(
                    "force",
                    "remove even when the quorum guard refuses",
                    json!({"type": "boolean"}),
                ),
            ],
            body: None,
            responses: std(
                &errors(&["400", "404", "409", "503"]),
                ("200", ok("removed", obj(&["removed"]))),
            ),
        },
        Op {
            method: "post",
            path: "/v1/members/{id}/promote",
            tag: "members",
            summary: "turn a learner into a voter",
            params: vec![member_id()],
            body: None,
            responses: std(
                &errors(&["400", "404", "409", "503"]),
                ("200", ok("promoted", obj(&["member"]))),
            ),
        },
        Op {
            method: "put",
            path: "/v1/members/{id}/tags",
            tag: "members",
            summary: "set a member's failover tags; omitted fields stay",
            params: vec![member_id()],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "properties": {
                    "nofailover": {"type": "boolean"}, "priority": {"type": "integer", "format": "int32"}}}),
                true,
            ),
            responses: std(
                &errors(&["400", "404", "413", "503"]),
                ("200", ok("the member with its new tags", obj(&["member"]))),
            ),
        },
        get(
            "/v1/history",
            "cluster",
            "failovers and switchovers (with managed Redis, what each old master lost)",
            ok("history, oldest first", obj(&["history"])),
        ),
        Op {
            method: "put",
            path: "/v1/maintenance",
            tag: "cluster",
            summary: "pause (or resume) automatic failover",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}}),
                true,
            ),
            responses: std(&admin_errs, ("200", ok("the new setting", obj(&["maintenance"])))),
        },
        Op {
            method: "post",
            path: "/v1/switchover",
            tag: "cluster",
            summary: "planned switchover: stop writes on the primary, promote the target once caught up",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "properties": {"to": {"type": "integer", "format": "int64", "minimum": 1}}}),
                false,
            ),
            responses: std(&promotion_errs, ("200", ok("the promotion", promoted.clone()))),
        },
        Op {
            method: "post",
            path: "/v1/failover",
            tag: "cluster",
            summary: "forced failover to a node (for when the primary is dead)",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "required": ["to"], "properties": {
                    "to": {"type": "integer", "format": "int64", "minimum": 1}, "force": {"type": "boolean"}}}),
                true,
            ),
            responses: std(&promotion_errs, ("200", ok("the promotion", promoted))),
        },
        Op {
            method: "patch",
            path: "/v1/config",
            tag: "cluster",
            summary: "change the dynamic config (any subset of its keys; validated as a whole)",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "properties": {
                    "lease_ms": {"type": "integer", "minimum": 0},
                    "failover_timeout_ms": {"type": "integer", "minimum": 0},
                    "min_failover_interval_ms": {"type": "integer", "minimum": 0},
                    "replication_mode": {"type": "string", "enum": ["async", "sync"]},
                    "min_acks": {"type": "integer", "minimum": 0},
                    "max_lag_on_failover": {"type": "integer", "minimum": 0},
                    "log_retention_entries": {"type": "integer", "minimum": 0}}}),
                true,
            ),
            responses: std(&admin_errs, ("200", ok("the new config", obj(&["config"])))),
        },
        Op {
            method: "get",
            path: "/v1/kv",
            tag: "datastore",
            summary: "list keys in order",
            params: vec![
                query("prefix", "only keys starting with this", json!({"type": "string"})),
                query(
                    "limit",
                    "keys per page (default 100)",
                    json!({"type": "integer", "minimum": 1, "maximum": keel_replication::MAX_LIST_LIMIT}),
                ),
                query(
                    "after",
                    "start after this key (the `next` of the previous page)",
                    json!({"type": "string"}),
                ),
            ],
            body: None,
            responses: std(
                &errors(&["400", "503"]),
                (
                    "200",
                    ok(
                        "one page",
                        json!({"type": "object", "required": ["items", "next"], "properties": {
                            "items": {"type": "array", "items": {"type": "object", "required": ["key", "version", "size"]}},
                            "next": {"type": "string", "nullable": true}}}),
                    ),
                ),
            ),
        },
        Op {
            method: "get",
            path: "/v1/kv/{key}",
            tag: "datastore",
            summary:
                "a key's raw value; metadata in Keel-Version, Keel-Epoch, Keel-Position (and Keel-Lag-Ms on a replica)",
            params: vec![
                kv_key.clone(),
                query(
                    "consistency",
                    "local (default): this node's copy; primary: forwarded to the primary, answered under its lease",
                    json!({"type": "string", "enum": ["local", "primary"]}),
                ),
            ],
            body: None,
            responses: std(&errors(&["400", "404", "413", "503"]), ("200", binary("the value"))),
        },
        Op {
            method: "put",
            path: "/v1/kv/{key}",
            tag: "datastore",
            summary: "set a key (forwarded to the primary from a replica)",
            params: vec![kv_key.clone()],
            body: raw_body("the value, raw bytes, at most 1 MiB"),
            responses: std(
                &and_errors(("200", ok("replaced", write_answer.clone())), &["400", "413", "503"]),
                ("201", ok("created", write_answer.clone())),
            ),
        },
        Op {
            method: "delete",
            path: "/v1/kv/{key}",
            tag: "datastore",
            summary: "delete a key (forwarded to the primary from a replica)",
            params: vec![kv_key.clone()],
            body: None,
            responses: std(
                &and_errors(
                    (
                        "201",
                        ok(
                            "the key was already gone when the delete was logged",
                            write_answer.clone(),
                        ),
                    ),
                    &["400", "404", "413", "503"],
                ),
                ("200", ok("deleted", write_answer.clone())),
            ),
        },
        Op {
            method: "post",
            path: "/v1/kv/{key}/cas",
            tag: "datastore",
            summary: "compare-and-set: write only if the key is at `version` (0: it must not exist)",
            params: vec![
                kv_key,
                json!({"name": "version", "in": "query", "required": true, "description": "expected current version",
                       "schema": {"type": "integer", "format": "int64", "minimum": 0}}),
            ],
            body: raw_body("the new value, raw bytes, at most 1 MiB"),
            responses: std(
                &and_errors(
                    ("201", ok("created", write_answer.clone())),
                    &["400", "409", "413", "503"],
                ),
                ("200", ok("replaced", write_answer)),
            ),
        },
        get(
            "/v1/backup",
            "datastore",
            "a consistent backup of this node (cluster state + datastore at one position, with a SHA-256 \
             trailer), streamed; `keel backup --out FILE` writes it, `keel restore --from FILE` seeds a new cluster",
            binary("the backup file (position in Keel-Position, key count in Keel-Backup-Keys)"),
        ),
        get(
            "/v1/diverged",
            "datastore",
            "writes this node rolled back when it rejoined a newer primary (kept, never dropped)",
            ok("rolled-back entries", obj(&["diverged"])),
        ),
        Op {
            method: "put",
            path: "/v1/replication/paused",
            tag: "datastore",
            summary: "pause or resume this node's replication apply worker (this node only)",
            params: vec![],
            body: json_body(
                json!({"type": "object", "additionalProperties": false, "required": ["paused"], "properties": {"paused": {"type": "boolean"}}}),
                true,
            ),
            responses: std(
                &errors(&["400", "413", "503"]),
                ("200", ok("the new setting", obj(&["paused"]))),
            ),
        },
        Op {
            method: "get",
            path: "/v1/gitsync",
            tag: "gitsync",
            summary: "this node's Git Sync agent: state, commit, last sync, last error, last webhook",
            params: vec![],
            body: None,
            responses: std(&errors(&["404", "503"]), ("200", ok("agent status", obj(&["node_id"])))),
        },
        Op {
            method: "post",
            path: "/v1/gitsync/sync",
            tag: "gitsync",
            summary: "sync this node now and ask every other node to sync",
            params: vec![query(
                "accept_reset",
                "accept a rewritten upstream history (after a force-push), on every node",
                json!({"type": "boolean"}),
            )],
            body: None,
            responses: std(
                &errors(&["404", "409", "503"]),
                ("200", ok("the outcome", obj(&["node_id", "outcome", "status"]))),
            ),
        },
        Op {
            method: "post",
            path: "/v1/gitsync/webhook",
            tag: "gitsync",
            summary: "push webhook from GitHub, Gitea or GitLab, verified with the webhook secret (no admin token)",
            params: vec![
                header("X-Hub-Signature-256", "GitHub / Gitea: sha256=HMAC of the body"),
                header("X-GitHub-Event", "GitHub event name"),
                header("X-Gitea-Event", "Gitea event name"),
                header("X-Gitlab-Token", "GitLab: the secret itself"),
                header("X-Gitlab-Event", "GitLab event name"),
            ],
            body: Some(json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}})),
            responses: std(
                &and_errors(
                    (
                        "202",
                        ok(
                            "verified push for the configured branch: every node syncs",
                            obj(&["webhook"]),
                        ),
                    ),
                    &["400", "401", "404", "413", "503"],
                ),
                (
                    "200",
                    ok(
                        "verified, but nothing to sync (other event or branch)",
                        obj(&["webhook"]),
                    ),
                ),
            ),
        },
        Op {
            method: "put",
            path: "/v1/gitsync/files/{path}",
            tag: "gitsync",
            summary: "write a file: committed (trailer Keel-Epoch) and pushed by the primary under its lease",
            params: vec![file_path.clone()],
            body: raw_body("the file's new contents"),
            responses: std(
                &errors(&["400", "404", "409", "413", "503"]),
                ("200", ok("the new commit", obj(&["commit", "epoch"]))),
            ),
        },
        Op {
            method: "delete",
            path: "/v1/gitsync/files/{path}",
            tag: "gitsync",
            summary: "delete a file: committed and pushed by the primary under its lease",
            params: vec![file_path],
            body: None,
            responses: std(
                &errors(&["400", "404", "409", "413", "503"]),
                ("200", ok("the new commit", obj(&["commit", "epoch"]))),
            ),
        },
        get(
            "/primary",
            "probes",
            "load-balancer probe: 200 only on the primary holding a valid lease, else 503",
            ok("this node is the primary", obj(&["role", "epoch"])),
        ),
        Op {
            method: "get",
            path: "/replica",
            tag: "probes",
            summary:
                "load-balancer probe: 200 on a healthy non-primary member, else 503 (`is_primary`, `lagging`, ...)",
            params: vec![
                query(
                    "max_lag_ms",
                    "503 `lagging` when the replica is further behind",
                    json!({"type": "integer", "minimum": 0}),
                ),
                query(
                    "max_gitsync_age_ms",
                    "503 `gitsync_stale` when Git Sync last succeeded longer ago, `gitsync_conflict` while it is in \
                     conflict (default `--gitsync-max-age-ms`; not checked without Git Sync)",
                    json!({"type": "integer", "minimum": 0}),
                ),
            ],
            body: None,
            responses: std(
                &errors(&["400", "503"]),
                ("200", ok("a healthy replica", obj(&["role", "lag_ms"]))),
            ),
        },
        get(
            "/health",
            "probes",
            "200 when the process is up and its data readable",
            ok("healthy", obj(&["status"])),
        ),
        get(
            "/readyz",
            "probes",
            "200 when this node is a member of a cluster with a leader it can reach; 503 names the failed check",
            ok("ready", obj(&["status", "leader"])),
        ),
        get(
            "/metrics",
            "monitoring",
            "Prometheus text format (see the metrics reference in docs/http-api.md)",
            text("metrics", "text/plain"),
        ),
        get(
            "/ui",
            "monitoring",
            "the status page (one self-contained HTML page)",
            text("the page", "text/html"),
        ),
        get(
            "/ui/cluster.json",
            "monitoring",
            "what the status page polls: this node's cluster view, every member's status, history",
            ok(
                "the aggregate",
                obj(&["served_by", "cluster", "nodes", "errors", "history"]),
            ),
        ),
        get(
            "/v1/openapi.json",
            "monitoring",
            "this document",
            ok("OpenAPI 3.0 document", obj(&["openapi", "paths"])),
        ),
    ]
}

/// Read endpoints whose handler requires the admin token itself (a backup holds all the data).
pub const ADMIN_READS: &[&str] = &["/v1/backup"];

/// Which data-plane access this operation needs (a token of `dataToken` or `adminToken` once any
/// token is configured), `None` off the data plane: [`crate::auth::data_plane_access`], evaluated here.
pub fn data_access(method: &str, path: &str) -> Option<crate::auth::Access> {
    crate::auth::data_plane_access(&method.to_ascii_uppercase(), &example_path(path))
}

/// Does this operation need the admin token (when one is configured)?
pub fn needs_admin(method: &str, path: &str) -> bool {
    let m: Method = method.to_ascii_uppercase().parse().expect("valid method");
    crate::http::requires_admin(&m, &example_path(path)) || (method == "get" && ADMIN_READS.contains(&path))
}

/// A concrete request path for an operation's path template (placeholders filled with examples),
/// used to ask [`crate::http::requires_admin`] about it.
pub fn example_path(template: &str) -> String {
    template
        .replace("{id}", "1")
        .replace("{key}", "k")
        .replace("{path}", "f")
}

/// The whole document.
pub fn spec() -> Value {
    let mut paths = Map::new();
    for op in operations() {
        let admin = needs_admin(op.method, op.path);
        let mut responses = Map::new();
        for (code, resp) in &op.responses {
            responses.insert((*code).to_string(), resp.clone());
        }
        let data = data_access(op.method, op.path);
        if admin || data.is_some() {
            responses.insert("401".into(), r("Unauthorized"));
        }
        if data == Some(crate::auth::Access::Write) {
            responses.insert("403".into(), r("Forbidden"));
        }
        let mut o = json!({
            "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '.'], "_")),
            "tags": [op.tag],
            "summary": op.summary,
            "responses": responses,
        });
        if !op.params.is_empty() {
            o["parameters"] = Value::Array(op.params.clone());
        }
        if let Some(b) = &op.body {
            o["requestBody"] = b.clone();
        }
        // Endpoints that change cluster state need the admin token when one is configured;
        // without one configured, they are open (the empty requirement `{}`).
        // The data plane takes a data-plane token or the admin token once any token is configured,
        // and is open while none is.
        o["security"] = if admin {
            json!([{"adminToken": []}, {}])
        } else if data.is_some() {
            json!([{"dataToken": []}, {"adminToken": []}, {}])
        } else {
            json!([])
        };
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Keel HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API port (`--api-addr`) of a Keel node. JSON unless said otherwise; every error has \
    the body {\"error\": {\"code\", \"message\"}}. Endpoints marked with `adminToken` need `Authorization: Bearer \
    <token>` when the node runs with `--admin-token`; those marked with `dataToken` (the data plane) need the client \
    or admin token to write and the read, client or admin token to read once any token is configured (401, 403 \
    for a write with the read token). Every request is bounded by `--request-timeout-ms` \
    (503 `timeout`) and `--max-body-bytes` (413 `too_large`).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "the node's --admin-token"},
                "dataToken": {"type": "http", "scheme": "bearer", "description": "the node's --client-token (reads and writes) or --read-token (reads)"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}}}
                },
                "Member": {
                    "type": "object",
                    "required": ["id", "api_addr", "peer_addr", "voter", "reachable", "tags"],
                    "properties": {
                        "id": {"type": "integer"}, "api_addr": {"type": "string"}, "peer_addr": {"type": "string"},
                        "voter": {"type": "boolean"}, "reachable": {"type": "boolean"},
                        "tags": {"type": "object", "required": ["nofailover", "priority"]}
                    }
                }
            },
            "responses": error_responses(),
        }
    })
}

/// `GET /v1/openapi.json`.
pub async fn serve() -> Response {
    axum::Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: &[&str] = &[
        "get", "post", "put", "delete", "patch", "head", "options", "trace", "any",
    ];

    /// `(method, path)` of every `.route(...)` in `api.rs`'s `router()`, read from its source: the
    /// path literal, and each method-router call (`get(..)`, `.post(..)`, `axum::routing::patch(..)`)
    /// at the top level of the second argument.
    fn router_routes(src: &str) -> BTreeSet<(String, String)> {
        let start = src.find("pub fn router(").expect("api.rs has `pub fn router(`");
        let body = &src[start..];
        let end = body.find(".fallback(").expect("router() ends with .fallback(");
        let body = &body[..end];
        for unsupported in [".merge(", ".nest(", ".route_service(", ".nest_service("] {
            assert!(
                !body.contains(unsupported),
                "router() uses {unsupported}: teach this test (and the spec) about it"
            );
        }
        let mut out = BTreeSet::new();
        let mut rest = body;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let q1 = rest.find('"').expect("route path literal");
            let q2 = q1 + 1 + rest[q1 + 1..].find('"').expect("end of route path literal");
            let path = rest[q1 + 1..q2].to_string();
            let args = &rest[q2 + 1..];
            let (mut depth, mut ident, mut found) = (0usize, String::new(), 0);
            for c in args.chars() {
                match c {
                    '(' => {
                        if depth == 0 {
                            let name = ident.rsplit("::").next().unwrap_or("");
                            if METHODS.contains(&name) {
                                out.insert((name.to_string(), path.clone()));
                                found += 1;
                            }
                        }
                        depth += 1;
                        ident.clear();
                    }
                    ')' => {
                        if depth == 0 {
                            break;
                        }
                        depth -= 1;
                        ident.clear();
                    }
                    c if c.is_alphanumeric() || c == '_' || c == ':' => ident.push(c),
                    _ => ident.clear(),
                }
            }
            assert!(found > 0, "no method found for route {path:?}");
        }
        out
    }

    /// The spec's name for a router route.
    fn spec_path(method: &str, axum_path: &str) -> String {
        if let Some((_, _, p)) = ALIASES.iter().find(|(m, a, _)| *m == method && *a == axum_path) {
            return p.to_string();
        }
        axum_path.replace("{*", "{")
    }

    #[test]
    fn route_extraction_reads_method_chains() {
        let src = r#"pub fn router(node: N) -> Router {
            Router::new()
                .route("/a", get(h::a).post(crate::h::b))
                .route(
                    "/b/{*rest}",
                    axum::routing::put(x(1)).delete(y),
                )
                .fallback(|| async {})
        }"#;
        let got = router_routes(src);
        let want: BTreeSet<(String, String)> = [
            ("get", "/a"),
            ("post", "/a"),
            ("put", "/b/{*rest}"),
            ("delete", "/b/{*rest}"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn spec_matches_router() {
        let routes = router_routes(include_str!("mod.rs"));
        assert!(
            routes.len() >= 20,
            "suspiciously few routes read from api.rs: {routes:?}"
        );
        let mut from_router = BTreeSet::new();
        for (method, path) in &routes {
            let excluded = UNDOCUMENTED
                .iter()
                .any(|(m, p, _)| *p == path && (*m == "*" || *m == method));
            if excluded {
                continue;
            }
            assert_ne!(
                method, "any",
                "route {path} takes any method: document it in UNDOCUMENTED or split it"
            );
            from_router.insert((method.clone(), spec_path(method, path)));
        }
        let from_spec: BTreeSet<(String, String)> = operations()
            .iter()
            .map(|o| (o.method.to_string(), o.path.to_string()))
            .collect();
        let missing: Vec<_> = from_router.difference(&from_spec).collect();
        let extra: Vec<_> = from_spec.difference(&from_router).collect();
        assert!(
            missing.is_empty(),
            "routes in api.rs but not in the OpenAPI spec (add them to openapi::operations): {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "operations in the OpenAPI spec that api.rs does not route: {extra:?}"
        );
    }

    #[test]
    fn spec_structure() {
        let text = serde_json::to_string(&spec()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        assert!(v["info"]["title"].is_string() && v["info"]["version"].is_string());
        let paths = v["paths"].as_object().unwrap();
        let mut seen_ids = BTreeSet::new();
        let mut admin_ops = 0;
        let mut data_ops = 0;
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            for (method, op) in item.as_object().unwrap() {
                assert!(METHODS.contains(&method.as_str()) && method != "any", "{method} {path}");
                assert!(
                    seen_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "duplicate operationId"
                );
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path}: no 2xx");
                assert!(
                    responses.contains_key("503"),
                    "{method} {path}: every request may time out (503)"
                );
                for (code, r) in responses {
                    assert!(
                        code.len() == 3 && code.parse::<u16>().is_ok(),
                        "{method} {path}: {code}"
                    );
                    if let Some(reference) = r["$ref"].as_str() {
                        let name = reference.strip_prefix("#/components/responses/").unwrap();
                        assert!(v["components"]["responses"][name].is_object(), "{reference}");
                        if !code.starts_with('2') {
                            assert_eq!(
                                v["components"]["responses"][name]["content"]["application/json"]["schema"]["$ref"],
                                "#/components/schemas/Error",
                                "{method} {path} {code}: errors use the JSON error format"
                            );
                        }
                    } else {
                        assert!(r["description"].is_string(), "{method} {path} {code}");
                    }
                }
                // Every `{x}` of the path is a required path parameter, and nothing else is.
                let placeholders: BTreeSet<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_string)
                    .collect();
                let params: BTreeSet<String> = op["parameters"]
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| {
                        assert_eq!(p["required"], true);
                        p["name"].as_str().unwrap().to_string()
                    })
                    .collect();
                assert_eq!(placeholders, params, "{method} {path}");
                let admin = needs_admin(method, path);
                let secured = op["security"][0]["adminToken"].is_array();
                assert_eq!(admin, secured, "{method} {path}: security vs api::requires_admin");
                assert!(
                    !admin || responses.contains_key("401"),
                    "{method} {path}: admin endpoint without 401"
                );
                admin_ops += usize::from(admin);
                let data = data_access(method, path);
                let data_secured = op["security"][0]["dataToken"].is_array();
                assert_eq!(
                    data.is_some(),
                    data_secured,
                    "{method} {path}: security vs auth::data_plane_access"
                );
                assert!(data.is_none() || responses.contains_key("401"), "{method} {path}");
                assert_eq!(
                    data == Some(crate::auth::Access::Write),
                    responses.contains_key("403"),
                    "{method} {path}: 403 exactly on data-plane writes"
                );
                data_ops += usize::from(data_secured);
            }
        }
        assert!(admin_ops >= 10, "only {admin_ops} admin operations");
        // GET /v1/kv, GET/PUT/DELETE/POST /v1/kv/{key}, GET /v1/diverged, PUT/DELETE /v1/gitsync/files/{path}.
        assert_eq!(data_ops, 8, "data-plane operations");
        assert_eq!(v["components"]["securitySchemes"]["adminToken"]["scheme"], "bearer");
        assert_eq!(
            v["components"]["schemas"]["Error"]["properties"]["error"]["required"],
            json!(["code", "message"])
        );
        // The examples the live test and `requires_admin` use fill every placeholder.
        for op in operations() {
            assert!(!example_path(op.path).contains('{'), "{}", op.path);
        }
    }
}
