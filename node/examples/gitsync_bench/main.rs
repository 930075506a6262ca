//! Git Sync benchmark (the Git Sync issue's "Benchmark"). In one run it measures:
//!
//! 1. Webhook to served, on a local three-node cluster of `keel serve` processes following a bare
//!    repository made with the `git` CLI (`--gitsync-repo file://<bare> --gitsync-path shared
//!    --gitsync-interval-ms 600000`, so only webhooks move the nodes). `--pushes` times (default
//!    20): commit and push a change to `shared/config.txt`, then send ONE GitHub-style push
//!    webhook (`X-GitHub-Event: push`, a unique `X-GitHub-Delivery`, `X-Hub-Signature-256`) to
//!    one node, rotating 1, 2, 3, 1, ...; the clock starts when the webhook is sent and stops
//!    when all three nodes serve the new content (`<data-dir>/gitsync/current/config.txt`, read
//!    every 2 ms on every node while the webhook request is in flight). Prints each push (when
//!    the webhook was answered, when each node served it, each agent's own `last_duration_ms`)
//!    and p50 / p90 / max. Goals: p50 under 300 ms, max under 1 s.
//! 2. First sync of a big repository: `--files` files (default 10,000) of deterministic
//!    pseudo-random, incompressible content, `--mb` MB in all (default 100, 10^6 bytes; sizes
//!    vary between 0.5× and 1.5× the mean, 100 files per directory), one commit, pushed to a bare
//!    repository served by `git daemon` on 127.0.0.1 (generation is timed separately and not
//!    counted). Then, in this order, with `sync` (flush dirty pages) before each: `git clone
//!    --depth 1 git://...` into a temp dir; one fresh `keel serve` with `--gitsync-repo
//!    git://...` (whole repository), timed from process start until `GET /v1/gitsync` shows
//!    `state: ok` with the commit (the tree is materialised before the status says so; it is
//!    then compared with the clone's checkout: same files, same sizes, sampled contents equal);
//!    then, for information (no goal), one file changed in a new commit and `POST
//!    /v1/gitsync/sync` on that node (what any later push costs on a big tree); and the same `git
//!    clone` again. Prints the agent's `last_duration_ms`, the wall time from process start, both
//!    clone times, and the ratios against the faster clone. Goal: the first sync within 1.2× of
//!    `git clone` (checked on the agent's figure; the wall time adds the node's own start-up).
//!
//!   cargo build --release --bins --examples && target/release/examples/gitsync_bench
//!
//! Flags: `--pushes N` (default 20), `--files N` (default 10000), `--mb N` (default 100),
//! `--skip-big` (part 1 only). It runs the `keel` binary next to this example's own directory
//! (target/release/keel), `git` from PATH and `git-daemon` from `git --exec-path` (else
//! /usr/lib/git-core). Git runs with no global or system config. Every wait has a deadline; every
//! process it starts (each in its own process group, killed as a group) is killed and every temp
//! dir removed on every exit path, panics included; with `KEEL_BENCH_LOG_DIR=DIR` the processes'
//! logs are copied there first.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::procs::kill_group;
use keel_testkit::{
    blocking_client, free_port, get_json, git_cmd, load_average, node_addrs, primaries, serve_command,
    webhook_signature, Procs, Upstream,
};
use serde_json::Value;

type Http = reqwest::blocking::Client;

/// Deadline of every wait on a small thing (a primary, a push served, a daemon listening).
const WAIT: Duration = Duration::from_secs(30);
/// Deadline of the big repository's generation steps, clones and first sync.
const BIG_WAIT: Duration = Duration::from_secs(900);
/// Deadline of a small git command (commit, push, rev-parse of the small repository).
const GIT_WAIT: Duration = Duration::from_secs(60);
/// How often the served files are read in part 1.
const POLL: Duration = Duration::from_millis(2);
const SECRET: &str = "bench-webhook-s3cret";
const BRANCH: &str = "main";

/// Poll every 5 ms: the poll interval bounds how finely the waits here are timed.
fn wait<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    keel_testkit::wait_for(what, timeout, Duration::from_millis(5), f)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted durations, in ms.
fn pct_ms(sorted: &[Duration], q: f64) -> f64 {
    ms(sorted[((sorted.len() as f64 - 1.0) * q).round() as usize])
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Runs `cmd` (in its own process group) to completion within `timeout`, killing the group on a
/// timeout; returns stdout and the time it took, or what went wrong.
fn try_run(cmd: &mut Command, timeout: Duration, what: &str) -> Result<(String, Duration), String> {
    use std::os::unix::process::CommandExt;
    let t0 = Instant::now();
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = t0 + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                kill_group(&mut child);
                break None;
            }
        }
    };
    let took = t0.elapsed();
    // The group is gone or finished, so the pipes close and the readers end.
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        None => Err(format!(
            "{what}: still running after {timeout:?}, killed; stderr: {err}"
        )),
        Some(s) if !s.success() => Err(format!("{what}: {s}; stderr: {err}")),
        Some(_) => Ok((out, took)),
    }
}

/// [`try_run`], panicking on a failure.
fn run(cmd: &mut Command, timeout: Duration, what: &str) -> (String, Duration) {
    try_run(cmd, timeout, what).unwrap_or_else(|e| panic!("{e}"))
}

/// `git ARGS` in `dir` (the test kit's: fixed identity, no global or system config), bounded by `GIT_WAIT`.
fn git(dir: &Path, args: &[&str]) -> String {
    run(&mut git_cmd(dir, args), GIT_WAIT, &format!("git {args:?}")).0
}

/// `sync(1)`: flushes dirty pages so one timed step does not pay for the previous one's writeback.
fn flush() {
    run(&mut Command::new("sync"), BIG_WAIT, "sync");
}

mod first_sync;
mod webhook;

use first_sync::first_sync;
use webhook::webhook_latency;

/// The command line: `gitsync_bench [--pushes N] [--files N] [--mb N] [--skip-big]`.
#[derive(clap::Parser)]
#[command(
    name = "gitsync_bench",
    about = "Git Sync benchmark: webhook to served on three nodes, first sync of a big repository"
)]
struct Args {
    /// Pushes (each one webhook) in part 1.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pushes: u64,
    /// Files of the big repository in part 2.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    files: u64,
    /// MB (10^6 bytes) of the big repository in part 2.
    #[arg(long = "mb", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    total_mb: u64,
    /// Part 1 only.
    #[arg(long)]
    skip_big: bool,
}

fn main() {
    let args: Args = keel_testkit::parse_args();
    // Panics naming the path when it is missing: run `cargo build --release --bins --examples` first.
    keel_testkit::keel_bin();
    let http = blocking_client(Duration::from_secs(10));
    println!(
        "gitsync_bench, {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    webhook_latency(&http, args.pushes as usize);
    if !args.skip_big {
        first_sync(&http, args.files as usize, args.total_mb);
    }
}
