//! The commands the listener answers, as a pure function of the request, the connection's state
//! and the current [`SentinelView`]: what unmodified clients' Sentinel support sends (redis-py,
//! ioredis, Jedis, go-redis, Lettuce), with Sentinel's own field names and errors.

use super::resp::Reply;
use super::view::{Addr, SentinelView};

/// What Keel reports as its Redis version (clients that check one see a Redis 7 Sentinel).
pub const REDIS_VERSION: &str = "7.0.0";

/// Per-connection state.
#[derive(Debug, Default, Clone)]
pub struct Conn {
    pub id: u64,
    pub resp3: bool,
    pub name: Option<String>,
    /// Subscribed channels and patterns; while any is set, RESP2 allows only the pub/sub commands.
    pub channels: Vec<String>,
    pub patterns: Vec<String>,
}

impl Conn {
    pub fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Does an event on `channel` go to this connection, and as which replies.
    pub fn deliveries(&self, channel: &str, message: &str) -> Vec<Reply> {
        let mut out = Vec::new();
        if self.channels.iter().any(|c| c == channel) {
            out.push(Reply::Push(vec![
                Reply::bulk("message"),
                Reply::bulk(channel),
                Reply::bulk(message),
            ]));
        }
        for p in self
            .patterns
            .iter()
            .filter(|p| glob_match(p.as_bytes(), channel.as_bytes()))
        {
            out.push(Reply::Push(vec![
                Reply::bulk("pmessage"),
                Reply::bulk(p),
                Reply::bulk(channel),
                Reply::bulk(message),
            ]));
        }
        out
    }
}

/// What to do after a command.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    /// Close the connection after the replies (QUIT).
    pub close: bool,
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Outcome {
        Outcome {
            replies: vec![r],
            close: false,
        }
    }
}

fn text(a: &[u8]) -> String {
    String::from_utf8_lossy(a).into_owned()
}

fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_lowercase()
    ))
}

fn unknown(args: &[Vec<u8>]) -> Reply {
    let rest: Vec<String> = args[1..].iter().take(8).map(|a| format!("'{}'", text(a))).collect();
    Reply::err(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        text(&args[0]),
        rest.join(" ")
    ))
}

/// Answer one request (`args` is not empty).
pub fn handle(args: &[Vec<u8>], conn: &mut Conn, view: &SentinelView) -> Outcome {
    let cmd = text(&args[0]).to_uppercase();
    let argv: Vec<String> = args[1..].iter().map(|a| text(a)).collect();
    if conn.subscriptions() > 0
        && !conn.resp3
        && !matches!(
            cmd.as_str(),
            "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
        )
    {
        return Reply::err(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            cmd.to_lowercase()
        ))
        .into();
    }
    match cmd.as_str() {
        "PING" => ping(&argv, conn).into(),
        "QUIT" => Outcome {
            replies: vec![Reply::ok()],
            close: true,
        },
        "RESET" => {
            *conn = Conn {
                id: conn.id,
                ..Conn::default()
            };
            Reply::Simple("RESET".into()).into()
        }
        "HELLO" => hello(&argv, conn).into(),
        "AUTH" => Reply::err(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        )
        .into(),
        "CLIENT" => client(&argv, conn).into(),
        "ROLE" => Reply::Array(vec![
            Reply::bulk("sentinel"),
            Reply::Array(vec![Reply::bulk(&view.name)]),
        ])
        .into(),
        "SENTINEL" => sentinel(&argv, view).into(),
        "INFO" => Reply::bulk(info(view)).into(),
        "SUBSCRIBE" | "PSUBSCRIBE" => subscribe(&cmd, &argv, conn),
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" => unsubscribe(&cmd, &argv, conn),
        _ => unknown(args).into(),
    }
}

