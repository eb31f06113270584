//! Opening a source repository and reading its refs.

use crate::vcs::SourceStat;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result, anyhow, bail};
use gix::bstr::ByteSlice;

/// Every ref of a repository at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefState {
    /// HEAD's symbolic target (`refs/heads/main`), also when that branch is unborn.
    pub head: Option<String>,
    /// HEAD's object when detached.
    pub head_detached: Option<gix::ObjectId>,
    /// Direct refs: name to target (not peeled).
    pub refs: BTreeMap<String, gix::ObjectId>,
    /// Symbolic refs other than HEAD.
    pub symbolic_refs: BTreeMap<String, String>,
}

impl RefState {
    /// Every object a ref (or a detached HEAD) points at.
    pub fn tips(&self) -> impl Iterator<Item = gix::ObjectId> + '_ {
        self.refs.values().copied().chain(self.head_detached)
    }
}

/// Opens a source repository for reading, refusing kinds we cannot back up faithfully.
pub fn open(path: &Path) -> Result<gix::Repository> {
    let mut options = gix::open::Options::isolated();
    options = options.strict_config(false);
    let mut repo = gix::open_opts(path, options)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("{} is not a git repository that can be opened", path.display()))?;
    without_replacements(&mut repo);
    let config = repo.config_snapshot();
    if let Some(storage) = config.string("extensions.refStorage")
        && storage.as_bytes() != b"files"
    {
        bail!(
            "{}: ref storage {:?} (extensions.refStorage) is not supported; only the files backend is. \
             Convert with `git refs migrate --ref-format=files` first",
            path.display(),
            storage.to_str_lossy()
        );
    }
    // A configured promisor remote is refused (objects are missing by design, and git would
    // fetch them over the network in the middle of a backup). A `.promisor` marker alone is
    // not: a repository that was once a partial clone may hold every object, and the backup
    // proves completeness itself, failing on the first missing object by name.
    if config.string("extensions.partialClone").is_some() {
        bail!(
            "{}: partial clone (promisor remote): objects are missing by design, a backup would be incomplete",
            path.display()
        );
    }
    if repo.is_shallow().map_err(|e| anyhow!("{e}"))? {
        bail!("{}: shallow repository: its history is incomplete by design, refusing to back it up", path.display());
    }
    Ok(repo)
}

fn ref_name(name: &gix::refs::FullNameRef) -> Result<String> {
    name.as_bstr()
        .to_str()
        .map(str::to_owned)
        .map_err(|_| anyhow!("ref name {:?} is not valid UTF-8; such refs are not supported", name.as_bstr()))
}

/// Makes `repo` read objects as they are stored. gix follows `refs/replace/` by default, so
/// a history walk would see a replaced (grafted) commit's stand-in and miss the commits
/// behind the real one, which counting and a restored repository do contain: everything
/// that reads a source or a restored repository must see the same objects.
pub fn without_replacements(repo: &mut gix::Repository) {
    repo.objects.ignore_replacements = true;
}

/// Reads every ref and HEAD.
pub fn read_refs(repo: &gix::Repository) -> Result<RefState> {
    let mut state = RefState::default();
    let platform = repo.references().map_err(|e| anyhow!("{e}")).context("listing refs")?;
    for reference in platform.all().map_err(|e| anyhow!("{e}")).context("listing refs")? {
        let reference = reference.map_err(|e| anyhow!("{e}")).context("reading a ref")?;
        let name = ref_name(reference.name())?;
        match reference.target() {
            gix::refs::TargetRef::Object(id) => {
                state.refs.insert(name, id.to_owned());
            }
            gix::refs::TargetRef::Symbolic(target) => {
                state.symbolic_refs.insert(name, ref_name(target)?);
            }
        }
    }
    let head = repo.head().map_err(|e| anyhow!("{e}")).context("reading HEAD")?;
    match head.kind {
        gix::head::Kind::Symbolic(reference) => state.head = Some(ref_name(reference.name.as_ref())?),
        gix::head::Kind::Unborn(name) => state.head = Some(ref_name(name.as_ref())?),
        gix::head::Kind::Detached { target, .. } => state.head_detached = Some(target),
    }
    Ok(state)
}

/// The git directory of a repository path: itself when bare, its `.git` directory, or where
/// a `.git` file (`gitdir: ...`) points. One `stat` for the common cases: planning calls
/// this for every repository of the forge each night.
pub fn git_dir_of(path: &Path) -> PathBuf {
    let dot_git = path.join(".git");
    match std::fs::symlink_metadata(&dot_git) {
        Ok(meta) if meta.is_dir() => dot_git,
        Ok(_) => match std::fs::read_to_string(&dot_git) {
            Ok(text) => match text.trim().strip_prefix("gitdir:") {
                Some(target) => {
                    let target = Path::new(target.trim());
                    if target.is_absolute() { target.to_owned() } else { path.join(target) }
                }
                None => path.to_owned(),
            },
            Err(_) => path.to_owned(),
        },
        Err(_) => path.to_owned(),
    }
}

/// Stats HEAD, packed-refs, every loose ref and the directories holding them (deleting a
/// loose ref changes only its directory).
/// The source's change summary ([`SourceStat`]) from its ref files: BLAKE3 over each one's
/// path, size and modification time; no ref or object is read.
pub fn refs_stat(git_dir: &Path) -> SourceStat {
    let mut files = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
    let walk = walkdir::WalkDir::new(git_dir.join("refs")).follow_links(false).sort_by_file_name();
    files.extend(walk.into_iter().flatten().map(walkdir::DirEntry::into_path));
    let mut hasher = blake3::Hasher::new();
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in &files {
        hasher.update(file.strip_prefix(git_dir).unwrap_or(file).as_os_str().as_encoded_bytes());
        match std::fs::symlink_metadata(file) {
            Ok(meta) => {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                newest = newest.max(modified);
                let nanos = modified.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                hasher.update(&meta.len().to_le_bytes());
                hasher.update(&nanos.to_le_bytes());
            }
            Err(_) => {
                hasher.update(b"absent");
            }
        }
        hasher.update(b"\0");
    }
    SourceStat { fingerprint: hasher.finalize().to_hex().to_string(), changed_at: newest.into() }
}

/// The fan-out directories of a git object directory that hold loose objects (`00` to
/// `ff`), sorted. git's prune-packed removes the ones it empties, so a freshly repacked
/// repository has none: one directory listing tells.
pub fn loose_object_dirs(objects_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(objects_dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            name.len() == 2 && name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}
