//! End-to-end tests against real repositories made with the `git` CLI, served as `file://` and by `git daemon`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_gitsync::{Change, GitSync, GitSyncConfig, GitSyncError, SyncState, Trigger, WebhookVerdict};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(["-c", "protocol.file.allow=always", "-c", "core.hooksPath=/dev/null"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare upstream repository and a working clone that makes commits and pushes them.
struct Upstream {
    _dir: tempfile::TempDir,
    base: PathBuf,
    bare: PathBuf,
    work: PathBuf,
}

impl Upstream {
    /// An upstream whose first commit holds `files` (path, contents).
    fn new(files: &[(&str, &str)]) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let bare = base.join("upstream.git");
        let work = base.join("work");
        git(&base, &["init", "--bare", "-b", "main", bare.to_str().unwrap()]);
        git(&base, &["init", "-b", "main", work.to_str().unwrap()]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let up = Upstream {
            _dir: dir,
            base,
            bare,
            work,
        };
        up.commit(files, &[], "initial");
        up
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Writes `files`, deletes `deleted`, commits and pushes; returns the new commit.
    fn commit(&self, files: &[(&str, &str)], deleted: &[&str], message: &str) -> String {
        for (path, contents) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, contents).unwrap();
        }
        for path in deleted {
            std::fs::remove_file(self.work.join(path)).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Rewrites the last commit and force-pushes it; returns the new commit.
    fn force_push(&self, file: &str, contents: &str) -> String {
        std::fs::write(self.work.join(file), contents).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--amend", "-m", "rewritten"]);
        git(&self.work, &["push", "-q", "--force", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn pull(&self) {
        git(&self.work, &["pull", "-q", "--ff-only", "origin", "main"]);
    }

    fn head(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }
}

fn config(url: String, path: &str) -> GitSyncConfig {
    let mut c = GitSyncConfig::new(url, "main");
    c.path = path.to_string();
    c.interval = Duration::from_millis(100);
    c.webhook_secret = Some("s3cret".into());
    c
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("read {}: {e}", dir.join(rel).display()))
}

/// A webhook sync that fast-forwards to `sha`.
async fn fast_forwards_to(gs: &GitSync, sha: &str) {
    let out = gs.sync(Trigger::Webhook, false).await.unwrap();
    assert_eq!((out.change, out.commit.sha.as_str()), (Change::FastForward, sha));
}

fn tree_count(data: &Path) -> usize {
    std::fs::read_dir(data.join("gitsync/trees")).unwrap().count()
}

#[tokio::test]
async fn initial_sync_materialises_path_and_follows_new_commits() {
    let up = Upstream::new(&[
        ("shared/a.txt", "a1"),
        ("shared/sub/run.sh", "#!/bin/sh\n"),
        ("other/x.txt", "x"),
    ]);
    std::fs::set_permissions(
        up.work.join("shared/sub/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../other/x.txt", up.work.join("shared/link")).unwrap();
    let first = up.commit(&[], &[], "exec bit and symlink");

    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), "shared/"), data.path()).unwrap();
    assert_eq!(gs.status().state, SyncState::Idle);
    assert!(gs.current_tree().is_none());

    let out = gs.sync(Trigger::Manual, false).await.unwrap();
    assert_eq!(out.change, Change::Initial);
    assert_eq!(out.commit.sha, first);
    assert_eq!(out.skipped_entries, 1, "the symlink is skipped");
    let current = data.path().join("gitsync/current");
    assert_eq!(std::fs::read_link(&current).unwrap(), Path::new("trees").join(&first));
    assert_eq!(read(&current, "a.txt"), "a1");
    let mode = std::fs::metadata(current.join("sub/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::metadata(current.join("a.txt")).unwrap().permissions().mode() & 0o111,
        0
    );
    assert!(!current.join("link").exists() && std::fs::symlink_metadata(current.join("link")).is_err());
    assert!(!current.join("x.txt").exists() && !current.join("other").exists());
    let st = gs.status();
    assert_eq!(st.state, SyncState::Ok);
    assert_eq!(st.commit.as_deref(), Some(first.as_str()));
    assert_eq!(st.syncs_ok, 1);

    // Nothing new: unchanged. A new upstream commit: picked up by the next sync.
    assert_eq!(
        gs.sync(Trigger::Interval, false).await.unwrap().change,
        Change::Unchanged
    );
    let second = up.commit(&[("shared/a.txt", "a2"), ("shared/new.txt", "n")], &[], "second");
    let out = gs.sync(Trigger::Interval, false).await.unwrap();
    assert_eq!(
        (out.change, out.commit.sha.as_str(), out.previous.as_deref()),
        (Change::FastForward, second.as_str(), Some(first.as_str()))
    );
    assert_eq!(read(&current, "a.txt"), "a2");
    assert_eq!(read(&current, "new.txt"), "n");
    assert_eq!(tree_count(data.path()), 2, "current and previous are kept");

    // A restart finds the served commit; a damaged tree is rebuilt.
    drop(gs);
    std::fs::write(data.path().join("gitsync/trees").join(&second).join("a.txt"), "").unwrap();
    let gs = GitSync::new(config(up.url(), "shared"), data.path()).unwrap();
    assert_eq!(gs.status().commit.as_deref(), Some(second.as_str()));
    assert_eq!(read(&current, "a.txt"), "a2");
    assert_eq!(
        gs.sync(Trigger::Startup, false).await.unwrap().change,
        Change::Unchanged
    );
}

#[tokio::test]
async fn force_push_is_a_conflict_until_accepted() {
    let up = Upstream::new(&[("f.txt", "v1")]);
    let v2 = up.commit(&[("f.txt", "v2")], &[], "v2");
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), ""), data.path()).unwrap();
    gs.sync(Trigger::Manual, false).await.unwrap();

    let rewritten = up.force_push("f.txt", "v2-rewritten");
    let err = gs.sync(Trigger::Interval, false).await.unwrap_err();
    match &err {
        GitSyncError::Conflict { current, upstream, .. } => {
            assert_eq!(current.as_deref(), Some(v2.as_str()));
            assert_eq!(upstream.as_deref(), Some(rewritten.as_str()));
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    let st = gs.status();
    assert_eq!(st.state, SyncState::Conflict);
    assert_eq!(st.commit.as_deref(), Some(v2.as_str()));
    assert_eq!(st.upstream_commit.as_deref(), Some(rewritten.as_str()));
    assert!(st.last_error.unwrap().contains("accept_reset"));
    assert_eq!(read(&data.path().join("gitsync/current"), "f.txt"), "v2");
    // Still a conflict on the next poll.
    assert!(matches!(
        gs.sync(Trigger::Interval, false).await,
        Err(GitSyncError::Conflict { .. })
    ));

    let out = gs.sync(Trigger::Manual, true).await.unwrap();
    assert_eq!(out.change, Change::Reset);
    assert_eq!(out.commit.sha, rewritten);
    assert_eq!(read(&data.path().join("gitsync/current"), "f.txt"), "v2-rewritten");
    assert_eq!(gs.status().state, SyncState::Ok);
    assert_eq!(gs.status().syncs_conflict, 2);
}

/// A reader resolving `current` once and reading below it never sees two commits mixed or a file missing, over
/// 50 syncs; GC never leaves more than two trees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_trees_only() {
    let files = |n: usize| {
        let v = format!("gen {n}");
        vec![("a.txt", v.clone()), ("sub/b.txt", v.clone()), ("sub/deep/c.txt", v)]
    };
    let owned = files(0);
    let up = Upstream::new(&owned.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), ""), data.path()).unwrap();
    gs.sync(Trigger::Manual, false).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (good, lapped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let current = data.path().join("gitsync/current");
    let reader = {
        let (stop, good, lapped, current) = (stop.clone(), good.clone(), lapped.clone(), current.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let tree = std::fs::canonicalize(&current).map_err(|e| format!("resolve current: {e}"))?;
                let contents: Result<Vec<String>, _> = ["a.txt", "sub/b.txt", "sub/deep/c.txt"]
                    .iter()
                    .map(|f| std::fs::read_to_string(tree.join(f)))
                    .collect();
                match contents {
                    Ok(c) if c.iter().all(|x| *x == c[0]) => good.fetch_add(1, Ordering::Relaxed),
                    Ok(c) => return Err(format!("mixed tree {}: {c:?}", tree.display())),
                    // A tree may be collected once two newer ones were served; a missing file in the tree that
                    // is still current would be a bug.
                    Err(e) if std::fs::canonicalize(&current).ok().as_ref() == Some(&tree) => {
                        return Err(format!("incomplete current tree {}: {e}", tree.display()))
                    }
                    Err(_) => lapped.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok(())
        })
    };

    for n in 1..=50 {
        let owned = files(n);
        up.commit(
            &owned.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>(),
            &[],
            &format!("gen {n}"),
        );
        let out = gs.sync(Trigger::Webhook, false).await.unwrap();
        assert_eq!(out.change, Change::FastForward);
        assert_eq!(read(&current, "sub/deep/c.txt"), format!("gen {n}"));
        assert!(tree_count(data.path()) <= 2, "gc keeps at most two trees");
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    assert!(good.load(Ordering::Relaxed) > 0);
    eprintln!(
        "reader: {} whole reads, {} lapped",
        good.load(Ordering::Relaxed),
        lapped.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn concurrent_syncs_coalesce() {
    let up = Upstream::new(&[("f.txt", "1")]);
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), ""), data.path()).unwrap();
    let (a, b, c, d, e) = tokio::join!(
        gs.sync(Trigger::Manual, false),
        gs.sync(Trigger::Manual, false),
        gs.sync(Trigger::Manual, false),
        gs.sync(Trigger::Manual, false),
        gs.sync(Trigger::Manual, false),
    );
    let outs = [a, b, c, d, e].map(Result::unwrap);
    // The first runs; the second waited for it and runs once more (it asked while the first was running); the
    // last three asked before the second started, so they share its outcome.
    assert_eq!(outs.iter().filter(|o| o.coalesced).count(), 3);
    assert_eq!(gs.status().syncs_ok, 2);
}

