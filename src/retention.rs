//! The retention policy: which snapshots of one repository a `prune` keeps.
//!
//! The semantics are restic's `forget` (doc/060_forget.rst), which operators already know:
//! - `keep_last N`: the N newest snapshots.
//! - `keep_hourly/daily/weekly/monthly/yearly N`: walking from the newest snapshot to the
//!   oldest, the newest snapshot of each of the last N periods *that have snapshots*
//!   (periods without snapshots do not count). When the walk ends with count left, the
//!   oldest snapshot is kept too ("oldest daily"), as restic does, so that a young
//!   repository does not lose its first snapshot to a rule that asked for more history.
//! - `keep_within D`: every snapshot newer than the newest snapshot's time minus D (counted
//!   from the newest snapshot, not from now, so a repository that stopped changing keeps its
//!   history).
//!
//! A snapshot is kept when any rule keeps it (the union), and it fills a period of every
//! rule at once. The newest snapshot is always kept. Periods are calendar periods in **UTC**
//! (hours, days from midnight UTC, ISO weeks from Monday 00:00 UTC, months, years): every
//! host then agrees on the buckets whatever its own time zone, and DST never makes a day of
//! 23 or 25 hours.
//!
//! Everything here is a pure function over `(id, created_at)` pairs; which snapshots are
//! read, what a chain needs and what bytes are freed are the `prune` command's business.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

use crate::error::usage;

/// How many of each kind of snapshot to keep. Zero (or `None`) means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: Option<Duration>,
}

/// Why a snapshot is kept (a snapshot may have several reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The repository's newest snapshot: always kept.
    Latest,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// Kept because a period rule had count left when the walk reached the oldest snapshot.
    Oldest(Period),
    Within,
}

/// A calendar period of the bucket rules (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    const ALL: [Period; 5] = [Period::Hour, Period::Day, Period::Week, Period::Month, Period::Year];

    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    fn reason(self) -> Reason {
        match self {
            Period::Hour => Reason::Hourly,
            Period::Day => Reason::Daily,
            Period::Week => Reason::Weekly,
            Period::Month => Reason::Monthly,
            Period::Year => Reason::Yearly,
        }
    }

    /// The bucket `time` falls in: equal keys mean the same period. Weeks are ISO weeks
    /// (Monday to Sunday, numbered within the ISO year, so 2026-12-31 and 2027-01-01 can
    /// share a week).
    pub fn bucket(self, time: &DateTime<Utc>) -> (i32, u32, u32, u32) {
        match self {
            Period::Hour => (time.year(), time.month(), time.day(), time.hour()),
            Period::Day => (time.year(), time.month(), time.day(), 0),
            Period::Week => (time.iso_week().year(), time.iso_week().week(), 0, 0),
            Period::Month => (time.year(), time.month(), 0, 0),
            Period::Year => (time.year(), 0, 0, 0),
        }
    }
}

impl Reason {
    /// The words shown to people and in JSON (`"last"`, `"daily"`, `"oldest daily"`, ...).
    pub fn label(self) -> String {
        match self {
            Reason::Latest => "latest".into(),
            Reason::Last => "last".into(),
            Reason::Hourly => "hourly".into(),
            Reason::Daily => "daily".into(),
            Reason::Weekly => "weekly".into(),
            Reason::Monthly => "monthly".into(),
            Reason::Yearly => "yearly".into(),
            Reason::Oldest(period) => format!("oldest {}", period.name()),
            Reason::Within => "within".into(),
        }
    }
}

impl Policy {
    fn count(&self, period: Period) -> u32 {
        match period {
            Period::Hour => self.keep_hourly,
            Period::Day => self.keep_daily,
            Period::Week => self.keep_weekly,
            Period::Month => self.keep_monthly,
            Period::Year => self.keep_yearly,
        }
    }

    /// True when no rule is given (or every rule is zero): such a policy would keep only
    /// each repository's latest snapshot, which is almost always a typo, so it is refused.
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && Period::ALL.iter().all(|p| self.count(*p) == 0)
            && self.keep_within.is_none_or(|d| d <= Duration::zero())
    }

    /// A usage error (exit 2) for a policy that keeps nothing.
    pub fn check(&self) -> Result<()> {
        if self.keeps_nothing() {
            return Err(usage(
                "the retention policy keeps nothing: give at least one of --keep-last, --keep-hourly, --keep-daily, \
                 --keep-weekly, --keep-monthly, --keep-yearly (above 0) or --keep-within, or a [prune] table in the \
                 config file",
            ));
        }
        Ok(())
    }
}

