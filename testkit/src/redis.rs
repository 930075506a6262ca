//! Managed-Redis tests' shared check: is a runnable `redis-server` installed?

/// `redis-server --version` runs. Without it a test skips with a message, except in CI
/// (`CI` set), where it fails: the test command installs the package.
pub fn have_redis() -> bool {
    let ok = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing in CI: install the redis-server package (scripts/lib.sh KEEL_TEST_PACKAGES)"
        );
        println!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    }
    ok
}
