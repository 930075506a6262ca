//! Every benchmark in `node/examples/` answers `--help` with its usage (exit 0) and a bad argument
//! with the error and the usage (exit 2), never a panic, and without starting anything.
//!
//! The example binaries are built by `cargo build --examples` (and by `cargo test` /
//! `cargo nextest run` of the whole package) into `target/<profile>/examples/`, next to the
//! `deps/` directory this test runs from. Cargo gives examples no `CARGO_BIN_EXE_*` variable.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `(example, a bad argument that parses as a flag but has an invalid value)`.
const EXAMPLES: &[(&str, &[&str])] = &[
    ("failover", &["--runs", "0"]),
    ("kv_bench", &["--secs", "0"]),
    ("gitsync_bench", &["--pushes", "none"]),
    ("redis_bench", &["--runs", "0"]),
];

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("the test runs from target/<profile>/deps/");
    assert!(
        bin.is_file(),
        "no example binary at {} (build it with `cargo build --examples`)",
        bin.display()
    );
    bin
}

fn run(name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = Command::new(example(name))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_prints_usage() {
    for (name, _) in EXAMPLES {
        let (code, out, err) = run(name, &["--help"]);
        assert_eq!(code, Some(0), "{name} --help: {out}{err}");
        assert!(
            out.contains(&format!("Usage: {name}")),
            "{name} --help printed:\n{out}{err}"
        );
        assert!(!err.contains("panicked"), "{name} --help: {err}");
    }
}

#[test]
fn bad_arguments_give_error_and_usage() {
    for (name, bad_value) in EXAMPLES {
        for args in [&["--no-such-flag"][..], bad_value] {
            let (code, out, err) = run(name, args);
            assert_eq!(code, Some(2), "{name} {args:?}: {out}{err}");
            assert!(err.starts_with("error: "), "{name} {args:?}: {err}");
            assert!(
                err.contains(&format!("Usage: {name}")),
                "{name} {args:?} gave no usage: {err}"
            );
            assert!(!err.contains("panicked"), "{name} {args:?}: {err}");
            assert!(out.is_empty(), "{name} {args:?} started something: {out}");
        }
    }
}
