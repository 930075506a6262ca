//! Configuration of the agent and the redaction of the secrets it carries.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::GitSyncError;

/// What the agent syncs and how it authenticates.
///
/// The node builds this from `[gitsync]` in TOML, `--gitsync-*` flags and `KEEL_*` variables; a token read from
/// an env var or a file arrives here already resolved. `Debug` never prints a secret or a URL password.
#[derive(Clone, PartialEq, Eq)]
pub struct GitSyncConfig {
    /// Remote URL: `file://`, a local path, `git://`, `https://` (with [`token`](Self::token)) or `ssh://` /
    /// `user@host:path` (with [`ssh_key`](Self::ssh_key), needs the crate feature `ssh`).
    pub repo: String,
    /// Branch name without `refs/heads/`.
    pub branch: String,
    /// Directory inside the repository that is materialised; `""` (or `"/"`) is the whole repository.
    pub path: String,
    /// Time between two polls when nothing kicks the agent.
    pub interval: Duration,
    /// Shared secret of webhooks. `None` refuses every webhook.
    pub webhook_secret: Option<String>,
    /// Password / personal access token for `https://` remotes.
    pub token: Option<String>,
    /// Private key file for ssh remotes.
    pub ssh_key: Option<PathBuf>,
    /// OpenSSH `known_hosts` file that must list the ssh server's host key. `None` leaves the check to libgit2,
    /// which reads `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
}

impl GitSyncConfig {
    /// The poll interval used when none is configured (DESIGN.md: 60 s).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

    /// A config for `repo`/`branch`, the whole repository, the default interval and no secrets.
    pub fn new(repo: impl Into<String>, branch: impl Into<String>) -> Self {
        GitSyncConfig {
            repo: repo.into(),
            branch: branch.into(),
            path: String::new(),
            interval: Self::DEFAULT_INTERVAL,
            webhook_secret: None,
            token: None,
            ssh_key: None,
            known_hosts: None,
        }
    }

    /// Checks what can be checked without touching the network.
    pub fn validate(&self) -> Result<(), GitSyncError> {
        if self.repo.trim().is_empty() {
            return Err(GitSyncError::Config("repository url is empty".into()));
        }
        if self.branch.is_empty() || !git2::Reference::is_valid_name(&format!("refs/heads/{}", self.branch)) {
            return Err(GitSyncError::Config(format!("invalid branch name {:?}", self.branch)));
        }
        if self.interval.is_zero() {
            return Err(GitSyncError::Config("interval must be greater than zero".into()));
        }
        if matches!(&self.webhook_secret, Some(s) if s.is_empty()) {
            return Err(GitSyncError::Config(
                "webhook secret is empty (leave it unset to refuse webhooks)".into(),
            ));
        }
        self.path_components()?;
        Ok(())
    }

    /// `path` split into components, `[]` for the whole repository. Rejects `..`, `.` and empty components
    /// other than leading/trailing slashes.
    pub(crate) fn path_components(&self) -> Result<Vec<String>, GitSyncError> {
        let trimmed = self.path.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Vec::new());
        }
        split_components(trimmed)
            .map_err(|reason| GitSyncError::Config(format!("invalid path {:?}: {reason}", self.path)))
    }

    /// The repository URL with any password (or, for http(s), any user info, which often is a token) replaced.
    pub fn redacted_repo(&self) -> String {
        redact_url(&self.repo)
    }

    /// A redactor that removes every secret of this config from a message.
    pub(crate) fn redactor(&self) -> Redactor {
        let mut secrets = Vec::new();
        secrets.extend(self.token.iter().filter(|s| !s.is_empty()).cloned());
        secrets.extend(self.webhook_secret.iter().filter(|s| !s.is_empty()).cloned());
        if let Some(userinfo) = url_userinfo(&self.repo) {
            // The whole user info, and the password alone (libgit2 sometimes quotes only parts of a URL).
            secrets.push(userinfo.to_string());
            if let Some((_, password)) = userinfo.split_once(':') {
                if !password.is_empty() {
                    secrets.push(password.to_string());
                }
            }
        }
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor {
            url: self.repo.clone(),
            redacted_url: redact_url(&self.repo),
            secrets,
        }
    }
}

impl fmt::Debug for GitSyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("GitSyncConfig")
            .field("repo", &redact_url(&self.repo))
            .field("branch", &self.branch)
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("webhook_secret", &hidden(&self.webhook_secret))
            .field("token", &hidden(&self.token))
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

/// Splits a relative path on `/` and rejects components that could escape or alias a directory.
pub(crate) fn split_components(path: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` and `..` are not allowed"),
            p if p.eq_ignore_ascii_case(".git") => return Err("`.git` is not allowed"),
            p if p.contains(['\\', '\0']) => return Err("backslash and nul are not allowed"),
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// The user info of `scheme://userinfo@host/...`, if any.
fn url_userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo)
}

/// `https://user:pw@host/x` → `https://user:***@host/x`; `https://tok@host/x` → `https://***@host/x` (a lone
/// user name over http(s) is usually a token); `ssh://git@host/x` stays as it is.
pub fn redact_url(url: &str) -> String {
    let Some(userinfo) = url_userinfo(url) else {
        return url.to_string();
    };
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let replacement = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("http") => "***".to_string(),
        None => return url.to_string(),
    };
    // The user info is the first thing after "://", so replace only that occurrence.
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    format!("{}{}{}", &url[..start], replacement, &url[start + userinfo.len()..])
}

/// Removes the secrets of one config from messages (libgit2 errors quote URLs, servers echo input).
#[derive(Clone)]
pub(crate) struct Redactor {
    url: String,
    redacted_url: String,
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn redact(&self, message: &str) -> String {
        let mut out = message.replace(&self.url, &self.redacted_url);
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_redaction_hide_secrets() {
        let mut c = GitSyncConfig::new("https://bob:hunter2@example.com/org/repo.git", "main");
        c.token = Some("ghp_TOKEN".into());
        c.webhook_secret = Some("whsecret".into());
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("ghp_TOKEN") && !dbg.contains("whsecret"),
            "{dbg}"
        );
        assert!(dbg.contains("https://bob:***@example.com/org/repo.git"), "{dbg}");
        let r = c.redactor();
        let msg = r.redact("failed https://bob:hunter2@example.com/org/repo.git with ghp_TOKEN and whsecret hunter2");
        assert_eq!(
            msg,
            "failed https://bob:***@example.com/org/repo.git with *** and *** ***"
        );
        assert_eq!(redact_url("https://tok123@h/x"), "https://***@h/x");
        assert_eq!(redact_url("ssh://git@h/x"), "ssh://git@h/x");
        assert_eq!(redact_url("file:///tmp/x"), "file:///tmp/x");
        assert_eq!(redact_url("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }

    #[test]
    fn validate_rejects_bad_values() {
        let ok = GitSyncConfig::new("file:///x", "main");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.branch = "bad..name".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.path = "a/../b".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.path = "/shared/".into();
        assert_eq!(c.path_components().unwrap(), vec!["shared".to_string()]);
        let mut c = ok;
        c.interval = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
