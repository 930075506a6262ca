//! Datastore write benchmark: a local three-node Keel cluster, with the same load generator
//! optionally pointed at a local three-member etcd.
//!
//! In one run it measures:
//! - the disk's raw fsync rate: 4 KiB appends, each followed by `fdatasync`, for 2 s in the
//!   directory the data dirs live in (the physical floor for a durable acknowledgement);
//! - throughput and p50/p99 write latency for 1, 16 and 64 concurrent clients, in async and sync
//!   mode (`PATCH /v1/config {"replication_mode": ..., "min_acks": 1}` on the primary), with
//!   128-byte and 16-KiB values: one short run per cell (`--secs`, default 5). Each client
//!   writes new keys to the primary in a closed loop (next write as soon as the previous one is
//!   answered), after one warm-up write before the clock starts. Writes per fsync come from the
//!   primary's `/metrics` (writes and commits of its group commit). After each cell it waits
//!   until both replicas have every write (column `catch-up s`: the replicas' backlog);
//! - replication lag p99 at half load (row `async½`): in async mode, a rate-limited generator
//!   (open loop: a fixed schedule spread over 64 clients, a late write sent at once) writes at
//!   half the best async throughput measured above, with that cell's value size. About 200
//!   writes a second are sampled: after the primary's 2xx the writing client reads the key from
//!   a replica (`?consistency=local`, the two replicas in turn) at once and then every 2 ms
//!   (tokio's timer: 2-3 ms) until it is there; the lag is the time from the 2xx to the answer
//!   that has the key (an upper bound, by at most one poll interval plus one read).
//!   A key not there within 5 s counts as 5 s. The replicas' own `replication.lag_ms` (from
//!   `/v1/status`, every 50 ms) is printed next to it;
//! - the no-disk control (rows `tmpfs`): async, one client and 64, both value sizes, with the
//!   data dirs on tmpfs (`/dev/shm`, skipped when no tmpfs is mounted there), where writes and
//!   fsyncs reach no disk. Whatever the disk adds, many clients cannot write faster than they do
//!   here, so "tmpfs 64 clients / disk one client" is the highest group-commit ratio any
//!   implementation could reach on this machine at this CPU cost per write; the goal check prints
//!   it next to the measured ratio, with the share of its no-disk rate each disk cell reaches.
//!   (`--only` cells take their data dirs from `TMPDIR`: `TMPDIR=/dev/shm` runs them on tmpfs.)
//! - with `--compare etcd`: the same load generator against a three-member etcd with its
//!   default timings (the `etcd` binary from PATH, on Debian the `etcd-server` package), through
//!   its JSON gateway (`POST /v3/kv/put`, base64 key and value) on the leader, with the same
//!   client counts and value sizes. etcd acknowledges a put after a quorum of members has it in
//!   its fsynced WAL: one mode only, shown in the table as `quorum`; writes per fsync from the
//!   leader's WAL fsync count.
//!
//! The load generator is cheap, so that on a small machine it takes little CPU from the servers
//! it measures (Keel and etcd alike): every client is a task on one single-threaded tokio
//! runtime, and the measured writes of a cell share one minimal HTTP/1.1 client (`raw_http.rs`: keep-alive connections, one per write in flight, a 10 s timeout per request); the
//! latency of a write is measured per request, from sending it to having read its whole answer.
//! The lag probe's reads use one async reqwest client. Setup and
//! management calls (status, metrics, config) use a blocking client from the main thread,
//! outside the runtime. Column `gen cpu %` is the CPU time (user + system, all threads, from
//! `/proc/self/stat` at 10 ms resolution) this benchmark process used during the cell's run, in
//! percent of one core: the generator's own cost. (Before, each client was an OS thread with its
//! own blocking client, two threads per client: 128 B x 64 async took 76 % of a core and
//! reached 9,976 writes/s; as tasks, 32 % and 14,134 writes/s, same cluster, back to back.)
//! Column `srv µs/w` is the CPU time (user + system, all threads, from `/proc/<pid>/stat` at
//! 10 ms resolution) the three server processes (Keel nodes or etcd members) used during the
//! run, per acknowledged write: what a write costs the cluster, and on a machine whose cores the
//! servers share, what bounds the many-client cells. `--only` lines split it into the primary's
//! and each replica's.
//!
//! Disk per stored value: after each Keel cell (once the replicas have every write), how much the
//! three data dirs grew during it (allocated blocks of every file) over the bytes of the values
//! written times three; each write's key is new, so each value is stored once per node. The goal
//! check prints it for the 16 KiB cells with the most clients.
//!
//! It prints one table row per cell, then the goal checks, then the failed writes by kind, any
//! change of primary (or etcd leader) during a run, and the WARN/ERROR lines the Keel nodes
//! logged. Every process it starts is killed (panics included) and every temp dir removed;
//! with `KEEL_BENCH_LOG_DIR=DIR` the processes' logs are copied there first.
//!
//!   cargo build --release --bins --examples && target/release/examples/kv_bench --secs 5 --compare etcd
//!
//! Every cell runs on a fresh cluster (empty data dirs; etcd too), so no cell inherits the data
//! and dirty pages of the cells before it, and each async cell is followed at once by the sync
//! cell of the same size and clients. `--rounds N` runs every cell N times and pools the
//! rounds: a row's throughput is all its writes over all its run time, its percentiles are over
//! all its latencies, and the throughput of each round is printed below the table. On a small
//! shared VM one 5 s cell can differ from the next by 10-20 %.
//!
//! It runs the `keel` binary next to this example's own directory (target/release/keel).
//! `--only MODE:SIZE:CLIENTS` (repeatable, e.g. `--only async:16384:64`) runs just those Keel
//! cells and prints one line each (no etcd, no half-load run, no goal checks), e.g. to profile
//! one cell.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_testkit::etcd::{self, EtcdMember};
use keel_testkit::{b64, blocking_client, get_json, load_average, primaries, Procs};

