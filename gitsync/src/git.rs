//! libgit2 work: open the bare repository, fetch, push, and build the commit of an edit. Everything here
//! blocks; callers run it on `spawn_blocking` while holding the agent's work lock.

use std::cell::RefCell;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, ObjectType, Oid, PushOptions,
    RemoteCallbacks, Repository, RepositoryInitOptions, Signature, Tree,
};

use crate::config::{GitSyncConfig, Redactor};
use crate::error::GitSyncError;
use crate::known_hosts;
use crate::status::CommitInfo;

/// A transfer that is still moving data after this long is aborted (from the progress callback). A peer that
/// sends nothing at all is only cut off by libgit2's socket timeout: see [`crate::set_network_timeouts`].
const TRANSFER_DEADLINE: Duration = Duration::from_secs(600);

/// The ref that keeps the served commit (and so the shallow fetch's "have") alive in the bare repository.
pub(crate) const CURRENT_REF: &str = "refs/keel/current";
/// Scratch ref used as the source of a push (libgit2 pushes refs, not bare object ids).
const PUSH_REF: &str = "refs/keel/push";

pub(crate) const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_EXEC: i32 = 0o100755;

/// Whether the transport of `url` can do a shallow (depth 1) fetch. libgit2's local transport (`file://`,
/// plain paths) refuses depth ("shallow fetch is not supported by the local transport"); the smart protocols
/// (git://, http(s)://, ssh) support it.
pub(crate) fn transport_allows_shallow(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("file://") || lower.starts_with('/') || lower.starts_with('.') {
        return false;
    }
    if ["git://", "http://", "https://", "ssh://", "git+ssh://", "ssh+git://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return true;
    }
    // scp-like `user@host:path`: a colon before any slash.
    matches!(url.find(':'), Some(i) if !url[..i].contains('/'))
}

pub(crate) fn open_or_init(path: &Path, r: &Redactor) -> Result<Repository, GitSyncError> {
    if path.join("HEAD").exists() {
        // Not `open_bare`: libgit2 1.9's git_repository_open_bare does not load the `shallow` grafts, so walks
        // (push, merge-base) would step past the shallow boundary into missing parents.
        return Repository::open(path).map_err(|e| GitSyncError::git(r, "open repository", e));
    }
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true).no_reinit(true).initial_head("keel-unused");
    Repository::init_opts(path, &opts).map_err(|e| GitSyncError::git(r, "create repository", e))
}

