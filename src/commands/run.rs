//! `repovault run`: the nightly job. Finds the repositories that changed since their latest
//! snapshot and backs each up; one repository's failure never stops the others.
//!
//! Every repository found ends in exactly one of the summary's buckets: backed up,
//! unchanged, failed (an error: exit 1), or not backed up (found, and deliberately left
//! alone: a Mercurial repository, a refused name; reported every night, not an error).
//! Repositories the store holds that the scan no longer finds are "gone"; when most of
//! them vanish at once the scan root is taken for unmounted (see `source::root_guard`).
//! The summary and the run record are written whatever failed.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

mod database;

use super::{Context, FeedArgs, Outcome, StoreArg};
use crate::{
    error::usage,
    output,
    scheduler::{self, ExecOptions, Gone, Plan, Planned},
    source::{
        Candidate, Rejected, RejectionKind,
        root_guard::{self, GoneCount, ScanRoot},
        scan::ScanResult,
    },
    store::{
        RunRecord, Store,
        lock::{LockAttempt, LockInfo},
        runs::NotBackedUp,
    },
    throttle::{RateLimiter, parse_rate},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Repositories backed up at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Cap on bytes per second read from the source disks, across all jobs (50MiB, 200M).
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// List what would be backed up, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// With --database-url: at most N backups at once per storage (the feed's `storage`
    /// column), across all workers on all hosts (config key `jobs_per_storage`).
    #[arg(long, value_name = "N")]
    pub jobs_per_storage: Option<usize>,
    /// After the run, also write the freshness figures to this node_exporter textfile, as
    /// `lag --prometheus` does (config key `prometheus`).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

/// Delays before the retries of a repository that failed with a transient I/O error.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

/// A repository (or a path the scan could not read) that failed tonight, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RepoFailure {
    pub repo: String,
    pub error: String,
}

/// What `run --json` prints: the summary, for machines.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub finished_at: DateTime<Utc>,
    pub examined: u64,
    pub changed: u64,
    pub backed_up: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub gone: u64,
    pub not_backed_up: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub duration_seconds: f64,
    pub failed_repos: Vec<RepoFailure>,
    pub gone_repos: Vec<String>,
    pub not_backed_up_repos: Vec<NotBackedUp>,
    /// Set when this run did nothing because another run holds the store's lock (why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Who holds the lock, when `skipped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<LockInfo>,
    /// With --database-url: the shared night and this worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub night_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<i64>,
    /// With --database-url: feed rows refused (a hostile name, a path outside repos_root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_repos: Option<Vec<NotBackedUp>>,
}

impl RunResult {
    /// The result of a run that found the lock held: nothing examined, so that a script
    /// reading stdout still gets an object, and says why.
    fn skipped(holder: LockInfo, duration_seconds: f64) -> RunResult {
        RunResult {
            finished_at: Utc::now(),
            examined: 0,
            changed: 0,
            backed_up: 0,
            unchanged: 0,
            failed: 0,
            gone: 0,
            not_backed_up: 0,
            bytes_read: 0,
            bytes_stored: 0,
            duration_seconds,
            failed_repos: Vec::new(),
            gone_repos: Vec::new(),
            not_backed_up_repos: Vec::new(),
            skipped: Some(format!("another run holds the lock ({holder})")),
            held_by: Some(holder),
            night_id: None,
            worker_id: None,
            refused: None,
            refused_repos: None,
        }
    }
}

/// Tonight's repositories, sorted into what is to be done with each.
#[derive(Default)]
struct Night {
    work: Vec<Candidate>,
    unchanged: u64,
    failures: Vec<RepoFailure>,
    not_backed_up: Vec<NotBackedUp>,
}

