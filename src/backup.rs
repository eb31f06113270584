//! Backing up one repository into a store: the step both `backup` and `run` take.
//!
//! Chain rules: a new snapshot is incremental to the repository's latest snapshot only when
//! that snapshot and every ancestor read and hash (the chain would restore). A damaged latest
//! snapshot stops the backup of that repository with the fix (`forget` it); a latest snapshot
//! whose chain is broken (an ancestor forgotten, missing or damaged) gets a full snapshot
//! after it. A store that cannot be read is an error, never taken for a broken chain.
//!
//! Identity: the source path is recorded canonical (absolute, symlinks resolved), so that a
//! NAME defaulted from a path can be checked against the repository it was first used for
//! ([`check_default_name`]), and so that a new snapshot is chained only to a snapshot of the
//! same repository: an incremental snapshot on another repository's chain would restore that
//! repository's objects (one customer's data in another's restore). Unless the caller says
//! the repository moved on purpose ([`Chaining::AllowMoved`]: `backup --name`), a latest
//! snapshot recorded for another source path gets a full snapshot after it, with a warning.

use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::{
    error::usage,
    snapshot::{Snapshot, Vcs},
    store::{ChainState, DamagedSnapshot, Store, StoredSnapshot, is_manifest_damage},
    throttle::RateLimiter,
};

/// What one backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub snapshot_id: String,
    /// The snapshot the new one is incremental to; `None` for a full snapshot.
    pub parent: Option<String>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub objects: u64,
}

/// Whether a new snapshot may be chained to a latest snapshot recorded for another path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaining {
    /// Only to a snapshot of this source path; otherwise the snapshot is full (`run`, whose
    /// names come from the scan and may meet another repository's name in the store).
    SameSourceOnly,
    /// The NAME was chosen on purpose for this path (`backup --name`): the repository may
    /// have moved, and continues its chain.
    AllowMoved,
}

/// Backs up the repository at `path` as `name`, incrementally against its latest snapshot
/// when that one may be built on: the steps every version control system shares (the name,
/// the writer session, which snapshot to build on), then its own ([`crate::vcs::System`]).
/// The snapshot is written only after everything it needs is stored.
pub fn back_up(
    store: &Store,
    name: &str,
    path: &Path,
    limiter: Option<&RateLimiter>,
    chaining: Chaining,
) -> Result<BackupReport> {
    crate::name::validate(name)?;
    let vcs = crate::vcs::detect(path).unwrap_or(Vcs::Git);
    let source_path = canonical_source_path(path);
    if vcs == Vcs::Git
        && store.snapshots_are_complete()
        && let Some(cached) = store.cached_latest(name)
        && cached.as_ref().is_none_or(|cached| {
            cached.snapshot.vcs == vcs
                && (chaining == Chaining::AllowMoved || same_source(&cached.snapshot.source_path, &source_path))
        })
    {
        return back_up_speculating(store, name, path, source_path, cached, limiter, chaining);
    }
    // Before anything in the store is looked at: a prune must know this backup may name
    // what it sees (docs/FORMAT.md, "Prune").
    store.ensure_session()?;
    let base = real_base(store, name, &source_path, chaining, vcs, None)?;
    vcs.system().back_up(Job { store, name, path, source_path, base, limiter })
}

/// The chain a new snapshot builds on, as the store has it.
fn real_base(
    store: &Store,
    name: &str,
    source_path: &str,
    chaining: Chaining,
    vcs: Vcs,
    known: Option<&StoredSnapshot>,
) -> Result<Option<Vec<StoredSnapshot>>> {
    Ok(incremental_base(store, name, known)?
        .filter(|chain| may_chain(name, chain, source_path, chaining))
        // A repository converted to another VCS starts again from a full snapshot.
        .filter(|chain| chain.last().is_some_and(|latest| latest.snapshot.vcs == vcs)))
}

