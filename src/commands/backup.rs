//! `repovault backup`: back up one repository now.
//!
//! stdout carries the result alone: the new snapshot id, or with `--json` one object with
//! what the backup did. A person at a terminal sees a spinner on stderr meanwhile.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::json;

use super::{Context, Outcome, StoreArg};
use crate::{
    backup::{BackupReport, Chaining},
    error::usage,
    output,
    store::Store,
};

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Name of the repository in the store (default: PATH's last component; a default name
    /// the store holds for another path is refused).
    #[arg(long)]
    pub name: Option<String>,
    /// Print a JSON object describing the backup instead of the bare snapshot id.
    #[arg(long)]
    pub json: bool,
    /// The repository: a bare repository or a working copy.
    pub path: PathBuf,
}

pub fn run(ctx: &Context, args: &BackupArgs) -> Result<Outcome> {
    let (name, defaulted) = match &args.name {
        Some(name) => (name.clone(), false),
        None => (default_name(&args.path)?, true),
    };
    crate::name::validate(&name)?;
    let shown_path = output::path(&args.path);
    if !args.path.exists() {
        return Err(usage(format!("repository {name}: {shown_path} does not exist")));
    }
    let start = Instant::now();
    // A store on another host is connected to in the background while the source is read
    // (`Store::open_speculating`); should what this host cached of it be stale, the backup
    // is done again as without a cache.
    let location = ctx.config.store(args.store.store.as_deref())?;
    let access = ctx.access(&args.store)?;
    let mut store = Store::open_speculating(&location, &access)?;
    let mut report = back_up(&store, &name, &args.path, defaulted);
    if let Err(e) = &report
        && crate::store::is_stale_cache(e)
    {
        tracing::info!(repo = name, "{e:#}; backing up again without the cache");
        store.clear_cache();
        drop(store);
        store = ctx.open_store(&args.store)?;
        report = back_up(&store, &name, &args.path, defaulted);
    }
    let report = report.with_context(|| format!("repository {name} ({shown_path}): backup failed"))?;
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        repo = name,
        snapshot = report.snapshot_id,
        parent = report.parent,
        objects = report.objects,
        bytes_read = report.bytes_read,
        bytes_stored = report.bytes_stored,
        "backed up"
    );
    if args.json {
        output::json(&report_json(&name, &report, seconds))?;
    } else {
        output::line(&report.snapshot_id)?;
    }
    Ok(Outcome::Done)
}

fn back_up(store: &Store, name: &str, path: &Path, defaulted: bool) -> Result<BackupReport> {
    if defaulted {
        crate::backup::check_default_name(store, name, path)?;
    }
    // A NAME given on purpose may continue another path's chain (the repository moved); a
    // defaulted one was checked above to be this path's.
    let chaining = if defaulted { Chaining::SameSourceOnly } else { Chaining::AllowMoved };
    with_progress(store, name, || crate::backup::back_up(store, name, path, None, chaining))
}

fn report_json(name: &str, report: &BackupReport, seconds: f64) -> serde_json::Value {
    json!({
        "repo": name,
        "snapshot": report.snapshot_id,
        "parent": report.parent,
        "objects": report.objects,
        "bytes_read": report.bytes_read,
        "bytes_stored": report.bytes_stored,
        "seconds": (seconds * 1000.0).round() / 1000.0,
    })
}

/// Runs `work` under a spinner naming the repository, with the time elapsed and the bytes
/// stored so far (the bar is hidden off a terminal, with -q and with JSON logs).
fn with_progress<T>(store: &Store, name: &str, work: impl FnOnce() -> T) -> T {
    let bar = output::progress_bar(0, "{spinner} {elapsed} backing up {msg}");
    if bar.is_hidden() {
        return work();
    }
    let label = output::escape(name).into_owned();
    bar.set_message(label.clone());
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let stored = indicatif::HumanBytes(store.stored_bytes_so_far());
                bar.set_message(format!("{label}: {stored} stored"));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        result
    });
    bar.finish_and_clear();
    result
}

fn default_name(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .components()
        .next_back()
        .and_then(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| usage(format!("cannot derive a repository name from {}; pass --name", output::path(path))))
}
