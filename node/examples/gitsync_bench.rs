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
    blocking_client, free_port, get_json, git_cmd, load_average, node_addrs, serve_command, webhook_signature, Procs,
    Upstream,
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

// ---- part 1: webhook to all nodes served ----

fn sign(body: &[u8]) -> String {
    webhook_signature(SECRET, body)
}

/// The upstream of part 1: a small config directory, the file the pushes change and a few that
/// stay, and a file outside the synced path.
fn upstream(dir: &Path) -> Upstream {
    let up = Upstream::new(dir);
    for i in 1..=9 {
        let p = up.work.join(format!("shared/dashboards/d{i}.json"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            format!("{{\"dashboard\": {i}, \"panels\": [{}]}}\n", "1,".repeat(500) + "1"),
        )
        .unwrap();
    }
    std::fs::write(up.work.join("README.md"), "outside the synced path\n").unwrap();
    up
}

struct BenchNode {
    id: u64,
    api: String,
    data: PathBuf,
}

impl BenchNode {
    fn served(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.data.join("gitsync/current").join(file)).ok()
    }

    fn status(&self, http: &Http) -> Option<Value> {
        get_json(http, &format!("http://{}/v1/gitsync", self.api))
    }
}

/// Sends one signed push webhook; returns the HTTP status and when it was answered.
fn send_webhook(http: &Http, api: &str, delivery: &str, t0: Instant) -> (Result<u16, String>, Duration) {
    let body = serde_json::json!({"ref": format!("refs/heads/{BRANCH}")}).to_string();
    let r = http
        .post(format!("http://{api}/v1/gitsync/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body)
        .send();
    let at = t0.elapsed();
    (r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()), at)
}

fn webhook_latency(http: &Http, pushes: usize) {
    println!(
        "== webhook to all three nodes served ({pushes} pushes), load average {}",
        load_average()
    );
    let mut lab = Procs::new("keel-gitsync-bench-", None);
    let up = upstream(lab.path());
    let first = up.commit("shared/config.txt", "push 0\n");
    let (addrs, peers) = node_addrs(3, "127.0.0.1");
    let extra: Vec<String> = [
        "--gitsync-repo",
        &up.url(),
        "--gitsync-branch",
        BRANCH,
        "--gitsync-path",
        "shared",
        "--gitsync-interval-ms",
        "600000",
        "--gitsync-webhook-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nodes = Vec::new();
    for (i, (api, peer)) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let data = lab.path().join(format!("n{id}"));
        let mut cmd = serve_command(id, api, peer, &data, &peers);
        cmd.args(&extra);
        lab.spawn_group(&format!("n{id}"), cmd);
        nodes.push(BenchNode {
            id,
            api: api.clone(),
            data,
        });
    }
    wait("every node serving the initial commit", WAIT, || {
        nodes
            .iter()
            .all(|n| {
                n.served("config.txt").as_deref() == Some("push 0\n")
                    && n.status(http)
                        .is_some_and(|s| s["state"] == "ok" && s["commit"] == first.as_str())
            })
            .then_some(())
    });
    wait("one primary", WAIT, || {
        let p = nodes
            .iter()
            .filter(|n| {
                http.get(format!("http://{}/primary", n.api))
                    .timeout(Duration::from_millis(300))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            })
            .count();
        (p == 1).then_some(())
    });
    lab.mark();

    let run_id = keel_testkit::unix_ms();
    let mut all_served = Vec::new();
    let mut answered = Vec::new();
    let mut agent = Vec::new();
    for i in 1..=pushes {
        let contents = format!("push {i}\n");
        let sha = up.commit("shared/config.txt", &contents);
        let target = &nodes[(i - 1) % nodes.len()];
        let delivery = format!("bench-{}-{run_id}-{i}", std::process::id());
        let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
        let t0 = Instant::now();
        let (reply, at) = std::thread::scope(|s| {
            let hook = s.spawn(|| send_webhook(http, &target.api, &delivery, t0));
            // Read the served file on every node every 2 ms until all serve the push.
            let deadline = t0 + WAIT;
            while seen.iter().any(Option::is_none) {
                for (k, n) in nodes.iter().enumerate() {
                    if seen[k].is_none() && n.served("config.txt").as_deref() == Some(contents.as_str()) {
                        seen[k] = Some(t0.elapsed());
                    }
                }
                if seen.iter().all(Option::is_some) {
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(POLL);
            }
            hook.join().expect("webhook thread")
        });
        assert_eq!(reply, Ok(202), "push {i}: webhook to n{} not accepted", target.id);
        let seen: Vec<Duration> = seen
            .into_iter()
            .enumerate()
            .map(|(k, s)| s.unwrap_or_else(|| panic!("push {i}: n{} did not serve it within {WAIT:?}", k + 1)))
            .collect();
        let all = *seen.iter().max().unwrap();
        // Each agent's own account of the sync, once its status has caught up.
        let durations: Vec<u64> = nodes
            .iter()
            .map(|n| {
                wait(&format!("n{}'s status to show {sha}", n.id), WAIT, || {
                    let s = n.status(http)?;
                    (s["commit"] == sha.as_str() && s["state"] == "ok").then(|| s["last_duration_ms"].as_u64())?
                })
            })
            .collect();
        println!(
            "push {i:2} → webhook to n{}: answered {:6.1} ms; served on n1 {:6.1}, n2 {:6.1}, n3 {:6.1} ms; \
             all {:6.1} ms; agents' sync {} ms",
            target.id,
            ms(at),
            ms(seen[0]),
            ms(seen[1]),
            ms(seen[2]),
            ms(all),
            durations.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("/"),
        );
        all_served.push(all);
        answered.push(at);
        agent.extend(durations.into_iter().map(Duration::from_millis));
    }
    let warnings = lab.warnings();
    drop(lab);
    all_served.sort();
    answered.sort();
    agent.sort();
    let (p50, p90, max) = (
        pct_ms(&all_served, 0.5),
        pct_ms(&all_served, 0.9),
        ms(*all_served.last().unwrap()),
    );
    println!(
        "webhook → all three nodes serve the push, {pushes} pushes: p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms"
    );
    println!(
        "  webhook answered: p50 {:.1} ms, max {:.1} ms; agents' last_duration_ms ({} syncs): p50 {:.0} ms, max {:.0} ms",
        pct_ms(&answered, 0.5),
        ms(*answered.last().unwrap()),
        agent.len(),
        pct_ms(&agent, 0.5),
        ms(*agent.last().unwrap()),
    );
    println!(
        "  goal p50 < 300 ms — {}; goal max < 1 s — {}",
        met(p50 < 300.0),
        met(max < 1000.0)
    );
    for w in warnings {
        println!("  {w}");
    }
    println!("  load average after: {}", load_average());
}

// ---- part 2: first sync of a big repository next to git clone ----

/// SplitMix64: a fixed seed gives the same repository every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Every regular file below `root` (skipping a top-level `.git`) as (relative path, size), sorted.
fn files_below(root: &Path) -> Vec<(PathBuf, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let e = e.unwrap();
            let path = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                if dir == root && e.file_name() == ".git" {
                    continue;
                }
                walk(root, &path, out);
            } else if t.is_file() {
                let len = e.metadata().unwrap().len();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), len));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Total bytes of the regular files below `dir`, all of them.
