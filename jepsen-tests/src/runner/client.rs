//! The clients: one thread each, running the register workload (read / write / cas) or the
//! append workload (lists grown by compare-and-set) against the nodes' HTTP API, paced or as
//! fast as answered, and recording every operation's invocation and completion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::probe::new_http;
use super::{RunConfig, RunOptions, Workload};
use crate::history::{Op, OpFn, OpKind};
use crate::rng::Rng;

/// One client's go-ahead: spaces its operations so that all clients together make about `rate`
/// per second, and ends the client when the run stops. A client that falls behind (slow answers, a
/// fault) does not burst to catch up.
pub(super) struct Pacer {
    period: Option<Duration>,
    next: Instant,
    stop: Arc<AtomicBool>,
}

impl Pacer {
    pub(super) fn new(rate: Option<f64>, clients: u64, stop: Arc<AtomicBool>) -> Pacer {
        let period = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(clients.max(1) as f64 / r));
        Pacer {
            period,
            next: Instant::now(),
            stop,
        }
    }

    /// Waits for this client's next slot (in steps of at most 100 ms, so a stop is noticed);
    /// `false` once the run stops.
    pub(super) fn next_op(&mut self) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let Some(period) = self.period else { return true };
            let now = Instant::now();
            if now >= self.next {
                self.next = self.next.max(now) + period;
                return true;
            }
            std::thread::sleep((self.next - now).min(Duration::from_millis(100)));
        }
    }
}

/// A recorder shared by clients: one monotonic clock, one index counter.
pub(super) struct Recorder {
    pub(super) start: Instant,
    index: AtomicU64,
    ops: Mutex<Vec<Op>>,
    /// Completions so far by kind (ok, fail, info), for the progress lines.
    done: [AtomicU64; 3],
}

/// Completed operations so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) ok: u64,
    pub(super) fail: u64,
    pub(super) info: u64,
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub(super) fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            index: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            done: Default::default(),
        }
    }

    /// Completions so far (without taking the history's lock).
    pub(super) fn counts(&self) -> Counts {
        let [ok, fail, info] = &self.done;
        Counts {
            ok: ok.load(Ordering::Relaxed),
            fail: fail.load(Ordering::Relaxed),
            info: info.load(Ordering::Relaxed),
        }
    }

    /// Every record so far, in file order (the recorder is left empty).
    pub(super) fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record of `call`.
    fn record(&self, call: &Call, kind: OpKind, value: Value, epoch: Option<u64>, error: Option<String>) {
        let slot = match kind {
            OpKind::Invoke => None,
            OpKind::Ok => Some(0),
            OpKind::Fail => Some(1),
            OpKind::Info => Some(2),
        };
        if let Some(i) = slot {
            self.done[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut ops = self.lock();
        // Index and time are taken under the lock so file order matches both.
        let index = self.index.fetch_add(1, Ordering::Relaxed);
        ops.push(Op {
            index,
            process: call.process,
            kind,
            f: call.f,
            key: call.key.clone(),
            value,
            time_ns: self.start.elapsed().as_nanos() as u64,
            node: Some(call.node),
            epoch,
            error,
        });
    }
}

/// One operation of one client: its function, key and the node it is sent to, which its
/// invocation and its completion record both carry.
pub(super) struct Call<'a> {
    pub(super) rec: &'a Recorder,
    pub(super) process: u64,
    pub(super) f: OpFn,
    pub(super) key: String,
    pub(super) node: u64,
}

impl Call<'_> {
    pub(super) fn invoke(&self, value: Value) {
        self.rec.record(self, OpKind::Invoke, value, None, None);
    }

    pub(super) fn complete(&self, kind: OpKind, value: Value, epoch: Option<u64>, error: Option<String>) {
        self.rec.record(self, kind, value, epoch, error);
    }

    /// Rewrites the value of this process's latest invocation (a cas learns its `from` only
    /// after it was invoked; the invocation's time stays the earliest).
    fn set_invoke_value(&self, value: Value) {
        let mut ops = self.rec.lock();
        if let Some(op) = ops
            .iter_mut()
            .rev()
            .find(|o| o.process == self.process && o.kind == OpKind::Invoke)
        {
            op.value = value;
        }
    }
}

