//! Finding repositories under a directory tree.
//!
//! A directory is a git repository when it is bare (`HEAD`, `objects/`, `refs/`) or holds a
//! `.git`; a Mercurial one when it holds `.hg`. The walk never descends into a repository
//! (a forge's repositories hold thousands of object files each) and never follows symbolic
//! links, so a symlink loop cannot trap it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use walkdir::WalkDir;

use super::{Candidate, Rejected, RejectionKind};

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub repositories: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
}

/// Threads that walk at once: the walk is `stat` and `readdir` calls, bound by file-system
/// latency, which on NFS is worth overlapping.
const WALK_THREADS: usize = 4;

/// Walks `root` and lists the repositories under it, sorted by name.
pub fn scan(root: &Path) -> Result<ScanResult> {
    let meta = std::fs::metadata(root).with_context(|| format!("scan root {}", root.display()))?;
    anyhow::ensure!(meta.is_dir(), "scan root {} is not a directory", root.display());
    if crate::vcs::detect(root).is_some() {
        let reason = "the scan root itself is a repository; scan its parent".to_owned();
        return Ok(ScanResult {
            repositories: Vec::new(),
            rejected: vec![Rejected { path: root.to_owned(), reason, kind: RejectionKind::Unreadable }],
        });
    }
    // The root's entries are walked in parallel, each subtree by one thread.
    let mut tops: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("scan root {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    tops.sort();
    let chunk = tops.len().div_ceil(WALK_THREADS).max(1);
    let parts = std::thread::scope(|scope| {
        let workers: Vec<_> = tops.chunks(chunk).map(|part| scope.spawn(move || walk_subtrees(root, part))).collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).collect::<Vec<_>>()
    });
    let mut result = ScanResult::default();
    for part in parts {
        result.repositories.extend(part.repositories);
        result.rejected.extend(part.rejected);
    }
    result.repositories.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(result)
}

fn walk_subtrees(root: &Path, tops: &[PathBuf]) -> ScanResult {
    let mut result = ScanResult::default();
    for top in tops {
        let mut walk = WalkDir::new(top).follow_links(false).into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e.path().map(Path::to_owned).unwrap_or_else(|| top.to_owned());
                    let reason = format!("cannot read: {e}");
                    result.rejected.push(Rejected { path, reason, kind: RejectionKind::Unreadable });
                    continue;
                }
            };
            if !entry.file_type().is_dir() {
                continue;
            }
            let dir = entry.path();
            let Some(vcs) = crate::vcs::detect(dir) else { continue };
            walk.skip_current_dir();
            match name_of(root, dir) {
                Ok(name) => result.repositories.push(Candidate { name, path: dir.to_owned(), vcs }),
                Err(reason) => {
                    result.rejected.push(Rejected { path: dir.to_owned(), reason, kind: RejectionKind::Refused })
                }
            }
        }
    }
    result
}

fn name_of(root: &Path, dir: &Path) -> std::result::Result<String, String> {
    let relative: PathBuf = dir.strip_prefix(root).map_err(|e| e.to_string())?.to_owned();
    let mut parts = Vec::new();
    for component in relative.components() {
        parts.push(component.as_os_str().to_str().ok_or("name is not valid UTF-8")?.to_owned());
    }
    if parts.is_empty() {
        return Err("the scan root itself is a repository; scan its parent".into());
    }
    let name = parts.join("/");
    crate::name::validate(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcs::Vcs;

    #[test]
    fn finds_nested_bare_and_working_copies_without_descending_or_looping() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("a/work/.git")).unwrap();
        std::fs::create_dir_all(r.join("a/work/sub/.git")).unwrap(); // inside a repo: not listed
        for d in ["b/bare.git/objects", "b/bare.git/refs"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("b/bare.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::create_dir_all(r.join("c/deep/er/hgrepo/.hg")).unwrap();
        std::fs::create_dir_all(r.join("plain/dir")).unwrap();
        std::os::unix::fs::symlink(r, r.join("plain/loop")).unwrap();
        let found = scan(r).unwrap();
        let names: Vec<_> = found.repositories.iter().map(|c| (c.name.as_str(), c.vcs)).collect();
        assert_eq!(names, vec![("a/work", Vcs::Git), ("b/bare.git", Vcs::Git), ("c/deep/er/hgrepo", Vcs::Hg)]);
        assert!(found.rejected.is_empty(), "{:?}", found.rejected);
    }
}
