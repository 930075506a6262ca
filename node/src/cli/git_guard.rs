//! `keel git-guard`: a server-side Git hook that keeps a deposed primary's commits off the shared
//! branch. Git runs it on the remote (the repository Git Sync pushes to) as a `pre-receive` hook
//! (ref updates as `<old> <new> <ref>` lines on stdin) or as an `update` hook (`REF OLD NEW` as
//! arguments). For every update of the guarded branch it lists the commits the push adds, reads
//! each one's `Keel-Epoch` trailer, asks the cluster for its current epoch, and exits 1 (git then
//! refuses the whole push and shows our stderr to the pusher as `remote: ...`) when any new commit
//! carries an older epoch, or, with `--require-trailer`, none at all.
//!
//! The decision is the pure [`decide`]; everything else gathers its inputs. It fails closed: a
//! trailer it cannot parse, git failing, or no node answering refuses the push.

use super::*;

/// Git's name for "no commit" in ref updates: all zeros (40 for SHA-1, 64 for SHA-256).
fn is_zero(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

#[derive(clap::Args, Debug, Clone)]
pub struct GitGuardArgs {
    /// branch to guard (`refs/heads/BRANCH`); other refs pass untouched
    #[arg(long, default_value = "main", value_name = "BRANCH")]
    pub branch: String,
    /// also refuse new commits on the branch that carry no `Keel-Epoch` trailer (people's commits)
    #[arg(long)]
    pub require_trailer: bool,
    /// update-hook mode: the ref and its old and new ids, as git passes them to `hooks/update`;
    /// without them the pre-receive lines `<old> <new> <ref>` are read from stdin
    #[arg(num_args = 3, value_names = ["REF", "OLD", "NEW"])]
    pub update: Vec<String>,
}

/// One ref update git asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub refname: String,
}

/// What a commit's message says about its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailerEpoch {
    /// No `Keel-Epoch` trailer: not written by Keel.
    Missing,
    Epoch(u64),
    /// A `Keel-Epoch` trailer whose value is not a number.
    Invalid(String),
}

/// A commit the push adds to the guarded branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommit {
    pub sha: String,
    pub epoch: TrailerEpoch,
}

/// The hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse(String),
}

/// The `Keel-Epoch` trailer of a commit message. Trailers live in the message's last paragraph,
/// never in the subject; the key is case-insensitive, as git's own trailer parsing. Several
/// trailers count as the oldest they name.
pub fn keel_epoch(message: &str) -> TrailerEpoch {
    let message = message.replace("\r\n", "\n");
    let paragraphs: Vec<&str> = message
        .split("\n\n")
        .map(|p| p.trim_matches('\n'))
        .filter(|p| !p.trim().is_empty())
        .collect();
    let Some(last) = paragraphs.get(1..).and_then(<[&str]>::last) else {
        return TrailerEpoch::Missing;
    };
    let mut found = TrailerEpoch::Missing;
    for line in last.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("keel-epoch") {
            continue;
        }
        let value = value.trim();
        match (value.parse::<u64>(), &found) {
            (Err(_), _) => return TrailerEpoch::Invalid(value.to_string()),
            (Ok(e), TrailerEpoch::Epoch(prev)) if *prev <= e => {}
            (Ok(e), _) => found = TrailerEpoch::Epoch(e),
        }
    }
    found
}

/// Whether [`decide`] needs the cluster's epoch for these commits (only trailers are compared).
pub fn needs_epoch(commits: &[NewCommit]) -> bool {
    commits.iter().any(|c| matches!(c.epoch, TrailerEpoch::Epoch(_)))
}

/// The pure decision: refuse when a new commit's trailer is unreadable, when one carries an epoch
/// older than `current` (it was committed by a primary that has since been deposed), or, with
/// `require_trailer`, when one carries none. A newer epoch than `current` passes: the node asked
/// lags behind the committer. `current` is `None` when no node told the epoch; a commit with a
/// trailer is then refused (fail closed).
pub fn decide(commits: &[NewCommit], current: Option<u64>, require_trailer: bool) -> Verdict {
    for c in commits {
        let short: String = c.sha.chars().take(12).collect();
        match (&c.epoch, current) {
            (TrailerEpoch::Invalid(v), _) => {
                return Verdict::Refuse(format!("commit {short} has an unreadable Keel-Epoch trailer {v:?}"))
            }
            (TrailerEpoch::Missing, _) if require_trailer => {
                return Verdict::Refuse(format!(
                    "commit {short} has no Keel-Epoch trailer, and this branch takes only commits made by Keel \
                     (--require-trailer)"
                ))
            }
            (TrailerEpoch::Missing, _) => {}
            (TrailerEpoch::Epoch(_), None) => {
                return Verdict::Refuse(format!(
                    "commit {short} carries a Keel-Epoch trailer but the cluster's current epoch is unknown"
                ))
            }
            (TrailerEpoch::Epoch(e), Some(now)) if *e < now => {
                return Verdict::Refuse(format!(
                    "commit {short} carries Keel-Epoch {e}, older than the cluster's current epoch {now}: it was made \
                     by a primary that has since been deposed"
                ))
            }
            (TrailerEpoch::Epoch(_), Some(_)) => {}
        }
    }
    Verdict::Allow
}

