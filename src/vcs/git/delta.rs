//! Git pack deltas: encoding one object as a list of copies from another plus literal bytes,
//! and applying such a delta.
//!
//! Incremental snapshots store a new version of a file as a delta against the version already
//! in the store, as git does in its packs. The output is exactly the payload of an `OFS_DELTA` /
//! `REF_DELTA` pack entry before zlib (git's `diff-delta.c` / `patch-delta.c`, see
//! `gitformat-pack` "Deltified representation"), so these deltas can be written into packs that
//! git reads, and git's own deltas can be applied with [`apply`].
//!
//! The encoder is deliberately simple rather than optimal: it indexes the base at 16-byte
//! block boundaries, then walks the target looking each 16-byte window up in that index. Every
//! hash bucket holds a bounded number of candidates and runs of identical blocks are indexed
//! once, so the work stays linear in the input sizes even for degenerate inputs (all zeros,
//! short periodic patterns), which matters because objects can be tens of megabytes.

use anyhow::{Context, Result, bail, ensure};

/// The granularity at which the base is indexed, and so the shortest match the encoder can
/// find; git's `RABIN_WINDOW` is the same. A copy instruction costs at most 8 bytes, so any
/// match this long is worth copying.
const WINDOW: usize = 16;

/// Candidates kept per hash bucket. Bounding it bounds the work per target position on bases
/// that repeat themselves, where every candidate is a real match that has to be extended to
/// find the longest. Git keeps 64; on repetitive text 32 costs under 2% in delta size and
/// saves a quarter to a third of the time.
const BUCKET_LIMIT: u8 = 32;

/// Longest copy emitted per instruction. The format allows 24-bit sizes, but git itself never
/// writes more than 64 KiB, and that size encodes in no size bytes at all (size 0 means
/// 0x10000), so longer copies cost only about 3 bytes per 64 KiB.
const MAX_COPY: usize = 0x10000;

/// Longest insert instruction: its length byte must leave the top bit clear.
const MAX_INSERT: usize = 0x7f;

/// Marks the end of a hash chain.
const NONE: u32 = u32::MAX;

/// Encodes `target` as a git delta against `base`, or returns None when the delta would not
/// be smaller than `max_len` bytes (the caller then stores the object whole).
pub fn encode(base: &[u8], target: &[u8], max_len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(max_len.min(target.len() / 8 + 64));
    push_size(&mut out, base.len() as u64);
    push_size(&mut out, target.len() as u64);

    // Copy offsets are 32 bits, so only the first 4 GiB of a larger base can be copied from.
    let source = &base[..base.len().min(u32::MAX as usize)];
    let index = Index::new(source);

    // Target bytes in `literal_start..pos` are not yet emitted; they become an insert unless a
    // later match extends backwards over them.
    let mut literal_start = 0;
    let mut pos = 0;
    let scan_end = if index.is_empty() { 0 } else { target.len().saturating_sub(WINDOW - 1) };
    while pos < scan_end {
        let Some((mut offset, len)) = index.longest_match(source, target, pos) else {
            pos += 1;
            // Emit full inserts as they accumulate so that the size check below stops
            // unrelated inputs early; keep one instruction's worth pending for a later match
            // to extend backwards over (a match is usually found within 16 bytes of its start,
            // when the scan reaches the next indexed block of the base).
            if pos - literal_start >= 2 * MAX_INSERT {
                push_inserts(&mut out, &target[literal_start..literal_start + MAX_INSERT]);
                literal_start += MAX_INSERT;
                if out.len() >= max_len {
                    return None;
                }
            }
            continue;
        };
        let backwards = common_suffix(&source[..offset], &target[literal_start..pos]);
        offset -= backwards;
        let start = pos - backwards;
        let end = pos + len;
        push_inserts(&mut out, &target[literal_start..start]);
        push_copies(&mut out, offset, end - start);
        if out.len() >= max_len {
            return None;
        }
        pos = end;
        literal_start = end;
    }
    push_inserts(&mut out, &target[literal_start..]);
    (out.len() < max_len).then_some(out)
}

