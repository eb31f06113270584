//! `repovault backup`: back up one repository now.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use super::{Context, Outcome, StoreArg};
use crate::error::usage;

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Name of the repository in the store (default: PATH's last component).
    #[arg(long)]
    pub name: Option<String>,
    /// The repository: a bare repository or a working copy.
    pub path: PathBuf,
}

pub fn run(ctx: &Context, args: &BackupArgs) -> Result<Outcome> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(&args.path)?,
    };
    crate::name::validate(&name)?;
    if !args.path.exists() {
        return Err(usage(format!("repository {name}: {} does not exist", args.path.display())));
    }
    let store = ctx.open_store(&args.store)?;
    let report = crate::backup::backup_git(&store, &name, &args.path, None)
        .with_context(|| format!("repository {name} ({}): backup failed", args.path.display()))?;
    tracing::info!(
        repo = name,
        snapshot = report.snapshot_id,
        objects = report.objects,
        bytes_read = report.bytes_read,
        bytes_stored = report.bytes_stored,
        "backed up"
    );
    println!("{}", report.snapshot_id);
    Ok(Outcome::Done)
}

fn default_name(path: &std::path::Path) -> Result<String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .components()
        .next_back()
        .and_then(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| usage(format!("cannot derive a repository name from {}; pass --name", path.display())))
}