/// Removes lock files a crash can leave in the bare repository; a stale `refs/....lock` would make every later
/// ref update fail. Only safe because one process owns the data dir (the node holds its lock file).
pub(crate) fn remove_stale_locks(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if entry.file_name() != "objects" {
                remove_stale_locks(&path)?;
            }
        } else if path.extension().is_some_and(|e| e == "lock") {
            tracing::warn!(path = %path.display(), "gitsync: removing stale lock file");
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Why the last transfer's ssh host key was refused: libgit2 replaces the certificate callback's error message
/// with a generic "invalid or unknown remote ssh hostkey", so the callback keeps its own here.
type HostKeyError = RefCell<Option<String>>;

/// The transfer error, with the host key check's own message when that is what failed.
fn remote_error(r: &Redactor, op: &str, e: git2::Error, host_key: HostKeyError) -> GitSyncError {
    match host_key.into_inner() {
        Some(message) => GitSyncError::Auth(r.redact(&format!("{op}: {message}"))),
        None => GitSyncError::remote(r, op, e),
    }
}

/// What the remote said about a push: the ref's rejection status, if any, and its messages (a
/// hook's stderr, shown to a git user as `remote: ...`), the last [`REMOTE_TEXT_MAX`] bytes.
#[derive(Default)]
pub(crate) struct PushReport {
    rejected: RefCell<Option<String>>,
    remote_text: RefCell<String>,
}

/// How much of the remote's messages a push rejection quotes.
const REMOTE_TEXT_MAX: usize = 2048;

fn callbacks<'a>(
    config: &'a GitSyncConfig,
    push: Option<&'a PushReport>,
    host_key_error: &'a HostKeyError,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut attempts = 0u32;
    cb.credentials(move |_url, username_from_url, allowed| {
        // libgit2 calls again after the server refused a credential; a second call means it was refused.
        attempts += 1;
        if attempts > 1 {
            return Err(git2::Error::from_str("credentials rejected by the remote"));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &config.ssh_key {
                return Cred::ssh_key(username_from_url.unwrap_or("git"), None, key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(token) = &config.token {
                // GitHub, Gitea and GitLab accept a token as the password with any user name.
                return Cred::userpass_plaintext(username_from_url.unwrap_or("x-access-token"), token);
            }
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username_from_url.unwrap_or("git"));
        }
        Err(git2::Error::from_str(
            "no credentials configured for this remote (token or ssh key)",
        ))
    });
    if let Some(known_hosts) = &config.known_hosts {
        let host = known_hosts::ssh_host_port(&config.repo);
        cb.certificate_check(move |cert, _| {
            // https certificates keep libgit2's own (system CA) verification.
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let fail = |m: String| {
                let e = git2::Error::from_str(&m);
                *host_key_error.borrow_mut() = Some(m);
                Err(e)
            };
            let Some(blob) = hostkey.hostkey() else {
                return fail("the ssh server's raw host key is not available to check against known_hosts".into());
            };
            let Some((host, port)) = &host else {
                return fail("cannot tell the ssh host and port of the repository url".into());
            };
            let name = known_hosts::known_hosts_name(host, *port);
            let text = fs::read_to_string(known_hosts)
                .map_err(|e| git2::Error::from_str(&format!("read known_hosts {}: {e}", known_hosts.display())))?;
            let print = known_hosts::fingerprint(blob);
            match known_hosts::check(&text, &name, blob) {
                known_hosts::Verdict::Trusted => Ok(CertificateCheckStatus::CertificateOk),
                known_hosts::Verdict::Revoked => fail(format!(
                    "ssh host key {print} of {name} is marked @revoked in {}",
                    known_hosts.display()
                )),
                known_hosts::Verdict::Mismatch => fail(format!(
                    "ssh host key {print} of {name} does not match the key(s) listed for it in {} \
                     (host key changed: possible man-in-the-middle; check with the server's operator)",
                    known_hosts.display()
                )),
                known_hosts::Verdict::Unknown { hashed } => fail(format!(
                    "ssh host key {print} of {name} is not in {}{}; after checking the fingerprint, add it with \
                     `ssh-keyscan -p {port} {host} >> {}`",
                    known_hosts.display(),
                    if hashed > 0 {
                        " (its hashed entries cannot be checked)"
                    } else {
                        ""
                    },
                    known_hosts.display()
                )),
            }
        });
    }
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    cb.transfer_progress(move |_| Instant::now() < deadline);
    if let Some(push) = push {
        cb.push_update_reference(move |_refname, status| {
            if let Some(message) = status {
                *push.rejected.borrow_mut() = Some(message.to_string());
            }
            Ok(())
        });
        cb.sideband_progress(move |data| {
            let mut text = push.remote_text.borrow_mut();
            text.push_str(&String::from_utf8_lossy(data));
            if text.len() > REMOTE_TEXT_MAX {
                let mut cut = text.len() - REMOTE_TEXT_MAX;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text.drain(..cut);
            }
            true
        });
    }
    cb
}

/// The tracking ref the fetch writes.
pub(crate) fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Fetches the branch into `refs/remotes/origin/<branch>` (forced: whether it is a fast-forward is decided by
/// the caller against the served commit) and returns its commit. `depth` 0 = everything missing.
pub(crate) fn fetch(repo: &Repository, config: &GitSyncConfig, r: &Redactor, depth: i32) -> Result<Oid, GitSyncError> {
    let tracking = tracking_ref(&config.branch);
    // Forget the old tip first, so a branch deleted upstream is reported rather than the stale tip served.
    // The served commit stays referenced by refs/keel/current, which is also what the fetch offers as "have".
    if let Ok(mut old) = repo.find_reference(&tracking) {
        old.delete()
            .map_err(|e| GitSyncError::git(r, "delete tracking ref", e))?;
    }
    let mut remote = repo
        .remote_anonymous(&config.repo)
        .map_err(|e| GitSyncError::remote(r, "open remote", e))?;
    let host_key = HostKeyError::default();
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks(config, None, &host_key))
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    if depth > 0 {
        opts.depth(depth);
    }
    let refspec = format!("+refs/heads/{}:{tracking}", config.branch);
    let fetched = remote.fetch(&[refspec.as_str()], Some(&mut opts), None);
    drop(opts);
    fetched.map_err(|e| remote_error(r, "fetch", e, host_key))?;
    repo.refname_to_id(&tracking).map_err(|_| {
        GitSyncError::Config(format!(
            "branch {:?} not found in {}",
            config.branch,
            config.redacted_repo()
        ))
    })
}

pub(crate) enum PushResult {
    Pushed,
    Rejected(String),
}

/// Pushes `commit` to the branch without force. A rejection (libgit2's own non-fast-forward check, or the
/// server's per-ref status) is a `Rejected`, anything else an error.
pub(crate) fn push(
    repo: &Repository,
    config: &GitSyncConfig,
    r: &Redactor,
    commit: Oid,
) -> Result<PushResult, GitSyncError> {
    repo.reference(PUSH_REF, commit, true, "keel: push")
        .map_err(|e| GitSyncError::git(r, "set push ref", e))?;
    let mut remote = repo
        .remote_anonymous(&config.repo)
        .map_err(|e| GitSyncError::remote(r, "open remote", e))?;
    let report = PushReport::default();
    let host_key = HostKeyError::default();
    let mut opts = PushOptions::new();
    opts.remote_callbacks(callbacks(config, Some(&report), &host_key));
    let refspec = format!("{PUSH_REF}:refs/heads/{}", config.branch);
    let result = remote.push(&[refspec.as_str()], Some(&mut opts));
    drop(opts);
    match result {
        Ok(()) => {
            let (status, text) = (report.rejected.into_inner(), report.remote_text.into_inner());
            match status {
                Some(status) => {
                    // The remote's own words (a hook's reason) follow git's short status.
                    let said: Vec<&str> = text
                        .split(['\n', '\r'])
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect();
                    let message = if said.is_empty() {
                        status
                    } else {
                        format!("{status} ({})", said.join(" / "))
                    };
                    Ok(PushResult::Rejected(r.redact(&message)))
                }
                None => Ok(PushResult::Pushed),
            }
        }
        Err(e) if e.code() == ErrorCode::NotFastForward => Ok(PushResult::Rejected(r.redact(e.message()))),
        Err(e) => Err(remote_error(r, "push", e, host_key)),
    }
}

pub(crate) fn commit_info(repo: &Repository, oid: Oid, r: &Redactor) -> Result<CommitInfo, GitSyncError> {
    let c = repo
        .find_commit(oid)
        .map_err(|e| GitSyncError::git(r, "read commit", e))?;
    Ok(CommitInfo {
        sha: oid.to_string(),
        time_ms: c.time().seconds() * 1000,
        summary: c.summary().ok().flatten().unwrap_or("").into(),
    })
}

/// `(id, mode)` of the entry at `path` in `commit`'s tree, `None` if absent.
pub(crate) fn entry_at(repo: &Repository, commit: Oid, path: &[String]) -> Result<Option<(Oid, i32)>, GitSyncError> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| GitSyncError::Git(e.message().into()))?;
    Ok(tree
        .get_path(Path::new(&path.join("/")))
        .ok()
        .map(|e| (e.id(), e.filemode())))
}