/// Applies a git delta to `base`; errors on a malformed delta or a size mismatch.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
    let mut pos = 0;
    let base_size = read_size(delta, &mut pos).context("reading the delta's base size")?;
    ensure!(base_size == base.len() as u64, "the delta expects a base of {base_size} bytes, not {}", base.len());
    let target_size = read_size(delta, &mut pos).context("reading the delta's target size")?;
    let target_size = usize::try_from(target_size).context("the delta's target size does not fit in memory")?;

    // The declared size is not trusted for the allocation: a corrupt header must produce an
    // error below, not an abort on a huge allocation here.
    let mut out = Vec::with_capacity(target_size.min(64 << 20));
    while let Some(&instruction) = delta.get(pos) {
        let at = pos;
        pos += 1;
        let bytes = if instruction & 0x80 != 0 {
            let mut offset = 0usize;
            for i in 0..4 {
                if instruction & (1 << i) != 0 {
                    offset |= usize::from(*delta.get(pos).context("truncated copy instruction")?) << (8 * i);
                    pos += 1;
                }
            }
            let mut size = 0usize;
            for i in 0..3 {
                if instruction & (0x10 << i) != 0 {
                    size |= usize::from(*delta.get(pos).context("truncated copy instruction")?) << (8 * i);
                    pos += 1;
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            offset
                .checked_add(size)
                .and_then(|end| base.get(offset..end))
                .with_context(|| format!("copy of {size} bytes at {offset} is outside the {}-byte base", base.len()))?
        } else if instruction == 0 {
            bail!("reserved delta instruction 0 at byte {at}");
        } else {
            let end = pos + usize::from(instruction);
            let bytes = delta.get(pos..end).context("truncated insert instruction")?;
            pos = end;
            bytes
        };
        ensure!(
            bytes.len() <= target_size - out.len(),
            "the delta produces more than the {target_size} bytes it declares (instruction at byte {at})"
        );
        out.extend_from_slice(bytes);
    }
    ensure!(out.len() == target_size, "the delta produces {} bytes, not the {target_size} it declares", out.len());
    Ok(out)
}

/// Hash table from the hash of a 16-byte block of the base to the blocks with that hash.
struct Index {
    /// First block of each bucket's chain, or `NONE`.
    heads: Vec<u32>,
    /// Next block in the same bucket, by block number.
    next: Vec<u32>,
    /// Right shift taking a hash to a bucket number (the top bits are the best mixed).
    shift: u32,
    /// One bit per value of the hash's low bits, set for the indexed blocks: 8 to 16 bits per
    /// block, small enough to stay in cache where the table does not, so that most windows of
    /// unrelated data are rejected without a cache miss in the table.
    filter: Vec<u64>,
}

impl Index {
    fn new(source: &[u8]) -> Index {
        let blocks = source.len() / WINDOW;
        let buckets = blocks.next_power_of_two().max(16);
        let shift = 64 - buckets.trailing_zeros();
        let mut heads = vec![NONE; buckets];
        let mut counts = vec![0u8; buckets];
        let mut next = vec![NONE; blocks];
        let mut filter = vec![0u64; (blocks * 8).next_power_of_two().max(64) / 64];
        let filter_mask = filter.len() * 64 - 1;
        let mut previous: Option<&[u8]> = None;
        for (block, window) in source.chunks_exact(WINDOW).enumerate() {
            // In a run of identical blocks only the first is worth indexing: a match found
            // there extends forward through the whole run, and indexing the rest would fill
            // the bucket with candidates that all match.
            if previous == Some(window) {
                continue;
            }
            previous = Some(window);
            let hash = hash(window);
            let bit = hash as usize & filter_mask;
            filter[bit / 64] |= 1 << (bit % 64);
            let bucket = (hash >> shift) as usize;
            if counts[bucket] == BUCKET_LIMIT {
                continue;
            }
            counts[bucket] += 1;
            next[block] = heads[bucket];
            // Fits: the source is at most 4 GiB, so there are at most 2^28 blocks.
            heads[bucket] = block as u32;
        }
        Index { heads, next, shift, filter }
    }

    fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The longest match of `target[pos..]` starting at an indexed block of `source`, as
    /// (offset in source, length), if one is at least `WINDOW` long.
    fn longest_match(&self, source: &[u8], target: &[u8], pos: usize) -> Option<(usize, usize)> {
        let rest = &target[pos..];
        let hash = hash(&rest[..WINDOW]);
        let bit = hash as usize & (self.filter.len() * 64 - 1);
        if self.filter[bit / 64] & (1 << (bit % 64)) == 0 {
            return None;
        }
        let mut block = self.heads[(hash >> self.shift) as usize];
        let mut best: Option<(usize, usize)> = None;
        while block != NONE {
            let offset = block as usize * WINDOW;
            let len = common_prefix(&source[offset..], rest);
            if len >= WINDOW && best.is_none_or(|(_, best_len)| len > best_len) {
                best = Some((offset, len));
                if len == rest.len() {
                    break;
                }
            }
            block = self.next[block as usize];
        }
        best
    }
}

/// A hash of a 16-byte window whose top bits (the bucket) and low bits (the filter) are both
/// well mixed.
fn hash(window: &[u8]) -> u64 {
    let a = read_u64(&window[..8]);
    let b = read_u64(&window[8..16]);
    let h = (a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b).wrapping_mul(0xff51_afd7_ed55_8ccd);
    // Folds the well-mixed top bits into the low ones, which the filter uses.
    h ^ (h >> 29)
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"))
}

/// Length of the common prefix of `a` and `b`, compared eight bytes at a time since matches
/// between versions of a file are often megabytes long.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut len = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let diff = read_u64(x) ^ read_u64(y);
        if diff != 0 {
            return len + (diff.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + a[len..].iter().zip(&b[len..]).take_while(|(x, y)| x == y).count()
}

/// Length of the common suffix of `a` and `b`.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

/// Appends a size in the delta header's encoding: little-endian base 128, high bit = more.
fn push_size(out: &mut Vec<u8>, mut size: u64) {
    while size >= 0x80 {
        out.push(size as u8 | 0x80);
        size >>= 7;
    }
    out.push(size as u8);
}

fn read_size(delta: &[u8], pos: &mut usize) -> Result<u64> {
    let mut size = 0u64;
    let mut shift = 0;
    loop {
        let byte = *delta.get(*pos).context("truncated delta header")?;
        *pos += 1;
        let bits = u64::from(byte & 0x7f);
        ensure!(shift < 64 && (bits << shift) >> shift == bits, "delta header size overflows 64 bits");
        size |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(size);
        }
        shift += 7;
    }
}

fn push_inserts(out: &mut Vec<u8>, literal: &[u8]) {
    for chunk in literal.chunks(MAX_INSERT) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// Appends copy instructions for `len` bytes of the base from `offset`, which the caller keeps
/// below 4 GiB. Zero bytes of the offset and size are left out, as the format allows.
fn push_copies(out: &mut Vec<u8>, mut offset: usize, mut len: usize) {
    while len > 0 {
        let chunk = len.min(MAX_COPY);
        let at = out.len();
        let mut instruction = 0x80u8;
        out.push(0);
        for i in 0..4 {
            let byte = (offset >> (8 * i)) as u8;
            if byte != 0 {
                instruction |= 1 << i;
                out.push(byte);
            }
        }
        // A full chunk is written as size 0, which means 0x10000.
        let size = chunk % MAX_COPY;
        for i in 0..3 {
            let byte = (size >> (8 * i)) as u8;
            if byte != 0 {
                instruction |= 0x10 << i;
                out.push(byte);
            }
        }
        out[at] = instruction;
        offset += chunk;
        len -= chunk;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;

    /// Deterministic xorshift64, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut out = Vec::with_capacity(len + 8);
            while out.len() < len {
                out.extend_from_slice(&self.next().to_le_bytes());
            }
            out.truncate(len);
            out
        }
    }

    /// Source-like text of about `len` bytes: lines of words from a small vocabulary, so lines
    /// repeat fragments of each other as real code does.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: &str = "fn let mut self return match Some(x) None => { } 0x10000 vec![] out.push(byte); if else \
            for_i_in_0..n // pub struct impl use_std::io; x.len() - 1";
        let words: Vec<&str> = WORDS.split_whitespace().collect();
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(len + 100);
        while out.len() < len {
            for _ in 0..rng.below(4) {
                out.extend_from_slice(b"    ");
            }
            for _ in 0..1 + rng.below(10) {
                out.extend_from_slice(words[rng.below(words.len())].as_bytes());
                out.push(b' ');
            }
            out.push(b'\n');
        }
        out
    }

    /// Asserts that the delta of `target` against `base` reproduces `target`; returns it.
    fn round_trip(base: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = encode(base, target, usize::MAX).expect("no size limit");
        let applied = apply(base, &delta).expect("our delta applies");
        assert!(applied == target, "round trip differs (base {} bytes, target {} bytes)", base.len(), target.len());
        delta
    }

    #[test]
    fn round_trips() {
        let mut rng = Rng(0x5eed);
        let text = text(1, 100_000);
        let middle = text.len() / 2;
        let edited = [&text[..middle], b"an edited line\n", &text[middle + 40..]].concat();
        let noise = rng.bytes(50_000);
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("identical", text.clone(), text.clone()),
            ("edit in the middle", text.clone(), edited),
            ("insertion at the start", text.clone(), [b"new first line\n".as_slice(), &text].concat()),
            ("insertion at the end", text.clone(), [text.as_slice(), b"new last line\n"].concat()),
            ("deletion", text.clone(), [&text[..1000], &text[5000..]].concat()),
            ("truncation", text.clone(), text[..text.len() - 7].to_vec()),
            ("different data", text.clone(), noise.clone()),
            ("empty base", Vec::new(), text[..1000].to_vec()),
            ("empty target", text.clone(), Vec::new()),
            ("both empty", Vec::new(), Vec::new()),
            ("tiny", b"abc".to_vec(), b"abd".to_vec()),
            ("shorter than a window", text[..10].to_vec(), text[..15].to_vec()),
            ("zeros of other lengths", vec![0; 100_000], vec![0; 250_003]),
            ("zeros shrinking", vec![0; 250_003], vec![0; 99_999]),
            ("periodic", b"abcdefghijklmnopq".repeat(5000), b"abcdefghijklmnopq".repeat(7000)[3..].to_vec()),
            ("binary noise", noise.clone(), [&noise[..20_000], &rng.bytes(100), &noise[20_000..]].concat()),
            ("unaligned shift", noise.clone(), noise[7..].to_vec()),
            ("reordered", noise.clone(), [&noise[30_000..], &noise[..30_000]].concat()),
        ];
        for (name, base, target) in &cases {
            let delta = encode(base, target, usize::MAX).unwrap_or_else(|| panic!("{name}: no size limit"));
            assert_eq!(&apply(base, &delta).unwrap_or_else(|e| panic!("{name}: {e:#}")), target, "{name}");
        }
    }

    #[test]
    fn long_copies_and_large_offsets() {
        // Over 16 MiB, so copies need many 64 KiB instructions and offsets need a fourth byte.
        let base = Rng(7).bytes((16 << 20) + 100_000);
        let target = [&base[(16 << 20) + 5..], b"inserted", &base[..(16 << 20) + 3]].concat();
        let delta = round_trip(&base, &target);
        assert!(delta.len() < 2000, "delta of {} bytes", delta.len());
    }

    #[test]
    fn small_edit_gives_small_delta() {
        let base = text(2, 100_000);
        let line_start = base[50_000..].iter().position(|&b| b == b'\n').unwrap() + 50_001;
        let line_end = base[line_start..].iter().position(|&b| b == b'\n').unwrap() + line_start;
        let target = [&base[..line_start], b"    let edited = true;", &base[line_end..]].concat();
        let delta = round_trip(&base, &target);
        assert!(delta.len() < 200, "delta of {} bytes", delta.len());
    }

    #[test]
    fn degenerate_inputs_stay_small() {
        let delta = round_trip(&vec![0; 1 << 20], &vec![0; 3 << 20]);
        assert!(delta.len() < 500, "delta of {} bytes", delta.len());
        let pattern = b"0123456789abcdefg".repeat(60_000);
        let delta = round_trip(&pattern, &pattern[1..]);
        assert!(delta.len() < 500, "delta of {} bytes", delta.len());
    }

    #[test]
    fn max_len_is_respected() {
        let mut rng = Rng(3);
        let base = rng.bytes(100_000);
        let target = rng.bytes(100_000);
        assert!(encode(&base, &target, target.len() / 2).is_none());
        assert!(encode(&base, &target, 10).is_none());

        let text = text(4, 20_000);
        let delta = encode(&text, &text, usize::MAX).unwrap();
        assert!(encode(&text, &text, delta.len()).is_none(), "the limit is exclusive");
        assert_eq!(encode(&text, &text, delta.len() + 1), Some(delta));
    }

    #[test]
    fn malformed_deltas_are_rejected() {
        let base = b"0123456789";
        let ok = |delta: &[u8]| apply(base, delta).unwrap();
        // Header 10 -> 4, copy 2 bytes at offset 3, insert "xy".
        assert_eq!(ok(&[10, 4, 0x91, 3, 2, 2, b'x', b'y']), b"34xy");
        let bad: [(&str, &[u8]); 10] = [
            ("no header", &[]),
            ("no target size", &[10]),
            ("wrong base size", &[9, 0]),
            ("reserved instruction", &[10, 1, 0]),
            ("truncated copy", &[10, 1, 0x91, 3]),
            ("copy past the base end", &[10, 1, 0x91, 9, 2]),
            ("truncated insert", &[10, 2, 3, b'a', b'b']),
            ("more output than declared", &[10, 1, 2, b'a', b'b']),
            ("less output than declared", &[10, 3, 2, b'a', b'b']),
            ("size overflow", &[10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f]),
        ];
        for (what, delta) in bad {
            assert!(apply(base, delta).is_err(), "{what}: {delta:?} was accepted");
        }
    }

    fn git(dir: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let mut child = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run git");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut writer = gix::zlib::stream::deflate::Write::new(Vec::new(), gix::zlib::Compression::default());
        writer.write_all(data).unwrap();
        writer.flush().unwrap();
        writer.into_inner()
    }

    /// A pack holding `base` as a blob and `target` as an OFS_DELTA against it.
    fn pack_with_delta(base: &[u8], delta: &[u8]) -> Vec<u8> {
        use gix_pack::data::entry::Header;
        let mut pack = gix_pack::data::header::encode(gix_pack::data::Version::V2, 2).to_vec();
        let base_offset = pack.len();
        Header::Blob.write_to(base.len() as u64, &mut pack).unwrap();
        pack.extend(deflate(base));
        let base_distance = (pack.len() - base_offset) as u64;
        Header::OfsDelta { base_distance }.write_to(delta.len() as u64, &mut pack).unwrap();
        pack.extend(deflate(delta));
        let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
        hasher.update(&pack);
        pack.extend_from_slice(hasher.try_finalize().unwrap().as_slice());
        pack
    }

    /// git resolves our deltas to the objects we meant: index-pack applies every delta and
    /// names the result by its hash, and cat-file then finds the target under its own id.
    #[test]
    fn git_accepts_our_deltas() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "--bare"], b"");
        let base = text(5, 100_000);
        let noise = Rng(9).bytes(70_000);
        let cases = [
            [&base[..40_000], b"a new line\n", &base[40_100..]].concat(),
            [b"a new first line\n".as_slice(), &base[3..]].concat(),
            [&base[..20_000], &noise, &base[..]].concat(),
        ];
        for target in cases {
            let delta = round_trip(&base, &target);
            git(dir.path(), &["index-pack", "--stdin", "--strict"], &pack_with_delta(&base, &delta));
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, &target).unwrap();
            assert!(git(dir.path(), &["cat-file", "blob", &id.to_string()], b"") == target);
        }
    }

    /// Our decoder resolves git's own deltas to objects with the ids git gave them, and our
    /// encoder round-trips the same pairs.
    #[test]
    fn we_apply_gits_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        git(repo, &["init", "-q"], b"");
        let v1 = text(6, 60_000);
        let v2 = [&v1[..30_000], b"fn changed() {}\n", &v1[30_050..], b"// appended\n"].concat();
        for (i, version) in [&v1, &v2].into_iter().enumerate() {
            std::fs::write(repo.join("file.rs"), version).unwrap();
            git(repo, &["add", "file.rs"], b"");
            git(repo, &["commit", "-q", "-m", &format!("version {i}")], b"");
        }
        git(repo, &["repack", "-adfq", "--depth=1", "--window=10"], b"");

        let pack_dir = repo.join(".git/objects/pack");
        let idx_path = std::fs::read_dir(&pack_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "idx"))
            .expect("a pack index");
        let index = gix_pack::index::File::at(&idx_path, gix::hash::Kind::Sha1).unwrap();
        let data = gix_pack::data::File::at(idx_path.with_extension("pack"), gix::hash::Kind::Sha1).unwrap();
        let decompress = |entry: &gix_pack::data::Entry| {
            let mut out = vec![0; entry.decompressed_size as usize];
            data.decompress_entry(entry, &mut gix::zlib::Inflate::default(), &mut out).unwrap();
            out
        };
        let mut deltas = 0;
        for object in index.iter() {
            let entry = data.entry(object.pack_offset).unwrap();
            let gix_pack::data::entry::Header::OfsDelta { base_distance } = entry.header else { continue };
            let base_entry = data.entry(entry.base_pack_offset(base_distance)).unwrap();
            let kind = base_entry.header.as_kind().expect("depth 1 keeps bases whole");
            let base = decompress(&base_entry);
            let result = apply(&base, &decompress(&entry)).unwrap();
            assert_eq!(gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, &result).unwrap(), object.oid);
            round_trip(&base, &result);
            deltas += 1;
        }
        assert!(deltas >= 1, "git stored no delta to check against");
    }
}
