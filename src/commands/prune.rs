//! `repovault prune`: apply a retention policy to every repository (or the ones named),
//! then delete the data no snapshot names any more.
//!
//! For each repository it lists the snapshots the policy keeps (with the rules that keep
//! them) and those it forgets, and it counts the bytes that frees. `--dry-run` stops there.
//! Otherwise, under the prune lock, the forgotten manifests are removed and the store's
//! garbage is collected (`Store::collect_garbage`, safe while backups run: docs/FORMAT.md,
//! "Prune"). Deleting needs store format 3, where each snapshot names every pack it needs;
//! in formats 1 and 2 what a snapshot needs depends on its parent chain, and prune only plans.
//!
//! In formats 1 and 2 a forgotten snapshot that a kept snapshot chains to keeps its data
//! ("forgotten, but its data stays"). Chunks are shared across repositories (content
//! addressing), so a chunk counts as freed only when no snapshot of any repository that
//! stays names it. Damaged manifests are named and skipped, as `snapshots` does; what they
//! name cannot be known, so the byte count is then an upper bound and says so, and no data
//! is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::json;

use super::{Context, Outcome, StoreArg, snapshots::display_time};
use crate::{
    config::PrunePolicy,
    error::usage,
    output,
    retention::{self, Candidate, Policy, Reason},
    store::{
        ChunkSet, DamagedSnapshot, Store, StoredSnapshot, chunk_key, gc::GcReport, is_manifest_damage,
        lock::LockAttempt, repo_key,
    },
};

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only these repositories (default: every repository in the store).
    pub names: Vec<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours (UTC) that have snapshots.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days (UTC) that have snapshots.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks (Monday, UTC) that have snapshots.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months (UTC) that have snapshots.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years (UTC) that have snapshots.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than the repository's newest snapshot minus DURATION
    /// (`30d`, `36h`, `2w`, `1y`; `m` is minutes).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Only say what would be forgotten and freed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

/// A snapshot the policy forgets, and the kept snapshots whose chains still need its data
/// (oldest first; empty when its data could be freed).
struct Forgotten {
    snapshot: Candidate,
    data_kept_for: Vec<String>,
}

/// The plan for one repository.
struct RepoPlan {
    repo: String,
    keep: Vec<(Candidate, Vec<Reason>)>,
    forget: Vec<Forgotten>,
}

pub fn run(ctx: &Context, args: &PruneArgs) -> Result<Outcome> {
    let policy = policy_of(args, ctx.config.prune.as_ref())?;
    policy.check()?;
    for name in &args.names {
        crate::name::validate(name)?;
    }
    let store = ctx.open_store(&args.store)?;
    if !args.dry_run && !store.snapshots_are_complete() {
        return Err(usage(format!(
            "store {}: prune can delete data only in store format 3 or later, and this store is format {}: its \
             snapshots chain to each other, so what one needs is not known from its own manifest; use --dry-run to \
             see the plan, or start a new store",
            store.location(),
            store.config().format
        )));
    }
    for name in &args.names {
        if store.snapshot_entries(Some(name))?.is_empty() {
            return Err(usage(format!("repository {name}: not in store {}", store.location())));
        }
    }
    let _lock = if args.dry_run {
        None
    } else {
        match store.lock_prune()? {
            LockAttempt::Acquired(lock) => Some(lock),
            LockAttempt::HeldBy(holder) => {
                output::error(&format!(
                    "store {}: another prune is running ({holder}); nothing was done",
                    store.location()
                ));
                return Ok(Outcome::PartlyFailed);
            }
        }
    };
    let (manifests, damaged) = Manifests::load(&store)?;
    let readable = &manifests.readable;
    let by_repo = group_by_repo(readable);
    let mut selected: Vec<&str> = if args.names.is_empty() {
        by_repo.keys().copied().collect()
    } else {
        args.names.iter().map(String::as_str).filter(|n| by_repo.contains_key(n)).collect()
    };
    // A name given twice is one repository.
    let mut seen = HashSet::new();
    selected.retain(|name| seen.insert(*name));
    let chains = !store.snapshots_are_complete();
    let plans: Vec<RepoPlan> = selected.iter().map(|repo| plan_repo(&policy, repo, &by_repo[repo], chains)).collect();
    let bytes_freed = bytes_freed(&store, &manifests, &plans)?;
    let unreadable_anywhere = damaged.len();
    let damaged: Vec<&DamagedSnapshot> = damaged
        .iter()
        .filter(|d| args.names.is_empty() || d.repo.as_ref().is_some_and(|r| args.names.contains(r)))
        .collect();
    let gc =
        if args.dry_run { None } else { Some(forget_and_collect(&store, &manifests, &plans, unreadable_anywhere)?) };
    if args.json {
        print_json(&plans, bytes_freed, gc.as_ref())?;
    } else {
        print_lines(&plans, bytes_freed, gc.as_ref())?;
    }
    for d in &damaged {
        report_damaged(&store, d);
    }
    if unreadable_anywhere > 0 {
        output::notice(&if args.dry_run {
            format!(
                "bytes that would be freed are an upper bound: {unreadable_anywhere} damaged snapshot manifest(s) in the \
                 store could not be read, and data they name was counted as unused"
            )
        } else {
            format!(
                "no data was deleted: {unreadable_anywhere} damaged snapshot manifest(s) in the store could not be read, \
                 and data they name cannot be known; forget them (`repovault forget`) and prune again"
            )
        });
    }
    let skipped = gc.as_ref().and_then(|gc| gc.finishing_skipped.as_deref());
    if let Some(why) = skipped {
        output::error(&format!("store {}: {why}", store.location()));
    }
    // A real prune that could not delete (damage anywhere in the store) did not do its job.
    let failed = !damaged.is_empty() || !args.dry_run && (unreadable_anywhere > 0 || skipped.is_some());
    Ok(if failed { Outcome::PartlyFailed } else { Outcome::Done })
}

