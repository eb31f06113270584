//! `repovault lag`: freshness. For each repository: when it last changed at the source,
//! when the change its latest snapshot holds happened, and the lag between them.

use std::{io::Write, path::PathBuf, time::SystemTime};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::{Context, FeedArgs, Outcome, StoreArg};
use crate::{
    error::usage,
    scheduler,
    snapshot::Vcs,
    source::Candidate,
    store::{RunRecord, Store},
    throttle::parse_duration,
    vcs::git,
};

#[derive(Debug, Args)]
pub struct LagArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Exit 4 when any repository's lag is above this (26h, 90m, 2d).
    #[arg(long, value_name = "DURATION")]
    pub max_lag: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the figures as a node_exporter textfile (written atomically).
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
}

#[derive(Debug, Serialize)]
pub struct LagReport {
    pub repos: Vec<RepoLag>,
    pub max_lag_seconds: i64,
    pub p50_lag_seconds: i64,
    pub p99_lag_seconds: i64,
    pub stale: u64,
    pub gone: u64,
}

pub fn run(ctx: &Context, args: &LagArgs) -> Result<Outcome> {
    let max_lag =
        args.max_lag.as_deref().map(|d| parse_duration(d).map_err(|e| usage(format!("--max-lag: {e}")))).transpose()?;
    let store = ctx.open_store(&args.store)?;
    let found = args.feed.discover(&ctx.config)?;
    let report = measure(&store, &found.repositories, max_lag.map(|d| d.as_secs() as i64), Utc::now())?;

    if let Some(path) = &args.prometheus {
        let last_run = store.last_run_record()?;
        write_prometheus(path, &report, last_run.as_ref())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.stale > 0 { Outcome::Stale } else { Outcome::Done })
}

/// When a repository's current state last changed at the source.
fn source_changed_at(candidate: &Candidate) -> DateTime<Utc> {
    match candidate.vcs {
        Vcs::Git => git::source::refs_stat(&git::source::git_dir_of(&candidate.path)).changed_at,
        Vcs::Hg => ["", "bookmarks", "store/00changelog.i", "store/phaseroots"]
            .iter()
            .filter_map(|f| std::fs::metadata(candidate.path.join(".hg").join(f)).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .into(),
    }
}

pub fn measure(store: &Store, candidates: &[Candidate], max_lag: Option<i64>, now: DateTime<Utc>) -> Result<LagReport> {
    let mut repos = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let changed_at = source_changed_at(candidate);
        let latest = store.latest_snapshot(&candidate.name)?;
        let (backed_up_change_at, lag) = match latest {
            Some(latest) => {
                let held = latest.snapshot.source_changed_at;
                let up_to_date = candidate.vcs == Vcs::Git
                    && latest.snapshot.source_fingerprint.as_deref()
                        == Some(git::source::refs_stat(&git::source::git_dir_of(&candidate.path)).fingerprint.as_str());
                let lag = if up_to_date { 0 } else { (changed_at - held).num_seconds().max(0) };
                (Some(held), lag)
            }
            // Never backed up: the lag counts from the change that is not in the store.
            None => (None, (now - changed_at).num_seconds().max(0)),
        };
        repos.push(RepoLag {
            repo: candidate.name.clone(),
            vcs: candidate.vcs,
            changed_at,
            backed_up_change_at,
            lag_seconds: lag,
            gone: false,
        });
    }
    let mut lags: Vec<i64> = repos.iter().map(|r| r.lag_seconds).collect();
    lags.sort_unstable();
    for name in scheduler::gone(store, candidates)? {
        if let Some(latest) = store.latest_snapshot(&name)? {
            let held = latest.snapshot.source_changed_at;
            repos.push(RepoLag {
                repo: name,
                vcs: latest.snapshot.vcs,
                changed_at: held,
                backed_up_change_at: Some(held),
                lag_seconds: 0,
                gone: true,
            });
        }
    }
    repos.sort_by(|a, b| b.lag_seconds.cmp(&a.lag_seconds).then_with(|| a.repo.cmp(&b.repo)));
    let stale = max_lag.map_or(0, |max| lags.iter().filter(|&&lag| lag > max).count() as u64);
    Ok(LagReport {
        max_lag_seconds: lags.last().copied().unwrap_or(0),
        p50_lag_seconds: percentile(&lags, 50),
        p99_lag_seconds: percentile(&lags, 99),
        stale,
        gone: repos.iter().filter(|r| r.gone).count() as u64,
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

fn print_table(report: &LagReport) {
    println!("{:>10}  {:<20}  {:<20}  REPO", "LAG", "CHANGED", "BACKED UP CHANGE");
    let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for r in &report.repos {
        println!(
            "{:>10}  {:<20}  {:<20}  {}{}",
            human_seconds(r.lag_seconds),
            time(&r.changed_at),
            r.backed_up_change_at.as_ref().map_or("never".to_owned(), time),
            r.repo,
            if r.gone { "  (gone at the source)" } else { "" }
        );
    }
    println!(
        "{} repositories: max lag {}, p50 {}, p99 {}, {} stale, {} gone",
        report.repos.len(),
        human_seconds(report.max_lag_seconds),
        human_seconds(report.p50_lag_seconds),
        human_seconds(report.p99_lag_seconds),
        report.stale,
        report.gone
    );
}

fn human_seconds(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{:.1}h", s as f64 / 3600.0),
        s => format!("{:.1}d", s as f64 / 86400.0),
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
    let per_repo: Vec<(String, i64)> = report
        .repos
        .iter()
        .filter(|r| !r.gone)
        .map(|r| (format!("{{repo=\"{}\"}}", escape_label(&r.repo)), r.lag_seconds))
        .collect();
    metric(
        "repovault_lag_seconds",
        "Seconds between a repository's last change at the source and the change its latest snapshot holds.",
        &per_repo,
    );
    metric(
        "repovault_stale_repositories",
        "Repositories whose lag is above --max-lag.",
        &[(String::new(), report.stale as i64)],
    );
    metric("repovault_max_lag_seconds", "Largest lag of any repository.", &[(String::new(), report.max_lag_seconds)]);
    metric("repovault_p50_lag_seconds", "Median lag.", &[(String::new(), report.p50_lag_seconds)]);
    metric("repovault_p99_lag_seconds", "99th percentile lag.", &[(String::new(), report.p99_lag_seconds)]);
    metric(
        "repovault_gone_repositories",
        "Repositories deleted at the source whose snapshots are kept.",
        &[(String::new(), report.gone as i64)],
    );
    metric(
        "repovault_last_run_timestamp_seconds",
        "When the last run finished (0: no run recorded).",
        &[(String::new(), last_run.map_or(0, |r| r.finished_at.timestamp()))],
    );
    metric(
        "repovault_last_run_failed_repositories",
        "Repositories that failed in the last run.",
        &[(String::new(), last_run.map_or(0, |r| r.failed as i64))],
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
