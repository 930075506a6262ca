//! Log and output helpers: the tail of a log file, WARN/ERROR lines since a mark, a command's
//! output as text. `strip_ansi` is the node's own (`keel_node::util`), re-exported at the root.

use std::path::Path;
use std::process::Output;

use keel_node::util::strip_ansi;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last `n` lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The WARN and ERROR lines of the log at `path` after byte `since` (colour codes removed):
/// a `name: N WARN/ERROR log lines; the last ones:` header and the last three, or nothing.
pub fn warnings_since(name: &str, path: &Path, since: u64) -> Vec<String> {
    let log = std::fs::read(path).unwrap_or_default();
    let after = log.get(since as usize..).unwrap_or_default();
    let log = strip_ansi(&String::from_utf8_lossy(after));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!("{name}: {} WARN/ERROR log lines; the last ones:", lines.len())];
    out.extend(lines[lines.len().saturating_sub(3)..].iter().map(|l| format!("  {l}")));
    out
}