/// The pre-receive hook's stdin: one `<old> <new> <ref>` line per updated ref.
pub fn parse_updates(input: &str) -> anyhow::Result<Vec<RefUpdate>> {
    input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [old, new, refname] => Ok(RefUpdate {
                old: old.into(),
                new: new.into(),
                refname: refname.into(),
            }),
            _ => bail!("malformed ref update line {line:?}: expected `<old> <new> <ref>` (pre-receive hook input)"),
        })
        .collect()
}

/// The full ref name `--branch` stands for.
fn guarded_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    }
}

/// `git ARGS` in the hook's environment (inherited as is: git's `GIT_DIR` and its quarantine
/// variables let us see the objects being pushed); its stdout.
fn git(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("git {}: output is not UTF-8", args.join(" ")))
}

/// The commits `u` adds to its branch, with their trailers: `OLD..NEW`, or for a new branch the
/// commits no existing ref has (history already in the repository is not new).
fn new_commits(u: &RefUpdate) -> anyhow::Result<Vec<NewCommit>> {
    let mut args = vec!["-c", "log.showSignature=false", "log", "-z", "--format=%H%n%B", &u.new];
    let exclude_old = format!("^{}", u.old);
    if is_zero(&u.old) {
        args.extend(["--not", "--all"]);
    } else {
        args.push(&exclude_old);
    }
    let out = git(&args)?;
    Ok(out
        .split('\0')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let entry = entry.trim_start_matches('\n');
            let (sha, message) = entry.split_once('\n').unwrap_or((entry, ""));
            NewCommit {
                sha: sha.trim().to_string(),
                epoch: keel_epoch(message),
            }
        })
        .collect())
}

/// The cluster's current epoch: the highest `primary.epoch` any node in `--addr` reports in
/// `GET /v1/status` (asked concurrently, each within `--timeout-ms`). Epochs only grow, so a node
/// that lags can only report less; list every node so one answer from the majority is enough.
async fn cluster_epoch(opts: &ClientOpts) -> anyhow::Result<u64> {
    let addrs: Vec<String> = opts
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if addrs.is_empty() {
        bail!("--addr names no node");
    }
    let mut set = JoinSet::new();
    for addr in addrs {
        let api = Api::new(&ClientOpts {
            addr: addr.clone(),
            ..opts.clone()
        })?;
        set.spawn(async move {
            let r = api.call(Method::GET, "/v1/status", None).await;
            (api.base, r)
        });
    }
    let (mut best, mut problems) = (None::<u64>, Vec::new());
    while let Some(joined) = set.join_next().await {
        let Ok((base, r)) = joined else { continue };
        match r {
            Ok(s) => match s["primary"]["epoch"].as_u64() {
                Some(e) => best = best.max(Some(e)),
                None => problems.push(format!("{base}: knows no primary yet")),
            },
            Err(e) => problems.push(e.describe(&base).lines().next().unwrap_or_default().to_string()),
        }
    }
    best.ok_or_else(|| anyhow::anyhow!("no node told the cluster's epoch: {}", problems.join("; ")))
}

