//! Joining packs into one pack without resolving deltas or hashing objects: what a restore
//! does with the packs of a snapshot.
//!
//! Every entry's extent comes from its pack's index (offsets sorted), so entries are copied
//! as they are stored, compressed data untouched, each checked against the CRC32 its index
//! records. Only delta headers change: an OFS_DELTA's distance to its base is recomputed for
//! the base's place in the new pack, and a REF_DELTA whose base is already written (a thin
//! pack's, against an earlier pack) becomes an OFS_DELTA, so the result is self-contained
//! without appending any base. An object that an earlier pack already gave is skipped and
//! deltas against it point at that first copy.
//!
//! Given an object database to read from, a set of objects to keep leaves the rest out, and
//! an entry whose base was left out, or whose delta chain would grow deeper than git's
//! default `--depth` (nightly snapshots chain each night's version of a file to the one
//! before), is read whole and written deflated.

use std::io::{Read, Write};

use anyhow::{Context, Result, anyhow, bail};
use gix::{
    ObjectId,
    hashtable::{HashMap, HashSet},
};
use gix_pack::data::{entry::Header, output};

use super::{pack_index::IndexEntry, pack_writer::PackWriter};

/// One pack to copy from, read front to back.
pub struct Input<'r> {
    /// How errors name the pack ("snapshot ...: pack ...").
    pub label: String,
    pub data: Box<dyn Read + 'r>,
    /// Every entry of the pack, by ascending offset.
    pub entries: Vec<IndexEntry>,
    /// The pack's length in bytes, trailer included.
    pub size: u64,
    /// The pack's trailing checksum, as its index records it.
    pub checksum: ObjectId,
}

/// In a pack's map from its entries to the new pack: left out.
const NOT_WRITTEN: u32 = u32::MAX;

/// Longest delta chain written when objects can be read whole: git's default (`pack.depth`).
/// Longer chains are valid but each read of their newest object applies every delta.
pub const MAX_DELTA_DEPTH: u16 = 50;

/// The pack being written and where every object went.
pub struct Joiner<'k, W: Write> {
    writer: PackWriter<W>,
    object_hash: gix::hash::Kind,
    /// Position in the new pack of every object written.
    written: HashMap<ObjectId, u32>,
    /// Objects to write; `None`: all.
    keep: Option<&'k HashSet<ObjectId>>,
    /// Where objects are read whole: those whose delta base was left out, and those whose
    /// chain would be too deep.
    find: Option<&'k dyn gix_pack::Find>,
    /// Delta chain length of every entry written, by position (0 for a whole object).
    depths: Vec<u16>,
    /// The longest delta chain written.
    pub max_depth: u16,
    /// REF_DELTAs written as they are because their base comes later in the same pack;
    /// each base must have been written by the end.
    forward: Vec<(ObjectId, ObjectId, String)>,
    entry: Vec<u8>,
    object: Vec<u8>,
    /// Entries read whole because their base was left out.
    pub read_whole: u64,
}

impl<'k, W: Write> Joiner<'k, W> {
    /// Starts a pack of `num_objects` objects. With `find`, every object can be read whole
    /// (then `keep`, if given, names the only objects written, and delta chains are cut at
    /// [`MAX_DELTA_DEPTH`]).
    pub fn new(
        out: W,
        num_objects: u32,
        object_hash: gix::hash::Kind,
        find: Option<(&'k dyn gix_pack::Find, Option<&'k HashSet<ObjectId>>)>,
    ) -> Result<Self> {
        Ok(Joiner {
            writer: PackWriter::new(out, num_objects, object_hash)?,
            object_hash,
            written: HashMap::default(),
            keep: find.and_then(|(_, k)| k),
            find: find.map(|(f, _)| f),
            depths: Vec::with_capacity(num_objects as usize),
            max_depth: 0,
            forward: Vec::new(),
            entry: Vec::new(),
            object: Vec::new(),
            read_whole: 0,
        })
    }

    fn wanted(&self, id: &ObjectId) -> bool {
        !self.written.contains_key(id) && self.keep.is_none_or(|keep| keep.contains(id))
    }

    /// Copies the entries of `input` that are wanted and not written yet.
    pub fn add(&mut self, mut input: Input<'_>) -> Result<()> {
        let label = std::mem::take(&mut input.label);
        self.copy(input).with_context(|| label.clone())
    }

