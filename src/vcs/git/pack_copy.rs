//! Copying objects from the source's packs into the pack we write.
//!
//! Pack entries do not record their compressed length, so gix-pack's entry stage inflates
//! every entry to find where it ends. The source's own index already says where each entry
//! starts, so sorting those offsets gives every entry's extent without inflating anything:
//! copying an entry becomes a memory copy plus the CRC32 check git does when it reuses pack
//! data. A delta is copied as a delta when its base was already written to our pack.
//! Otherwise (its base is not in this snapshot, or comes later), and for objects in no pack
//! (loose ones), the object is read whole, checked against its name, and written as a delta
//! against the base `delta_bases` chose for it when that pays (in this pack, or in an
//! earlier snapshot: a thin pack), else deflated whole. A first snapshot that is exactly
//! one source pack is copied byte for byte (`copy_verbatim`).

use std::{io::Write, path::Path};

use gix::hashtable::{HashMap, HashSet};

use anyhow::{Context, Result, anyhow, bail};
use gix::ObjectId;
use gix_pack::data::{entry::Header, output};

use super::{pack_writer::PackWriter, stored_objects::StoredObjects};

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

    /// How many objects the pack holds.
    pub fn num_objects(&self) -> u32 {
        self.index.num_objects()
    }

    /// Whether the pack's index is one that can be stored as it is (version 2: it records
    /// the CRC32s the copy checks, and it is the version the store format names).
    pub fn storable_as_is(&self) -> bool {
        self.index.version() == gix_pack::index::Version::V2
    }

    /// Whether git wrote a reachability bitmap for this pack: `git repack -adb` (a forge's
    /// housekeeping) does, for a pack of exactly the objects the refs reached then.
    pub fn has_bitmap(&self) -> bool {
        self.data_path.with_extension("bitmap").is_file()
    }

    /// Whether this pack holds object `id`.
    pub fn holds(&self, id: &gix::oid) -> bool {
        self.index.lookup(id).is_some()
    }

    /// The position in offset order of object `id`, if this pack holds it.
    fn position_of(&self, id: &gix::oid) -> Option<usize> {
        let at = self.index.lookup(id)?;
        self.position_of_offset(self.index.pack_offset_at_index(at))
    }
}

/// Whether `ids` (distinct) are exactly the objects of `pack`, and its index is one that
/// can be stored as it is.
pub fn holds_exactly(pack: &SourcePack, ids: &[ObjectId]) -> bool {
    if ids.len() != pack.offsets.len() || !pack.storable_as_is() {
        return false;
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    // The index lists its ids sorted too.
    sorted.iter().enumerate().all(|(at, id)| pack.index.oid_at_index(at as u32) == id.as_ref())
}

/// Copies `pack` into `out` byte for byte: its header, every entry (each checked against the
/// CRC32 its index records, as a copy entry by entry is) and its trailing checksum, which
/// must be the one its index was made for. Returns that checksum. For a first snapshot of a
/// freshly repacked source this is the whole snapshot: nothing to re-encode, re-hash or
/// re-index (the source's index is stored as it is).
pub fn copy_verbatim(pack: &SourcePack, out: &mut impl Write) -> Result<ObjectId> {
    use std::os::unix::fs::FileExt;
    let path = pack.data_path.display();
    let mut header = [0u8; 12];
    pack.data.read_exact_at(&mut header, 0).with_context(|| format!("reading {path}"))?;
    let declared = u32::from_be_bytes(header[8..12].try_into().expect("four bytes"));
    if &header[..4] != b"PACK" || declared as usize != pack.offsets.len() || pack.offsets.first() != Some(&12) {
        bail!("{path} is corrupt: its header does not match its index");
    }
    out.write_all(&header).context("writing pack data")?;
    let mut window = Window::default();
    for at in 0..pack.offsets.len() {
        let index_at = pack.index_positions[at];
        let raw = pack.entry_bytes(at, &mut window).with_context(|| format!("reading {path}"))?;
        if pack.index.crc32_at_index(index_at).is_some_and(|crc| crc != crc32fast::hash(raw)) {
            bail!(
                "object {} is corrupt in the source: its data in {path} does not match the CRC32 its index records",
                pack.index.oid_at_index(index_at)
            );
        }
        out.write_all(raw).context("writing pack data")?;
    }
    let mut trailer = vec![0u8; pack.index.pack_checksum().as_slice().len()];
    pack.data.read_exact_at(&mut trailer, pack.pack_end).with_context(|| format!("reading {path}"))?;
    if trailer != pack.index.pack_checksum().as_slice() {
        bail!("{path} is corrupt: its trailing checksum is not the one its index was made for");
    }
    out.write_all(&trailer).context("writing pack data")?;
    Ok(pack.index.pack_checksum())
}

/// The bytes of a source pack's index, read again for storing, checked to be the index of
/// the pack with `checksum` (its trailer names the pack it was made for).
pub fn index_bytes(pack: &SourcePack, checksum: &ObjectId) -> Result<Vec<u8>> {
    let path = pack.data_path.with_extension("idx");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let hash_len = checksum.as_slice().len();
    let names_pack = bytes.len() >= 2 * hash_len
        && &bytes[bytes.len() - 2 * hash_len..bytes.len() - hash_len] == checksum.as_slice();
    if !names_pack {
        bail!("{} changed while it was being copied: it is no longer the index of pack {checksum}", path.display());
    }
    Ok(bytes)
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
        // Oldest first: a pack a push left carries copies of its deltas' bases, which are
        // first copied (whole or as deltas) from the older pack they came from; taken from
        // the newest pack first, every version would be stored whole.
        paths.sort_by_cached_key(|p| {
            let modified = std::fs::metadata(p.with_extension("pack")).and_then(|m| m.modified()).ok();
            (modified, p.clone())
        });
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
/// Candidate delta bases for objects that would otherwise be written whole (see
/// `delta_bases`), and which objects are new in this snapshot: a base that is not new is in
/// the snapshot chain and may be named across packs (a thin delta).
#[derive(Default)]
pub struct DeltaBases<'s> {
    pub bases: HashMap<ObjectId, ObjectId>,
    pub new_objects: HashSet<ObjectId>,
    /// Whether a base in the chain may be used (store format 2 on).
    pub thin_allowed: bool,
    /// What the chain holds, for the source's own deltas against objects not in this
    /// snapshot: such a delta is kept when its base is stored (see `chain_holds`).
    pub stored: Option<&'s StoredObjects<'s>>,
}

impl DeltaBases<'_> {
    /// Whether a source delta against `base`, an object this snapshot does not hold, may be
    /// stored as it is: against `base` in an earlier snapshot (a thin delta, as git's own
    /// incremental bundles hold). Only when the chain's pack indexes list it: a base that
    /// is merely old (unreachable, or on a branch never backed up) would not restore.
    fn chain_holds(&self, base: &ObjectId) -> Result<bool> {
        if !self.thin_allowed || self.new_objects.contains(base) {
            return Ok(false);
        }
        match self.stored {
            Some(stored) => stored.contains(base),
            None => Ok(false),
        }
    }
}

