//! `repovault snapshots`: list snapshots, oldest first.
//!
//! One damaged manifest must not hide the others: every readable snapshot is listed, each
//! damaged one is named on stderr (repository, id, file, why) and the exit code is 1. A
//! readable snapshot whose chain is broken (an ancestor forgotten, missing or damaged) is
//! listed and marked as not restorable.

use std::collections::HashMap;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{Context, Outcome, StoreArg};
use crate::{
    error::usage,
    output,
    snapshot::Snapshot,
    store::{ChainBreak, DamagedSnapshot, Store, StoredSnapshot, chain_breaks},
};

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only this repository's snapshots.
    pub name: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Times as `restore --at` takes them: RFC 3339, UTC, to the second (`2026-11-20T03:00:00Z`).
pub fn display_time(time: &chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn run(ctx: &Context, args: &SnapshotsArgs) -> Result<Outcome> {
    if let Some(name) = &args.name {
        crate::name::validate(name)?;
    }
    let store = ctx.open_store(&args.store)?;
    if let Some(name) = &args.name
        && store.snapshot_entries(Some(name))?.is_empty()
    {
        // As verify, restore and forget say: an empty table would pass for "no damage".
        return Err(usage(format!("repository {name}: not in store {}", store.location())));
    }
    let (snapshots, damaged) = store.snapshots_and_damage(args.name.as_deref())?;
    let breaks = chain_breaks(store.snapshots_are_complete(), &snapshots, &damaged);
    if args.json {
        print_json(&snapshots, &breaks)?;
    } else {
        print_table(&snapshots, &breaks)?;
    }
    for d in &damaged {
        report_damaged(&store, d);
    }
    Ok(if damaged.is_empty() { Outcome::Done } else { Outcome::PartlyFailed })
}

fn print_json(snapshots: &[StoredSnapshot], breaks: &HashMap<String, ChainBreak>) -> Result<()> {
    let list: Vec<_> = snapshots
        .iter()
        .map(|s| {
            let snap = &s.snapshot;
            let chain_problem = breaks.get(&s.id).map(|b| b.describe(&s.id));
            json!({
                "id": s.id,
                "repo": snap.repo,
                "vcs": snap.vcs,
                "created_at": display_time(&snap.created_at),
                "source_changed_at": display_time(&snap.source_changed_at),
                "parent": snap.parent,
                "head": snap.head,
                "head_detached": snap.head_detached,
                "refs": snap.refs,
                "symbolic_refs": snap.symbolic_refs,
                "objects": snap.packs_stored_here().iter().map(|p| p.objects).sum::<u64>(),
                "pack_bytes": snap.packs_stored_here().iter().map(|p| p.pack.size).sum::<u64>(),
                "packs": snap.packs.len(),
                "bundle_bytes": snap.bundles_stored_here().iter().map(|b| b.bundle.size).sum::<u64>(),
                "bundles": snap.bundles.len(),
                "restorable": chain_problem.is_none(),
                "chain_problem": chain_problem,
            })
        })
        .collect();
    output::json(&list)
}

fn print_table(snapshots: &[StoredSnapshot], breaks: &HashMap<String, ChainBreak>) -> Result<()> {
    output::line(&format!(
        "{:<12}  {:<20}  {:>6}  {:>10}  {:<12}  REPO",
        "ID", "CREATED", "REFS", "NEW BYTES", "PARENT"
    ))?;
    for s in snapshots {
        let snap = &s.snapshot;
        let mut row = format!(
            "{:<12}  {:<20}  {:>6}  {:>10}  {:<12}  {}",
            Snapshot::short_id(&s.id),
            display_time(&snap.created_at),
            snap.refs.len(),
            snap.new_history_bytes(),
            snap.parent.as_deref().map(Snapshot::short_id).unwrap_or("-"),
            snap.repo
        );
        if let Some(broken) = breaks.get(&s.id) {
            row.push_str(&format!("  [NOT RESTORABLE: {}]", broken.describe(&s.id)));
        }
        output::line(&row)?;
    }
    Ok(())
}

/// One error line per damaged manifest: which repository, which snapshot, which file, why,
/// and the way out.
fn report_damaged(store: &Store, damaged: &DamagedSnapshot) {
    let id = &damaged.entry.id;
    let when = damaged.entry.created_at().map(|t| format!(" (made {})", display_time(&t))).unwrap_or_default();
    let file = store.file_location(&damaged.entry.path);
    if !damaged.is_damage() {
        // An I/O error says nothing about the snapshot: forgetting it could drop a good one.
        output::repo_error(
            &damaged.repo_label(),
            &format!(
                "snapshot {id}{when} {} (file {file}); that is an error of the store (permissions, I/O), not damage to \
                 the snapshot: fix the store and run again, do not forget it",
                damaged.reason()
            ),
        );
        return;
    }
    let fix = match &damaged.repo {
        Some(repo) => format!("; forget it with `repovault forget {repo} --snapshot {id}`"),
        None => String::new(),
    };
    output::repo_error(
        &damaged.repo_label(),
        &format!("snapshot {id}{when} is damaged: {} (file {file}){fix}", damaged.reason()),
    );
}