fn ping(argv: &[String], conn: &Conn) -> Reply {
    match (argv, conn.subscriptions() > 0 && !conn.resp3) {
        ([], false) => Reply::Simple("PONG".into()),
        ([msg], false) => Reply::bulk(msg),
        // RESP2 in subscribed mode: PING answers as a pub/sub message.
        ([], true) => Reply::Array(vec![Reply::bulk("pong"), Reply::bulk("")]),
        ([msg], true) => Reply::Array(vec![Reply::bulk("pong"), Reply::bulk(msg)]),
        _ => wrong_args("ping"),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switch to RESP2 or RESP3.
fn hello(argv: &[String], conn: &mut Conn) -> Reply {
    let mut resp3 = conn.resp3;
    let mut name = None;
    if let Some(v) = argv.first() {
        match v.parse::<i64>() {
            Ok(2) => resp3 = false,
            Ok(3) => resp3 = true,
            Ok(_) => return Reply::err("NOPROTO unsupported protocol version"),
            Err(_) => return Reply::err("ERR Protocol version is not an integer or out of range"),
        }
        let mut rest = &argv[1..];
        while let Some(opt) = rest.first() {
            match (opt.to_uppercase().as_str(), rest) {
                // No password is configured: as on a Redis without one, the default user takes any.
                ("AUTH", [_, _user, _pass, tail @ ..]) => rest = tail,
                ("SETNAME", [_, n, tail @ ..]) => {
                    name = Some(n.clone());
                    rest = tail;
                }
                _ => return Reply::err(format!("ERR Syntax error in HELLO option '{opt}'")),
            }
        }
    }
    conn.resp3 = resp3;
    if name.is_some() {
        conn.name = name;
    }
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
        (Reply::bulk("id"), Reply::Int(conn.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("sentinel")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ])
}

fn client(argv: &[String], conn: &mut Conn) -> Reply {
    let Some(sub) = argv.first() else {
        return wrong_args("client");
    };
    match (sub.to_uppercase().as_str(), &argv[1..]) {
        ("SETNAME", [name]) if name.contains(' ') => {
            Reply::err("ERR Client names cannot contain spaces, newlines or special characters.")
        }
        ("SETNAME", [name]) => {
            conn.name = (!name.is_empty()).then(|| name.clone());
            Reply::ok()
        }
        ("GETNAME", []) => conn.name.as_ref().map_or(Reply::Nil, Reply::bulk),
        ("SETINFO", [_attr, _value]) => Reply::ok(),
        ("ID", []) => Reply::Int(conn.id as i64),
        ("SETNAME" | "GETNAME" | "SETINFO" | "ID", _) => wrong_args(&format!("client|{}", sub.to_lowercase())),
        _ => Reply::err(format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP.")),
    }
}

/// `SENTINEL <subcommand> ...`.
fn sentinel(argv: &[String], view: &SentinelView) -> Reply {
    let Some(sub) = argv.first() else {
        return wrong_args("sentinel");
    };
    let sub = sub.to_lowercase();
    let named = |n: &str| n == view.name;
    match (sub.as_str(), &argv[1..]) {
        ("get-master-addr-by-name", [n]) => match &view.master {
            Some((_, a)) if named(n) => Reply::Array(vec![Reply::bulk(&a.host), Reply::bulk(a.port.to_string())]),
            // An unknown name, or no lease-holding primary: nil, as Sentinel answers an unknown name.
            _ => Reply::Nil,
        },
        ("masters", []) => Reply::Array(view.master.iter().map(|m| master_fields(view, &m.1)).collect()),
        ("master", [n]) => match &view.master {
            Some((_, a)) if named(n) => master_fields(view, a),
            _ => no_such_master(),
        },
        ("replicas" | "slaves", [n]) => match &view.master {
            Some((_, a)) if named(n) => Reply::Array(view.replicas.iter().map(|r| replica_fields(r, a)).collect()),
            _ => no_such_master(),
        },
        // The listeners do not depend on there being a master (ioredis asks before the master).
        ("sentinels", [n]) if named(n) => Reply::Array(view.sentinels.iter().map(sentinel_fields).collect()),
        ("sentinels", [_]) => no_such_master(),
        ("myid", []) => Reply::bulk(format!("{:040x}", 0)),
        ("ckquorum", [n]) if named(n) && view.master.is_some() => Reply::Simple(format!(
            "OK {} usable Sentinels. Quorum and failover authorization is done by Keel's Raft group",
            view.sentinels.len() + 1
        )),
        ("ckquorum", [_]) => no_such_master(),
        (
            "get-master-addr-by-name"
            | "masters"
            | "master"
            | "replicas"
            | "slaves"
            | "sentinels"
            | "myid"
            | "ckquorum",
            _,
        ) => wrong_args(&format!("sentinel|{sub}")),
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try SENTINEL HELP.", argv[0])),
    }
}

fn no_such_master() -> Reply {
    Reply::err("ERR No such master with that name")
}

/// A stable 40-hex run id per address (clients only compare them).
fn runid(a: &Addr) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    format!("{:040x}", h.finish())
}

fn master_fields(view: &SentinelView, a: &Addr) -> Reply {
    let slaves = view.replicas.len().to_string();
    let sentinels = view.sentinels.len().to_string();
    let epoch = view.epoch.to_string();
    let port = a.port.to_string();
    with_link(
        &[
            ("name", view.name.as_str()),
            ("ip", &a.host),
            ("port", &port),
            ("runid", &runid(a)),
            ("flags", "master"),
        ],
        &[
            ("info-refresh", "0"),
            ("role-reported", "master"),
            ("role-reported-time", "0"),
            ("config-epoch", &epoch),
            ("num-slaves", &slaves),
            ("num-other-sentinels", &sentinels),
            ("quorum", "1"),
            ("failover-timeout", "0"),
            ("parallel-syncs", "1"),
        ],
    )
}

fn replica_fields(r: &super::view::ReplicaView, master: &Addr) -> Reply {
    let port = r.addr.port.to_string();
    let master_port = master.port.to_string();
    with_link(
        &[
            ("name", r.addr.to_string().as_str()),
            ("ip", &r.addr.host),
            ("port", &port),
            ("runid", &runid(&r.addr)),
            (
                "flags",
                if r.healthy {
                    "slave"
                } else {
                    "slave,s_down,disconnected"
                },
            ),
        ],
        &[
            ("info-refresh", "0"),
            ("role-reported", "slave"),
            ("role-reported-time", "0"),
            ("master-link-down-time", "0"),
            ("master-link-status", if r.healthy { "ok" } else { "err" }),
            ("master-host", &master.host),
            ("master-port", &master_port),
            ("slave-priority", "100"),
            ("slave-repl-offset", "0"),
            ("replica-announced", "1"),
        ],
    )
}

fn sentinel_fields(a: &Addr) -> Reply {
    let port = a.port.to_string();
    with_link(
        &[
            ("name", runid(a).as_str()),
            ("ip", &a.host),
            ("port", &port),
            ("runid", &runid(a)),
            ("flags", "sentinel"),
        ],
        &[
            ("last-hello-message", "0"),
            ("voted-leader", "?"),
            ("voted-leader-epoch", "0"),
        ],
    )
}

fn info(view: &SentinelView) -> String {
    let (status, address) = match &view.master {
        Some((_, a)) => ("ok", a.to_string()),
        None => ("odown", String::new()),
    };
    format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:sentinel\r\nkeel_version:{}\r\n\r\n\
         # Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\n\
         sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n\
         master0:name={},status={status},address={address},slaves={},sentinels={}\r\n",
        env!("CARGO_PKG_VERSION"),
        u8::from(view.master.is_some()),
        view.name,
        view.replicas.len(),
        view.sentinels.len() + 1,
    )
}

fn subscribe(cmd: &str, argv: &[String], conn: &mut Conn) -> Outcome {
    if argv.is_empty() {
        return wrong_args(cmd).into();
    }
    let pattern = cmd == "PSUBSCRIBE";
    let kind = if pattern { "psubscribe" } else { "subscribe" };
    let mut replies = Vec::new();
    for c in argv {
        let list = if pattern {
            &mut conn.patterns
        } else {
            &mut conn.channels
        };
        if !list.contains(c) {
            list.push(c.clone());
        }
        replies.push(Reply::Push(vec![
            Reply::bulk(kind),
            Reply::bulk(c),
            Reply::Int(conn.subscriptions() as i64),
        ]));
    }
    Outcome { replies, close: false }
}

fn unsubscribe(cmd: &str, argv: &[String], conn: &mut Conn) -> Outcome {
    let pattern = cmd == "PUNSUBSCRIBE";
    let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
    let names: Vec<String> = if argv.is_empty() {
        if pattern {
            conn.patterns.clone()
        } else {
            conn.channels.clone()
        }
    } else {
        argv.to_vec()
    };
    let mut replies = Vec::new();
    for c in &names {
        let list = if pattern {
            &mut conn.patterns
        } else {
            &mut conn.channels
        };
        list.retain(|x| x != c);
        replies.push(Reply::Push(vec![
            Reply::bulk(kind),
            Reply::bulk(c),
            Reply::Int(conn.subscriptions() as i64),
        ]));
    }
    if replies.is_empty() {
        replies.push(Reply::Push(vec![
            Reply::bulk(kind),
            Reply::Nil,
            Reply::Int(conn.subscriptions() as i64),
        ]));
    }
    Outcome { replies, close: false }
}

/// Redis's glob: `*`, `?`, `[...]` (with `^` negation and ranges), `\` escapes. Each (pattern,
/// subject) position is tried once, so any pattern takes at most `pattern x subject` steps.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let mut failed = vec![false; (pat.len() + 1) * (s.len() + 1)];
    glob_at(pat, 0, s, 0, &mut failed)
}

