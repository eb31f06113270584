//! Mercurial repositories, read and written through the `hg` command (no maintained Rust
//! crate reads today's repositories or bundles).
//!
//! - `command`: how hg is run (a clean environment; the repository's hooks never run).
//! - `requirements`: which repository formats a restore reproduces; others are refused.
//! - `source`: change detection from file metadata, a structural revlog check, heads, refs.
//! - `backup`: a bundle of what is new since the previous snapshot's heads, and the files
//!   no bundle carries.
//! - `restore`: `hg init` + `hg unbundle` + those files; `hg verify` judged by its output.

pub mod backup;
pub mod command;
pub mod requirements;
pub mod restore;
pub mod source;

use std::path::Path;

use anyhow::{Context as _, Result};

use super::{SourceStat, System};
use crate::{
    backup::{BackupReport, Job},
    snapshot::Snapshot,
    store::{Store, StoredSnapshot},
};

pub struct Hg;

impl System for Hg {
    fn source_stat(&self, path: &Path) -> SourceStat {
        source::stat(path)
    }

    fn holds_current_state(&self, path: &Path, snapshot: &Snapshot) -> bool {
        if snapshot.source_fingerprint.as_deref() == Some(source::stat(path).fingerprint.as_str()) {
            return true;
        }
        // The files were rewritten (same content, new inode or time): compare what they say.
        let bookmarks = source::BOOKMARK_FILES.iter().find_map(|f| std::fs::read(path.join(f)).ok());
        let Ok(refs) = source::refs(path, bookmarks.as_deref()) else { return false };
        let Ok(heads) = source::all_heads(path) else { return false };
        let mut recorded = snapshot.heads.clone();
        recorded.sort();
        refs == snapshot.refs && heads == recorded
    }

    fn back_up(&self, job: Job<'_>) -> Result<BackupReport> {
        backup::back_up(job)
    }

    fn restore(&self, store: &Store, chain: &[StoredSnapshot], dest: &Path) -> Result<()> {
        let latest = chain.last().context("an empty chain")?;
        restore::build(store, &latest.snapshot, dest)
    }

    fn deep_check(&self, store: &Store, chain: &[StoredSnapshot], scratch: &Path) -> Result<()> {
        let latest = chain.last().context("an empty chain")?;
        let target = scratch.join("repo");
        restore::build(store, &latest.snapshot, &target)?;
        restore::verify(&target)
    }
}
