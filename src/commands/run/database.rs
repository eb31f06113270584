//! `run --database-url`: a night shared through PostgreSQL (see `db::queue`).
//!
//! No disk scan: the feed says what changed. This process joins the night, refreshes the
//! queue from the feed, then its job threads claim repositories one at a time and back them
//! up (an unchanged fingerprint is done at once). A thread with nothing to claim waits while
//! other claims are in flight anywhere, taking over any whose lease expires; when none are,
//! the night's summary (all workers) is read from the database and printed.
//!
//! When the database stays down longer than `database_retry`, nothing new is claimed, the
//! backups in flight finish, and the run ends with exit 1 naming the database.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::Utc;

use super::{Context, Outcome, RETRY_DELAYS, RepoFailure, RunArgs, RunResult, print_result};
use crate::{
    config::Config,
    db::{
        DatabaseDown, Db,
        feed::{FeedSource, FeedSpec},
        queue::{self, Claim, ClaimRules, Finished, Heartbeat, NightSummary, Worker},
    },
    error::usage,
    output,
    scheduler::{self, ExecOptions, JobResult, WorkSource},
    source::Candidate,
    store::{RunRecord, runs::NotBackedUp},
};

const DEFAULT_MARGIN: Duration = Duration::from_secs(600);
const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The database settings of `run` (config keys; `jobs_per_storage` also a flag).
struct Settings {
    margin: Duration,
    rules: ClaimRules,
}

impl Settings {
    fn new(config: &Config, args: &RunArgs) -> Result<Settings> {
        let lease = Config::duration("claim_lease", config.claim_lease.as_deref(), DEFAULT_LEASE)?;
        if lease < Duration::from_secs(1) {
            return Err(usage("config key claim_lease: must be at least 1s"));
        }
        let jobs_per_storage = args.jobs_per_storage.or(config.jobs_per_storage);
        if jobs_per_storage == Some(0) {
            return Err(usage(
                "jobs per storage (--jobs-per-storage or config key jobs_per_storage) must be at least 1",
            ));
        }
        Ok(Settings {
            margin: Config::duration("feed_margin", config.feed_margin.as_deref(), DEFAULT_MARGIN)?,
            rules: ClaimRules { lease, jobs_per_storage },
        })
    }
}

pub fn run(ctx: &Context, args: &RunArgs, url: &str) -> Result<Outcome> {
    let started = Instant::now();
    let started_at = Utc::now();
    let settings = Settings::new(&ctx.config, args)?;
    let jobs = super::jobs(ctx, args)?;
    let limiter = super::limiter(ctx, args)?;
    let store = ctx.open_store(&args.store)?;
    let feed = FeedSource::open(&ctx.config, url)?;
    let (db, spec) = (&feed.db, &feed.spec);

    if args.dry_run {
        return dry_run(db, feed.feed_db.as_ref(), spec, settings.margin);
    }
    let worker = queue::join_night(db, settings.rules.lease)?;
    let heartbeat = Heartbeat::start(db, worker, settings.rules.lease);
    let refreshed = queue::refresh(db, feed.feed_db.as_ref(), spec, worker, settings.margin)?;
    tracing::info!(night = worker.night_id, worker = worker.worker_id, feed_rows = refreshed.rows, "queue refreshed");
    for refused in &refreshed.refused {
        output::repo_error(&refused.name, &format!("feed row refused: {}", refused.why()));
    }

    let source = DbWork::new(db, worker, settings.rules);
    let options = ExecOptions { jobs, limiter: limiter.as_ref(), retry_delays: RETRY_DELAYS.to_vec() };
    let results = scheduler::execute(&store, &source, &options, report);
    drop(heartbeat);

    if let Some(down) = source.gave_up.into_inner().unwrap_or_else(|e| e.into_inner()) {
        output::error(&format!("{down}; stopped claiming (in-flight backups finished)"));
        let result = local_result(&results, worker, started, &down);
        print_result(ctx, args, &result)?;
        return Ok(Outcome::PartlyFailed);
    }
    let summary = queue::summary(db, worker.night_id)?;
    if let Err(e) = queue::leave(db, worker, settings.rules.lease) {
        output::notice(&format!("{e:#}"));
    }
    let result = night_result(&summary, worker, started);
    let mut outcome = if summary.failed + summary.refused > 0 { Outcome::PartlyFailed } else { Outcome::Done };
    if let Err(e) = store.write_run_record(&run_record(&result, started_at)) {
        output::error(&format!("store {}: cannot record this run: {e:#}", store.location()));
        outcome = Outcome::PartlyFailed;
    }
    if let Some(path) = args.prometheus.as_ref().or(ctx.config.prometheus.as_ref())
        && let Err(e) = super::super::lag::update_prometheus_database(ctx, &feed, &store, path)
    {
        output::error(&format!("{e:#}"));
        outcome = Outcome::PartlyFailed;
    }
    print_result(ctx, args, &result)?;
    Ok(outcome)
}

