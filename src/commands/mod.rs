//! One module per subcommand, mirroring the CLI. Each has an `Args` (clap) and a `run`
//! returning the [`Outcome`] that `main` turns into an exit code.

pub mod backup;
pub mod feed;
pub mod forget;
pub mod init;
pub mod lag;
pub mod migrate;
pub mod prune;
pub mod restore;
pub mod run;
pub mod serve;
pub mod snapshots;
pub mod verify;

use std::path::PathBuf;

use clap::Args;

pub use feed::FeedArgs;

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
    /// The store: a local or NFS path, or ssh://[user@]host[:port]/absolute/path.
    #[arg(long, env = "REPOVAULT_STORE", value_name = "STORE")]
    pub store: Option<String>,
    /// For an ssh:// store: the repovault binary on the remote host (default: `repovault`
    /// on its PATH).
    #[arg(long, value_name = "COMMAND")]
    pub remote_command: Option<String>,
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
        crate::store::Store::open_with(&self.config.store(arg.store.as_deref())?, &self.access(arg)?)
    }

    /// How to reach an ssh:// store: the flag, then the config file.
    pub fn access(&self, arg: &StoreArg) -> anyhow::Result<crate::store::Access> {
        Ok(crate::store::Access {
            ssh_command: self.config.ssh_command.clone(),
            remote_command: arg.remote_command.clone().or_else(|| self.config.remote_command.clone()),
            request_timeout: Some(self.config.ssh_timeout()?),
        })
    }

    /// Where scratch directories are made.
    pub fn scratch_base(&self) -> PathBuf {
        self.scratch_dir.clone().or_else(|| self.config.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir)
    }

    /// A fresh scratch directory, removed when dropped. Failing to make one is the
    /// machine's problem, not the store's: a usage error naming the directory.
    pub fn scratch(&self) -> anyhow::Result<tempfile::TempDir> {
        let dir = self.scratch_base();
        tempfile::Builder::new().prefix("repovault-").tempdir_in(&dir).map_err(|e| {
            crate::error::usage(format!(
                "scratch directory {}: {e} (config key scratch_dir, default the system temporary directory)",
                crate::output::path(&dir)
            ))
        })
    }
}
