//! `repovault lag`: freshness. For each repository: when it last changed at the source,
//! when the change its latest snapshot holds happened, and its lag: how long the store has
//! been missing a change the source has.
//!
//! - 0 when the latest snapshot holds the source's current state: the ref fingerprint is
//!   the one it recorded or, when the ref files were rewritten (`git pack-refs`), the refs
//!   and HEAD read now are the ones it recorded;
//! - otherwise the time since that snapshot was taken: the first change it lacks came later,
//!   so this is an upper bound that never reaches back before the snapshot (a quiet
//!   repository pushed once after last night's snapshot lags hours, not months);
//! - never backed up: the time since the source changed.
//!
//! A repository whose latest snapshot cannot be read is measured against its newest
//! readable snapshot (or as never backed up), marked damaged, and makes `lag` exit 1 (4
//! wins when some repository is stale). Repositories found but left alone by design
//! (Mercurial, refused names) are listed apart, outside the percentiles and `stale`.

use std::{io::Write, path::PathBuf};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::{Context, FeedArgs, Outcome, StoreArg};
use crate::{
    db,
    error::usage,
    output,
    scheduler::{self, Gone, Latest},
    snapshot::Vcs,
    source::{
        Candidate, Rejected, RejectionKind,
        root_guard::{self, GoneCount, ScanRoot},
    },
    store::{RunRecord, Store, runs::NotBackedUp},
    throttle::parse_duration,
};

#[derive(Debug, Args)]
pub struct LagArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Exit 4 when any repository's lag is above this (26h, 90m, 2d; config key `max_lag`).
    #[arg(long, value_name = "DURATION")]
    pub max_lag: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the figures as a node_exporter textfile (written atomically; config key
    /// `prometheus`).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct RepoLag {
    pub repo: String,
    pub vcs: Vcs,
    pub changed_at: DateTime<Utc>,
    pub backed_up_change_at: Option<DateTime<Utc>>,
    pub lag_seconds: i64,
    /// Deleted at the source; its snapshots are kept. Not counted in the percentiles.
    pub gone: bool,
    /// Its latest snapshot cannot be read: the lag counts from the newest snapshot that
    /// does (or from its change, when none does), and `lag` exits 1.
    pub damaged: bool,
    /// Why the latest snapshot cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LagReport {
    pub repos: Vec<RepoLag>,
    pub max_lag_seconds: i64,
    pub p50_lag_seconds: i64,
    pub p99_lag_seconds: i64,
    pub stale: u64,
    pub gone: u64,
    pub damaged: u64,
    /// Found but not backed up by design (Mercurial, refused names): not in `repos`, the
    /// percentiles or `stale`.
    pub not_backed_up: u64,
    pub not_backed_up_repos: Vec<NotBackedUp>,
    /// Set when the scan looks like a missing or unmounted root (`lag` then exits 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_root_problem: Option<String>,
}

pub fn run(ctx: &Context, args: &LagArgs) -> Result<Outcome> {
    let max_lag = max_lag_seconds(args.max_lag.as_deref(), &ctx.config)?;
    let prometheus = args.prometheus.as_ref().or(ctx.config.prometheus.as_ref());
    if let Some(url) = args.feed.database_url(&ctx.config) {
        let report = measure_database(&db::feed::FeedSource::open(&ctx.config, url)?, max_lag)?;
        // Only the last run's record is read from the store, for the metrics file.
        if let Some(path) = prometheus {
            let last_run = ctx.open_store(&args.store).ok().and_then(|store| last_run(&store));
            write_prometheus(path, &report, last_run.as_ref())?;
        }
        return print_report(args, &report);
    }
    let store = ctx.open_store(&args.store)?;
    let found = args.feed.discover(&ctx.config)?;
    let scan_root = args.feed.scan_root(&ctx.config).map(|root| ScanRoot::observe(root));
    let mut report = measure(&store, &found.repositories, &found.rejected, max_lag, Utc::now())?;
    let last_run = last_run(&store);
    let guard = if args.feed.allow_gone {
        Ok(())
    } else {
        let gone_names: Vec<&str> = report.repos.iter().filter(|r| r.gone).map(|r| r.repo.as_str()).collect();
        let count = GoneCount::since(last_run.as_ref(), &gone_names, store.repo_keys()?.len());
        root_guard::check(scan_root.as_ref(), last_run.as_ref(), count)
    };
    if let Err(e) = &guard {
        report.scan_root_problem = Some(format!("{e:#}"));
    }
    // Written even when the scan is refused: the alert on the problem needs the file.
    if let Some(path) = prometheus {
        write_prometheus(path, &report, last_run.as_ref())?;
    }
    guard?;
    for rejected in found.rejected.iter().filter(|r| r.kind == RejectionKind::Unreadable) {
        output::notice(&format!("{}: {}", output::path(&rejected.path), rejected.reason));
    }
    for r in report.repos.iter().filter(|r| r.damaged) {
        let damage = r.damage.as_deref().unwrap_or("");
        output::repo_error(&r.repo, &format!("its latest snapshot cannot be read, so it is not fresh: {damage}"));
    }
    print_report(args, &report)
}

