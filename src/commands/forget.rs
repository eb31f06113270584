//! `repovault forget`: drop snapshots an operator no longer wants, damaged ones included.
//!
//! Forgetting removes the manifest file only (durably); the objects stay until a prune finds
//! nothing needs them. A damaged manifest is found by the id in its file name, so it can be
//! forgotten though it cannot be read. Later snapshots chained to a forgotten one can no
//! longer be restored: forgetting a readable snapshot that has them is refused unless
//! `--force`, and whatever is forgotten, the snapshots left without a chain are listed.

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{Context, Outcome, StoreArg, snapshots::display_time};
use crate::{
    error::usage,
    output,
    snapshot::Snapshot,
    store::{SnapshotEntry, StoredSnapshot},
};

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The repository's name in the store.
    pub name: String,
    /// The snapshot to forget: its id or a unique prefix (repeat for several).
    #[arg(long = "snapshot", value_name = "ID", required = true)]
    pub snapshots: Vec<String>,
    /// Forget a snapshot even when later snapshots are chained to it (they can then no
    /// longer be restored).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON object with what was forgotten instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

/// A repository's snapshot files and, for those that read, their manifests.
struct Repository {
    /// Whether snapshots need their parents (stores before format 3).
    chained: bool,
    entries: Vec<SnapshotEntry>,
    readable: HashMap<String, StoredSnapshot>,
}

impl Repository {
    /// When a snapshot was made: from its manifest, else from its file name.
    fn time_of(&self, entry: &SnapshotEntry) -> String {
        let time = self.readable.get(&entry.id).map(|s| s.snapshot.created_at).or_else(|| entry.created_at());
        time.map(|t| display_time(&t)).unwrap_or_else(|| "time unknown".into())
    }

    /// Readable snapshots, not themselves among `targets`, whose chain goes through one of
    /// `targets` (directly or transitively), oldest first.
    fn chained_to(&self, targets: &BTreeSet<String>) -> Vec<&SnapshotEntry> {
        if !self.chained {
            return Vec::new();
        }
        let mut reached = targets.clone();
        // Entries are oldest first and a parent is older than its child, so one pass
        // suffices in practice; passes repeat until nothing changes, for odd clocks.
        loop {
            let before = reached.len();
            for entry in &self.entries {
                let parent = self.readable.get(&entry.id).and_then(|s| s.snapshot.parent.as_ref());
                if parent.is_some_and(|p| reached.contains(p)) {
                    reached.insert(entry.id.clone());
                }
            }
            if reached.len() == before {
                break;
            }
        }
        self.entries.iter().filter(|e| reached.contains(&e.id) && !targets.contains(&e.id)).collect()
    }

    /// The newest snapshot that stays after `targets` are forgotten.
    fn latest_kept(&self, targets: &BTreeSet<String>) -> Option<&SnapshotEntry> {
        self.entries.iter().rev().find(|e| !targets.contains(&e.id))
    }
}

pub fn run(ctx: &Context, args: &ForgetArgs) -> Result<Outcome> {
    crate::name::validate(&args.name)?;
    let name = &args.name;
    let store = ctx.open_store(&args.store)?;
    let entries = store.snapshot_entries(Some(name))?;
    let (good, _damaged) = store.snapshots_and_damage(Some(name))?;
    let repo = Repository {
        chained: !store.snapshots_are_complete(),
        entries,
        readable: good.into_iter().map(|s| (s.id.clone(), s)).collect(),
    };
    let mut targets = BTreeSet::new();
    for wanted in &args.snapshots {
        targets.insert(resolve(&repo, name, wanted)?.id.clone());
    }
    let dependents = repo.chained_to(&targets);
    let readable_target_has_dependents = dependents.iter().any(|d| {
        let parent = repo.readable.get(&d.id).and_then(|s| s.snapshot.parent.as_ref());
        parent.is_some_and(|p| targets.contains(p) && repo.readable.contains_key(p))
    });
    if readable_target_has_dependents && !args.force {
        return Err(usage(format!(
            "repository {name}: later snapshots are chained to what you asked to forget: {}; forgetting it would leave \
             them unrestorable. Nothing was forgotten. Pass --force to forget it anyway (the next backup is then full)",
            describe_list(&repo, &dependents)
        )));
    }
    let target_entries: Vec<&SnapshotEntry> = repo.entries.iter().filter(|e| targets.contains(&e.id)).collect();
    for entry in &target_entries {
        store.remove_snapshot(entry)?;
    }
    report(&repo, name, &target_entries, &dependents, args.json)?;
    if let Some(latest) = repo.latest_kept(&targets)
        && dependents.iter().any(|d| d.id == latest.id)
    {
        output::repo_notice(
            name,
            &format!(
                "its latest snapshot {} can no longer be restored: the next backup will be a full snapshot",
                Snapshot::short_id(&latest.id)
            ),
        );
    }
    Ok(Outcome::Done)
}

/// The snapshot file `wanted` (a full id or a unique prefix) names; usage errors for none
/// or several.
fn resolve<'a>(repo: &'a Repository, name: &str, wanted: &str) -> Result<&'a SnapshotEntry> {
    if wanted.is_empty() {
        return Err(usage(format!("repository {name}: an empty snapshot id names nothing")));
    }
    let wanted_lower = wanted.to_ascii_lowercase();
    let candidates: Vec<&SnapshotEntry> = repo.entries.iter().filter(|e| e.id.starts_with(&wanted_lower)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(usage(format!("repository {name}: no snapshot {wanted}; `repovault snapshots {name}` lists them"))),
        several => Err(usage(format!(
            "repository {name}: snapshot prefix {wanted} is ambiguous; it matches {}: give more digits",
            several.iter().map(|e| format!("{} ({})", e.id, repo.time_of(e))).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn describe_list(repo: &Repository, entries: &[&SnapshotEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{} ({})", Snapshot::short_id(&e.id), repo.time_of(e)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    repo: &Repository,
    name: &str,
    forgotten: &[&SnapshotEntry],
    unrestorable: &[&SnapshotEntry],
    as_json: bool,
) -> Result<()> {
    if as_json {
        let forgotten: Vec<_> = forgotten
            .iter()
            .map(|e| json!({"id": e.id, "created_at": repo.time_of(e), "damaged": !repo.readable.contains_key(&e.id)}))
            .collect();
        let unrestorable: Vec<_> =
            unrestorable.iter().map(|e| json!({"id": e.id, "created_at": repo.time_of(e)})).collect();
        return output::json(&json!({"repo": name, "forgotten": forgotten, "unrestorable": unrestorable}));
    }
    for entry in forgotten {
        let damaged = if repo.readable.contains_key(&entry.id) { "" } else { ", damaged" };
        output::line(&format!("forgot snapshot {} of {name} ({}{damaged})", entry.id, repo.time_of(entry)))?;
    }
    for entry in unrestorable {
        output::line(&format!(
            "snapshot {} of {name} ({}) can no longer be restored: its chain went through a forgotten snapshot",
            entry.id,
            repo.time_of(entry)
        ))?;
    }
    Ok(())
}
