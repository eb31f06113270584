//! Backing up a git repository: the objects new since the previous snapshot, as one pack.
//!
//! The pack is produced by gix-pack's plumbing in three stages (count, entries, bytes) and
//! streamed twice at once: into the store, chunked, and into gix's pack indexer in a
//! scratch directory. The indexer re-hashes every object it receives, so comparing its
//! index with the list of objects we counted proves, before the snapshot is committed,
//! that every object the snapshot claims is in its pack with the right content. The
//! index is stored as well, which makes a restore a plain copy.

use std::{
    collections::{BTreeSet, HashSet},
    io::{self, BufRead, Read, Write},
    path::Path,
    sync::{
        Arc,
        atomic::AtomicBool,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
};

use anyhow::{Context, Result, anyhow, bail};
use gix::{ObjectId, parallel::Finalize};
use gix_pack::data::output::{self, count::objects::ObjectExpansion};

use super::source::RefState;
use crate::{
    snapshot::PackRecord,
    store::{
        Store,
        chunker::{ChunkList, ChunkedWriter},
    },
    throttle::RateLimiter,
};

/// What the previous snapshot of this repository recorded, as far as the backup needs it.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    /// Every object a ref of the previous snapshot pointed at.
    pub tips: BTreeSet<ObjectId>,
}

/// The outcome of writing one repository's new objects.
#[derive(Debug, Default)]
pub struct PackOutcome {
    pub pack: Option<PackRecord>,
    /// Bytes of pack data read from the source and sent to the store.
    pub bytes_read: u64,
    /// Bytes newly written to the store (after deduplication and compression).
    pub bytes_stored: u64,
}

/// Objects to put in the pack, grouped by how they must be expanded.
struct Selection {
    /// New commits: each is diffed against its parents (or fully expanded if it has none).
    commits: Vec<ObjectId>,
    /// Tag objects and blobs pointed at by refs: taken as they are.
    as_is: Vec<ObjectId>,
    /// Trees pointed at by refs (through tags or directly): taken with their whole contents.
    trees: Vec<ObjectId>,
}

/// Decides which objects are new: commits reachable from the refs but not from the
/// previous snapshot's refs, and non-commit ref targets the previous snapshot did not have.
fn select(repo: &gix::Repository, refs: &RefState, previous: &Previous) -> Result<Selection> {
    let mut selection = Selection {
        commits: Vec::new(),
        as_is: Vec::new(),
        trees: Vec::new(),
    };
    let mut walk_tips = BTreeSet::new();
    for tip in refs.tips() {
        let mut id = tip;
        let already_stored = previous.tips.contains(&tip);
        loop {
            let object = repo
                .find_object(id)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| {
                    format!("object {id} (target of a ref) is missing or corrupt in the source")
                })?;
            match object.kind {
                gix::object::Kind::Commit => {
                    walk_tips.insert(id);
                    break;
                }
                gix::object::Kind::Tag => {
                    if !already_stored {
                        selection.as_is.push(id);
                    }
                    id = object
                        .into_tag()
                        .target_id()
                        .map_err(|e| anyhow!("{e}"))?
                        .detach();
                }
                gix::object::Kind::Tree => {
                    if !already_stored {
                        selection.trees.push(id);
                    }
                    break;
                }
                gix::object::Kind::Blob => {
                    if !already_stored {
                        selection.as_is.push(id);
                    }
                    break;
                }
            }
        }
    }
    // Hidden tips must be commits that exist here: the previous snapshot's tips may have
    // been deleted and garbage-collected since.
    let mut hidden = Vec::new();
    for tip in &previous.tips {
        if let Some(commit) = peel_to_commit(repo, *tip) {
            hidden.push(commit);
        }
    }
    if walk_tips.is_empty() {
        return Ok(selection);
    }
    let walk = repo
        .rev_walk(walk_tips)
        .with_hidden(hidden)
        .all()
        .map_err(|e| anyhow!("{e}"))
        .context("walking history")?;
    for info in walk {
        let info = info
            .map_err(|e| anyhow!("{e}"))
            .context("walking history (a commit is missing or corrupt)")?;
        selection.commits.push(info.id);
    }
    Ok(selection)
}

