//! A repository's requirements (`.hg/requires`, and `.hg/store/requires` with
//! `share-safe`): the format features hg needs to read it. A restore must produce a
//! repository with exactly the same ones, so only those this version can reproduce with
//! `hg init` are backed up; any other is refused by name before anything is read.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Requirements a restore reproduces, with the `hg init` setting that turns each on.
const KNOWN: [(&str, Option<&str>); 13] = [
    ("revlogv1", None),
    ("store", Some("format.usestore=yes")),
    ("fncache", Some("format.usefncache=yes")),
    ("dotencode", Some("format.dotencode=yes")),
    ("generaldelta", Some("format.usegeneraldelta=yes")),
    ("sparserevlog", Some("format.sparse-revlog=yes")),
    ("revlog-compression-zstd", Some("format.revlog-compression=zstd")),
    ("share-safe", Some("format.use-share-safe=yes")),
    ("persistent-nodemap", Some("format.use-persistent-nodemap=yes")),
    ("dirstate-v2", Some("format.use-dirstate-v2=yes")),
    ("dirstate-tracked-key-v1", Some("format.use-dirstate-tracked-hint=yes")),
    ("bookmarksinstore", Some("format.bookmarks-in-store=yes")),
    ("internal-phase-2", Some("format.use-internal-phase=yes")),
];

/// The `hg init` settings that turn every optional one off (hg 6.3's defaults turn several
/// on); those wanted are then turned on.
const ALL_OFF: [&str; 12] = [
    "format.usefncache=no",
    "format.dotencode=no",
    "format.usegeneraldelta=no",
    "format.generaldelta=no",
    "format.sparse-revlog=no",
    "format.revlog-compression=zlib",
    "format.use-share-safe=no",
    "format.use-persistent-nodemap=no",
    "format.use-dirstate-v2=no",
    "format.use-dirstate-tracked-hint=no",
    "format.bookmarks-in-store=no",
    "format.use-internal-phase=no",
];

/// The files that hold requirements, from the repository's root.
pub const FILES: [&str; 2] = [".hg/requires", ".hg/store/requires"];

/// The requirements in the contents of `.hg/requires` and (when it says `share-safe`)
/// `.hg/store/requires`. A share (whose store is another repository's) is reported as its
/// `shared` requirement, which is refused.
pub fn parse(requires: &str, store_requires: Option<&str>) -> Vec<String> {
    let mut all: Vec<String> = requires.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let share = all.iter().any(|r| r == "shared" || r == "relshared");
    if all.iter().any(|r| r == "share-safe")
        && !share
        && let Some(store) = store_requires
    {
        all.extend(store.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
    }
    all.sort();
    all.dedup();
    all
}

/// Reads the requirements of the repository at `repo`.
pub fn read(repo: &Path) -> Result<Vec<String>> {
    let requires = std::fs::read_to_string(repo.join(FILES[0]))
        .with_context(|| format!("reading {}", repo.join(FILES[0]).display()))?;
    let store = std::fs::read_to_string(repo.join(FILES[1])).ok();
    Ok(parse(&requires, store.as_deref()))
}

/// Refuses requirements a restore could not reproduce, naming the first.
pub fn check(requirements: &[String]) -> Result<()> {
    if let Some(unknown) = requirements.iter().find(|r| !KNOWN.iter().any(|(known, _)| known == r)) {
        bail!(
            "the repository has the requirement {unknown:?}, which this version of repovault cannot restore \
             (it backs up repositories whose requirements are among: {}); refusing to back it up",
            KNOWN.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        );
    }
    if !requirements.iter().any(|r| r == "store") {
        bail!("the repository has no `store` requirement (a Mercurial format older than 0.9); refusing to back it up");
    }
    Ok(())
}

/// The `--config` arguments that make `hg init` create a repository with exactly
/// `requirements` (checked by [`check`]).
pub fn init_args(requirements: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    let wanted = KNOWN.iter().filter(|(name, _)| requirements.iter().any(|r| r == name)).filter_map(|(_, on)| *on);
    for setting in ALL_OFF.iter().copied().chain(wanted) {
        args.push("--config".to_owned());
        args.push(setting.to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_requirements_count_only_with_share_safe_and_not_for_shares() {
        let default = parse("share-safe\n", Some("dotencode\nfncache\nrevlogv1\nstore\n"));
        assert_eq!(default, ["dotencode", "fncache", "revlogv1", "share-safe", "store"]);
        assert_eq!(parse("revlogv1\nstore\n", Some("ignored\n")), ["revlogv1", "store"]);
        assert!(check(&parse("share-safe\nshared\n", Some("store\n"))).is_err());
        assert!(check(&default).is_ok());
        let err = check(&parse("revlogv1\nstore\nexp-unknown-thing\n", None)).unwrap_err();
        assert!(format!("{err:#}").contains("\"exp-unknown-thing\""), "{err:#}");
    }
}
