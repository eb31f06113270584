//! `repovault snapshots`: list snapshots, oldest first.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{Context, Outcome, StoreArg};
use crate::snapshot::Snapshot;

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

pub fn run(ctx: &Context, args: &SnapshotsArgs) -> Result<Outcome> {
    if let Some(name) = &args.name {
        crate::name::validate(name)?;
    }
    let store = ctx.open_store(&args.store)?;
    let snapshots = store.snapshots(args.name.as_deref())?;
    if args.json {
        let list: Vec<_> = snapshots
            .iter()
            .map(|s| {
                let snap = &s.snapshot;
                json!({
                    "id": s.id,
                    "repo": snap.repo,
                    "vcs": snap.vcs,
                    "created_at": snap.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "source_changed_at": snap.source_changed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "parent": snap.parent,
                    "head": snap.head,
                    "head_detached": snap.head_detached,
                    "refs": snap.refs,
                    "symbolic_refs": snap.symbolic_refs,
                    "objects": snap.packs.iter().map(|p| p.objects).sum::<u64>(),
                    "pack_bytes": snap.packs.iter().map(|p| p.pack.size).sum::<u64>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(Outcome::Done);
    }
    println!("{:<12}  {:<20}  {:>6}  {:>10}  {:<12}  REPO", "ID", "CREATED", "REFS", "NEW BYTES", "PARENT");
    for s in &snapshots {
        let snap = &s.snapshot;
        println!(
            "{:<12}  {:<20}  {:>6}  {:>10}  {:<12}  {}",
            Snapshot::short_id(&s.id),
            snap.created_at.format("%Y-%m-%d %H:%M:%S"),
            snap.refs.len(),
            snap.packs.iter().map(|p| p.pack.size).sum::<u64>(),
            snap.parent.as_deref().map(Snapshot::short_id).unwrap_or("-"),
            snap.repo
        );
    }
    Ok(Outcome::Done)
}
