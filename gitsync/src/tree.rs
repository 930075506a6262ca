//! The on-disk layout under `<data_dir>/gitsync/` and the atomic materialisation of trees.
//!
//! ```text
//! gitsync/repo.git/         bare repository (objects, refs/remotes/origin/<branch>, refs/keel/current)
//! gitsync/trees/<sha>/      one complete tree per commit; only ever created by renaming a finished temp dir
//! gitsync/trees/.tmp-*      a tree being written (removed at start-up if a crash left one)
//! gitsync/current           symlink -> trees/<sha>, replaced by renaming a temp symlink over it
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::error::{GitSyncError, IoContext};

const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_EXEC: i32 = 0o100755;
/// Older git wrote group-writable blobs; git itself treats them as 0644.
const MODE_BLOB_GROUP_WRITABLE: i32 = 0o100664;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_suffix() -> String {
    format!("{}-{}", std::process::id(), TEMP_SEQ.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub repo: PathBuf,
    pub trees: PathBuf,
    pub current: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("gitsync");
        Layout {
            repo: root.join("repo.git"),
            trees: root.join("trees"),
            current: root.join("current"),
            root,
        }
    }

    pub fn tree_dir(&self, sha: &str) -> PathBuf {
        self.trees.join(sha)
    }

    /// The commit `current` points at, if the link exists and names a tree.
    pub fn current_sha(&self) -> Option<String> {
        let target = fs::read_link(&self.current).ok()?;
        let name = target.file_name()?.to_str()?;
        (name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_string())
    }

    /// Creates the directories and removes what a crash can leave behind: temp trees and temp symlinks.
    pub fn prepare(&self) -> Result<(), GitSyncError> {
        fs::create_dir_all(&self.trees).op(|| format!("create {}", self.trees.display()))?;
        for dir in [&self.root, &self.trees] {
            for entry in fs::read_dir(dir).op(|| format!("list {}", dir.display()))? {
                let entry = entry.op(|| format!("list {}", dir.display()))?;
                let name = entry.file_name();
                if name.as_bytes().starts_with(b".tmp-") || name.as_bytes().starts_with(b".current.tmp-") {
                    remove_any(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Points `current` at `trees/<sha>` atomically: readers resolve either the old or the new tree. The
    /// rename is the switch point; the directory fsync makes it survive a crash.
    pub fn swap_current(&self, sha: &str) -> Result<(), GitSyncError> {
        let tmp = self.root.join(format!(".current.tmp-{}", temp_suffix()));
        std::os::unix::fs::symlink(Path::new("trees").join(sha), &tmp)
            .op(|| format!("create symlink {}", tmp.display()))?;
        if let Err(e) = fs::rename(&tmp, &self.current) {
            let _ = fs::remove_file(&tmp);
            return Err(GitSyncError::io(
                format!("rename {} to {}", tmp.display(), self.current.display()),
                e,
            ));
        }
        fsync_dir(&self.root)
    }

    /// Removes every tree except `current` and `previous`. With no `previous` known (after a restart) the newest
    /// other tree is kept instead, so there are never more than two.
    pub fn gc(&self, current: &str, previous: Option<&str>) -> Result<usize, GitSyncError> {
        let mut others = Vec::new();
        for entry in fs::read_dir(&self.trees).op(|| format!("list {}", self.trees.display()))? {
            let entry = entry.op(|| format!("list {}", self.trees.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == current {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            others.push((modified, name, entry.path()));
        }
        let keep = match previous {
            Some(p) => Some(p.to_string()),
            None => others
                .iter()
                .filter(|(_, n, _)| !n.starts_with('.'))
                .max()
                .map(|(_, n, _)| n.clone()),
        };
        let mut removed = 0;
        for (_, name, path) in others {
            if Some(&name) == keep.as_ref() {
                continue;
            }
            remove_any(&path)?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn remove_any(path: &Path) -> Result<(), GitSyncError> {
    let meta = fs::symlink_metadata(path).op(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).op(|| format!("remove {}", path.display()))
    } else {
        fs::remove_file(path).op(|| format!("remove {}", path.display()))
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), GitSyncError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .op(|| format!("fsync {}", dir.display()))
}

/// The tree at `path` inside `commit`'s root tree (`[]` = the root).
pub(crate) fn subtree<'r>(repo: &'r Repository, commit: Oid, path: &[String]) -> Result<Tree<'r>, GitSyncError> {
    let git = |op: &str, e: git2::Error| GitSyncError::Git(format!("{op}: {}", e.message()));
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| git(&format!("read commit {commit}"), e))?;
    if path.is_empty() {
        return Ok(root);
    }
    let joined = path.join("/");
    let entry = root
        .get_path(Path::new(&joined))
        .map_err(|_| GitSyncError::Config(format!("path {joined:?} does not exist in commit {commit}")))?;
    if entry.kind() != Some(ObjectType::Tree) {
        return Err(GitSyncError::Config(format!(
            "path {joined:?} is not a directory in commit {commit}"
        )));
    }
    repo.find_tree(entry.id()).map_err(|e| git("read tree", e))
}

/// Writes `path/` of `commit` to `trees/<sha>/` unless that tree already exists (trees are only ever created
/// complete, by renaming a finished temp directory). Returns how many entries were skipped (symlinks and
/// submodules: a symlink in shared config could point readers anywhere on the node, so none is written).
///
/// Durability: file contents are not fsync'd one by one (10,000 fsyncs would dominate a first sync); the rename
/// and the directories are. After a power loss a tree could hold short files: `verify` at start-up catches
/// that and the tree is rebuilt from the object store.
pub(crate) fn materialise(
    repo: &Repository,
    layout: &Layout,
    commit: Oid,
    path: &[String],
) -> Result<u64, GitSyncError> {
    let dest = layout.tree_dir(&commit.to_string());
    if dest.is_dir() {
        return Ok(0);
    }
    let tree = subtree(repo, commit, path)?;
    let tmp = layout.trees.join(format!(".tmp-{commit}-{}", temp_suffix()));
    fs::create_dir(&tmp).op(|| format!("create {}", tmp.display()))?;
    let mut skipped = 0;
    let written = write_tree(repo, &tree, &tmp, &mut skipped)
        .and_then(|()| fs::rename(&tmp, &dest).op(|| format!("rename {} to {}", tmp.display(), dest.display())));
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fsync_dir(&layout.trees)?;
    Ok(skipped)
}

fn entry_name(name: &[u8]) -> Result<&std::ffi::OsStr, GitSyncError> {
    // libgit2 refuses such trees when it parses them, but a tree is input from the network: check again.
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(GitSyncError::Git(format!(
            "tree has an unsafe entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(std::ffi::OsStr::from_bytes(name))
}

fn write_tree(repo: &Repository, tree: &Tree<'_>, dir: &Path, skipped: &mut u64) -> Result<(), GitSyncError> {
    let git = |op: &str, e: git2::Error| GitSyncError::Git(format!("{op}: {}", e.message()));
    for entry in tree.iter() {
        let path = dir.join(entry_name(entry.name_bytes())?);
        match entry.filemode() {
            MODE_TREE => {
                fs::create_dir(&path).op(|| format!("create {}", path.display()))?;
                let sub = repo.find_tree(entry.id()).map_err(|e| git("read tree", e))?;
                write_tree(repo, &sub, &path, skipped)?;
            }
            mode @ (MODE_BLOB | MODE_BLOB_EXEC | MODE_BLOB_GROUP_WRITABLE) => {
                let blob = repo.find_blob(entry.id()).map_err(|e| git("read blob", e))?;
                let perm = if mode == MODE_BLOB_EXEC { 0o755 } else { 0o644 };
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm)
                    .open(&path)
                    .op(|| format!("create {}", path.display()))?;
                file.write_all(blob.content())
                    .op(|| format!("write {}", path.display()))?;
            }
            mode => {
                tracing::debug!(path = %path.display(), mode = format!("{mode:o}"), "gitsync: skipping symlink/submodule");
                *skipped += 1;
            }
        }
    }
    Ok(())
}

/// Checks that `dir` holds every file and directory of `path/` of `commit` with the right size (cheap: a stat
/// per file and a header read per blob). Used at start-up to catch a tree damaged by a power loss.
pub(crate) fn verify(repo: &Repository, commit: Oid, path: &[String], dir: &Path) -> Result<bool, GitSyncError> {
    let tree = subtree(repo, commit, path)?;
    let odb = repo
        .odb()
        .map_err(|e| GitSyncError::Git(format!("open object database: {}", e.message())))?;
    verify_tree(repo, &odb, &tree, dir)
}

fn verify_tree(repo: &Repository, odb: &git2::Odb<'_>, tree: &Tree<'_>, dir: &Path) -> Result<bool, GitSyncError> {
    for entry in tree.iter() {
        let path = dir.join(entry_name(entry.name_bytes())?);
        match entry.filemode() {
            MODE_TREE => {
                let Ok(sub) = repo.find_tree(entry.id()) else {
                    return Ok(false);
                };
                if !path.is_dir() || !verify_tree(repo, odb, &sub, &path)? {
                    return Ok(false);
                }
            }
            MODE_BLOB | MODE_BLOB_EXEC | MODE_BLOB_GROUP_WRITABLE => {
                let Ok((size, _)) = odb.read_header(entry.id()) else {
                    return Ok(false);
                };
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() == size as u64 => {}
                    _ => return Ok(false),
                }
            }
            _ => {}
        }
    }
    Ok(true)
}
