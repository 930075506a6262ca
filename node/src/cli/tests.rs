//! Unit tests of the CLI: argument parsing, rendering, kv paths (the status verdict's are in
//! `status_tests.rs`).
use super::status::tests::member;
use super::*;
use clap::{CommandFactory, Parser};

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
        (403, "forbidden"),
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
    // With managed Redis: what each old master lost, and who did not answer.
    let lost =
        |node: u64, kind: &str, bytes: u64| json!({"node": node, "epoch": 2, "loss": {"kind": kind, "bytes": bytes}});
    let answer = json!({"history": [
        {"epoch": 1, "from": null, "to": 1, "reason": "bootstrap", "at_ms": 1, "redis_lost": []},
        {"epoch": 2, "from": 1, "to": 2, "reason": "expired", "at_ms": 2, "redis_lost": [lost(1, "bytes", 370), lost(3, "unknown", 90)]},
    ], "redis_lost_earlier": [], "redis_lost_unanswered": [3]});
    assert_eq!(
        render_history(&answer),
        "EPOCH  FROM  TO  REASON     AT  REDIS LOST\n\
         1      -     1   bootstrap  1   -\n\
         2      1     2   expired    2   n1 370 B, n3 up to 90 B\n\
         members that did not answer (their losses are not shown): 3\n"
    );
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

#[test]
fn data_plane_commands_send_the_token_else_the_admin_token() {
    let cli = TestCli::try_parse_from(["keel", "kv", "get", "k", "--token", "c", "--admin-token", "a"]).unwrap();
    let api = Api::new(&cli.client).unwrap();
    assert_eq!(api.token.as_deref(), Some("a"), "admin commands send the admin token");
    assert_eq!(api.data_plane(&cli.client).token.as_deref(), Some("c"));
    let cli = TestCli::try_parse_from(["keel", "kv", "get", "k", "--admin-token", "a"]).unwrap();
    let api = Api::new(&cli.client).unwrap();
    assert_eq!(api.data_plane(&cli.client).token.as_deref(), Some("a"));
    let cli = TestCli::try_parse_from(["keel", "kv", "get", "k", "--token", ""]).unwrap();
    let api = Api::new(&cli.client).unwrap();
    assert_eq!(api.data_plane(&cli.client).token, None);
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
        token: None,
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
