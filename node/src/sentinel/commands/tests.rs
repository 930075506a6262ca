use super::*;
use crate::sentinel::view::ReplicaView;

fn view(master: bool) -> SentinelView {
    SentinelView {
        name: "keel".into(),
        epoch: 7,
        master: master.then(|| (1, Addr::parse("10.0.0.1:6379").unwrap())),
        replicas: vec![
            ReplicaView {
                node: 2,
                addr: Addr::parse("10.0.0.2:6379").unwrap(),
                healthy: true,
            },
            ReplicaView {
                node: 3,
                addr: Addr::parse("10.0.0.3:6379").unwrap(),
                healthy: false,
            },
        ],
        sentinels: vec![Addr::parse("10.0.0.2:26379").unwrap()],
        computed_at: None,
    }
}

fn run(conn: &mut Conn, v: &SentinelView, words: &[&str]) -> Vec<Reply> {
    let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    handle(&args, conn, v).replies
}

fn one(v: &SentinelView, words: &[&str]) -> Reply {
    let mut r = run(&mut Conn::default(), v, words);
    assert_eq!(r.len(), 1, "{words:?}");
    r.remove(0)
}

/// A field/value reply as a map of strings.
fn fields(r: &Reply) -> std::collections::BTreeMap<String, String> {
    let Reply::Map(pairs) = r else {
        panic!("not a map: {r:?}")
    };
    pairs
        .iter()
        .map(|(k, v)| match (k, v) {
            (Reply::Bulk(k), Reply::Bulk(v)) => (text(k), text(v)),
            _ => panic!("not strings: {k:?} {v:?}"),
        })
        .collect()
}

fn is_err(r: &Reply, prefix: &str) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with(prefix))
}

#[test]
fn get_master_addr_names_the_master_or_nil() {
    let addr = Reply::Array(vec![Reply::bulk("10.0.0.1"), Reply::bulk("6379")]);
    assert_eq!(one(&view(true), &["SENTINEL", "get-master-addr-by-name", "keel"]), addr);
    assert_eq!(one(&view(true), &["sentinel", "GET-MASTER-ADDR-BY-NAME", "keel"]), addr);
    assert_eq!(
        one(&view(true), &["SENTINEL", "get-master-addr-by-name", "other"]),
        Reply::Nil
    );
    assert_eq!(
        one(&view(false), &["SENTINEL", "get-master-addr-by-name", "keel"]),
        Reply::Nil
    );
    assert!(is_err(
        &one(&view(true), &["SENTINEL", "get-master-addr-by-name"]),
        "ERR wrong number"
    ));
}

#[test]
fn masters_and_master_use_sentinels_field_names() {
    let Reply::Array(ms) = one(&view(true), &["SENTINEL", "masters"]) else {
        panic!()
    };
    assert_eq!(ms.len(), 1);
    let f = fields(&ms[0]);
    assert_eq!(f["name"], "keel");
    assert_eq!(f["ip"], "10.0.0.1");
    assert_eq!(f["port"], "6379");
    assert_eq!(f["flags"], "master");
    assert_eq!(f["config-epoch"], "7");
    assert_eq!(f["num-slaves"], "2");
    assert_eq!(f["num-other-sentinels"], "1");
    assert_eq!(f["runid"].len(), 40);
    assert_eq!(fields(&one(&view(true), &["SENTINEL", "master", "keel"])), f);
    // No lease-holding primary: no master listed, and the name is unknown.
    assert_eq!(one(&view(false), &["SENTINEL", "masters"]), Reply::Array(vec![]));
    assert!(is_err(
        &one(&view(false), &["SENTINEL", "master", "keel"]),
        "ERR No such master"
    ));
    assert!(is_err(
        &one(&view(true), &["SENTINEL", "master", "x"]),
        "ERR No such master"
    ));
}

