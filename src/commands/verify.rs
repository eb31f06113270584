//! `repovault verify`: check that the store still holds what its snapshots need, and say
//! which snapshots it cannot restore.
//!
//! Shallow (default): every object a snapshot names is present and re-hashes to its name,
//! every manifest hashes to its id, and every chain reaches a full snapshot through
//! snapshots of the same repository. Without NAMEs, objects no snapshot names are checked
//! too. `--deep` also rebuilds each repository's latest snapshot in a scratch directory
//! and checks that its refs are as recorded and every reachable object is present.
//!
//! **Every consequence of a problem is listed.** Objects are shared: a chunk of a big file
//! committed to five repositories is stored once, and a snapshot is restored through its
//! whole chain. So each object's bytes are checked once, but the result is attributed to
//! every snapshot naming it; a snapshot with a damaged or missing object, a damaged
//! manifest or a missing parent cannot be restored by itself ("directly broken"), and
//! every later snapshot whose chain passes through one cannot be restored either. Each of
//! those gets a problem saying why, and the report ends with the list of unrestorable
//! snapshots and a count of them and of their repositories.
//!
//! **Damage is only what is wrong in the store.** A NAME the store does not hold, or a
//! scratch directory that is missing, read-only or full, is an environment error (exit 2,
//! naming it): the first two are checked before anything is verified, and a rebuild that
//! fails writing the scratch directory stops the command.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;

use super::{Context, Outcome, StoreArg};
use crate::{
    error::usage,
    output,
    snapshot::Snapshot,
    store::{DamagedSnapshot, Store, StoredSnapshot},
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
    /// For a snapshot that cannot be restored because of an earlier one of its chain: that
    /// snapshot's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_includes: Option<String>,
}

/// A snapshot that cannot be restored, directly or through its chain.
#[derive(Debug, Serialize)]
pub struct Unrestorable {
    /// `None` when no readable manifest names the repository.
    pub repo: Option<String>,
    pub snapshot: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub repos_checked: u64,
    pub snapshots_checked: u64,
    pub objects_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
    /// Every snapshot that cannot be restored, by repository, oldest first.
    pub unrestorable: Vec<Unrestorable>,
    /// How many repositories have a snapshot that cannot be restored.
    pub unrestorable_repos: u64,
}

pub fn run(ctx: &Context, args: &VerifyArgs) -> Result<Outcome> {
    for name in &args.names {
        crate::name::validate(name)?;
    }
    let store = ctx.open_store(&args.store)?;
    check_names_are_stored(&store, &args.names)?;
    if args.deep {
        check_scratch_base(&ctx.scratch_base())?;
    }
    let report = verify(ctx, &store, args)?;
    if args.json {
        output::json(&report)?;
    } else {
        print_text(&report)?;
    }
    Ok(if report.ok { Outcome::Done } else { Outcome::Damaged })
}

/// A NAME without snapshots is a mistake of the caller, not damage: said before anything
/// is verified.
fn check_names_are_stored(store: &Store, names: &[String]) -> Result<()> {
    for name in names {
        let entries =
            store.snapshot_entries(Some(name)).with_context(|| format!("repository {name}: listing snapshots"))?;
        if entries.is_empty() {
            return Err(usage(format!("repository {name}: not in store {}", store.location())));
        }
    }
    Ok(())
}

/// `--deep` rebuilds repositories in the scratch directory: that it exists and takes files
/// is checked first, so that a machine's problem is never reported as the store's.
fn check_scratch_base(base: &Path) -> Result<()> {
    let cause = match std::fs::metadata(base) {
        Err(e) => Some(e.to_string()),
        Ok(meta) if !meta.is_dir() => Some("not a directory".to_owned()),
        Ok(_) => tempfile::Builder::new().prefix("repovault-").tempdir_in(base).err().map(|e| e.to_string()),
    };
    match cause {
        Some(cause) => Err(scratch_error(base, &cause)),
        None => Ok(()),
    }
}

fn scratch_error(base: &Path, cause: &str) -> anyhow::Error {
    usage(format!(
        "scratch directory {}: {cause}; verify --deep rebuilds each repository there (config key scratch_dir, \
         default TMPDIR): it must exist, be writable and have room for the largest repository",
        output::path(base)
    ))
}