/// Prints the report and says how `lag` ends.
fn print_report(args: &LagArgs, report: &LagReport) -> Result<Outcome> {
    if args.json {
        output::json(report)?;
    } else {
        print_table(report)?;
    }
    Ok(match (report.stale, report.damaged) {
        (1.., _) => Outcome::Stale,
        (0, 1..) => Outcome::PartlyFailed,
        (0, 0) => Outcome::Done,
    })
}

/// Lag of every repository the database's feed knows, from the scheduler's state: one query
/// (see `db::lag`), no store reads. Names the feed gives that are refused, and Mercurial
/// repositories, are listed as not backed up.
fn measure_database(source: &db::feed::FeedSource, max_lag: Option<i64>) -> Result<LagReport> {
    let mut sink = DatabaseLags::default();
    db::lag::measure(&source.db, source.feed_db.as_ref(), &source.spec, &mut sink)?;
    let DatabaseLags { mut repos, not_backed_up } = sink;
    let mut lags: Vec<i64> = repos.iter().map(|r| r.lag_seconds).collect();
    lags.sort_unstable();
    repos.sort_by(|a, b| b.lag_seconds.cmp(&a.lag_seconds).then_with(|| a.repo.cmp(&b.repo)));
    Ok(LagReport {
        max_lag_seconds: lags.last().copied().unwrap_or(0),
        p50_lag_seconds: percentile(&lags, 50),
        p99_lag_seconds: percentile(&lags, 99),
        stale: max_lag.map_or(0, |max| lags.iter().filter(|&&lag| lag > max).count() as u64),
        gone: 0,
        damaged: 0,
        not_backed_up: not_backed_up.len() as u64,
        not_backed_up_repos: not_backed_up,
        scan_root_problem: None,
        repos,
    })
}

/// The feed's rows as `lag` reports them, sorted as they stream in from the database.
#[derive(Default)]
struct DatabaseLags {
    repos: Vec<RepoLag>,
    not_backed_up: Vec<NotBackedUp>,
}

impl db::lag::LagSink for DatabaseLags {
    fn restart(&mut self) {
        self.repos.clear();
        self.not_backed_up.clear();
    }

    fn row(&mut self, row: db::lag::FeedLag) {
        let vcs = match row.vcs.as_str() {
            "git" => Vcs::Git,
            "hg" => Vcs::Hg,
            other => {
                let why = format!("vcs {other:?} is neither git nor hg");
                self.not_backed_up.push(NotBackedUp { repo: Some(row.name), path: String::new(), why });
                return;
            }
        };
        if let Err(e) = crate::name::validate(&row.name) {
            self.not_backed_up.push(NotBackedUp { repo: None, path: String::new(), why: format!("{e:#}") });
            return;
        }
        self.repos.push(RepoLag {
            repo: row.name,
            vcs,
            changed_at: row.changed_at,
            backed_up_change_at: row.backed_up_change_at,
            lag_seconds: row.lag_seconds,
            gone: false,
            damaged: false,
            damage: None,
        });
    }
}

/// `--max-lag` as seconds, else the config's `max_lag`.
pub fn max_lag_seconds(flag: Option<&str>, config: &crate::config::Config) -> Result<Option<i64>> {
    flag.or(config.max_lag.as_deref())
        .map(|d| {
            parse_duration(d)
                .map(|d| d.as_secs() as i64)
                .map_err(|e| usage(format!("max lag (--max-lag or config key max_lag): {e}")))
        })
        .transpose()
}

/// The last run's record, for the Prometheus file and the scan root check; an unreadable
/// one is reported and treated as absent.
fn last_run(store: &Store) -> Option<RunRecord> {
    store.last_run_record().unwrap_or_else(|e| {
        output::notice(&format!("cannot read the last run record: {e:#}"));
        None
    })
}

/// `update_prometheus` for a night driven by the database.
/// `source` is the night's own connections: no second connection for the figures.
pub fn update_prometheus_database(
    ctx: &Context,
    source: &db::feed::FeedSource,
    store: &Store,
    path: &std::path::Path,
) -> Result<()> {
    let max_lag = max_lag_seconds(None, &ctx.config)?;
    let report = measure_database(source, max_lag)?;
    write_prometheus(path, &report, last_run(store).as_ref())
}

/// Measures and writes the Prometheus textfile (what `run --prometheus` does after a run).
pub fn update_prometheus(
    store: &Store,
    candidates: &[Candidate],
    rejected: &[Rejected],
    max_lag: Option<i64>,
    path: &std::path::Path,
) -> Result<()> {
    let report = measure(store, candidates, rejected, max_lag, Utc::now())?;
    write_prometheus(path, &report, last_run(store).as_ref())
}