impl Night {
    fn sort(rejected: &[Rejected], planned: Vec<Planned>) -> Night {
        let mut night = Night::default();
        for rejected in rejected {
            let path = output::path(&rejected.path);
            match rejected.kind {
                RejectionKind::Refused => {
                    night.not_backed_up.push(NotBackedUp { repo: None, path, why: rejected.reason.clone() })
                }
                RejectionKind::Unreadable => {
                    night.failures.push(RepoFailure { repo: path, error: rejected.reason.clone() })
                }
            }
        }
        for p in planned {
            match p.plan {
                Plan::Backup { .. } => night.work.push(p.candidate),
                Plan::Unchanged => night.unchanged += 1,
                Plan::Unsupported(why) => night.not_backed_up.push(NotBackedUp {
                    path: output::path(&p.candidate.path),
                    repo: Some(p.candidate.name),
                    why,
                }),
                Plan::Damaged(error) => night.failures.push(RepoFailure { repo: p.candidate.name, error }),
            }
        }
        night
    }

    fn examined(&self) -> u64 {
        (self.work.len() + self.failures.len() + self.not_backed_up.len()) as u64 + self.unchanged
    }
}

pub fn run(ctx: &Context, args: &RunArgs) -> Result<Outcome> {
    if let Some(url) = args.feed.database_url(&ctx.config) {
        return database::run(ctx, args, url);
    }
    let started = Instant::now();
    let started_at = Utc::now();
    let jobs = jobs(ctx, args)?;
    let limiter = limiter(ctx, args)?;
    let store = ctx.open_store(&args.store)?;
    let found = args.feed.discover(&ctx.config)?;
    let scan_root = args.feed.scan_root(&ctx.config).map(|root| ScanRoot::observe(root));

    let _lock = if args.dry_run {
        None
    } else {
        match store.lock_run()? {
            LockAttempt::Acquired(lock) => Some(lock),
            LockAttempt::HeldBy(holder) => {
                output::notice(&format!("another run holds store {} ({holder}); nothing to do", store.location()));
                if ctx.log_json || args.json {
                    print_result(ctx, args, &RunResult::skipped(holder, started.elapsed().as_secs_f64()))?;
                }
                return Ok(Outcome::Done);
            }
        }
    };

    let gone = scheduler::gone(&store, &found.repositories)?;
    if !args.feed.allow_gone {
        let previous = previous_run(&store);
        let gone_names: Vec<&str> = gone.iter().map(|g| g.repo.as_str()).collect();
        let count = GoneCount::since(previous.as_ref(), &gone_names, store.repo_keys()?.len());
        root_guard::check(scan_root.as_ref(), previous.as_ref(), count)?;
    }
    let ScanResult { repositories, rejected } = found;
    let candidates = repositories.clone();
    let night = Night::sort(&rejected, scheduler::plan(&store, repositories)?);

    if args.dry_run {
        return print_dry_run(&night, &gone);
    }
    for failure in &night.failures {
        output::repo_error(&failure.repo, &failure.error);
    }
    for g in &gone {
        if let Some(damage) = &g.damaged {
            output::repo_notice(
                &g.repo,
                &format!("gone at the source, and its latest snapshot cannot be read: {damage}"),
            );
        }
    }

    let examined = night.examined();
    let changed = night.work.len() as u64;
    let Night { work, unchanged, mut failures, not_backed_up } = night;
    let progress = output::progress_bar(work.len() as u64, "{bar:30} {pos}/{len} repositories  {msg}  ETA {eta}");
    let (mut backed_up, mut bytes_read, mut bytes_stored) = (0u64, 0u64, 0u64);
    let options = ExecOptions { jobs, limiter: limiter.as_ref(), retry_delays: RETRY_DELAYS.to_vec() };
    scheduler::execute(&store, &scheduler::WorkList::new(work), &options, |result| {
        progress.inc(1);
        match &result.outcome {
            scheduler::Outcome::BackedUp(report) => {
                backed_up += 1;
                bytes_read += report.bytes_read;
                bytes_stored += report.bytes_stored;
                let rate = bytes_read as f64 / started.elapsed().as_secs_f64().max(0.001);
                progress.set_message(format!("{} read, {}/s", human_bytes(bytes_read), human_bytes(rate as u64)));
                log_backed_up(result, report);
            }
            scheduler::Outcome::Failed(error) => {
                progress.suspend(|| output::repo_error(&result.name, error));
                failures.push(RepoFailure { repo: result.name.clone(), error: error.clone() });
            }
            // Planned work was checked before: a job does not find these.
            scheduler::Outcome::Unchanged(_) | scheduler::Outcome::NotBackedUp(_) => {}
        }
    });
    progress.finish_and_clear();

    let record = RunRecord {
        host: crate::backup::hostname(),
        started_at,
        finished_at: Utc::now(),
        examined,
        changed,
        backed_up,
        unchanged,
        failed: failures.len() as u64,
        gone: gone.len() as u64,
        bytes_read,
        bytes_stored,
        failed_repos: failures.iter().map(|f| f.repo.clone()).collect(),
        gone_repos: gone.iter().map(|g| g.repo.clone()).collect(),
        not_backed_up: not_backed_up.len() as u64,
        not_backed_up_repos: not_backed_up.clone(),
        scan_root: scan_root.as_ref().map(ScanRoot::display),
        scan_root_was_mount_point: scan_root.as_ref().map(|r| r.mount_point),
    };
    let mut outcome = if failures.is_empty() { Outcome::Done } else { Outcome::PartlyFailed };
    if let Err(e) = store.write_run_record(&record) {
        output::error(&format!("store {}: cannot record this run: {e:#}", store.location()));
        outcome = Outcome::PartlyFailed;
    }
    if let Some(path) = args.prometheus.as_ref().or(ctx.config.prometheus.as_ref()) {
        let max_lag = super::lag::max_lag_seconds(None, &ctx.config)?;
        if let Err(e) = super::lag::update_prometheus(&store, &candidates, &rejected, max_lag, path) {
            output::error(&format!("{e:#}"));
            outcome = Outcome::PartlyFailed;
        }
    }
    let result = RunResult {
        finished_at: record.finished_at,
        examined,
        changed,
        backed_up,
        unchanged,
        failed: record.failed,
        gone: record.gone,
        not_backed_up: record.not_backed_up,
        bytes_read,
        bytes_stored,
        duration_seconds: started.elapsed().as_secs_f64(),
        failed_repos: failures,
        gone_repos: record.gone_repos.clone(),
        not_backed_up_repos: not_backed_up,
        skipped: None,
        held_by: None,
        night_id: None,
        worker_id: None,
        refused: None,
        refused_repos: None,
    };
    print_result(ctx, args, &result)?;
    Ok(outcome)
}

