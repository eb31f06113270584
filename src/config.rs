//! The TOML config file. Flags win over the environment, the environment over the file:
//! clap resolves the first two, and `Config` supplies what both left unset.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::error::usage;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The store (local path or ssh:// URL).
    pub store: Option<String>,
    /// PostgreSQL URL of the change feed.
    pub database_url: Option<String>,
    /// "text" or "json".
    pub log_format: Option<String>,
    /// Where `verify --deep` rebuilds repositories (default: the system temporary
    /// directory). Must have room for the largest repository.
    pub scratch_dir: Option<PathBuf>,
    /// Replacement for the `ssh` command for ssh:// stores.
    pub ssh_command: Option<String>,
    /// The repovault binary on the remote host of an ssh:// store.
    pub remote_command: Option<String>,
    /// How long a request to an ssh:// store may wait for its answer (default 10m).
    pub ssh_timeout: Option<String>,
    /// SQL returning `name, path, vcs, changed_at` for the change feed.
    pub feed_query: Option<String>,
    /// Base for relative `path` values of the change feed; absolute paths must lie under it.
    pub repos_root: Option<PathBuf>,
    /// PostgreSQL URL the feed is read from instead (a hot standby); claims and state always
    /// go to `database_url`, the primary.
    pub feed_database_url: Option<String>,
    /// Default `--jobs-per-storage` of `run`: concurrent backups per storage, all workers.
    pub jobs_per_storage: Option<usize>,
    /// How far before the cursor changes are asked for (late commits, coarse stamps; default 10m).
    pub feed_margin: Option<String>,
    /// How long a claim holds without a heartbeat (default 5m).
    pub claim_lease: Option<String>,
    /// How long a dropped database connection is retried before a run gives up (default 2m).
    pub database_retry: Option<String>,
    /// Default `--jobs` of `run`.
    pub jobs: Option<usize>,
    /// Default `--rate-limit` of `run`.
    pub rate_limit: Option<String>,
    /// Default `--scan` root of `run` and `lag`.
    pub scan: Option<PathBuf>,
    /// Default `--max-lag` of `lag` (26h, 90m, 2d).
    pub max_lag: Option<String>,
    /// Default `--prometheus` file of `lag`.
    pub prometheus: Option<PathBuf>,
    /// `-q` by default: errors only.
    pub quiet: Option<bool>,
    /// `-v` by default: how many (0 to 2).
    pub verbose: Option<u8>,
    /// The retention policy `prune` uses when no `--keep-*` flag is given (a `[prune]` table).
    pub prune: Option<PrunePolicy>,
}

/// The `[prune]` table: the same rules as `prune`'s `--keep-*` flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunePolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// A duration such as `30d` or `1y` (see `retention::parse_within`).
    pub keep_within: Option<String>,
}

/// How long a dropped database connection is retried by default.
pub const DEFAULT_DATABASE_RETRY: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a request to an ssh:// store waits for its answer: long enough for a storage
/// host's slow fsyncs under load, short enough that a host hung with its link up (an NFS
/// server gone under it) does not hold a night.
pub const DEFAULT_SSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl Config {
    /// Reads the file named by `--config` or `REPOVAULT_CONFIG`; no file is an empty config.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("config file {}: cannot read it: {e}", crate::output::path(path))))?;
        if let Some(unknown) = unknown_keys(&text) {
            return Err(usage(format!(
                "config file {}: unknown key{} {}",
                crate::output::path(path),
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            )));
        }
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" line {l}:")).unwrap_or_default();
            usage(format!("config file {}:{at} {}", crate::output::path(path), e.message().trim()))
        })
    }

    /// The duration of config key `key` (`value`), else `default`.
    pub fn duration(key: &str, value: Option<&str>, default: std::time::Duration) -> Result<std::time::Duration> {
        value
            .map(|v| crate::throttle::parse_duration(v).map_err(|e| usage(format!("config key {key}: {e}"))))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }

    /// How long a request to an ssh:// store waits for its answer (config key `ssh_timeout`).
    pub fn ssh_timeout(&self) -> Result<std::time::Duration> {
        Config::duration("ssh_timeout", self.ssh_timeout.as_deref(), DEFAULT_SSH_TIMEOUT)
    }

    /// How long a dropped database connection is retried (config key `database_retry`).
    pub fn database_retry(&self) -> Result<std::time::Duration> {
        Config::duration("database_retry", self.database_retry.as_deref(), DEFAULT_DATABASE_RETRY)
    }

    /// The store from the flag/env value, else from the file, else a usage error.
    pub fn store(&self, from_flag_or_env: Option<&str>) -> Result<String> {
        from_flag_or_env.map(str::to_owned).or_else(|| self.store.clone()).filter(|s| !s.is_empty()).ok_or_else(|| {
            usage("no store given: pass --store, set REPOVAULT_STORE, or set `store` in the config file")
        })
    }
}

/// Every top-level key of `text` that is not a config key (serde stops at the first), or
/// `None` when there is none or the text is not TOML (the full parse then says why).
fn unknown_keys(text: &str) -> Option<Vec<String>> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let unknown: Vec<String> = table
        .into_iter()
        .filter_map(|(key, value)| {
            let mut alone = toml::Table::new();
            alone.insert(key.clone(), value);
            let error = alone.try_into::<Config>().err()?.to_string();
            // "unknown field `x`": the key itself, or one inside a table such as [prune].
            let field = error.split("unknown field `").nth(1)?.split('`').next()?.to_owned();
            Some(if field == key { format!("`{key}`") } else { format!("`{key}.{field}`") })
        })
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_named() {
        let text = "bogus_key = 1\nstoer = \"/x\"\njobs = 2\n";
        assert_eq!(unknown_keys(text), Some(vec!["`bogus_key`".to_owned(), "`stoer`".to_owned()]));
        assert_eq!(unknown_keys("jobs = \"not a number\"\nstore = \"/x\"\n"), None);
        assert_eq!(unknown_keys("[prune]\nkeep_lsat = 3\n"), Some(vec!["`prune.keep_lsat`".to_owned()]));
    }

    #[test]
    fn a_prune_table_holds_the_retention_policy() {
        let config: Config = toml::from_str("[prune]\nkeep_daily = 7\nkeep_within = \"2d\"\n").unwrap();
        let policy = config.prune.unwrap();
        assert_eq!((policy.keep_daily, policy.keep_last), (Some(7), None));
        assert_eq!(policy.keep_within.as_deref(), Some("2d"));
        assert!(toml::from_str::<Config>("[prune]\nkeep_dayly = 7\n").is_err());
    }
}
