//! Rebuilding a bare repository from a snapshot: its packs are joined into one pack (see
//! `pack_concat`: entries copied as stored, no delta resolved, no object hashed), and when
//! the packs may hold objects the snapshot's refs no longer reach, that pack is rewritten
//! with only the reachable ones; then the refs and HEAD are written through gix.
//!
//! Joining rather than copying each pack keeps the cost of a restore that of the data, not
//! of the number of nights behind it, and the result one pack about the source's size (thin
//! packs completed one by one, as `index-pack --fix-thin` does, appended a whole base per
//! night). Leaving out the unreachable keeps a branch force-pushed away (a leaked secret)
//! from coming back as a dangling object.

use std::{
    fs,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use anyhow::{Context, Result, anyhow, bail};
use gix::{
    ObjectId,
    hashtable::HashSet,
    refs::{
        FullName, Target,
        transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog},
    },
};
use gix_pack::data::output::count::objects::ObjectExpansion;

use super::{
    pack_concat::{Input, Joiner},
    pack_index::{IndexEntry, decode_v2, encode_v2},
};
use crate::{
    snapshot::{PackRecord, Snapshot},
    store::{
        Store, StoredSnapshot,
        chunker::{ChunkList, ChunkReader},
    },
};

/// Delta chains up to this deep are left as joined; deeper ones are rewritten to git's
/// default depth (`pack_concat::MAX_DELTA_DEPTH`). Any depth is valid and git reads it; a deep chain
/// only costs each read of its newest object. In a format 3 store chains stay below about
/// 50 + 64 (a full snapshot is due after 64 packs), so a restore never pays for the
/// rewrite (on tokio's 300 nights it was 40% of the restore); chains of format 2 stores
/// grow with the nights and do.
const REWRITE_DEEPER_THAN: u16 = 128;

/// Builds the repository of the last snapshot in `chain` (oldest first; the packs to restore
/// are every pack of every link, in order) at `target`, a directory that must not exist yet.
pub fn build(store: &Store, chain: &[StoredSnapshot], target: &Path) -> Result<()> {
    let last = chain.last().context("empty snapshot chain")?;
    let object_hash = match last.snapshot.object_format.as_str() {
        "sha1" => gix::hash::Kind::Sha1,
        other => bail!("object format {other:?} is not supported"),
    };
    gix::init_bare(target).map_err(|e| anyhow!("{e}")).with_context(|| format!("creating {}", target.display()))?;
    let pack_dir = target.join("objects/pack");
    let timer = std::time::Instant::now();
    let joined = join_stored_packs(store, chain, &pack_dir, object_hash)
        .with_context(|| format!("snapshot {}: joining its packs", last.id))?;
    tracing::debug!(
        seconds = timer.elapsed().as_secs_f64(),
        objects = joined.as_ref().map_or(0, |j| j.entries.len()),
        max_delta_depth = joined.as_ref().map_or(0, |j| j.max_depth),
        "joined the snapshot's packs"
    );
    if let Some(joined) = joined
        && (last.snapshot.may_hold_unreachable() || joined.max_depth > REWRITE_DEEPER_THAN)
    {
        rewrite(target, &last.snapshot, joined, object_hash)
            .with_context(|| format!("snapshot {}: rewriting its joined pack", last.id))?;
    }
    write_refs(target, &last.snapshot)?;
    Ok(())
}

/// A pack written into the restored repository.
struct Written {
    pack: PathBuf,
    index: PathBuf,
    /// Its entries in pack order.
    entries: Vec<IndexEntry>,
    /// Its longest delta chain.
    max_depth: u16,
}