/// `--jobs`, else the config's `jobs`, else the number of cores.
fn jobs(ctx: &Context, args: &RunArgs) -> Result<usize> {
    let jobs =
        args.jobs.or(ctx.config.jobs).unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if jobs == 0 {
        return Err(usage("jobs (--jobs or config key jobs) must be at least 1"));
    }
    Ok(jobs)
}

/// `--rate-limit`, else the config's `rate_limit`.
fn limiter(ctx: &Context, args: &RunArgs) -> Result<Option<RateLimiter>> {
    Ok(args
        .rate_limit
        .clone()
        .or_else(|| ctx.config.rate_limit.clone())
        .map(|rate| {
            parse_rate(&rate).map_err(|e| usage(format!("rate limit (--rate-limit or config key rate_limit): {e}")))
        })
        .transpose()?
        .map(RateLimiter::new))
}

/// The JSON-log event of a repository backed up (one per result, naming it).
fn log_backed_up(result: &scheduler::JobResult, report: &crate::backup::BackupReport) {
    tracing::info!(
        repo = result.name,
        result = "backed_up",
        snapshot = report.snapshot_id,
        objects = report.objects,
        bytes_read = report.bytes_read,
        bytes_stored = report.bytes_stored,
        attempts = result.attempts,
        seconds = result.duration.as_secs_f64(),
        "repository backed up"
    );
}