fn bytes_below(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn git_daemon_bin() -> PathBuf {
    let exec = run(
        &mut git_cmd(Path::new("/"), &["--exec-path"]),
        GIT_WAIT,
        "git --exec-path",
    )
    .0;
    [
        PathBuf::from(exec.trim()).join("git-daemon"),
        PathBuf::from("/usr/lib/git-core/git-daemon"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("git-daemon not found in `git --exec-path` or /usr/lib/git-core (Debian: the git-daemon-run package)")
}

/// Times `git clone --depth 1 url` into `dest`.
fn clone(url: &str, dest: &Path) -> Duration {
    let parent = dest.parent().unwrap();
    let args = ["clone", "-q", "--depth", "1", url, dest.to_str().unwrap()];
    run(&mut git_cmd(parent, &args), BIG_WAIT, "git clone --depth 1").1
}

fn first_sync(http: &Http, files: usize, total_mb: u64) {
    println!(
        "== first sync of {files} files / {total_mb} MB next to `git clone --depth 1`, load average {}",
        load_average()
    );
    let mut lab = Procs::new("keel-gitsync-big-", None);
    let repos = lab.path().join("repos");
    let bare = repos.join("repo.git");
    std::fs::create_dir_all(&repos).unwrap();

    // Generation (not counted): files, one commit, pushed to the bare repository the daemon serves.
    let t_gen = Instant::now();
    let gen = lab.path().join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    let mean = (total_mb * 1_000_000 / files.max(1) as u64).max(2);
    let mut rng = Rng(0x6b65_656c_6769_7473);
    let mut total = 0u64;
    let mut buf = Vec::new();
    for i in 0..files {
        let size = (mean / 2 + rng.next() % (mean + 1)) as usize;
        buf.resize(size, 0);
        rng.fill(&mut buf);
        let dir = gen.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut f = std::fs::File::create(dir.join(format!("f{i:05}.bin"))).unwrap();
        f.write_all(&buf).unwrap();
        total += size as u64;
    }
    let t_files = t_gen.elapsed();
    let big = |dir: &Path, args: &[&str]| run(&mut git_cmd(dir, args), BIG_WAIT, &format!("git {args:?}")).0;
    big(&repos, &["init", "-q", "--bare", "-b", BRANCH, bare.to_str().unwrap()]);
    big(&gen, &["init", "-q", "-b", BRANCH]);
    big(&gen, &["add", "-A"]);
    big(
        &gen,
        &["commit", "-q", "-m", &format!("{files} files of pseudo-random data")],
    );
    big(&gen, &["push", "-q", bare.to_str().unwrap(), BRANCH]);
    let sha = big(&bare, &["rev-parse", BRANCH]).trim().to_string();
    std::fs::remove_dir_all(&gen).unwrap();
    let pack = bytes_below(&bare.join("objects"));
    println!(
        "generated {files} files, {:.1} MB, one commit {}; repository objects {:.1} MB on disk (incompressible); \
         generation {:.1} s (files {:.1} s, git add/commit/push {:.1} s), not counted",
        mb(total),
        &sha[..12],
        mb(pack),
        t_gen.elapsed().as_secs_f64(),
        t_files.as_secs_f64(),
        (t_gen.elapsed() - t_files).as_secs_f64(),
    );

    // git daemon on loopback.
    let port = free_port("127.0.0.1");
    let mut daemon = Command::new(git_daemon_bin());
    daemon
        .arg("--export-all")
        .arg(format!("--base-path={}", repos.display()))
        .args([
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--reuseaddr",
            "--informative-errors",
        ])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    lab.spawn_group("git-daemon", daemon);
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let listed = wait("git daemon serving the repository", WAIT, || {
        try_run(&mut git_cmd(lab.path(), &["ls-remote", &url]), WAIT, "git ls-remote")
            .ok()
            .map(|(out, _)| out)
    });
    assert!(listed.contains(&sha), "git daemon does not serve {sha}: {listed}");
    let version = git(lab.path(), &["--version"]);

    // 1) git clone.
    flush();
    let clone1 = lab.path().join("clone1");
    let c1 = clone(&url, &clone1);
    println!("git clone --depth 1 (before keel): {:.2} s", c1.as_secs_f64());

    // 2) A fresh node's first sync.
    flush();
    let (addrs, peers) = node_addrs(1, "127.0.0.1");
    let (api, peer) = &addrs[0];
    let data = lab.path().join("node");
    let extra: Vec<String> = [
        "--gitsync-repo",
        &url,
        "--gitsync-branch",
        BRANCH,
        "--gitsync-interval-ms",
        "600000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cmd = serve_command(1, api, peer, &data, &peers);
    cmd.args(&extra);
    let status_url = format!("http://{api}/v1/gitsync");
    let t0 = Instant::now();
    lab.spawn_group("keel", cmd);
    let deadline = t0 + BIG_WAIT;
    let status = loop {
        if let Some(s) = get_json(http, &status_url) {
            if s["state"] == "ok" && s["commit"] == sha.as_str() {
                break s;
            }
            assert!(
                s["consecutive_failures"].as_u64().unwrap_or(0) < 3,
                "the first sync failed three times: {s}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {BIG_WAIT:?} waiting for the first sync"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = t0.elapsed();
    let agent = Duration::from_millis(status["last_duration_ms"].as_u64().expect("last_duration_ms"));
    // The served tree is the clone's checkout: same files and sizes, sampled contents equal.
    let tree = std::fs::canonicalize(data.join("gitsync/current")).expect("gitsync/current");
    let (served, cloned) = (files_below(&tree), files_below(&clone1));
    assert_eq!(served.len(), cloned.len(), "file count: served vs cloned");
    assert!(
        served == cloned,
        "the served tree differs from the clone's checkout (paths or sizes)"
    );
    for (p, _) in served.iter().step_by(397) {
        let (a, b) = (
            std::fs::read(tree.join(p)).unwrap(),
            std::fs::read(clone1.join(p)).unwrap(),
        );
        assert!(a == b, "{} differs between the served tree and the clone", p.display());
    }
    let fetched = bytes_below(&data.join("gitsync/repo.git"));
    let clone_git = bytes_below(&clone1.join(".git"));
    println!(
        "keel first sync: agent last_duration_ms {:.2} s, wall from process start {:.2} s; served tree = clone's \
         checkout ({} files, {:.1} MB); keel's repo.git {:.1} MB, the clone's .git {:.1} MB",
        agent.as_secs_f64(),
        wall.as_secs_f64(),
        served.len(),
        mb(served.iter().map(|(_, n)| n).sum()),
        mb(fetched),
        mb(clone_git),
    );

    // Information, no goal: one file changed in a new commit on top, synced by the same node.
    let (changed, size) = &served[0];
    let mut contents = vec![0u8; *size as usize];
    Rng(0x6f6e_6520_6669_6c65).fill(&mut contents);
    std::fs::write(clone1.join(changed), &contents).unwrap();
    git(&clone1, &["add", changed.to_str().unwrap()]);
    git(&clone1, &["commit", "-q", "-m", "change one file"]);
    git(
        &clone1,
        &["push", "-q", bare.to_str().unwrap(), &format!("HEAD:{BRANCH}")],
    );
    let sha2 = git(&clone1, &["rev-parse", "HEAD"]).trim().to_string();
    flush();
    let t1 = Instant::now();
    let r = http
        .post(format!("http://{api}/v1/gitsync/sync"))
        .timeout(BIG_WAIT)
        .send()
        .expect("POST /v1/gitsync/sync");
    let answered = t1.elapsed();
    let code = r.status();
    let v: Value = r.json().unwrap_or_default();
    assert!(
        code.is_success() && v["outcome"]["commit"]["sha"] == sha2.as_str(),
        "sync: {code} {v}"
    );
    assert!(
        std::fs::read(data.join("gitsync/current").join(changed)).ok() == Some(contents),
        "the changed file is not served"
    );
    lab.stop("keel");
    println!(
        "then one changed file ({:.1} KB) in a new commit, `POST /v1/gitsync/sync` on the node: answered after \
         {:.2} s, agent last_duration_ms {:.2} s (information, no goal)",
        *size as f64 / 1e3,
        answered.as_secs_f64(),
        v["status"]["last_duration_ms"].as_u64().unwrap_or(0) as f64 / 1e3,
    );
    std::fs::remove_dir_all(&clone1).unwrap();
    std::fs::remove_dir_all(&data).unwrap();

    // 3) git clone again.
    flush();
    let clone2 = lab.path().join("clone2");
    let c2 = clone(&url, &clone2);
    println!("git clone --depth 1 (after keel): {:.2} s", c2.as_secs_f64());
    let warnings = lab.warnings();
    drop(lab);

    let best = c1.min(c2);
    let ratio = agent.as_secs_f64() / best.as_secs_f64();
    println!(
        "first sync / git clone --depth 1 (faster clone, {:.2} s): agent {ratio:.2}×, wall {:.2}× — goal ≤ 1.2× (agent): {}",
        best.as_secs_f64(),
        wall.as_secs_f64() / best.as_secs_f64(),
        met(ratio <= 1.2),
    );
    println!("  {}; git daemon on 127.0.0.1", version.trim());
    for w in warnings {
        println!("  {w}");
    }
    println!("  load average after: {}", load_average());
}

fn main() {
    let mut pushes = 20usize;
    let mut files = 10_000usize;
    let mut total_mb = 100u64;
    let mut skip_big = false;
    let usage = "usage: gitsync_bench [--pushes N] [--files N] [--mb N] [--skip-big]";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |flag: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number; {usage}"))
        };
        match a.as_str() {
            "--pushes" => pushes = num("--pushes") as usize,
            "--files" => files = num("--files") as usize,
            "--mb" => total_mb = num("--mb"),
            "--skip-big" => skip_big = true,
            "-h" | "--help" => {
                println!("{usage}");
                return;
            }
            other => panic!("unknown argument {other}; {usage}"),
        }
    }
    assert!(
        pushes > 0 && files > 0 && total_mb > 0,
        "--pushes, --files and --mb must be positive"
    );
    // Panics naming the path when it is missing: run `cargo build --release --bins --examples` first.
    keel_testkit::keel_bin();
    let http = blocking_client(Duration::from_secs(10));
    println!(
        "gitsync_bench, {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    webhook_latency(&http, pushes);
    if !skip_big {
        first_sync(&http, files, total_mb);
    }
}
