//! Named child processes and the temp dir they keep their data and logs in: the benchmarks'
//! clusters (Keel, etcd, git daemons). Dropping it (panics included) kills every process, then
//! removes the dir; on a panic it prints the logs' tails first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::logs::{tail, warnings_since};
use crate::{node_addrs, serve_command};

struct Proc {
    name: String,
    child: Option<Child>,
    /// Started as the leader of its own process group: killed as a group (a git daemon's
    /// children, a hook's shell).
    group: bool,
}

/// One node started by [`Procs::spawn_keel_nodes`].
pub struct KeelProc {
    pub id: u64,
    /// `host:port` of its API.
    pub api: String,
    pub data: PathBuf,
}

pub struct Procs {
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
    /// Log lengths at [`Procs::mark`].
    marks: Vec<u64>,
    prefix: String,
}

impl Procs {
    /// A temp dir named `<prefix>…` in the system's temp dir (`TMPDIR`, else /tmp), or under `root`.
    pub fn new(prefix: &str, root: Option<&Path>) -> Procs {
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        let dir = match root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        };
        Procs {
            procs: Vec::new(),
            marks: Vec::new(),
            prefix: prefix.to_string(),
            dir: dir.expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `n` `keel serve` nodes (ids 1..=n) on 127.0.0.1 with fresh ports, bootstrapping together,
    /// each with its data dir `n<id>` in this dir and the flags `extra`, started as `n<id>` (as
    /// the leader of its own process group if `group`).
    pub fn spawn_keel_nodes(&mut self, n: usize, extra: &[&str], group: bool) -> Vec<KeelProc> {
        let (addrs, peers) = node_addrs(n, "127.0.0.1");
        let mut nodes = Vec::new();
        for (i, (api, peer)) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            let data = self.path().join(format!("n{id}"));
            let mut cmd = serve_command(id, &api, &peer, &data, &peers);
            cmd.args(extra);
            self.start(&format!("n{id}"), cmd, group);
            nodes.push(KeelProc { id, api, data });
        }
        nodes
    }

    /// Starts `cmd` with stdin closed and stdout and stderr to `<dir>/<name>.log`. It stays in
    /// this process's group, so a Ctrl-C that ends the benchmark ends it too.
    pub fn spawn(&mut self, name: &str, cmd: Command) {
        self.start(name, cmd, false);
    }

    /// [`Procs::spawn`] as the leader of a new process group, which is killed as a whole.
    pub fn spawn_group(&mut self, name: &str, cmd: Command) {
        self.start(name, cmd, true);
    }

    fn start(&mut self, name: &str, mut cmd: Command, group: bool) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.log(name)).expect("log file");
        if group {
            cmd.process_group(0);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs.push(Proc {
            name: name.to_string(),
            child: Some(child),
            group,
        });
    }

    /// The running processes' ids, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(Child::id))
            .collect()
    }

    /// Kill the processes named `name` (and their groups) and reap them.
    pub fn stop(&mut self, name: &str) {
        for p in self.procs.iter_mut().filter(|p| p.name == name) {
            kill(p);
        }
    }

    /// Remembers how far each log goes, so that [`Procs::warnings`] skips start-up chatter.
    pub fn mark(&mut self) {
        self.marks = self
            .procs
            .iter()
            .map(|p| std::fs::metadata(self.log(&p.name)).map_or(0, |m| m.len()))
            .collect();
    }

    /// WARN and ERROR lines in the logs since [`Procs::mark`]: how many per process, and the last few.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter().enumerate() {
            let since = self.marks.get(i).copied().unwrap_or(0);
            out.extend(warnings_since(&p.name, &self.log(&p.name), since));
        }
        out
    }
}

fn kill(p: &mut Proc) {
    let Some(mut c) = p.child.take() else { return };
    if p.group {
        kill_group(&mut c);
    } else {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGKILL to the process group `child` leads (started with `process_group(0)`), then to the
/// process itself, then reaps it. The pid cannot be reused before the reap, so the group kill
/// cannot hit anything else.
pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            kill(p);
        }
        // Debugging aid: keep the logs (`<prefix>-<name>.log`) in $KEEL_BENCH_LOG_DIR.
        if let Some(keep) = std::env::var_os("KEEL_BENCH_LOG_DIR") {
            for p in &self.procs {
                let to = PathBuf::from(&keep).join(format!("{}-{}.log", self.prefix.trim_end_matches('-'), p.name));
                let _ = std::fs::copy(self.log(&p.name), to);
            }
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("--- last lines of {}:\n{}", p.name, tail(&self.log(&p.name), 8));
            }
        }
        // `dir` is removed after this, when the fields drop.
    }
}

/// Blocks allocated to every file under `dir`, in bytes: what a data dir takes on the disk (the
/// benchmarks' disk-per-value figures).
pub fn dir_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