/// How a failed request is recorded: `Fail` only when it certainly had no effect.
fn classify(status: Option<u16>, body: &Value, transport: Option<&reqwest::Error>) -> (OpKind, String) {
    if let Some(e) = transport {
        // A connection that never opened carried no request; anything later is ambiguous.
        return if e.is_connect() {
            (OpKind::Fail, format!("connect: {e}"))
        } else {
            (OpKind::Info, format!("{e}"))
        };
    }
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    match (status, code.as_str()) {
        (Some(409), _) => (OpKind::Fail, code),
        (Some(503), "no_lease" | "no_primary" | "not_primary" | "stale_epoch" | "shutting_down") => {
            (OpKind::Fail, code)
        }
        (Some(400) | Some(404) | Some(413), _) => (OpKind::Fail, code),
        _ => (OpKind::Info, format!("{} {code}", status.unwrap_or(0))),
    }
}

/// How a write's answer is recorded: kind, error text, and the epoch it was acknowledged in.
fn outcome(r: reqwest::Result<reqwest::blocking::Response>) -> (OpKind, Option<String>, Option<u64>) {
    match r {
        Ok(r) if r.status().is_success() => (OpKind::Ok, None, epoch_of(r.headers())),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap_or(Value::Null);
            let (k, why) = classify(Some(status), &body, None);
            (k, Some(why), None)
        }
        Err(e) => {
            let (k, why) = classify(None, &Value::Null, Some(&e));
            (k, Some(why), None)
        }
    }
}

