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
