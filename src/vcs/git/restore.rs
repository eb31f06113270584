//! Rebuilding a bare repository from a snapshot chain: the packs and their indexes are
//! copied in as stored (the store re-hashes every chunk it hands out), thin packs are
//! completed with their bases from the packs before them, then the refs and HEAD are
//! written through gix.

use std::{fs, io::Write, path::Path};

use anyhow::{Context, Result, anyhow};
use gix::refs::{
    FullName, Target,
    transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog},
};

use crate::{
    snapshot::{PackRecord, Snapshot},
    store::{
        Store, StoredSnapshot,
        chunker::{ChunkList, ChunkReader},
    },
};

/// Builds the repository of the last snapshot in `chain` (oldest first) at `target`, a
/// directory that must not exist yet.
pub fn build(store: &Store, chain: &[StoredSnapshot], target: &Path) -> Result<()> {
    let last = &chain.last().context("empty snapshot chain")?.snapshot;
    gix::init_bare(target).map_err(|e| anyhow!("{e}")).with_context(|| format!("creating {}", target.display()))?;
    let pack_dir = target.join("objects/pack");
    for link in chain {
        for pack in &link.snapshot.packs {
            if pack.thin {
                complete_thin_pack(store, pack, target, &link.snapshot.object_format)
                    .with_context(|| format!("snapshot {}: restoring thin pack {}", link.id, pack.checksum))?;
                continue;
            }
            let base = pack_dir.join(format!("pack-{}", pack.checksum));
            copy_stream(store, &pack.pack, &base.with_extension("pack"))
                .with_context(|| format!("snapshot {}: restoring pack {}", link.id, pack.checksum))?;
            copy_stream(store, &pack.index, &base.with_extension("idx"))
                .with_context(|| format!("snapshot {}: restoring pack index {}", link.id, pack.checksum))?;
        }
    }
    write_refs(target, last)?;
    Ok(())
}

/// A thin pack holds deltas against objects of earlier packs of the chain, which git does
/// not accept across packs. gix's pack writer (what `git index-pack --fix-thin` does) reads
/// it, looks those bases up in the packs restored so far (the chain is restored oldest
/// first), appends them, and writes the completed pack and its index.
fn complete_thin_pack(store: &Store, pack: &PackRecord, target: &Path, object_format: &str) -> Result<()> {
    let object_hash = match object_format {
        "sha1" => gix::hash::Kind::Sha1,
        other => anyhow::bail!("object format {other:?} is not supported"),
    };
    // A new handle for each pack: it lists the pack directory as it is now.
    let restored = gix::odb::at(target.join("objects"), object_hash)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("opening {}", target.display()))?;
    let mut stream = std::io::BufReader::with_capacity(1 << 20, ChunkReader::new(store, &pack.pack));
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut stream,
        Some(&target.join("objects/pack")),
        &mut gix::progress::Discard,
        &std::sync::atomic::AtomicBool::new(false),
        Some(restored),
        object_hash,
        gix_pack::bundle::write::Options::default(),
    )
    .map_err(|e| anyhow!("{e}"))
    .context("completing the pack with its bases from earlier snapshots")?;
    if let Some(keep) = outcome.keep_path {
        fs::remove_file(&keep).with_context(|| format!("removing {}", keep.display()))?;
    }
    Ok(())
}

fn copy_stream(store: &Store, list: &ChunkList, path: &Path) -> Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let copied = std::io::copy(&mut ChunkReader::new(store, list), &mut file)
        .with_context(|| format!("writing {}", path.display()))?;
    if copied != list.size {
        anyhow::bail!("{}: stored stream has {copied} bytes, its manifest says {}", path.display(), list.size);
    }
    file.flush()?;
    file.sync_all()?;
    Ok(())
}

fn full_name(name: &str) -> Result<FullName> {
    FullName::try_from(name).map_err(|e| anyhow!("ref name {name} in the snapshot is invalid: {e}"))
}

fn update(name: &str, new: Target) -> Result<RefEdit> {
    Ok(RefEdit {
        change: Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: "repovault restore".into(),
            },
            expected: PreviousValue::Any,
            new,
        },
        name: full_name(name)?,
        deref: false,
    })
}

fn write_refs(target: &Path, snapshot: &Snapshot) -> Result<()> {
    let repo = gix::open_opts(target, gix::open::Options::isolated())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("opening the restored repository {}", target.display()))?;
    let mut edits = Vec::new();
    for (name, id) in &snapshot.refs {
        let id = gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| anyhow!("ref {name}: bad object id {id}: {e}"))?;
        edits.push(update(name, Target::Object(id))?);
    }
    for (name, to) in &snapshot.symbolic_refs {
        edits.push(update(name, Target::Symbolic(full_name(to)?))?);
    }
    match (&snapshot.head, &snapshot.head_detached) {
        (_, Some(id)) => {
            let id = gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| anyhow!("HEAD: bad object id {id}: {e}"))?;
            edits.push(update("HEAD", Target::Object(id))?);
        }
        (Some(head), None) => edits.push(update("HEAD", Target::Symbolic(full_name(head)?))?),
        (None, None) => {}
    }
    repo.edit_references_as(edits, None)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("writing refs into {}", target.display()))?;
    Ok(())
}
