//! Writing a pack index (`.idx`, version 2) for a pack we generated, and looking an id up
//! in one.
//!
//! The pack writer knows every object's id, and a parse of the written bytes gives every
//! entry's offset and CRC32, so the index is built without resolving deltas or hashing
//! objects again (what `git index-pack` and gix's indexer spend their time on). Layout, as
//! git's `Documentation/gitformat-pack.txt` gives it: magic `\377tOc`, version 2, a 256-entry
//! fan-out table, the sorted object ids, their CRC32s, their 31-bit offsets (the high bit
//! set means an index into the following table of 64-bit offsets), the pack's checksum and
//! the index's own checksum. Numbers are big-endian.

use anyhow::{Result, anyhow, bail};
use gix::ObjectId;

/// One pack entry: the object's id, where its entry starts in the pack and the CRC32 of the
/// entry's bytes (header and compressed data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ObjectId,
    pub offset: u64,
    pub crc32: u32,
}

/// A version 2 index begins with the magic `\377tOc` and the version.
const V2_HEADER: [u8; 8] = [0xff, b't', b'O', b'c', 0, 0, 0, 2];

pub fn encode_v2(mut entries: Vec<IndexEntry>, pack_checksum: ObjectId) -> Result<Vec<u8>> {
    let kind = pack_checksum.kind();
    entries.sort_unstable_by_key(|e| e.id);
    if let Some(pair) = entries.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("object {} appears twice in the generated pack", pair[0].id);
    }
    let hash_len = kind.len_in_bytes();
    let mut out = Vec::with_capacity(8 + 1024 + entries.len() * (hash_len + 8) + 2 * hash_len);
    out.extend_from_slice(&V2_HEADER);
    let mut fan = [0u32; 256];
    for entry in &entries {
        fan[entry.id.as_bytes()[0] as usize] += 1;
    }
    let mut cumulative = 0u32;
    for count in fan {
        cumulative += count;
        out.extend_from_slice(&cumulative.to_be_bytes());
    }
    for entry in &entries {
        out.extend_from_slice(entry.id.as_bytes());
    }
    for entry in &entries {
        out.extend_from_slice(&entry.crc32.to_be_bytes());
    }
    let mut large = Vec::new();
    for entry in &entries {
        if entry.offset < 0x8000_0000 {
            out.extend_from_slice(&(entry.offset as u32).to_be_bytes());
        } else {
            let index = u32::try_from(large.len()).map_err(|_| anyhow!("too many large offsets"))?;
            out.extend_from_slice(&(0x8000_0000 | index).to_be_bytes());
            large.push(entry.offset);
        }
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack_checksum.as_bytes());
    let mut hasher = gix::hash::hasher(kind);
    hasher.update(&out);
    let own = hasher.try_finalize().map_err(|e| anyhow!("hashing the index: {e}"))?;
    out.extend_from_slice(own.as_bytes());
    Ok(out)
}

/// Reads a version 2 index back: every entry (in the index's order, by id) and the checksum
/// of the pack it was made for. The index's own trailing checksum is checked, so a damaged
/// index is an error rather than offsets that send a restore astray.
pub fn decode_v2(index: &[u8], kind: gix::hash::Kind) -> Result<(Vec<IndexEntry>, ObjectId)> {
    let hash_len = kind.len_in_bytes();
    let body = checked_body(index, kind)?;
    let word = |at: usize| u32::from_be_bytes(index[at..at + 4].try_into().expect("4 bytes"));
    let mut previous = 0;
    for i in 0..256 {
        let count = word(8 + 4 * i);
        if count < previous {
            bail!("the pack index's fan-out table is not ascending");
        }
        previous = count;
    }
    let count = previous as usize;
    let ids_at = 8 + 1024;
    let crcs_at = ids_at + count * hash_len;
    let offsets_at = crcs_at + count * 4;
    let large_at = offsets_at + count * 4;
    let large_count = (0..count).filter(|&i| word(offsets_at + 4 * i) & 0x8000_0000 != 0).count();
    if large_at > body.len() || body.len() - large_at != large_count * 8 + hash_len {
        bail!("the pack index's size does not match the {count} objects it lists");
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let id = ObjectId::from_bytes_or_panic(&index[ids_at + i * hash_len..ids_at + (i + 1) * hash_len]);
        let small = word(offsets_at + 4 * i);
        let offset = if small & 0x8000_0000 == 0 {
            u64::from(small)
        } else {
            let at = large_at + 8 * (small & 0x7fff_ffff) as usize;
            if at + 8 > large_at + large_count * 8 {
                bail!("the pack index names a 64-bit offset it does not hold");
            }
            u64::from_be_bytes(index[at..at + 8].try_into().expect("8 bytes"))
        };
        entries.push(IndexEntry { id, offset, crc32: word(crcs_at + 4 * i) });
    }
    let pack_at = body.len() - hash_len;
    Ok((entries, ObjectId::from_bytes_or_panic(&body[pack_at..])))
}

/// The body of a whole version 2 index (all but its own trailing checksum, which must be
/// the hash of the body): the pack's checksum at its end.
fn checked_body(index: &[u8], kind: gix::hash::Kind) -> Result<&[u8]> {
    let hash_len = kind.len_in_bytes();
    if index.len() < 8 + 1024 + 2 * hash_len || index[..8] != V2_HEADER {
        bail!("not a version 2 pack index");
    }
    let (body, own) = index.split_at(index.len() - hash_len);
    let mut hasher = gix::hash::hasher(kind);
    hasher.update(body);
    let actual = hasher.try_finalize().map_err(|e| anyhow!("hashing the index: {e}"))?;
    if actual.as_slice() != own {
        bail!("the pack index does not match its own checksum");
    }
    Ok(body)
}

