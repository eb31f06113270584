//! `repovault verify`: check that the store still holds what its snapshots need.
//!
//! Shallow (default): every object a snapshot names is present and re-hashes to its name,
//! every manifest hashes to its id, and every chain reaches a full snapshot through
//! snapshots of the same repository. Without NAMEs, objects no snapshot names are checked
//! too. `--deep` also rebuilds each repository's latest snapshot in a scratch directory
//! and checks that its refs are as recorded and every reachable object is present.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;

use super::{Context, Outcome, StoreArg};
use crate::{
    snapshot::Snapshot,
    store::{Store, StoredSnapshot},
};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only these repositories.
    pub names: Vec<String>,
    /// Also restore each repository into a scratch directory and check connectivity.
    #[arg(long)]
    pub deep: bool,
    /// Check a random PERCENT of the repositories (at least one).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub sample: Option<u8>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub repo: Option<String>,
    pub snapshot: Option<String>,
    pub object: Option<String>,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub repos_checked: u64,
    pub snapshots_checked: u64,
    pub objects_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    fn problem(&mut self, repo: Option<&str>, snapshot: Option<&str>, object: Option<&str>, problem: String) {
        self.problems.push(Problem {
            repo: repo.map(str::to_owned),
            snapshot: snapshot.map(str::to_owned),
            object: object.map(str::to_owned),
            problem,
        });
    }
}

pub fn run(ctx: &Context, args: &VerifyArgs) -> Result<Outcome> {
    for name in &args.names {
        crate::name::validate(name)?;
    }
    let store = ctx.open_store(&args.store)?;
    let report = verify(ctx, &store, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            let mut line = String::from("problem:");
            if let Some(repo) = &p.repo {
                line += &format!(" repository {repo}");
            }
            if let Some(snapshot) = &p.snapshot {
                line += &format!(" snapshot {}", Snapshot::short_id(snapshot));
            }
            if let Some(object) = &p.object {
                line += &format!(" object {object}");
            }
            eprintln!("{line}: {}", p.problem);
        }
        eprintln!(
            "{}: {} repositories, {} snapshots, {} objects ({} bytes) checked, {} problems",
            if report.ok { "ok" } else { "DAMAGED" },
            report.repos_checked,
            report.snapshots_checked,
            report.objects_checked,
            report.bytes_checked,
            report.problems.len()
        );
    }
    Ok(if report.ok { Outcome::Done } else { Outcome::Damaged })
}

