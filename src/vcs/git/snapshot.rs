//! A git snapshot: what the backup of one git repository does once the shared steps
//! (`crate::backup`) chose the snapshot it builds on.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Result, anyhow, bail};
use chrono::Utc;

use crate::{
    backup::{BackupReport, FullAfter, Job, hostname},
    snapshot::{Snapshot, Vcs},
    store::{Store, StoredSnapshot},
    vcs::git::{self, backup::Previous, stored_objects::StoredObjects},
};

/// How often a backup is retried when the source's packs changed underneath it (a `git gc`
/// or repack running at the same time).
const ATTEMPTS: usize = 3;

/// Backs up a git repository: a pack of what is new since the base's refs (in format 3
/// stores, with the packs it inherits named too), then the snapshot.
pub fn back_up(job: Job<'_>) -> Result<BackupReport> {
    back_up_with(job, None)
}

/// The real chain a speculating backup builds on, once the store said it.
type Confirm<'a> = Box<dyn FnOnce() -> Result<Option<Vec<StoredSnapshot>>> + 'a>;

/// [`back_up`] on a base that is only a guess (`job.base`: the latest snapshot cached on
/// this host), while `confirm` reads the real one from the store. The source is read and the
/// new objects are stored against the guess; before anything is committed the guess is
/// compared with the real base (by id: the hash of the manifest's bytes), and when they
/// differ the backup starts again on the real one: the objects stored for the guess are
/// left for prune, and nothing names them. The store's session starts before anything is
/// read from or written to it (`Store::require_session_for_writes`).
pub fn back_up_speculating<'a>(
    job: Job<'a>,
    confirm: impl FnOnce() -> Result<Option<Vec<StoredSnapshot>>> + 'a,
) -> Result<BackupReport> {
    back_up_with(job, Some(Box::new(confirm)))
}

fn latest_id(base: &Option<Vec<StoredSnapshot>>) -> Option<&str> {
    base.as_ref().and_then(|chain| chain.last()).map(|latest| latest.id.as_str())
}

