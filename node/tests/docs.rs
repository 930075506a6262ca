//! The reference pages in `docs/` against the code, so that they cannot drift from it:
//!
//! - `docs/http-api.md` names exactly the operations of the OpenAPI spec
//!   (`keel_node::http::openapi::spec()`, served as `GET /v1/openapi.json`): every operation has a
//!   heading that names it as `` `METHOD /path` ``, and no `` `METHOD /path` `` anywhere on the
//!   page (outside code blocks) is missing from the spec. The convention is stated at the top of
//!   that page.
//! - `docs/configuration.md` names every flag of `keel serve --help`, and `docs/cli.md` every
//!   client option and every subcommand of `keel --help`.
//!
//! No node is started: the spec is built in-process and the binary only prints its help.

use std::collections::BTreeSet;
use std::process::Command;

const HTTP_API: &str = include_str!("../../docs/http-api.md");
const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const CLI: &str = include_str!("../../docs/cli.md");

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// `METHOD /path` of every operation in the spec.
fn spec_operations() -> BTreeSet<String> {
    let spec = keel_node::http::openapi::spec();
    let paths = spec["paths"].as_object().expect("the spec has `paths`");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item is an object").keys() {
            let method = method.to_uppercase();
            if METHODS.contains(&method.as_str()) {
                ops.insert(format!("{method} {path}"));
            }
        }
    }
    ops
}

/// `METHOD /path` in the inline code spans of `line` (query parameters cut off at `?` or `[`).
fn operations_in(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let (method, path) = span.split_once(' ')?;
            if !METHODS.contains(&method) || !path.starts_with('/') {
                return None;
            }
            let path = path.split(['?', '[']).next().unwrap_or(path);
            Some(format!("{method} {path}"))
        })
        .collect()
}

/// (operations named in headings, operations named anywhere), fenced code blocks left out.
fn documented_operations(markdown: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut headings, mut anywhere) = (BTreeSet::new(), BTreeSet::new());
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let ops = operations_in(line);
        if line.starts_with('#') {
            headings.extend(ops.iter().cloned());
        }
        anywhere.extend(ops);
    }
    (headings, anywhere)
}

#[test]
fn http_api_page_documents_exactly_the_openapi_operations() {
    let spec = spec_operations();
    assert!(spec.len() > 20, "the spec has only {} operations: {spec:?}", spec.len());
    let (headings, anywhere) = documented_operations(HTTP_API);
    let undocumented: Vec<_> = spec.difference(&headings).collect();
    let unknown: Vec<_> = anywhere.difference(&spec).collect();
    assert!(
        undocumented.is_empty(),
        "operations of the OpenAPI spec without a \"`METHOD /path`\" heading in docs/http-api.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/http-api.md names operations the OpenAPI spec does not have: {unknown:?}"
    );
}

#[test]
fn operation_parsing_follows_the_convention() {
    let page = "# T\n## `GET /a`, `POST /a/{id}/cas?version=N`\ntext `PUT /b[?x=1]` and `not an op`\n```\n`GET /in-code`\n```\n### Reads\n";
    let (headings, anywhere) = documented_operations(page);
    assert_eq!(
        headings,
        BTreeSet::from(["GET /a".to_string(), "POST /a/{id}/cas".to_string()])
    );
    assert_eq!(anywhere.len(), 3, "{anywhere:?}");
    assert!(anywhere.contains("PUT /b"));
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel --help");
    assert!(
        out.status.success(),
        "keel {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Long flags (without `--`) that start an option line of clap's help, `--help` and `--version`
/// left out.
fn flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let rest = &l[l.find("--")? + 2..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty() && name != "help" && name != "version").then_some(name)
        })
        .collect()
}

/// Whether `page` names `--flag` in inline code (`` `--flag` ``, `` `--flag VALUE` ``, ...).
fn names_flag(page: &str, flag: &str) -> bool {
    let needle = format!("`--{flag}");
    page.match_indices(&needle).any(|(i, _)| {
        page[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| matches!(c, ' ' | '`' | '=' | '['))
    })
}

#[test]
fn configuration_page_lists_every_serve_flag_and_cli_page_every_client_option() {
    let global = flags(&help(&["--help"]));
    let serve = flags(&help(&["serve", "--help"]));
    assert!(
        serve.contains("gitsync-repo") && global.contains("addr"),
        "help parsing broke: {serve:?} {global:?}"
    );
    let missing: Vec<_> = serve
        .difference(&global)
        .filter(|f| !names_flag(CONFIGURATION, f))
        .collect();
    assert!(
        missing.is_empty(),
        "`keel serve` flags missing from docs/configuration.md: {missing:?}"
    );
    let missing: Vec<_> = global.iter().filter(|f| !names_flag(CLI, f)).collect();
    assert!(
        missing.is_empty(),
        "client options of `keel --help` missing from docs/cli.md: {missing:?}"
    );
}

#[test]
fn cli_page_names_every_subcommand() {
    let help = help(&["--help"]);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"serve") && commands.contains(&"kv"),
        "help parsing broke: {commands:?}"
    );
    let missing: Vec<_> = commands
        .iter()
        .filter(|c| !CLI.contains(&format!("`keel {c}")))
        .collect();
    assert!(missing.is_empty(), "subcommands missing from docs/cli.md: {missing:?}");
}