fn glob_at(pat: &[u8], p: usize, s: &[u8], i: usize, failed: &mut [bool]) -> bool {
    let slot = p * (s.len() + 1) + i;
    if failed[slot] {
        return false;
    }
    let hit = match pat.get(p) {
        None => i == s.len(),
        Some(b'*') => (i..=s.len()).any(|j| glob_at(pat, p + 1, s, j, failed)),
        Some(_) if i == s.len() => false,
        Some(b'?') => glob_at(pat, p + 1, s, i + 1, failed),
        Some(b'[') => match pat[p + 1..].iter().position(|&b| b == b']') {
            None => s[i] == b'[' && glob_at(pat, p + 1, s, i + 1, failed),
            Some(end) => {
                let set = &pat[p + 1..p + 1 + end];
                class_has(set, s[i]) && glob_at(pat, p + end + 2, s, i + 1, failed)
            }
        },
        Some(b'\\') if p + 1 < pat.len() => s[i] == pat[p + 1] && glob_at(pat, p + 2, s, i + 1, failed),
        Some(&c) => s[i] == c && glob_at(pat, p + 1, s, i + 1, failed),
    };
    if !hit {
        failed[slot] = true;
    }
    hit
}

/// Whether a `[...]` set (without the brackets) admits `c`.
fn class_has(set: &[u8], c: u8) -> bool {
    let (negate, set) = match set.split_first() {
        Some((b'^', tail)) => (true, tail),
        _ => (false, set),
    };
    let mut hit = false;
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == b'-' {
            hit |= (set[i]..=set[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= set[i] == c;
            i += 1;
        }
    }
    hit != negate
}

#[cfg(test)]
mod tests;

/// The link and ping fields every Sentinel entry (master, replica, sentinel) carries: constant here,
/// because Keel does not ping the way Sentinel does.
const LINK_FIELDS: [(&str, &str); 6] = [
    ("link-pending-commands", "0"),
    ("link-refcount", "1"),
    ("last-ping-sent", "0"),
    ("last-ok-ping-reply", "0"),
    ("last-ping-reply", "0"),
    ("down-after-milliseconds", "0"),
];

/// A Sentinel entry: `head`, the [`LINK_FIELDS`], then `tail`.
fn with_link(head: &[(&str, &str)], tail: &[(&str, &str)]) -> Reply {
    Reply::fields(head.iter().chain(LINK_FIELDS.iter()).chain(tail).copied())
}