/// Where a delta's base is.
#[derive(Clone, Copy)]
enum BaseAt {
    /// Written to this pack at this position.
    InPack(u32),
    /// In an earlier snapshot of the chain.
    Chain,
}

/// Deltas against deltas against ... are cheap to store but slow to read; git stops at 50.
const MAX_DELTA_DEPTH: u8 = 50;

/// Writes `ids` (each once) into `writer`: copied from `packs` where possible, read through
/// `find` otherwise (then as a delta against its base in `deltas` when that pays). Returns
/// the bases outside the pack that deltas name (a thin pack's).
pub fn write_objects<W: Write>(
    find: &dyn gix_pack::Find,
    packs: &[SourcePack],
    ids: &[ObjectId],
    deltas: &DeltaBases,
    writer: &mut PackWriter<W>,
) -> Result<Vec<ObjectId>> {
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
    let mut out =
        Written { in_packs: packs.iter().map(|p| vec![NOT_WRITTEN; p.offsets.len()]).collect(), ..Written::default() };
    // Copies entry `at` of pack `p`. Returns false, writing nothing, when `defer_until` says
    // its base is an entry of the same pack that will be written later: the bases that
    // `index-pack --fix-thin` appends to a pushed pack come after their deltas.
    let copy = |out: &mut Written,
                writer: &mut PackWriter<W>,
                window: &mut Window,
                p: usize,
                at: usize,
                defer_until: Option<&[bool]>|
     -> Result<bool> {
        let pack = &packs[p];
        let offset = pack.offsets[at];
        let index_at = pack.index_positions[at];
        let id = pack.index.oid_at_index(index_at).to_owned();
        let raw = pack
            .entry_bytes(at, window)
            .with_context(|| format!("object {id}: reading {}", pack.data_path.display()))?;
        if pack.index.crc32_at_index(index_at).is_some_and(|crc| crc != crc32fast::hash(raw)) {
            bail!(
                "object {id} is corrupt in the source: its data in {} does not match the CRC32 its index records",
                pack.data_path.display()
            );
        }
        let entry = gix_pack::data::Entry::from_bytes(raw, offset, id.kind())
            .map_err(|e| anyhow!("object {id} is corrupt in the source: {e}"))?;
        let (base, base_id) = match entry.header {
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => (None, None),
            Header::OfsDelta { base_distance } => {
                let base = offset.checked_sub(base_distance).and_then(|o| pack.position_of_offset(o));
                (Some(base), base.map(|b| pack.index.oid_at_index(pack.index_positions[b]).to_owned()))
            }
            Header::RefDelta { base_id } => (Some(pack.position_of(&base_id)), Some(base_id)),
        };
        let position = u32::try_from(writer.position()).context("more than 2^32 objects in one pack")?;
        let kind = match base {
            None => output::entry::Kind::Base(entry.header.as_kind().expect("base objects have a kind")),
            Some(base) => {
                let written_here = base.map(|b| out.in_packs[p][b]).filter(|&w| w != NOT_WRITTEN);
                // The same base object may have been copied from another pack: packs a push
                // left hold copies of their deltas' bases, and only the first copy of an
                // object is taken.
                let written = written_here.or_else(|| base_id.and_then(|b| out.written_position(packs, &b)));
                // Copying deltas onto bases taken from other packs chains one pack's chains
                // onto another's: past git's default depth the object is read whole instead.
                match written.filter(|&w| out.depth_at(w) < MAX_DELTA_DEPTH) {
                    Some(object_index) => {
                        out.record_depth(position, out.depth_at(object_index) + 1);
                        output::entry::Kind::DeltaRef { object_index: object_index as usize }
                    }
                    None if written.is_none()
                        && base.zip(defer_until).is_some_and(|(b, wanted)| b > at && wanted[b]) =>
                    {
                        return Ok(false);
                    }
                    None => match base_id {
                        Some(base_id) if deltas.chain_holds(&base_id)? => {
                            out.record_depth(position, 1);
                            out.thin_bases.push(base_id);
                            output::entry::Kind::DeltaOid { id: base_id }
                        }
                        _ => {
                            // Its base is in no snapshot.
                            out.in_packs[p][at] = position;
                            out.write_read(find, packs, deltas, id, writer)?;
                            return Ok(true);
                        }
                    },
                }
            }
        };
        out.in_packs[p][at] = position;
        writer.write_entry(output::Entry {
            id,
            kind,
            decompressed_size: entry.decompressed_size as usize,
            compressed_data: raw[entry.data_offset as usize - offset as usize..].to_vec(),
        })?;
        Ok(true)
    };
    for (p, mut entries) in per_pack.into_iter().enumerate() {
        entries.sort_unstable();
        let mut wanted = vec![false; packs[p].offsets.len()];
        for &at in &entries {
            wanted[at as usize] = true;
        }
        let mut window = Window::default();
        let mut deferred = Vec::new();
        for at in entries {
            if !copy(&mut out, writer, &mut window, p, at as usize, Some(&wanted))? {
                deferred.push(at as usize);
            }
        }
        for at in deferred {
            copy(&mut out, writer, &mut window, p, at, None)?;
        }
    }
    // Loose objects, each after the version it is a delta against when that is loose too.
    let loose: HashSet<ObjectId> = unpacked.iter().copied().collect();
    for id in unpacked {
        let mut pending = vec![id];
        let mut newest = id;
        while let Some(base) = deltas.bases.get(&newest)
            && loose.contains(base)
            && !out.read.contains_key(base)
            && !pending.contains(base)
        {
            pending.push(*base);
            newest = *base;
        }
        for id in pending.into_iter().rev() {
            if !out.read.contains_key(&id) {
                out.write_read(find, packs, deltas, id, writer)?;
            }
        }
    }
    out.thin_bases.sort_unstable();
    out.thin_bases.dedup();
    Ok(out.thin_bases)
}

