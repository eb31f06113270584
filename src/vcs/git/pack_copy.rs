//! Copying objects from the source's packs into the pack we write.
//!
//! Pack entries do not record their compressed length, so gix-pack's entry stage inflates
//! every entry to find where it ends. The source's own index already says where each entry
//! starts, so sorting those offsets gives every entry's extent without inflating anything:
//! copying an entry becomes a memory copy plus the CRC32 check git does when it reuses pack
//! data. A delta is copied as a delta when its base was already written to our pack;
//! otherwise (its base is not in this snapshot, or comes later) the object is decoded and
//! written whole, so that the pack stays self-contained. Objects in no pack (loose ones) are
//! read, checked against their name, and deflated.

use std::{io::Write, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use gix::ObjectId;
use gix_pack::data::{entry::Header, output};

use super::pack_writer::PackWriter;

/// One pack of the source, with its entries ordered by offset. Pack data is read with
/// `pread` through a window rather than mapped: copying a whole pack through a mapping would
/// count every page of it in our resident memory.
pub struct SourcePack {
    index: gix_pack::index::File,
    data_path: std::path::PathBuf,
    data: std::fs::File,
    /// Where entries end: the pack's length less its trailing checksum.
    pack_end: u64,
    /// Every entry's offset, ascending, and beside it the entry's position in the index.
    /// Twelve bytes an object: a full backup holds this for every object of the source.
    offsets: Vec<u64>,
    index_positions: Vec<u32>,
    /// The inverse: for each position in the index, the entry's position in offset order.
    offset_positions: Vec<u32>,
}

/// Pack data read ahead of the entries being copied, which come in offset order.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

const WINDOW: usize = 8 << 20;

/// In the per-entry map of where source entries went: not (yet) written.
const NOT_WRITTEN: u32 = u32::MAX;

impl SourcePack {
    /// The bytes of the entry at position `at` in offset order (header and compressed data).
    fn entry_bytes<'w>(&self, at: usize, window: &'w mut Window) -> std::io::Result<&'w [u8]> {
        use std::os::unix::fs::FileExt;
        let offset = self.offsets[at];
        let end = self.offsets.get(at + 1).copied().unwrap_or(self.pack_end);
        if end < offset || end > self.pack_end {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "entry out of bounds"));
        }
        let len = (end - offset) as usize;
        if offset < window.start || end > window.start + window.bytes.len() as u64 {
            window.start = offset;
            window.bytes.resize(len.max(WINDOW).min((self.pack_end - offset) as usize), 0);
            self.data.read_exact_at(&mut window.bytes, offset)?;
        }
        let at = (offset - window.start) as usize;
        Ok(&window.bytes[at..at + len])
    }

    /// The position in offset order of the entry at `offset`.
    fn position_of_offset(&self, offset: u64) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }

    /// The position in offset order of object `id`, if this pack holds it.
    fn position_of(&self, id: &gix::oid) -> Option<usize> {
        let at = self.index.lookup(id)?;
        self.position_of_offset(self.index.pack_offset_at_index(at))
    }
}

/// The packs of a source's object directory and of its alternates.
pub fn source_packs(objects_dir: &Path, object_hash: gix::hash::Kind) -> Result<Vec<SourcePack>> {
    let mut dirs = vec![objects_dir.to_owned()];
    let mut i = 0;
    while i < dirs.len() && dirs.len() < 64 {
        if let Ok(text) = std::fs::read_to_string(dirs[i].join("info/alternates")) {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                let dir = dirs[i].join(line);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        i += 1;
    }
    let mut packs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("pack")) else {
            continue;
        };
        let mut paths: Vec<_> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "idx")).collect();
        paths.sort();
        for path in paths {
            // A pack that a concurrent gc deleted after the listing is skipped: its objects
            // are in the pack that replaced it, or the backup fails and is retried.
            let Ok(index) = gix_pack::index::File::at(&path, object_hash) else {
                continue;
            };
            let data_path = path.with_extension("pack");
            let Ok(data) = std::fs::File::open(&data_path) else {
                continue;
            };
            let pack_end = data.metadata()?.len().saturating_sub(object_hash.len_in_bytes() as u64);
            let mut by_offset: Vec<(u64, u32)> =
                (0..index.num_objects()).map(|at| (index.pack_offset_at_index(at), at)).collect();
            by_offset.sort_unstable();
            let (offsets, index_positions): (Vec<u64>, Vec<u32>) = by_offset.into_iter().unzip();
            let mut offset_positions = vec![0u32; index_positions.len()];
            for (position, &at) in index_positions.iter().enumerate() {
                offset_positions[at as usize] = position as u32;
            }
            packs.push(SourcePack { index, data_path, data, pack_end, offsets, index_positions, offset_positions });
        }
    }
    Ok(packs)
}

