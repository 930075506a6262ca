//! Table rows, their merging over rounds, and the report printed at the end.

use super::*;

/// One table row.
pub(crate) struct Row {
    pub(crate) system: &'static str,
    pub(crate) mode: &'static str,
    pub(crate) size: usize,
    pub(crate) clients: usize,
    pub(crate) out: Outcome,
    pub(crate) writes_per_fsync: f64,
    /// Keel: time after the run until both replicas had every write (None: not within `CATCH_UP`).
    pub(crate) catch_up: Option<Option<Duration>>,
    /// Throughput of each round, when the cell ran in several (`--rounds`).
    pub(crate) round_rates: Vec<f64>,
    /// Keel: how much the three data dirs grew during the cell (every file, allocated blocks,
    /// measured once the replicas had every write), and the bytes of the values it wrote times
    /// three (each key is new, so each value is stored once per node).
    pub(crate) disk_growth: Option<(u64, u64)>,
}

impl Row {
    /// One row for a cell that ran in several rounds: the rounds' writes taken together (their
    /// latencies pooled, throughput = all writes / all run time), writes per fsync averaged, the
    /// slowest catch-up.
    pub(crate) fn merge(rounds: Vec<Row>) -> Row {
        let mut it = rounds.into_iter();
        let mut row = it.next().expect("at least one round");
        row.round_rates = vec![row.out.rate()];
        let mut wpf = vec![row.writes_per_fsync];
        for r in it {
            row.round_rates.push(r.out.rate());
            row.out.elapsed += r.out.elapsed;
            row.out.cpu += r.out.cpu;
            for (sum, c) in row.out.server_cpu.iter_mut().zip(r.out.server_cpu) {
                *sum += c;
            }
            row.out.lat.extend(r.out.lat);
            for (k, n) in r.out.errors {
                *row.out.errors.entry(k).or_default() += n;
            }
            wpf.push(r.writes_per_fsync);
            row.disk_growth = match (row.disk_growth, r.disk_growth) {
                (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
                (a, b) => a.or(b),
            };
            row.catch_up = match (row.catch_up, r.catch_up) {
                (Some(Some(a)), Some(Some(b))) => Some(Some(a.max(b))),
                (Some(None), _) | (_, Some(None)) => Some(None),
                (a, b) => a.or(b),
            };
        }
        row.out.lat.sort();
        let known: Vec<f64> = wpf.into_iter().filter(|w| !w.is_nan()).collect();
        row.writes_per_fsync = if known.is_empty() {
            f64::NAN
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        row
    }
}

/// Rows of the same cells from several rounds (in the same order each round), merged per cell.
pub(crate) fn merge_rounds(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let mut cells: Vec<Vec<Row>> = Vec::new();
    for round in rounds {
        for (i, row) in round.into_iter().enumerate() {
            if cells.len() <= i {
                cells.push(Vec::new());
            }
            cells[i].push(row);
        }
    }
    cells.into_iter().map(Row::merge).collect()
}

pub(crate) fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

pub(crate) fn find<'a>(rows: &'a [Row], system: &str, mode: &str, size: usize, clients: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.mode == mode && r.size == size && r.clients == clients)
}

// ---------------------------------------------------------------- Keel

/// What the first line of the report says about the run.
pub(crate) struct Header {
    pub(crate) secs: f64,
    pub(crate) rounds: usize,
    pub(crate) now_ms: u64,
    pub(crate) cpus: usize,
    pub(crate) load_before: String,
}