/// One snapshot as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
}

/// What the policy decided for one repository, each list newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub keep: Vec<(Candidate, Vec<Reason>)>,
    pub forget: Vec<Candidate>,
}

/// Applies `policy` to one repository's snapshots (any order). Ties in time are broken by
/// id, so the result does not depend on the input order.
pub fn apply(policy: &Policy, snapshots: &[Candidate]) -> Decision {
    let mut newest_first: Vec<&Candidate> = snapshots.iter().collect();
    newest_first.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let mut reasons: BTreeMap<usize, Vec<Reason>> = BTreeMap::new();
    let mut keep = |index: usize, reason: Reason| reasons.entry(index).or_default().push(reason);
    if newest_first.is_empty() {
        return Decision::default();
    }
    keep(0, Reason::Latest);
    for index in 0..newest_first.len().min(policy.keep_last as usize) {
        keep(index, Reason::Last);
    }
    for period in Period::ALL {
        for (index, reason) in bucket_picks(&newest_first, period, policy.count(period)) {
            keep(index, reason);
        }
    }
    if let Some(within) = policy.keep_within.filter(|d| *d > Duration::zero()) {
        let cutoff = newest_first[0].created_at - within;
        for (index, snapshot) in newest_first.iter().enumerate() {
            if snapshot.created_at > cutoff {
                keep(index, Reason::Within);
            }
        }
    }
    let mut decision = Decision::default();
    for (index, snapshot) in newest_first.into_iter().enumerate() {
        match reasons.remove(&index) {
            Some(mut why) => {
                why.sort();
                why.dedup();
                decision.keep.push((snapshot.clone(), why));
            }
            None => decision.forget.push(snapshot.clone()),
        }
    }
    decision
}

/// What a period rule keeping `count` periods picks, as indexes into `newest_first`: the
/// newest snapshot of each new bucket met walking back, then the oldest snapshot if count
/// is left.
fn bucket_picks(newest_first: &[&Candidate], period: Period, count: u32) -> Vec<(usize, Reason)> {
    let mut left = count;
    let mut previous = None;
    let mut picks = Vec::new();
    for (index, snapshot) in newest_first.iter().enumerate() {
        if left == 0 {
            break;
        }
        let bucket = period.bucket(&snapshot.created_at);
        if previous != Some(bucket) {
            picks.push((index, period.reason()));
            previous = Some(bucket);
            left -= 1;
        }
    }
    let oldest = newest_first.len() - 1;
    if count > 0 && left > 0 && picks.last().map(|(i, _)| *i) != Some(oldest) {
        picks.push((oldest, Reason::Oldest(period)));
    }
    picks
}