    fn copy(&mut self, input: Input<'_>) -> Result<()> {
        let Input { mut data, entries, size, checksum, .. } = input;
        let hash_len = self.object_hash.len_in_bytes() as u64;
        let damaged = |what: String| anyhow!("the stored pack is damaged: {what}");
        let mut header = [0u8; 12];
        data.read_exact(&mut header).context("reading the pack header")?;
        let declared = u32::from_be_bytes(header[8..12].try_into().expect("four bytes"));
        if &header[..8] != b"PACK\0\0\0\x02" || declared as usize != entries.len() {
            return Err(damaged(format!("its header does not match the {} entries of its index", entries.len())));
        }
        let end = size.checked_sub(hash_len).ok_or_else(|| damaged("it is shorter than its checksum".into()))?;
        if entries.first().is_some_and(|e| e.offset != 12) || entries.windows(2).any(|w| w[0].offset >= w[1].offset) {
            return Err(damaged("its index's offsets do not tile the pack".into()));
        }
        // Where each entry (by position in offset order) went in the new pack.
        let mut placed = vec![NOT_WRITTEN; entries.len()];
        for (at, entry) in entries.iter().enumerate() {
            let next = entries.get(at + 1).map_or(end, |e| e.offset);
            if next <= entry.offset || next > end {
                return Err(damaged(format!("object {} lies outside the pack", entry.id)));
            }
            self.entry.resize((next - entry.offset) as usize, 0);
            data.read_exact(&mut self.entry).with_context(|| format!("reading object {}", entry.id))?;
            if crc32fast::hash(&self.entry) != entry.crc32 {
                return Err(damaged(format!(
                    "object {} at offset {} does not match the CRC32 its index records",
                    entry.id, entry.offset
                )));
            }
            if !self.wanted(&entry.id) {
                placed[at] = self.written.get(&entry.id).copied().unwrap_or(NOT_WRITTEN);
                continue;
            }
            let parsed = gix_pack::data::Entry::from_bytes(&self.entry, entry.offset, self.object_hash)
                .map_err(|e| damaged(format!("object {}: {e}", entry.id)))?;
            let position = u32::try_from(self.writer.position()).context("more than 2^32 objects in one pack")?;
            let kind = match parsed.header {
                Header::Commit | Header::Tree | Header::Blob | Header::Tag => {
                    Some(output::entry::Kind::Base(parsed.header.as_kind().expect("base objects have a kind")))
                }
                Header::OfsDelta { base_distance } => {
                    let base = entry
                        .offset
                        .checked_sub(base_distance)
                        .and_then(|o| entries.binary_search_by_key(&o, |e| e.offset).ok())
                        .ok_or_else(|| damaged(format!("object {} is a delta against no entry", entry.id)))?;
                    match placed[base] {
                        NOT_WRITTEN if self.find.is_some() => None,
                        NOT_WRITTEN => {
                            return Err(damaged(format!("object {} is a delta against a later entry", entry.id)));
                        }
                        base => Some(output::entry::Kind::DeltaRef { object_index: base as usize }),
                    }
                }
                Header::RefDelta { base_id } => match self.written.get(&base_id) {
                    Some(&base) => Some(output::entry::Kind::DeltaRef { object_index: base as usize }),
                    None if self.keep.is_some_and(|keep| !keep.contains(&base_id)) => None,
                    None => {
                        // git accepts a REF_DELTA against any object of the same pack.
                        self.forward.push((entry.id, base_id, format!("offset {}", entry.offset)));
                        Some(output::entry::Kind::DeltaOid { id: base_id })
                    }
                },
            };
            // A forward REF_DELTA's base depth is not known yet: counted as a whole object.
            let depth = match kind {
                Some(output::entry::Kind::DeltaRef { object_index }) => self.depths[object_index].saturating_add(1),
                Some(output::entry::Kind::DeltaOid { .. }) => 1,
                _ => 0,
            };
            let (kind, depth) = match kind {
                Some(_) if depth > MAX_DELTA_DEPTH && self.find.is_some() => (None, 0),
                kind => (kind, depth),
            };
            let written = match kind {
                Some(kind) => output::Entry {
                    id: entry.id,
                    kind,
                    decompressed_size: usize::try_from(parsed.decompressed_size)
                        .context("an object too large for this machine")?,
                    compressed_data: self.entry[(parsed.data_offset - entry.offset) as usize..].to_vec(),
                },
                None => self.read_whole(entry.id)?,
            };
            self.writer.write_entry(written)?;
            self.depths.push(depth);
            self.max_depth = self.max_depth.max(depth);
            self.written.insert(entry.id, position);
            placed[at] = position;
        }
        let mut trailer = vec![0u8; hash_len as usize];
        data.read_exact(&mut trailer).context("reading the pack's checksum")?;
        if trailer != checksum.as_slice() {
            return Err(damaged("its trailing checksum is not the one its index was made for".into()));
        }
        if data.read(&mut [0u8; 1]).context("reading the pack")? != 0 {
            return Err(damaged("it is longer than its index says".into()));
        }
        Ok(())
    }

