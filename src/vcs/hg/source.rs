//! Reading a Mercurial source: the cheap things (file metadata, a structural check of the
//! revlogs' index files, the bookmarks file) in Rust, history through `hg`.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, path::Path, time::SystemTime};

use anyhow::{Context, Result, bail};
use chrono::Utc;

use super::command::{hg_in, is_node, nodes, run_ok};
use crate::vcs::SourceStat;

/// Files no bundle carries, kept byte for byte (paths from the repository's root): the
/// requirements, the repository's configuration, bookmarks (in `.hg/` or, with
/// `bookmarksinstore`, in the store), local tags, phases and obsolescence markers.
pub const KEPT_FILES: [&str; 8] = [
    ".hg/requires",
    ".hg/store/requires",
    ".hg/hgrc",
    ".hg/bookmarks",
    ".hg/store/bookmarks",
    ".hg/localtags",
    ".hg/store/phaseroots",
    ".hg/store/obsstore",
];

/// Where the bookmarks file is: `.hg/`, or the store with `bookmarksinstore`.
pub const BOOKMARK_FILES: [&str; 2] = [".hg/bookmarks", ".hg/store/bookmarks"];

/// With [`KEPT_FILES`], the files whose metadata changes on every change a backup must see:
/// a push grows the changelog in place (and replaces its nodemap docket); bookmarks, phases,
/// markers, a strip, a local tag, an hgrc edit change the kept files. Reads (which rewrite
/// `.hg/cache/`) and undo files change none of them.
const CHANGELOG_FILES: [&str; 3] = [".hg/store/00changelog.i", ".hg/store/00changelog.d", ".hg/store/00changelog.n"];

/// The fingerprint (BLAKE3 over each file's path, size, modification time and inode: hg
/// replaces some files and grows others in place) and the newest modification time. hg
/// sets some times up to a second ahead (to keep them unambiguous): capped at now.
pub fn stat(repo: &Path) -> SourceStat {
    let mut hasher = blake3::Hasher::new();
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in KEPT_FILES.iter().chain(&CHANGELOG_FILES) {
        hasher.update(file.as_bytes());
        match std::fs::metadata(repo.join(file)) {
            Ok(meta) => {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                newest = newest.max(modified);
                let nanos = modified.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                hasher.update(format!(" {} {nanos} {}\n", meta.len(), meta.ino()).as_bytes());
            }
            Err(_) => {
                hasher.update(b" -\n");
            }
        }
    }
    let changed_at = chrono::DateTime::<Utc>::from(newest).min(Utc::now());
    SourceStat { fingerprint: hasher.finalize().to_hex().to_string(), changed_at }
}

/// Every head of the repository, visible, hidden and secret alike, sorted; and which of
/// `previous` (heads of the snapshot built on) are still changesets of the repository.
pub struct Heads {
    pub heads: Vec<String>,
    pub previous_present: Vec<String>,
    /// Changesets in the repository (hidden ones included).
    pub changesets: u64,
}

/// One `hg` call: the heads, which previous heads survive (a strip removes them), and the
/// count of changesets. `previous_file` lists the previous heads, one a line.
pub fn heads(repo: &Path, previous_file: &Path) -> Result<Heads> {
    let revset = format!("heads(all()) or nodefromfile('{}') or tip", revset_path(previous_file)?);
    let template = r#"{node} {rev} {ifcontains(rev, revset("heads(all())"), "head", "-")}\n"#;
    let out = run_ok(hg_in(repo, &["--hidden", "log", "-r", &revset, "-T", template]), "listing heads")?;
    let text = String::from_utf8(out).context("listing heads: hg printed non-UTF-8")?;
    let previous: Vec<String> = std::fs::read_to_string(previous_file)?.lines().map(str::to_owned).collect();
    let mut found = Heads { heads: Vec::new(), previous_present: Vec::new(), changesets: 0 };
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(node), Some(rev), Some(kind), None) = (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            bail!("listing heads: unexpected line from hg: {line:?}");
        };
        if !is_node(node) {
            bail!("listing heads: {node:?} is not a node");
        }
        let rev: i64 = rev.parse().with_context(|| format!("listing heads: bad revision {rev:?}"))?;
        // An empty repository's tip is the null revision (-1).
        if rev < 0 {
            continue;
        }
        found.changesets = found.changesets.max(rev as u64 + 1);
        if kind == "head" {
            found.heads.push(node.to_owned());
        }
        if previous.iter().any(|p| p == node) {
            found.previous_present.push(node.to_owned());
        }
    }
    found.heads.sort();
    Ok(found)
}

/// A path inside a revset string: hg's revset strings are quoted with `'`.
pub fn revset_path(path: &Path) -> Result<String> {
    let text = path.to_str().context("a temporary path that is not UTF-8")?;
    if text.contains(['\'', '\\']) {
        bail!("a temporary path with a quote or backslash: {text}");
    }
    Ok(text.to_owned())
}

