//! `repovault restore`: rebuild a repository as it was at a snapshot.
//!
//! The repository is built in a hidden directory inside DEST and moved into place entry by
//! entry with HEAD last: until HEAD is there, git does not take DEST for a repository, so
//! an interrupted restore never looks finished.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;

use super::{Context, Outcome, StoreArg};
use crate::{
    error::usage,
    store::{Store, StoredSnapshot},
};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The repository's name in the store.
    pub name: String,
    /// Where to rebuild it (created if missing; must be empty unless --force).
    pub dest: PathBuf,
    /// A snapshot id (a unique prefix is enough) or an RFC 3339 time (the latest snapshot at
    /// or before it). Default: the latest snapshot.
    #[arg(long, value_name = "SNAPSHOT|TIME")]
    pub at: Option<String>,
    /// Replace whatever DEST holds.
    #[arg(long)]
    pub force: bool,
}

const TEMP_PREFIX: &str = ".repovault-restore-";

pub fn run(ctx: &Context, args: &RestoreArgs) -> Result<Outcome> {
    crate::name::validate(&args.name)?;
    let store = ctx.open_store(&args.store)?;
    let snapshots = store.snapshots(Some(&args.name))?;
    if snapshots.is_empty() {
        return Err(usage(format!("repository {}: no snapshots in store {}", args.name, store.location())));
    }
    let chosen = select(&snapshots, args.at.as_deref(), &args.name)?;
    prepare_dest(&args.dest, args.force)?;
    let chain = store.chain(&args.name, &chosen.id)?;
    restore_into(&store, &chain, &args.dest).with_context(|| {
        format!("repository {}: restoring snapshot {} into {}", args.name, chosen.id, args.dest.display())
    })?;
    eprintln!(
        "restored {} at snapshot {} ({}) into {}",
        args.name,
        crate::snapshot::Snapshot::short_id(&chosen.id),
        chosen.snapshot.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        args.dest.display()
    );
    Ok(Outcome::Done)
}

/// Picks the snapshot `--at` names among a repository's snapshots (oldest first).
pub fn select<'a>(snapshots: &'a [StoredSnapshot], at: Option<&str>, name: &str) -> Result<&'a StoredSnapshot> {
    let Some(at) = at else {
        return Ok(snapshots.last().expect("checked non-empty"));
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(at) {
        let time: DateTime<Utc> = time.into();
        return snapshots
            .iter()
            .rev()
            .find(|s| s.snapshot.created_at <= time)
            .ok_or_else(|| usage(format!("repository {name}: no snapshot at or before {at}")));
    }
    let at_lower = at.to_ascii_lowercase();
    if at_lower.is_empty() || !at_lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(usage(format!("--at {at:?}: neither a snapshot id nor an RFC 3339 time")));
    }
    let matches: Vec<_> = snapshots.iter().filter(|s| s.id.starts_with(&at_lower)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(usage(format!("repository {name}: no snapshot id starts with {at}"))),
        _ => Err(usage(format!("repository {name}: snapshot prefix {at} is ambiguous ({} match)", matches.len()))),
    }
}

fn prepare_dest(dest: &Path, force: bool) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if !meta.is_dir() => Err(usage(format!("{} exists and is not a directory", dest.display()))),
        Ok(_) => {
            let non_empty =
                fs::read_dir(dest)?.flatten().any(|e| !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX));
            if non_empty && !force {
                return Err(usage(format!(
                    "{} is not empty; refusing to restore into it (use --force to replace it)",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(_) => fs::create_dir_all(dest).map_err(|e| usage(format!("cannot create {}: {e}", dest.display()))),
    }
}

fn restore_into(store: &Store, chain: &[StoredSnapshot], dest: &Path) -> Result<()> {
    // Leftovers of an interrupted restore are ours to remove.
    for entry in fs::read_dir(dest)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing leftover {}", entry.path().display()))?;
        }
    }
    let build = dest.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    let result = (|| {
        crate::vcs::git::restore::build(store, chain, &build)?;
        // Only now that the new repository is complete is the old content removed (--force).
        for entry in fs::read_dir(dest)?.flatten() {
            if entry.path() == build {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
                .with_context(|| format!("removing {}", path.display()))?;
        }
        let mut entries: Vec<_> = fs::read_dir(&build)?.flatten().map(|e| e.file_name()).collect();
        entries.sort_by_key(|name| name == "HEAD");
        for name in entries {
            fs::rename(build.join(&name), dest.join(&name))
                .with_context(|| format!("moving {} into {}", name.to_string_lossy(), dest.display()))?;
        }
        crate::store::local::sync_dir(dest)?;
        fs::remove_dir(&build)?;
        if !dest.join("HEAD").exists() {
            bail!("restored repository has no HEAD");
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&build);
    }
    result
}