fn back_up_with(job: Job<'_>, mut confirm: Option<Confirm<'_>>) -> Result<BackupReport> {
    let Job { store, name, path, source_path, mut base, limiter } = job;
    let guessed = latest_id(&base).map(str::to_owned);
    // A guessed base's chunks are checked once the guess is confirmed, inside the session.
    if store.snapshots_are_complete()
        && let Some(chain) = &base
        && !worth_inheriting(store, name, chain, path, confirm.is_none())?
    {
        base = None;
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let parent = base.as_ref().and_then(|chain| chain.last());
        let previous = parent.map(|p| previous_of(&p.snapshot)).transpose()?;
        let stored = base.as_deref().map(|chain| StoredObjects::new(store, chain));
        let repo = git::source::open(path)?;
        let git_dir = repo.git_dir().to_owned();
        let packs_before = pack_files(&git_dir);
        // Refs first, objects after: objects a ref points at are written before the ref,
        // so a concurrent push can only add objects we do not need.
        // The snapshot is the source as of this moment, and is stamped with it rather than
        // with when it is committed: of two overlapping backups of one repository, the one
        // that read the newer refs must be the latest (what `restore` and `prune` go by),
        // whichever finishes last.
        let taken_at = Utc::now();
        let refs_stat = git::source::refs_stat(&git_dir);
        let refs = git::source::read_refs(&repo)?;
        let object_format = repo.object_hash().to_string();
        let reach_lost = match &previous {
            Some(previous) if store.snapshots_are_complete() => git::backup::reach_lost(&repo, previous, &refs),
            _ => false,
        };
        let result = git::backup::write_pack(store, repo, &refs, previous.as_ref(), stored.as_ref(), limiter);
        // Checked before a failure is reported too: a guessed base the store does not hold
        // (its pack indexes missing) fails the pack, and is no fault of the source.
        if let Some(confirm) = confirm.take() {
            let real = confirm()?;
            let guessed_right = latest_id(&real) == guessed.as_deref();
            if !guessed_right {
                tracing::info!(
                    repo = name,
                    cached = guessed,
                    latest = latest_id(&real),
                    "the latest snapshot cached on this host is not the store's: reading the source again against the store's"
                );
            }
            // The guess was judged by sizes alone; the real chain is judged with its chunks,
            // unless the guess was right and already found not worth inheriting.
            if !guessed_right || base.is_some() {
                let real = match real {
                    Some(chain) if worth_inheriting(store, name, &chain, path, true)? => Some(chain),
                    _ => None,
                };
                if !guessed_right || real.is_none() {
                    base = real;
                    attempt = 0;
                    continue;
                }
            }
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            // The store's own error (stale cache, unreachable) says what happened: the
            // source is not at fault.
            Err(e) if crate::store::is_stale_cache(&e) || crate::error::is_usage(&e) => return Err(e),
            Err(e) if attempt < ATTEMPTS && pack_files(&git_dir) != packs_before => {
                tracing::warn!(repo = name, error = %format!("{e:#}"), "source packs changed during the backup; retrying");
                continue;
            }
            Err(e) => return Err(with_culprit(e, path, &refs)),
        };
        if let Some(stored) = &stored {
            check_thin_bases(stored, &outcome.thin_bases)?;
        }
        let snapshot = Snapshot {
            repo: name.to_owned(),
            vcs: Vcs::Git,
            created_at: taken_at,
            source_changed_at: refs_stat.changed_at,
            source_fingerprint: Some(refs_stat.fingerprint),
            parent: parent.map(|p| p.id.clone()),
            head: refs.head.clone(),
            head_detached: refs.head_detached.map(|id| id.to_string()),
            refs: refs.refs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            symbolic_refs: refs.symbolic_refs.clone(),
            object_format,
            packs: packs_needed(store, parent, outcome.pack.as_ref()),
            new_packs: store.snapshots_are_complete().then(|| usize::from(outcome.pack.is_some())),
            packs_hold_unreachable: store.snapshots_are_complete().then(|| match parent {
                // A full snapshot's pack holds exactly what its refs reach.
                None => false,
                Some(parent) => parent.snapshot.may_hold_unreachable() || reach_lost,
            }),
            bundles: Vec::new(),
            new_bundles: None,
            files: Default::default(),
            heads: Vec::new(),
            source_path: source_path.clone(),
            hostname: hostname(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let snapshot_id = store.write_snapshot(&snapshot)?;
        return Ok(BackupReport {
            snapshot_id,
            parent: parent.map(|p| p.id.clone()),
            bytes_read: outcome.bytes_read,
            bytes_stored: outcome.bytes_stored,
            objects: outcome.pack.map_or(0, |p| p.objects),
        });
    }
}

/// In a store whose snapshots are complete (format 3), whether a new snapshot should
/// inherit the packs of its latest one (`chain`, that one snapshot) rather than be full;
/// without `check_chunks`, by their sizes alone (no look into the store).
fn worth_inheriting(
    store: &Store,
    name: &str,
    chain: &[StoredSnapshot],
    path: &Path,
    check_chunks: bool,
) -> Result<bool> {
    let Some(latest) = chain.last() else { return Ok(false) };
    let packs = &latest.snapshot.packs;
    let sizes: Vec<u64> = packs.iter().map(|p| p.pack.size).collect();
    let chunks = packs.iter().flat_map(|p| p.pack.chunks.iter().chain(&p.index.chunks));
    let source_bytes = source_bytes(&git::source::git_dir_of(path));
    let full_after = (source_bytes, FullAfter::GIT);
    if !check_chunks {
        return Ok(!crate::backup::grown_too_much(name, &sizes, full_after));
    }
    crate::backup::worth_inheriting(store, name, latest, &sizes, full_after, chunks)
}

/// The bytes of the source's packs and loose objects: what the chain's packs are weighed
/// against. A loose object is compressed whole, so loose ones count for more than they
/// would packed: a source pushed to in small steps and rarely repacked restores from a
/// chain of up to 1.5 times what it holds on disk. Leaving them out made such a source
/// look as small as its last repack, and its backups go full every few nights (tokio's
/// replay with every push left loose: full snapshots on nights 3, 6 and 11, 1.90x git's
/// bundles over the 15 nights while its incremental snapshots alone were 0.84x).
fn source_bytes(git_dir: &Path) -> u64 {
    let objects = git_dir.join("objects");
    let packs: u64 = std::fs::read_dir(objects.join("pack"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    packs + loose_bytes(&objects)
}

/// Loose objects to see before the rest are estimated from them: a name spreads objects
/// evenly over the 256 fan-out directories, and on NFS reading each is a round trip.
const LOOSE_OBJECTS_SAMPLED: usize = 512;

/// The bytes of a source's loose objects: every fan-out directory's while fewer than
/// [`LOOSE_OBJECTS_SAMPLED`] were seen, the rest extrapolated from those read.
fn loose_bytes(objects: &Path) -> u64 {
    let dirs = git::source::loose_object_dirs(objects);
    let (mut bytes, mut seen, mut read) = (0u64, 0usize, 0u64);
    for dir in &dirs {
        if seen >= LOOSE_OBJECTS_SAMPLED {
            break;
        }
        read += 1;
        for meta in std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()) {
            bytes += meta.len();
            seen += 1;
        }
    }
    (bytes * dirs.len() as u64).checked_div(read).unwrap_or(0)
}

/// The packs a new snapshot names: in a store whose snapshots are complete, the parent's
/// packs and the new one; before format 3 only the new one.
fn packs_needed(
    store: &Store,
    parent: Option<&StoredSnapshot>,
    new: Option<&crate::snapshot::PackRecord>,
) -> Vec<crate::snapshot::PackRecord> {
    let inherited = parent.filter(|_| store.snapshots_are_complete()).map(|p| p.snapshot.packs.as_slice());
    inherited.unwrap_or_default().iter().chain(new).cloned().collect()
}

/// A thin pack's deltas name bases in earlier snapshots; restore finds them there. Before
/// the snapshot is committed, every one of them must be in a pack index of the chain: a
/// snapshot that could not be restored must never be written.
fn check_thin_bases(stored: &StoredObjects<'_>, bases: &[gix::ObjectId]) -> Result<()> {
    let mut missing = Vec::new();
    for base in bases {
        if !stored.contains(base)? {
            missing.push(base);
        }
    }
    match missing.first() {
        None => Ok(()),
        Some(first) => bail!(
            "{} delta base(s) of the new pack are in no earlier snapshot (first: {first}); the snapshot would not \
             restore and is not written. This is a bug in repovault; please report it",
            missing.len(),
        ),
    }
}

/// gix's errors for damaged pack data do not say which object was damaged. Once a backup
/// has failed, reading every reachable object finds it, so the error can name it.
fn with_culprit(err: anyhow::Error, path: &Path, refs: &git::source::RefState) -> anyhow::Error {
    let culprit =
        git::source::open(path).and_then(|repo| git::connectivity::check(&repo, refs, git::connectivity::Blobs::Read));
    match culprit {
        Err(found) => err.context(format!("{found:#}")),
        Ok(_) => err,
    }
}

fn previous_of(snapshot: &Snapshot) -> Result<Previous> {
    let mut tips = BTreeSet::new();
    for id in snapshot.refs.values().chain(snapshot.head_detached.iter()) {
        tips.insert(
            gix::ObjectId::from_hex(id.as_bytes())
                .map_err(|e| anyhow!("previous snapshot has a bad object id {id}: {e}"))?,
        );
    }
    Ok(Previous { tips })
}

fn pack_files(git_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}