/// `run --dry-run --database-url`: what a night would back up now; changes nothing (no
/// night, no claim, the cursor stays).
fn dry_run(db: &Db, feed_db: Option<&Db>, spec: &FeedSpec, margin: Duration) -> Result<Outcome> {
    let preview = queue::preview(db, feed_db, spec, margin)?;
    for name in &preview.would_back_up {
        output::line(&format!("would back up {name}"))?;
    }
    for refused in &preview.refused {
        output::line(&format!("would refuse {}: {}", refused.name, refused.why()))?;
    }
    output::line(&format!(
        "dry run: {} would be backed up (or found unchanged), {} feed rows refused",
        preview.would_back_up.len(),
        preview.refused.len()
    ))?;
    Ok(Outcome::Done)
}

/// What a job thread says about each repository as it ends.
fn report(result: &JobResult) {
    match &result.outcome {
        scheduler::Outcome::BackedUp(report) => super::log_backed_up(result, report),
        scheduler::Outcome::Unchanged(_) => tracing::info!(repo = result.name, result = "unchanged", "unchanged"),
        scheduler::Outcome::NotBackedUp(why) => output::repo_notice(&result.name, &format!("not backed up: {why}")),
        scheduler::Outcome::Failed(error) => output::repo_error(&result.name, error),
    }
}

/// The database's queue as the job threads' work source.
struct DbWork<'a> {
    db: &'a Db,
    worker: Worker,
    rules: ClaimRules,
    /// What this worker holds, by name.
    claims: Mutex<HashMap<String, Claim>>,
    /// Set when the database stayed down past `database_retry`: nothing more is claimed.
    gave_up: Mutex<Option<String>>,
    /// How often a thread with nothing to claim looks again.
    poll: Duration,
}

