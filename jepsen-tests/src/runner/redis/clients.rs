//! The Redis clients: each finds the master the way a Sentinel client does
//! (`SENTINEL get-master-addr-by-name`, asking the listeners in turn), keeps one connection to
//! it, and runs SET / GET on registers and RPUSH / LRANGE on lists, recording every operation.
//! A client asks discovery again only after an error (refused write, timeout, broken
//! connection), as real Sentinel clients do.
//!
//! Sync mode: every write is sent with `WAIT need timeout` behind it and is acknowledged only if
//! `WAIT` counts `need` replicas (`need` = nodes / 2, so the master and those replicas are a
//! majority); a write `WAIT` fell short for ended `info` (it is on the master and may or may not
//! survive). A read is a `MULTI` holding a write to the client's own scratch key and the read,
//! followed by `WAIT`: the master's replication stream is ordered, so once that scratch write is on
//! `need` replicas, so is every write whose value the read returned. A read `WAIT` fell short for
//! is dropped (`fail`: reads have no effect).
//!
//! Outcomes: an error reply (`NOREPLICAS`, `READONLY`, `MASTERDOWN`, ...) means Redis refused
//! the command before running it: `fail`. A refused connection never carried the request:
//! `fail`. A timeout or a connection broken after sending: `info`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::super::client::{Call, Pacer, Recorder};
use crate::history::{OpFn, OpKind};
use crate::resp::{Conn, Reply, RespError};
use crate::rng::Rng;

/// Timeout of every discovery question and connect.
pub(super) const DISCOVERY_TIMEOUT: Duration = Duration::from_millis(300);
/// `WAIT`'s own timeout in sync mode.
pub(super) const WAIT_MS: u64 = 500;
/// Read timeout of an operation (longer than `WAIT`).
pub(super) const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Appends per list before a client moves that slot on to a fresh key.
const APPENDS_PER_KEY: u64 = 200;

/// What every client shares.
pub(super) struct Shared {
    pub(super) rec: Arc<Recorder>,
    pub(super) listeners: Vec<(u64, String)>,
    pub(super) redis: Vec<(u64, String)>,
    pub(super) name: String,
    pub(super) sync: bool,
    /// `WAIT`'s replica count in sync mode.
    pub(super) need: u64,
    pub(super) keys: u64,
    pub(super) registers: bool,
    pub(super) lists: bool,
    /// Per list slot, appends so far (the key's generation is this / [`APPENDS_PER_KEY`]).
    pub(super) counts: Vec<AtomicU64>,
    /// Every list key appended to (for the final reads).
    pub(super) list_keys: Mutex<BTreeSet<String>>,
    /// Unique register values.
    pub(super) values: AtomicU64,
    /// Every discovery answer a client got.
    pub(super) discoveries: Mutex<Vec<Discovery>>,
}

/// One discovery answer a client got (`discoveries.jsonl`).
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Discovery {
    pub(super) time_ns: u64,
    pub(super) process: u64,
    /// The node whose listener answered.
    pub(super) listener: u64,
    /// `host:port`, or `None` for nil.
    pub(super) named: Option<String>,
}

/// Asks one listener which address is the master: `Ok(None)` for nil.
pub(super) fn ask(listener: &str, name: &str) -> Result<Option<String>, RespError> {
    let r = crate::resp::call(
        listener,
        &["SENTINEL", "get-master-addr-by-name", name],
        DISCOVERY_TIMEOUT,
    )?;
    Ok(match r {
        Reply::Array(Some(v)) if v.len() == 2 => match (v[0].text(), v[1].text()) {
            (Some(h), Some(p)) => Some(format!("{h}:{p}")),
            _ => None,
        },
        _ => None,
    })
}

impl Shared {
    /// The node whose Redis listens on `addr`.
    pub(super) fn node_of(&self, addr: &str) -> Option<u64> {
        self.redis.iter().find(|(_, a)| a == addr).map(|(id, _)| *id)
    }

    /// One round of discovery starting at listener `first`: the first master named.
    fn discover(&self, process: u64, first: usize) -> Option<(u64, String)> {
        let n = self.listeners.len();
        for k in 0..n {
            let (lid, l) = &self.listeners[(first + k) % n];
            let Ok(named) = ask(l, &self.name) else { continue };
            let t = self.rec.start.elapsed().as_nanos() as u64;
            self.discoveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Discovery {
                    time_ns: t,
                    process,
                    listener: *lid,
                    named: named.clone(),
                });
            if let Some(a) = named {
                return Some((self.node_of(&a).unwrap_or(0), a));
            }
        }
        None
    }
}