/// The run, the disk probes and (with `--compare etcd`) what etcd was measured.
pub(crate) fn print_header(h: &Header, probes: &Probes, etcd_about: Option<&str>) {
    let (secs, rounds, cpus, load_before) = (h.secs, h.rounds, h.cpus, &h.load_before);
    println!(
        "kv_bench, {} UTC, {secs} s per cell{}, {cpus} CPUs, load average {load_before} before and {} after",
        &keel_node::util::rfc3339(h.now_ms)[..16].replace('T', " "),
        if rounds > 1 {
            format!(
                " × {rounds} rounds (a row pools its rounds: all their writes over all their run time, their latencies \
                 together)"
            )
        } else {
            String::new()
        },
        load_average()
    );
    println!(
        "disk: {:.0} fsyncs/s (4 KiB append + fdatasync for 2 s in the data dirs' file system; fdatasync p50 \
         {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
        probes.disk,
        pct_ms(&probes.fsyncs, 0.5),
        pct_ms(&probes.fsyncs, 0.99),
        pct_ms(&probes.fsyncs, 1.0)
    );
    println!(
        "disk: {:.0} MB/s written (1 MiB appends + fdatasync, at most 1 s or 512 MiB, same file system)",
        probes.bandwidth / 1e6
    );
    if let Some(about) = etcd_about {
        println!("{about}");
    }
    println!();
}