/// Lag of one repository the source has, per the definition in the module doc.
fn repo_lag(store: &Store, candidate: &Candidate, now: DateTime<Utc>) -> RepoLag {
    let changed_at = candidate.vcs.system().source_stat(&candidate.path).changed_at;
    let since = |t: DateTime<Utc>| (now - t).num_seconds().max(0);
    let (backed_up_change_at, lag_seconds, damage) = match scheduler::latest(store, &candidate.name) {
        Latest::Never => (None, since(changed_at), None),
        Latest::Readable(latest) => {
            let lag = if candidate.vcs.system().holds_current_state(&candidate.path, &latest.snapshot) {
                0
            } else {
                since(latest.snapshot.created_at)
            };
            (Some(latest.snapshot.source_changed_at), lag, None)
        }
        // A damaged latest snapshot never makes a repository look fresh.
        Latest::Damaged { error, newest_readable: Some(older) } => {
            (Some(older.snapshot.source_changed_at), since(older.snapshot.created_at), Some(error))
        }
        Latest::Damaged { error, newest_readable: None } => (None, since(changed_at), Some(error)),
    };
    RepoLag {
        repo: candidate.name.clone(),
        vcs: candidate.vcs,
        changed_at,
        backed_up_change_at,
        lag_seconds,
        gone: false,
        damaged: damage.is_some(),
        damage,
    }
}

fn gone_lag(gone: Gone) -> RepoLag {
    let held = gone.newest.as_ref().map(|s| s.snapshot.source_changed_at);
    RepoLag {
        repo: gone.repo,
        vcs: gone.newest.as_ref().map_or(Vcs::Git, |s| s.snapshot.vcs),
        changed_at: held.unwrap_or(DateTime::UNIX_EPOCH),
        backed_up_change_at: held,
        lag_seconds: 0,
        gone: true,
        damaged: gone.damaged.is_some(),
        damage: gone.damaged,
    }
}

pub fn measure(
    store: &Store,
    candidates: &[Candidate],
    rejected: &[Rejected],
    max_lag: Option<i64>,
    now: DateTime<Utc>,
) -> Result<LagReport> {
    let mut repos = Vec::with_capacity(candidates.len());
    let not_backed_up: Vec<NotBackedUp> = rejected
        .iter()
        .filter(|r| r.kind == RejectionKind::Refused)
        .map(|r| NotBackedUp { repo: None, path: output::path(&r.path), why: r.reason.clone() })
        .collect();
    for candidate in candidates {
        repos.push(repo_lag(store, candidate, now));
    }
    let mut lags: Vec<i64> = repos.iter().map(|r| r.lag_seconds).collect();
    lags.sort_unstable();
    repos.extend(scheduler::gone(store, candidates)?.into_iter().map(gone_lag));
    repos.sort_by(|a, b| b.lag_seconds.cmp(&a.lag_seconds).then_with(|| a.repo.cmp(&b.repo)));
    let stale = max_lag.map_or(0, |max| lags.iter().filter(|&&lag| lag > max).count() as u64);
    Ok(LagReport {
        max_lag_seconds: lags.last().copied().unwrap_or(0),
        p50_lag_seconds: percentile(&lags, 50),
        p99_lag_seconds: percentile(&lags, 99),
        stale,
        gone: repos.iter().filter(|r| r.gone).count() as u64,
        damaged: repos.iter().filter(|r| r.damaged).count() as u64,
        not_backed_up: not_backed_up.len() as u64,
        not_backed_up_repos: not_backed_up,
        scan_root_problem: None,
        repos,
    })
}

/// Nearest-rank percentile of sorted values; 0 for none.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn print_table(report: &LagReport) -> Result<()> {
    output::line(&format!("{:>10}  {:<20}  {:<20}  REPO", "LAG", "CHANGED", "BACKED UP CHANGE"))?;
    let time = super::snapshots::display_time;
    for r in &report.repos {
        let mark = match (r.gone, r.damaged) {
            (true, true) => "  (gone at the source; latest snapshot DAMAGED)",
            (true, false) => "  (gone at the source)",
            (false, true) => "  (latest snapshot DAMAGED)",
            (false, false) => "",
        };
        output::line(&format!(
            "{:>10}  {:<20}  {:<20}  {}{mark}",
            human_seconds(r.lag_seconds),
            time(&r.changed_at),
            r.backed_up_change_at.as_ref().map_or("never".to_owned(), time),
            r.repo,
        ))?;
    }
    for n in &report.not_backed_up_repos {
        output::line(&format!("{:>10}  not backed up: {} ({})", "-", n.repo.as_deref().unwrap_or(&n.path), n.why))?;
    }
    output::line(&format!(
        "{} repositories: max lag {}, p50 {}, p99 {}, {} stale, {} gone, {} damaged, {} not backed up",
        report.repos.len(),
        human_seconds(report.max_lag_seconds),
        human_seconds(report.p50_lag_seconds),
        human_seconds(report.p99_lag_seconds),
        report.stale,
        report.gone,
        report.damaged,
        report.not_backed_up
    ))
}

