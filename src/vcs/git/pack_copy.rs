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
    by_offset: Vec<(u64, ObjectId)>,
}

/// Pack data read ahead of the entries being copied, which come in offset order.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

const WINDOW: usize = 8 << 20;

impl SourcePack {
    /// The bytes of the entry at `offset` (header and compressed data).
    fn entry_bytes<'w>(&self, offset: u64, window: &'w mut Window) -> std::io::Result<&'w [u8]> {
        use std::os::unix::fs::FileExt;
        let next = self.by_offset.partition_point(|&(o, _)| o <= offset);
        let end = self.by_offset.get(next).map_or(self.pack_end, |&(o, _)| o);
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

    fn id_at(&self, offset: u64) -> Option<ObjectId> {
        let at = self.by_offset.binary_search_by_key(&offset, |&(o, _)| o).ok()?;
        Some(self.by_offset[at].1)
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
            let mut by_offset: Vec<(u64, ObjectId)> = index.iter().map(|e| (e.pack_offset, e.oid)).collect();
            by_offset.sort_unstable();
            packs.push(SourcePack { index, data_path, data, pack_end, by_offset });
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
    // Where each object is copied from: the first pack holding it, in offset order.
    let mut per_pack: Vec<Vec<(u64, u32, ObjectId)>> = vec![Vec::new(); packs.len()];
    let mut unpacked = Vec::new();
    'ids: for id in ids {
        for (p, pack) in packs.iter().enumerate() {
            if let Some(at) = pack.index.lookup(id.as_ref()) {
                per_pack[p].push((pack.index.pack_offset_at_index(at), at, *id));
                continue 'ids;
            }
        }
        unpacked.push(*id);
    }
    let mut written: gix::hashtable::HashMap<ObjectId, usize> = gix::hashtable::HashMap::default();
    written.reserve(ids.len());
    let mut buf = Vec::new();
    for (pack, mut entries) in packs.iter().zip(per_pack) {
        entries.sort_unstable();
        let mut window = Window::default();
        for (offset, at, id) in entries {
            let raw = pack
                .entry_bytes(offset, &mut window)
                .with_context(|| format!("object {id}: reading {}", pack.data_path.display()))?;
            if pack.index.crc32_at_index(at).is_some_and(|crc| crc != crc32fast::hash(raw)) {
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
                    Some(offset.checked_sub(base_distance).and_then(|o| pack.id_at(o)))
                }
                Header::RefDelta { base_id } => Some(Some(base_id)),
            };
            let kind = match base {
                None => output::entry::Kind::Base(entry.header.as_kind().expect("base objects have a kind")),
                Some(base) => match base.and_then(|b| written.get(&b).copied()) {
                    Some(object_index) => output::entry::Kind::DeltaRef { object_index },
                    None => {
                        written.insert(id, writer.position());
                        writer.write_entry(whole_object(find, id, &mut buf)?)?;
                        continue;
                    }
                },
            };
            written.insert(id, writer.position());
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
