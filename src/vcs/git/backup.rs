//! Backing up a git repository: the objects new since the previous snapshot, as one pack.
//!
//! The pack is produced by gix-pack's plumbing in three stages (count, entries, bytes) and
//! streamed twice at once: into the store, chunked, and into a parse of the pack that
//! decompresses every entry and checks the pack's checksum. The parse gives each entry's
//! offset and CRC32; with the ids the writer wrote, that is the pack index, built without
//! resolving a delta or hashing an object again. Before the snapshot is committed, the pack
//! must hold exactly the objects counted, each decompressing cleanly. The index is stored
//! too, which makes a restore a plain copy. (`verify --deep` re-hashes every object.)

use std::{
    collections::{BTreeSet, HashSet},
    io::{self, BufRead, Read, Write},
    sync::{
        Arc,
        atomic::AtomicBool,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
};

use anyhow::{Context, Result, anyhow, bail};
use gix::{ObjectId, parallel::Finalize};
use gix_pack::data::output::{self, count::objects::ObjectExpansion};

use super::{
    pack_index::{IndexEntry, encode_v2},
    source::RefState,
};
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
/// `limiter` paces the pack stream; almost all of it is copied from the source's packs, so
/// this paces the reads of the source disks too.
pub fn write_pack(
    store: &Store,
    repo: gix::Repository,
    refs: &RefState,
    previous: Option<&Previous>,
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
    check_loose_objects(&handle, &counts)?;
    let num_objects = u32::try_from(counts.len()).context("more than 2^32 objects in one pack")?;

    let (store_tx, store_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let (parse_tx, parse_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    std::thread::scope(|scope| -> Result<PackOutcome> {
        let store_thread = scope.spawn(move || -> Result<(ChunkList, u64)> {
            let mut writer = ChunkedWriter::new(store);
            for block in store_rx {
                writer.write_all(&block)?;
            }
            writer.finish()
        });
        let parse_thread = scope.spawn(move || {
            parse_pack(
                ChannelReader {
                    rx: parse_rx,
                    block: Arc::new(Vec::new()),
                    pos: 0,
                },
                object_hash,
            )
        });

        let mut tee = Tee {
            block: Vec::with_capacity(BLOCK),
            limiter,
            outputs: [store_tx, parse_tx],
            written: 0,
        };
        let mut written_ids: Vec<ObjectId> = Vec::with_capacity(counts.len());
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
            // The pack writer skips invalid (missing) entries; the ids of what it does write,
            // in order, pair up with the entries the parse finds.
            let recorded = entries.by_ref().inspect(|chunk| {
                if let Ok(chunk) = chunk {
                    written_ids.extend(chunk.iter().filter(|e| !e.is_invalid()).map(|e| e.id));
                }
            });
            let mut bytes = output::bytes::FromEntriesIter::new(
                recorded,
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
        let parsed = parse_thread
            .join()
            .map_err(|_| anyhow!("pack parser thread panicked"))?;

        let (checksum, entries_outcome) =
            generated.context("generating the pack from the source")?;
        flushed?;
        if entries_outcome.missing_objects > 0 {
            bail!(
                "{} object(s) reachable from the refs are missing in the source; no snapshot recorded",
                entries_outcome.missing_objects
            );
        }
        let (pack_chunks, pack_stored) = stored.context("storing pack data")?;
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(Damaged { entry, error }) => {
                let id = written_ids
                    .get(entry)
                    .map_or("(unknown)".to_owned(), ObjectId::to_string);
                bail!(
                    "object {id} is corrupt in the source: its pack data does not decompress ({error})"
                );
            }
        };
        tracing::debug!(
            seconds = timer.elapsed().as_secs_f64(),
            bytes = bytes_read,
            "pack written and parsed"
        );
        if parsed.trailer != checksum {
            bail!(
                "the written pack's checksum {} differs from the generated {checksum}",
                parsed.trailer
            );
        }
        if parsed.entries.len() != written_ids.len() || written_ids.len() != num_objects as usize {
            bail!(
                "the generated pack holds {} entries for {} objects written and {num_objects} counted",
                parsed.entries.len(),
                written_ids.len()
            );
        }
        let index_entries = written_ids
            .into_iter()
            .zip(parsed.entries)
            .map(|(id, (offset, crc32))| IndexEntry { id, offset, crc32 })
            .collect();
        let index = encode_v2(index_entries, checksum)?;
        let mut index_writer = ChunkedWriter::new(store);
        index_writer.write_all(&index)?;
        let (index_chunks, index_stored) = index_writer.finish()?;
        tracing::debug!(seconds = timer.elapsed().as_secs_f64(), "index stored");
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

/// Objects not in a pack are read and deflated anew rather than copied; gix does not check
/// that a loose object's content hashes to its name, so that is checked here. (Packed
/// objects are checked by the parse of the written pack: every entry must decompress.)
fn check_loose_objects(handle: &Handle, counts: &[output::Count]) -> Result<()> {
    use gix_pack::Find;
    let mut buf = Vec::new();
    for count in counts {
        if handle
            .location_by_oid(&count.id, &mut buf)
            .map_err(|e| anyhow!("{e}"))?
            .is_some()
        {
            continue;
        }
        let (data, _) = handle
            .try_find(&count.id, &mut buf)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("object {} is unreadable in the source", count.id))?
            .with_context(|| format!("object {} is missing in the source", count.id))?;
        let actual = gix::objs::compute_hash(count.id.kind(), data.kind, data.data)
            .map_err(|e| anyhow!("{e}"))?;
        if actual != count.id {
            bail!(
                "object {} is corrupt in the source: its content hashes to {actual}",
                count.id
            );
        }
    }
    Ok(())
}

/// What a parse of the written pack found: every entry's offset and CRC32, and the trailer.
struct ParsedPack {
    entries: Vec<(u64, u32)>,
    trailer: ObjectId,
}

/// The parse failed at entry number `entry`.
struct Damaged {
    entry: usize,
    error: String,
}

/// Reads the pack as it is being stored: every entry is decompressed (zlib checks its own
/// checksum) and the pack's trailing checksum is verified.
fn parse_pack(
    mut reader: ChannelReader,
    object_hash: gix::hash::Kind,
) -> std::result::Result<ParsedPack, Damaged> {
    let result = (|| {
        let iter = gix_pack::data::input::BytesToEntriesIter::new_from_header(
            &mut reader,
            gix_pack::data::input::Mode::Verify,
            gix_pack::data::input::EntryDataMode::Crc32,
            object_hash,
        )
        .map_err(|e| Damaged {
            entry: 0,
            error: e.to_string(),
        })?;
        let mut entries = Vec::new();
        let mut trailer = None;
        for entry in iter {
            let entry = entry.map_err(|e| Damaged {
                entry: entries.len(),
                error: e.to_string(),
            })?;
            entries.push((entry.pack_offset, entry.crc32.unwrap_or_default()));
            trailer = entry.trailer.or(trailer);
        }
        let trailer = trailer.ok_or(Damaged {
            entry: entries.len(),
            error: "the pack has no trailer".into(),
        })?;
        Ok(ParsedPack { entries, trailer })
    })();
    // Drain so that the writer never blocks on a parser that stopped early.
    std::io::copy(&mut reader, &mut std::io::sink()).ok();
    result
}