fn print_text(report: &Report) -> Result<()> {
    for p in &report.problems {
        let mut line = String::new();
        if let Some(snapshot) = &p.snapshot {
            line += &format!("snapshot {}: ", Snapshot::short_id(snapshot));
        }
        if let Some(object) = &p.object
            && p.chain_includes.is_none()
        {
            line += &format!("object {object}: ");
        }
        line += &p.problem;
        match &p.repo {
            Some(repo) => output::repo_error(repo, &line),
            None => output::error(&line),
        }
    }
    let checked = format!(
        "{} repositories, {} snapshots, {} objects ({} bytes) checked",
        report.repos_checked, report.snapshots_checked, report.objects_checked, report.bytes_checked
    );
    if report.ok {
        output::line(&format!("ok: {checked}"))
    } else {
        output::line(&format!(
            "DAMAGED: {} snapshots of {} repositories cannot be restored; {} problems; {checked}",
            report.unrestorable.len(),
            report.unrestorable_repos,
            report.problems.len()
        ))
    }
}

/// One repository's snapshots as the store holds them.
struct RepoSnapshots {
    /// `None` when no readable manifest names it.
    name: Option<String>,
    good: Vec<StoredSnapshot>,
    damaged: Vec<DamagedSnapshot>,
}

/// Why a snapshot cannot be restored by itself.
#[derive(Debug, Clone)]
enum Cause {
    Object { id: String, fault: ObjectFault },
    Manifest(String),
    MissingParent(String),
    DeepCheck(String),
}

