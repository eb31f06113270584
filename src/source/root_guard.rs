//! Telling a quiet night from a missing forge.
//!
//! A scan of an empty directory finds no repository, and without a check every repository
//! in the store would be reported "gone" (deleted at the source) and the night would look
//! fine. That is what an unmounted disk, a mount that failed at boot or a wrong `--scan`
//! path looks like. So before `run` or `lag` accept a scan, they ask two questions:
//!
//! - was the scan root a mount point at the previous run (recorded in the run record) and is
//!   it no longer one? Then its file system is not mounted.
//! - does the scan lack more than half of the repositories the store holds (a store of at
//!   least two)? Forges do not delete most of their repositories in one day. Repositories
//!   the previous run already listed as gone (acknowledged with `--allow-gone`, or gone one
//!   by one) are left out of both counts: only what vanished since counts, so the operator
//!   says once that a mass deletion was real and the next nights run.
//!
//! Either is an environment error (exit 2) naming the root, unless the operator says the
//! deletions are real (`--allow-gone`).
//!
//! The root is compared resolved (canonical: absolute, symlinks and `..` resolved, no
//! trailing slash): `mnt`, `mnt/`, `./mnt` and a symlink to it are the same root, so spelling
//! the path differently cannot bypass the mount point check.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{error::usage, store::RunRecord};

/// What the scan root looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRoot {
    /// Canonical (absolute as given when it cannot be resolved, e.g. missing).
    pub path: PathBuf,
    pub mount_point: bool,
}

impl ScanRoot {
    pub fn observe(root: &Path) -> ScanRoot {
        let path = resolve(root);
        let mount_point = is_mount_point(&path);
        ScanRoot { path, mount_point }
    }

    /// Whether `recorded` (a run record's scan root) is this root. Records before roots were
    /// recorded canonical hold the absolute path as typed: it is resolved now.
    fn is(&self, recorded: &str) -> bool {
        recorded == self.display() || resolve(Path::new(recorded)) == self.path
    }

    pub fn display(&self) -> String {
        crate::output::path(&self.path)
    }
}

/// A scan root resolved: canonical when it exists, else absolute as given.
pub fn resolve(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| std::path::absolute(root).unwrap_or_else(|_| root.to_owned()))
}

/// How many of the store's repositories the feed no longer lists.
#[derive(Debug, Clone, Copy)]
pub struct GoneCount {
    pub gone: usize,
    /// Repositories with snapshots in the store.
    pub stored: usize,
}

impl GoneCount {
    /// Tonight's count, leaving out the repositories the previous run already listed as
    /// gone: `gone` are tonight's gone names, `stored` the number of repositories the
    /// store holds.
    pub fn since(previous: Option<&RunRecord>, gone: &[&str], stored: usize) -> GoneCount {
        let already = previous.map_or(0, |p| gone.iter().filter(|g| p.gone_repos.iter().any(|r| r == *g)).count());
        GoneCount { gone: gone.len() - already, stored: stored.saturating_sub(already) }
    }
}

/// True when more than half of the store's repositories (of at least two) vanished at once.
pub fn most_are_gone(count: GoneCount) -> bool {
    count.stored >= 2 && count.gone * 2 > count.stored
}

/// Refuses a scan that looks like a missing forge rather than deletions: a usage error
/// (exit 2) naming the root and the way out. `root` is `None` for a feed that is not a scan.
pub fn check(root: Option<&ScanRoot>, previous: Option<&RunRecord>, count: GoneCount) -> anyhow::Result<()> {
    let source = root.map_or_else(|| "the change feed".to_owned(), |r| format!("scan root {}", r.display()));
    if let (Some(root), Some(previous)) = (root, previous)
        && previous.scan_root.as_deref().is_some_and(|recorded| root.is(recorded))
        && previous.scan_root_was_mount_point == Some(true)
        && !root.mount_point
    {
        return Err(usage(format!(
            "{source} is not a mount point, but it was one at the previous run ({}): its file system is not \
             mounted? Refusing to take its {} missing repositories for deleted; mount it, or pass --allow-gone \
             if the change is intended",
            previous.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            count.gone
        )));
    }
    if most_are_gone(count) {
        return Err(usage(format!(
            "{source} lacks {} of the {} repositories the store holds (not counting those already gone at \
             the previous run): is it empty or not mounted? Refusing to take them for deleted; pass \
             --allow-gone if they really were",
            count.gone, count.stored
        )));
    }
    Ok(())
}

/// A mount point: on another device than its parent (or `/`), or listed as one in the
/// kernel's mount table (a bind mount of the same file system keeps the device).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Ok(parent)) = (std::fs::metadata(path), std::fs::metadata(path.join(".."))) else {
        return false;
    };
    if meta.dev() != parent.dev() || meta.ino() == parent.ino() {
        return true;
    }
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().filter_map(|line| line.split(' ').nth(4)).any(|mount| Path::new(&unescape_octal(mount)) == canonical)
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_the_store_gone_is_suspicious_but_one_deletion_is_not() {
        let count = |gone, stored| GoneCount { gone, stored };
        assert!(!most_are_gone(count(1, 1)), "a store of one repository proves nothing");
        assert!(!most_are_gone(count(1, 2)));
        assert!(most_are_gone(count(2, 2)));
        assert!(!most_are_gone(count(26, 52)));
        assert!(most_are_gone(count(27, 52)));
        assert!(!most_are_gone(count(0, 0)));
    }

    fn record_with_gone(gone: &[&str]) -> RunRecord {
        let mut record: RunRecord = serde_json::from_value(serde_json::json!({
            "host": "h", "started_at": "2026-11-30T01:00:00Z", "finished_at": "2026-11-30T01:05:00Z",
            "examined": 0, "changed": 0, "backed_up": 0, "unchanged": 0, "failed": 0, "gone": 0,
            "bytes_read": 0, "bytes_stored": 0, "failed_repos": []
        }))
        .unwrap();
        record.gone_repos = gone.iter().map(|g| g.to_string()).collect();
        record
    }

    #[test]
    fn repositories_already_gone_at_the_previous_run_do_not_count_again() {
        let previous = record_with_gone(&["a", "b", "c", "d"]);
        let tonight = GoneCount::since(Some(&previous), &["a", "b", "c", "d"], 6);
        assert_eq!((tonight.gone, tonight.stored), (0, 2));
        assert!(!most_are_gone(tonight));
        let one_more = GoneCount::since(Some(&previous), &["a", "b", "c", "d", "e"], 6);
        assert_eq!((one_more.gone, one_more.stored), (1, 2));
        let both = GoneCount::since(Some(&previous), &["a", "b", "c", "d", "e", "f"], 6);
        assert!(most_are_gone(both), "the rest vanishing at once is still suspicious");
        let first = GoneCount::since(None, &["a", "b", "c", "d"], 6);
        assert!(most_are_gone(first));
    }

    #[test]
    fn a_root_spelled_differently_is_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mnt");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&root, dir.path().join("link")).unwrap();
        let canonical = ScanRoot::observe(&root);
        for spelling in [dir.path().join("mnt/"), dir.path().join("link"), dir.path().join("mnt/../mnt")] {
            let observed = ScanRoot::observe(&spelling);
            assert_eq!(observed, canonical, "{spelling:?}");
            assert!(observed.is(&root.to_string_lossy()));
        }
    }

    #[test]
    fn the_root_directory_and_proc_are_mount_points_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plain")).unwrap();
        assert!(!is_mount_point(&dir.path().join("plain")));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/srv/my\040git"), "/srv/my git");
        assert_eq!(unescape_octal(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
    }
}