fn peel_to_commit(repo: &gix::Repository, mut id: ObjectId) -> Option<ObjectId> {
    loop {
        let object = repo.try_find_object(id).ok()??;
        match object.kind {
            gix::object::Kind::Commit => return Some(id),
            gix::object::Kind::Tag => id = object.into_tag().target_id().ok()?.detach(),
            _ => return None,
        }
    }
}

type Handle = gix::odb::Cache<gix::odb::store::Handle<Arc<gix::odb::Store>>>;

const PACK_CACHE_BYTES: usize = 64 << 20;
const OBJECT_CACHE_BYTES: usize = 64 << 20;

/// Counts every object the pack must hold.
fn count(handle: &Handle, selection: Selection, full: bool) -> Result<Vec<output::Count>> {
    let interrupt = AtomicBool::new(false);
    let progress = gix::progress::Discard;
    let mut counts = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |batch: Vec<output::Count>| {
        for c in batch {
            if seen.insert(c.id) {
                counts.push(c);
            }
        }
    };
    let as_err = |e: gix::Error| anyhow!("{e}");
    if full {
        // Nothing is stored yet: every commit's whole tree is wanted, which the threaded
        // counter does fastest.
        let inputs: Vec<_> = selection
            .commits
            .into_iter()
            .chain(selection.trees)
            .chain(selection.as_is)
            .collect();
        let (batch, _) = output::count::objects(
            handle.clone(),
            Box::new(inputs.into_iter().map(Ok)),
            &progress,
            &interrupt,
            output::count::objects::Options {
                thread_limit: None,
                chunk_size: 50,
                input_object_expansion: ObjectExpansion::TreeContents,
            },
        )
        .map_err(as_err)
        .context("counting objects (an object is missing or corrupt)")?;
        add(batch);
    } else {
        // Diffing against parents is sequential by nature; upstream counts it unthreaded.
        for (inputs, expansion) in [
            (
                selection.commits,
                ObjectExpansion::TreeAdditionsComparedToAncestor,
            ),
            (selection.trees, ObjectExpansion::TreeContents),
            (selection.as_is, ObjectExpansion::AsIs),
        ] {
            if inputs.is_empty() {
                continue;
            }
            let (batch, _) = output::count::objects_unthreaded(
                handle,
                &mut inputs.into_iter().map(Ok),
                &progress,
                &interrupt,
                expansion,
            )
            .map_err(as_err)
            .context("counting objects (an object is missing or corrupt)")?;
            add(batch);
        }
    }
    Ok(counts)
}

/// Sends what is written to two consumers in blocks.
struct Tee<'l> {
    block: Vec<u8>,
    limiter: Option<&'l RateLimiter>,
    outputs: [SyncSender<Arc<Vec<u8>>>; 2],
    written: u64,
}

const BLOCK: usize = 1 << 20;

impl Tee<'_> {
    fn send_block(&mut self) -> io::Result<()> {
        let block = Arc::new(std::mem::replace(
            &mut self.block,
            Vec::with_capacity(BLOCK),
        ));
        for out in &self.outputs {
            out.send(block.clone())
                .map_err(|_| io::Error::other("a pack consumer stopped early"))?;
        }
        Ok(())
    }
}

impl Write for Tee<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(limiter) = self.limiter {
            limiter.acquire(data.len());
        }
        self.block.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.block.len() >= BLOCK {
            self.send_block()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            self.send_block()?;
        }
        Ok(())
    }
}

/// Reads blocks from a channel as one byte stream.
struct ChannelReader {
    rx: Receiver<Arc<Vec<u8>>>,
    block: Arc<Vec<u8>>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(block) => {
                    self.block = block;
                    self.pos = 0;
                }
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.block[self.pos..])
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