impl<'a> DbWork<'a> {
    fn new(db: &'a Db, worker: Worker, rules: ClaimRules) -> DbWork<'a> {
        // Waiting happens only at the night's tail, for other workers' last claims: a short
        // poll (one count query) ends this worker soon after theirs.
        let poll = (rules.lease / 4).min(Duration::from_millis(100));
        DbWork { db, worker, rules, claims: Mutex::new(HashMap::new()), gave_up: Mutex::new(None), poll }
    }

    fn give_up(&self, err: &anyhow::Error) {
        let message = match err.chain().find_map(|c| c.downcast_ref::<DatabaseDown>()) {
            Some(down) => down.to_string(),
            None => format!("{err:#}"),
        };
        let mut gave_up = self.gave_up.lock().unwrap_or_else(|e| e.into_inner());
        gave_up.get_or_insert(message);
    }

    fn stopped(&self) -> bool {
        self.gave_up.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl WorkSource for DbWork<'_> {
    fn next(&self) -> Option<Candidate> {
        while !self.stopped() {
            // The claims map stays locked across the claim: a row this worker claimed is in
            // it before another thread of this worker asks what the worker holds.
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            let held: Vec<String> = claims.keys().cloned().collect();
            let claimed = queue::claim(self.db, self.worker, self.rules, &held);
            if let Ok(Some(claim)) = &claimed {
                claims.insert(claim.name.clone(), claim.clone());
            }
            drop(claims);
            match claimed {
                Ok(Some(claim)) => {
                    return Some(Candidate { name: claim.name, path: PathBuf::from(&claim.path), vcs: claim.vcs });
                }
                Ok(None) => match queue::in_flight_elsewhere(self.db, self.worker) {
                    Ok(0) => return None,
                    Ok(_) => std::thread::sleep(self.poll),
                    Err(e) => self.give_up(&e),
                },
                Err(e) => self.give_up(&e),
            }
        }
        None
    }

    fn unplanned(&self) -> bool {
        true
    }

    fn finished(&self, result: &JobResult) {
        let Some(claim) = self.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&result.name) else {
            return;
        };
        let finished = match &result.outcome {
            scheduler::Outcome::BackedUp(report) => Finished::BackedUp {
                snapshot_id: report.snapshot_id.clone(),
                snapshot_created_at: result.started_at,
                bytes_read: report.bytes_read,
                bytes_stored: report.bytes_stored,
            },
            // A worker that claimed it before was killed after writing the snapshot and before
            // recording it: the snapshot is tonight's backup of it, and the night counts it so.
            scheduler::Outcome::Unchanged(Some((id, created))) if claim.attempt > 1 && *created > claim.changed_at => {
                Finished::BackedUp {
                    snapshot_id: id.clone(),
                    snapshot_created_at: *created,
                    bytes_read: 0,
                    bytes_stored: 0,
                }
            }
            scheduler::Outcome::Unchanged(latest) => Finished::Unchanged { latest: latest.clone() },
            scheduler::Outcome::NotBackedUp(why) => Finished::NotBackedUp(why.clone()),
            scheduler::Outcome::Failed(error) => Finished::Failed(error.clone()),
        };
        match queue::finish(self.db, self.worker, &claim, &finished) {
            Ok(true) => {}
            Ok(false) => output::repo_notice(
                &claim.name,
                "its claim expired while it was backed up and another worker holds it now; its result is that worker's",
            ),
            Err(e) => {
                output::repo_error(&claim.name, &format!("cannot record its result: {e:#}"));
                if e.chain().any(|c| c.is::<DatabaseDown>()) {
                    self.give_up(&e);
                }
            }
        }
    }
}

fn names_of(summary: &NightSummary, outcome: &str) -> Vec<(String, String)> {
    summary.problems.iter().filter(|(_, o, _)| o == outcome).map(|(n, _, why)| (n.clone(), why.clone())).collect()
}

/// The night's summary, all workers, as `run --json` prints it.
fn night_result(summary: &NightSummary, worker: Worker, started: Instant) -> RunResult {
    let left = |outcome| {
        names_of(summary, outcome)
            .into_iter()
            .map(|(repo, why)| NotBackedUp { path: String::new(), repo: Some(repo), why })
            .collect::<Vec<_>>()
    };
    RunResult {
        finished_at: Utc::now(),
        examined: summary.examined(),
        changed: summary.backed_up + summary.failed,
        backed_up: summary.backed_up,
        unchanged: summary.unchanged,
        failed: summary.failed,
        gone: 0,
        not_backed_up: summary.not_backed_up,
        bytes_read: summary.bytes_read,
        bytes_stored: summary.bytes_stored,
        duration_seconds: started.elapsed().as_secs_f64(),
        failed_repos: names_of(summary, "failed")
            .into_iter()
            .map(|(repo, error)| RepoFailure { repo, error })
            .collect(),
        gone_repos: Vec::new(),
        not_backed_up_repos: left("not_backed_up"),
        skipped: None,
        held_by: None,
        night_id: Some(worker.night_id),
        worker_id: Some(worker.worker_id),
        refused: Some(summary.refused),
        refused_repos: Some(left("refused")),
    }
}

/// When the database is gone: what this worker itself did (the night's totals are out of
/// reach), with the database named among the failures.
fn local_result(results: &[JobResult], worker: Worker, started: Instant, down: &str) -> RunResult {
    let mut summary = NightSummary::default();
    for result in results {
        match &result.outcome {
            scheduler::Outcome::BackedUp(report) => {
                summary.backed_up += 1;
                summary.bytes_read += report.bytes_read;
                summary.bytes_stored += report.bytes_stored;
            }
            scheduler::Outcome::Unchanged(_) => summary.unchanged += 1,
            scheduler::Outcome::NotBackedUp(why) => {
                summary.not_backed_up += 1;
                summary.problems.push((result.name.clone(), "not_backed_up".into(), why.clone()));
            }
            scheduler::Outcome::Failed(error) => {
                summary.failed += 1;
                summary.problems.push((result.name.clone(), "failed".into(), error.clone()));
            }
        }
    }
    let mut result = night_result(&summary, worker, started);
    result.failed_repos.push(RepoFailure { repo: "(database)".into(), error: down.to_owned() });
    result
}

fn run_record(result: &RunResult, started_at: chrono::DateTime<Utc>) -> RunRecord {
    RunRecord {
        host: crate::backup::hostname(),
        started_at,
        finished_at: result.finished_at,
        examined: result.examined,
        changed: result.changed,
        backed_up: result.backed_up,
        unchanged: result.unchanged,
        failed: result.failed,
        gone: 0,
        bytes_read: result.bytes_read,
        bytes_stored: result.bytes_stored,
        failed_repos: result.failed_repos.iter().map(|f| f.repo.clone()).collect(),
        gone_repos: Vec::new(),
        not_backed_up: result.not_backed_up,
        not_backed_up_repos: result.not_backed_up_repos.clone(),
        scan_root: None,
        scan_root_was_mount_point: None,
    }
}
