//! Acceptance 5: tokens, malformed and oversized input, garbage bytes; the data plane's tokens
//! (every endpoint × token kind × method, forwarded writes, a SIGHUP rotation).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keel_testkit::*;
use reqwest::Method;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

/// Opens the replication stream on `peer` (host:port) by hand and sends `bytes` on it; true when
/// the node then closes the connection (within 5 s) without answering anything.
fn stream_closed_after(peer: &str, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(peer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /peer/repl/stream HTTP/1.1\r\nHost: {peer}\r\nAuthorization: Bearer peer-secret\r\n\
         Connection: upgrade\r\nUpgrade: keel-repl-pull/1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "answer head cut short: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(bytes).unwrap();
    let mut rest = Vec::new();
    matches!(s.read_to_end(&mut rest), Ok(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limits_and_garbage() {
    let mut c = Cluster::new(
        3,
        &[
            "--cluster-token",
            "peer-secret",
            "--admin-token",
            "admin-secret",
            "--max-body-bytes",
            "65536",
        ],
    );
    c.start_all();
    c.wait_leader(&[1, 2, 3], T).await;
    peer_port_checks_token_and_input(&c).await;
    admin_endpoints_need_the_token(&c).await;
    malformed_and_oversized_input(&c).await;
    garbage_bytes_on_every_port(&c);
    for id in 1..=3u64 {
        let r = c.req(Method::GET, id, "/health").sent().await;
        assert_eq!(r.status(), 200, "node {id} unhealthy after garbage");
    }
    c.wait_leader(&[1, 2, 3], T).await;
}

/// `POST` `path` on node 1's peer port with `body` (none when empty), and the cluster token `token` if given.
async fn peer_post(c: &Cluster, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = c.http.post(format!("http://{}{path}", c.node(1).peer));
    if !body.is_empty() {
        req = req.body(body);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.sent().await
}

/// Peer endpoints: 401 without the cluster token or with a wrong one; 400 for garbage with it.
async fn peer_port_checks_token_and_input(c: &Cluster) {
    for path in [
        "/peer/raft/vote",
        "/peer/raft/append",
        "/peer/ping",
        "/peer/admin",
        "/peer/repl/stream",
    ] {
        let r = peer_post(c, path, None, vec![1u8, 0]).await;
        assert_eq!(r.status(), 401, "{path} without token");
        let r = peer_post(c, path, Some("wrong"), vec![1u8, 0]).await;
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    // With the token but a garbage body: 400, not a crash.
    for path in ["/peer/raft/append", "/peer/admin", "/peer/repl/pull"] {
        let r = peer_post(c, path, Some("peer-secret"), vec![1u8, 0xff]).await;
        assert_eq!(r.status(), 400, "{path} with a garbage body");
    }
    // The replication stream: without `Upgrade` a 400; on an open stream, a frame announcing
    // more than the limit, or one that does not decode, closes the connection, unanswered.
    let r = peer_post(c, "/peer/repl/stream", Some("peer-secret"), Vec::new()).await;
    assert_eq!(r.status(), 400, "the stream without Upgrade");
    let addr = c.node(1).peer.to_string();
    assert!(stream_closed_after(&addr, &u32::MAX.to_be_bytes()), "oversized frame");
    assert!(stream_closed_after(&addr, &[0, 0, 0, 2, 1, 0xff]), "garbage frame");
    // A vote may be refused before its body is read: for election_timeout_max after the node
    // started, and on a coordinator that granted a lease within it (503, raft/DESIGN.md). Node 1
    // is often that coordinator here, so either answer is right; a crash or a 2xx is not.
    let r = peer_post(c, "/peer/raft/vote", Some("peer-secret"), vec![1u8, 0xff]).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert!(
        status == 400 || (status == 503 && text.contains("not voting yet")),
        "garbage vote: {status} {text}"
    );
}

/// Mutating admin endpoints: 401 without the admin token; reads stay open; the CLI passes the
/// token too.
async fn admin_endpoints_need_the_token(c: &Cluster) {
    let maintenance = json!({"enabled": true});
    let r = c.req(Method::PUT, 1, "/v1/maintenance").json(&maintenance).sent().await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c.req(Method::DELETE, 1, "/v1/members/3").sent().await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c.req(Method::GET, 1, "/v1/cluster").sent().await;
    assert_eq!(r.status(), 200);
    // An admin token closes the data plane too: no write without a token.
    let r = c.req(Method::PUT, 1, "/v1/kv/no-token").body("x").sent().await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c
        .req(Method::GET, 1, "/v1/kv/no-token")
        .bearer_auth("admin-secret")
        .sent()
        .await;
    assert_eq!(r.status(), 404, "nothing was written");
    assert_eq!(c.status(1).await.unwrap()["auth"], "tokens");
    let r = c.req(Method::PUT, 1, "/v1/maintenance").bearer_auth("admin-secret");
    assert_eq!(r.json(&maintenance).sent().await.status(), 200);
    let api = c.node(1).url();
    let out = c.cli(&["maintenance", "off", "--addr", &api, "--admin-token", "admin-secret"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = c.cli(&["maintenance", "off", "--addr", &api]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));
}

/// Malformed JSON, oversized bodies (declared or chunked), unknown endpoints, bad ids and path
/// parameters that are not UTF-8: each in the JSON error format.
async fn malformed_and_oversized_input(c: &Cluster) {
    let admin = |method: Method, path: &str| c.req(method, 1, path).bearer_auth("admin-secret");
    // Malformed JSON: 400 in the error format; unknown fields too.
    for body in [
        "{not json",
        "{\"enabled\": \"yes\"}",
        "{\"enabled\": true, \"extra\": 1}",
        "",
    ] {
        let r = admin(Method::PUT, "/v1/maintenance").header("content-type", "application/json");
        let r = r.body(body.to_string()).sent().await;
        assert_eq!(error_code(r).await, (400, "bad_request".into()), "body {body:?}");
    }
    // Oversized body: 413 in the error format, declared or chunked.
    let big = vec![b'x'; 200_000];
    let r = admin(Method::POST, "/v1/members").body(big.clone()).sent().await;
    assert_eq!(error_code(r).await, (413, "too_large".into()));
    let chunked = raw_chunked_post(c.node(1).api, "/v1/members", "admin-secret", &big);
    assert!(chunked.starts_with("HTTP/1.1 413"), "chunked oversized body: {chunked}");
    assert!(chunked.contains("too_large"), "{chunked}");
    // Unknown endpoint: JSON 404; bad id: 400.
    let r = c.req(Method::GET, 1, "/v1/nope").sent().await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = admin(Method::POST, "/v1/members/abc/promote").sent().await;
    assert_eq!(error_code(r).await, (400, "bad_request".into()));
    // Path parameters that are not UTF-8 (or not numbers) get the JSON error format, not axum's plain text.
    for (method, path) in [
        (Method::PUT, "/v1/kv/%FF"),
        (Method::GET, "/v1/kv/a%FFb"),
        (Method::PUT, "/v1/gitsync/files/%C3%28"),
        (Method::DELETE, "/v1/members/%FF"),
        (Method::POST, "/v1/members/%FF/promote"),
    ] {
        let r = admin(method.clone(), path).body("x").sent().await;
        assert_eq!(error_code(r).await, (400, "bad_request".into()), "{method} {path}");
    }
}

/// A burst of garbage bytes on both ports of every node.
fn garbage_bytes_on_every_port(c: &Cluster) {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in &c.nodes {
        for addr in [n.api, n.peer] {
            for i in 0..20 {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                let mut junk = vec![0u8; 512 + i * 97];
                for b in junk.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                if i % 3 == 0 {
                    junk.splice(
                        0..0,
                        b"POST /v1/members HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"
                            .iter()
                            .copied(),
                    );
                }
                let _ = s.write_all(&junk);
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
            }
        }
    }
}

/// A chunked (no Content-Length) POST over a raw socket; returns the response head and body.
fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, token: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    for chunk in body.chunks(8192) {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || s.write_all(chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break; // the server may answer and close early
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const ADMIN: &str = "admin-secret";
const CLIENT: &str = "client-tok-1a";
const CLIENT_NEW: &str = "client-tok-2b";
const READ: &str = "read-tok-3c";

/// The config file every node reads (and re-reads on SIGHUP): the client and the read token. The
/// admin token is a flag, which a reload cannot change.
fn tokens_toml(client: &str) -> String {
    format!("client_token = \"{client}\"\nread_token = \"{READ}\"\n")
}

/// The token a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    Read,
    Client,
    Admin,
    Unknown,
}

const KINDS: [Kind; 5] = [Kind::None, Kind::Read, Kind::Client, Kind::Admin, Kind::Unknown];

impl Kind {
    fn token(self) -> Option<&'static str> {
        match self {
            Kind::None => None,
            Kind::Read => Some(READ),
            Kind::Client => Some(CLIENT),
            Kind::Admin => Some(ADMIN),
            Kind::Unknown => Some("not-a-token"),
        }
    }

    /// The refusal the issue's rule asks for, `None` when the request is allowed.
    fn refusal(self, write: bool) -> Option<(u16, &'static str)> {
        match self {
            Kind::None | Kind::Unknown => Some((401, "unauthorized")),
            Kind::Read if write => Some((403, "forbidden")),
            _ => None,
        }
    }
}

/// One data-plane request: method, path, whether it writes, and the status it gets when allowed.
/// Keys and files are named after `tag` (node and token kind), so every cell writes its own.
fn data_plane_requests(tag: &str) -> Vec<(Method, String, bool, u16)> {
    vec![
        (Method::GET, "/v1/kv?prefix=tok%2F".into(), false, 200),
        (Method::GET, "/v1/kv/tok/seed".into(), false, 200),
        (Method::HEAD, "/v1/kv/tok/seed".into(), false, 200),
        (Method::GET, "/v1/diverged".into(), false, 200),
        // Routed for PUT and DELETE only: allowed, it reaches the router's 405.
        (Method::GET, format!("/v1/gitsync/files/{tag}.txt"), false, 405),
        (Method::PUT, format!("/v1/kv/tok/{tag}-put"), true, 201),
        (Method::POST, format!("/v1/kv/tok/{tag}-cas/cas?version=0"), true, 201),
        (Method::DELETE, format!("/v1/kv/tok/{tag}-del"), true, 200),
        (Method::PATCH, format!("/v1/kv/tok/{tag}-patch"), true, 405),
        (Method::PUT, format!("/v1/gitsync/files/{tag}.txt"), true, 200),
        (Method::DELETE, format!("/v1/gitsync/files/{tag}.txt"), true, 200),
    ]
}

fn tag(node: u64, kind: Kind) -> String {
    format!("n{node}-{kind:?}").to_lowercase()
}

/// Commits on the upstream's `main`.
fn upstream_commits(repo: &std::path::Path) -> usize {
    git(&repo.join("upstream.git"), &["rev-list", "--count", "main"])
        .trim()
        .parse()
        .unwrap()
}

/// A key as the primary has it (read with the admin token), or None on a 404.
async fn on_primary(c: &Cluster, primary: u64, key: &str) -> Option<String> {
    let path = format!("/v1/kv/{key}?consistency=primary");
    let r = c.req(Method::GET, primary, &path).bearer_auth(ADMIN).sent().await;
    match r.status().as_u16() {
        200 => Some(r.text().await.unwrap()),
        404 => None,
        other => panic!(
            "GET {key} on the primary: {other} {}",
            r.text().await.unwrap_or_default()
        ),
    }
}

/// Acceptance of the data plane's tokens: every data-plane endpoint × token kind × method, on the
/// primary and on a replica (whose writes are forwarded), then the CLI, then a client token
/// rotated with SIGHUP and no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_tokens() {
    let repo = tempfile::tempdir().unwrap();
    let conf = repo.path().join("keel.toml");
    std::fs::write(&conf, tokens_toml(CLIENT)).unwrap();
    let conf_arg = conf.display().to_string();
    let (mut c, primary) = gitsync_cluster(repo.path(), &["--config", &conf_arg, "--admin-token", ADMIN], T).await;
    let replica = (1..=3).find(|id| *id != primary).unwrap();
    c.wait_for(T, "Git Sync ok on every node", || async {
        let mut ok = true;
        for id in 1..=3u64 {
            ok &= c.get(id, "/v1/gitsync").await?["state"] == "ok";
        }
        ok.then_some(())
    })
    .await;

    open_endpoints_stay_open(&c, primary, replica).await;
    matrix(&c, primary, replica, repo.path()).await;
    forged_forward_is_checked(&c, primary).await;
    cli_sends_the_data_plane_token(&c, replica);
    sighup_rotates_the_client_token(&mut c, &conf, primary, replica).await;
}

/// Probes, metrics and status answer without a token; status says the data plane needs one.
async fn open_endpoints_stay_open(c: &Cluster, primary: u64, replica: u64) {
    for (id, path) in [
        (primary, "/primary"),
        (primary, "/health"),
        (primary, "/readyz"),
        (primary, "/metrics"),
        (primary, "/v1/status"),
        (replica, "/v1/status"),
    ] {
        let r = c.req(Method::GET, id, path).sent().await;
        assert_eq!(r.status(), 200, "{path} on node {id} without a token");
    }
    // The replica probe may still say 503 (not replicating yet), never 401.
    let r = c.req(Method::GET, replica, "/replica").sent().await;
    assert_ne!(r.status(), 401, "/replica without a token");
    for id in 1..=3u64 {
        assert_eq!(c.status(id).await.unwrap()["auth"], "tokens", "node {id}");
    }
}

/// PUT `body` at `path` on node `id` with `token`.
async fn put_as(c: &Cluster, id: u64, path: &str, token: &str, body: &'static str) -> reqwest::Response {
    c.req(Method::PUT, id, path).bearer_auth(token).body(body).sent().await
}

/// Every request of [`data_plane_requests`] with every token kind on the primary and a replica:
/// refused ones get the JSON error and write nothing; allowed writes land on the primary.
async fn matrix(c: &Cluster, primary: u64, replica: u64, repo: &std::path::Path) {
    // What the allowed reads and deletes find.
    let seed = put_as(c, primary, "/v1/kv/tok/seed", ADMIN, "s").await;
    assert_eq!(seed.status(), 201);
    for node in [primary, replica] {
        for kind in KINDS {
            let path = format!("/v1/kv/tok/{}-del", tag(node, kind));
            let r = put_as(c, primary, &path, ADMIN, "d").await;
            assert_eq!(r.status(), 201, "seed {path}");
        }
    }
    // The replica's own copy, for its local reads.
    c.wait_for(T, "the seeded keys on the replica", || async {
        let last = format!("/v1/kv/tok/{}-del", tag(replica, Kind::Unknown));
        let r = c
            .req(Method::GET, replica, &last)
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let commits_before = upstream_commits(repo);

    let mut cells = 0;
    for node in [primary, replica] {
        for kind in KINDS {
            let tag = tag(node, kind);
            for (method, path, write, ok) in data_plane_requests(&tag) {
                let mut rb = c.req(method.clone(), node, &path).timeout(Duration::from_secs(20));
                if let Some(t) = kind.token() {
                    rb = rb.bearer_auth(t);
                }
                if method == Method::PUT || method == Method::POST || method == Method::PATCH {
                    rb = rb.body("v");
                }
                let r = rb.sent().await;
                let what = format!("{method} {path} on node {node} with {kind:?}");
                match kind.refusal(write) {
                    Some((status, _)) if method == Method::HEAD => assert_eq!(r.status(), status, "{what}"),
                    Some((status, code)) => assert_eq!(error_code(r).await, (status, code.to_string()), "{what}"),
                    None => {
                        let status = r.status().as_u16();
                        assert_eq!(status, ok, "{what}: {}", r.text().await.unwrap_or_default());
                    }
                }
                cells += 1;
            }
            // What the primary holds afterwards: the writes of allowed kinds, nothing of the others.
            let allowed = kind.refusal(true).is_none();
            let put = on_primary(c, primary, &format!("tok/{tag}-put")).await;
            let cas = on_primary(c, primary, &format!("tok/{tag}-cas")).await;
            let del = on_primary(c, primary, &format!("tok/{tag}-del")).await;
            assert_eq!(put.as_deref(), allowed.then_some("v"), "{tag}: PUT on the primary");
            assert_eq!(cas.as_deref(), allowed.then_some("v"), "{tag}: CAS on the primary");
            assert_eq!(del.is_none(), allowed, "{tag}: DELETE on the primary");
        }
    }
    assert_eq!(cells, 2 * KINDS.len() * data_plane_requests("x").len());
    // Each allowed kind (client, admin) on each node committed one edit and one delete; no refused
    // request moved the branch.
    assert_eq!(upstream_commits(repo), commits_before + 2 * 2 * 2, "upstream commits");
}

/// The primary checks the rule itself: a request that claims to be forwarded gets no pass.
async fn forged_forward_is_checked(c: &Cluster, primary: u64) {
    let forged = |token: Option<&str>| {
        let rb = c
            .req(Method::PUT, primary, "/v1/kv/tok/forged")
            .header("keel-forwarded", "1");
        match token {
            Some(t) => rb.bearer_auth(t).body("f"),
            None => rb.body("f"),
        }
    };
    assert_eq!(
        error_code(forged(None).sent().await).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        error_code(forged(Some(READ)).sent().await).await,
        (403, "forbidden".into())
    );
    assert_eq!(on_primary(c, primary, "tok/forged").await, None);
}

/// `keel kv` sends `--token`, else `--admin-token`; refusals name the fix.
fn cli_sends_the_data_plane_token(c: &Cluster, replica: u64) {
    let api = c.node(replica).url();
    let kv = |args: &[&str]| {
        let mut all = vec!["kv"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &api]);
        c.cli(&all)
    };
    let out = kv(&["put", "tok/cli", "c", "--token", CLIENT]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = kv(&["get", "tok/cli", "--consistency", "primary", "--token", READ]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "c"),
        "{}",
        stderr(&out)
    );
    let out = kv(&["put", "tok/cli", "a", "--admin-token", ADMIN]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = kv(&["put", "tok/cli", "r", "--token", READ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("forbidden") && stderr(&out).contains("--token"),
        "{}",
        stderr(&out)
    );
    let out = kv(&["del", "tok/cli"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("KEEL_TOKEN"), "{}", stderr(&out));
    let out = c.cli(&["diverged", "list", "--addr", &api, "--token", READ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A new client token in the config file and SIGHUP: the old one is refused and the new one
/// accepted on every node, by the same processes (no restart).
async fn sighup_rotates_the_client_token(c: &mut Cluster, conf: &std::path::Path, primary: u64, replica: u64) {
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.child.as_ref().expect("a child process").id())
        .collect();
    let uptime = |v: serde_json::Value| v["uptime_ms"].as_u64().unwrap();
    let uptime_before = uptime(c.status(replica).await.unwrap());
    std::fs::write(conf, tokens_toml(CLIENT_NEW)).unwrap();
    for pid in &pids {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -HUP {pid}");
    }
    for id in 1..=3u64 {
        let c = &*c;
        c.wait_for(T, &format!("node {id} takes the new client token"), || async move {
            let rb = c.req(Method::PUT, id, "/v1/kv/tok/rotated").bearer_auth(CLIENT_NEW);
            let status = rb.body("rotated").send().await.ok()?.status().as_u16();
            matches!(status, 200 | 201).then_some(())
        })
        .await;
    }
    // The old token is refused everywhere, also when forwarded; the others still work.
    for id in [primary, replica] {
        let r = put_as(c, id, "/v1/kv/tok/old", CLIENT, "x").await;
        assert_eq!(
            error_code(r).await,
            (401, "unauthorized".into()),
            "old client token on node {id}"
        );
        let r = c.req(Method::GET, id, "/v1/kv/tok/seed").bearer_auth(READ).sent().await;
        assert_eq!(r.status(), 200, "read token on node {id}");
        let r = put_as(c, id, "/v1/kv/tok/adm", ADMIN, "x").await;
        assert!(r.status().is_success(), "admin token on node {id}");
    }
    assert_eq!(on_primary(c, primary, "tok/old").await, None);
    assert_eq!(on_primary(c, primary, "tok/rotated").await.as_deref(), Some("rotated"));
    // The same processes, still running, and the uptime went on.
    for n in c.nodes.iter_mut() {
        let child = n.child.as_mut().unwrap();
        assert_eq!(child.try_wait().unwrap(), None, "node {} exited", n.id);
    }
    assert!(
        uptime(c.status(replica).await.unwrap()) > uptime_before,
        "the replica restarted"
    );
    for id in 1..=3u64 {
        let log = keel_node::util::strip_ansi(&c.log(id));
        let reloaded: Vec<&str> = log.lines().filter(|l| l.contains("API tokens")).collect();
        assert!(
            reloaded
                .iter()
                .any(|l| l.contains("API tokens reloaded") && l.contains("changed=client")),
            "node {id}: {reloaded:?}"
        );
        assert!(
            !log.contains(CLIENT_NEW) && !log.contains(READ),
            "node {id} logged a token"
        );
    }
}

/// Without any token the data plane is open, and the node says so: a warning at start and
/// `"auth": "open"` in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_means_an_open_data_plane_announced() {
    let mut c = Cluster::new(1, &[]);
    c.start_all();
    let primary = c.wait_primary(&[], T).await;
    assert_eq!(c.status(primary).await.unwrap()["auth"], "open");
    let r = c.put(primary, "open/k", "v").await;
    assert_eq!(r.status(), 201);
    let r = c
        .req(Method::DELETE, primary, "/v1/kv/open/k")
        .bearer_auth("anything")
        .sent()
        .await;
    assert_eq!(r.status(), 200, "with no token configured, any token is ignored");
    let log = keel_node::util::strip_ansi(&c.log(primary));
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("no API token is configured")),
        "{log}"
    );
}

/// Data-plane tokens without an admin token: admin endpoints stay open (as before), but a backup,
/// which reads the whole datastore, takes a data-plane token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_tokens_without_an_admin_token() {
    let mut c = Cluster::new(1, &["--client-token", CLIENT, "--read-token", READ]);
    c.start_all();
    let primary = c.wait_primary(&[], T).await;
    assert_eq!(c.status(primary).await.unwrap()["auth"], "tokens");
    let r = c.put(primary, "k", "v").await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = put_as(&c, primary, "/v1/kv/k", ADMIN, "v").await;
    assert_eq!(
        error_code(r).await,
        (401, "unauthorized".into()),
        "no admin token is configured"
    );
    let r = c
        .req(Method::PUT, primary, "/v1/maintenance")
        .json(&json!({"enabled": false}));
    assert_eq!(
        r.sent().await.status(),
        200,
        "admin endpoints are open without an admin token"
    );
    let r = c.req(Method::GET, primary, "/v1/backup").sent().await;
    assert_eq!(
        error_code(r).await,
        (401, "unauthorized".into()),
        "a backup without a token"
    );
    let out = c.dir.path().join("b.keelbak");
    let (api, file) = (c.node(primary).url(), out.display().to_string());
    let backup = c.cli(&["backup", "--addr", &api, "--out", &file, "--token", READ]);
    assert_eq!(backup.status.code(), Some(0), "{}", stderr(&backup));
    assert!(out.exists());
    let log = keel_node::util::strip_ansi(&c.log(primary));
    assert!(log.contains("no --admin-token: admin endpoints"), "{log}");
}