/// One client until the pacer stops it.
pub(super) fn client(process: u64, seed: u64, sh: Arc<Shared>, mut pacer: Pacer) {
    let mut rng = Rng::new(seed ^ (process + 1).wrapping_mul(0x005e_ed0f_4ed1));
    let mut conn: Option<(u64, Conn)> = None;
    let mut next_elem = 0u64;
    let mut turn = process as usize;
    while pacer.next_op() {
        if conn.is_none() {
            turn += 1;
            conn = sh.discover(process, turn).and_then(|(node, addr)| {
                let c = Conn::connect(&addr, DISCOVERY_TIMEOUT).ok()?;
                c.set_timeout(OP_TIMEOUT);
                Some((node, c))
            });
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let Some((node, c)) = conn.as_mut() else { continue };
        let list = match (sh.registers, sh.lists) {
            (true, true) => rng.below(2) == 0,
            (_, lists) => lists,
        };
        let read = rng.below(2) == 0;
        let (f, key, value) = if list {
            let slot = rng.below(sh.keys) as usize;
            if read {
                let generation = sh.counts[slot].load(Ordering::Relaxed) / APPENDS_PER_KEY;
                (OpFn::ReadList, format!("l{slot}-{generation}"), Value::Null)
            } else {
                let generation = sh.counts[slot].fetch_add(1, Ordering::Relaxed) / APPENDS_PER_KEY;
                next_elem += 1;
                let key = format!("l{slot}-{generation}");
                sh.list_keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone());
                (OpFn::Append, key, json!((process << 32) | next_elem))
            }
        } else {
            let key = format!("r{}", rng.below(sh.keys));
            if read {
                (OpFn::Read, key, Value::Null)
            } else {
                (OpFn::Write, key, json!(sh.values.fetch_add(1, Ordering::Relaxed)))
            }
        };
        let call = Call {
            rec: &sh.rec,
            process,
            f,
            key,
            node: *node,
        };
        call.invoke(value.clone());
        let (kind, out, err) = run_op(c, &sh, process, f, &call.key, &value);
        let keep = kind == OpKind::Ok;
        call.complete(kind, out, None, err);
        if !keep {
            // Refused, timed out or broken: ask discovery again before the next operation.
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(2 + rng.below(8)));
    }
}

/// The request(s) of one operation and how its replies are recorded: (kind, value, error).
fn run_op(
    c: &mut Conn,
    sh: &Shared,
    process: u64,
    f: OpFn,
    key: &str,
    value: &Value,
) -> (OpKind, Value, Option<String>) {
    let v = value.to_string();
    let need = sh.need.to_string();
    let wait_ms = WAIT_MS.to_string();
    let scratch = format!("__keel_jepsen_sync:{process}");
    let write: &[&str] = match f {
        OpFn::Write => &["SET", key, &v],
        OpFn::Append => &["RPUSH", key, &v],
        OpFn::Read => &["GET", key],
        _ => &["LRANGE", key, "0", "-1"],
    };
    let is_write = matches!(f, OpFn::Write | OpFn::Append);
    let wait: &[&str] = &["WAIT", &need, &wait_ms];
    let touch: &[&str] = &["SET", &scratch, &v];
    let reqs: Vec<&[&str]> = match (sh.sync, is_write) {
        (false, _) => vec![write],
        (true, true) => vec![write, wait],
        (true, false) => vec![&["MULTI"], touch, write, &["EXEC"], wait],
    };
    let replies = match c.pipeline(&reqs) {
        Ok(r) => r,
        Err(e) if is_write && e.maybe_sent() => return (OpKind::Info, value.clone(), Some(e.to_string())),
        Err(e) => return (OpKind::Fail, value.clone(), Some(e.to_string())),
    };
    let (main, wait) = match (sh.sync, is_write) {
        (false, _) => (&replies[0], None),
        (true, true) => (&replies[0], Some(&replies[1])),
        // The read's reply is the second of EXEC's array.
        (true, false) => match &replies[3] {
            Reply::Array(Some(a)) if a.len() == 2 => (&a[1], Some(&replies[4])),
            other => return (OpKind::Fail, Value::Null, Some(format!("EXEC: {other:?}"))),
        },
    };
    if let Some(e) = main.error() {
        return (
            OpKind::Fail,
            if is_write { value.clone() } else { Value::Null },
            Some(e.to_string()),
        );
    }
    if let Some(w) = wait {
        let acked = match w {
            Reply::Int(n) => *n as u64,
            _ => 0,
        };
        if acked < sh.need {
            let why = Some(format!("WAIT: {acked} of {} replicas ({w:?})", sh.need));
            return if is_write {
                (OpKind::Info, value.clone(), why)
            } else {
                (OpKind::Fail, Value::Null, why)
            };
        }
    }
    match f {
        OpFn::Write | OpFn::Append => (OpKind::Ok, value.clone(), None),
        OpFn::Read => (OpKind::Ok, register_value(main), None),
        _ => match main {
            Reply::Array(Some(items)) => (
                OpKind::Ok,
                Value::Array(items.iter().map(register_value).collect()),
                None,
            ),
            other => (OpKind::Fail, Value::Null, Some(format!("LRANGE: {other:?}"))),
        },
    }
}

/// A stored register or list element as a number (anything else reads as `null`).
fn register_value(r: &Reply) -> Value {
    r.text()
        .and_then(|t| t.parse::<u64>().ok())
        .map(Value::from)
        .unwrap_or(Value::Null)
}

/// The final read of every list, through the master discovery names, retried until `within`:
/// recorded as `read-list` operations of processes from `first_process` on, and returned.
pub(super) fn final_reads(
    sh: &Shared,
    first_process: u64,
    within: Duration,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let deadline = std::time::Instant::now() + within;
    let keys: Vec<String> = sh
        .list_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for (k, key) in keys.iter().enumerate() {
        let mut turn = 0;
        while std::time::Instant::now() < deadline {
            turn += 1;
            let Some((node, addr)) = sh.discover(first_process, turn) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let call = Call {
                rec: &sh.rec,
                process: first_process + k as u64,
                f: OpFn::ReadList,
                key: key.clone(),
                node,
            };
            call.invoke(Value::Null);
            match crate::resp::call(&addr, &["LRANGE", key, "0", "-1"], OP_TIMEOUT) {
                Ok(Reply::Array(Some(items))) => {
                    let list: Vec<Value> = items.iter().map(register_value).collect();
                    call.complete(OpKind::Ok, Value::Array(list.clone()), None, None);
                    out.insert(key.clone(), list);
                    break;
                }
                Ok(other) => call.complete(OpKind::Fail, Value::Null, None, Some(format!("{other:?}"))),
                Err(e) => call.complete(OpKind::Fail, Value::Null, None, Some(e.to_string())),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    out
}
