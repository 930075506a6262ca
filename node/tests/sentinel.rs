//! The Sentinel-compatible discovery listener (`--sentinel-addr`) of a three-node cluster, asked
//! over raw TCP and by redis-py's own `Sentinel` class (Debian's `python3-redis`).
//!
//! What this tests: the Sentinel protocol and the view's choice of master — discovery names the
//! Redis address of the node that holds the lease, and after a failover (kill -9 of the primary
//! node) names the new primary's and publishes `+switch-master`. What it does not test: Redis
//! management. Keel does not start Redis here: each node is told its members' Redis addresses with
//! `--sentinel-redis-addrs`, and the test itself starts a plain, unreplicated `redis-server` at
//! each of them, so that redis-py's `master_for` has a server to write to.
//!
//! Without `redis-server` or python3-redis the redis-py test is skipped with a message, unless `CI`
//! is set, where it fails instead. The raw-TCP test needs neither. The ioredis test (a client in
//! another language) runs when `KEEL_IOREDIS` names an installed ioredis package directory (Debian
//! does not package it: scripts/test.sh runs `npm install ioredis@5` into target/ioredis and sets
//! it; by hand, `npm install ioredis` somewhere, then `KEEL_IOREDIS=$PWD/node_modules/ioredis`),
//! and is skipped with a message otherwise, unless `CI` is set, where it fails instead.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_testkit::*;

const T: Duration = Duration::from_secs(20);
/// Every socket read in this test gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The interpreter that has Debian's python3-redis (a `python3` earlier on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// A RESP reply, as the test reads it.
#[derive(Debug, Clone, PartialEq)]
enum R {
    Str(String),
    Err(String),
    Int(i64),
    Nil,
    Arr(Vec<R>),
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a reply line");
    assert!(line.ends_with("\r\n"), "reply line not ended by CRLF: {line:?}");
    line.truncate(line.len() - 2);
    line
}

fn read_reply(r: &mut impl BufRead) -> R {
    let line = read_line(r);
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => R::Str(rest.into()),
        "-" => R::Err(rest.into()),
        ":" => R::Int(rest.parse().unwrap()),
        "$" if rest == "-1" => R::Nil,
        "$" => {
            let mut b = vec![0; rest.parse::<usize>().unwrap() + 2];
            r.read_exact(&mut b).expect("read a bulk string");
            R::Str(String::from_utf8_lossy(&b[..b.len() - 2]).into())
        }
        "*" if rest == "-1" => R::Nil,
        "*" => R::Arr((0..rest.parse::<usize>().unwrap()).map(|_| read_reply(r)).collect()),
        _ => panic!("unexpected reply line {line:?}"),
    }
}

/// A RESP2 connection to a Sentinel listener.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(addr: &str) -> std::io::Result<Client> {
        let w = TcpStream::connect_timeout(&addr.parse().unwrap(), IO_TIMEOUT)?;
        w.set_read_timeout(Some(IO_TIMEOUT))?;
        w.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    fn send(&mut self, args: &[&str]) {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.w.write_all(req.as_bytes()).expect("send a request");
    }

    fn call(&mut self, args: &[&str]) -> R {
        self.send(args);
        read_reply(&mut self.r)
    }
}

/// `SENTINEL get-master-addr-by-name keel` at `sentinel`, as `host:port`; None for nil or when
/// the listener does not answer.
fn master_addr(sentinel: &str) -> Option<String> {
    let mut c = Client::connect(sentinel).ok()?;
    match c.call(&["SENTINEL", "get-master-addr-by-name", "keel"]) {
        R::Arr(v) => match v.as_slice() {
            [R::Str(h), R::Str(p)] => Some(format!("{h}:{p}")),
            other => panic!("get-master-addr-by-name answered {other:?}"),
        },
        R::Nil => None,
        other => panic!("get-master-addr-by-name answered {other:?}"),
    }
}

/// Three nodes laid out with a Sentinel listener each and one Redis address per member (nothing
/// listens there unless the test starts it); not started.
struct Layout {
    c: Cluster,
    sentinels: Vec<String>,
    redis: Vec<String>,
}

fn layout() -> Layout {
    let ip = process_ip();
    let redis: Vec<String> = (0..3).map(|_| format!("{ip}:{}", free_port(&ip))).collect();
    let map = redis
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Cluster::new(3, &["--sentinel-redis-addrs", &map]);
    let mut sentinels = Vec::new();
    for n in c.nodes.iter_mut() {
        let s = format!("{ip}:{}", free_port(&ip));
        n.extra = vec!["--sentinel-addr".into(), s.clone()];
        sentinels.push(s);
    }
    Layout { c, sentinels, redis }
}