/// Removes the forgotten snapshots' manifests, then (unless a damaged manifest makes what is
/// used unknowable) collects the garbage: the mark is every chunk the remaining manifests
/// name, of every repository.
fn forget_and_collect(
    store: &Store,
    manifests: &Manifests,
    plans: &[RepoPlan],
    unreadable_anywhere: usize,
) -> Result<GcReport> {
    let forgotten: HashSet<&str> = plans.iter().flat_map(|p| &p.forget).map(|f| f.snapshot.id.as_str()).collect();
    for entry in store.snapshot_entries(None)? {
        if forgotten.contains(entry.id.as_str()) {
            store.remove_snapshot(&entry)?;
        }
    }
    if unreadable_anywhere > 0 {
        return Ok(GcReport::default());
    }
    let mark: ChunkSet = manifests
        .readable
        .iter()
        .zip(&manifests.chunks)
        .filter(|(s, _)| !forgotten.contains(s.id.as_str()))
        .flat_map(|(_, chunks)| chunks.iter().map(|&c| manifests.names[c as usize]))
        .collect();
    // What was forgotten stays forgotten: say so, since no report follows an error.
    store.collect_garbage(&mark).with_context(|| {
        format!(
            "{} snapshot(s) that the policy does not keep were forgotten; deleting the data no snapshot names \
             stopped (the next prune finishes it)",
            forgotten.len()
        )
    })
}

/// The policy from the flags when any `--keep-*` flag is given (the config's `[prune]` table
/// is then ignored whole, so a command line says everything it does), else from the config.
fn policy_of(args: &PruneArgs, config: Option<&PrunePolicy>) -> Result<Policy> {
    let flags = PrunePolicy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_within: args.keep_within.clone(),
    };
    let any_flag = [flags.keep_last, flags.keep_hourly, flags.keep_daily, flags.keep_weekly]
        .into_iter()
        .chain([flags.keep_monthly, flags.keep_yearly])
        .any(|n| n.is_some())
        || flags.keep_within.is_some();
    let chosen = if any_flag { &flags } else { config.unwrap_or(&flags) };
    let keep_within = chosen
        .keep_within
        .as_deref()
        .map(|text| {
            retention::parse_within(text)
                .map_err(|e| if any_flag { e } else { usage(format!("config file, [prune] keep_within: {e}")) })
        })
        .transpose()?;
    Ok(Policy {
        keep_last: chosen.keep_last.unwrap_or(0),
        keep_hourly: chosen.keep_hourly.unwrap_or(0),
        keep_daily: chosen.keep_daily.unwrap_or(0),
        keep_weekly: chosen.keep_weekly.unwrap_or(0),
        keep_monthly: chosen.keep_monthly.unwrap_or(0),
        keep_yearly: chosen.keep_yearly.unwrap_or(0),
        keep_within,
    })
}