/// One edit of one file, owned so it can move to a blocking job.
pub(crate) struct Edit {
    /// The path as the caller gave it (relative to the configured `path/`), for messages.
    pub display_path: String,
    /// The full path inside the repository, split.
    pub path: Vec<String>,
    /// New contents; `None` deletes.
    pub contents: Option<Vec<u8>>,
    pub author: (String, String),
    pub time: git2::Time,
    pub message: String,
}

/// Creates (without moving any ref) the commit that applies `edit` on top of `parent`. `Ok(None)` when the
/// edit changes nothing.
pub(crate) fn commit_change(
    repo: &Repository,
    parent: Oid,
    edit: &Edit,
    author: &Signature<'_>,
    r: &Redactor,
) -> Result<Option<Oid>, GitSyncError> {
    let git = |op: &str, e: git2::Error| GitSyncError::git(r, op, e);
    let parent = repo.find_commit(parent).map_err(|e| git("read commit", e))?;
    let base_tree = parent.tree().map_err(|e| git("read tree", e))?;
    let blob = edit
        .contents
        .as_deref()
        .map(|c| repo.blob(c))
        .transpose()
        .map_err(|e| git("write blob", e))?;
    let new_tree = match update_tree(repo, Some(&base_tree), &edit.path, &edit.display_path, blob, r)? {
        Some(oid) => oid,
        None => repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .map_err(|e| git("write tree", e))?,
    };
    if new_tree == base_tree.id() {
        return Ok(None);
    }
    let tree = repo.find_tree(new_tree).map_err(|e| git("read tree", e))?;
    let oid = repo
        .commit(None, author, author, &edit.message, &tree, &[&parent])
        .map_err(|e| git("write commit", e))?;
    Ok(Some(oid))
}