/// What has been written where, for deltas against it.
#[derive(Default)]
struct Written {
    /// Per source pack, per entry in offset order: its position in our pack.
    in_packs: Vec<Vec<u32>>,
    /// Objects read whole (not copied): position in our pack and delta depth.
    read: HashMap<ObjectId, (u32, u8)>,
    /// Delta depth of every entry written, by position (0 for whole objects).
    depths: Vec<u8>,
    buf: Vec<u8>,
    base_buf: Vec<u8>,
    /// Bases outside the pack that deltas were written against.
    thin_bases: Vec<ObjectId>,
}

impl Written {
    fn depth_at(&self, position: u32) -> u8 {
        self.depths.get(position as usize).copied().unwrap_or(0)
    }

    fn record_depth(&mut self, position: u32, depth: u8) {
        let at = position as usize;
        if self.depths.len() <= at {
            self.depths.resize(at + 1, 0);
        }
        self.depths[at] = depth;
    }

    /// Where `id` is in our pack, if it was copied from a source pack already.
    fn written_position(&self, packs: &[SourcePack], id: &ObjectId) -> Option<u32> {
        packs
            .iter()
            .zip(&self.in_packs)
            .find_map(|(pack, written)| pack.position_of(id).map(|at| written[at]).filter(|&w| w != NOT_WRITTEN))
    }

