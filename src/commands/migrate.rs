//! `repovault migrate`: creates or upgrades the tables of `schema/` (see `db::migrate`).

use anyhow::Result;
use clap::Args;

use super::{Context, Outcome};
use crate::{db, error::usage, output};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL database (URL or connection string).
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

pub fn run(ctx: &Context, args: &MigrateArgs) -> Result<Outcome> {
    let url = args.database_url.as_ref().or(ctx.config.database_url.as_ref()).ok_or_else(|| {
        usage("no database given: pass --database-url, set DATABASE_URL, or set `database_url` in the config file")
    })?;
    let db = db::Db::connect(url, "database URL", ctx.config.database_retry()?)?;
    let applied = db::migrate::migrate(&db)?;
    if applied.is_empty() {
        output::line(&format!("schema up to date at version {}", db::migrate::latest_version()))?;
    }
    for migration in applied {
        output::line(&format!("applied migration {} ({})", migration.version, migration.name))?;
    }
    Ok(Outcome::Done)
}