/// Pass 1: every pack of the chain, oldest first, joined into one. `None` when the chain
/// holds no objects (an empty repository).
fn join_stored_packs(
    store: &Store,
    chain: &[StoredSnapshot],
    pack_dir: &Path,
    object_hash: gix::hash::Kind,
) -> Result<Option<Written>> {
    let mut seen_packs = std::collections::HashSet::new();
    let mut packs: Vec<(&str, &PackRecord, Vec<IndexEntry>, ObjectId)> = Vec::new();
    for link in chain {
        for pack in &link.snapshot.packs {
            // In format 3 a pack is named by every snapshot that needs it.
            if !seen_packs.insert(pack.checksum.as_str()) {
                continue;
            }
            let (entries, checksum) = read_index(store, &pack.index, object_hash)
                .with_context(|| format!("snapshot {}: pack {}: reading its index", link.id, pack.checksum))?;
            packs.push((&link.id, pack, entries, checksum));
        }
    }
    let distinct: HashSet<ObjectId> =
        packs.iter().flat_map(|(_, _, entries, _)| entries.iter().map(|e| e.id)).collect();
    if distinct.is_empty() {
        return Ok(None);
    }
    let num_objects = u32::try_from(distinct.len()).context("more than 2^32 objects in one pack")?;
    drop(distinct);
    let (file, temp) = temp_pack(pack_dir)?;
    let mut joiner = Joiner::new(BufWriter::with_capacity(1 << 20, file), num_objects, object_hash, None)?;
    for (link, pack, entries, checksum) in packs {
        if checksum != pack.checksum.as_str() {
            bail!("snapshot {link}: pack {}: its index was made for pack {checksum}", pack.checksum);
        }
        joiner.add(Input {
            label: format!("snapshot {link}: pack {}", pack.checksum),
            data: Box::new(BufReader::with_capacity(1 << 20, ChunkReader::new(store, &pack.pack))),
            entries,
            size: pack.pack.size,
            checksum,
        })?;
    }
    finish_pack(joiner, temp, pack_dir).map(Some)
}

/// A stored index's entries, by offset, and the checksum of the pack it was made for.
fn read_index(store: &Store, list: &ChunkList, object_hash: gix::hash::Kind) -> Result<(Vec<IndexEntry>, ObjectId)> {
    let mut bytes = Vec::with_capacity(usize::try_from(list.size).unwrap_or(0));
    ChunkReader::new(store, list).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != list.size {
        bail!("the stored index has {} bytes, its manifest says {}", bytes.len(), list.size);
    }
    let (mut entries, checksum) = decode_v2(&bytes, object_hash)?;
    entries.sort_unstable_by_key(|e| e.offset);
    Ok((entries, checksum))
}

/// A new file in the pack directory under a name git does not read as a pack.
fn temp_pack(pack_dir: &Path) -> Result<(fs::File, tempfile::TempPath)> {
    let temp = tempfile::Builder::new()
        .prefix("tmp_pack_")
        .tempfile_in(pack_dir)
        .with_context(|| format!("creating a pack in {}", pack_dir.display()))?;
    let (file, path) = temp.into_parts();
    Ok((file, path))
}

/// Ends the pack, makes it and then its index durable, and gives both their names: a reader
/// that sees the index finds the whole pack.
fn finish_pack(joiner: Joiner<'_, BufWriter<fs::File>>, temp: tempfile::TempPath, pack_dir: &Path) -> Result<Written> {
    let max_depth = joiner.max_depth;
    let (checksum, entries, out) = joiner.finish()?;
    let file = out.into_inner().map_err(|e| e.into_error()).context("writing the pack")?;
    file.sync_all().context("writing the pack")?;
    let index_bytes = encode_v2(entries.clone(), checksum)?;
    let (mut index_file, index_temp) = temp_pack(pack_dir)?;
    index_file.write_all(&index_bytes).context("writing the pack index")?;
    index_file.sync_all().context("writing the pack index")?;
    let pack = pack_dir.join(format!("pack-{checksum}.pack"));
    let index = pack.with_extension("idx");
    temp.persist(&pack).with_context(|| format!("renaming the pack to {}", pack.display()))?;
    index_temp.persist(&index).with_context(|| format!("renaming the pack index to {}", index.display()))?;
    fs::File::open(pack_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", pack_dir.display()))?;
    Ok(Written { pack, index, entries, max_depth })
}

type Handle = gix::odb::Cache<gix::odb::store::Handle<std::sync::Arc<gix::odb::Store>>>;

/// Delta-base cache of the reachability walk and of the objects read whole.
const PACK_CACHE_BYTES: usize = 32 << 20;

/// Pass 2: rewrites the joined pack with only what the snapshot's refs reach (when its packs
/// may hold more) and with delta chains cut at git's default depth (when they grew deeper:
/// a file changed night after night), unless that would change nothing.
fn rewrite(target: &Path, snapshot: &Snapshot, joined: Written, object_hash: gix::hash::Kind) -> Result<()> {
    let open = || {
        gix::open_opts(target, gix::open::Options::isolated())
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("opening {}", target.display()))
    };
    let repo = open()?;
    // The counter's threads need a handle of their own kind, made from a sole owner.
    let mut handle: Handle = open()?.into_sync().objects.into_shared_arc().to_cache_arc();
    handle.prevent_pack_unload();
    handle.ignore_replacements = true;
    handle.set_pack_cache(|| Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(PACK_CACHE_BYTES)));
    let timer = std::time::Instant::now();
    let reachable = if snapshot.may_hold_unreachable() {
        let reachable = reachable(&repo, &handle, snapshot)?;
        tracing::debug!(
            seconds = timer.elapsed().as_secs_f64(),
            objects = reachable.len(),
            "counted the reachable objects"
        );
        Some(reachable).filter(|r| r.len() != joined.entries.len())
    } else {
        None
    };
    if reachable.is_none() && joined.max_depth <= REWRITE_DEEPER_THAN {
        return Ok(());
    }
    let pack_dir = target.join("objects/pack");
    let num_objects = reachable.as_ref().map_or(joined.entries.len(), |r| r.len());
    if num_objects > 0 {
        let num_objects = u32::try_from(num_objects).context("more than 2^32 objects in one pack")?;
        let (file, temp) = temp_pack(&pack_dir)?;
        let mut joiner = Joiner::new(
            BufWriter::with_capacity(1 << 20, file),
            num_objects,
            object_hash,
            Some((&handle, reachable.as_ref())),
        )?;
        let source = fs::File::open(&joined.pack).with_context(|| format!("opening {}", joined.pack.display()))?;
        let size = source.metadata()?.len();
        let checksum = pack_checksum(&joined.pack)?;
        joiner.add(Input {
            label: format!("the joined pack {}", joined.pack.display()),
            data: Box::new(BufReader::with_capacity(1 << 20, source)),
            entries: joined.entries,
            size,
            checksum,
        })?;
        let read_whole = joiner.read_whole;
        finish_pack(joiner, temp, &pack_dir)?;
        tracing::debug!(seconds = timer.elapsed().as_secs_f64(), objects = num_objects, read_whole, "rewrote the pack");
    }
    drop(handle);
    drop(repo);
    // The index first: git never sees an index without its pack.
    for path in [&joined.index, &joined.pack] {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    fs::File::open(&pack_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", pack_dir.display()))?;
    Ok(())
}

/// The checksum a pack we wrote is named after.
fn pack_checksum(pack: &Path) -> Result<ObjectId> {
    let name = pack.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("pack-"));
    name.and_then(|hex| ObjectId::from_hex(hex.as_bytes()).ok())
        .with_context(|| format!("{} is not named after its checksum", pack.display()))
}