/// The snapshot's refs: each bookmark (`bookmarks/NAME`, from the bookmarks file's
/// `NODE NAME` lines; names may hold spaces or start with `-`, so the file is parsed rather
/// than hg's output) and each named branch's tip (`branches/NAME`, closed branches too).
pub fn refs(repo: &Path, bookmarks: Option<&[u8]>) -> Result<BTreeMap<String, String>> {
    let mut refs = BTreeMap::new();
    if let Some(bookmarks) = bookmarks {
        let text = std::str::from_utf8(bookmarks).context("the bookmarks file is not UTF-8")?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (node, name) = line.split_at_checked(40).context("a short line in the bookmarks file")?;
            let name = name.strip_prefix(' ').context("a bookmarks line without a name")?;
            if !is_node(node) {
                bail!("the bookmarks file has {node:?} where a node was expected");
            }
            refs.insert(format!("bookmarks/{name}"), node.to_owned());
        }
    }
    // Visible tips: a branch whose every head is obsolete is not listed (its heads are in the
    // snapshot's `heads` all the same).
    let out = run_ok(hg_in(repo, &["branches", "--closed", "-Tjson"]), "listing branches")?;
    #[derive(serde::Deserialize)]
    struct Branch {
        branch: String,
        node: String,
    }
    let branches: Vec<Branch> = serde_json::from_slice(&out).context("listing branches: hg's JSON")?;
    for branch in branches {
        if !is_node(&branch.node) {
            bail!("listing branches: {:?} is not a node", branch.node);
        }
        refs.insert(format!("branches/{}", branch.branch), branch.node);
    }
    Ok(refs)
}

/// The heads a restored repository has, sorted (for checking it).
pub fn all_heads(repo: &Path) -> Result<Vec<String>> {
    let out = run_ok(hg_in(repo, &["--hidden", "log", "-r", "heads(all())", "-T", "{node}\\n"]), "listing heads")?;
    let mut heads = nodes(&out, "listing heads")?;
    heads.sort();
    Ok(heads)
}

/// A structural check of every revlog, reading index files only: each one's entries must
/// account for its size exactly (inline revlogs), or its data file must end where its last
/// entry says (others); every file revlog fncache lists must exist. hg's own errors on a
/// truncated revlog come only when a read reaches the damage, and an incremental bundle
/// does not read old file revisions; this catches a truncated or missing revlog every
/// night, naming the file, in a fraction of `hg verify`'s time. (Flipped bits are left to
/// `verify --deep`, which runs `hg verify` on the restore.) Returns the revlogs' bytes:
/// about what a full snapshot of the repository stores.
pub fn check_revlogs(repo: &Path) -> Result<u64> {
    let store = repo.join(".hg/store");
    let mut bytes = check_revlog(&store, "00changelog")?;
    bytes += check_revlog(&store, "00manifest")?;
    let mut on_disk = 0usize;
    // `dh/` holds the revlogs of files whose encoded path is too long, under hashed names.
    for top in ["data", "meta", "dh"] {
        for entry in walkdir::WalkDir::new(store.join(top)).follow_links(false) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", store.join(top).display())),
            };
            let relative = entry.path().strip_prefix(&store).unwrap_or(entry.path());
            let Some(base) = relative.to_str().and_then(|p| p.strip_suffix(".i")) else { continue };
            // A strip that removes every revision of a file leaves its revlog empty (and out
            // of fncache).
            if entry.file_type().is_file() && entry.metadata().is_ok_and(|m| m.len() > 0) {
                on_disk += 1;
                bytes += check_revlog(&store, base)?;
            }
        }
    }
    if let Ok(fncache) = std::fs::read(store.join("fncache")) {
        let listed = fncache.split(|&b| b == b'\n').filter(|l| l.ends_with(b".i")).count();
        if listed != on_disk {
            bail!("store/fncache lists {listed} file revlogs but {on_disk} are on disk (a revlog is missing?)");
        }
    }
    Ok(bytes)
}

const ENTRY: usize = 64;

/// Checks one revlog; returns its bytes (index and data).
fn check_revlog(store: &Path, base: &str) -> Result<u64> {
    let index_path = store.join(format!("{base}.i"));
    let damaged = |file: &str, why: String| anyhow::anyhow!("damaged revlog store/{file}: {why}");
    let index = match std::fs::read(&index_path) {
        Ok(index) => index,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && base.starts_with("00") => return Ok(0),
        Err(e) => return Err(damaged(&format!("{base}.i"), e.to_string())),
    };
    if index.is_empty() {
        return Ok(0);
    }
    let be32 = |at: usize| i32::from_be_bytes(index[at..at + 4].try_into().expect("4 bytes"));
    let flags = u32::from_be_bytes(index[..4].try_into().expect("4 bytes")) >> 16;
    if flags & 1 == 1 {
        // Inline: each entry is followed by its data.
        let (mut at, mut entries) = (0usize, 0usize);
        while at < index.len() {
            if at + ENTRY > index.len() {
                return Err(damaged(&format!("{base}.i"), format!("truncated index entry {entries}")));
            }
            let length =
                usize::try_from(be32(at + 8)).map_err(|_| damaged(&format!("{base}.i"), "a negative length".into()))?;
            at += ENTRY + length;
            entries += 1;
        }
        if at != index.len() {
            return Err(damaged(&format!("{base}.i"), format!("truncated data of entry {}", entries - 1)));
        }
        return Ok(index.len() as u64);
    }
    if index.len() % ENTRY != 0 {
        return Err(damaged(&format!("{base}.i"), format!("index size {} is not a multiple of {ENTRY}", index.len())));
    }
    let last = index.len() - ENTRY;
    let offset =
        if last == 0 { 0 } else { u64::from_be_bytes(index[last..last + 8].try_into().expect("8 bytes")) >> 16 };
    let length =
        u64::try_from(be32(last + 8)).map_err(|_| damaged(&format!("{base}.i"), "a negative length".into()))?;
    let end = offset + length;
    let data = store.join(format!("{base}.d"));
    let size = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
    if size < end {
        return Err(damaged(&format!("{base}.d"), format!("{size} bytes where the index expects {end}")));
    }
    Ok(index.len() as u64 + size)
}
