//! Part 2: first sync of a big repository next to `git clone --depth 1`.

use super::*;

/// SplitMix64: a fixed seed gives the same repository every run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Every regular file below `root` (skipping a top-level `.git`) as (relative path, size), sorted.
pub(crate) fn files_below(root: &Path) -> Vec<(PathBuf, u64)> {
    pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
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
pub(crate) fn bytes_below(dir: &Path) -> u64 {
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

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub(crate) fn git_daemon_bin() -> PathBuf {
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
pub(crate) fn clone(url: &str, dest: &Path) -> Duration {
    let parent = dest.parent().unwrap();
    let args = ["clone", "-q", "--depth", "1", url, dest.to_str().unwrap()];
    run(&mut git_cmd(parent, &args), BIG_WAIT, "git clone --depth 1").1
}

/// The big repository, generated once (not counted): the bare repository the daemon serves and
/// its one commit.
struct Generated {
    repos: PathBuf,
    bare: PathBuf,
    sha: String,
}

/// `files` files, `total_mb` MB in all, one commit, pushed to `repos/repo.git`.
fn generate(lab: &Procs, files: usize, total_mb: u64) -> Generated {
    let repos = lab.path().join("repos");
    let bare = repos.join("repo.git");
    std::fs::create_dir_all(&repos).unwrap();
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
    Generated { repos, bare, sha }
}

/// `git daemon` on loopback serving `repos`, once it lists `sha`; its `git://` URL of the repository.
fn start_daemon(lab: &mut Procs, g: &Generated) -> String {
    let port = free_port("127.0.0.1");
    let mut daemon = Command::new(git_daemon_bin());
    daemon
        .arg("--export-all")
        .arg(format!("--base-path={}", g.repos.display()))
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
    assert!(listed.contains(&g.sha), "git daemon does not serve {}: {listed}", g.sha);
    url
}

/// The fresh node of part 2 and what its first sync took.
struct FirstSync {
    api: String,
    data: PathBuf,
    /// The agent's `last_duration_ms` and the wall time from process start.
    agent: Duration,
    wall: Duration,
    /// The served files (relative path, size).
    served: Vec<(PathBuf, u64)>,
}

/// One fresh `keel serve` following `url`, timed from process start until its status shows the
/// commit; then its served tree is compared with `clone`'s checkout.
fn keel_first_sync(http: &Http, lab: &mut Procs, url: &str, sha: &str, clone: &Path) -> FirstSync {
    let (addrs, peers) = node_addrs(1, "127.0.0.1");
    let (api, peer) = &addrs[0];
    let data = lab.path().join("node");
    let mut cmd = serve_command(1, api, peer, &data, &peers);
    cmd.args([
        "--gitsync-repo",
        url,
        "--gitsync-branch",
        BRANCH,
        "--gitsync-interval-ms",
        "600000",
    ]);
    let status_url = format!("http://{api}/v1/gitsync");
    let t0 = Instant::now();
    lab.spawn_group("keel", cmd);
    let deadline = t0 + BIG_WAIT;
    let status = loop {
        if let Some(s) = get_json(http, &status_url) {
            if s["state"] == "ok" && s["commit"] == sha {
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
    let (served, cloned) = (files_below(&tree), files_below(clone));
    assert_eq!(served.len(), cloned.len(), "file count: served vs cloned");
    assert!(
        served == cloned,
        "the served tree differs from the clone's checkout (paths or sizes)"
    );
    for (p, _) in served.iter().step_by(397) {
        let (a, b) = (
            std::fs::read(tree.join(p)).unwrap(),
            std::fs::read(clone.join(p)).unwrap(),
        );
        assert!(a == b, "{} differs between the served tree and the clone", p.display());
    }
    let fetched = bytes_below(&data.join("gitsync/repo.git"));
    let clone_git = bytes_below(&clone.join(".git"));
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
    FirstSync {
        api: api.clone(),
        data,
        agent,
        wall,
        served,
    }
}

/// Information, no goal: one file changed in a new commit on top (made in `clone`, pushed to
/// `bare`), synced by the same node through `POST /v1/gitsync/sync`.
fn one_change(http: &Http, node: &FirstSync, clone: &Path, bare: &Path) {
    let (changed, size) = &node.served[0];
    let mut contents = vec![0u8; *size as usize];
    Rng(0x6f6e_6520_6669_6c65).fill(&mut contents);
    std::fs::write(clone.join(changed), &contents).unwrap();
    git(clone, &["add", changed.to_str().unwrap()]);
    git(clone, &["commit", "-q", "-m", "change one file"]);
    git(
        clone,
        &["push", "-q", bare.to_str().unwrap(), &format!("HEAD:{BRANCH}")],
    );
    let sha2 = git(clone, &["rev-parse", "HEAD"]).trim().to_string();
    flush();
    let t1 = Instant::now();
    let r = http
        .post(format!("http://{}/v1/gitsync/sync", node.api))
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
        std::fs::read(node.data.join("gitsync/current").join(changed)).ok() == Some(contents),
        "the changed file is not served"
    );
    println!(
        "then one changed file ({:.1} KB) in a new commit, `POST /v1/gitsync/sync` on the node: answered after \
         {:.2} s, agent last_duration_ms {:.2} s (information, no goal)",
        *size as f64 / 1e3,
        answered.as_secs_f64(),
        v["status"]["last_duration_ms"].as_u64().unwrap_or(0) as f64 / 1e3,
    );
}

pub(crate) fn first_sync(http: &Http, files: usize, total_mb: u64) {
    println!(
        "== first sync of {files} files / {total_mb} MB next to `git clone --depth 1`, load average {}",
        load_average()
    );
    let mut lab = Procs::new("keel-gitsync-big-", None);
    let generated = generate(&lab, files, total_mb);
    let url = start_daemon(&mut lab, &generated);
    let version = git(lab.path(), &["--version"]);

    // 1) git clone.
    flush();
    let clone1 = lab.path().join("clone1");
    let c1 = clone(&url, &clone1);
    println!("git clone --depth 1 (before keel): {:.2} s", c1.as_secs_f64());

    // 2) A fresh node's first sync, then one change on top.
    flush();
    let node = keel_first_sync(http, &mut lab, &url, &generated.sha, &clone1);
    one_change(http, &node, &clone1, &generated.bare);
    lab.stop("keel");
    std::fs::remove_dir_all(&clone1).unwrap();
    std::fs::remove_dir_all(&node.data).unwrap();

    // 3) git clone again.
    flush();
    let clone2 = lab.path().join("clone2");
    let c2 = clone(&url, &clone2);
    println!("git clone --depth 1 (after keel): {:.2} s", c2.as_secs_f64());
    let warnings = lab.warnings();
    drop(lab);

    let best = c1.min(c2);
    let ratio = node.agent.as_secs_f64() / best.as_secs_f64();
    println!(
        "first sync / git clone --depth 1 (faster clone, {:.2} s): agent {ratio:.2}×, wall {:.2}× — goal ≤ 1.2× (agent): {}",
        best.as_secs_f64(),
        node.wall.as_secs_f64() / best.as_secs_f64(),
        met(ratio <= 1.2),
    );
    println!("  {}; git daemon on 127.0.0.1", version.trim());
    for w in warnings {
        println!("  {w}");
    }
    println!("  load average after: {}", load_average());
}
