//! `repovault restore`: rebuild a repository as it was at a snapshot.
//!
//! The repository is built in a hidden directory inside DEST and moved into place entry by
//! entry with HEAD last: until HEAD is there, git does not take DEST for a repository, so
//! an interrupted restore never looks finished.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;

use super::{Context, Outcome, StoreArg};
use crate::{
    error::usage,
    store::{Store, StoredSnapshot},
};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The repository's name in the store.
    pub name: String,
    /// Where to rebuild it (created if missing; must be empty unless --force).
    pub dest: PathBuf,
    /// A snapshot id (a unique prefix is enough) or an RFC 3339 time (the latest snapshot at
    /// or before it). Default: the latest snapshot.
    #[arg(long, value_name = "SNAPSHOT|TIME")]
    pub at: Option<String>,
    /// Replace whatever DEST holds.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

const TEMP_PREFIX: &str = ".repovault-restore-";

pub fn run(ctx: &Context, args: &RestoreArgs) -> Result<Outcome> {
    crate::name::validate(&args.name)?;
    let store = ctx.open_store(&args.store)?;
    let started = std::time::Instant::now();
    let (snapshots, damaged) = store.snapshots_and_damage(Some(&args.name))?;
    if snapshots.is_empty() && damaged.is_empty() {
        return Err(usage(format!("repository {}: no snapshots in store {}", args.name, store.location())));
    }
    let newest = store.snapshot_entries(Some(&args.name))?.pop();
    if args.at.is_none()
        && let Some(newest) = newest
        && let Some(newest_damaged) = damaged.iter().find(|d| d.entry.id == newest.id)
    {
        // Restoring an older state than asked for without saying so would be worse than failing.
        bail!(
            "repository {}: its latest snapshot {} is damaged ({:#}); pick an older one with --at (see `repovault snapshots`)",
            args.name,
            newest_damaged.entry.id,
            newest_damaged.error
        );
    }
    let chosen = select(&snapshots, args.at.as_deref(), &args.name)?;
    prepare_dest(&args.dest, args.force)?;
    let chain = store.chain(&args.name, &chosen.id)?;
    let progress = crate::output::progress_bar(0, "{spinner} restoring {msg}  {elapsed}");
    progress.set_message(args.name.clone());
    let restored = restore_into(&store, &chain, &args.dest);
    progress.finish_and_clear();
    restored.with_context(|| {
        format!("repository {}: restoring snapshot {} into {}", args.name, chosen.id, args.dest.display())
    })?;
    let created_at = chosen.snapshot.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if args.json {
        crate::output::json(&serde_json::json!({
            "repo": args.name,
            "snapshot": chosen.id,
            "created_at": created_at,
            "dest": crate::output::path(&args.dest),
            "refs": chosen.snapshot.refs.len(),
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        crate::output::notice(&format!(
            "restored {} at snapshot {} ({created_at}) into {}",
            args.name,
            crate::snapshot::Snapshot::short_id(&chosen.id),
            crate::output::path(&args.dest)
        ));
    }
    Ok(Outcome::Done)
}

/// Picks the snapshot `--at` names among a repository's snapshots (oldest first).
pub fn select<'a>(snapshots: &'a [StoredSnapshot], at: Option<&str>, name: &str) -> Result<&'a StoredSnapshot> {
    let Some(at) = at else {
        return snapshots.last().ok_or_else(|| usage(format!("repository {name}: no readable snapshot")));
    };
    if let Some(time) = parse_time(at)? {
        return snapshots
            .iter()
            .rev()
            .find(|s| time.includes(s.snapshot.created_at))
            .ok_or_else(|| usage(format!("repository {name}: no snapshot at or before {at}")));
    }
    let at_lower = at.to_ascii_lowercase();
    if at_lower.is_empty() || !at_lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(usage(format!(
            "--at {at}: neither a snapshot id nor a time (RFC 3339 with a zone, as `snapshots` shows: 2026-11-20T03:00:00Z)"
        )));
    }
    let matches: Vec<_> = snapshots.iter().filter(|s| s.id.starts_with(&at_lower)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(usage(format!("repository {name}: no snapshot id starts with {at}"))),
        _ => {
            let candidates: Vec<String> = matches
                .iter()
                .map(|s| {
                    format!("{} ({})", s.id, s.snapshot.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                })
                .collect();
            Err(usage(format!(
                "repository {name}: snapshot prefix {at} is ambiguous; it matches {}",
                candidates.join(", ")
            )))
        }
    }
}

/// A point in time given to `--at`, to the precision it was written with: a time written to
/// the second (as `snapshots` shows it) includes every snapshot taken during that second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtTime {
    time: DateTime<Utc>,
    /// Digits of the fraction of a second given (0 to 9).
    digits: u32,
}

