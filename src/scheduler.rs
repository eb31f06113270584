//! The nightly job's engine: decide which repositories changed since their latest
//! snapshot, back those up a few at a time, longest-waiting first, and account for all.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::{
    backup::{BackupReport, Chaining, back_up},
    source::Candidate,
    store::{Store, StoredSnapshot, repo_key},
    throttle::RateLimiter,
};

/// Why a repository is or is not backed up tonight.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Never backed up, or its refs changed: back it up.
    Backup { waiting_since: Option<DateTime<Utc>> },
    /// Its refs are as the latest snapshot recorded them.
    Unchanged,
    /// Found, but its kind cannot be backed up by this version.
    Unsupported(String),
    /// Its latest snapshot cannot be read (the error): it fails alone, the others go on.
    Damaged(String),
}

#[derive(Debug, Clone)]
pub struct Planned {
    pub candidate: Candidate,
    pub plan: Plan,
}

/// Threads that plan at once. Planning is a few `stat` calls and one small read per
/// repository: bound by file-system latency, which on NFS is worth overlapping.
const PLAN_THREADS: usize = 4;

/// Compares each candidate's ref fingerprint with its latest snapshot's; reads no objects.
/// A repository whose latest snapshot cannot be read is planned as [`Plan::Damaged`]: one
/// damaged manifest must not stop the night for every other repository.
pub fn plan(store: &Store, candidates: Vec<Candidate>) -> Result<Vec<Planned>> {
    let chunk = candidates.len().div_ceil(PLAN_THREADS).max(1);
    let mut planned = std::thread::scope(|scope| {
        let workers: Vec<_> = candidates
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|c| plan_one(store, c)).collect::<Vec<_>>()))
            .collect();
        let mut planned = Vec::with_capacity(candidates.len());
        for worker in workers {
            planned.extend(worker.join().map_err(|_| anyhow::anyhow!("planning thread panicked"))?);
        }
        Ok::<_, anyhow::Error>(planned)
    })?;
    // Longest-waiting first: never backed up, then the oldest latest snapshot.
    planned.sort_by_key(|p| match p.plan {
        Plan::Backup { waiting_since } => (0, waiting_since),
        _ => (1, None),
    });
    Ok(planned)
}

fn plan_one(store: &Store, candidate: &Candidate) -> Planned {
    let plan = match store.latest_snapshot(&candidate.name) {
        Err(e) => Plan::Damaged(format!("its latest snapshot cannot be read: {e:#}")),
        Ok(None) => Plan::Backup { waiting_since: None },
        Ok(Some(latest)) => {
            let now = candidate.vcs.system().source_stat(&candidate.path);
            if latest.snapshot.source_fingerprint.as_deref() == Some(now.fingerprint.as_str()) {
                Plan::Unchanged
            } else {
                Plan::Backup { waiting_since: Some(latest.snapshot.created_at) }
            }
        }
    };
    Planned { candidate: candidate.clone(), plan }
}

/// A repository's latest snapshot as far as the store can tell.
#[derive(Debug)]
pub enum Latest {
    Never,
    Readable(StoredSnapshot),
    /// The latest snapshot file cannot be read (the error); the newest that still reads, if any.
    Damaged {
        error: String,
        newest_readable: Option<StoredSnapshot>,
    },
}

/// The latest snapshot of `repo`, falling back to the newest readable one when the latest is
/// damaged (reads older manifests only then).
pub fn latest(store: &Store, repo: &str) -> Latest {
    match store.latest_snapshot(repo) {
        Ok(None) => Latest::Never,
        Ok(Some(latest)) => Latest::Readable(latest),
        Err(e) => Latest::Damaged { error: format!("{e:#}"), newest_readable: newest_readable(store, repo) },
    }
}

fn newest_readable(store: &Store, repo: &str) -> Option<StoredSnapshot> {
    let entries = store.snapshot_entries(Some(repo)).ok()?;
    entries.iter().rev().filter_map(|entry| store.load_snapshot(entry).ok()).find(|s| s.snapshot.repo == repo)
}

