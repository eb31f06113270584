//! `repovault run`: the nightly job. Finds the repositories that changed since their latest
//! snapshot and backs each up; one repository's failure never stops the others.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::Utc;
use clap::Args;

use super::{Context, FeedArgs, Outcome, StoreArg};
use crate::{
    error::usage,
    scheduler::{self, ExecOptions, Plan},
    source::Candidate,
    store::{RunRecord, lock::LockAttempt},
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
}

/// Delays before the retries of a repository that failed with a transient I/O error.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

pub fn run(ctx: &Context, args: &RunArgs) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = Utc::now();
    let jobs =
        args.jobs.or(ctx.config.jobs).unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if jobs == 0 {
        return Err(usage("--jobs must be at least 1"));
    }
    let limiter = args
        .rate_limit
        .clone()
        .or_else(|| ctx.config.rate_limit.clone())
        .map(|rate| parse_rate(&rate).map_err(|e| usage(format!("--rate-limit: {e}"))))
        .transpose()?
        .map(RateLimiter::new);
    let store = ctx.open_store(&args.store)?;
    let found = args.feed.discover(&ctx.config)?;

    let _lock = if args.dry_run {
        None
    } else {
        match store.lock_run()? {
            LockAttempt::Acquired(lock) => Some(lock),
            LockAttempt::HeldBy(holder) => {
                eprintln!("another run holds store {} ({holder}); nothing to do", store.location());
                return Ok(Outcome::Done);
            }
        }
    };

    let gone = scheduler::gone(&store, &found.repositories)?;
    let planned = scheduler::plan(&store, found.repositories)?;
    let mut work: Vec<Candidate> = Vec::new();
    let (mut unchanged, mut unsupported) = (0u64, Vec::new());
    for p in planned {
        match p.plan {
            Plan::Backup { .. } => work.push(p.candidate),
            Plan::Unchanged => unchanged += 1,
            Plan::Unsupported(why) => unsupported.push((p.candidate.name, why)),
        }
    }
    let examined = (work.len() + unchanged as usize + unsupported.len() + found.rejected.len()) as u64;

    if args.dry_run {
        for candidate in &work {
            println!("would back up {}", candidate.name);
        }
        println!(
            "dry run: {examined} examined, {} would be backed up, {unchanged} unchanged, {} gone, {} not supported, {} refused",
            work.len(),
            gone.len(),
            unsupported.len(),
            found.rejected.len()
        );
        return Ok(Outcome::Done);
    }

    let mut failures: Vec<(String, String)> = Vec::new();
    for rejected in &found.rejected {
        let line = format!("{}: {}", rejected.path.display(), rejected.reason);
        report_failure(ctx, &rejected.path.display().to_string(), &line);
        failures.push((rejected.path.display().to_string(), rejected.reason.clone()));
    }

    let progress = progress_bar(ctx, work.len() as u64);
    let changed = work.len() as u64;
    let (mut backed_up, mut bytes_read, mut bytes_stored) = (0u64, 0u64, 0u64);
    let options = ExecOptions { jobs, limiter: limiter.as_ref(), retry_delays: RETRY_DELAYS.to_vec() };
    scheduler::execute(&store, work, &options, |result| {
        progress.inc(1);
        match &result.outcome {
            scheduler::Outcome::BackedUp(report) => {
                backed_up += 1;
                bytes_read += report.bytes_read;
                bytes_stored += report.bytes_stored;
                let rate = bytes_read as f64 / started.elapsed().as_secs_f64().max(0.001);
                progress.set_message(format!("{} read, {}/s", human_bytes(bytes_read), human_bytes(rate as u64)));
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
            scheduler::Outcome::Failed(error) => {
                progress.suspend(|| report_failure(ctx, &result.name, error));
                failures.push((result.name.clone(), error.clone()));
            }
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
        failed_repos: failures.iter().map(|(name, _)| name.clone()).collect(),
    };
    if let Err(e) = store.write_run_record(&record) {
        eprintln!("error: store {}: cannot record this run: {e:#}", store.location());
    }
    print_summary(&record, &gone, &unsupported, started.elapsed());
    Ok(if failures.is_empty() { Outcome::Done } else { Outcome::PartlyFailed })
}

fn report_failure(ctx: &Context, repo: &str, error: &str) {
    if ctx.log_json {
        tracing::error!(repo, result = "failed", error, "repository backup failed");
    } else {
        eprintln!("error: repository {repo}: {error}");
    }
}

fn progress_bar(ctx: &Context, total: u64) -> indicatif::ProgressBar {
    if ctx.quiet || ctx.log_json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} repositories  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
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

fn print_summary(record: &RunRecord, gone: &[String], unsupported: &[(String, String)], elapsed: Duration) {
    println!("repovault run finished at {}", record.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    println!("  examined      {:>8}", record.examined);
    println!("  changed       {:>8}", record.changed);
    println!("  backed up     {:>8}", record.backed_up);
    println!("  unchanged     {:>8}", record.unchanged);
    println!("  failed        {:>8}", record.failed);
    println!("  gone          {:>8}   (deleted at the source; snapshots kept)", gone.len());
    if !unsupported.is_empty() {
        println!("  not supported {:>8}   ({})", unsupported.len(), unsupported[0].1);
    }
    println!("  bytes read    {:>8}", human_bytes(record.bytes_read));
    println!("  bytes stored  {:>8}", human_bytes(record.bytes_stored));
    println!("  duration      {:>7.1}s", elapsed.as_secs_f64());
    for name in gone.iter().take(10) {
        println!("  gone: {name}");
    }
    if gone.len() > 10 {
        println!("  gone: ... and {} more", gone.len() - 10);
    }
    for name in record.failed_repos.iter().take(10) {
        println!("  failed: {name}");
    }
    if record.failed_repos.len() > 10 {
        println!("  failed: ... and {} more (see the errors above)", record.failed_repos.len() - 10);
    }
}
