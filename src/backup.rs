//! Backing up one repository into a store: the step both `backup` and `run` take.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;

use crate::{
    snapshot::{Snapshot, Vcs},
    store::Store,
    throttle::RateLimiter,
    vcs::git::{self, backup::Previous},
};

/// What one backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub snapshot_id: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub objects: u64,
}

/// How often a backup is retried when the source's packs changed underneath it (a `git gc`
/// or repack running at the same time).
const ATTEMPTS: usize = 3;

/// Backs up the git repository at `path` as `name`, incrementally against its latest
/// snapshot. The snapshot is written only after everything it needs is stored.
pub fn backup_git(store: &Store, name: &str, path: &Path, limiter: Option<&RateLimiter>) -> Result<BackupReport> {
    crate::name::validate(name)?;
    let parent = store.latest_snapshot(name)?;
    let previous = parent.as_ref().map(|p| previous_of(&p.snapshot)).transpose()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let repo = git::source::open(path)?;
        let git_dir = repo.git_dir().to_owned();
        let packs_before = pack_files(&git_dir);
        // Refs first, objects after: objects a ref points at are written before the ref,
        // so a concurrent push can only add objects we do not need.
        let refs_stat = git::source::refs_stat(&git_dir);
        let refs = git::source::read_refs(&repo)?;
        let object_format = repo.object_hash().to_string();
        let result = git::backup::write_pack(store, repo, &refs, previous.as_ref(), limiter);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) if attempt < ATTEMPTS && pack_files(&git_dir) != packs_before => {
                tracing::warn!(repo = name, error = %format!("{e:#}"), "source packs changed during the backup; retrying");
                continue;
            }
            Err(e) => return Err(with_culprit(e, path, &refs)),
        };
        if let Some(parent) = &parent {
            check_thin_bases(store, name, &parent.id, &outcome.thin_bases)?;
        }
        let snapshot = Snapshot {
            repo: name.to_owned(),
            vcs: Vcs::Git,
            created_at: Utc::now(),
            source_changed_at: refs_stat.changed_at,
            source_fingerprint: Some(refs_stat.fingerprint),
            parent: parent.as_ref().map(|p| p.id.clone()),
            head: refs.head.clone(),
            head_detached: refs.head_detached.map(|id| id.to_string()),
            refs: refs.refs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            symbolic_refs: refs.symbolic_refs.clone(),
            object_format,
            packs: outcome.pack.iter().cloned().collect(),
            source_path: path.display().to_string(),
            hostname: hostname(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let snapshot_id = store.write_snapshot(&snapshot)?;
        return Ok(BackupReport {
            snapshot_id,
            bytes_read: outcome.bytes_read,
            bytes_stored: outcome.bytes_stored,
            objects: outcome.pack.map_or(0, |p| p.objects),
        });
    }
}

/// A thin pack's deltas name bases in earlier snapshots; restore finds them there. Before
/// the snapshot is committed, every one of them must be in a pack index of the chain: a
/// snapshot that could not be restored must never be written.
fn check_thin_bases(store: &Store, name: &str, parent: &str, bases: &[gix::ObjectId]) -> Result<()> {
    if bases.is_empty() {
        return Ok(());
    }
    let mut missing: Vec<gix::ObjectId> = bases.to_vec();
    for link in store.chain(name, parent)?.iter().rev() {
        for pack in &link.snapshot.packs {
            let mut index = Vec::new();
            std::io::Read::read_to_end(&mut crate::store::chunker::ChunkReader::new(store, &pack.index), &mut index)
                .with_context(|| format!("snapshot {}: reading the index of pack {}", link.id, pack.checksum))?;
            let mut still_missing = Vec::new();
            for id in missing {
                let found = git::pack_index::contains_v2(&index, &id)
                    .with_context(|| format!("snapshot {}: the index of pack {}", link.id, pack.checksum))?;
                if !found {
                    still_missing.push(id);
                }
            }
            missing = still_missing;
            if missing.is_empty() {
                return Ok(());
            }
        }
    }
    bail!(
        "{} delta base(s) of the new pack are in no earlier snapshot (first: {}); the snapshot would not \
         restore and is not written. This is a bug in repovault; please report it",
        missing.len(),
        missing[0]
    )
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

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .context("reading the hostname")
        .unwrap_or_else(|_| "unknown".into())
}