impl Layout {
    fn sentinel(&self, id: u64) -> &str {
        &self.sentinels[(id - 1) as usize]
    }

    fn redis(&self, id: u64) -> &str {
        &self.redis[(id - 1) as usize]
    }

    /// Wait until every running node's listener names `want` as the master.
    async fn wait_all_name(&self, want: &str) {
        let running: Vec<u64> = self.c.nodes.iter().filter(|n| n.running()).map(|n| n.id).collect();
        self.c
            .wait_for(
                T,
                &format!("every running node's Sentinel listener to name {want}"),
                || async {
                    running
                        .iter()
                        .all(|id| master_addr(self.sentinel(*id)).as_deref() == Some(want))
                        .then_some(())
                },
            )
            .await;
    }

    /// Start the nodes and wait until every listener names the primary's Redis: the primary.
    async fn start(&mut self) -> u64 {
        self.c.start_all();
        let old = self.c.wait_primary(&[], T).await;
        self.wait_all_name(self.redis(old)).await;
        old
    }

    /// kill -9 the primary `old`'s node and wait until every listener left names the new primary's
    /// Redis: the new primary.
    async fn fail_over(&mut self, old: u64) -> u64 {
        self.c.kill(old);
        let new = self.c.wait_primary(&[old], T).await;
        self.wait_all_name(self.redis(new)).await;
        new
    }

    /// The `+switch-master` message for a move from `old`'s Redis to `new`'s.
    fn switch_master(&self, old: u64, new: u64) -> String {
        let (o, n) = (
            self.redis(old).rsplit_once(':').unwrap(),
            self.redis(new).rsplit_once(':').unwrap(),
        );
        format!("keel {} {} {} {}", o.0, o.1, n.0, n.1)
    }

    /// A plain `redis-server` (`bin`) at each member's Redis address.
    fn redis_servers(&self, bin: &Path) -> Vec<RedisServer> {
        self.redis
            .iter()
            .map(|a| RedisServer::start(bin, a, self.c.dir.path()))
            .collect()
    }
}

/// A test that cannot run here says `why` and is skipped (None), except under CI, where it fails.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "{test}: {why}; CI is set, so this is a failure, not a skip");
    println!("SKIPPED {test}: {why}");
    None
}

/// The lines `child` prints on its (piped) stdout, as they come.
fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Kill and reap a client process.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sentinel_protocol_names_the_lease_holder_and_announces_a_new_one() {
    let mut l = layout();
    let old = l.start().await;

    let other = (1..=3).find(|id| *id != old).unwrap();
    let mut c = Client::connect(l.sentinel(other)).unwrap();
    assert_eq!(c.call(&["PING"]), R::Str("PONG".into()));
    assert_eq!(
        c.call(&["ROLE"]),
        R::Arr(vec![R::Str("sentinel".into()), R::Arr(vec![R::Str("keel".into())])])
    );
    assert_eq!(c.call(&["SENTINEL", "get-master-addr-by-name", "nope"]), R::Nil);
    assert!(matches!(c.call(&["COMMAND"]), R::Err(e) if e.starts_with("ERR unknown command")));
    let R::Arr(replicas) = c.call(&["SENTINEL", "replicas", "keel"]) else {
        panic!("SENTINEL replicas is not an array")
    };
    assert_eq!(replicas.len(), 2, "the two other members are the replicas");
    // A request split across writes is answered once complete; an inline one too.
    c.w.write_all(b"*1\r\n$4\r\nPI").unwrap();
    c.w.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let the first half arrive on its own
    c.w.write_all(b"NG\r\nPING\r\n").unwrap();
    assert_eq!(read_reply(&mut c.r), R::Str("PONG".into()));
    assert_eq!(read_reply(&mut c.r), R::Str("PONG".into()));
    // An oversized request is refused with an error, and the connection closed.
    c.w.write_all(b"*1\r\n$1000000\r\n").unwrap();
    assert!(matches!(read_reply(&mut c.r), R::Err(e) if e.contains("Protocol error")));
    let mut rest = String::new();
    assert_eq!(
        c.r.read_line(&mut rest).ok(),
        Some(0),
        "closed after the error: {rest:?}"
    );

    // A subscriber on a node that stays up sees the master move.
    let mut sub = Client::connect(l.sentinel(other)).unwrap();
    sub.send(&["SUBSCRIBE", "+switch-master"]);
    assert_eq!(
        read_reply(&mut sub.r),
        R::Arr(vec![
            R::Str("subscribe".into()),
            R::Str("+switch-master".into()),
            R::Int(1)
        ])
    );

    let new = l.fail_over(old).await;
    // The failover takes longer than one read timeout: read until the message or a deadline.
    sub.w.set_read_timeout(Some(T)).unwrap();
    let want = l.switch_master(old, new);
    assert_eq!(
        read_reply(&mut sub.r),
        R::Arr(vec![
            R::Str("message".into()),
            R::Str("+switch-master".into()),
            R::Str(want)
        ])
    );

    // The last node alone reaches no majority: it cannot tell that anyone holds the lease, so it
    // names no master.
    l.c.kill(new);
    let last = (1..=3).find(|id| *id != old && *id != new).unwrap();
    l.c.wait_for(T, "the node left alone to name no master", || async {
        master_addr(l.sentinel(last)).is_none().then_some(())
    })
    .await;
    let mut c = Client::connect(l.sentinel(last)).unwrap();
    assert_eq!(c.call(&["SENTINEL", "masters"]), R::Arr(vec![]));
}

