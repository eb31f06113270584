//! Backing up a Mercurial repository: a changegroup bundle of the changesets new since the
//! heads of the snapshot built on (hidden and secret ones included), and the files no
//! bundle carries, byte for byte. See docs/FORMAT.md, "Mercurial snapshots".

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use chrono::Utc;

use super::{
    command::{hg_in, run, said},
    requirements,
    source::{self, KEPT_FILES},
};
use crate::{
    backup::{BackupReport, FullAfter, Job, hostname},
    snapshot::{BundleRecord, Snapshot, Vcs},
    store::{Store, StoredSnapshot, chunker::ChunkedWriter},
};

/// How often a backup is tried again when the source changed while it was read (a push
/// between reading the heads and copying the bookmarks would make a snapshot whose
/// bookmarks name changesets it lacks).
const ATTEMPTS: usize = 3;

/// `hg bundle` arguments for a full snapshot's stream bundle (without its file). hg refuses
/// a stream of a repository with secret changesets unless told it may (a server would
/// otherwise hand them out), and one with markers unless they are asked for.
const STREAM_BUNDLE: [&str; 8] = [
    "--hidden",
    "--config",
    "server.uncompressedallowsecret=true",
    "bundle",
    "-q",
    "--all",
    "-t",
    "none-v2;stream=v2;obsolescence=yes",
];

