//! Version control systems repovault can back up, behind one interface ([`System`]): the
//! commands (`run`, `backup`, `restore`, `verify`, `lag`), the change feeds and the stores
//! treat git and Mercurial alike and ask `vcs.system()` for what differs, never branching on
//! which one it is.

pub mod git;
pub mod hg;

use std::path::Path;

use anyhow::Result;
use chrono::{DateTime, Utc};

pub use crate::snapshot::Vcs;
use crate::{
    backup::{BackupReport, Job},
    snapshot::Snapshot,
    store::{Store, StoredSnapshot},
};

/// A cheap summary of the files of a repository that change when its history or refs do,
/// from file metadata only: deciding "changed since the last snapshot" costs a few `stat`
/// calls, which planning pays for every repository of the forge each night.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStat {
    /// BLAKE3 over those files' paths and metadata; compared with the one a snapshot
    /// recorded.
    pub fingerprint: String,
    /// The newest modification time among them: when the repository last changed.
    pub changed_at: DateTime<Utc>,
}

/// What a version control system does for the commands.
pub trait System: Sync {
    /// The source's change summary, without reading history.
    fn source_stat(&self, path: &Path) -> SourceStat;

    /// Whether `snapshot` holds the source's current state: the same fingerprint, or (the
    /// files were rewritten without a change) the same refs read now.
    fn holds_current_state(&self, path: &Path, snapshot: &Snapshot) -> bool;

    /// Backs up the source as `job` says; writes the snapshot last.
    fn back_up(&self, job: Job<'_>) -> Result<BackupReport>;

    /// Rebuilds the repository of the last snapshot of `chain` in `dest`, a new empty
    /// directory, from the store alone.
    fn restore(&self, store: &Store, chain: &[StoredSnapshot], dest: &Path) -> Result<()>;

    /// `verify --deep`: rebuilds the last snapshot of `chain` under `scratch` (an empty
    /// directory) and checks the result with the system's own tools.
    fn deep_check(&self, store: &Store, chain: &[StoredSnapshot], scratch: &Path) -> Result<()>;
}

impl Vcs {
    pub fn system(self) -> &'static dyn System {
        match self {
            Vcs::Git => &git::Git,
            Vcs::Hg => &hg::Hg,
        }
    }
}

/// Which version control system the repository at `path` is: a bare git repository or a
/// working copy with `.git`, or one with `.hg`. Bare git is tested first: on a forge's disk
/// nearly every repository is one.
pub fn detect(path: &Path) -> Option<Vcs> {
    let is_bare_git = path.join("HEAD").is_file() && path.join("objects").is_dir() && path.join("refs").is_dir();
    if is_bare_git || path.join(".git").exists() {
        Some(Vcs::Git)
    } else if path.join(".hg").is_dir() {
        Some(Vcs::Hg)
    } else {
        None
    }
}