/// A git backup that reads its source against the latest snapshot this host cached
/// (`cached`; `None`: the store had none) while another thread connects to the store, starts the session and reads the
/// real latest snapshot; the snapshot is committed only on the real one (see
/// [`crate::vcs::git::snapshot::back_up_speculating`]). On a store on another host the
/// handshake alone costs about as much as an incremental backup's source work.
fn back_up_speculating(
    store: &Store,
    name: &str,
    path: &Path,
    source_path: String,
    cached: Option<StoredSnapshot>,
    limiter: Option<&RateLimiter>,
    chaining: Chaining,
) -> Result<BackupReport> {
    store.require_session_for_writes();
    std::thread::scope(|scope| {
        let guess = cached.clone();
        let recorded_here = source_path.clone();
        let real = scope.spawn(move || {
            // Before anything in the store is looked at, as above.
            store.ensure_session()?;
            real_base(store, name, &recorded_here, chaining, Vcs::Git, guess.as_ref())
        });
        let confirm = move || real.join().map_err(|_| anyhow!("the thread reading the latest snapshot panicked"))?;
        let job = Job { store, name, path, source_path, base: cached.map(|latest| vec![latest]), limiter };
        crate::vcs::git::snapshot::back_up_speculating(job, confirm)
    })
}

/// One backup as a version control system's part of it sees it.
pub struct Job<'a> {
    pub store: &'a Store,
    pub name: &'a str,
    pub path: &'a Path,
    /// The source path as snapshots record it (canonical).
    pub source_path: String,
    /// The chain (oldest first; in format 3 stores the latest snapshot alone) the new
    /// snapshot may build on; `None`: it is full.
    pub base: Option<Vec<StoredSnapshot>>,
    pub limiter: Option<&'a RateLimiter>,
}

/// The chain (oldest first) a new snapshot of `name` is incremental to, or `None` when it
/// must be full: no snapshot yet, or the latest one's chain would not restore. A latest
/// snapshot already `known` (cached) is not read again: a snapshot's id is the hash of its
/// manifest, so the same id is the same manifest.
fn incremental_base(store: &Store, name: &str, known: Option<&StoredSnapshot>) -> Result<Option<Vec<StoredSnapshot>>> {
    let entries = store
        .snapshot_entries(Some(name))
        .with_context(|| format!("repository {name}: listing its snapshots in store {}", store.location()))?;
    let Some(latest_entry) = entries.last() else { return Ok(None) };
    let loaded = match known.filter(|known| known.id == latest_entry.id) {
        Some(known) => Ok(known.clone()),
        None => store.load_snapshot(latest_entry),
    };
    let latest = match loaded {
        Ok(latest) => latest,
        Err(error) if is_manifest_damage(&error) => {
            let damaged = DamagedSnapshot { entry: latest_entry.clone(), repo: Some(name.to_owned()), error };
            return Err(latest_is_damaged(store, name, &damaged));
        }
        Err(error) => return Err(error.context(format!("repository {name}: reading its latest snapshot"))),
    };
    let latest_id = latest.id.clone();
    match store.chain_state(&entries, latest)? {
        ChainState::Complete(chain) => Ok(Some(chain)),
        ChainState::Broken(broken) => {
            tracing::warn!(
                repo = name,
                snapshot = latest_id,
                "latest snapshot {} cannot be restored ({}); this backup is a full snapshot",
                Snapshot::short_id(&latest_id),
                broken.describe(&latest_id)
            );
            Ok(None)
        }
    }
}

/// How large the streams a snapshot inherits may grow before it is full instead, in percent
/// of a full snapshot's size (as the source's own packed history estimates it): a bound on
/// what a restore of the newest snapshot reads, however many nights are behind it, and on
/// what `prune --keep-last 1` leaves. Each version control system sets its own, by what a
/// restore pays for an increment.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FullAfter {
    /// Every stream, the full one included, past this share.
    Total(u64),
    /// The streams after the full one past this share.
    Increments(u64),
}