impl Cause {
    fn object(&self) -> Option<&str> {
        match self {
            Cause::Object { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The problem line of the snapshot itself.
    fn problem(&self) -> String {
        match self {
            Cause::Object { fault, .. } => fault.problem.clone(),
            Cause::Manifest(error) => error.clone(),
            Cause::MissingParent(parent) => format!("parent snapshot {parent} is missing: the chain is broken"),
            Cause::DeepCheck(error) => format!("deep check failed: {error}"),
        }
    }

    /// What a later snapshot of the chain is told: "..., which {this}".
    fn for_descendants(&self, others: usize) -> String {
        let more = if others > 0 { format!(" (and {others} more problems)") } else { String::new() };
        match self {
            Cause::Object { id, fault } => {
                let state = if fault.missing { "missing" } else { "damaged" };
                format!("needs {state} object {id}{more}")
            }
            Cause::Manifest(_) => format!("has a damaged manifest{more}"),
            Cause::MissingParent(parent) => format!("has a missing parent snapshot {parent}{more}"),
            Cause::DeepCheck(_) => format!("fails the deep check{more}"),
        }
    }
}

/// Snapshot id to what breaks it by itself.
type DirectCauses = HashMap<String, Vec<Cause>>;

pub fn verify(ctx: &Context, store: &Store, args: &VerifyArgs) -> Result<Report> {
    let mut report = Report::default();
    let mut repos = load(store, &args.names, &mut report);
    if let Some(percent) = args.sample {
        sample(&mut repos, percent);
    }
    let referenced: HashSet<&str> =
        repos.values().flat_map(|r| &r.good).flat_map(|s| s.snapshot.chunks()).map(String::as_str).collect();
    let bar = output::progress_bar(referenced.len() as u64, "{spinner} verify [{bar:30}] {pos}/{len} objects {msg}");
    let mut objects = ObjectChecks::new(store, bar);
    let mut causes = DirectCauses::new();
    for (label, repo) in &repos {
        objects.bar.set_message(output::escape(label).into_owned());
        report.repos_checked += 1;
        report.snapshots_checked += (repo.good.len() + repo.damaged.len()) as u64;
        shallow_causes(repo, store.snapshots_are_complete(), &mut objects, &mut causes);
    }
    objects.bar.finish_and_clear();
    if args.deep {
        deep_pass(ctx, store, &repos, &mut causes)?;
    }
    for repo in repos.values() {
        report_repo(repo, store.snapshots_are_complete(), &causes, &mut report);
    }
    if args.names.is_empty() && args.sample.is_none() {
        unreferenced_objects(&mut objects, &mut report);
    }
    report.objects_checked = objects.count;
    report.bytes_checked = objects.bytes;
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// The snapshots in scope, by repository label (its name, or a description of the
/// directory when no manifest names it). A listing that fails is a problem of the report.
fn load(store: &Store, names: &[String], report: &mut Report) -> BTreeMap<String, RepoSnapshots> {
    let mut repos: BTreeMap<String, RepoSnapshots> = BTreeMap::new();
    let scopes: Vec<Option<&str>> =
        if names.is_empty() { vec![None] } else { names.iter().map(|n| Some(n.as_str())).collect() };
    for scope in scopes {
        let (good, damaged) = match store.snapshots_and_damage(scope) {
            Ok(found) => found,
            Err(e) => {
                report.problems.push(problem(scope, None, None, format!("listing snapshots: {e:#}")));
                continue;
            }
        };
        for s in good {
            repo_entry(&mut repos, s.snapshot.repo.clone(), Some(s.snapshot.repo.clone())).good.push(s);
        }
        for d in damaged {
            repo_entry(&mut repos, d.repo_label(), d.repo.clone()).damaged.push(d);
        }
    }
    repos
}

fn repo_entry(repos: &mut BTreeMap<String, RepoSnapshots>, label: String, name: Option<String>) -> &mut RepoSnapshots {
    repos.entry(label).or_insert_with(|| RepoSnapshots { name, good: Vec::new(), damaged: Vec::new() })
}

fn problem(repo: Option<&str>, snapshot: Option<&str>, object: Option<&str>, problem: String) -> Problem {
    Problem {
        repo: repo.map(str::to_owned),
        snapshot: snapshot.map(str::to_owned),
        object: object.map(str::to_owned),
        problem,
        chain_includes: None,
    }
}

/// Keeps a random PERCENT of the repositories (at least one).
fn sample(repos: &mut BTreeMap<String, RepoSnapshots>, percent: u8) {
    let keep = (repos.len() * usize::from(percent)).div_ceil(100).max(1);
    let mut labels: Vec<String> = repos.keys().cloned().collect();
    // Fisher-Yates: a fresh random share each run, so CI covers the store over time.
    for i in (1..labels.len()).rev() {
        labels.swap(i, rand::random_range(0..=i));
    }
    labels.truncate(keep);
    let keep: HashSet<String> = labels.into_iter().collect();
    repos.retain(|label, _| keep.contains(label));
}

/// What breaks each snapshot of `repo` by itself: its manifest, its parent, its objects.
/// In a store whose snapshots are complete (format 3) a parent is provenance only.
fn shallow_causes(repo: &RepoSnapshots, complete: bool, objects: &mut ObjectChecks, causes: &mut DirectCauses) {
    for d in &repo.damaged {
        causes.entry(d.entry.id.clone()).or_default().push(Cause::Manifest(format!("{:#}", d.error)));
    }
    let known: HashSet<&str> =
        repo.good.iter().map(|s| s.id.as_str()).chain(repo.damaged.iter().map(|d| d.entry.id.as_str())).collect();
    for s in &repo.good {
        let mut found = Vec::new();
        if let Some(parent) = &s.snapshot.parent
            && !complete
            && !known.contains(parent.as_str())
        {
            found.push(Cause::MissingParent(parent.clone()));
        }
        let mut named = HashSet::new();
        for id in s.snapshot.chunks() {
            if named.insert(id.as_str())
                && let Some(fault) = objects.check(id)
            {
                found.push(Cause::Object { id: id.clone(), fault });
            }
        }
        if !found.is_empty() {
            causes.entry(s.id.clone()).or_default().extend(found);
        }
    }
}

/// For each snapshot of `repo`, the earlier snapshots of its chain (oldest first) that
/// cannot be restored by themselves.
fn broken_ancestors<'a>(repo: &'a RepoSnapshots, causes: &DirectCauses) -> HashMap<&'a str, Vec<&'a str>> {
    let parent_of: HashMap<&str, Option<&str>> =
        repo.good.iter().map(|s| (s.id.as_str(), s.snapshot.parent.as_deref())).collect();
    let mut memo: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &repo.good {
        // Up the chain to a snapshot already known (or the chain's end), then back down.
        let mut path = Vec::new();
        let mut on_path = HashSet::new();
        let mut current = s.id.as_str();
        while !memo.contains_key(current) && on_path.insert(current) {
            path.push(current);
            match parent_of.get(current).copied().flatten() {
                Some(parent) if parent_of.contains_key(parent) => current = parent,
                _ => break,
            }
        }
        for id in path.into_iter().rev() {
            let mut broken = Vec::new();
            if let Some(parent) = parent_of[id] {
                broken.extend(memo.get(parent).into_iter().flatten().copied());
                if causes.contains_key(parent) {
                    broken.push(parent);
                }
            }
            memo.insert(id, broken);
        }
    }
    memo
}

/// Adds the problems of one repository and its unrestorable snapshots to the report.
fn report_repo(repo: &RepoSnapshots, complete: bool, causes: &DirectCauses, report: &mut Report) {
    let name = repo.name.as_deref();
    let ancestors = if complete { HashMap::new() } else { broken_ancestors(repo, causes) };
    let ids = repo.damaged.iter().map(|d| d.entry.id.as_str()).chain(repo.good.iter().map(|s| s.id.as_str()));
    let mut any = false;
    for id in ids {
        let own = causes.get(id).map(Vec::as_slice).unwrap_or_default();
        let inherited = ancestors.get(id).map(Vec::as_slice).unwrap_or_default();
        for cause in own {
            report.problems.push(problem(name, Some(id), cause.object(), cause.problem()));
        }
        for ancestor in inherited {
            let ancestor_causes = &causes[*ancestor];
            let first = &ancestor_causes[0];
            report.problems.push(Problem {
                chain_includes: Some((*ancestor).to_owned()),
                ..problem(
                    name,
                    Some(id),
                    first.object(),
                    format!(
                        "cannot be restored: its chain includes snapshot {}, which {}",
                        Snapshot::short_id(ancestor),
                        first.for_descendants(ancestor_causes.len() - 1)
                    ),
                )
            });
        }
        if !own.is_empty() || !inherited.is_empty() {
            any = true;
            report.unrestorable.push(Unrestorable { repo: name.map(str::to_owned), snapshot: id.to_owned() });
        }
    }
    if any {
        report.unrestorable_repos += 1;
    }
}

/// What is wrong with one stored object.
#[derive(Debug, Clone)]
struct ObjectFault {
    missing: bool,
    problem: String,
}

/// Each object's bytes are read and re-hashed once, however many snapshots name it; the
/// result is remembered for the others.
struct ObjectChecks<'a> {
    store: &'a Store,
    results: HashMap<String, Option<ObjectFault>>,
    count: u64,
    bytes: u64,
    bar: indicatif::ProgressBar,
}

impl<'a> ObjectChecks<'a> {
    fn new(store: &'a Store, bar: indicatif::ProgressBar) -> Self {
        ObjectChecks { store, results: HashMap::new(), count: 0, bytes: 0, bar }
    }

    fn is_checked(&self, id: &str) -> bool {
        self.results.contains_key(id)
    }

    /// `None` when the object is present and intact.
    fn check(&mut self, id: &str) -> Option<ObjectFault> {
        if let Some(result) = self.results.get(id) {
            return result.clone();
        }
        self.count += 1;
        self.bar.inc(1);
        let result = match self.store.get_object(id) {
            Ok(data) => {
                self.bytes += data.len() as u64;
                None
            }
            Err(e) if self.store.has_object(id).unwrap_or(true) => {
                Some(ObjectFault { missing: false, problem: format!("object is damaged: {}", e.root_cause()) })
            }
            Err(_) => Some(ObjectFault { missing: true, problem: "object is missing".to_owned() }),
        };
        self.results.insert(id.to_owned(), result.clone());
        result
    }
}

/// Objects no snapshot names: an unfinished backup's, or prune's to collect. They must
/// still be intact, since a re-run would reuse them without re-sending.
fn unreferenced_objects(objects: &mut ObjectChecks, report: &mut Report) {
    let all = match objects.store.list_objects() {
        Ok(all) => all,
        Err(e) => {
            report.problems.push(problem(None, None, None, format!("listing objects: {e:#}")));
            return;
        }
    };
    let unchecked: Vec<String> = all.into_iter().filter(|id| !objects.is_checked(id)).collect();
    objects.bar =
        output::progress_bar(unchecked.len() as u64, "{spinner} verify [{bar:30}] {pos}/{len} unreferenced objects");
    for id in unchecked {
        if let Some(fault) = objects.check(&id) {
            report.problems.push(problem(None, None, Some(&id), fault.problem));
        }
    }
    objects.bar.finish_and_clear();
}

/// Rebuilds the latest snapshot of each repository whose shallow check passed (the others
/// are already known not to restore). A rebuild failing because the scratch directory is
/// missing, read-only or full stops the command with an environment error.
fn deep_pass(
    ctx: &Context,
    store: &Store,
    repos: &BTreeMap<String, RepoSnapshots>,
    causes: &mut DirectCauses,
) -> Result<()> {
    let mut latest_of_each = Vec::new();
    for repo in repos.values() {
        if let Some(latest) = repo.good.last() {
            let ancestors = broken_ancestors(repo, causes);
            if !causes.contains_key(&latest.id) && ancestors.get(latest.id.as_str()).is_none_or(Vec::is_empty) {
                latest_of_each.push(latest);
            }
        }
    }
    let bar = output::progress_bar(
        latest_of_each.len() as u64,
        "{spinner} deep check [{bar:30}] {pos}/{len} repositories {msg}",
    );
    let base = ctx.scratch_base();
    for latest in latest_of_each {
        bar.set_message(output::escape(&latest.snapshot.repo).into_owned());
        let scratch = match ctx.scratch() {
            Ok(scratch) => scratch,
            Err(e) => {
                // Gone or refused since the start: said the way the start would have said it.
                bar.finish_and_clear();
                check_scratch_base(&base)?;
                return Err(usage(format!("{e:#}")));
            }
        };
        if let Err(e) = deep_check(store, latest, scratch.path()) {
            if let Some(cause) = scratch_environment_cause(&e, scratch.path()) {
                bar.finish_and_clear();
                let repo = &latest.snapshot.repo;
                return Err(scratch_error(&base, &format!("{cause} while rebuilding repository {repo}")));
            }
            causes.entry(latest.id.clone()).or_default().push(Cause::DeepCheck(format!("{e:#}")));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Errors of writing the scratch directory that are the machine's, not the store's.
const SCRATCH_ERRNOS: [i32; 4] = [libc::ENOSPC, libc::EDQUOT, libc::EROFS, libc::EACCES];

/// When a failed rebuild failed for want of room or permission in the scratch directory,
/// that cause. Verify writes nowhere else, so running out of room or a read-only file
/// system can only be the scratch directory's; a refused access counts when the error is
/// about a path there.
fn scratch_environment_cause(err: &anyhow::Error, scratch: &Path) -> Option<String> {
    let text = format!("{err:#}");
    let counts = |code: i32| code != libc::EACCES || text.contains(&output::path(scratch));
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io.raw_os_error().is_some_and(|code| SCRATCH_ERRNOS.contains(&code) && counts(code))
        {
            return Some(io.to_string());
        }
    }
    // gix's errors reach us as text ("... (os error 28)"), their sources flattened away.
    if let Some(&code) =
        SCRATCH_ERRNOS.iter().find(|&&code| counts(code) && text.contains(&format!("(os error {code})")))
    {
        return Some(io::Error::from_raw_os_error(code).to_string());
    }
    // Last resort for errors that lost even that: while the partial rebuild still fills the
    // directory, a small write there shows whether it is full or read-only.
    probe_write(scratch)
        .err()
        .filter(|e| e.raw_os_error().is_some_and(|c| SCRATCH_ERRNOS.contains(&c)))
        .map(|e| e.to_string())
}

fn probe_write(dir: &Path) -> io::Result<()> {
    let probe = dir.join("space-probe");
    let written = std::fs::write(&probe, vec![0u8; 64 << 10]).and_then(|()| std::fs::File::open(&probe)?.sync_all());
    let _ = std::fs::remove_file(&probe);
    written
}

fn deep_check(store: &Store, latest: &StoredSnapshot, scratch: &Path) -> Result<()> {
    let chain = store.chain(&latest.snapshot.repo, &latest.id)?;
    latest.snapshot.vcs.system().deep_check(store, &chain, scratch)
}