/// Parses a `--keep-within` duration: one or more of a number and a unit, `2d12h`, `36h`,
/// `90m`, with units `y` (365 days), `w` (7 days), `d`, `h`, `m` (minutes, as everywhere in
/// repovault's DURATIONs; restic's `m` means months) and `s`.
pub fn parse_within(text: &str) -> Result<Duration> {
    let bad = || usage(format!("--keep-within {text}: expected a duration like 7d, 36h, 2w or 1y2d"));
    let mut total = Duration::zero();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: i64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let seconds: i64 = match unit {
            'y' => 365 * 86_400,
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let part = number.checked_mul(seconds).and_then(Duration::try_seconds).ok_or_else(bad)?;
        total = total.checked_add(&part).ok_or_else(bad)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("test time").with_timezone(&Utc)
    }

    /// Snapshots named by their times, so expectations read as dates.
    fn snaps(times: &[&str]) -> Vec<Candidate> {
        times.iter().map(|t| Candidate { id: (*t).to_owned(), created_at: at(t) }).collect()
    }

    fn kept(policy: &Policy, times: &[&str]) -> Vec<String> {
        apply(policy, &snaps(times)).keep.into_iter().map(|(c, _)| c.id).collect()
    }

    fn reasons_of(policy: &Policy, times: &[&str], id: &str) -> Vec<String> {
        let decision = apply(policy, &snaps(times));
        let (_, why) = decision.keep.into_iter().find(|(c, _)| c.id == id).expect("kept");
        why.into_iter().map(Reason::label).collect()
    }

    const DAYS: [&str; 6] = [
        "2026-01-01T10:00:00Z",
        "2026-01-02T10:00:00Z",
        "2026-01-03T09:00:00Z",
        "2026-01-03T21:00:00Z",
        "2026-01-04T10:00:00Z",
        "2026-01-05T10:00:00Z",
    ];

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let policy = Policy { keep_last: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z", "2026-01-04T10:00:00Z"]);
        let decision = apply(&policy, &snaps(&DAYS));
        assert_eq!(decision.forget.len(), 4);
        assert_eq!(decision.forget[0].id, "2026-01-03T21:00:00Z", "forget is newest first");
    }

    #[test]
    fn keep_last_beyond_the_count_keeps_everything() {
        let policy = Policy { keep_last: 10, ..Policy::default() };
        assert_eq!(kept(&policy, &DAYS).len(), 6);
    }

    #[test]
    fn input_order_does_not_matter() {
        let policy = Policy { keep_daily: 3, ..Policy::default() };
        let mut reversed = snaps(&DAYS);
        reversed.reverse();
        assert_eq!(apply(&policy, &reversed), apply(&policy, &snaps(&DAYS)));
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day_with_snapshots() {
        let policy = Policy { keep_daily: 3, ..Policy::default() };
        // Jan 5, Jan 4, and on Jan 3 the evening one, not the morning one.
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z", "2026-01-04T10:00:00Z", "2026-01-03T21:00:00Z"]);
    }

    #[test]
    fn days_without_snapshots_do_not_use_up_the_count() {
        let times = ["2026-01-01T10:00:00Z", "2026-01-10T10:00:00Z", "2026-01-20T10:00:00Z"];
        let policy = Policy { keep_daily: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &times), ["2026-01-20T10:00:00Z", "2026-01-10T10:00:00Z"]);
    }

    #[test]
    fn a_period_rule_with_count_left_keeps_the_oldest_too() {
        // Three days of snapshots, seven asked: each day's newest, and the very first one.
        let policy = Policy { keep_daily: 7, ..Policy::default() };
        let times = ["2026-01-01T08:00:00Z", "2026-01-01T20:00:00Z", "2026-01-02T08:00:00Z"];
        assert_eq!(kept(&policy, &times), ["2026-01-02T08:00:00Z", "2026-01-01T20:00:00Z", "2026-01-01T08:00:00Z"]);
        assert_eq!(reasons_of(&policy, &times, "2026-01-01T08:00:00Z"), ["oldest daily"]);
        assert_eq!(reasons_of(&policy, &times, "2026-01-01T20:00:00Z"), ["daily"]);
        // A rule whose count is used up keeps no oldest.
        let policy = Policy { keep_daily: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &times), ["2026-01-02T08:00:00Z", "2026-01-01T20:00:00Z"]);
    }

    #[test]
    fn day_buckets_turn_at_midnight_utc() {
        let times = ["2026-03-01T23:59:59Z", "2026-03-02T00:00:00Z", "2026-03-02T00:00:01Z"];
        let policy = Policy { keep_daily: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &times), ["2026-03-02T00:00:01Z", "2026-03-01T23:59:59Z"]);
        // A time given with an offset is bucketed by its UTC day: 01:00+02:00 is 23:00Z
        // the day before.
        let day = Period::Day.bucket(&at("2026-03-02T01:00:00+02:00"));
        assert_eq!(day, (2026, 3, 1, 0));
    }

    #[test]
    fn hour_buckets_turn_on_the_hour() {
        let times = ["2026-01-01T09:59:00Z", "2026-01-01T10:00:00Z", "2026-01-01T10:30:00Z", "2026-01-01T11:00:00Z"];
        let policy = Policy { keep_hourly: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &times), ["2026-01-01T11:00:00Z", "2026-01-01T10:30:00Z"]);
    }

    #[test]
    fn week_buckets_are_iso_weeks_from_monday() {
        // 2026-01-04 is a Sunday, 2026-01-05 a Monday.
        let times = [
            "2025-12-29T12:00:00Z", // Monday of ISO week 2026-W01
            "2026-01-04T23:59:59Z", // Sunday, same week
            "2026-01-05T00:00:00Z", // Monday, W02
            "2026-01-07T00:00:00Z", // Wednesday, W02
        ];
        let policy = Policy { keep_weekly: 2, ..Policy::default() };
        assert_eq!(kept(&policy, &times), ["2026-01-07T00:00:00Z", "2026-01-04T23:59:59Z"]);
        // Across the year's end the ISO week is one bucket.
        assert_eq!(Period::Week.bucket(&at("2025-12-29T00:00:00Z")), Period::Week.bucket(&at("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn month_and_year_buckets_turn_at_their_first_midnight_utc() {
        let times = [
            "2025-11-15T00:00:00Z",
            "2025-12-31T23:59:59Z",
            "2026-01-01T00:00:00Z",
            "2026-01-31T23:00:00Z",
            "2026-02-01T00:00:00Z",
        ];
        let monthly = Policy { keep_monthly: 3, ..Policy::default() };
        assert_eq!(kept(&monthly, &times), ["2026-02-01T00:00:00Z", "2026-01-31T23:00:00Z", "2025-12-31T23:59:59Z"]);
        let yearly = Policy { keep_yearly: 2, ..Policy::default() };
        assert_eq!(kept(&yearly, &times), ["2026-02-01T00:00:00Z", "2025-12-31T23:59:59Z"]);
        // Count left: the oldest (2025-11-15) too.
        let yearly = Policy { keep_yearly: 5, ..Policy::default() };
        assert_eq!(kept(&yearly, &times), ["2026-02-01T00:00:00Z", "2025-12-31T23:59:59Z", "2025-11-15T00:00:00Z"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot_not_from_now() {
        let policy = Policy { keep_within: Some(Duration::days(2)), ..Policy::default() };
        // Newest is Jan 5 10:00: newer than Jan 3 10:00 are kept; Jan 3 09:00 is not.
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z", "2026-01-04T10:00:00Z", "2026-01-03T21:00:00Z"]);
        // Exactly at the cutoff is not newer than it.
        let times = ["2026-01-03T10:00:00Z", "2026-01-05T10:00:00Z"];
        assert_eq!(kept(&policy, &times), ["2026-01-05T10:00:00Z"]);
    }

    #[test]
    fn rules_are_united_and_a_snapshot_carries_every_reason() {
        let policy = Policy { keep_last: 1, keep_daily: 2, keep_weekly: 2, ..Policy::default() };
        // last: Jan 5. daily: Jan 5, Jan 4. weekly: W02 -> Jan 5; W01 -> Jan 4 (Sunday).
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z", "2026-01-04T10:00:00Z"]);
        assert_eq!(reasons_of(&policy, &DAYS, "2026-01-05T10:00:00Z"), ["latest", "last", "daily", "weekly"]);
        assert_eq!(reasons_of(&policy, &DAYS, "2026-01-04T10:00:00Z"), ["daily", "weekly"]);
        let policy =
            Policy { keep_last: 1, keep_monthly: 1, keep_within: Some(Duration::hours(30)), ..Policy::default() };
        // last + monthly: Jan 5; within 30h of Jan 5 10:00: Jan 4 10:00 (24h before).
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z", "2026-01-04T10:00:00Z"]);
    }

    #[test]
    fn the_latest_snapshot_is_always_kept() {
        let policy = Policy { keep_within: Some(Duration::seconds(1)), ..Policy::default() };
        assert_eq!(kept(&policy, &DAYS), ["2026-01-05T10:00:00Z"]);
        assert_eq!(reasons_of(&policy, &DAYS, "2026-01-05T10:00:00Z"), ["latest", "within"]);
        assert_eq!(apply(&policy, &[]), Decision::default());
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        assert!(Policy::default().keeps_nothing());
        assert!(Policy { keep_within: Some(Duration::zero()), ..Policy::default() }.keeps_nothing());
        let err = Policy::default().check().unwrap_err();
        assert!(crate::error::is_usage(&err));
        assert!(!Policy { keep_yearly: 1, ..Policy::default() }.keeps_nothing());
    }

    #[test]
    fn within_durations_parse() {
        assert_eq!(parse_within("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_within("1y2w3d4h5m6s").unwrap(), Duration::seconds(365 * 86400 + 17 * 86400 + 4 * 3600 + 306));
        assert_eq!(parse_within("90m").unwrap(), Duration::minutes(90));
        for bad in ["", "7", "d", "7x", "1d2", "-1d", "99999999999999999999y"] {
            assert!(parse_within(bad).is_err(), "{bad}");
        }
    }
}
