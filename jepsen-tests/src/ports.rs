//! Loopback addresses and ports for local test clusters, shared by the chaos runner and the
//! test kit (`keel-testkit` re-exports them), so there is one rule for picking ports.
//!
//! What is really needed: two listeners collide only if they bind the same port on the same
//! address (or one of them binds the wildcard address). So:
//! - every test process gets its own loopback address, [`process_ip`], derived from its pid:
//!   two processes alive at the same time never share one, which splits the port space between
//!   concurrently running test processes (nextest runs each test in its own process) with no
//!   file, lock or cleanup. A lock file under `target/` would only be needed if processes shared
//!   an address; it would also need stale-entry cleanup after a SIGKILLed run.
//! - inside one process (several clusters, or `cargo test` running tests as threads), [`free_port`]
//!   never hands out the same (address, port) twice: the kernel may give a port released by an
//!   earlier bind(:0) to a later one before the first node has bound it, and two nodes of one
//!   cluster on the same port made a node fail to start ("Address already in use") in a CI run.
//!
//! Neither protects against an unrelated program binding the wildcard address on that port
//! between our probe and the node's bind; nothing short of binding and passing the socket would.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// This process's own loopback address, `127.a.b.c` built from the pid's bits (Linux pids are
/// below 2^22): unique among live processes, the same for every call in one process, never a
/// `.0` or `.255` last octet.
pub fn process_ip() -> String {
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        1 + ((pid >> 15) & 0x7f),
        (pid >> 7) & 0xff,
        1 + (pid & 0x7f)
    )
}

/// A port on `ip` that nothing listens on now and that this process has not handed out on `ip`
/// before. Panics if `ip` cannot be bound (a test fixture has no better answer).
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: Mutex<BTreeSet<(String, u16)>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind(format!("{ip}:0")).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let port = l
            .local_addr()
            .unwrap_or_else(|e| panic!("local address of {ip}:0: {e}"))
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ip.to_string(), port))
        {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_never_repeat_and_the_address_is_stable() {
        let ip = process_ip();
        assert_eq!(ip, process_ip());
        let ports: BTreeSet<u16> = (0..200).map(|_| free_port(&ip)).collect();
        assert_eq!(ports.len(), 200);
    }
}