    /// Reads `id` whole (its base was left out) and deflates it as a base entry.
    fn read_whole(&mut self, id: ObjectId) -> Result<output::Entry> {
        let find = self.find.expect("only called with an object database");
        let (data, _) = find
            .try_find(&id, &mut self.object)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("object {id} is unreadable"))?
            .with_context(|| format!("object {id} is missing"))?;
        let actual = gix::objs::compute_hash(id.kind(), data.kind, data.data).map_err(|e| anyhow!("{e}"))?;
        if actual != id {
            bail!("object {id} is corrupt: its content hashes to {actual}");
        }
        self.read_whole += 1;
        output::Entry::from_data(&output::Count::from_data(id, None), &data, gix::zlib::Compression::DEFAULT)
            .map_err(|e| anyhow!("deflating object {id}: {e}"))
    }

    /// Writes the trailer; returns the pack's checksum, its index entries (in pack order)
    /// and the output.
    pub fn finish(self) -> Result<(ObjectId, Vec<IndexEntry>, W)> {
        if let Some((id, base, label)) = self.forward.iter().find(|(_, base, _)| !self.written.contains_key(base)) {
            bail!("object {id} ({label}) is a delta against object {base}, which no pack holds");
        }
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;
    use crate::vcs::git::pack_index::{decode_v2, encode_v2};

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A pack git made, with deltas (a file edited over a few commits): its bytes and its
    /// entries by offset.
    fn git_pack(dir: &Path) -> (Vec<u8>, Vec<IndexEntry>, ObjectId) {
        git(dir, &["init", "-q", "-b", "main", "repo"]);
        let repo = dir.join("repo");
        let mut text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        for round in 0..4 {
            text.insert_str(round * 997, "an edit\n");
            std::fs::write(repo.join("file"), &text).unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-q", "-m", "edit"]);
        }
        git(&repo, &["repack", "-q", "-adf"]);
        let pack_dir = repo.join(".git/objects/pack");
        let index = std::fs::read_dir(&pack_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .unwrap();
        let (mut entries, checksum) = decode_v2(&std::fs::read(&index).unwrap(), gix::hash::Kind::Sha1).unwrap();
        entries.sort_unstable_by_key(|e| e.offset);
        (std::fs::read(index.with_extension("pack")).unwrap(), entries, checksum)
    }

    fn input<'a>(pack: &'a [u8], entries: &[IndexEntry], checksum: ObjectId) -> Input<'a> {
        Input {
            label: "snapshot s1: pack p1".into(),
            data: Box::new(pack),
            entries: entries.to_vec(),
            size: pack.len() as u64,
            checksum,
        }
    }

    #[test]
    fn joining_a_pack_with_itself_writes_each_object_once_and_git_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pack, entries, checksum) = git_pack(dir.path());
        let mut joiner = Joiner::new(Vec::new(), entries.len() as u32, gix::hash::Kind::Sha1, None).unwrap();
        joiner.add(input(&pack, &entries, checksum)).unwrap();
        joiner.add(input(&pack, &entries, checksum)).unwrap();
        let (joined_checksum, index, bytes) = joiner.finish().unwrap();
        assert_eq!(index.len(), entries.len());
        let path = dir.path().join(format!("pack-{joined_checksum}.pack"));
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(path.with_extension("idx"), encode_v2(index, joined_checksum).unwrap()).unwrap();
        git(dir.path(), &["verify-pack", &path.with_extension("idx").to_string_lossy()]);
    }

    #[test]
    fn a_damaged_entry_is_refused_naming_the_snapshot_and_pack() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pack, entries, checksum) = git_pack(dir.path());
        let last = entries.last().unwrap().offset as usize;
        pack[last + 4] ^= 0x40;
        let mut joiner = Joiner::new(Vec::new(), entries.len() as u32, gix::hash::Kind::Sha1, None).unwrap();
        let err = format!("{:#}", joiner.add(input(&pack, &entries, checksum)).unwrap_err());
        assert!(err.contains("snapshot s1: pack p1") && err.contains("CRC32"), "{err}");
    }
}
