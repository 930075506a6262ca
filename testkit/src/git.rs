//! Git helpers: a `git` command with a fixed identity, a bare Git Sync upstream, and a started
//! three-node cluster that follows it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::Cluster;

/// A `git ARGS` command in `dir` with a fixed identity and no prompts. It still reads the
/// user's and system's git config, as the tests always have.
pub fn git_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid");
    c
}

/// `git ARGS` in `dir` with a fixed author; its stdout. Panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_cmd(dir, args).output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare Git Sync upstream repository in `dir` with one commit under `shared/`; returns its file:// URL.
pub fn gitsync_upstream(dir: &Path) -> String {
    let bare = dir.join("upstream.git");
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("shared")).unwrap();
    git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("shared/config.txt"), "v1").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    format!("file://{}", bare.display())
}

/// Three nodes (child processes) following a fresh [`gitsync_upstream`] in `repo_dir` (branch
/// `main`, path `shared/`), with `extra` flags; started, with a leader and a primary holding its
/// lease. Returns the primary's id. Child processes, not in-process nodes: libgit2's network
/// timeouts are process-wide and set only by `keel`'s `main`.
pub async fn gitsync_cluster(repo_dir: &Path, extra: &[&str], timeout: Duration) -> (Cluster, u64) {
    let url = gitsync_upstream(repo_dir);
    let mut args = vec![
        "--gitsync-repo",
        &url,
        "--gitsync-branch",
        "main",
        "--gitsync-path",
        "shared/",
    ];
    args.extend_from_slice(extra);
    let mut c = Cluster::new(3, &args);
    c.start_all();
    c.wait_leader(&[1, 2, 3], timeout).await;
    let primary = c.wait_primary(&[], timeout).await;
    (c, primary)
}