#[tokio::test]
async fn unreachable_upstream_keeps_tree_and_recovers() {
    let up = Upstream::new(&[("f.txt", "1")]);
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), ""), data.path()).unwrap();
    gs.sync(Trigger::Manual, false).await.unwrap();
    let moved = up.base.join("moved.git");
    std::fs::rename(&up.bare, &moved).unwrap();
    for n in 1..=2 {
        let err = gs.sync(Trigger::Interval, false).await.unwrap_err();
        assert!(matches!(err, GitSyncError::Network(_)), "{err:?}");
        let st = gs.status();
        assert_eq!(
            (st.state, st.consecutive_failures, st.syncs_failed),
            (SyncState::Error, n, n as u64)
        );
        assert_eq!(st.last_error_kind.as_deref(), Some("network"));
    }
    assert_eq!(read(&data.path().join("gitsync/current"), "f.txt"), "1");
    std::fs::rename(&moved, &up.bare).unwrap();
    up.commit(&[("f.txt", "2")], &[], "2");
    assert_eq!(
        gs.sync(Trigger::Retry, false).await.unwrap().change,
        Change::FastForward
    );
    let st = gs.status();
    assert_eq!(
        (st.state, st.consecutive_failures, st.last_error),
        (SyncState::Ok, 0, None)
    );
}