pub fn back_up(job: Job<'_>) -> Result<BackupReport> {
    let Job { store, name, path, source_path, base, limiter } = job;
    if !store.holds_mercurial() {
        return Err(crate::error::usage(format!(
            "store {} is format {}, which cannot hold Mercurial snapshots (repovault versions before format 4 \
             would not see their data, and their prune would delete it); back up Mercurial repositories into a \
             store made by `repovault init` of this version",
            store.location(),
            store.config().format
        )));
    }
    let latest = base.as_ref().and_then(|chain| chain.last()).filter(|l| l.snapshot.vcs == Vcs::Hg);
    let work = WorkDir::new()?;
    for attempt in 1..=ATTEMPTS {
        let before = source::stat(path);
        let taken_at = Utc::now();
        let requirements = requirements::read(path)?;
        requirements::check(&requirements)?;
        let source_bytes = source::check_revlogs(path)?;

        let previous_file = work.path("previous-heads");
        let previous_heads = latest.map(|l| l.snapshot.heads.clone()).unwrap_or_default();
        write_lines(&previous_file, &previous_heads)?;
        let heads = source::heads(path, &previous_file)?;
        let stripped = heads.previous_present.len() != previous_heads.len();
        if stripped {
            tracing::info!(
                repo = name,
                gone = previous_heads.len() - heads.previous_present.len(),
                "heads of the latest snapshot are gone from the source (a strip): this backup is a full snapshot"
            );
        }
        let inherit = match latest {
            // After an empty snapshot there is nothing to build on (and hg reads an empty
            // `--base` as "no base": it would look for a remote).
            Some(latest) if !stripped && !previous_heads.is_empty() => {
                worth_inheriting(store, name, latest, source_bytes)?
            }
            _ => false,
        };
        let inherited: &[BundleRecord] = match (inherit, latest) {
            (true, Some(latest)) => &latest.snapshot.bundles,
            _ => &[],
        };

        let heads_file = work.path("heads");
        write_lines(&heads_file, &heads.heads)?;
        let bundle_file = work.path("bundle.hg");
        let _ = std::fs::remove_file(&bundle_file);
        let new_bundle = if heads.heads.is_empty() {
            false
        } else {
            let mut command = if inherit {
                let base = format!("nodefromfile('{}')", source::revset_path(&previous_file)?);
                let revs = format!("nodefromfile('{}')", source::revset_path(&heads_file)?);
                hg_in(path, &["--hidden", "bundle", "-q", "-t", "zstd-v2", "--base", &base, "-r", &revs])
            } else {
                // A full snapshot is a stream bundle, a copy of the store's revlogs: hg makes
                // it several times faster than a changegroup, and applies it at restore 3-4
                // times faster (revlogs copied, not rebuilt), for about twice the bytes
                // (revlogs are compressed per revision, a changegroup as one stream). The
                // secret changesets and markers are in the store and go with it.
                hg_in(path, &STREAM_BUNDLE)
            };
            command.arg(&bundle_file);
            let output = run(command, "bundling the new changesets")?;
            match output.status.code() {
                Some(0) => true,
                // "no changes found": nothing new since the base, and no file.
                Some(1) => false,
                _ => bail!("bundling the new changesets: hg bundle failed ({}): {}", output.status, said(&output)),
            }
        };

        let mut bytes_read = 0;
        let mut bytes_stored = 0;
        let mut bundles = inherited.to_vec();
        if new_bundle {
            let file = std::fs::File::open(&bundle_file).context("opening the bundle hg wrote")?;
            let (list, stored, read) = store_stream(store, file, limiter).context("storing the bundle")?;
            bytes_read += read;
            bytes_stored += stored;
            let before: u64 = inherited.iter().map(|b| b.changesets).sum();
            bundles.push(BundleRecord {
                bundle: list,
                changesets: heads.changesets.saturating_sub(before),
                stream: !inherit,
            });
        }

        let mut files = BTreeMap::new();
        let mut bookmarks = None;
        for file in KEPT_FILES {
            let content = match std::fs::read(path.join(file)) {
                Ok(content) => content,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {file}")),
            };
            let (list, stored, read) =
                store_stream(store, content.as_slice(), limiter).with_context(|| format!("storing {file}"))?;
            bytes_read += read;
            bytes_stored += stored;
            if source::BOOKMARK_FILES.contains(&file) {
                bookmarks = Some(content);
            }
            files.insert(file.to_owned(), list);
        }
        let refs = source::refs(path, bookmarks.as_deref())?;

        let after = source::stat(path);
        if after.fingerprint != before.fingerprint {
            if attempt < ATTEMPTS {
                tracing::warn!(repo = name, "the repository changed while it was read; reading it again");
                continue;
            }
            bail!("the repository kept changing while it was read ({ATTEMPTS} tries); the next run will try again");
        }
        let parent = inherit.then(|| latest.map(|l| l.id.clone())).flatten();
        let new_bundles = usize::from(new_bundle);
        let snapshot = Snapshot {
            repo: name.to_owned(),
            vcs: Vcs::Hg,
            created_at: taken_at,
            source_changed_at: before.changed_at,
            source_fingerprint: Some(before.fingerprint),
            parent: parent.clone(),
            head: None,
            head_detached: None,
            refs,
            symbolic_refs: BTreeMap::new(),
            object_format: "sha1".into(),
            packs: Vec::new(),
            new_packs: None,
            packs_hold_unreachable: None,
            bundles,
            new_bundles: Some(new_bundles),
            files,
            heads: heads.heads,
            source_path,
            hostname: hostname(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let snapshot_id = store.write_snapshot(&snapshot)?;
        let objects = snapshot.bundles_stored_here().iter().map(|b| b.changesets).sum();
        return Ok(BackupReport { snapshot_id, parent, bytes_read, bytes_stored, objects });
    }
    unreachable!("the loop returns or fails on its last attempt")
}

/// Whether a new snapshot should inherit the bundles of `latest` rather than be full;
/// `source_bytes`: the source's revlogs, about what a full snapshot stores.
fn worth_inheriting(store: &Store, name: &str, latest: &StoredSnapshot, source_bytes: u64) -> Result<bool> {
    let bundles = &latest.snapshot.bundles;
    let sizes: Vec<u64> = bundles.iter().map(|b| b.bundle.size).collect();
    let chunks = bundles.iter().flat_map(|b| &b.bundle.chunks);
    crate::backup::worth_inheriting(store, name, latest, &sizes, (source_bytes, FullAfter::HG), chunks)
}

/// Stores `data` as a chunked stream; returns its chunk list, the bytes newly stored and
/// the bytes read.
fn store_stream(
    store: &Store,
    mut data: impl Read,
    limiter: Option<&crate::throttle::RateLimiter>,
) -> Result<(crate::store::chunker::ChunkList, u64, u64)> {
    let mut writer = ChunkedWriter::new(store);
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(limiter) = limiter {
            limiter.acquire(n);
        }
        writer.write_all(&buf[..n])?;
        read += n as u64;
    }
    let (list, stored) = writer.finish()?;
    Ok((list, stored, read))
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A private temporary directory, removed when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new() -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("repovault-hg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