/// Whether `index` is a whole version 2 index of the pack whose trailing checksum is `pack`:
/// it names that pack, and its own trailing checksum is the hash of what precedes it.
pub fn is_index_of(index: &[u8], pack: &gix::oid) -> bool {
    checked_body(index, pack.kind()).is_ok_and(|body| body.ends_with(pack.as_bytes()))
}

/// Whether a version 2 index lists `id`: the fan-out table narrows the range of sorted ids,
/// a binary search finds it.
pub fn contains_v2(index: &[u8], id: &gix::oid) -> Result<bool> {
    let hash_len = id.as_bytes().len();
    if index.len() < 8 + 1024 || index[..8] != V2_HEADER {
        bail!("not a version 2 pack index");
    }
    let fanout =
        |i: usize| -> usize { u32::from_be_bytes(index[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes")) as usize };
    let first = id.as_bytes()[0] as usize;
    let (mut low, mut high) = (if first == 0 { 0 } else { fanout(first - 1) }, fanout(first));
    let ids_at = 8 + 1024;
    if ids_at + fanout(255) * hash_len > index.len() {
        bail!("pack index is truncated");
    }
    while low < high {
        let mid = (low + high) / 2;
        let at = ids_at + mid * hash_len;
        match index[at..at + hash_len].cmp(id.as_bytes()) {
            std::cmp::Ordering::Equal => return Ok(true),
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gix reads back what we write, including a 64-bit offset.
    #[test]
    fn gix_reads_the_index_we_write() {
        let id = |b: u8| ObjectId::from_bytes_or_panic(&[b; 20]);
        let entries = vec![
            IndexEntry { id: id(0x42), offset: 12, crc32: 7 },
            IndexEntry { id: id(0x01), offset: 0x1_2345_6789, crc32: 8 },
            IndexEntry { id: id(0xff), offset: 500, crc32: 9 },
        ];
        let bytes = encode_v2(entries, id(0xaa)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack-test.idx");
        std::fs::write(&path, bytes).unwrap();
        let index = gix_pack::index::File::at(&path, gix::hash::Kind::Sha1).unwrap();
        assert_eq!(index.num_objects(), 3);
        let at = |b: u8| index.lookup(id(b).as_ref()).unwrap();
        assert_eq!(index.pack_offset_at_index(at(0x01)), 0x1_2345_6789);
        assert_eq!(index.pack_offset_at_index(at(0x42)), 12);
        assert_eq!(index.crc32_at_index(at(0xff)), Some(9));
        assert_eq!(index.oid_at_index(0).to_owned(), id(0x01));
        index
            .verify_checksum(&mut gix::progress::Discard, &std::sync::atomic::AtomicBool::new(false))
            .expect("the index's own checksum verifies");
    }

    #[test]
    fn decode_reads_back_what_encode_wrote_and_refuses_damage() {
        let id = |b: u8| ObjectId::from_bytes_or_panic(&[b; 20]);
        let entries = vec![
            IndexEntry { id: id(0x42), offset: 12, crc32: 7 },
            IndexEntry { id: id(0x01), offset: 0x1_2345_6789, crc32: 8 },
            IndexEntry { id: id(0xff), offset: 500, crc32: 9 },
        ];
        let bytes = encode_v2(entries.clone(), id(0xaa)).unwrap();
        let (mut decoded, pack) = decode_v2(&bytes, gix::hash::Kind::Sha1).unwrap();
        assert_eq!(pack, id(0xaa));
        decoded.sort_unstable_by_key(|e| e.offset);
        let mut expected = entries;
        expected.sort_unstable_by_key(|e| e.offset);
        assert_eq!(decoded, expected);
        let mut damaged = bytes.clone();
        damaged[8 + 1024 + 3] ^= 1;
        assert!(decode_v2(&damaged, gix::hash::Kind::Sha1).is_err());
        assert!(decode_v2(&bytes[..100], gix::hash::Kind::Sha1).is_err());
    }

    #[test]
    fn contains_finds_exactly_the_listed_ids() {
        let id = |b: u8, c: u8| {
            let mut bytes = [c; 20];
            bytes[0] = b;
            ObjectId::from_bytes_or_panic(&bytes)
        };
        let listed = [id(0x00, 1), id(0x00, 9), id(0x42, 3), id(0xff, 0), id(0xff, 7)];
        let entries = listed.iter().enumerate().map(|(i, &id)| IndexEntry { id, offset: 12 + i as u64, crc32: 0 });
        let bytes = encode_v2(entries.collect(), id(0xaa, 0xaa)).unwrap();
        for id in listed {
            assert!(contains_v2(&bytes, &id).unwrap(), "{id}");
        }
        for absent in [id(0x00, 5), id(0x41, 3), id(0x42, 4), id(0xff, 8), id(0x80, 0)] {
            assert!(!contains_v2(&bytes, &absent).unwrap(), "{absent}");
        }
        assert!(contains_v2(&bytes[..100], &listed[0]).is_err());
    }
}