fn group_by_repo(readable: &[StoredSnapshot]) -> BTreeMap<&str, Vec<&StoredSnapshot>> {
    let mut by_repo: BTreeMap<&str, Vec<&StoredSnapshot>> = BTreeMap::new();
    for s in readable {
        by_repo.entry(s.snapshot.repo.as_str()).or_default().push(s);
    }
    by_repo
}

/// Applies the policy to one repository and finds, for each forgotten snapshot, the kept
/// snapshots whose parent chains pass through it (when snapshots form `chains`: formats 1
/// and 2; from format 3 on `parent` is provenance only and no snapshot needs another).
fn plan_repo(policy: &Policy, repo: &str, snapshots: &[&StoredSnapshot], chains: bool) -> RepoPlan {
    let candidates: Vec<Candidate> =
        snapshots.iter().map(|s| Candidate { id: s.id.clone(), created_at: s.snapshot.created_at }).collect();
    let decision = retention::apply(policy, &candidates);
    let parents: HashMap<&str, Option<&str>> =
        snapshots.iter().map(|s| (s.id.as_str(), s.snapshot.parent.as_deref())).collect();
    let forgotten: HashSet<&str> = decision.forget.iter().map(|c| c.id.as_str()).collect();
    let mut needed_by: HashMap<&str, Vec<String>> = HashMap::new();
    // Kept snapshots oldest first, so each forgotten snapshot lists its nearest kept
    // descendant first.
    for (kept, _) in decision.keep.iter().rev().filter(|_| chains) {
        for ancestor in ancestors(&parents, &kept.id) {
            if forgotten.contains(ancestor) {
                needed_by.entry(ancestor).or_default().push(kept.id.clone());
            }
        }
    }
    let forget = decision
        .forget
        .iter()
        .map(|c| Forgotten { snapshot: c.clone(), data_kept_for: needed_by.remove(c.id.as_str()).unwrap_or_default() })
        .collect();
    RepoPlan { repo: repo.to_owned(), keep: decision.keep, forget }
}

/// The readable ancestors of `id` along its parent chain, nearest first; stops at a full
/// snapshot, a missing or damaged parent, or a cycle (only a forged store has one).
fn ancestors<'a>(parents: &HashMap<&'a str, Option<&'a str>>, id: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut current = parents.get(id).copied().flatten();
    while let Some(parent) = current {
        if found.contains(&parent) || !parents.contains_key(parent) {
            break;
        }
        found.push(parent);
        current = parents.get(parent).copied().flatten();
    }
    found
}

/// The readable manifests of the store as prune needs them: each without its refs and
/// packs (what planning reads is its id, repository, time and parent), and apart from them
/// the chunks each names, as indexes into one table of names. Read one manifest at a time,
/// so that 120,000 manifests of 60 packs each take tens of MiB, not gigabytes.
struct Manifests {
    readable: Vec<StoredSnapshot>,
    /// Per readable manifest, the chunks it names (indexes into `names`).
    chunks: Vec<Vec<u32>>,
    names: Vec<[u8; 32]>,
}

