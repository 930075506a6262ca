//! The layering rule of `node/src` (node/DESIGN.md), checked on the source: the decision layer
//! (`cluster/`) and the ground floor below it (all of it but `start.rs`, which wires the listeners)
//! never import the HTTP, peer, Sentinel or CLI layers or axum, and
//! `ApiError` is named only at the edges where requests are answered (`http/`, `peer/`, and the
//! backup stream that `GET /v1/backup` serves).
//!
//! The same check by hand:
//! `grep -rnE 'crate::(http|cli|peer|sentinel)\b|axum|ApiError' node/src/cluster node/src/state.rs node/src/repl.rs node/src/config`
//! prints nothing.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of the given files or folders (under node/src) that contain any of `forbidden`, outside
/// comments.
fn offending(places: &[&str], forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for place in places {
        let p = src.join(place);
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p);
        }
    }
    assert!(!files.is_empty(), "no source files under {places:?}");
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if let Some(word) = forbidden.iter().find(|w| code.contains(*w)) {
                hits.push(format!("{}:{}: `{word}` in: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

#[test]
fn decision_layer_knows_no_http_cli_or_axum() {
    let hits = offending(
        &[
            "cluster",
            "state.rs",
            "repl.rs",
            "metrics.rs",
            "util.rs",
            "auth.rs",
            "config",
        ],
        &[
            "crate::http",
            "crate::cli",
            "crate::peer",
            "crate::sentinel",
            "axum",
            "ApiError",
        ],
    );
    assert!(
        hits.is_empty(),
        "the decision layer imports an edge:\n{}",
        hits.join("\n")
    );
}

#[test]
fn api_error_only_at_the_edges() {
    let hits = offending(
        &[
            "cluster",
            "config",
            "state.rs",
            "start.rs",
            "metrics.rs",
            "util.rs",
            "tls.rs",
            "auth.rs",
            "repl.rs",
            "cli",
            "sentinel",
        ],
        &["ApiError"],
    );
    assert!(
        hits.is_empty(),
        "ApiError outside http/, peer/ and backup/:\n{}",
        hits.join("\n")
    );
}

/// The check itself must be able to fail: the HTTP layer does use what the rule forbids below it,
/// and the node's start wires the Sentinel listener.
#[test]
fn the_check_sees_the_http_layer() {
    assert!(!offending(&["http"], &["axum", "ApiError"]).is_empty());
    assert!(!offending(&["start.rs"], &["crate::sentinel"]).is_empty());
}