#[test]
fn replicas_flag_the_unhealthy_ones() {
    for sub in ["replicas", "slaves"] {
        let Reply::Array(rs) = one(&view(true), &["SENTINEL", sub, "keel"]) else {
            panic!()
        };
        let rs: Vec<_> = rs.iter().map(fields).collect();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0]["name"], "10.0.0.2:6379");
        assert_eq!(rs[0]["flags"], "slave");
        assert_eq!(rs[0]["master-link-status"], "ok");
        assert_eq!(rs[0]["master-host"], "10.0.0.1");
        assert_eq!(rs[1]["flags"], "slave,s_down,disconnected");
        assert_eq!(rs[1]["master-link-status"], "err");
        assert_eq!(rs[1]["role-reported"], "slave");
    }
    assert!(is_err(
        &one(&view(false), &["SENTINEL", "replicas", "keel"]),
        "ERR No such master"
    ));
}

#[test]
fn sentinels_lists_the_other_nodes() {
    let Reply::Array(ss) = one(&view(true), &["SENTINEL", "sentinels", "keel"]) else {
        panic!()
    };
    let f = fields(&ss[0]);
    assert_eq!((f["ip"].as_str(), f["port"].as_str()), ("10.0.0.2", "26379"));
    assert_eq!(one(&view(false), &["SENTINEL", "sentinels", "keel"]), Reply::Array(ss));
    assert!(is_err(
        &one(&view(true), &["SENTINEL", "sentinels", "x"]),
        "ERR No such master"
    ));
    assert!(is_err(
        &one(&view(true), &["SENTINEL", "bogus"]),
        "ERR unknown subcommand"
    ));
}

#[test]
fn role_ping_info_and_unknown_commands() {
    assert_eq!(
        one(&view(false), &["ROLE"]),
        Reply::Array(vec![Reply::bulk("sentinel"), Reply::Array(vec![Reply::bulk("keel")])])
    );
    assert_eq!(one(&view(true), &["ping"]), Reply::Simple("PONG".into()));
    assert_eq!(one(&view(true), &["PING", "hi"]), Reply::bulk("hi"));
    let Reply::Bulk(info) = one(&view(true), &["INFO"]) else {
        panic!()
    };
    let info = text(&info);
    assert!(info.contains("# Sentinel\r\n"), "{info}");
    assert!(
        info.contains("master0:name=keel,status=ok,address=10.0.0.1:6379,slaves=2,sentinels=2"),
        "{info}"
    );
    assert!(is_err(&one(&view(true), &["COMMAND"]), "ERR unknown command 'COMMAND'"));
    assert!(is_err(
        &one(&view(true), &["GET", "k"]),
        "ERR unknown command 'GET', with args beginning with: 'k'"
    ));
}