pub fn verify(ctx: &Context, store: &Store, args: &VerifyArgs) -> Result<Report> {
    let mut report = Report::default();
    let mut by_repo: BTreeMap<String, Vec<StoredSnapshot>> = BTreeMap::new();
    let scopes: Vec<Option<&str>> =
        if args.names.is_empty() { vec![None] } else { args.names.iter().map(|n| Some(n.as_str())).collect() };
    for scope in scopes {
        let entries = match store.snapshot_entries(scope) {
            Ok(entries) => entries,
            Err(e) => {
                report.problem(scope, None, None, format!("listing snapshots: {e:#}"));
                continue;
            }
        };
        if entries.is_empty()
            && let Some(name) = scope
        {
            report.problem(Some(name), None, None, "no snapshots in the store".into());
        }
        for entry in entries {
            match store.load_snapshot(&entry) {
                Ok(s) if scope.is_none_or(|name| name == s.snapshot.repo) => {
                    by_repo.entry(s.snapshot.repo.clone()).or_default().push(s)
                }
                Ok(_) => {}
                Err(e) => {
                    report.snapshots_checked += 1;
                    report.problem(scope, Some(&entry.id), None, format!("{e:#}"));
                }
            }
        }
    }
    if let Some(percent) = args.sample {
        let keep = (by_repo.len() * usize::from(percent)).div_ceil(100).max(1);
        let mut names: Vec<String> = by_repo.keys().cloned().collect();
        // Fisher-Yates: a fresh random share each run, so CI covers the store over time.
        for i in (1..names.len()).rev() {
            names.swap(i, rand::random_range(0..=i));
        }
        names.truncate(keep);
        let keep: HashSet<String> = names.into_iter().collect();
        by_repo.retain(|name, _| keep.contains(name));
    }

    let mut checked: HashSet<String> = HashSet::new();
    for (repo, snapshots) in &by_repo {
        report.repos_checked += 1;
        let ids: HashSet<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        for s in snapshots {
            report.snapshots_checked += 1;
            if let Some(parent) = &s.snapshot.parent
                && !ids.contains(parent.as_str())
            {
                report.problem(
                    Some(repo),
                    Some(&s.id),
                    None,
                    format!("parent snapshot {parent} is missing: the chain is broken"),
                );
            }
            for pack in &s.snapshot.packs {
                for id in pack.pack.chunks.iter().chain(&pack.index.chunks) {
                    if checked.insert(id.clone()) {
                        check_object(store, &mut report, Some(repo), Some(&s.id), id);
                    } else if !store.has_object(id).unwrap_or(false) {
                        report.problem(Some(repo), Some(&s.id), Some(id), "object is missing".into());
                    }
                }
            }
        }
        if args.deep
            && let Some(latest) = snapshots.last()
            && let Err(e) = deep_check(ctx, store, latest)
        {
            report.problem(Some(repo), Some(&latest.id), None, format!("deep check failed: {e:#}"));
        }
    }
    if args.names.is_empty() && args.sample.is_none() {
        // Objects no snapshot names: an unfinished backup's, or prune's to collect. They
        // must still be intact, since a re-run would reuse them without re-sending.
        match store.list_objects() {
            Ok(all) => {
                for id in all {
                    if checked.insert(id.clone()) {
                        check_object(store, &mut report, None, None, &id);
                    }
                }
            }
            Err(e) => report.problem(None, None, None, format!("listing objects: {e:#}")),
        }
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn check_object(store: &Store, report: &mut Report, repo: Option<&str>, snapshot: Option<&str>, id: &str) {
    report.objects_checked += 1;
    match store.get_object(id) {
        Ok(data) => report.bytes_checked += data.len() as u64,
        Err(e) => {
            let problem = if store.has_object(id).unwrap_or(true) {
                format!("object is damaged: {}", e.root_cause())
            } else {
                "object is missing".to_owned()
            };
            report.problem(repo, snapshot, Some(id), problem);
        }
    }
}

fn deep_check(ctx: &Context, store: &Store, latest: &StoredSnapshot) -> Result<()> {
    let scratch = ctx.scratch()?;
    let target = scratch.path().join("repo.git");
    let chain = store.chain(&latest.snapshot.repo, &latest.id)?;
    crate::vcs::git::restore::build(store, &chain, &target)?;
    // Every object of every pack re-hashed against its index entry (backups record ids
    // without hashing objects again; this is where that is checked).
    // The rebuilt packs are listed from disk: a thin pack is rewritten (completed) on restore
    // and so has a name of its own.
    let pack_dir = target.join("objects/pack");
    let mut indexes: Vec<_> = std::fs::read_dir(&pack_dir)
        .with_context(|| format!("listing {}", pack_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    // (Two snapshots may hold the same pack, which the rebuilt repository holds once.)
    indexes.sort();
    for path in indexes {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let pack = name.strip_prefix("pack-").unwrap_or(&name);
        let bundle = gix_pack::Bundle::at(&path, gix::hash::Kind::Sha1)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("pack {pack}"))?;
        bundle
            .verify_integrity(
                &mut gix::progress::Discard,
                &std::sync::atomic::AtomicBool::new(false),
                gix_pack::index::verify::integrity::Options {
                    verify_mode: gix_pack::index::verify::Mode::HashCrc32Decode,
                    ..Default::default()
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("pack {pack} fails its integrity check"))?;
    }
    let mut repo = gix::open_opts(&target, gix::open::Options::isolated()).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::vcs::git::source::without_replacements(&mut repo);
    let refs = crate::vcs::git::source::read_refs(&repo)?;
    let recorded: BTreeMap<String, String> = refs.refs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    if recorded != latest.snapshot.refs {
        anyhow::bail!("the rebuilt repository's refs differ from the snapshot's");
    }
    crate::vcs::git::connectivity::check(&repo, &refs, crate::vcs::git::connectivity::Blobs::Exist)?;
    Ok(())
}