#[tokio::test]
async fn run_polls_and_reacts_to_kicks_and_cancel() {
    let up = Upstream::new(&[("f.txt", "1")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(up.url(), "");
    cfg.interval = Duration::from_millis(200);
    let gs = Arc::new(GitSync::new(cfg, data.path()).unwrap());
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(gs.clone().run(cancel.clone()));

    let wait_for = |sha: String| {
        let gs = gs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while gs.status().commit.as_deref() != Some(sha.as_str()) {
                assert!(Instant::now() < deadline, "not synced to {sha}: {:?}", gs.status());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(up.head()).await;
    let second = up.commit(&[("f.txt", "2")], &[], "2");
    wait_for(second).await; // by the timer
    assert!(gs.status().next_attempt_at_ms.is_some());

    // A webhook kick.
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let headers: Vec<(String, String)> = [
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", "abc".to_string()),
        ("X-Hub-Signature-256", format!("sha256={sig}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        gs.handle_webhook(&headers, body),
        WebhookVerdict::Sync {
            delivery: Some("abc".into())
        }
    );
    assert_eq!(
        gs.handle_webhook(&headers, body),
        WebhookVerdict::Duplicate { delivery: "abc".into() }
    );
    let hook = gs.status().last_webhook.unwrap();
    assert_eq!(
        (hook.outcome.as_str(), hook.delivery.as_deref()),
        ("duplicate", Some("abc"))
    );
    let third = up.commit(&[("f.txt", "3")], &[], "3");
    gs.kick(Trigger::Webhook);
    wait_for(third).await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("run stops on cancel")
        .unwrap();
    assert_eq!(gs.status().next_attempt_at_ms, None);
}

fn last_message(bare: &Path) -> String {
    git(bare, &["log", "-1", "--format=%B", "main"])
}

#[tokio::test]
async fn write_file_commits_with_trailer_and_pushes() {
    let up = Upstream::new(&[("shared/a.txt", "a"), ("shared/tool.sh", "#!/bin/sh\n")]);
    std::fs::set_permissions(up.work.join("shared/tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    up.commit(&[], &[], "exec");
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), "shared"), data.path()).unwrap();
    gs.sync(Trigger::Manual, false).await.unwrap();

    let info = gs
        .write_file("dir/new.json", Some(b"{}"), 7, ("Keel Node 1", "keel@example.com"))
        .await
        .unwrap();
    assert_eq!(up.head(), info.sha);
    assert_eq!(last_message(&up.bare), "keel: update dir/new.json\n\nKeel-Epoch: 7");
    assert_eq!(git(&up.bare, &["show", "main:shared/dir/new.json"]), "{}");
    assert_eq!(
        git(&up.bare, &["log", "-1", "--format=%an <%ae>", "main"]),
        "Keel Node 1 <keel@example.com>"
    );
    let current = data.path().join("gitsync/current");
    assert_eq!(read(&current, "dir/new.json"), "{}");
    assert_eq!(gs.status().commit.as_deref(), Some(info.sha.as_str()));
    assert_eq!(gs.status().edits_pushed, 1);

    // Replacing an executable keeps its mode; writing the same bytes again pushes nothing.
    let info = gs
        .write_file("tool.sh", Some(b"#!/bin/sh\necho hi\n"), 7, ("k", "k@e"))
        .await
        .unwrap();
    assert_eq!(
        git(&up.bare, &["ls-tree", "main", "shared/tool.sh"])
            .split_whitespace()
            .next(),
        Some("100755")
    );
    let same = gs
        .write_file("tool.sh", Some(b"#!/bin/sh\necho hi\n"), 7, ("k", "k@e"))
        .await
        .unwrap();
    assert_eq!(same.sha, info.sha);

    // Delete; the emptied directory disappears.
    gs.write_file("dir/new.json", None, 8, ("k", "k@e")).await.unwrap();
    assert_eq!(last_message(&up.bare), "keel: delete dir/new.json\n\nKeel-Epoch: 8");
    assert!(!current.join("dir").exists());
    assert!(matches!(
        gs.write_file("dir/new.json", None, 8, ("k", "k@e")).await,
        Err(GitSyncError::NotFound(_))
    ));

    for bad in [
        "../escape",
        "/abs",
        "a/../../b",
        "a//b",
        "",
        ".git/config",
        "a.txt/inside",
    ] {
        let err = gs.write_file(bad, Some(b"x"), 8, ("k", "k@e")).await.unwrap_err();
        assert!(matches!(err, GitSyncError::InvalidPath { .. }), "{bad}: {err:?}");
    }
    assert_eq!(git(&up.bare, &["show", "main:shared/a.txt"]), "a");
}

#[tokio::test]
async fn write_file_retries_once_when_upstream_moved() {
    let up = Upstream::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(up.url(), ""), data.path()).unwrap();
    gs.sync(Trigger::Manual, false).await.unwrap();

    // Unrelated change upstream: the edit is re-applied on top of it.
    let unrelated = up.commit(&[("b.txt", "b2")], &[], "unrelated");
    let info = gs.write_file("a.txt", Some(b"a2"), 3, ("k", "k@e")).await.unwrap();
    assert_eq!(up.head(), info.sha);
    assert_eq!(git(&up.bare, &["rev-parse", "main^"]), unrelated);
    assert_eq!(git(&up.bare, &["show", "main:b.txt"]), "b2");
    assert_eq!(git(&up.bare, &["show", "main:a.txt"]), "a2");
    assert_eq!(read(&data.path().join("gitsync/current"), "b.txt"), "b2");

    // The same file changed upstream: conflict, upstream untouched.
    up.pull();
    let theirs = up.commit(&[("a.txt", "theirs")], &[], "theirs");
    let err = gs
        .write_file("a.txt", Some(b"ours"), 3, ("k", "k@e"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GitSyncError::Conflict { reason, .. } if reason.contains("upstream changed a.txt")),
        "{err:?}"
    );
    assert_eq!(up.head(), theirs);
    assert_eq!(read(&data.path().join("gitsync/current"), "a.txt"), "a2");
}

/// A child process, killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` on loopback, killed on drop.
struct Daemon {
    _child: KillOnDrop,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Run `git-daemon` itself: `git daemon` forks it as a child, and killing the wrapper would orphan it.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                "--enable=receive-pack",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            _child: KillOnDrop(child),
            port,
        }
    }
}

#[tokio::test]
async fn git_daemon_shallow_fetch_fast_forward_conflict_and_push() {
    let up = Upstream::new(&[("cfg/a.txt", "1")]);
    up.commit(&[("cfg/a.txt", "2")], &[], "2");
    let daemon = Daemon::start(&up.base);
    let url = format!("git://127.0.0.1:{}/upstream.git", daemon.port);
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(config(url, "cfg"), data.path()).unwrap();

    let out = gs.sync(Trigger::Manual, false).await.unwrap();
    assert_eq!(out.change, Change::Initial);
    let shallow =
        std::fs::read_to_string(data.path().join("gitsync/repo.git/shallow")).expect("first fetch is shallow");
    assert_eq!(shallow.trim(), out.commit.sha);
    let current = data.path().join("gitsync/current");
    assert_eq!(read(&current, "a.txt"), "2");

    // Fast-forward over two commits: the fetch connects them to the shallow root.
    up.commit(&[("cfg/a.txt", "3")], &[], "3");
    let four = up.commit(&[("cfg/b.txt", "b")], &[], "4");
    fast_forwards_to(&gs, &four).await;
    assert_eq!(read(&current, "a.txt"), "3");

    // An edit pushed from the shallow repository over git://.
    let info = gs.write_file("c.txt", Some(b"c"), 5, ("k", "k@e")).await.unwrap();
    assert_eq!(up.head(), info.sha);
    assert_eq!(git(&up.bare, &["rev-parse", "main^"]), four);

    // A force-push over the daemon is a conflict too.
    up.pull();
    up.force_push("cfg/a.txt", "rewritten");
    assert!(matches!(
        gs.sync(Trigger::Interval, false).await,
        Err(GitSyncError::Conflict { .. })
    ));
    assert_eq!(read(&current, "c.txt"), "c");
    assert_eq!(gs.sync(Trigger::Manual, true).await.unwrap().change, Change::Reset);
    assert_eq!(read(&current, "a.txt"), "rewritten");
    drop(daemon);
}

#[tokio::test]
async fn errors_and_status_never_show_secrets() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the fetch fails fast with an error that quotes the URL.
    let mut cfg = config("https://bob:pa55word@127.0.0.1:1/org/repo.git".into(), "");
    cfg.token = Some("tok_ABCDEF".into());
    let gs = GitSync::new(cfg, data.path()).unwrap();
    let err = gs.sync(Trigger::Manual, false).await.unwrap_err();
    assert!(matches!(err, GitSyncError::Network(_)), "{err:?}");
    let status = format!("{:?}", gs.status());
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        status,
        format!("{:?}", gs.config()),
    ] {
        assert!(
            !shown.contains("pa55word") && !shown.contains("tok_ABCDEF") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
    assert_eq!(gs.status().repo, "https://bob:***@127.0.0.1:1/org/repo.git");
}

/// OpenSSH's `sshd` on loopback with its own host key and one authorised client key, serving the test's
/// repositories to the current user (git-upload-pack / git-receive-pack over the ssh session).
struct Sshd {
    child: KillOnDrop,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// `None` (after saying why) when OpenSSH is not installed; in CI that is a failure instead.
    fn start() -> Option<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let keygen_ok = Command::new("ssh-keygen")
            .arg("-?")
            .stderr(Stdio::null())
            .status()
            .is_ok();
        let Some(sshd) = sshd.filter(|_| keygen_ok) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "sshd / ssh-keygen missing in CI: scripts/test.sh installs openssh-server and openssh-client"
            );
            eprintln!("SKIP: OpenSSH (sshd, ssh-keygen) is not installed: apt-get install openssh-server");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key", "other_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(d.join(key))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ssh-keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // Privilege separation needs this directory when sshd starts as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let user = user.trim().to_string();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             AllowUsers {user}\nLogLevel VERBOSE\n",
            d = d.display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let mut sshd = Sshd {
            child: KillOnDrop(child),
            port,
            user,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.0.try_wait() {
                panic!("sshd exited with {status}: {}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sshd)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// A known_hosts file listing this server's host key (or, with `own = false`, another key) for its port.
    fn known_hosts(&self, own: bool) -> PathBuf {
        let key = if own { "host_key.pub" } else { "other_key.pub" };
        let public = std::fs::read_to_string(self.path(key)).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
        let file = self.path(if own { "known_hosts" } else { "known_hosts_wrong" });
        let text = format!(
            "# test\nother.example {kind} {blob}\n[127.0.0.1]:{} {kind} {blob}\n",
            self.port
        );
        std::fs::write(&file, text).unwrap();
        file
    }
}

#[tokio::test]
async fn ssh_remote_with_key_file_and_known_hosts() {
    let Some(sshd) = Sshd::start() else { return };
    let up = Upstream::new(&[("cfg/a.txt", "1")]);
    let two = up.commit(&[("cfg/a.txt", "2")], &[], "2");
    let url = format!("ssh://{}@127.0.0.1:{}{}", sshd.user, sshd.port, up.bare.display());
    let ssh_config = |key: &str, known_hosts: Option<PathBuf>| {
        let mut c = config(url.clone(), "cfg");
        c.ssh_key = Some(sshd.path(key));
        c.known_hosts = known_hosts;
        c
    };

    // Unknown host key: refused with the fingerprint and how to add it; nothing materialised.
    let empty = sshd.path("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let data = tempfile::tempdir().unwrap();
    let gs = GitSync::new(ssh_config("client_key", Some(empty)), data.path()).unwrap();
    let err = gs.sync(Trigger::Manual, false).await.unwrap_err().to_string();
    assert!(
        err.contains("is not in") && err.contains("SHA256:") && err.contains("ssh-keyscan"),
        "{err}"
    );
    assert!(gs.current_tree().is_none());
    assert!(gs.status().last_error.is_some());

    // A host key other than the one listed: refused as a changed key.
    let gs = GitSync::new(ssh_config("client_key", Some(sshd.known_hosts(false))), data.path()).unwrap();
    let err = gs.sync(Trigger::Manual, false).await.unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(gs.current_tree().is_none());

    // The right host key but a client key the server does not authorise: refused by the server.
    let known_hosts = sshd.known_hosts(true);
    let gs = GitSync::new(ssh_config("other_key", Some(known_hosts.clone())), data.path()).unwrap();
    let err = gs.sync(Trigger::Manual, false).await.unwrap_err();
    assert!(err.to_string().contains("credentials rejected"), "{err}");
    assert!(gs.current_tree().is_none());
    assert!(
        !format!("{err:?}{:?}", gs.status()).contains(&std::fs::read_to_string(sshd.path("other_key")).unwrap()),
        "private key material in an error"
    );

    // The authorised key and the listed host key: a shallow fetch over ssh, then a fast-forward and a push.
    let gs = GitSync::new(ssh_config("client_key", Some(known_hosts)), data.path()).unwrap();
    let out = gs.sync(Trigger::Manual, false).await.unwrap();
    assert_eq!((out.change, out.commit.sha.as_str()), (Change::Initial, two.as_str()));
    let shallow = std::fs::read_to_string(data.path().join("gitsync/repo.git/shallow")).expect("ssh fetch is shallow");
    assert_eq!(shallow.trim(), two);
    let current = data.path().join("gitsync/current");
    assert_eq!(read(&current, "a.txt"), "2");
    let three = up.commit(&[("cfg/b.txt", "b")], &[], "3");
    fast_forwards_to(&gs, &three).await;
    assert_eq!(read(&current, "b.txt"), "b");
    let info = gs
        .write_file("c.txt", Some(b"over ssh"), 4, ("k", "k@e"))
        .await
        .unwrap();
    assert_eq!(up.head(), info.sha);
    assert_eq!(git(&up.bare, &["show", "main:cfg/c.txt"]), "over ssh");
    assert_eq!(last_message(&up.bare), "keel: update c.txt\n\nKeel-Epoch: 4");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}