fn print_result(ctx: &Context, args: &RunArgs, result: &RunResult) -> Result<()> {
    if ctx.log_json {
        output::json_line(result)
    } else if args.json {
        output::json(result)
    } else {
        print_summary(result)
    }
}

/// The previous run's record, for the scan root check; an unreadable one is no evidence.
fn previous_run(store: &Store) -> Option<RunRecord> {
    store.last_run_record().unwrap_or_else(|e| {
        output::notice(&format!("cannot read the previous run record: {e:#}"));
        None
    })
}

fn print_dry_run(night: &Night, gone: &[Gone]) -> Result<Outcome> {
    for candidate in &night.work {
        output::line(&format!("would back up {}", candidate.name))?;
    }
    for failure in &night.failures {
        output::line(&format!("would fail {}: {}", failure.repo, failure.error))?;
    }
    output::line(&format!(
        "dry run: {} examined, {} would be backed up, {} unchanged, {} gone, {} not backed up, {} failing",
        night.examined(),
        night.work.len(),
        night.unchanged,
        gone.len(),
        night.not_backed_up.len(),
        night.failures.len()
    ))?;
    Ok(Outcome::Done)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Lines after the counts name at most this many repositories of each kind.
const LISTED: usize = 10;

fn print_summary(result: &RunResult) -> Result<()> {
    let finished = result.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    output::line(&format!("repovault run finished at {finished}"))?;
    if let (Some(night), Some(worker)) = (result.night_id, result.worker_id) {
        output::line(&format!("  night {night} (all its workers), reported by worker {worker}"))?;
    }
    output::line(&format!("  examined      {:>8}", result.examined))?;
    output::line(&format!("  changed       {:>8}", result.changed))?;
    output::line(&format!("  backed up     {:>8}", result.backed_up))?;
    output::line(&format!("  unchanged     {:>8}", result.unchanged))?;
    output::line(&format!("  failed        {:>8}", result.failed))?;
    output::line(&format!("  gone          {:>8}   (deleted at the source; snapshots kept)", result.gone))?;
    output::line(&format!("  not backed up {:>8}   (found, left alone by design; see below)", result.not_backed_up))?;
    if let Some(refused) = result.refused {
        output::line(&format!("  refused       {:>8}   (feed rows refused: a hostile name or path)", refused))?;
    }
    output::line(&format!("  bytes read    {:>8}", human_bytes(result.bytes_read)))?;
    output::line(&format!("  bytes stored  {:>8}", human_bytes(result.bytes_stored)))?;
    output::line(&format!("  duration      {:>7.1}s", result.duration_seconds))?;
    let gone: Vec<String> = result.gone_repos.iter().map(|name| format!("gone: {name}")).collect();
    list(&gone, "gone")?;
    let failed: Vec<String> = result.failed_repos.iter().map(|f| format!("failed: {}", f.repo)).collect();
    list(&failed, "failed")?;
    let refused: Vec<String> = result
        .refused_repos
        .iter()
        .flatten()
        .map(|n| format!("refused: {} ({})", n.repo.as_deref().unwrap_or(&n.path), n.why))
        .collect();
    list(&refused, "refused")?;
    let left: Vec<String> = result
        .not_backed_up_repos
        .iter()
        .map(|n| format!("not backed up: {} ({})", n.repo.as_deref().unwrap_or(&n.path), n.why))
        .collect();
    list(&left, "not backed up")
}

fn list(lines: &[String], label: &str) -> Result<()> {
    for line in lines.iter().take(LISTED) {
        output::line(&format!("  {line}"))?;
    }
    if lines.len() > LISTED {
        output::line(&format!("  {label}: ... and {} more (see run --json)", lines.len() - LISTED))?;
    }
    Ok(())
}