impl FullAfter {
    /// git: a thin pack restores at the speed of a full one (its entries are joined as
    /// they are), so only bytes count. Measured on tokio's history replayed as 15 nights
    /// (scripts/bench-history), a full snapshot once the nights passed 15% of the last full
    /// one took 7 full snapshots, 39 of the 50 MiB stored, 4.1 times git's own incremental
    /// bundles; at 150% of the source's packs in all, none.
    pub const GIT: FullAfter = FullAfter::Total(150);
    /// Mercurial: a stream bundle (a full snapshot) restores at a quarter of `hg clone`'s
    /// time, a changegroup at more than a clone's (hg unbundle applies it revision by
    /// revision), so the increments must stay a small share of the history for a restore of
    /// the newest snapshot to stay near half a clone (scripts/bench-hg: with no full snapshot
    /// in 15 replayed nights of tokio, 1.47x a clone). Measured against the revlogs' bytes,
    /// which are about twice a changegroup's.
    pub const HG: FullAfter = FullAfter::Increments(10);

    fn exceeded(self, sizes: &[u64], full_estimate: u64) -> bool {
        let (bytes, percent): (u64, u64) = match self {
            FullAfter::Total(percent) => (sizes.iter().sum(), percent),
            FullAfter::Increments(percent) => (sizes.iter().skip(1).sum(), percent),
        };
        bytes * 100 > full_estimate * percent
    }
}

/// And after this many, whatever their size: each costs a read per night.
const MAX_INHERITED: usize = 64;

/// In a store whose snapshots are complete (format 3), whether a new snapshot of `name`
/// should inherit the history streams of `latest` (git packs, hg bundles: `sizes` in order)
/// rather than be full: not when they have grown too many or past `full_after` of
/// `source_bytes`, the size of the source's packed history (the first stream, a full one,
/// stands in when the source's is smaller), and not when a chunk `latest` names (`chunks`)
/// is missing from `objects/`. The latter is what keeps prune safe: a chunk a prune moved
/// to its trash after this backup's session began is protected by the session, but one
/// moved before may be deleted, so it must not be named again.
pub(crate) fn worth_inheriting<'c>(
    store: &Store,
    name: &str,
    latest: &StoredSnapshot,
    sizes: &[u64],
    (source_bytes, full_after): (u64, FullAfter),
    chunks: impl Iterator<Item = &'c crate::store::ObjectId>,
) -> Result<bool> {
    Ok(!grown_too_much(name, sizes, (source_bytes, full_after)) && all_stored(store, name, latest, chunks)?)
}

/// The first half of [`worth_inheriting`]: whether the streams since the last full snapshot
/// have grown past `full_after` or [`MAX_INHERITED`]. Reads nothing from the store.
pub(crate) fn grown_too_much(name: &str, sizes: &[u64], (source_bytes, full_after): (u64, FullAfter)) -> bool {
    if let Some(first) = sizes.first() {
        let full_estimate = source_bytes.max(*first);
        if sizes.len() >= MAX_INHERITED || full_after.exceeded(sizes, full_estimate) {
            tracing::info!(
                repo = name,
                streams = sizes.len(),
                stored = sizes.iter().sum::<u64>(),
                full_estimate,
                "the history stored since the last full snapshot has grown: this backup is a full snapshot"
            );
            return true;
        }
    }
    false
}