/// Runs the hook; exit 0 lets the push through, 1 refuses it (with the reason on stderr).
pub async fn run(args: GitGuardArgs, opts: &ClientOpts) -> anyhow::Result<i32> {
    let updates = if args.update.is_empty() {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("read the ref updates from stdin")?;
        parse_updates(&input)?
    } else {
        vec![RefUpdate {
            refname: args.update[0].clone(),
            old: args.update[1].clone(),
            new: args.update[2].clone(),
        }]
    };
    let guarded = guarded_ref(&args.branch);
    let mut commits = Vec::new();
    // A deletion adds no commit.
    for u in updates.iter().filter(|u| u.refname == guarded && !is_zero(&u.new)) {
        commits.extend(new_commits(u).with_context(|| format!("list the commits pushed to {}", u.refname))?);
    }
    if commits.is_empty() {
        return Ok(EXIT_OK);
    }
    let current = if needs_epoch(&commits) {
        match cluster_epoch(opts).await {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("keel git-guard: {e:#}");
                None
            }
        }
    } else {
        None
    };
    match decide(&commits, current, args.require_trailer) {
        Verdict::Allow => {
            let epoch = current.map(|e| format!(", cluster epoch {e}")).unwrap_or_default();
            eprintln!(
                "keel git-guard: {} new commit(s) on {guarded} accepted{epoch}",
                commits.len()
            );
            Ok(EXIT_OK)
        }
        Verdict::Refuse(reason) => {
            eprintln!("keel git-guard: push to {guarded} refused: {reason}");
            Ok(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sha: &str, epoch: TrailerEpoch) -> NewCommit {
        NewCommit { sha: sha.into(), epoch }
    }

    #[test]
    fn trailers() {
        use TrailerEpoch::*;
        let cases = [
            ("keel: update a.txt\n\nKeel-Epoch: 7\n", Epoch(7)),
            ("keel: update a.txt\n\nbody text\n\nKeel-Epoch: 7", Epoch(7)),
            ("subject\n\nSigned-off-by: x <x@y>\nkeel-epoch:12\n", Epoch(12)),
            ("subject\r\n\r\nKeel-Epoch: 3\r\n", Epoch(3)),
            // The oldest of several.
            ("s\n\nKeel-Epoch: 9\nKeel-Epoch: 4\n", Epoch(4)),
            ("s\n\nKeel-Epoch: 4\nKeel-Epoch: 9\n", Epoch(4)),
            ("s\n\nKeel-Epoch: soon\n", Invalid("soon".into())),
            ("s\n\nKeel-Epoch: -1\n", Invalid("-1".into())),
            // The subject is never a trailer; prose above the last paragraph does not count.
            ("Keel-Epoch: 5\n", Missing),
            ("s\n\nKeel-Epoch: 5\n\nthe end\n", Missing),
            ("just a subject", Missing),
            ("", Missing),
            ("s\n\nKeel-Epochs: 5\n", Missing),
        ];
        for (message, want) in cases {
            assert_eq!(keel_epoch(message), want, "{message:?}");
        }
    }

    #[test]
    fn decisions() {
        use TrailerEpoch::*;
        let refused = |v: Verdict, needle: &str| match v {
            Verdict::Refuse(r) => assert!(r.contains(needle), "{r}"),
            Verdict::Allow => panic!("allowed, wanted a refusal naming {needle:?}"),
        };
        // Current or newer epochs pass; people's commits pass unless trailers are required.
        assert_eq!(
            decide(&[c("a", Epoch(5)), c("b", Missing)], Some(5), false),
            Verdict::Allow
        );
        assert_eq!(decide(&[c("a", Epoch(6))], Some(5), true), Verdict::Allow);
        assert_eq!(decide(&[c("a", Missing)], None, false), Verdict::Allow);
        assert_eq!(decide(&[], None, true), Verdict::Allow);
        // A deposed primary's commit, anywhere in the push.
        refused(
            decide(&[c("a", Epoch(5)), c("bbbb", Epoch(4))], Some(5), false),
            "bbbb carries Keel-Epoch 4",
        );
        refused(decide(&[c("a", Missing)], Some(5), true), "no Keel-Epoch trailer");
        refused(decide(&[c("a", Invalid("x".into()))], Some(5), false), "unreadable");
        // Fail closed when the epoch is unknown.
        refused(decide(&[c("a", Epoch(9))], None, false), "unknown");
        assert!(needs_epoch(&[c("a", Missing), c("b", Epoch(1))]));
        assert!(!needs_epoch(&[c("a", Missing), c("b", Invalid("x".into()))]));
    }

    #[test]
    fn pre_receive_input() {
        let z = "0".repeat(40);
        let got = parse_updates(&format!("{z} abc refs/heads/main\n\nabc def refs/tags/v1\n")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            RefUpdate {
                old: z.clone(),
                new: "abc".into(),
                refname: "refs/heads/main".into()
            }
        );
        assert!(parse_updates("abc refs/heads/main\n").is_err());
        assert!(is_zero(&z) && is_zero(&"0".repeat(64)) && !is_zero("") && !is_zero("0a"));
        assert_eq!(guarded_ref("main"), "refs/heads/main");
        assert_eq!(guarded_ref("refs/heads/cfg"), "refs/heads/cfg");
    }
}