#[test]
fn hello_switches_protocol_or_refuses() {
    let mut c = Conn::default();
    let v = view(true);
    let r = run(&mut c, &v, &["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "app"]);
    assert!(matches!(&r[0], Reply::Map(p) if p.contains(&(Reply::bulk("proto"), Reply::Int(3)))));
    assert!(c.resp3);
    assert_eq!(c.name.as_deref(), Some("app"));
    run(&mut c, &v, &["HELLO", "2"]);
    assert!(!c.resp3);
    assert!(is_err(&run(&mut c, &v, &["HELLO", "4"])[0], "NOPROTO"));
    assert!(is_err(
        &run(&mut c, &v, &["HELLO", "3", "BOGUS"])[0],
        "ERR Syntax error"
    ));
    assert!(!c.resp3, "a refused HELLO changes nothing");
}

#[test]
fn client_basics() {
    let mut c = Conn {
        id: 5,
        ..Conn::default()
    };
    let v = view(true);
    assert_eq!(run(&mut c, &v, &["CLIENT", "GETNAME"]), vec![Reply::Nil]);
    assert_eq!(run(&mut c, &v, &["CLIENT", "SETNAME", "x"]), vec![Reply::ok()]);
    assert_eq!(run(&mut c, &v, &["client", "getname"]), vec![Reply::bulk("x")]);
    assert_eq!(
        run(&mut c, &v, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        vec![Reply::ok()]
    );
    assert_eq!(run(&mut c, &v, &["CLIENT", "ID"]), vec![Reply::Int(5)]);
    assert!(is_err(
        &run(&mut c, &v, &["CLIENT", "KILL", "x"])[0],
        "ERR unknown subcommand"
    ));
    assert!(is_err(
        &run(&mut c, &v, &["CLIENT", "SETNAME", "a b"])[0],
        "ERR Client names"
    ));
}

#[test]
fn subscribed_connections_get_switch_master_and_only_pubsub_commands() {
    let mut c = Conn::default();
    let v = view(true);
    let r = run(&mut c, &v, &["SUBSCRIBE", "+switch-master", "+sdown"]);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[1],
        Reply::Push(vec![Reply::bulk("subscribe"), Reply::bulk("+sdown"), Reply::Int(2)])
    );
    run(&mut c, &v, &["PSUBSCRIBE", "*"]);
    let msg = "keel 10.0.0.1 6379 10.0.0.2 6379";
    let d = c.deliveries("+switch-master", msg);
    assert_eq!(d.len(), 2, "the channel and the pattern each deliver");
    assert_eq!(
        d[0],
        Reply::Push(vec![
            Reply::bulk("message"),
            Reply::bulk("+switch-master"),
            Reply::bulk(msg)
        ])
    );
    assert!(matches!(&d[1], Reply::Push(p) if p[0] == Reply::bulk("pmessage") && p[1] == Reply::bulk("*")));
    assert!(is_err(
        &run(&mut c, &v, &["SENTINEL", "masters"])[0],
        "ERR Can't execute"
    ));
    assert_eq!(
        run(&mut c, &v, &["PING"]),
        vec![Reply::Array(vec![Reply::bulk("pong"), Reply::bulk("")])]
    );
    run(&mut c, &v, &["UNSUBSCRIBE"]);
    let r = run(&mut c, &v, &["PUNSUBSCRIBE"]);
    assert_eq!(
        r,
        vec![Reply::Push(vec![
            Reply::bulk("punsubscribe"),
            Reply::bulk("*"),
            Reply::Int(0)
        ])]
    );
    assert!(c.deliveries("+switch-master", msg).is_empty());
    assert!(matches!(&run(&mut c, &v, &["SENTINEL", "masters"])[0], Reply::Array(_)));
}

#[test]
fn quit_closes_and_reset_forgets() {
    let mut c = Conn {
        id: 3,
        name: Some("n".into()),
        resp3: true,
        ..Conn::default()
    };
    let v = view(true);
    assert_eq!(run(&mut c, &v, &["RESET"]), vec![Reply::Simple("RESET".into())]);
    assert_eq!((c.id, c.name.as_deref(), c.resp3), (3, None, false));
    let out = handle(&[b"QUIT".to_vec()], &mut c, &v);
    assert!(out.close);
}

#[test]
fn globs() {
    assert!(glob_match(b"*", b"+switch-master"));
    assert!(glob_match(b"+switch-*", b"+switch-master"));
    assert!(glob_match(b"+s?itch-master", b"+switch-master"));
    assert!(glob_match(b"[+-]sdown", b"-sdown"));
    assert!(!glob_match(b"[^+]sdown", b"+sdown"));
    assert!(glob_match(b"[a-z]x", b"qx"));
    assert!(!glob_match(b"+sdown", b"+switch-master"));
    assert!(glob_match(b"\\*", b"*"));
    assert!(!glob_match(b"\\*", b"a"));
    // Many stars against a long subject stay quick.
    let pat = "*a".repeat(60);
    assert!(!glob_match(pat.as_bytes(), "a".repeat(59).as_bytes()));
}