/// `redis-server` and python3-redis, or None when the test must be skipped (a panic under CI).
fn redis_tools(test: &str) -> Option<PathBuf> {
    let server = which("redis-server");
    let py = Command::new(PYTHON)
        .args(["-c", "import redis.sentinel"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match (server, py) {
        (Some(s), true) => Some(s),
        _ => skip(
            test,
            "needs Debian's redis-server and python3-redis (scripts/test.sh installs them, as root)",
        ),
    }
}

/// A plain `redis-server`, killed on drop.
struct RedisServer(Child);

impl RedisServer {
    fn start(bin: &Path, addr: &str, dir: &Path) -> RedisServer {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new(bin)
            .args(["--bind", host, "--port", port, "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        let server = RedisServer(child);
        let up = poll_until_blocking(T, Duration::from_millis(50), || {
            let mut c = Client::connect(addr).ok()?;
            (c.call(&["PING"]) == R::Str("PONG".into())).then_some(())
        });
        assert!(up.is_some(), "redis-server at {addr} did not answer PING within {T:?}");
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// redis-py: discover the master through the Sentinels, write to it through `master_for`, print
/// the discovered `host:port`.
const DISCOVER_AND_WRITE: &str = r#"
import sys
from redis.sentinel import Sentinel
sentinels = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in sys.argv[1].split(","))]
s = Sentinel(sentinels, socket_timeout=2)
host, port = s.discover_master("keel")
m = s.master_for("keel", socket_timeout=2)
m.set("written-through-sentinel", sys.argv[2])
assert m.get("written-through-sentinel").decode() == sys.argv[2]
print(f"{host}:{port}")
"#;

/// redis-py: subscribe to `+switch-master` on one Sentinel, say so, print the first message.
const SUBSCRIBE: &str = r#"
import sys, time, redis
h, p = sys.argv[1].rsplit(":", 1)
ps = redis.Redis(host=h, port=int(p), socket_timeout=5).pubsub()
ps.subscribe("+switch-master")
while (m := ps.get_message(timeout=1)) is None or m["type"] != "subscribe":
    pass
print("subscribed", flush=True)
deadline = time.time() + 30
while time.time() < deadline:
    m = ps.get_message(timeout=1)
    if m and m["type"] == "message":
        print(m["data"].decode(), flush=True)
        sys.exit(0)
sys.exit(1)
"#;

/// Run a client program to completion; its trimmed stdout, or a panic naming `what` with its stderr.
fn client_output(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn discover_and_write(sentinels: &str, value: &str) -> String {
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", DISCOVER_AND_WRITE, sentinels, value]);
    client_output(cmd, "redis-py discover_master/master_for")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_sentinel_finds_the_primarys_redis_and_follows_a_failover() {
    let test = "redis_py_sentinel_finds_the_primarys_redis_and_follows_a_failover";
    let Some(bin) = redis_tools(test) else { return };
    let mut l = layout();
    let _servers = l.redis_servers(&bin);
    let old = l.start().await;
    let all = l.sentinels.join(",");
    assert_eq!(discover_and_write(&all, "before"), l.redis(old));

    // A redis-py subscriber on a node that stays up.
    let other = (1..=3).find(|id| *id != old).unwrap();
    let mut sub = Command::new(PYTHON)
        .args(["-c", SUBSCRIBE, l.sentinel(other)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let rx = stdout_lines(&mut sub);
    let first = rx.recv_timeout(T);
    if first.as_deref() != Ok("subscribed") {
        kill(&mut sub);
        panic!("the redis-py subscriber did not subscribe: {first:?}");
    }

    let new = l.fail_over(old).await;
    let message = rx.recv_timeout(T + T);
    kill(&mut sub);
    assert_eq!(message, Ok(l.switch_master(old, new)));

    // The same code, unchanged, now finds and writes to the new primary's Redis (the killed node's
    // Sentinel is in the list and does not answer: redis-py moves on to the next).
    assert_eq!(discover_and_write(&all, "after"), l.redis(new));
}

/// ioredis (Node.js): connect through the Sentinels, write, print the address of the master the
/// connection is on.
const IOREDIS_WRITE: &str = r#"
const Redis = require(process.env.KEEL_IOREDIS);
const sentinels = process.argv[1].split(",").map((a) => {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
});
const r = new Redis({ sentinels, name: "keel", connectTimeout: 2000, sentinelRetryStrategy: () => null,
                      maxRetriesPerRequest: 1 });
(async () => {
  await r.set("written-through-sentinel", process.argv[2]);
  if ((await r.get("written-through-sentinel")) !== process.argv[2]) throw new Error("read back another value");
  console.log(`${r.stream.remoteAddress}:${r.stream.remotePort}`);
  r.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn ioredis_write(module: &str, sentinels: &str, value: &str) -> String {
    let mut cmd = Command::new("node");
    cmd.env("KEEL_IOREDIS", module)
        .args(["-e", IOREDIS_WRITE, sentinels, value]);
    client_output(cmd, "ioredis through the Sentinels")
}

/// The installed ioredis package directory `KEEL_IOREDIS` names (scripts/test.sh installs it), or
/// None when the test must be skipped (a panic under CI).
fn ioredis(test: &str) -> Option<String> {
    let Some(module) = std::env::var("KEEL_IOREDIS").ok().filter(|m| Path::new(m).is_dir()) else {
        return skip(
            test,
            "set KEEL_IOREDIS to an installed ioredis package directory (scripts/test.sh installs one into \
             target/ioredis and sets it)",
        );
    };
    assert!(
        which("node").is_some(),
        "KEEL_IOREDIS is set but there is no `node` on PATH"
    );
    Some(module)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_finds_the_primarys_redis_before_and_after_a_failover() {
    let test = "ioredis_finds_the_primarys_redis_before_and_after_a_failover";
    let Some(module) = ioredis(test) else { return };
    let Some(bin) = redis_tools(test) else { return };
    let mut l = layout();
    let _servers = l.redis_servers(&bin);
    let old = l.start().await;
    let all = l.sentinels.join(",");
    assert_eq!(ioredis_write(&module, &all, "before"), l.redis(old));
    let new = l.fail_over(old).await;
    assert_eq!(ioredis_write(&module, &all, "after"), l.redis(new));
}

/// Three nodes that each run a managed Redis (`--redis-port`) and a Sentinel listener, no Redis
/// address list: the listeners learn the Redis addresses from the nodes themselves.
fn managed_layout() -> Layout {
    let ip = process_ip();
    let mut c = Cluster::new(3, &[]);
    let (mut sentinels, mut redis) = (Vec::new(), Vec::new());
    for n in c.nodes.iter_mut() {
        let s = format!("{ip}:{}", free_port(&ip));
        let r = free_port(&ip);
        n.extra = vec![
            "--sentinel-addr".into(),
            s.clone(),
            "--redis-port".into(),
            r.to_string(),
        ];
        sentinels.push(s);
        redis.push(format!("{ip}:{r}"));
    }
    Layout { c, sentinels, redis }
}

/// The issue's whole path with Keel managing Redis: redis-py's unmodified Sentinel code finds the
/// primary's managed Redis and writes to it; after kill -9 of the primary node (its Redis dies
/// with it) a subscriber is sent `+switch-master`, and the same code finds the new primary's Redis,
/// which has the first write, and writes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_finds_keels_managed_redis_across_a_failover() {
    let test = "redis_py_finds_keels_managed_redis_across_a_failover";
    if redis_tools(test).is_none() {
        return;
    }
    let mut l = managed_layout();
    let old = l.start().await;
    let all = l.sentinels.join(",");
    assert_eq!(discover_and_write(&all, "before"), l.redis(old));

    // Wait until both replicas have the first write, so the promoted one has it too.
    for id in (1..=3).filter(|id| *id != old) {
        let addr = l.redis(id).to_string();
        l.c.wait_for(T, &format!("the replica {addr} to have the first write"), || async {
            let mut c = Client::connect(&addr).ok()?;
            (c.call(&["GET", "written-through-sentinel"]) == R::Str("before".into())).then_some(())
        })
        .await;
    }

    // A subscriber on a node that stays up is told of the new master (`+switch-master`).
    let other = (1..=3).find(|id| *id != old).unwrap();
    let mut sub = Client::connect(l.sentinel(other)).unwrap();
    sub.send(&["SUBSCRIBE", "+switch-master"]);
    assert!(matches!(read_reply(&mut sub.r), R::Arr(v) if v.len() == 3));

    let new = l.fail_over(old).await;
    sub.w.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        read_reply(&mut sub.r),
        R::Arr(vec![
            R::Str("message".into()),
            R::Str("+switch-master".into()),
            R::Str(l.switch_master(old, new))
        ])
    );
    let mut c = Client::connect(l.redis(new)).unwrap();
    assert_eq!(c.call(&["GET", "written-through-sentinel"]), R::Str("before".into()));
    assert_eq!(discover_and_write(&all, "after"), l.redis(new));
}

/// ioredis (Node.js), one long-lived client: writes through the Sentinels every 50 ms and prints
/// `master HOST:PORT after N writes, E errors` whenever the master its writes reach changes; exits 0
/// once 10 more writes were acknowledged by a second master, 1 after 40 s without.
const IOREDIS_KEEP_WRITING: &str = r#"
const Redis = require(process.env.KEEL_IOREDIS);
const sentinels = process.argv[1].split(",").map((a) => {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
});
const r = new Redis({ sentinels, name: "keel", connectTimeout: 1000, commandTimeout: 1000 });
r.on("error", () => {});
const deadline = Date.now() + 40000;
let last = null, n = 0, errors = 0, masters = 0, onSecond = 0;
(async () => {
  while (Date.now() < deadline) {
    n += 1;
    try {
      await r.set(`ioredis-${n}`, String(n));
      const at = `${r.stream.remoteAddress}:${r.stream.remotePort}`;
      if (at !== last) {
        console.log(`master ${at} after ${n} writes, ${errors} errors`);
        masters += 1;
        last = at;
      }
      if (masters > 1 && ++onSecond === 10) { r.disconnect(); process.exit(0); }
    } catch (e) {
      errors += 1;
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  console.error(`no second master within 40 s (${n} writes, ${errors} errors)`);
  process.exit(1);
})();
"#;

/// The issue's bar for a client in a second language: one ioredis client, unmodified, keeps writing
/// to Keel's managed Redis through the Sentinel listeners across a kill -9 of the primary node, and
/// its writes reach the new primary's Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_keeps_writing_across_a_failover_of_keels_managed_redis() {
    let test = "ioredis_keeps_writing_across_a_failover_of_keels_managed_redis";
    let Some(module) = ioredis(test) else { return };
    if redis_tools(test).is_none() {
        return;
    }
    let mut l = managed_layout();
    let old = l.start().await;
    let mut client = Command::new("node")
        .env("KEEL_IOREDIS", &module)
        .args(["-e", IOREDIS_KEEP_WRITING, &l.sentinels.join(",")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node");
    let rx = stdout_lines(&mut client);
    let first = rx.recv_timeout(T);
    let want = format!("master {} after 1 writes, 0 errors", l.redis(old));
    if first.as_deref() != Ok(want.as_str()) {
        kill(&mut client);
        panic!("ioredis' first write: {first:?}, want {want:?}");
    }

    l.c.kill(old);
    let new = l.c.wait_primary(&[old], T).await;
    let second = rx.recv_timeout(T + T);
    let status = poll_until_blocking(T, Duration::from_millis(50), || client.try_wait().ok().flatten());
    if status.is_none() {
        kill(&mut client);
    }
    println!("ioredis across kill -9 of primary node {old}: {second:?}");
    let second = second.expect("a line from ioredis naming the second master");
    assert!(
        second.starts_with(&format!("master {} after ", l.redis(new))),
        "ioredis' writes moved to {second:?}, not to the new primary's Redis {}",
        l.redis(new)
    );
    assert!(status.is_some_and(|s| s.success()), "ioredis exited {status:?}");
}