impl Manifests {
    fn load(store: &Store) -> Result<(Manifests, Vec<DamagedSnapshot>)> {
        let mut manifests = Manifests { readable: Vec::new(), chunks: Vec::new(), names: Vec::new() };
        let mut index: HashMap<[u8; 32], u32> = HashMap::new();
        let mut damaged = Vec::new();
        for entry in store.snapshot_entries(None)? {
            let mut stored = match store.load_snapshot(&entry) {
                Ok(stored) => stored,
                Err(error) if is_manifest_damage(&error) => {
                    damaged.push(DamagedSnapshot { entry, repo: None, error });
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut chunks = Vec::new();
            for name in stored.snapshot.chunks() {
                let Some(key) = chunk_key(name) else { continue };
                let next = manifests.names.len() as u32;
                let at = *index.entry(key).or_insert(next);
                if at == next {
                    manifests.names.push(key);
                }
                chunks.push(at);
            }
            chunks.sort_unstable();
            chunks.dedup();
            // What names chunks is now in `chunks`: the rest of the manifest is kept small.
            stored.snapshot.packs.clear();
            stored.snapshot.bundles.clear();
            stored.snapshot.files.clear();
            stored.snapshot.heads.clear();
            stored.snapshot.refs.clear();
            stored.snapshot.symbolic_refs.clear();
            manifests.readable.push(stored);
            manifests.chunks.push(chunks);
        }
        for d in &mut damaged {
            d.repo = manifests
                .readable
                .iter()
                .rev()
                .find(|s| repo_key(&s.snapshot.repo) == d.entry.key)
                .map(|s| s.snapshot.repo.clone());
        }
        Ok((manifests, damaged))
    }
}

/// Bytes of the store's object files named only by snapshots whose data no one needs: the
/// forgotten snapshots no kept chain passes through. Every other readable snapshot, of any
/// repository, keeps what it names.
fn bytes_freed(store: &Store, manifests: &Manifests, plans: &[RepoPlan]) -> Result<u64> {
    let releasable: HashSet<&str> = plans
        .iter()
        .flat_map(|p| &p.forget)
        .filter(|f| f.data_kept_for.is_empty())
        .map(|f| f.snapshot.id.as_str())
        .collect();
    let mut still_named = vec![false; manifests.names.len()];
    let mut named_by_released = vec![false; manifests.names.len()];
    for (snapshot, chunks) in manifests.readable.iter().zip(&manifests.chunks) {
        let marks = if releasable.contains(snapshot.id.as_str()) { &mut named_by_released } else { &mut still_named };
        for &chunk in chunks {
            marks[chunk as usize] = true;
        }
    }
    let mut total = 0;
    for (at, name) in manifests.names.iter().enumerate() {
        if named_by_released[at] && !still_named[at] {
            let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
            total += store.object_size(&hex)?;
        }
    }
    Ok(total)
}

fn reasons_text(reasons: &[Reason]) -> Vec<String> {
    reasons.iter().map(|r| r.label()).collect()
}

fn print_json(plans: &[RepoPlan], bytes_freed: u64, gc: Option<&GcReport>) -> Result<()> {
    let repos: Vec<_> = plans
        .iter()
        .map(|plan| {
            let keep: Vec<_> = plan
                .keep
                .iter()
                .map(|(c, why)| json!({"id": c.id, "created_at": display_time(&c.created_at), "reasons": reasons_text(why)}))
                .collect();
            let forget: Vec<_> = plan
                .forget
                .iter()
                .map(|f| {
                    json!({
                        "id": f.snapshot.id,
                        "created_at": display_time(&f.snapshot.created_at),
                        "data_kept_for": f.data_kept_for,
                    })
                })
                .collect();
            json!({"repo": plan.repo, "keep": keep, "forget": forget})
        })
        .collect();
    let forgotten: usize = plans.iter().map(|p| p.forget.len()).sum();
    let mut report = json!({
        "dry_run": gc.is_none(),
        "repos": repos,
        "bytes_freed": bytes_freed,
        "snapshots_forgotten": forgotten,
    });
    if let Some(gc) = gc {
        let fields = json!({
            "bytes_deleted": gc.bytes_deleted,
            "objects_deleted": gc.objects_deleted,
            "bytes_pending": gc.bytes_pending,
            "objects_pending": gc.objects_pending,
            "sessions_waited_for": gc.sessions_waited_for,
            "sessions_revoked": gc.sessions_revoked,
        });
        for (key, value) in fields.as_object().expect("an object") {
            report[key] = value.clone();
        }
    }
    output::json(&report)
}

fn print_lines(plans: &[RepoPlan], bytes_freed: u64, gc: Option<&GcReport>) -> Result<()> {
    for plan in plans {
        output::line(&format!("{}: keep {}, forget {}", plan.repo, plan.keep.len(), plan.forget.len()))?;
        for (c, why) in &plan.keep {
            output::line(&format!(
                "  keep    {}  {}  ({})",
                c.id,
                display_time(&c.created_at),
                reasons_text(why).join(", ")
            ))?;
        }
        for f in &plan.forget {
            let mut row = format!("  forget  {}  {}", f.snapshot.id, display_time(&f.snapshot.created_at));
            if let Some(nearest) = f.data_kept_for.first() {
                let more = match f.data_kept_for.len() - 1 {
                    0 => String::new(),
                    n => format!(" (and {n} more kept snapshot{})", if n > 1 { "s" } else { "" }),
                };
                row.push_str(&format!("  forgotten, but its data stays: kept snapshot {nearest}{more} chains to it"));
            }
            output::line(&row)?;
        }
    }
    let forgotten: usize = plans.iter().map(|p| p.forget.len()).sum();
    let snapshots = if forgotten == 1 { "" } else { "s" };
    let repositories = if plans.len() == 1 { "y" } else { "ies" };
    let Some(gc) = gc else {
        return output::line(&format!(
            "dry run: would forget {forgotten} snapshot{snapshots} of {} repositor{repositories} and free {bytes_freed} \
             bytes; nothing was changed",
            plans.len(),
        ));
    };
    output::line(&format!(
        "forgot {forgotten} snapshot{snapshots} of {} repositor{repositories}; deleted {} object{} ({} bytes)",
        plans.len(),
        gc.objects_deleted,
        if gc.objects_deleted == 1 { "" } else { "s" },
        gc.bytes_deleted,
    ))?;
    if gc.objects_pending > 0 {
        output::line(&format!(
            "{} object{} ({} bytes) wait for {} running backup session{} to end; a later prune deletes them",
            gc.objects_pending,
            if gc.objects_pending == 1 { "" } else { "s" },
            gc.bytes_pending,
            gc.sessions_waited_for,
            if gc.sessions_waited_for == 1 { "" } else { "s" },
        ))?;
    }
    for id in &gc.sessions_revoked {
        output::notice(&format!(
            "revoked backup session {id}: its process is gone from this host or stopped beating over an hour ago; it cannot commit"
        ));
    }
    Ok(())
}

/// One error line per damaged manifest, as `snapshots` names them.
fn report_damaged(store: &Store, damaged: &DamagedSnapshot) {
    output::repo_error(
        &damaged.repo_label(),
        &format!(
            "snapshot {} is damaged and was skipped: {} (file {})",
            damaged.entry.id,
            damaged.reason(),
            store.file_location(&damaged.entry.path)
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    /// A full snapshot of `repo` made at `hour` naming `chunks` as its one pack.
    fn full_snapshot(repo: &str, hour: u32, chunks: &[&str]) -> Snapshot {
        let created_at = chrono::DateTime::parse_from_rfc3339(&format!("2026-01-01T{hour:02}:00:00Z")).unwrap().into();
        Snapshot::naming_chunks(repo, created_at, chunks)
    }

    #[test]
    fn only_chunks_no_remaining_snapshot_of_any_repository_names_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("store").to_string_lossy().into_owned();
        Store::init(&location).unwrap();
        let store = Store::open(&location).unwrap();
        store.ensure_session().unwrap();
        let put = |data: &[u8]| {
            let id = crate::store::hash_hex(data);
            store.put_object(&id, data).unwrap();
            id
        };
        let (shared, only_old, new) = (put(&[1; 100]), put(&[2; 3000]), put(&[3; 50]));
        store.write_snapshot(&full_snapshot("x", 1, &[&shared, &only_old])).unwrap();
        store.write_snapshot(&full_snapshot("x", 2, &[&new])).unwrap();
        // Another repository names the shared chunk: it stays.
        store.write_snapshot(&full_snapshot("y", 1, &[&shared])).unwrap();
        let (manifests, _) = Manifests::load(&store).unwrap();
        let by_repo = group_by_repo(&manifests.readable);
        let policy = Policy { keep_last: 1, ..Policy::default() };
        let plan = plan_repo(&policy, "x", &by_repo["x"], true);
        assert_eq!(plan.forget.len(), 1);
        assert!(plan.forget[0].data_kept_for.is_empty());
        let freed = bytes_freed(&store, &manifests, &[plan]).unwrap();
        assert_eq!(freed, store.object_size(&only_old).unwrap());
        assert!(freed > 0);
    }

    #[test]
    fn ancestors_stop_at_a_missing_parent_and_at_cycles() {
        let parents: HashMap<&str, Option<&str>> =
            [("c", Some("b")), ("b", Some("a")), ("a", Some("gone")), ("x", Some("y")), ("y", Some("x"))].into();
        assert_eq!(ancestors(&parents, "c"), ["b", "a"]);
        assert_eq!(ancestors(&parents, "x"), ["y", "x"]);
    }
}