/// The blocking client of the setup and management calls (status, metrics, config), made from
/// the main thread, never from inside the load generator's runtime.
type Http = reqwest::blocking::Client;

/// Deadline of every wait (a primary, a mode change, an etcd leader).
const WAIT: Duration = Duration::from_secs(30);
/// Timeout of every benchmark request (a sync-mode write gives up after 2 s on its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENTS: [usize; 3] = [1, 16, 64];
const SIZES: [usize; 2] = [128, 16 * 1024];
/// Replication lag sampling: how many writes a second, how often a replica is polled, and when
/// a key that never shows up is given up on.
const LAG_SAMPLES_PER_SEC: f64 = 200.0;
const LAG_POLL: Duration = Duration::from_millis(2);
const LAG_GIVE_UP: Duration = Duration::from_secs(5);
/// How long the replicas get to catch up after a run.
const CATCH_UP: Duration = Duration::from_secs(60);

mod disk;
mod keel;
mod load;
mod raw_http;
mod report;
mod vs_etcd;

use disk::*;
use keel::*;
use load::*;
use report::*;
use vs_etcd::*;

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    keel_testkit::wait_for(what, WAIT, Duration::from_millis(20), f)
}

/// The command line: `kv_bench [--secs S] [--rounds N] [--compare etcd] [--only MODE:SIZE:CLIENTS ...]`.
#[derive(clap::Parser)]
#[command(
    name = "kv_bench",
    about = "Datastore write benchmark: a local three-node Keel cluster, optionally against etcd"
)]
struct Args {
    /// Seconds per cell.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    secs: f64,
    /// Every cell N times; the figures pool them.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    rounds: usize,
    /// Also measure a local three-member etcd (only `etcd` is supported).
    #[arg(long, value_parser = ["etcd"])]
    compare: Option<String>,
    /// Run just this Keel cell (repeatable), e.g. `async:16384:64`: no etcd, no half-load run,
    /// no goal checks.
    #[arg(long, value_name = "MODE:SIZE:CLIENTS", value_parser = parse_cell)]
    only: Vec<Cell>,
}