/// A repository with snapshots that the feed no longer lists.
#[derive(Debug)]
pub struct Gone {
    /// Its NAME, or a label saying why it is unknown (every snapshot of it is damaged).
    pub repo: String,
    /// Its latest snapshot cannot be read (the error).
    pub damaged: Option<String>,
    /// The newest snapshot that reads, if any.
    pub newest: Option<StoredSnapshot>,
}

/// Repositories with snapshots that the feed no longer lists: deleted at the source. Their
/// snapshots are kept; they are reported, never treated as errors. A repository whose latest
/// snapshot is damaged is still listed, named from an older snapshot when one reads.
pub fn gone(store: &Store, candidates: &[Candidate]) -> Result<Vec<Gone>> {
    let present: HashSet<String> = candidates.iter().map(|c| repo_key(&c.name)).collect();
    let mut gone = Vec::new();
    for key in store.repo_keys()? {
        if present.contains(&key) {
            continue;
        }
        match store.latest_snapshot_by_key(&key) {
            Ok(None) => {}
            Ok(Some(latest)) => {
                gone.push(Gone { repo: latest.snapshot.repo.clone(), damaged: None, newest: Some(latest) })
            }
            Err(e) => {
                let name = store.name_of_key(&key);
                let newest = name.as_deref().and_then(|name| newest_readable(store, name));
                let repo =
                    name.unwrap_or_else(|| format!("(unknown: every snapshot under snapshots/{key} is damaged)"));
                gone.push(Gone { repo, damaged: Some(format!("{e:#}")), newest });
            }
        }
    }
    gone.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(gone)
}

#[derive(Debug)]
pub enum Outcome {
    BackedUp(BackupReport),
    /// The refs are as the latest snapshot (its id and time) recorded them: nothing read.
    Unchanged(Option<(String, DateTime<Utc>)>),
    /// Left alone by design (why): a Mercurial repository.
    NotBackedUp(String),
    Failed(String),
}

#[derive(Debug)]
pub struct JobResult {
    pub name: String,
    pub outcome: Outcome,
    pub attempts: usize,
    /// When the job started: no snapshot it wrote is older.
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
}

pub struct ExecOptions<'a> {
    pub jobs: usize,
    pub limiter: Option<&'a RateLimiter>,
    /// Delays between attempts for transient errors; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
}

/// Where [`execute`]'s job threads take their work from: the scan's list, planned ahead, or
/// the database's queue, claimed one repository at a time (`commands::run_db`).
pub trait WorkSource: Sync {
    /// The next repository for this job thread, or `None` when there is no more work.
    /// May block (waiting for other workers' claims).
    fn next(&self) -> Option<Candidate>;
    /// Whether the work was not planned ahead: each job then first compares the ref
    /// fingerprint with the latest snapshot's, and an unchanged repository is done at once.
    fn unplanned(&self) -> bool {
        false
    }
    /// Sees each result on the job thread, before it is reported (and before the thread
    /// asks for more work).
    fn finished(&self, _result: &JobResult) {}
}

/// A list of repositories, longest-waiting first (the scan's plan).
pub struct WorkList(Mutex<VecDeque<Candidate>>);

impl WorkList {
    pub fn new(work: Vec<Candidate>) -> WorkList {
        WorkList(Mutex::new(VecDeque::from(work)))
    }
}

