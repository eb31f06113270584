//! Writing pack data (version 2) from gix-pack's output entries, recording for each entry
//! the id, offset and CRC32 that its index needs. This is what gix-pack's `FromEntriesIter`
//! does, plus the bookkeeping it keeps to itself, one entry at a time.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use gix::ObjectId;
use gix_pack::data::output;

use super::pack_index::IndexEntry;

pub struct PackWriter<W> {
    out: W,
    hasher: gix::hash::Hasher,
    written: u64,
    /// Offsets of the entries so far, by position in the input; `None` for an invalid
    /// (missing) entry, which is not written.
    offsets: Vec<Option<u64>>,
    index: Vec<IndexEntry>,
    declared: u32,
}

impl<W: Write> PackWriter<W> {
    /// Writes the pack header for `num_entries` entries.
    pub fn new(out: W, num_entries: u32, object_hash: gix::hash::Kind) -> Result<Self> {
        let mut writer = PackWriter {
            out,
            hasher: gix::hash::hasher(object_hash),
            written: 0,
            offsets: Vec::with_capacity(num_entries as usize),
            index: Vec::with_capacity(num_entries as usize),
            declared: num_entries,
        };
        writer.emit(&gix_pack::data::header::encode(gix_pack::data::Version::V2, num_entries))?;
        Ok(writer)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).context("writing pack data")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The position the next entry will have; deltas name their base by position.
    pub fn position(&self) -> usize {
        self.offsets.len()
    }

    /// Writes one entry. An invalid (missing) entry takes a position but writes nothing.
    pub fn write_entry(&mut self, entry: output::Entry) -> Result<()> {
        if entry.is_invalid() {
            self.offsets.push(None);
            return Ok(());
        }
        let offset = self.written;
        let mut missing_base = false;
        let encoded = entry.to_entry_header(gix_pack::data::Version::V2, |base| {
            match self.offsets.get(base).copied().flatten() {
                Some(base_offset) => offset - base_offset,
                None => {
                    missing_base = true;
                    0
                }
            }
        });
        if missing_base {
            bail!("object {} is a delta against an object that is missing", entry.id);
        }
        let mut header = Vec::with_capacity(32);
        encoded.write_to(entry.decompressed_size as u64, &mut header)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&entry.compressed_data);
        self.emit(&header)?;
        self.emit(&entry.compressed_data)?;
        self.offsets.push(Some(offset));
        self.index.push(IndexEntry { id: entry.id, offset, crc32: crc.finalize() });
        Ok(())
    }

    /// Writes the trailer. Returns the pack checksum, the index entries in pack order, and
    /// the output.
    pub fn finish(mut self) -> Result<(ObjectId, Vec<IndexEntry>, W)> {
        if self.index.len() != self.declared as usize {
            bail!("the pack header declares {} objects but {} were written", self.declared, self.index.len());
        }
        let checksum = self.hasher.try_finalize().map_err(|e| anyhow!("hashing the pack: {e}"))?;
        self.out.write_all(checksum.as_bytes()).context("writing pack data")?;
        self.out.flush().context("writing pack data")?;
        Ok((checksum, self.index, self.out))
    }
}