fn epoch_of(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get("keel-epoch")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Read a key through the primary: (raw value, version, epoch); an absent key is `("", 0, _)`.
#[allow(clippy::type_complexity)]
fn read(
    http: &reqwest::blocking::Client,
    api: &str,
    key: &str,
) -> Result<(String, u64, Option<u64>), (OpKind, String)> {
    match http.get(format!("http://{api}/v1/kv/{key}?consistency=primary")).send() {
        Ok(r) => {
            let status = r.status().as_u16();
            let h = r.headers().clone();
            let version = h
                .get("keel-version")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let text = r.text().unwrap_or_default();
            match status {
                200 => Ok((text, version, epoch_of(&h))),
                404 if serde_json::from_str::<Value>(&text).is_ok_and(|v| v["error"]["code"] == "not_found") => {
                    Ok((String::new(), 0, epoch_of(&h)))
                }
                _ => {
                    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    Err(classify(Some(status), &body, None))
                }
            }
        }
        Err(e) => Err(classify(None, &Value::Null, Some(&e))),
    }
}

/// The clients of the chosen workload, one thread each, until `stop`.
pub(super) fn spawn_clients(
    cfg: &RunConfig,
    opts: &RunOptions,
    apis: &[(u64, String)],
    rec: &Arc<Recorder>,
    stop: &Arc<AtomicBool>,
    bad_values: &Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    match opts.workload {
        Workload::Register => {
            let values = Arc::new(AtomicU64::new(1));
            (0..cfg.clients)
                .map(|p| {
                    let (cfg, apis, rec, stop, values) =
                        (cfg.clone(), apis.to_vec(), rec.clone(), stop.clone(), values.clone());
                    let pacer = Pacer::new(opts.rate, cfg.clients, stop);
                    std::thread::spawn(move || client(p, cfg, apis, rec, pacer, values))
                })
                .collect()
        }
        Workload::Redis | Workload::RedisRegister | Workload::RedisAppend => Vec::new(),
        Workload::Append => {
            let counts: Arc<Vec<AtomicU64>> = Arc::new((0..cfg.keys).map(|_| AtomicU64::new(0)).collect());
            (0..cfg.clients)
                .map(|p| {
                    let (cfg, apis, rec, stop, counts, bad) = (
                        cfg.clone(),
                        apis.to_vec(),
                        rec.clone(),
                        stop.clone(),
                        counts.clone(),
                        bad_values.clone(),
                    );
                    let pacer = Pacer::new(opts.rate, cfg.clients, stop);
                    std::thread::spawn(move || append_client(p, cfg, apis, rec, pacer, counts, bad))
                })
                .collect()
        }
    }
}

/// Parses a register's stored value; anything but a number reads as `null`.
fn register_value(text: &str) -> Value {
    text.parse::<u64>().map(Value::from).unwrap_or(Value::Null)
}

/// The register workload: read, write or cas on a random key through a random node.
fn client(
    process: u64,
    cfg: RunConfig,
    apis: Vec<(u64, String)>,
    rec: Arc<Recorder>,
    mut pacer: Pacer,
    values: Arc<AtomicU64>,
) {
    let http = new_http();
    let mut rng = Rng::new(cfg.seed ^ (process + 1).wrapping_mul(0x1234_5678));
    while pacer.next_op() {
        let key = format!("r{}", rng.below(cfg.keys));
        let (node, api) = apis[rng.below(apis.len() as u64) as usize].clone();
        let f = match rng.below(3) {
            0 => OpFn::Read,
            1 => OpFn::Write,
            _ => OpFn::Cas,
        };
        let call = Call {
            rec: &rec,
            process,
            f,
            key,
            node,
        };
        match f {
            OpFn::Read => read_register(&http, &api, &call),
            OpFn::Write => write_register(&http, &api, &call, values.fetch_add(1, Ordering::Relaxed)),
            _ => cas_register(&http, &api, &call, values.fetch_add(1, Ordering::Relaxed)),
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
}

fn read_register(http: &Client, api: &str, call: &Call) {
    call.invoke(Value::Null);
    match read(http, api, &call.key) {
        Ok((v, _, e)) => call.complete(OpKind::Ok, register_value(&v), e, None),
        // A failed read has no effect either way.
        Err((_, why)) => call.complete(OpKind::Fail, Value::Null, None, Some(why)),
    }
}

fn write_register(http: &Client, api: &str, call: &Call, v: u64) {
    call.invoke(json!(v));
    let r = http
        .put(format!("http://{api}/v1/kv/{}", call.key))
        .body(v.to_string())
        .send();
    let (kind, err, epoch) = outcome(r);
    call.complete(kind, json!(v), epoch, err);
}

/// cas [from, to]: read the current value and version through the primary, then
/// compare-and-set on that version. The op's interval covers both requests.
fn cas_register(http: &Client, api: &str, call: &Call, to: u64) {
    // The `from` is only known after the read; record the invoke with a placeholder
    // and rewrite its value once known (the invoke's time stays the earliest).
    call.invoke(json!([null, to]));
    match read(http, api, &call.key) {
        Err((_, why)) => {
            call.set_invoke_value(json!([Value::Null, to]));
            call.complete(OpKind::Fail, json!([null, to]), None, Some(format!("read: {why}")));
        }
        Ok((from, version, _)) => {
            let from = register_value(&from);
            call.set_invoke_value(json!([from, to]));
            let r = http
                .post(format!("http://{api}/v1/kv/{}/cas?version={version}", call.key))
                .body(to.to_string())
                .send();
            let (kind, err, epoch) = outcome(r);
            call.complete(kind, json!([from, to]), epoch, err);
        }
    }
}

/// Appends per list before a client moves that slot on to a fresh key (keeps lists and the
/// checker's work short, as Jepsen's append workload does).
const APPENDS_PER_KEY: u64 = 100;

/// Parse a stored list: the value of an append key is a JSON array of numbers.
fn parse_list(text: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(v)) => Ok(v),
        _ => Err(format!(
            "stored value is not a JSON list: {:?}",
            text.chars().take(80).collect::<String>()
        )),
    }
}

/// One append: read the list and its version through the primary, then compare-and-set the
/// list with the element added on that version. A 409 means the CAS certainly did not apply,
/// so it is retried (up to 5 times) within the same operation; any other answer ends it with
/// that answer's outcome (`info` when it may have applied).
fn append_once(
    http: &reqwest::blocking::Client,
    api: &str,
    key: &str,
    elem: u64,
) -> (OpKind, Option<String>, Option<u64>) {
    for _ in 0..5 {
        let (list, version) = match read(http, api, key) {
            Ok((_, 0, _)) => (Vec::new(), 0),
            Ok((text, version, _)) => match parse_list(&text) {
                Ok(l) => (l, version),
                Err(e) => return (OpKind::Fail, Some(e), None),
            },
            // Nothing was written yet in this op: a failed read is a failed append.
            Err((_, why)) => return (OpKind::Fail, Some(format!("read: {why}")), None),
        };
        let mut list = list;
        list.push(json!(elem));
        let r = http
            .post(format!("http://{api}/v1/kv/{key}/cas?version={version}"))
            .body(Value::Array(list).to_string())
            .send();
        match r {
            Ok(r) if r.status().as_u16() == 409 => continue,
            r => return outcome(r),
        }
    }
    (OpKind::Fail, Some("cas conflict 5 times".into()), None)
}

/// The append workload: append a unique element to a random list, or read a whole list,
/// through a random node.
fn append_client(
    process: u64,
    cfg: RunConfig,
    apis: Vec<(u64, String)>,
    rec: Arc<Recorder>,
    mut pacer: Pacer,
    counts: Arc<Vec<AtomicU64>>,
    bad_values: Arc<AtomicU64>,
) {
    let http = new_http();
    let mut rng = Rng::new(cfg.seed ^ (process + 1).wrapping_mul(0x8765_4321));
    // Elements are unique across the run: process in the high bits, a counter in the low.
    let mut next = 0u64;
    while pacer.next_op() {
        let slot = rng.below(cfg.keys) as usize;
        let (node, api) = apis[rng.below(apis.len() as u64) as usize].clone();
        let call = |f, generation| Call {
            rec: &rec,
            process,
            f,
            key: format!("l{slot}-{generation}"),
            node,
        };
        if rng.below(2) == 0 {
            let call = call(
                OpFn::Append,
                counts[slot].fetch_add(1, Ordering::Relaxed) / APPENDS_PER_KEY,
            );
            next += 1;
            let elem = (process << 32) | next;
            call.invoke(json!(elem));
            let (kind, err, epoch) = append_once(&http, &api, &call.key, elem);
            call.complete(kind, json!(elem), epoch, err);
        } else {
            let call = call(OpFn::ReadList, counts[slot].load(Ordering::Relaxed) / APPENDS_PER_KEY);
            read_list(&http, &api, &call, &bad_values);
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
}

fn read_list(http: &Client, api: &str, call: &Call, bad_values: &AtomicU64) {
    call.invoke(Value::Null);
    match read(http, api, &call.key) {
        Ok((text, version, e)) => {
            let list = if version == 0 {
                Ok(Vec::new())
            } else {
                parse_list(&text)
            };
            match list {
                Ok(l) => call.complete(OpKind::Ok, Value::Array(l), e, None),
                // Only this harness writes these keys: a value that is not a list is
                // corruption. Counted (it fails the run), recorded as info.
                Err(why) => {
                    bad_values.fetch_add(1, Ordering::Relaxed);
                    call.complete(OpKind::Info, Value::Null, e, Some(why))
                }
            }
        }
        Err((_, why)) => call.complete(OpKind::Fail, Value::Null, None, Some(why)),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_operations_and_stops() {
        let stop = Arc::new(AtomicBool::new(false));
        // Closed loop: no pacing at all.
        assert!(Pacer::new(None, 4, stop.clone()).period.is_none());
        assert!(Pacer::new(Some(0.0), 4, stop.clone()).period.is_none());
        // 4 clients at 200 ops/s in all: 20 ms between one client's operations.
        assert_eq!(
            Pacer::new(Some(200.0), 4, stop.clone()).period,
            Some(Duration::from_millis(20))
        );

        // Six slots 20 ms apart take at least five periods (a lower bound: sleeps are never short).
        let mut p = Pacer::new(Some(50.0), 1, stop.clone());
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(p.next_op());
        }
        assert!(t0.elapsed() >= Duration::from_millis(100), "{:?}", t0.elapsed());

        // A stop ends the client, also while it waits for a slot an hour away (else this would hang).
        let mut p = Pacer::new(Some(1.0 / 3600.0), 1, stop.clone());
        assert!(p.next_op());
        stop.store(true, Ordering::Relaxed);
        assert!(!p.next_op());
        assert!(!Pacer::new(None, 1, stop).next_op());
    }
}