/// One line per row; with several rounds, the throughput of each round below the table.
pub(crate) fn print_table(rows: &[Row], rounds: usize) {
    println!(
        "{:<6} {:<7} {:>6} {:>7} {:>9} {:>7} {:>7} {:>7} {:>6} {:>12} {:>10} {:>9} {:>10}",
        "system",
        "mode",
        "value",
        "clients",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "writes/fsync",
        "catch-up s",
        "gen cpu %",
        "srv µs/w"
    );
    for r in rows {
        println!(
            "{:<6} {:<7} {:>6} {:>7} {:>9.0} {:>7.2} {:>7.2} {:>7.1} {:>6} {:>12} {:>10} {:>9.1} {:>10.0}",
            r.system,
            r.mode,
            size_label(r.size),
            r.clients,
            r.out.rate(),
            pct_ms(&r.out.lat, 0.5),
            pct_ms(&r.out.lat, 0.99),
            pct_ms(&r.out.lat, 1.0),
            r.out.error_count(),
            if r.writes_per_fsync.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", r.writes_per_fsync)
            },
            match r.catch_up {
                None => "-".to_string(),
                Some(None) => format!(">{}", CATCH_UP.as_secs()),
                Some(Some(d)) => format!("{:.2}", d.as_secs_f64()),
            },
            r.out.cpu_percent(),
            r.out.server_us_per_write()
        );
    }
    if rounds > 1 {
        println!();
        println!("writes/s of each round:");
        for r in rows.iter().filter(|r| !r.round_rates.is_empty()) {
            println!(
                "  {} {} {} × {}: {}",
                r.system,
                r.mode,
                size_label(r.size),
                r.clients,
                r.round_rates
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!();
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// The goal checks over the table's rows. Where a goal covers several cells, the headline
/// figure is the worst of them.
struct Goals<'a> {
    rows: &'a [Row],
}

impl Goals<'_> {
    fn rate(&self, system: &str, mode: &str, size: usize, clients: usize) -> f64 {
        find(self.rows, system, mode, size, clients).map_or(f64::NAN, |r| r.out.rate())
    }

    /// `f` of every value size: the worst (lowest) and the text that lists them.
    fn per_size(&self, f: &dyn Fn(usize) -> f64) -> (f64, String) {
        let v: Vec<(usize, f64)> = SIZES.iter().map(|&s| (s, f(s))).collect();
        let worst = v.iter().map(|x| x.1).fold(f64::NAN, f64::min);
        let text = v
            .iter()
            .map(|(s, x)| format!("{}: {x:.1}×", size_label(*s)))
            .collect::<Vec<_>>()
            .join(", ");
        (worst, text)
    }

    fn group_commit(&self, bandwidth: f64) {
        let last = CLIENTS[CLIENTS.len() - 1];
        let (gc, gc_text) =
            self.per_size(&|s| self.rate("keel", "async", s, last) / self.rate("keel", "async", s, CLIENTS[0]));
        println!(
            "group commit: {last}-client async throughput = {gc:.1}× single-client (goal ≥ 10×) — {} [{gc_text}]",
            verdict(gc >= 10.0)
        );
        // What bounds the large values: bytes, not fsyncs. Every node writes every value.
        for size in SIZES.iter().filter(|s| **s >= 4096) {
            let (one, many) = (
                self.rate("keel", "async", *size, CLIENTS[0]),
                self.rate("keel", "async", *size, last),
            );
            let mbs = |r: f64| r * *size as f64 * 3.0 / 1e6;
            println!(
                "  {} values: {one:.0} → {many:.0} writes/s = {:.0} → {:.0} MB/s of values written by the three nodes \
                 together (disk: {:.0} MB/s with fdatasync; 10× single-client would be {:.0} MB/s)",
                size_label(*size),
                mbs(one),
                mbs(many),
                bandwidth / 1e6,
                mbs(one * 10.0),
            );
        }
    }

    /// The ceiling: no group commit can take many clients above what they reach when writes and
    /// fsyncs cost no disk at all.
    fn no_disk_ceiling(&self, tmpfs: Option<&Path>) {
        let last = CLIENTS[CLIENTS.len() - 1];
        let Some(root) = tmpfs else {
            println!("  no-disk ceiling: not measured (no tmpfs mounted at /dev/shm)");
            return;
        };
        let (ceiling, ceiling_text) =
            self.per_size(&|s| self.rate("keel", "tmpfs", s, last) / self.rate("keel", "async", s, CLIENTS[0]));
        println!(
            "  no-disk ceiling: {last} clients with the data dirs on tmpfs ({}, rows `tmpfs`) = {ceiling:.1}× \
             single-client on the disk [{ceiling_text}]; any rate a disk adds work to stays below it",
            root.display()
        );
        let share = |clients: usize| {
            SIZES
                .iter()
                .map(|&s| {
                    format!(
                        "{}: {:.0} %",
                        size_label(s),
                        100.0 * self.rate("keel", "async", s, clients) / self.rate("keel", "tmpfs", s, clients)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  on the disk, {last} clients reach {} of their no-disk rate; one client {}",
            share(last),
            share(CLIENTS[0])
        );
    }

    fn sync_over_async(&self) {
        let mut ratios = Vec::new();
        for size in SIZES {
            for clients in CLIENTS {
                let p50 =
                    |mode| find(self.rows, "keel", mode, size, clients).map_or(f64::NAN, |r| pct_ms(&r.out.lat, 0.5));
                ratios.push((size, clients, p50("sync") / p50("async")));
            }
        }
        let worst = ratios.iter().map(|r| r.2).fold(f64::NAN, f64::max);
        println!(
            "sync p50 / async p50 = {worst:.2} (goal ≤ 2) — {} [worst of {} cells; {}]",
            verdict(worst <= 2.0),
            ratios.len(),
            ratios
                .iter()
                .map(|(s, c, r)| format!("{} × {c}: {r:.2}", size_label(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    fn lag(&self, lag: &Lag) {
        let p99 = pct_ms(&lag.samples, 0.99);
        println!(
            "lag p99 at half load = {p99:.1} ms (goal < 100 ms) — {} [{} values at {:.0} writes/s (target {:.0}), \
             {} samples on the two replicas, p50 {:.1} ms, max {:.1} ms, {} not seen within {} s; p99 per replica: {}; \
             replicas' own replication.lag_ms at most {} ms]",
            verdict(p99 < 100.0),
            size_label(lag.size),
            lag.achieved_rate,
            lag.target_rate,
            lag.samples.len(),
            pct_ms(&lag.samples, 0.5),
            pct_ms(&lag.samples, 1.0),
            lag.missed,
            LAG_GIVE_UP.as_secs(),
            lag.per_replica
                .iter()
                .map(|r| format!("{:.1} ms", pct_ms(r, 0.99)))
                .collect::<Vec<_>>()
                .join(", "),
            lag.reported_max_ms
        );
    }

    fn versus_etcd(&self) {
        let last = CLIENTS[CLIENTS.len() - 1];
        let (vs, text) = self.per_size(&|s| self.rate("keel", "async", s, last) / self.rate("etcd", "quorum", s, last));
        let (vs_sync, sync_text) =
            self.per_size(&|s| self.rate("keel", "sync", s, last) / self.rate("etcd", "quorum", s, last));
        println!(
            "keel/etcd {last}-client throughput = {vs:.2}× (goal > 1×, Keel async) — {} \
             [{text}; Keel sync: {vs_sync:.2}×, {sync_text}]",
            verdict(vs > 1.0)
        );
    }

    /// The servers' CPU per 16 KiB write with the most clients, Keel (async, and sync) against
    /// etcd: what a write costs each cluster on a machine whose cores they share.
    fn cpu_versus_etcd(&self) {
        let (size, last) = (SIZES[SIZES.len() - 1], CLIENTS[CLIENTS.len() - 1]);
        let us =
            |system, mode| find(self.rows, system, mode, size, last).map_or(f64::NAN, |r| r.out.server_us_per_write());
        let (keel, sync, etcd) = (us("keel", "async"), us("keel", "sync"), us("etcd", "quorum"));
        let ratio = keel / etcd;
        println!(
            "servers' CPU per {} write, {last} clients = {ratio:.2}× etcd's (goal ≤ 0.2×, Keel async) — {} [Keel async {keel:.0} µs, sync {sync:.0} µs ({:.2}×), etcd {etcd:.0} µs]",
            size_label(size),
            verdict(ratio <= 0.2),
            sync / etcd
        );
    }

    /// Disk per stored byte of value: how much the data dirs grew per byte of value written, in
    /// the 16 KiB cell with the most clients (each value stored once per node).
    fn disk_per_value(&self) {
        let (size, last) = (SIZES[SIZES.len() - 1], CLIENTS[CLIENTS.len() - 1]);
        let ratio = |mode| {
            find(self.rows, "keel", mode, size, last)
                .and_then(|r| r.disk_growth)
                .map_or(f64::NAN, |(disk, values)| disk as f64 / values.max(1) as f64)
        };
        let (a, s) = (ratio("async"), ratio("sync"));
        println!(
            "disk per stored {} value, {last} clients = {a:.2}× the value (goal ≤ 1.3×, Keel async) — {} [data dirs' growth over the values written, three nodes; sync {s:.2}×]",
            size_label(size),
            verdict(a <= 1.3),
        );
    }
}

/// The goal checks: group commit, the no-disk ceiling, sync against async, replication lag and,
/// with etcd measured, Keel against etcd.
pub(crate) fn print_goals(rows: &[Row], lag: &Lag, tmpfs: Option<&Path>, bandwidth: f64, with_etcd: bool) {
    let goals = Goals { rows };
    goals.group_commit(bandwidth);
    goals.no_disk_ceiling(tmpfs);
    goals.sync_over_async();
    goals.lag(lag);
    goals.disk_per_value();
    if with_etcd {
        goals.versus_etcd();
        goals.cpu_versus_etcd();
    }
}

/// The failed writes by kind, any change of primary (or etcd leader) during a run, and the
/// WARN/ERROR lines the Keel nodes logged.
pub(crate) fn print_trailer(rows: &[Row], events: &[String], warnings: &[String]) {
    let failed: Vec<&Row> = rows.iter().filter(|r| r.out.error_count() > 0).collect();
    if !failed.is_empty() {
        println!();
        println!("errors:");
        for r in failed {
            for (kind, n) in &r.out.errors {
                println!(
                    "  {} {} {} × {}: {n} × {kind}",
                    r.system,
                    r.mode,
                    size_label(r.size),
                    r.clients
                );
            }
        }
    }
    if !events.is_empty() {
        println!();
        for e in events {
            println!("{e}");
        }
    }
    if !warnings.is_empty() {
        println!();
        println!("Keel node logs:");
        for w in warnings {
            println!("  {w}");
        }
    }
}