/// The second half of [`worth_inheriting`]: whether every chunk `latest` names is in
/// `objects/`. Only meaningful inside the writer session.
pub(crate) fn all_stored<'c>(
    store: &Store,
    name: &str,
    latest: &StoredSnapshot,
    chunks: impl Iterator<Item = &'c crate::store::ObjectId>,
) -> Result<bool> {
    for chunk in chunks {
        if !store.has_object(chunk).with_context(|| format!("repository {name}: checking stored chunk {chunk}"))? {
            tracing::warn!(
                repo = name,
                snapshot = latest.id,
                chunk,
                "a chunk of the latest snapshot is not in objects/ (a prune moved it aside): this backup is a full snapshot"
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a snapshot of `name` from `here` (canonical) may be chained to `chain`, whose
/// last link was recorded for some source path. A recorded path that cannot be resolved any
/// more cannot be shown to be this repository: the snapshot is full (safe, only larger).
fn may_chain(name: &str, chain: &[StoredSnapshot], here: &str, chaining: Chaining) -> bool {
    let Some(latest) = chain.last() else { return true };
    let recorded = &latest.snapshot.source_path;
    if chaining == Chaining::AllowMoved || same_source(recorded, here) {
        return true;
    }
    tracing::warn!(
        repo = name,
        snapshot = latest.id,
        "latest snapshot {} of {name} was taken from {recorded}, not {here}: another repository (or one that \
         moved); this backup is a full snapshot, not chained to it (use `repovault backup --name {name} PATH` \
         once if the repository really moved)",
        Snapshot::short_id(&latest.id),
    );
    false
}

fn latest_is_damaged(store: &Store, name: &str, damaged: &DamagedSnapshot) -> anyhow::Error {
    let id = &damaged.entry.id;
    anyhow!(
        "repository {name}: its latest snapshot {id} ({}) is damaged: {}; no backup can be chained to it. \
         Forget it with `repovault forget {name} --snapshot {id}`: the next backup then builds on the snapshot before it",
        store.file_location(&damaged.entry.path),
        damaged.reason()
    )
}

/// For a NAME that was defaulted from PATH (not chosen with `--name`): refuses it (usage
/// error) when the store already holds NAME for another source path, since an incremental
/// snapshot on another repository's chain would restore that repository's objects. A NAME
/// given on purpose may continue another path's chain (a repository that moved), so `run`
/// and `backup --name` do not call this.
pub fn check_default_name(store: &Store, name: &str, path: &Path) -> Result<()> {
    let here = canonical_source_path(path);
    let entries = store
        .snapshot_entries(Some(name))
        .with_context(|| format!("repository {name}: listing its snapshots in store {}", store.location()))?;
    for entry in entries.iter().rev() {
        let recorded = match store.load_snapshot(entry) {
            Ok(stored) => stored.snapshot.source_path,
            // The newest snapshot that reads says which source the name belongs to.
            Err(error) if is_manifest_damage(&error) => continue,
            Err(error) => return Err(error),
        };
        if same_source(&recorded, &here) {
            return Ok(());
        }
        return Err(usage(format!(
            "repository {name}: the store already holds {name} for another source path ({recorded}), not {here}; \
             the name defaults to the path's last component. Pass --name to choose a name for this repository \
             (--name {name} only if it is the same repository, moved)"
        )));
    }
    Ok(())
}

/// The source path as recorded in snapshots: absolute, symlinks resolved (as given when the
/// path cannot be resolved).
pub(crate) fn canonical_source_path(path: &Path) -> String {
    let resolved = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path));
    crate::output::path(resolved.as_deref().unwrap_or(path))
}

/// Whether a recorded source path is `here` (canonical). Snapshots before this version
/// recorded the path as given, perhaps relative: it is resolved now for the comparison.
fn same_source(recorded: &str, here: &str) -> bool {
    recorded == here || std::fs::canonicalize(recorded).is_ok_and(|p| crate::output::path(&p) == here)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .context("reading the hostname")
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::FullAfter;

    #[test]
    fn git_counts_every_pack_and_hg_only_the_increments() {
        // A full snapshot of 100 and increments of 40 then 60, against a source of 100.
        assert!(!FullAfter::Total(150).exceeded(&[100, 40], 100));
        assert!(FullAfter::Total(150).exceeded(&[100, 40, 20], 100));
        assert!(!FullAfter::Increments(10).exceeded(&[100, 10], 100));
        assert!(FullAfter::Increments(10).exceeded(&[100, 11], 100));
        // A source that grew to 1000 since its full snapshot allows as much more.
        assert!(!FullAfter::Total(150).exceeded(&[100, 900], 1000));
        assert!(!FullAfter::Increments(10).exceeded(&[100, 100], 1000));
    }
}
