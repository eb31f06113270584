//! Git repositories, read and written through gix.
//!
//! - `source`: opening a source repository, refusing what cannot be backed up faithfully,
//!   and reading its refs.
//! - `backup`: computing what is new since the previous snapshot and streaming it as a pack.
//! - `restore`: rebuilding a bare repository from a snapshot chain.
//! - `connectivity`: checking that every object reachable from every ref is present.

pub mod backup;
pub mod connectivity;
pub mod delta;
pub mod delta_bases;
pub mod pack_concat;
pub mod pack_copy;
pub mod pack_index;
pub mod pack_writer;
pub mod restore;
pub mod rev_list;
pub mod snapshot;
pub mod source;
pub mod stored_objects;

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};

use super::{SourceStat, System};
use crate::{
    backup::{BackupReport, Job},
    snapshot::Snapshot,
    store::{Store, StoredSnapshot},
};

pub struct Git;

impl System for Git {
    fn source_stat(&self, path: &Path) -> SourceStat {
        source::refs_stat(&source::git_dir_of(path))
    }

    fn holds_current_state(&self, path: &Path, snapshot: &Snapshot) -> bool {
        holds_current_state(path, snapshot)
    }

    fn back_up(&self, job: Job<'_>) -> Result<BackupReport> {
        snapshot::back_up(job)
    }

    fn restore(&self, store: &Store, chain: &[StoredSnapshot], dest: &Path) -> Result<()> {
        restore::build(store, chain, dest)
    }

    fn deep_check(&self, store: &Store, chain: &[StoredSnapshot], scratch: &Path) -> Result<()> {
        deep_check(store, chain, scratch)
    }
}

/// Whether `snapshot` holds the source's current state: its ref fingerprint is the same,
/// or (the ref files were rewritten, as by `git pack-refs`) the refs and HEAD read now are
/// the ones it recorded.
fn holds_current_state(path: &Path, snapshot: &Snapshot) -> bool {
    let git_dir = source::git_dir_of(path);
    if snapshot.source_fingerprint.as_deref() == Some(source::refs_stat(&git_dir).fingerprint.as_str()) {
        return true;
    }
    let Ok(now) = source::open(path).and_then(|repo| source::read_refs(&repo)) else {
        return false;
    };
    snapshot.head == now.head
        && snapshot.head_detached == now.head_detached.map(|id| id.to_string())
        && snapshot.symbolic_refs == now.symbolic_refs
        && snapshot.refs.len() == now.refs.len()
        && snapshot.refs.iter().zip(&now.refs).all(|((name, id), (now_name, now_id))| {
            name == now_name && gix::ObjectId::from_hex(id.as_bytes()).is_ok_and(|id| id == *now_id)
        })
}

fn deep_check(store: &Store, chain: &[StoredSnapshot], scratch: &Path) -> Result<()> {
    let latest = chain.last().context("an empty chain")?;
    let target = scratch.join("repo.git");
    restore::build(store, chain, &target)?;
    // Every object of every pack re-hashed against its index entry (backups record ids
    // without hashing objects again; this is where that is checked).
    // The rebuilt packs are listed from disk: the restore joins the snapshot's packs into
    // one pack with a name of its own.
    let pack_dir = target.join("objects/pack");
    let mut indexes: Vec<_> = std::fs::read_dir(&pack_dir)
        .with_context(|| format!("listing {}", pack_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    // (Two snapshots may hold the same pack, which the rebuilt repository holds once.)
    indexes.sort();
    for path in indexes {
        check_pack_integrity(&path)?;
    }
    let mut repo = gix::open_opts(&target, gix::open::Options::isolated()).map_err(|e| anyhow::anyhow!("{e}"))?;
    source::without_replacements(&mut repo);
    let refs = source::read_refs(&repo)?;
    let recorded: BTreeMap<String, String> = refs.refs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    if recorded != latest.snapshot.refs {
        anyhow::bail!("the rebuilt repository's refs differ from the snapshot's");
    }
    connectivity::check(&repo, &refs, connectivity::Blobs::Exist)?;
    Ok(())
}

fn check_pack_integrity(index: &Path) -> Result<()> {
    let name = index.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let pack = name.strip_prefix("pack-").unwrap_or(&name);
    let bundle = gix_pack::Bundle::at(index, gix::hash::Kind::Sha1)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("pack {pack}"))?;
    bundle
        .verify_integrity(
            &mut gix::progress::Discard,
            &std::sync::atomic::AtomicBool::new(false),
            gix_pack::index::verify::integrity::Options {
                verify_mode: gix_pack::index::verify::Mode::HashCrc32Decode,
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("pack {pack} fails its integrity check"))?;
    Ok(())
}
