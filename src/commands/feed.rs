//! Where `run` and `lag` learn which repositories exist: `--scan ROOT` or the change feed.

use std::path::PathBuf;

use clap::Args;

use crate::error::usage;

#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// Find repositories by walking this directory (wins over --database-url).
    #[arg(long, value_name = "ROOT")]
    pub scan: Option<PathBuf>,
    /// Learn which repositories changed from this PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Accept that most of the store's repositories (or the scan root's mount) are gone at
    /// once: without it, that is taken for an unmounted or wrong root (exit 2).
    #[arg(long)]
    pub allow_gone: bool,
}

impl FeedArgs {
    /// The scan root in use (flag, else config), when the feed is a scan.
    pub fn scan_root<'a>(&'a self, config: &'a crate::config::Config) -> Option<&'a PathBuf> {
        self.scan.as_ref().or(config.scan.as_ref())
    }

    /// The change-feed database in use (flag, env, else config), when the feed is not a scan
    /// (a scan root wins).
    pub fn database_url<'a>(&'a self, config: &'a crate::config::Config) -> Option<&'a str> {
        if self.scan_root(config).is_some() {
            return None;
        }
        self.database_url.as_deref().or(config.database_url.as_deref()).filter(|url| !url.is_empty())
    }

    /// The repositories the feed lists now.
    pub fn discover(&self, config: &crate::config::Config) -> anyhow::Result<crate::source::scan::ScanResult> {
        let scan = self.scan_root(config);
        let database_url = self.database_url.as_ref().or(config.database_url.as_ref());
        match (scan, database_url) {
            // Resolved, as the root guard records it: paths found under it (in reports
            // and metric labels) are then absolute and the same however the root is spelled.
            (Some(root), _) => crate::source::scan::scan(&crate::source::root_guard::resolve(root))
                .map_err(|e| usage(format!("{e:#}"))),
            (None, Some(_)) => Err(usage(
                "database URL (--database-url, DATABASE_URL or config key database_url): this command reads the change feed through its own path",
            )),
            (None, None) => Err(usage("say where repositories are: --scan ROOT or --database-url URL")),
        }
    }
}