fn human_seconds(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{:.1}h", s as f64 / 3600.0),
        s => format!("{:.1}d", s as f64 / 86400.0),
    }
}

/// A label value as the text format wants it, holding printable characters only: control
/// characters are first written out as `\x1b`, `\n` ... (a name must not drive the terminal
/// of whoever reads the file), then backslashes and quotes are escaped for Prometheus.
fn escape_label(value: &str) -> String {
    output::escape(value).replace('\\', "\\\\").replace('"', "\\\"")
}

/// Writes the node_exporter textfile: to a temporary file in the same directory, then
/// renamed, so the collector never reads half a file.
fn write_prometheus(path: &std::path::Path, report: &LagReport, last_run: Option<&RunRecord>) -> Result<()> {
    let mut text = String::new();
    let mut metric = |name: &str, help: &str, samples: &[(String, i64)]| {
        text += &format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
        for (labels, value) in samples {
            text += &format!("{name}{labels} {value}\n");
        }
    };
    let label = |repo: &str| format!("{{repo=\"{}\"}}", escape_label(repo));
    let flagged = |pick: &dyn Fn(&RepoLag) -> bool| -> Vec<(String, i64)> {
        report.repos.iter().filter(|r| pick(r)).map(|r| (label(&r.repo), 1)).collect()
    };
    let count = |n: u64| [(String::new(), n as i64)];
    let per_repo: Vec<(String, i64)> =
        report.repos.iter().filter(|r| !r.gone).map(|r| (label(&r.repo), r.lag_seconds)).collect();
    metric(
        "repovault_lag_seconds",
        "Seconds the store has been missing a change the source has (0: the latest snapshot holds the current state).",
        &per_repo,
    );
    metric("repovault_stale_repositories", "Repositories whose lag is above --max-lag.", &count(report.stale));
    metric("repovault_max_lag_seconds", "Largest lag of any repository.", &[(String::new(), report.max_lag_seconds)]);
    metric("repovault_p50_lag_seconds", "Median lag.", &[(String::new(), report.p50_lag_seconds)]);
    metric("repovault_p99_lag_seconds", "99th percentile lag.", &[(String::new(), report.p99_lag_seconds)]);
    metric(
        "repovault_gone",
        "1 for each repository deleted at the source whose snapshots are kept.",
        &flagged(&|r| r.gone),
    );
    metric(
        "repovault_gone_repositories",
        "Repositories deleted at the source whose snapshots are kept.",
        &count(report.gone),
    );
    metric(
        "repovault_damaged",
        "1 for each repository whose latest snapshot cannot be read.",
        &flagged(&|r| r.damaged),
    );
    metric(
        "repovault_damaged_repositories",
        "Repositories whose latest snapshot cannot be read.",
        &count(report.damaged),
    );
    let not_backed_up: Vec<(String, i64)> =
        report.not_backed_up_repos.iter().map(|n| (label(n.repo.as_deref().unwrap_or(&n.path)), 1)).collect();
    metric(
        "repovault_not_backed_up",
        "1 for each repository found but not backed up by design (Mercurial, a refused name).",
        &not_backed_up,
    );
    metric(
        "repovault_not_backed_up_repositories",
        "Repositories found but not backed up by design (Mercurial, a refused name).",
        &count(report.not_backed_up),
    );
    metric(
        "repovault_scan_root_problem",
        "1 when the scan root looks missing or unmounted (most repositories gone at once, or no longer a mount point).",
        &count(u64::from(report.scan_root_problem.is_some())),
    );
    metric(
        "repovault_last_run_timestamp_seconds",
        "When the last run finished (0: no run recorded).",
        &[(String::new(), last_run.map_or(0, |r| r.finished_at.timestamp()))],
    );
    metric(
        "repovault_last_run_failed_repositories",
        "Repositories that failed in the last run.",
        &count(last_run.map_or(0, |r| r.failed)),
    );
    metric(
        "repovault_last_run_not_backed_up_repositories",
        "Repositories found but not backed up in the last run.",
        &count(last_run.map_or(0, |r| r.not_backed_up)),
    );
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".repovault-prom-")
        .tempfile_in(&dir)
        .map_err(|e| usage(format!("--prometheus {}: cannot write in {}: {e}", path.display(), dir.display())))?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    // node_exporter runs as another user: the file must be readable by it.
    use std::os::unix::fs::PermissionsExt;
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    temp.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