impl AtTime {
    /// Whether a snapshot made at `created_at` is at or before this time.
    fn includes(&self, created_at: DateTime<Utc>) -> bool {
        let unit = 10i64.pow(9 - self.digits);
        let nanos = i64::from(created_at.timestamp_subsec_nanos());
        let truncated = created_at - chrono::Duration::nanoseconds(nanos % unit);
        truncated <= self.time
    }
}

/// Parses `--at` as a time: RFC 3339 (`2026-11-20T03:00:00Z`, `...+01:00`), also with a space
/// for the `T` and `UTC` for `Z`. `None` when it does not look like a time at all (then it is
/// a snapshot id); a time without a zone is refused rather than guessed.
pub fn parse_time(at: &str) -> Result<Option<AtTime>> {
    let looks_like_time = at.len() >= 10 && at.as_bytes()[4] == b'-' && at.as_bytes()[7] == b'-';
    if !looks_like_time {
        return Ok(None);
    }
    let mut text = at.trim().to_owned();
    if let Some(date_end) = text.get(10..11)
        && (date_end == " " || date_end == "t")
    {
        text.replace_range(10..11, "T");
    }
    for utc in [" UTC", "UTC", " Z", "z"] {
        if let Some(stripped) = text.strip_suffix(utc) {
            text = format!("{stripped}Z");
        }
    }
    let time = DateTime::parse_from_rfc3339(&text).map_err(|e| {
        usage(format!("--at {at}: not a time repovault understands ({e}); write it like 2026-11-20T03:00:00Z"))
    })?;
    let clock = &text[11..];
    let digits = match clock.find('.') {
        Some(dot) => clock[dot + 1..].bytes().take_while(u8::is_ascii_digit).count().min(9) as u32,
        None => 0,
    };
    Ok(Some(AtTime { time: time.into(), digits }))
}

fn prepare_dest(dest: &Path, force: bool) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if !meta.is_dir() => Err(usage(format!("{} exists and is not a directory", dest.display()))),
        Ok(_) => {
            let non_empty =
                fs::read_dir(dest)?.flatten().any(|e| !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX));
            if non_empty && !force {
                return Err(usage(format!(
                    "{} is not empty; refusing to restore into it (use --force to replace it)",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(_) => fs::create_dir_all(dest).map_err(|e| usage(format!("cannot create {}: {e}", dest.display()))),
    }
}

fn restore_into(store: &Store, chain: &[StoredSnapshot], dest: &Path) -> Result<()> {
    // Leftovers of an interrupted restore are ours to remove.
    for entry in fs::read_dir(dest)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing leftover {}", entry.path().display()))?;
        }
    }
    let build = dest.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    let result = (|| {
        let latest = chain.last().context("an empty chain")?;
        latest.snapshot.vcs.system().restore(store, chain, &build)?;
        // Only now that the new repository is complete is the old content removed (--force).
        for entry in fs::read_dir(dest)?.flatten() {
            if entry.path() == build {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
                .with_context(|| format!("removing {}", path.display()))?;
        }
        let mut entries: Vec<_> = fs::read_dir(&build)?.flatten().map(|e| e.file_name()).collect();
        entries.sort_by_key(|name| name == "HEAD");
        for name in entries {
            fs::rename(build.join(&name), dest.join(&name))
                .with_context(|| format!("moving {} into {}", name.to_string_lossy(), dest.display()))?;
        }
        crate::store::local::sync_dir(dest)?;
        fs::remove_dir(&build)?;
        if crate::vcs::detect(dest).is_none() {
            bail!("the restored repository is not a repository");
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&build);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> AtTime {
        parse_time(text).unwrap().unwrap_or_else(|| panic!("{text} is a time"))
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().into()
    }

    #[test]
    fn a_time_copied_from_the_table_includes_its_whole_second() {
        let made = utc("2026-11-20T03:00:00.700Z");
        assert!(at("2026-11-20T03:00:00Z").includes(made));
        assert!(at("2026-11-20 03:00:00 UTC").includes(made));
        assert!(at("2026-11-20 03:00:00Z").includes(made));
        assert!(at("2026-11-20T04:00:00+01:00").includes(made));
        assert!(!at("2026-11-20T02:59:59Z").includes(made));
        // A fraction given is honoured to its digits.
        assert!(!at("2026-11-20T03:00:00.5Z").includes(made));
        assert!(at("2026-11-20T03:00:00.7Z").includes(made));
    }

    #[test]
    fn times_without_a_zone_are_refused_and_ids_are_not_times() {
        assert!(parse_time("2026-11-20T03:00:00").is_err());
        assert!(parse_time("2026-11-20").is_err());
        assert!(parse_time("abc123").unwrap().is_none());
        assert!(parse_time("0123456789abcdef").unwrap().is_none());
    }
}
