//! Before a run starts any node: is everything its nemeses (and its mode) need on this machine?
//! A missing `iptables` used to surface only at the first `netem` fault, or in the report after
//! the whole run; [`check`] lists every missing piece at once, in well under a second.
//!
//! [`needs`] is the pure map from the chosen nemeses to what they run: the programs are looked up
//! on `PATH` the way [`std::process::Command`] runs them (by bare name).

use std::collections::BTreeMap;
use std::path::Path;

/// Something a run needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Root: network namespaces, routes, qdiscs and iptables rules inside them.
    Root,
    /// A program the harness runs by name (so it must be on `PATH`).
    Program(&'static str),
    /// `libfaketimeMT.so.1` (Debian package `faketime`), preloaded into a node under a skewed clock.
    Faketime,
}

impl Need {
    /// What is missing and how to get it. The `not root` and `apt-get install faketime` phrases
    /// are what `node/tests/chaos.rs` recognises to skip a scenario on a developer's machine.
    fn describe(self) -> String {
        match self {
            Need::Root => "root (not root: network namespaces need root)".to_string(),
            Need::Program(p) => format!("{p} (not on PATH{})", package_hint(p)),
            Need::Faketime => "libfaketime (libfaketimeMT.so.1; apt-get install faketime)".to_string(),
        }
    }
}

fn package_hint(program: &str) -> &'static str {
    match program {
        "ip" | "tc" => "; Debian package iproute2",
        "iptables" => "; Debian package iptables",
        "kill" => "; Debian package procps",
        _ => "",
    }
}

/// What each chosen nemesis kind (`kind` or `kind:variant`) and the namespace mode need, each need
/// with who needs it (`--netns` or the nemesis kinds, in order).
///
/// - `pause`: `kill -STOP` / `kill -CONT` (the `kill` program);
/// - `partition`: blackhole routes with `ip` inside the namespaces;
/// - `netem`: `tc` (netem, or tbf shaping), `iptables` (packet loss where the kernel has no netem)
///   and `ip netns exec` to run them inside a namespace;
/// - `skew`: libfaketime;
/// - `kill`, `kill-primary`, `wipe`: nothing beyond the harness (signals from the process API,
///   membership over HTTP);
/// - `--netns`: root and `ip` (namespaces, veth pairs, the bridge).
pub fn needs(kinds: &[String], netns: bool) -> BTreeMap<Need, Vec<String>> {
    let mut out: BTreeMap<Need, Vec<String>> = BTreeMap::new();
    let mut add = |need: Need, who: &str| {
        let list = out.entry(need).or_default();
        if !list.iter().any(|w| w == who) {
            list.push(who.to_string());
        }
    };
    if netns {
        add(Need::Root, "--netns");
        add(Need::Program("ip"), "--netns");
    }
    for k in kinds {
        let kind = k.split_once(':').map_or(k.as_str(), |(kind, _)| kind);
        let programs: &[&'static str] = match kind {
            "pause" => &["kill"],
            "partition" => &["ip"],
            "netem" => &["ip", "tc", "iptables"],
            _ => &[],
        };
        for p in programs {
            add(Need::Program(p), kind);
        }
        if kind == "skew" {
            add(Need::Faketime, kind);
        }
    }
    out
}

/// What this machine has, as [`missing`] asks it.
pub struct Machine<'a> {
    pub on_path: &'a dyn Fn(&str) -> bool,
    pub root: bool,
    pub faketime: bool,
}

/// The needs the machine does not meet, each with who needs it.
pub fn missing(needs: &BTreeMap<Need, Vec<String>>, m: &Machine) -> Vec<(Need, Vec<String>)> {
    needs
        .iter()
        .filter(|(need, _)| match need {
            Need::Root => !m.root,
            Need::Program(p) => !(m.on_path)(p),
            Need::Faketime => !m.faketime,
        })
        .map(|(need, who)| (*need, who.clone()))
        .collect()
}

/// The one error message naming everything missing (and the `keel` binary, if that is missing).
pub fn message(missing: &[(Need, Vec<String>)], keel: Option<&Path>) -> Option<String> {
    let mut lines: Vec<String> = missing
        .iter()
        .map(|(need, who)| format!("  {} — needed by {}", need.describe(), who.join(", ")))
        .collect();
    if let Some(k) = keel {
        lines.push(format!(
            "  the keel binary at {} (build it, or pass --keel PATH)",
            k.display()
        ));
    }
    (!lines.is_empty()).then(|| {
        format!(
            "this machine lacks what the run needs (no node was started):\n{}",
            lines.join("\n")
        )
    })
}

