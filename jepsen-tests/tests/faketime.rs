//! The `skew` nemesis runs a node under libfaketime. Keel's lease is measured on the monotonic
//! clock (std's `Instant`, `clock_gettime(CLOCK_MONOTONIC)`), so the skew is only real if
//! libfaketime changes that clock's *rate* for the process, not just the wall clock. This pins
//! it: a process under `FAKETIME="+0 x0.5"` sees 500 ms pass on its monotonic clock while about
//! 1 s passes outside, and its sleeps stretch the same way (libfaketime scales the sleep calls
//! too), so the whole process, timers included, runs at half speed.

use std::process::Command;
use std::time::Instant;

#[test]
fn faketime_changes_the_monotonic_rate() {
    let Some(lib) = keel_jepsen::runner::faketime_lib() else {
        if std::env::var_os("CI").is_some() {
            panic!("libfaketime missing in CI (Debian package faketime, in KEEL_TEST_PACKAGES)");
        }
        println!("SKIPPED faketime_changes_the_monotonic_rate: apt-get install faketime");
        return;
    };
    let probe = |spec: Option<&str>| -> (u64, f64) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-jepsen"));
        cmd.args(["clock-probe", "500"]);
        if let Some(spec) = spec {
            cmd.env("LD_PRELOAD", &lib).env("FAKETIME", spec);
        }
        let t = Instant::now();
        let out = cmd.output().expect("run keel-jepsen clock-probe");
        let real = t.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let seen: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number");
        (seen, real)
    };
    let (seen, real) = probe(None);
    println!("plain: monotonic {seen} ms, real {real:.0} ms");
    assert!((500..700).contains(&seen), "{seen}");
    // Half speed: the process's 500 ms take about 1 s of real time.
    let (seen, real) = probe(Some("+0 x0.5"));
    println!("x0.5: monotonic {seen} ms, real {real:.0} ms");
    assert!((500..700).contains(&seen), "{seen}");
    assert!(
        real >= 950.0,
        "x0.5 did not slow the process's clock: {real:.0} ms real"
    );
    // Double speed, with a wall-clock offset: the process's 500 ms take about 250 ms.
    let (seen, real) = probe(Some("-300s x2"));
    println!("x2: monotonic {seen} ms, real {real:.0} ms");
    assert!((500..700).contains(&seen), "{seen}");
    assert!(
        real < 450.0,
        "x2 did not speed up the process's clock: {real:.0} ms real"
    );
}
