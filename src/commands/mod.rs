//! One module per subcommand, mirroring the CLI. Each has an `Args` (clap) and a `run`
//! returning the [`Outcome`] that `main` turns into an exit code.

pub mod backup;
pub mod init;
pub mod lag;
pub mod restore;
pub mod run;
pub mod snapshots;
pub mod verify;

use std::path::PathBuf;

use clap::Args;

use crate::error::usage;

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked was done (exit 0).
    Done,
    /// Some of the work failed (exit 1).
    PartlyFailed,
    /// `verify` found damage (exit 3).
    Damaged,
    /// `lag` found a repository above `--max-lag` (exit 4).
    Stale,
}

/// The `--store` option shared by every command that reads or writes a store.
#[derive(Debug, Clone, Args)]
pub struct StoreArg {
    /// The store: a local or NFS path (ssh:// stores are planned).
    #[arg(long, env = "REPOVAULT_STORE", value_name = "STORE")]
    pub store: Option<String>,
}

/// Where `run` and `lag` learn which repositories exist: `--scan ROOT` or the change feed.
#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// Find repositories by walking this directory (wins over --database-url).
    #[arg(long, value_name = "ROOT")]
    pub scan: Option<PathBuf>,
    /// Learn which repositories changed from this PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

impl FeedArgs {
    /// The repositories the feed lists now.
    pub fn discover(&self) -> anyhow::Result<crate::source::scan::ScanResult> {
        match (&self.scan, &self.database_url) {
            (Some(root), _) => crate::source::scan::scan(root).map_err(|e| usage(format!("{e:#}"))),
            (None, Some(_)) => Err(usage(
                "--database-url: the PostgreSQL change feed is not available in this build yet; use --scan ROOT",
            )),
            (None, None) => Err(usage("say where repositories are: --scan ROOT or --database-url URL")),
        }
    }
}

/// Options every command sees.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub config: crate::config::Config,
    pub scratch_dir: Option<PathBuf>,
    /// Logs are JSON lines (`--log-format json`): results are reported as events.
    pub log_json: bool,
    /// `-q`: errors only, no progress.
    pub quiet: bool,
}

impl Context {
    pub fn open_store(&self, arg: &StoreArg) -> anyhow::Result<crate::store::Store> {
        crate::store::Store::open(&self.config.store(arg.store.as_deref())?)
    }

    /// Where scratch directories are made.
    pub fn scratch_base(&self) -> PathBuf {
        self.scratch_dir.clone().or_else(|| self.config.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir)
    }

    /// A fresh scratch directory, removed when dropped.
    pub fn scratch(&self) -> anyhow::Result<tempfile::TempDir> {
        let dir = self.scratch_base();
        tempfile::Builder::new()
            .prefix("repovault-")
            .tempdir_in(&dir)
            .map_err(|e| anyhow::anyhow!("scratch directory {}: {e}", dir.display()))
    }
}
