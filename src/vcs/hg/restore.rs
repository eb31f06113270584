//! Rebuilding a Mercurial repository from a snapshot: `hg init` with the snapshot's
//! requirements, `hg unbundle` of its bundles in order, then its kept files over what hg
//! wrote (bookmarks, phases, markers, local tags, hgrc), and hg's caches dropped (computed
//! before those files were in place). Checked before it is called done: the requirements
//! and every head equal the snapshot's.

use std::{collections::BTreeMap, io::Read, path::Path};

use anyhow::{Context, Result, bail};

use super::{
    command::{hg, hg_in, run, run_ok},
    requirements,
    source::{self, KEPT_FILES},
};
use crate::{
    snapshot::Snapshot,
    store::{Store, chunker::ChunkReader},
};

pub fn build(store: &Store, snapshot: &Snapshot, dest: &Path) -> Result<()> {
    let kept = read_kept_files(store, snapshot)?;
    let text = |file: &str| kept.get(file).map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let requires = text(requirements::FILES[0]).context("the snapshot has no .hg/requires")?;
    let wanted = requirements::parse(&requires, text(requirements::FILES[1]).as_deref());
    requirements::check(&wanted)?;

    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut init = hg(&[]);
    init.args(requirements::init_args(&wanted)).arg("init").arg(dest);
    run_ok(init, "creating the repository (hg init)")?;

    let mut bundle_files = Vec::new();
    for (i, record) in snapshot.bundles.iter().enumerate() {
        let file = dest.join(format!(".hg/repovault-restore-{i}.hg"));
        let mut out = std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
        std::io::copy(&mut ChunkReader::new(store, &record.bundle), &mut out)
            .with_context(|| format!("reading bundle {} of {}", i + 1, snapshot.bundles.len()))?;
        bundle_files.push(file);
    }
    // A stream bundle goes alone into the empty repository; the changegroups after it, in one
    // transaction.
    let streams = snapshot.bundles.iter().take_while(|b| b.stream).count().min(1);
    let (stream, changegroups) = bundle_files.split_at(streams);
    for group in [stream, changegroups] {
        if group.is_empty() {
            continue;
        }
        let mut unbundle = hg_in(dest, &["unbundle", "-q"]);
        unbundle.args(group);
        run_ok(unbundle, "applying the bundles (hg unbundle)")?;
    }
    for file in &bundle_files {
        std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    }

    for file in KEPT_FILES {
        let path = dest.join(file);
        match kept.get(file) {
            Some(content) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
                _ => {}
            },
        }
    }
    match std::fs::remove_dir_all(dest.join(".hg/cache")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).context("removing .hg/cache"),
        _ => {}
    }

    let got = requirements::read(dest)?;
    if got != wanted {
        bail!(
            "the rebuilt repository's requirements ({}) differ from the snapshot's ({})",
            got.join(" "),
            wanted.join(" ")
        );
    }
    let mut heads = snapshot.heads.clone();
    heads.sort();
    if source::all_heads(dest)? != heads {
        bail!("the rebuilt repository's heads differ from the snapshot's");
    }
    sync_tree(dest)?;
    Ok(())
}

fn read_kept_files(store: &Store, snapshot: &Snapshot) -> Result<BTreeMap<&'static str, Vec<u8>>> {
    let mut kept = BTreeMap::new();
    for file in KEPT_FILES {
        if let Some(list) = snapshot.files.get(file) {
            let mut content = Vec::new();
            ChunkReader::new(store, list).read_to_end(&mut content).with_context(|| format!("reading {file}"))?;
            kept.insert(file, content);
        }
    }
    Ok(kept)
}

/// `hg verify` of a rebuilt repository, judged by its output: it exits 0 while printing
/// warnings (a store whose fncache lacks revlogs, say), so anything beyond its five usual
/// lines is a failure.
pub fn verify(repo: &Path) -> Result<()> {
    let output = run(hg_in(repo, &["verify"]), "hg verify")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let usual = |line: &str| {
        matches!(
            line,
            "checking changesets"
                | "checking manifests"
                | "crosschecking files in changesets and manifests"
                | "checking files"
        ) || (line.starts_with("checked ") && line.contains(" changesets with "))
            || line.starts_with("checking dirstate")
    };
    let unusual: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !usual(l)).collect();
    if !output.status.success() || !unusual.is_empty() {
        bail!("hg verify of the rebuilt repository: {} ({})", unusual.join(" / "), output.status);
    }
    Ok(())
}

/// hg writes without fsync: the restored repository is made durable before the restore is
/// called done (and moved into place). One `syncfs` of its file system rather than an fsync
/// per file: a repository is thousands of revlog files (tokio: 2,477), and syncing them one
/// by one took longer than hg took to write them.
fn sync_tree(root: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    // SAFETY: syncfs takes a file descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("syncing {}", root.display()));
    }
    Ok(())
}