/// Returns the new id of `tree` with the change applied below it, `None` if it became empty (git has no empty
/// directories, so an emptied directory disappears).
fn update_tree(
    repo: &Repository,
    tree: Option<&Tree<'_>>,
    path: &[String],
    display_path: &str,
    blob: Option<Oid>,
    r: &Redactor,
) -> Result<Option<Oid>, GitSyncError> {
    let git = |op: &str, e: git2::Error| GitSyncError::git(r, op, e);
    let Some((name, rest)) = path.split_first() else {
        return Err(GitSyncError::invalid_path(display_path, "empty path"));
    };
    let mut builder = repo.treebuilder(tree).map_err(|e| git("read tree", e))?;
    let existing = builder
        .get(name)
        .map_err(|e| git("read tree", e))?
        .map(|e| (e.id(), e.filemode(), e.kind()));
    if rest.is_empty() {
        match (blob, existing) {
            (_, Some((_, _, Some(ObjectType::Tree)))) => {
                return Err(GitSyncError::invalid_path(display_path, "is a directory"));
            }
            (Some(blob), existing) => {
                // Keep the executable bit of the file being replaced.
                let mode = match existing {
                    Some((_, MODE_BLOB_EXEC, _)) => MODE_BLOB_EXEC,
                    _ => MODE_BLOB,
                };
                builder.insert(name, blob, mode).map_err(|e| git("update tree", e))?;
            }
            (None, Some(_)) => builder.remove(name).map_err(|e| git("update tree", e))?,
            (None, None) => return Err(GitSyncError::NotFound(display_path.to_string())),
        }
    } else {
        let subtree = match existing {
            Some((id, MODE_TREE, _)) => Some(repo.find_tree(id).map_err(|e| git("read tree", e))?),
            Some(_) => return Err(GitSyncError::invalid_path(display_path, format!("{name:?} is a file"))),
            None if blob.is_none() => return Err(GitSyncError::NotFound(display_path.to_string())),
            None => None,
        };
        match update_tree(repo, subtree.as_ref(), rest, display_path, blob, r)? {
            Some(id) => builder.insert(name, id, MODE_TREE).map(drop),
            None => builder.remove(name),
        }
        .map_err(|e| git("update tree", e))?;
    }
    if builder.is_empty() {
        return Ok(None);
    }
    builder.write().map(Some).map_err(|e| git("write tree", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_transports() {
        for url in [
            "https://h/r.git",
            "git://127.0.0.1:9418/r",
            "ssh://git@h/r",
            "git@github.com:o/r.git",
        ] {
            assert!(transport_allows_shallow(url), "{url}");
        }
        for url in ["file:///tmp/r.git", "/tmp/r.git", "./r.git"] {
            assert!(!transport_allows_shallow(url), "{url}");
        }
    }
}
