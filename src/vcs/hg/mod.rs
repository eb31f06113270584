//! Mercurial repositories, read and written through the `hg` command (no maintained Rust
//! crate reads today's repositories or bundles).

use std::path::Path;

use anyhow::{Result, bail};

use super::{SourceStat, System};
use crate::{
    backup::{BackupReport, Job},
    snapshot::Snapshot,
    store::{Store, StoredSnapshot},
};

pub struct Hg;

impl System for Hg {
    fn source_stat(&self, path: &Path) -> SourceStat {
        let files = ["", "bookmarks", "store/00changelog.i", "store/phaseroots"];
        let changed_at = files
            .iter()
            .filter_map(|f| std::fs::metadata(path.join(".hg").join(f)).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
            .into();
        SourceStat { fingerprint: String::new(), changed_at }
    }

    fn holds_current_state(&self, _path: &Path, _snapshot: &Snapshot) -> bool {
        false
    }

    fn back_up(&self, job: Job<'_>) -> Result<BackupReport> {
        bail!("{}: Mercurial repositories are not backed up yet", job.name)
    }

    fn restore(&self, _store: &Store, _chain: &[StoredSnapshot], _dest: &Path) -> Result<()> {
        bail!("Mercurial repositories are not restored yet")
    }

    fn deep_check(&self, _store: &Store, _chain: &[StoredSnapshot], _scratch: &Path) -> Result<()> {
        bail!("Mercurial repositories are not checked yet")
    }
}