/// One `--only` cell.
#[derive(Clone)]
struct Cell {
    mode: &'static str,
    size: usize,
    clients: usize,
}

fn positive_secs(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .ok_or_else(|| "expected seconds, more than 0 and less than a day, e.g. 5 or 0.5".to_string())
}

fn at_least_one(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "expected N >= 1".to_string())
}

fn parse_cell(v: &str) -> Result<Cell, String> {
    let parts: Vec<&str> = v.split(':').collect();
    let mode = |m: &str| if m == "async" { "async" } else { "sync" };
    match parts[..] {
        [m @ ("async" | "sync"), s, c] => s
            .parse()
            .ok()
            .zip(c.parse().ok())
            .filter(|&(size, clients): &(usize, usize)| size >= 1 && clients >= 1)
            .map(|(size, clients)| Cell {
                mode: mode(m),
                size,
                clients,
            }),
        _ => None,
    }
    .ok_or_else(|| {
        format!("{v}: expected MODE:SIZE:CLIENTS (async or sync, bytes >= 1, clients >= 1), e.g. async:16384:64")
    })
}

fn main() {
    let args: Args = keel_testkit::parse_args();
    if !args.only.is_empty() {
        run_only(&args.only, Duration::from_secs_f64(args.secs));
        return;
    }
    // Before anything is started, so a missing etcd does not cost the Keel runs.
    let etcd_bin = args.compare.is_some().then(etcd::find_etcd_or_exit);
    let header = report::Header {
        secs: args.secs,
        rounds: args.rounds,
        now_ms: keel_testkit::unix_ms(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_before: load_average(),
    };
    let mut bench = Bench {
        http: blocking_client(REQUEST_TIMEOUT),
        gen: Gen::new(),
        dur: Duration::from_secs_f64(args.secs),
        rounds: args.rounds,
        events: Vec::new(),
        warnings: Vec::new(),
    };
    let (mut rows, probes) = bench.keel_rounds();
    let tmpfs = tmpfs_root();
    if let Some(root) = &tmpfs {
        rows.extend(bench.no_disk_control(root));
    }
    let lag = bench.half_load(&mut rows);
    let etcd_about = etcd_bin.map(|bin| {
        let (about, etcd_rows) = bench.etcd_rounds(&bin);
        rows.extend(etcd_rows);
        about
    });
    report::print_header(&header, &probes, etcd_about.as_deref());
    report::print_table(&rows, args.rounds);
    report::print_goals(&rows, &lag, tmpfs.as_deref(), probes.bandwidth, etcd_about.is_some());
    report::print_trailer(&rows, &bench.events, &bench.warnings);
}

/// `--only`: one line per cell on one cluster, with the servers' CPU split into the primary's
/// and each replica's.
fn run_only(only: &[Cell], dur: Duration) {
    let (http, gen) = (blocking_client(REQUEST_TIMEOUT), Gen::new());
    let keel = start_keel(&http, None);
    for &Cell { mode, size, clients } in only {
        set_mode(&http, &keel.primary, mode);
        let r = keel_cell(&http, &gen, &keel, mode, size, clients, dur);
        let per_write = |d: Duration| d.as_secs_f64() * 1e6 / r.out.lat.len() as f64;
        let (mut primary_cpu, mut replica_cpu) = (Duration::ZERO, Vec::new());
        for (api, cpu) in keel.apis.iter().zip(&r.out.server_cpu) {
            if *api == keel.primary {
                primary_cpu = *cpu;
            } else {
                replica_cpu.push(*cpu);
            }
        }
        let replica_cpu = replica_cpu.into_iter();
        println!(
            "keel {mode} {} × {clients}: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors, \
             {:.1} writes/fsync, generator CPU {:.1} % of one core, servers' CPU {:.0} µs/write \
             (primary {:.0}, replicas {})",
            size_label(size),
            r.out.rate(),
            pct_ms(&r.out.lat, 0.5),
            pct_ms(&r.out.lat, 0.99),
            pct_ms(&r.out.lat, 1.0),
            r.out.error_count(),
            r.writes_per_fsync,
            r.out.cpu_percent(),
            r.out.server_us_per_write(),
            per_write(primary_cpu),
            replica_cpu
                .map(per_write)
                .map(|us| format!("{us:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (kind, n) in &r.out.errors {
            println!("  {n} × {kind}");
        }
    }
}

/// The disk probes, run once in the first cluster's dir.
struct Probes {
    /// fsyncs/s and the fdatasync latencies, sorted.
    disk: f64,
    fsyncs: Vec<Duration>,
    /// Bytes/s written with fdatasync.
    bandwidth: f64,
}

/// A full run's shared state: the clients, the cell length, and what the cells reported on the
/// side (changes of primary or leader during a run, the nodes' WARN/ERROR lines).
struct Bench {
    http: Http,
    gen: Gen,
    dur: Duration,
    rounds: usize,
    events: Vec<String>,
    warnings: Vec<String>,
}

impl Bench {
    /// A change of primary during a run (a failover under load) is reported with the results.
    fn watch(&mut self, what: String, before: Option<(u64, u64)>, keel: &Keel) {
        let now = keel.primary_record(&self.http);
        if now != before {
            self.events.push(format!(
                "{what}: the primary (node, epoch) changed from {before:?} to {now:?} during the run"
            ));
        }
    }

    /// One closed-loop cell on a fresh cluster `k`, in `mode`; `label` names it in the reports.
    fn measure(&mut self, k: &Keel, mode: &'static str, label: &str, size: usize, clients: usize) -> Row {
        set_mode(&self.http, &k.primary, mode);
        let before = k.primary_record(&self.http);
        let row = keel_cell(&self.http, &self.gen, k, mode, size, clients, self.dur);
        self.watch(format!("keel {label} {} × {clients}", size_label(size)), before, k);
        self.warnings.extend(k.cluster.warnings());
        row
    }

    /// `round` `rounds` times (it gets the round's number from 1), announcing each with the line
    /// `announce` makes of that number, if any; the rows of every round merged per cell.
    fn each_round(
        &mut self,
        announce: impl Fn(usize) -> Option<String>,
        mut round: impl FnMut(&mut Bench) -> Vec<Row>,
    ) -> Vec<Row> {
        let mut rounds = Vec::new();
        for n in 1..=self.rounds {
            if let Some(line) = announce(n) {
                eprintln!("{line}");
            }
            rounds.push(round(self));
        }
        merge_rounds(rounds)
    }

    /// With `--rounds` above 1, "`what` N of M".
    fn round_line(&self, what: &'static str) -> impl Fn(usize) -> Option<String> {
        let rounds = self.rounds;
        move |n| (rounds > 1).then(|| format!("{what} {n} of {rounds}"))
    }

    /// Every Keel cell, `rounds` times, each on a fresh cluster (empty data dirs): no cell runs
    /// on the data and dirty pages the cells before it left. Each async cell is followed at once
    /// by the sync cell of the same size and clients. The disk probes run once, in the first
    /// cluster's dir.
    fn keel_rounds(&mut self) -> (Vec<Row>, Probes) {
        let mut probes = None;
        let rows = self.each_round(self.round_line("round"), |bench| {
            let mut cells = Vec::new();
            for size in SIZES {
                for clients in CLIENTS {
                    for mode in ["async", "sync"] {
                        let k = start_keel(&bench.http, None);
                        if probes.is_none() {
                            let (disk, fsyncs) = fsync_rate(k.cluster.path(), Duration::from_secs(2));
                            let bandwidth = write_bandwidth(k.cluster.path(), Duration::from_secs(1));
                            probes = Some(Probes {
                                disk,
                                fsyncs,
                                bandwidth,
                            });
                        }
                        cells.push(bench.measure(&k, mode, mode, size, clients));
                    }
                }
            }
            // The table's order: every async cell, then every sync cell.
            let (sync, asynchronous): (Vec<Row>, Vec<Row>) = cells.into_iter().partition(|r| r.mode == "sync");
            asynchronous.into_iter().chain(sync).collect()
        });
        (rows, probes.expect("disk probes"))
    }

    /// The no-disk control: one client and the most clients, async, with the data dirs on tmpfs.
    fn no_disk_control(&mut self, root: &Path) -> Vec<Row> {
        let rounds = self.rounds;
        let announce = |n| {
            Some(format!(
                "no-disk control (data dirs in {}), round {n} of {rounds}",
                root.display()
            ))
        };
        self.each_round(announce, |bench| {
            let mut cells = Vec::new();
            for size in SIZES {
                for clients in [CLIENTS[0], CLIENTS[CLIENTS.len() - 1]] {
                    let k = start_keel(&bench.http, Some(root));
                    let mut row = bench.measure(&k, "async", "tmpfs", size, clients);
                    row.mode = "tmpfs";
                    cells.push(row);
                }
            }
            cells
        })
    }

    /// The half-load run, once, on a fresh cluster: half the best async throughput in `rows`;
    /// its row goes in before the sync rows.
    fn half_load(&mut self, rows: &mut Vec<Row>) -> Lag {
        let keel = start_keel(&self.http, None);
        let best = rows
            .iter()
            .filter(|r| r.mode == "async")
            .max_by(|a, b| a.out.rate().total_cmp(&b.out.rate()))
            .map(|r| (r.out.rate(), r.size))
            .expect("async rows");
        set_mode(&self.http, &keel.primary, "async");
        let before = keel.primary_record(&self.http);
        let (row, lag) = keel_lag(&self.http, &self.gen, &keel, best.0 / 2.0, best.1, self.dur);
        let at = rows.iter().position(|r| r.mode == "sync").unwrap_or(rows.len());
        rows.insert(at, row);
        self.watch("keel half-load run".into(), before, &keel);
        self.warnings.extend(keel.cluster.warnings());
        lag
    }

    /// Every etcd cell, `rounds` times, each on a fresh etcd; what the report says about etcd.
    fn etcd_rounds(&mut self, bin: &Path) -> (String, Vec<Row>) {
        let (version, api) = etcd::etcd_version(bin);
        let about = format!(
            "etcd {version} ({}), three members with default timings, JSON gateway `POST {api}/kv/put` on the leader",
            bin.display()
        );
        let rows = self.each_round(self.round_line("etcd round"), |bench| {
            let mut round_rows = Vec::new();
            for size in SIZES {
                for clients in CLIENTS {
                    // A fresh etcd for every cell, as for Keel.
                    round_rows.push(bench.etcd_cell_on_fresh_etcd(bin, api, size, clients));
                }
            }
            round_rows
        });
        (about, rows)
    }

    /// One etcd cell on a fresh etcd; a change of leader during the run goes to the events.
    fn etcd_cell_on_fresh_etcd(&mut self, bin: &Path, api: &'static str, size: usize, clients: usize) -> Row {
        let etcd = start_etcd(bin, api);
        let leader = wait("an etcd leader and three healthy members", || etcd.leader(&self.http));
        let row = etcd_cell(&self.http, &self.gen, &etcd, leader, size, clients, self.dur);
        let now = (0..50).find_map(|_| {
            let l = etcd.leader(&self.http);
            if l.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            l
        });
        if now != Some(leader) {
            self.events.push(format!(
                "etcd {} × {clients}: the leader changed from member {leader} to {now:?} during the run",
                size_label(size)
            ));
        }
        row
    }
}
