//! Run records: what each `run` did, kept in `runs/` for `lag --prometheus` and for people
//! (see docs/FORMAT.md).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{STAMP_FORMAT, Store, hash_hex};

/// What one `run` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub host: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub examined: u64,
    pub changed: u64,
    pub backed_up: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub gone: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub failed_repos: Vec<String>,
    /// Repositories the store holds that the feed no longer lists (added in 0.2: absent in
    /// older records, hence the defaults).
    #[serde(default)]
    pub gone_repos: Vec<String>,
    /// Found but not backed up by design (a Mercurial repository, a refused name).
    #[serde(default)]
    pub not_backed_up: u64,
    #[serde(default)]
    pub not_backed_up_repos: Vec<NotBackedUp>,
    /// The `--scan` root, absolute, and whether it was a mount point: a root that was a
    /// mount point and no longer is has been unmounted, which the next run refuses to take
    /// for a night on which every repository was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_root_was_mount_point: Option<bool>,
}

/// A repository found at the source but not backed up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotBackedUp {
    /// Its NAME, when it has a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub path: String,
    pub why: String,
}

impl Store {
    /// Records what a `run` did, for `lag --prometheus` and for people.
    pub fn write_run_record(&self, record: &RunRecord) -> Result<()> {
        self.backend.create_dir("runs")?;
        let bytes = serde_json::to_vec_pretty(record)?;
        let file = format!("runs/{}-{}", record.finished_at.format(STAMP_FORMAT), &hash_hex(&bytes)[..16]);
        self.backend.write_new(&file, &bytes).with_context(|| format!("store {}: writing {file}", self.location()))?;
        Ok(())
    }

    /// The most recent run record, if any run finished.
    pub fn last_run_record(&self) -> Result<Option<RunRecord>> {
        let Some(last) = self.backend.list("runs")?.pop() else {
            return Ok(None);
        };
        let raw = self.backend.read(&format!("runs/{last}"))?;
        Ok(Some(
            serde_json::from_slice(&raw)
                .with_context(|| format!("store {}: runs/{last} does not parse", self.location()))?,
        ))
    }
}