/// Stores the objects of `repo` that are new since `previous` as one pack with its index.
/// `scratch` is a local directory for the indexer's copy of the pack. `limiter` paces the
/// pack stream; almost all of it is copied from the source's packs, so this paces the reads
/// of the source disks too.
pub fn write_pack(
    store: &Store,
    repo: gix::Repository,
    refs: &RefState,
    previous: Option<&Previous>,
    scratch: &Path,
    limiter: Option<&RateLimiter>,
) -> Result<PackOutcome> {
    let full = previous.is_none();
    let timer = std::time::Instant::now();
    let selection = select(&repo, refs, previous.unwrap_or(&Previous::default()))?;
    tracing::debug!(
        seconds = timer.elapsed().as_secs_f64(),
        commits = selection.commits.len(),
        "selected new commits"
    );
    if selection.commits.is_empty() && selection.trees.is_empty() && selection.as_is.is_empty() {
        return Ok(PackOutcome::default());
    }
    let object_hash = repo.object_hash();
    let mut handle: Handle = repo.into_sync().objects.into_shared_arc().to_cache_arc();
    handle.prevent_pack_unload();
    handle.ignore_replacements = true;
    handle.set_pack_cache(|| {
        Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(
            PACK_CACHE_BYTES / 2,
        ))
    });
    if !full {
        handle.set_object_cache(|| {
            Box::new(gix_pack::cache::object::MemoryCappedHashmap::new(
                OBJECT_CACHE_BYTES,
            ))
        });
    }
    let counts = count(&handle, selection, full)?;
    tracing::debug!(
        seconds = timer.elapsed().as_secs_f64(),
        objects = counts.len(),
        "counted objects"
    );
    let counted: Vec<ObjectId> = counts.iter().map(|c| c.id).collect();
    let num_objects = u32::try_from(counts.len()).context("more than 2^32 objects in one pack")?;

    let (store_tx, store_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let (index_tx, index_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    std::thread::scope(|scope| -> Result<PackOutcome> {
        let store_thread = scope.spawn(move || -> Result<(ChunkList, u64)> {
            let mut writer = ChunkedWriter::new(store);
            for block in store_rx {
                writer.write_all(&block)?;
            }
            writer.finish()
        });
        let index_thread = scope.spawn(move || -> Result<gix_pack::bundle::write::Outcome> {
            let mut reader = ChannelReader {
                rx: index_rx,
                block: Arc::new(Vec::new()),
                pos: 0,
            };
            let outcome = gix_pack::Bundle::write_to_directory(
                &mut reader,
                Some(scratch),
                &mut gix::progress::Discard,
                &AtomicBool::new(false),
                None::<gix::objs::find::Never>,
                object_hash,
                gix_pack::bundle::write::Options::default(),
            );
            // Drain so that the writer never blocks on a failed indexer.
            std::io::copy(&mut reader, &mut std::io::sink()).ok();
            outcome.map_err(|e| anyhow!("{e}"))
        });

        let mut tee = Tee {
            block: Vec::with_capacity(BLOCK),
            limiter,
            outputs: [store_tx, index_tx],
            written: 0,
        };
        let generated = (|| -> Result<(ObjectId, output::entry::iter_from_counts::Outcome)> {
            let mut entries = gix::parallel::InOrderIter::from(
                output::entry::iter_from_counts(
                    counts,
                    handle.clone(),
                    Box::new(gix::progress::Discard),
                    output::entry::iter_from_counts::Options {
                        thread_limit: None,
                        mode: output::entry::iter_from_counts::Mode::PackCopyAndBaseObjects,
                        allow_thin_pack: false,
                        chunk_size: 50,
                        version: Default::default(),
                        compression: gix::zlib::Compression::DEFAULT,
                    },
                )
                .map_err(|e| anyhow!("{e}"))?,
            );
            let mut bytes = output::bytes::FromEntriesIter::new(
                entries.by_ref(),
                &mut tee,
                num_objects,
                gix_pack::data::Version::default(),
                object_hash,
            );
            for written in bytes.by_ref() {
                written
                    .map_err(|e| anyhow!("{e}"))
                    .context("writing pack data")?;
            }
            let checksum = bytes.digest().context("pack writer did not finish")?;
            let outcome = entries.inner.finalize().map_err(|e| anyhow!("{e}"))?;
            Ok((checksum, outcome))
        })();
        let flushed = tee.flush();
        let bytes_read = tee.written;
        drop(tee);
        let stored = store_thread
            .join()
            .map_err(|_| anyhow!("store writer thread panicked"))?;
        let indexed = index_thread
            .join()
            .map_err(|_| anyhow!("pack indexer thread panicked"))?;

        let (checksum, entries_outcome) =
            generated.context("generating the pack from the source")?;
        flushed?;
        if entries_outcome.missing_objects > 0 {
            let missing: Vec<String> = counted
                .iter()
                .filter(|id| !handle_contains(&handle, id))
                .take(5)
                .map(|id| id.to_string())
                .collect();
            bail!(
                "{} object(s) reachable from the refs are missing in the source (first: {}); no snapshot recorded",
                entries_outcome.missing_objects,
                missing.join(", ")
            );
        }
        let (pack_chunks, pack_stored) = stored.context("storing pack data")?;
        let indexed =
            indexed.context("indexing the generated pack (source object data is corrupt)")?;
        let index_path = indexed
            .index_path
            .clone()
            .context("indexer wrote no index")?;
        tracing::debug!(
            seconds = timer.elapsed().as_secs_f64(),
            bytes = bytes_read,
            "pack written and indexed"
        );
        check_index_holds(&index_path, object_hash, &counted)?;
        if indexed.index.data_hash != checksum {
            bail!(
                "the indexed pack's checksum {} differs from the generated {checksum}",
                indexed.index.data_hash
            );
        }
        let mut index_writer = ChunkedWriter::new(store);
        std::io::copy(
            &mut std::fs::File::open(&index_path)
                .with_context(|| format!("reading {}", index_path.display()))?,
            &mut index_writer,
        )?;
        let (index_chunks, index_stored) = index_writer.finish()?;
        tracing::debug!(
            seconds = timer.elapsed().as_secs_f64(),
            "index checked and stored"
        );
        Ok(PackOutcome {
            pack: Some(PackRecord {
                checksum: checksum.to_string(),
                objects: u64::from(num_objects),
                pack: pack_chunks,
                index: index_chunks,
            }),
            bytes_read,
            bytes_stored: pack_stored + index_stored,
        })
    })
}

fn handle_contains(handle: &Handle, id: &ObjectId) -> bool {
    use gix::objs::Exists;
    handle.exists(id)
}

/// Every counted object must be in the index the indexer built from the bytes we stored:
/// an object whose source data was corrupt hashes to a different id there.
fn check_index_holds(
    index_path: &Path,
    object_hash: gix::hash::Kind,
    counted: &[ObjectId],
) -> Result<()> {
    let index = gix_pack::index::File::at(index_path, object_hash)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("opening {}", index_path.display()))?;
    if index.num_objects() as usize != counted.len() {
        let missing: Vec<String> = counted
            .iter()
            .filter(|id| index.lookup(id.as_ref()).is_none())
            .take(5)
            .map(|id| id.to_string())
            .collect();
        bail!(
            "the generated pack holds {} objects where {} were counted; corrupt in the source: {}",
            index.num_objects(),
            counted.len(),
            missing.join(", ")
        );
    }
    if let Some(id) = counted
        .iter()
        .find(|id| index.lookup(id.as_ref()).is_none())
    {
        bail!("object {id} is corrupt in the source: its data does not hash to its id");
    }
    Ok(())
}
