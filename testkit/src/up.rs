//! A `keel up` child for tests: output to a file, SIGTERM on drop (so it stops its nodes), SIGKILL
//! if that takes over 15 s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct KeelUp {
    child: Child,
    out: PathBuf,
}

impl KeelUp {
    /// Runs `keel ARGS` (e.g. `up --data-dir D`) with stdout and stderr in `out`.
    pub fn start(args: &[&str], out: &Path) -> KeelUp {
        KeelUp::start_in(Path::new("."), args, out)
    }

    /// [`KeelUp::start`] in the working directory `cwd` (for a relative `--data-dir`).
    pub fn start_in(cwd: &Path, args: &[&str], out: &Path) -> KeelUp {
        let file = std::fs::File::create(out).expect("create the keel up output file");
        let child = Command::new(crate::keel_bin())
            .current_dir(cwd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file handle"))
            .stderr(file)
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn keel up");
        KeelUp {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// SIGTERM, then wait up to 15 s for the exit; the exit code (None when it had to be killed).
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KeelUp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The first of `n` consecutive loopback ports at `ip` that were all free a moment ago (each
/// bound and released), or a panic after 100 tries.
pub fn free_port_run(ip: &str, n: u16) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind((ip, 0)).expect("bind a loopback port");
        let base = first.local_addr().expect("its address").port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let rest: Vec<_> = (1..n).map(|i| std::net::TcpListener::bind((ip, base + i))).collect();
        if rest.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("found no {n} consecutive free ports on {ip} in 100 tries");
}
