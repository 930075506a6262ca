//! The load generator: one single-threaded runtime of simulated clients, their outcome, and
//! the CPU time the generator and the servers used meanwhile.

use super::*;

/// The load generator: one tokio runtime and one async HTTP client (one connection pool) that
/// every simulated client of every cell shares, Keel and etcd alike.
pub(crate) struct Gen {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) http: reqwest::Client,
}

impl Gen {
    pub(crate) fn new() -> Gen {
        keel_raft::network::install_crypto_provider();
        // One thread: measured against a multi-thread runtime with one worker (with
        // `--only async:128:64 --only async:16384:64 --secs 3`, twice each), this used 32-33 %
        // of a core at 128 B x 64 clients and 13 % at 16 KiB, the worker runtime 36-38 % and 13-14 %.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Built inside the runtime: its connections' background tasks are spawned there.
        let http = rt.block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .pool_max_idle_per_host(2 * CLIENTS[CLIENTS.len() - 1])
                .build()
                .expect("async http client")
        });
        Gen { rt, http }
    }
}

/// CPU time (user + system) this process has used so far, all its threads.
pub(crate) fn self_cpu() -> Duration {
    proc_cpu("self")
}

/// CPU time (user + system) process `pid` ("self": this one) has used so far, all its threads:
/// `utime` and `stime` of `/proc/<pid>/stat`, in clock ticks of 10 ms (Linux's USER_HZ is 100).
/// Zero once the process is gone.
pub(crate) fn proc_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses: the state is
    // field 3, utime 14, stime 15.
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Duration::from_millis(10 * fields.iter().sum::<u64>())
}

/// What one load run measured.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) elapsed: Duration,
    /// Latencies of the acknowledged writes, sorted.
    pub(crate) lat: Vec<Duration>,
    /// Failed writes by kind ("HTTP 503 outcome_unknown", "timeout", ...).
    pub(crate) errors: BTreeMap<String, u64>,
    /// CPU time the benchmark process itself used during the run (the load generator's cost).
    pub(crate) cpu: Duration,
    /// CPU time each server process used during the run, in start order.
    pub(crate) server_cpu: Vec<Duration>,
}

impl Outcome {
    pub(crate) fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The generator's CPU use during the run, in percent of one core.
    pub(crate) fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// The CPU time all server processes used per acknowledged write, in µs.
    pub(crate) fn server_us_per_write(&self) -> f64 {
        let total: Duration = self.server_cpu.iter().sum();
        total.as_secs_f64() * 1e6 / self.lat.len() as f64
    }
}

/// Nearest-rank percentile of sorted durations, in ms (NaN when empty).
pub(crate) fn pct_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// Which write of a client: the warm-up write (before the clock starts, not counted) or write
/// number `i`. Displayed as the last part of its key: `warm-up`, `0`, `1`, ...
#[derive(Clone, Copy)]
pub(crate) enum Step {
    WarmUp,
    Write(u64),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::WarmUp => f.write_str("warm-up"),
            Step::Write(i) => write!(f, "{i}"),
        }
    }
}

/// Runs `clients` simulated clients for `dur`, each a task on the generator's runtime. Each
/// first sends its warm-up write `write(client, Step::WarmUp)` (all of them concurrently, before
/// the clock starts; its outcome is not counted), then writes `write(client, Step::Write(i))`
/// for i = 0, 1, 2, ...: in a closed loop (the next write as soon as the previous one is
/// answered), or, with `rate`, on a fixed schedule that spreads `rate` writes/s evenly over the
/// clients (open loop: a late write is sent at once, the schedule is kept). A write returns its
/// latency or the kind of its failure. Also measures the CPU time this process and each of
/// `servers` (process ids) used meanwhile.
pub(crate) fn run_load<W, F>(
    gen: &Gen,
    servers: Vec<u32>,
    clients: usize,
    dur: Duration,
    rate: Option<f64>,
    write: W,
) -> Outcome
where
    W: Fn(usize, Step) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Duration, String>> + Send + 'static,
{
    let write = Arc::new(write);
    gen.rt.block_on(async move {
        let warm_ups: Vec<_> = (0..clients).map(|t| tokio::spawn(write(t, Step::WarmUp))).collect();
        for w in warm_ups {
            let _ = w.await.expect("warm-up write task");
        }
        let server_cpu = || servers.iter().map(|p| proc_cpu(&p.to_string())).collect::<Vec<_>>();
        let (cpu, servers0) = (self_cpu(), server_cpu());
        let start = Instant::now();
        let deadline = start + dur;
        let period = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        let tasks: Vec<_> = (0..clients)
            .map(|t| {
                let write = write.clone();
                tokio::spawn(async move {
                    let (mut lat, mut errors) = (Vec::new(), BTreeMap::<String, u64>::new());
                    for i in 0.. {
                        if let Some(p) = period {
                            let at = start + p.mul_f64(i as f64 + t as f64 / clients as f64);
                            if at >= deadline {
                                break;
                            }
                            if at > Instant::now() {
                                tokio::time::sleep_until(at.into()).await;
                            }
                        } else if Instant::now() >= deadline {
                            break;
                        }
                        match write(t, Step::Write(i)).await {
                            Ok(d) => lat.push(d),
                            Err(e) => *errors.entry(e).or_default() += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut out = Outcome::default();
        for task in tasks {
            let (lat, errors) = task.await.expect("client task");
            out.lat.extend(lat);
            for (k, n) in errors {
                *out.errors.entry(k).or_default() += n;
            }
        }
        out.elapsed = start.elapsed();
        out.cpu = self_cpu().saturating_sub(cpu);
        out.server_cpu = server_cpu()
            .iter()
            .zip(servers0)
            .map(|(b, a)| b.saturating_sub(a))
            .collect();
        out.lat.sort();
        out
    })
}

/// Ok (the body) for a 2xx, else the kind of error: status and error code (Keel:
/// `{"error": {"code": ...}}`, etcd's gateway: `{"error": "..."}`).
pub(crate) fn check(r: Result<(u16, Vec<u8>), String>) -> Result<String, String> {
    let (status, body) = r?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let code = v["error"]["code"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or("")
        .chars()
        .take(60)
        .collect::<String>();
    Err(format!("HTTP {status} {code}"))
}
