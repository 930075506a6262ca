//! Git helpers: a `git` command with a fixed identity, a bare Git Sync upstream, `git daemon`
//! serving it (so pushes run its hooks), a hook installer, and a started three-node cluster that
//! follows it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Cluster;

/// A `git ARGS` command in `dir` with a fixed identity, no prompts, and no global or system
/// config (so the user's settings cannot change what a test or benchmark does).
pub fn git_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
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

/// An upstream bare repository (`upstream.git`, branch `main`) and a work clone (`work`) that
/// pushes to it as `origin`.
pub struct Upstream {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Upstream {
    /// Both repositories in `dir`, with no commit yet.
    pub fn new(dir: &Path) -> Upstream {
        let bare = dir.join("upstream.git");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Upstream { bare, work }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Write `contents` to `file` in the work clone, commit everything there, push; returns
    /// the new commit.
    pub fn commit(&self, file: &str, contents: &str) -> String {
        let p = self.work.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("set {file} to {}", contents.trim())],
        );
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// `git daemon` on loopback serving the repositories under `base` (fetch and push), killed with
/// its children (the `receive-pack` and hook processes of pushes in flight) on drop. Pushes over
/// `git://` run the repository's hooks, as on a real Git server; libgit2's `file://` transport
/// does not run them.
pub struct GitDaemon {
    child: std::process::Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        use std::os::unix::process::CommandExt;
        let port = crate::free_port("127.0.0.1");
        // `git-daemon` itself, as the leader of its own process group: `git daemon` would fork
        // it, and killing that wrapper would orphan the server.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
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
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start git daemon");
        let daemon = GitDaemon { child, port };
        crate::wait_for(
            &format!("git daemon listening on 127.0.0.1:{port}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        daemon
    }

    /// The `git://` URL of `repo` (a directory name under the base).
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        crate::procs::kill_group(&mut self.child);
    }
}

/// Writes `script` as the executable hook `name` (`pre-receive`, `update`, ...) of the bare
/// repository `bare`.
pub fn install_hook(bare: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = bare.join("hooks").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bare Git Sync upstream repository in `dir` with one commit under `shared/`; returns its file:// URL.
pub fn gitsync_upstream(dir: &Path) -> String {
    let up = Upstream::new(dir);
    up.commit("shared/config.txt", "v1");
    up.url()
}

/// `X-Hub-Signature-256` of a GitHub webhook `body` signed with `secret`: `sha256=<hex HMAC>`.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
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