/// Every object reachable from the snapshot's refs and detached HEAD: every commit of their
/// history with its whole tree (gix's counter), tags and other ref targets as they are.
fn reachable(repo: &gix::Repository, handle: &Handle, snapshot: &Snapshot) -> Result<HashSet<ObjectId>> {
    let mut tips = Vec::new();
    let head = snapshot.head_detached.as_ref().map(|id| ("HEAD".to_owned(), id.clone()));
    for (name, id) in snapshot.refs.iter().map(|(n, i)| (n.clone(), i.clone())).chain(head) {
        let id = ObjectId::from_hex(id.as_bytes()).map_err(|e| anyhow!("ref {name}: bad object id {id}: {e}"))?;
        tips.push((name, id));
    }
    let mut commits = Vec::new();
    for (name, tip) in &tips {
        let mut id = *tip;
        loop {
            let object = repo
                .find_object(id)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("ref {name}: object {id} is not in the snapshot's packs"))?;
            match object.kind {
                gix::object::Kind::Commit => {
                    commits.push(id);
                    break;
                }
                gix::object::Kind::Tag => id = object.into_tag().target_id().map_err(|e| anyhow!("{e}"))?.detach(),
                gix::object::Kind::Tree | gix::object::Kind::Blob => break,
            }
        }
    }
    let mut inputs: Vec<ObjectId> = tips.iter().map(|(_, id)| *id).collect();
    if !commits.is_empty() {
        for info in repo.rev_walk(commits).all().map_err(|e| anyhow!("{e}")).context("walking history")? {
            inputs.push(info.map_err(|e| anyhow!("{e}")).context("walking history (a commit is missing)")?.id);
        }
    }
    let (counts, _) = gix_pack::data::output::count::objects(
        handle.clone(),
        Box::new(inputs.into_iter().map(Ok)),
        &gix::progress::Discard,
        &AtomicBool::new(false),
        gix_pack::data::output::count::objects::Options {
            thread_limit: None,
            chunk_size: 50,
            input_object_expansion: ObjectExpansion::TreeContents,
        },
    )
    .map_err(|e| anyhow!("{e}"))
    .context("counting the reachable objects (an object is missing)")?;
    Ok(counts.into_iter().map(|c| c.id).collect())
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