/// Writes `ids` (each once) into `writer`: copied from `packs` where possible, read through
/// `find` otherwise.
pub fn write_objects<W: Write>(
    find: &dyn gix_pack::Find,
    packs: &[SourcePack],
    ids: &[ObjectId],
    writer: &mut PackWriter<W>,
) -> Result<()> {
    // Where each object is copied from: the first pack holding it, in offset order. The ids
    // are sorted and walked beside each index (sorted too) rather than looked up one by one:
    // a full backup asks for every object, and 715k binary searches cost more than a merge.
    // Positions rather than ids and offsets keep this at four bytes an object.
    let mut per_pack: Vec<Vec<u32>> = vec![Vec::new(); packs.len()];
    let mut remaining: Vec<ObjectId> = ids.to_vec();
    remaining.sort_unstable();
    for (pack, wanted) in packs.iter().zip(per_pack.iter_mut()) {
        let mut elsewhere = Vec::new();
        let count = pack.index.num_objects();
        let mut at = 0;
        for id in remaining {
            while at < count && pack.index.oid_at_index(at) < id.as_ref() {
                at += 1;
            }
            if at < count && pack.index.oid_at_index(at) == id.as_ref() {
                wanted.push(pack.offset_positions[at as usize]);
                at += 1;
            } else {
                elsewhere.push(id);
            }
        }
        remaining = elsewhere;
    }
    let unpacked = remaining;
    let mut buf = Vec::new();
    for (pack, mut entries) in packs.iter().zip(per_pack) {
        entries.sort_unstable();
        // Per entry of the source pack: where it went in ours, for deltas against it.
        let mut written = vec![NOT_WRITTEN; pack.offsets.len()];
        let mut window = Window::default();
        for at in entries {
            let at = at as usize;
            let offset = pack.offsets[at];
            let index_at = pack.index_positions[at];
            let id = pack.index.oid_at_index(index_at).to_owned();
            let raw = pack
                .entry_bytes(at, &mut window)
                .with_context(|| format!("object {id}: reading {}", pack.data_path.display()))?;
            if pack.index.crc32_at_index(index_at).is_some_and(|crc| crc != crc32fast::hash(raw)) {
                bail!(
                    "object {id} is corrupt in the source: its data in {} does not match the CRC32 its index records",
                    pack.data_path.display()
                );
            }
            let entry = gix_pack::data::Entry::from_bytes(raw, offset, id.kind())
                .map_err(|e| anyhow!("object {id} is corrupt in the source: {e}"))?;
            let base = match entry.header {
                Header::Commit | Header::Tree | Header::Blob | Header::Tag => None,
                Header::OfsDelta { base_distance } => {
                    Some(offset.checked_sub(base_distance).and_then(|o| pack.position_of_offset(o)))
                }
                Header::RefDelta { base_id } => Some(pack.position_of(&base_id)),
            };
            let position = u32::try_from(writer.position()).context("more than 2^32 objects in one pack")?;
            let kind = match base {
                None => output::entry::Kind::Base(entry.header.as_kind().expect("base objects have a kind")),
                Some(base) => match base.map(|b| written[b]).filter(|&w| w != NOT_WRITTEN) {
                    Some(object_index) => output::entry::Kind::DeltaRef { object_index: object_index as usize },
                    None => {
                        written[at] = position;
                        writer.write_entry(whole_object(find, id, &mut buf)?)?;
                        continue;
                    }
                },
            };
            written[at] = position;
            writer.write_entry(output::Entry {
                id,
                kind,
                decompressed_size: entry.decompressed_size as usize,
                compressed_data: raw[entry.data_offset as usize - offset as usize..].to_vec(),
            })?;
        }
    }
    for id in unpacked {
        writer.write_entry(whole_object(find, id, &mut buf)?)?;
    }
    Ok(())
}

/// Reads an object whole, checks that it hashes to its id (gix does not for loose objects),
/// and deflates it as a pack entry.
fn whole_object(find: &dyn gix_pack::Find, id: ObjectId, buf: &mut Vec<u8>) -> Result<output::Entry> {
    let (data, _) = find
        .try_find(&id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("object {id} is unreadable in the source"))?
        .with_context(|| format!("object {id} is missing in the source"))?;
    let actual = gix::objs::compute_hash(id.kind(), data.kind, data.data).map_err(|e| anyhow!("{e}"))?;
    if actual != id {
        bail!("object {id} is corrupt in the source: its content hashes to {actual}");
    }
    output::Entry::from_data(&output::Count::from_data(id, None), &data, gix::zlib::Compression::DEFAULT)
        .map_err(|e| anyhow!("deflating object {id}: {e}"))
}
