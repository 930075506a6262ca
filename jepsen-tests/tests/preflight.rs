//! `keel-jepsen run` on a machine (here: a `PATH`) without the tools its nemeses need fails
//! before it writes or starts anything, naming every missing tool at once, with exit code 2.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far below the run's own length (`--time 60`): only a check that starts no cluster ends
/// within it.
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn run_without_the_nemeses_tools_fails_fast_listing_them() {
    let empty_path = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("report");
    let exe = env!("CARGO_BIN_EXE_keel-jepsen");
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args([
            "run",
            "--netns",
            "--nemesis",
            "netem,partition,pause,skew",
            "--time",
            "60",
        ])
        .arg("--out")
        .arg(&out_dir)
        // An existing executable, so only the nemeses' tools can be missing.
        .arg("--keel")
        .arg(exe)
        .env("PATH", empty_path.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel-jepsen");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for keel-jepsen") {
            break s;
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel-jepsen still running after {DEADLINE:?}: the preflight did not stop it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("keel-jepsen output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    for tool in [
        "ip (not on PATH",
        "tc (not on PATH",
        "iptables (not on PATH",
        "kill (not on PATH",
    ] {
        assert!(stderr.contains(tool), "{tool:?} not listed in: {stderr}");
    }
    assert!(stderr.contains("no node was started"), "{stderr}");
    // libfaketime is found by file, not on PATH: listed exactly when this machine lacks it.
    assert_eq!(
        stderr.contains("apt-get install faketime"),
        keel_jepsen::runner::faketime_lib().is_none(),
        "{stderr}"
    );
    assert!(
        !out_dir.exists(),
        "the report directory was created: the run went past the preflight"
    );
}

#[test]
fn loopback_kill_needs_nothing_more() {
    // kill and kill-primary run no tool: with an empty PATH the only thing missing is the keel
    // binary (given as a path that does not exist), still found before anything starts.
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel-jepsen"))
        .args(["run", "--nemesis", "kill,kill-primary", "--time", "60", "--keel"])
        .arg(work.path().join("no-keel-here"))
        .arg("--out")
        .arg(work.path().join("report"))
        .env("PATH", work.path())
        .output()
        .expect("run keel-jepsen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the keel binary at"), "{stderr}");
    assert!(
        !stderr.contains("not on PATH"),
        "kill and kill-primary need no tool: {stderr}"
    );
    assert!(!work.path().join("report").exists());
}