/// Whether `name` is an executable file in one of `path`'s directories (how `Command::new(name)`
/// finds it; an unset `PATH` means `/bin:/usr/bin`, as for `execvp`).
pub fn on_path(name: &str, path: Option<&std::ffi::OsStr>) -> bool {
    let path = path.unwrap_or(std::ffi::OsStr::new("/bin:/usr/bin"));
    std::env::split_paths(path).any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Effective uid 0, from `/proc/self/status` (no program needed, unlike `id -u`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Checks this machine for `kinds` (already parsed) in the namespace mode or not, and that the
/// `keel` binary exists: `Err` with every missing piece.
pub fn check(kinds: &[String], netns: bool, keel: &Path) -> Result<(), String> {
    let path = std::env::var_os("PATH");
    let machine = Machine {
        on_path: &|p| on_path(p, path.as_deref()),
        root: is_root(),
        faketime: super::faketime_lib().is_some(),
    };
    let gone = missing(&needs(kinds, netns), &machine);
    let keel = (!is_executable(keel)).then_some(keel);
    match message(&gone, keel) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_nemesis_needs_what_it_runs() {
        let p = Need::Program;
        type Case<'a> = (&'a [&'a str], bool, Vec<(Need, Vec<&'a str>)>);
        let cases: Vec<Case> = vec![
            (&["kill", "kill-primary", "wipe"], false, vec![]),
            (&["pause"], false, vec![(p("kill"), vec!["pause"])]),
            (&["skew"], false, vec![(Need::Faketime, vec!["skew"])]),
            (
                &["partition:halves"],
                true,
                vec![(Need::Root, vec!["--netns"]), (p("ip"), vec!["--netns", "partition"])],
            ),
            (
                &["netem", "partition", "pause", "skew"],
                true,
                vec![
                    (Need::Root, vec!["--netns"]),
                    (p("ip"), vec!["--netns", "netem", "partition"]),
                    (p("iptables"), vec!["netem"]),
                    (p("kill"), vec!["pause"]),
                    (p("tc"), vec!["netem"]),
                    (Need::Faketime, vec!["skew"]),
                ],
            ),
            (
                &["kill"],
                true,
                vec![(Need::Root, vec!["--netns"]), (p("ip"), vec!["--netns"])],
            ),
        ];
        for (list, netns, want) in cases {
            let got: Vec<(Need, Vec<String>)> = needs(&kinds(list), netns).into_iter().collect();
            let want: Vec<(Need, Vec<String>)> = want
                .into_iter()
                .map(|(n, who)| (n, who.into_iter().map(String::from).collect()))
                .collect();
            assert_eq!(got, want, "{list:?} netns {netns}");
        }
    }

    #[test]
    fn missing_lists_everything_at_once() {
        let n = needs(&kinds(&["netem", "pause", "skew"]), true);
        let bare = Machine {
            on_path: &|p| p == "ip",
            root: false,
            faketime: false,
        };
        let gone = missing(&n, &bare);
        let names: Vec<Need> = gone.iter().map(|(need, _)| *need).collect();
        assert_eq!(
            names,
            vec![
                Need::Root,
                Need::Program("iptables"),
                Need::Program("kill"),
                Need::Program("tc"),
                Need::Faketime
            ]
        );
        let msg = message(&gone, Some(Path::new("/nope/keel"))).unwrap();
        for part in [
            "not root",
            "iptables (not on PATH; Debian package iptables) — needed by netem",
            "kill (not on PATH; Debian package procps) — needed by pause",
            "tc (not on PATH; Debian package iproute2) — needed by netem",
            "apt-get install faketime",
            "the keel binary at /nope/keel",
            "no node was started",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        let full = Machine {
            on_path: &|_| true,
            root: true,
            faketime: true,
        };
        assert!(missing(&n, &full).is_empty());
        assert_eq!(message(&[], None), None);
    }

    #[test]
    fn path_lookup_needs_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let path = std::env::join_paths(["/nonexistent-dir".as_ref(), dir.path()]).unwrap();
        assert!(on_path("tool", Some(&path)));
        assert!(!on_path("plain", Some(&path)), "not executable");
        assert!(!on_path("adir", Some(&path)), "a directory");
        assert!(!on_path("missing", Some(&path)));
    }
}