    fn base_at(&self, packs: &[SourcePack], deltas: &DeltaBases, base: &ObjectId) -> Option<(BaseAt, u8)> {
        if let Some(&(position, depth)) = self.read.get(base) {
            return Some((BaseAt::InPack(position), depth));
        }
        if let Some(position) = self.written_position(packs, base) {
            return Some((BaseAt::InPack(position), self.depth_at(position)));
        }
        (deltas.thin_allowed && !deltas.new_objects.contains(base)).then_some((BaseAt::Chain, 0))
    }

    /// Reads `id` through `find` and writes it whole, or as a delta against its base when
    /// that base is written already or in the chain and the delta is less than half the
    /// object.
    fn write_read<W: Write>(
        &mut self,
        find: &dyn gix_pack::Find,
        packs: &[SourcePack],
        deltas: &DeltaBases,
        id: ObjectId,
        writer: &mut PackWriter<W>,
    ) -> Result<()> {
        let position = u32::try_from(writer.position()).context("more than 2^32 objects in one pack")?;
        let base = deltas
            .bases
            .get(&id)
            .and_then(|b| self.base_at(packs, deltas, b).map(|at| (*b, at)))
            .filter(|(_, (_, depth))| *depth < MAX_DELTA_DEPTH);
        let (entry, depth) = read_object(find, id, base, &mut self.buf, &mut self.base_buf)?;
        if let output::entry::Kind::DeltaOid { id: base } = entry.kind {
            self.thin_bases.push(base);
        }
        self.read.insert(id, (position, depth));
        self.record_depth(position, depth);
        writer.write_entry(entry)
    }
}

/// Objects (and bases) larger than this are stored whole: indexing a base costs about its
/// size again in memory, and files this big are rarely edited in place (git's
/// `core.bigFileThreshold` makes the same call at 512 MiB).
const MAX_DELTA_OBJECT: usize = 64 << 20;

/// Deltas smaller than this share of the object are worth their reconstruction at restore.
const DELTA_WORTH: usize = 2;

/// Reads an object whole, checks that it hashes to its id (gix does not for loose objects),
/// and deflates it as a pack entry: as a delta against `base` when the delta is less than
/// half the object. Returns the entry and its delta depth.
fn read_object(
    find: &dyn gix_pack::Find,
    id: ObjectId,
    base: Option<(ObjectId, (BaseAt, u8))>,
    buf: &mut Vec<u8>,
    base_buf: &mut Vec<u8>,
) -> Result<(output::Entry, u8)> {
    let (data, _) = find
        .try_find(&id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("object {id} is unreadable in the source"))?
        .with_context(|| format!("object {id} is missing in the source"))?;
    let actual = gix::objs::compute_hash(id.kind(), data.kind, data.data).map_err(|e| anyhow!("{e}"))?;
    if actual != id {
        bail!("object {id} is corrupt in the source: its content hashes to {actual}");
    }
    if let Some((base_id, (at, depth))) = base
        && data.data.len() <= MAX_DELTA_OBJECT
        && let Ok(Some((base, _))) = find.try_find(&base_id, base_buf)
        && base.data.len() <= MAX_DELTA_OBJECT
        && base.kind == data.kind
        // An object far smaller than its base is rarely a delta of it (git's pack-objects
        // skips those too), and indexing the base would cost more than the object.
        && data.data.len() >= base.data.len() / 32
        && let Some(delta) = super::delta::encode(base.data, data.data, data.data.len() / DELTA_WORTH)
    {
        let kind = match at {
            BaseAt::InPack(position) => output::entry::Kind::DeltaRef { object_index: position as usize },
            BaseAt::Chain => output::entry::Kind::DeltaOid { id: base_id },
        };
        let compressed_data = deflate(&delta).with_context(|| format!("deflating the delta of object {id}"))?;
        return Ok((output::Entry { id, kind, decompressed_size: delta.len(), compressed_data }, depth + 1));
    }
    let entry = output::Entry::from_data(&output::Count::from_data(id, None), &data, gix::zlib::Compression::DEFAULT)
        .map_err(|e| anyhow!("deflating object {id}: {e}"))?;
    Ok((entry, 0))
}

fn deflate(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = gix::zlib::stream::deflate::Write::new(
        Vec::with_capacity(data.len() / 2 + 64),
        gix::zlib::Compression::DEFAULT,
    );
    out.write_all(data)?;
    out.flush()?;
    Ok(out.into_inner())
}