impl WorkSource for WorkList {
    fn next(&self) -> Option<Candidate> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// Backs up the work `source` gives with `options.jobs` threads; `on_result` sees each
/// result as it comes.
pub fn execute(
    store: &Store,
    source: &dyn WorkSource,
    options: &ExecOptions<'_>,
    mut on_result: impl FnMut(&JobResult),
) -> Vec<JobResult> {
    let (tx, rx) = mpsc::channel::<JobResult>();
    let mut results = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let tx = tx.clone();
            scope.spawn(move || {
                while let Some(candidate) = source.next() {
                    let result = run_job(store, &candidate, options, source.unplanned());
                    source.finished(&result);
                    if tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for result in rx {
            on_result(&result);
            results.push(result);
        }
    });
    results
}

/// One repository: checked first when it was not planned, then backed up.
fn run_job(store: &Store, candidate: &Candidate, options: &ExecOptions<'_>, unplanned: bool) -> JobResult {
    let started_at = Utc::now();
    let start = Instant::now();
    let quick = if unplanned { quick_check(store, candidate) } else { None };
    match quick {
        Some(outcome) => {
            JobResult { name: candidate.name.clone(), outcome, attempts: 0, started_at, duration: start.elapsed() }
        }
        None => back_up_with_retries(store, candidate, options, started_at),
    }
}

/// The outcome of a repository that needs no backup (unchanged, left alone, its latest
/// snapshot unreadable), or `None`: back it up.
fn quick_check(store: &Store, candidate: &Candidate) -> Option<Outcome> {
    match store.latest_snapshot(&candidate.name) {
        Err(e) => Some(Outcome::Failed(format!("its latest snapshot cannot be read: {e:#}"))),
        Ok(None) => None,
        Ok(Some(latest)) => {
            let now = candidate.vcs.system().source_stat(&candidate.path);
            (latest.snapshot.source_fingerprint.as_deref() == Some(now.fingerprint.as_str()))
                .then_some(Outcome::Unchanged(Some((latest.id, latest.snapshot.created_at))))
        }
    }
}

fn back_up_with_retries(
    store: &Store,
    candidate: &Candidate,
    options: &ExecOptions<'_>,
    started_at: DateTime<Utc>,
) -> JobResult {
    let start = Instant::now();
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let result = back_up(store, &candidate.name, &candidate.path, options.limiter, Chaining::SameSourceOnly);
        match result {
            Ok(report) => break Outcome::BackedUp(report),
            Err(e) if attempts <= options.retry_delays.len() && is_transient(&e) => {
                tracing::warn!(repo = candidate.name, attempt = attempts, error = %format!("{e:#}"), "transient error; retrying");
                std::thread::sleep(options.retry_delays[attempts - 1]);
            }
            Err(e) => break Outcome::Failed(format!("{e:#}")),
        }
    };
    JobResult { name: candidate.name.clone(), outcome, attempts, started_at, duration: start.elapsed() }
}

/// I/O errors worth another try: the kinds NFS and busy disks produce and that go away, and
/// a dropped ssh:// connection (the next request connects again).
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().filter_map(|cause| cause.downcast_ref::<std::io::Error>()).any(|io| {
        use std::io::ErrorKind::*;
        matches!(
            io.kind(),
            Interrupted | TimedOut | WouldBlock | ResourceBusy | StaleNetworkFileHandle | ConnectionAborted
        )
            // EIO, EAGAIN, ESTALE, ETIMEDOUT
            || matches!(io.raw_os_error(), Some(5 | 11 | 116 | 110))
    })
}

#[cfg(test)]
mod tests {
    use super::is_transient;
    use anyhow::Context;

    #[test]
    fn transient_errors_are_told_from_permanent_ones() {
        let stale = std::io::Error::from_raw_os_error(116); // ESTALE
        assert!(is_transient(&anyhow::Error::new(stale).context("reading pack")));
        let dropped = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the connection was lost");
        assert!(is_transient(&anyhow::Error::new(dropped).context("store ssh://h/s: reading x")));
        let eio: anyhow::Result<()> = Err(std::io::Error::from_raw_os_error(5).into());
        assert!(is_transient(&eio.context("repository x").unwrap_err()));
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert!(!is_transient(&anyhow::Error::new(missing)));
        assert!(!is_transient(&anyhow::anyhow!("object 1234 is corrupt in the source")));
    }
}
