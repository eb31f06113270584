//! The shared night: nights, workers, the work queue, leased claims, results.
//!
//! Every `run --database-url` process is a worker. It joins the open night (one with a live
//! worker) or opens one, refreshes the queue from the feed, then claims repositories one at
//! a time. A claim is a lease on the server's clock (`lease_until`), renewed by a heartbeat
//! while the backup runs; an expired lease (a worker killed) is free to claim again, and the
//! claim counter (`attempts`) keeps the worker that lost it from finishing the row. Nothing
//! holds a transaction open across a backup.
//!
//! Outcomes go to `repovault.results` (the night's summary is computed from there, so it is
//! the same whichever worker prints it) and `repovault.state` (the latest snapshot per
//! repository, for `lag`). A repository backed up leaves the queue; one that failed stays,
//! marked with the night it failed in, and is claimed again the next night even if the feed
//! no longer lists it.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, types::Type};

use super::{
    Db,
    feed::{self, FeedRead, FeedSpec, RefusedRow},
};
use crate::snapshot::Vcs;

/// Advisory lock keys (transaction-level only): joining and leaving nights; refreshing the
/// queue from the feed; claiming under a per-storage cap.
const NIGHT_LOCK: i64 = 0x7276_6e69_6768_7400;
const REFRESH_LOCK: i64 = 0x7276_7265_6672_7300;
const CLAIM_LOCK: i64 = 0x7276_636c_6169_6d00;

/// This process in the shared night.
#[derive(Debug, Clone, Copy)]
pub struct Worker {
    pub night_id: i64,
    pub worker_id: i64,
}

/// How claims behave.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules {
    pub lease: Duration,
    /// At most this many claims in flight per storage, across all workers.
    pub jobs_per_storage: Option<usize>,
}

/// A repository this worker holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: String,
    pub path: String,
    pub vcs: Vcs,
    pub storage: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub attempt: i32,
}

/// How a claimed repository ended.
#[derive(Debug, Clone)]
pub enum Finished {
    BackedUp {
        snapshot_id: String,
        snapshot_created_at: DateTime<Utc>,
        bytes_read: u64,
        bytes_stored: u64,
    },
    /// The refs are as the latest snapshot (if known) recorded them.
    Unchanged {
        latest: Option<(String, DateTime<Utc>)>,
    },
    Failed(String),
    /// Left alone by design (a Mercurial repository).
    NotBackedUp(String),
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Joins the open night, or opens one (closing any night whose workers are all gone).
pub fn join_night(db: &Db, lease: Duration) -> Result<Worker> {
    let host = crate::backup::hostname();
    let pid = std::process::id() as i32;
    db.transaction("joining the night", "", async |c| {
        c.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&NIGHT_LOCK, Type::INT8)]).await?;
        let open = c
            .query_typed(
                "SELECT n.id FROM repovault.nights n WHERE n.finished_at IS NULL AND EXISTS (
                     SELECT 1 FROM repovault.workers w WHERE w.night_id = n.id AND w.finished_at IS NULL
                     AND w.heartbeat > now() - make_interval(secs => $1))
                 ORDER BY n.id DESC LIMIT 1",
                &[(&secs(lease), Type::FLOAT8)],
            )
            .await?;
        let night_id: i64 = match open.first() {
            Some(row) => row.get(0),
            None => {
                c.query_typed("UPDATE repovault.nights SET finished_at = now() WHERE finished_at IS NULL", &[]).await?;
                c.query_typed("INSERT INTO repovault.nights DEFAULT VALUES RETURNING id", &[]).await?[0].get(0)
            }
        };
        let worker_id: i64 = c
            .query_typed(
                "INSERT INTO repovault.workers (night_id, host, pid) VALUES ($1, $2, $3) RETURNING id",
                &[(&night_id, Type::INT8), (&host, Type::TEXT), (&pid, Type::INT4)],
            )
            .await?[0]
            .get(0);
        Ok(Worker { night_id, worker_id })
    })
}

/// What refreshing the queue did.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub rows: usize,
    pub refused: Vec<RefusedRow>,
}

/// Reads the feed for changes since the cursor minus `margin` and queues them (those whose
/// change the state does not already hold); records refused rows; advances the cursor to the
/// feed read's own snapshot time. Serialised by an advisory lock: workers starting together
/// read the feed one after the other (the second then reads little).
pub fn refresh(db: &Db, feed_db: Option<&Db>, spec: &FeedSpec, worker: Worker, margin: Duration) -> Result<Refreshed> {
    let key = feed::cursor_key(spec);
    let totals = std::sync::Mutex::new(Refreshed::default());
    db.transaction("refreshing the queue from the feed", "", async |c| {
        c.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&REFRESH_LOCK, Type::INT8)]).await?;
        let since = since_cursor(c, &key, margin).await?;
        *totals.lock().unwrap_or_else(|e| e.into_inner()) = Refreshed::default();
        let queue_batch = async |read: FeedRead| -> Result<()> {
            queue_rows(c, &read, margin).await.context("queueing the feed's rows")?;
            record_refused(c, worker, &read.refused).await?;
            let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
            totals.rows += read.rows.len();
            totals.refused.extend(read.refused);
            Ok(())
        };
        // The feed is read through a cursor in batches, each queued before the next is fetched:
        // on the primary in this transaction; on a standby in a read-only transaction of its own.
        let watermark = match feed_db {
            None => {
                let watermark = watermark_of(c, false).await?;
                spec.read_batches(c, since, FEED_BATCH, &queue_batch).await?;
                watermark
            }
            Some(standby) => {
                standby
                    .call_async("reading the feed", async |f| {
                        *totals.lock().unwrap_or_else(|e| e.into_inner()) = Refreshed::default();
                        f.batch_execute("BEGIN READ ONLY").await?;
                        let watermark = watermark_of(f, true).await?;
                        let read = spec.read_batches(f, since, FEED_BATCH, &queue_batch).await;
                        let _ = f.batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
                        read.map(|()| watermark)
                    })
                    .await?
            }
        };
        if let Some(watermark) = watermark {
            c.query_typed(
                "INSERT INTO repovault.feed_cursor (feed, watermark) VALUES ($1, $2)
                 ON CONFLICT (feed) DO UPDATE SET watermark = greatest(repovault.feed_cursor.watermark, EXCLUDED.watermark),
                     updated_at = now()",
                &[(&key, Type::TEXT), (&watermark, Type::TIMESTAMPTZ)],
            )
            .await?;
        }
        Ok(std::mem::take(&mut *totals.lock().unwrap_or_else(|e| e.into_inner())))
    })
}

/// Where tonight's feed read starts: the cursor minus the margin, or the beginning of time
/// when this feed has never been read.
async fn since_cursor(c: &Client, key: &str, margin: Duration) -> Result<DateTime<Utc>> {
    let cursor: Option<DateTime<Utc>> = c
        .query_typed("SELECT watermark FROM repovault.feed_cursor WHERE feed = $1", &[(&key, Type::TEXT)])
        .await?
        .first()
        .map(|r| r.get(0));
    Ok(cursor.map_or_else(feed::beginning, |t| t - chrono::Duration::from_std(margin).unwrap_or_default()))
}

/// Rows of the feed queued per statement.
const FEED_BATCH: usize = 10_000;

/// Where the cursor may move once the feed has been read on `f`, asked before the feed
/// statement (whose snapshot then holds every change committed up to it). On the primary:
/// its `now()`. On a hot standby: its last replayed commit time (none right after it
/// started: the cursor then stays where it was), so a lagging replica never hides a change.
async fn watermark_of(f: &Client, standby: bool) -> Result<Option<DateTime<Utc>>> {
    let sql = if standby {
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_xact_replay_timestamp() ELSE now() END"
    } else {
        "SELECT now()"
    };
    Ok(f.query_typed(sql, &[]).await?[0].get(0))
}

/// Queues the rows whose change the state does not hold yet. A snapshot taken less than
/// `margin` after the row's `changed_at` does not prove it holds the change either: a forge
/// that stamps late or coarsely (GitLab: at most every 5 minutes) leaves a push soon after
/// the stamp unstamped, so such a row is queued once more (the backup then finds the refs
/// unchanged in a few `stat` calls, or takes what the stamp did not show).
async fn queue_rows(c: &Client, read: &FeedRead, margin: Duration) -> Result<()> {
    if read.rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = read.rows.iter().map(|r| r.name.as_str()).collect();
    // Borrowed, not copied: a first night queues the whole feed. Paths came from text columns.
    let paths: Vec<&str> = read.rows.iter().map(|r| r.path.to_str().unwrap_or_default()).collect();
    let vcs: Vec<&str> = read.rows.iter().map(|r| if r.vcs == Vcs::Hg { "hg" } else { "git" }).collect();
    let storage: Vec<Option<&str>> = read.rows.iter().map(|r| r.storage.as_deref()).collect();
    let changed: Vec<DateTime<Utc>> = read.rows.iter().map(|r| r.changed_at).collect();
    c.query_typed(
        "INSERT INTO repovault.queue AS q (name, path, vcs, storage, changed_at)
         SELECT f.name, f.path, f.vcs, f.storage, f.changed_at
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
             AS f(name, path, vcs, storage, changed_at)
         LEFT JOIN repovault.state s ON s.name = f.name
         WHERE s.feed_changed_at IS NULL OR s.feed_changed_at < f.changed_at
             OR s.snapshot_created_at < f.changed_at + make_interval(secs => $6)
         ON CONFLICT (name) DO UPDATE SET path = EXCLUDED.path, vcs = EXCLUDED.vcs, storage = EXCLUDED.storage,
             changed_at = greatest(q.changed_at, EXCLUDED.changed_at),
             failed_night = CASE WHEN EXCLUDED.changed_at > q.changed_at THEN NULL ELSE q.failed_night END",
        &[
            (&names, Type::TEXT_ARRAY),
            (&paths, Type::TEXT_ARRAY),
            (&vcs, Type::TEXT_ARRAY),
            (&storage, Type::TEXT_ARRAY),
            (&changed, Type::TIMESTAMPTZ_ARRAY),
            (&secs(margin), Type::FLOAT8),
        ],
    )
    .await?;
    Ok(())
}

async fn record_refused(c: &Client, worker: Worker, refused: &[RefusedRow]) -> Result<()> {
    for row in refused {
        let why = row.why();
        c.query_typed(
            "INSERT INTO repovault.results (night_id, worker_id, name, outcome, error) VALUES ($1, $2, $3, 'refused', $4)
             ON CONFLICT (night_id, name) WHERE outcome = 'refused' DO NOTHING",
            &[(&worker.night_id, Type::INT8), (&worker.worker_id, Type::INT8), (&row.name, Type::TEXT), (&why, Type::TEXT)],
        )
        .await?;
    }
    Ok(())
}

/// What a night would do now (`run --dry-run`): the rows the feed would queue, the failed
/// ones waiting for their retry, and the refused rows. Reads only; the cursor stays.
#[derive(Debug, Default)]
pub struct Preview {
    pub would_back_up: Vec<String>,
    pub refused: Vec<RefusedRow>,
}

pub fn preview(db: &Db, feed_db: Option<&Db>, spec: &FeedSpec, margin: Duration) -> Result<Preview> {
    let key = feed::cursor_key(spec);
    db.transaction("previewing the night", "READ ONLY", async |c| {
        let since = since_cursor(c, &key, margin).await?;
        let read = match feed_db {
            Some(standby) => standby.call_async("reading the feed", async |s| spec.read(s, since).await).await?,
            None => spec.read(c, since).await?,
        };
        let names: Vec<&str> = read.rows.iter().map(|r| r.name.as_str()).collect();
        let changed: Vec<DateTime<Utc>> = read.rows.iter().map(|r| r.changed_at).collect();
        // The same test as `queue_rows`, and what the queue already holds.
        let rows = c
            .query_typed(
                "SELECT f.name FROM unnest($1::text[], $2::timestamptz[]) AS f(name, changed_at)
                 LEFT JOIN repovault.state s ON s.name = f.name
                 WHERE s.feed_changed_at IS NULL OR s.feed_changed_at < f.changed_at
                     OR s.snapshot_created_at < f.changed_at + make_interval(secs => $3)
                 UNION SELECT name FROM repovault.queue
                 ORDER BY 1",
                &[(&names, Type::TEXT_ARRAY), (&changed, Type::TIMESTAMPTZ_ARRAY), (&secs(margin), Type::FLOAT8)],
            )
            .await?;
        Ok(Preview { would_back_up: rows.iter().map(|r| r.get(0)).collect(), refused: read.refused })
    })
}

/// Claims the next repository, or `None` when nothing is claimable now (all done, all held
/// by live leases, failed tonight, or capped by `jobs_per_storage`).
/// `held`: what this worker's threads hold now. A row this worker claimed but does not hold
/// (the claim's COMMIT went through but its reply was lost with the connection) is taken
/// again by this worker; a row it holds is never claimed twice, even if its lease ran out
/// while the database was away. The caller serialises its own threads' claims.
pub fn claim(db: &Db, worker: Worker, rules: ClaimRules, held: &[String]) -> Result<Option<Claim>> {
    let cap = rules.jobs_per_storage.map(|n| n as i64);
    db.transaction("claiming a repository", "", async |c| {
        if cap.is_some() {
            // Counting the claims in flight per storage is only right if claims are counted one
            // after the other.
            c.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&CLAIM_LOCK, Type::INT8)]).await?;
        }
        let rows = c
            .query_typed(
                "UPDATE repovault.queue q SET claimed_by = $1, lease_until = now() + make_interval(secs => $2),
                     attempts = q.attempts + 1
                 WHERE q.name = (
                     SELECT c.name FROM repovault.queue c
                     WHERE ((c.lease_until IS NULL OR c.lease_until < now()) AND c.claimed_by IS DISTINCT FROM $1
                            OR c.claimed_by = $1 AND NOT (c.name = ANY($5)))
                       AND (c.failed_night IS NULL OR c.failed_night <> $3)
                       AND ($4::int8 IS NULL OR c.storage IS NULL OR (
                           SELECT count(*) FROM repovault.queue o
                           WHERE o.storage = c.storage AND o.lease_until >= now()) < $4)
                     ORDER BY c.queued_at, c.name
                     LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING q.name, q.path, q.vcs, q.storage, q.changed_at, q.attempts",
                &[
                    (&worker.worker_id, Type::INT8),
                    (&secs(rules.lease), Type::FLOAT8),
                    (&worker.night_id, Type::INT8),
                    (&cap, Type::INT8),
                    (&held, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        Ok(rows.first().map(|row| Claim {
            name: row.get(0),
            path: row.get(1),
            vcs: if row.get::<_, &str>(2) == "hg" { Vcs::Hg } else { Vcs::Git },
            storage: row.get(3),
            changed_at: row.get(4),
            attempt: row.get(5),
        }))
    })
}

/// Claims of other workers in flight (leases not expired): what a job thread with nothing to
/// claim waits for before the night can be summed up (taking over any lease that expires).
/// This worker's own claims are its other threads', which end before it sums up.
pub fn in_flight_elsewhere(db: &Db, worker: Worker) -> Result<i64> {
    db.call("counting claims in flight", async |c| {
        Ok(c.query_typed(
            "SELECT count(*) FROM repovault.queue
             WHERE claimed_by IS NOT NULL AND claimed_by <> $1 AND lease_until >= now()",
            &[(&worker.worker_id, Type::INT8)],
        )
        .await?[0]
            .get(0))
    })
}

/// Records how a claimed repository ended. Returns false when the lease had been lost (the
/// repository is another worker's now; nothing is recorded).
pub fn finish(db: &Db, worker: Worker, claim: &Claim, finished: &Finished) -> Result<bool> {
    db.transaction(&format!("recording the result of {}", claim.name), "", async |c| {
        let held = c
            .query_typed(
                "SELECT changed_at FROM repovault.queue WHERE name = $1 AND claimed_by = $2 AND attempts = $3 FOR UPDATE",
                &[(&claim.name, Type::TEXT), (&worker.worker_id, Type::INT8), (&claim.attempt, Type::INT4)],
            )
            .await?;
        let Some(row) = held.first() else { return Ok(false) };
        let changed_now: DateTime<Utc> = row.get(0);
        release(c, claim, finished, worker, changed_now).await?;
        record_state(c, claim, finished).await?;
        record_result(c, worker, claim, finished).await?;
        Ok(true)
    })
}

/// Takes the row off the queue (done), or leaves it for later: failed (next night), or its
/// change moved on while it was backed up (tonight or the next night, whichever claims it).
async fn release(
    c: &Client,
    claim: &Claim,
    finished: &Finished,
    worker: Worker,
    changed_now: DateTime<Utc>,
) -> Result<()> {
    let name: (&(dyn tokio_postgres::types::ToSql + Sync), Type) = (&claim.name, Type::TEXT);
    match finished {
        Finished::Failed(error) => {
            c.query_typed(
                "UPDATE repovault.queue SET claimed_by = NULL, lease_until = NULL, failed_night = $2, last_error = $3
                 WHERE name = $1",
                &[name.clone(), (&worker.night_id, Type::INT8), (error, Type::TEXT)],
            )
            .await?;
        }
        _ if changed_now > claim.changed_at => {
            c.query_typed(
                "UPDATE repovault.queue SET claimed_by = NULL, lease_until = NULL WHERE name = $1",
                std::slice::from_ref(&name),
            )
            .await?;
        }
        _ => {
            c.query_typed("DELETE FROM repovault.queue WHERE name = $1", std::slice::from_ref(&name)).await?;
        }
    }
    Ok(())
}

async fn record_state(c: &Client, claim: &Claim, finished: &Finished) -> Result<()> {
    let (id, created) = match finished {
        Finished::BackedUp { snapshot_id, snapshot_created_at, .. } => (snapshot_id, snapshot_created_at),
        Finished::Unchanged { latest: Some((id, created)) } => (id, created),
        _ => return Ok(()),
    };
    let vcs = claim.vcs.to_string();
    c.query_typed(
        "INSERT INTO repovault.state AS s (name, vcs, snapshot_id, snapshot_created_at, feed_changed_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET vcs = EXCLUDED.vcs, snapshot_id = EXCLUDED.snapshot_id,
             snapshot_created_at = EXCLUDED.snapshot_created_at,
             feed_changed_at = greatest(s.feed_changed_at, EXCLUDED.feed_changed_at), updated_at = now()",
        &[
            (&claim.name, Type::TEXT),
            (&vcs, Type::TEXT),
            (id, Type::TEXT),
            (created, Type::TIMESTAMPTZ),
            (&claim.changed_at, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

async fn record_result(c: &Client, worker: Worker, claim: &Claim, finished: &Finished) -> Result<()> {
    let (outcome, snapshot, read, stored, error) = match finished {
        Finished::BackedUp { snapshot_id, bytes_read, bytes_stored, .. } => {
            ("backed_up", Some(snapshot_id.as_str()), *bytes_read as i64, *bytes_stored as i64, None)
        }
        Finished::Unchanged { .. } => ("unchanged", None, 0, 0, None),
        Finished::Failed(e) => ("failed", None, 0, 0, Some(e.as_str())),
        Finished::NotBackedUp(why) => ("not_backed_up", None, 0, 0, Some(why.as_str())),
    };
    c.query_typed(
        "INSERT INTO repovault.results (night_id, worker_id, name, outcome, snapshot_id, bytes_read, bytes_stored, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            (&worker.night_id, Type::INT8),
            (&worker.worker_id, Type::INT8),
            (&claim.name, Type::TEXT),
            (&outcome, Type::TEXT),
            (&snapshot, Type::TEXT),
            (&read, Type::INT8),
            (&stored, Type::INT8),
            (&error, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Renews this worker's leases and heartbeat every third of a lease until dropped. A thread
/// of its own: the backups in flight keep their leases whatever the job threads are doing.
pub struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(db: &Db, worker: Worker, lease: Duration) -> Heartbeat {
        let every = (lease / 3).max(Duration::from_millis(200));
        let db = db.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("repovault-heartbeat".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = renew(&db, worker, lease) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot renew the leases");
                    }
                }
            })
            .ok();
        Heartbeat { stop: Some(stop), thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn renew(db: &Db, worker: Worker, lease: Duration) -> Result<()> {
    let lease = secs(lease);
    db.call("renewing leases", async |c| {
        c.query_typed(
            "UPDATE repovault.queue SET lease_until = now() + make_interval(secs => $2)
             WHERE claimed_by = $1 AND lease_until IS NOT NULL",
            &[(&worker.worker_id, Type::INT8), (&lease, Type::FLOAT8)],
        )
        .await?;
        c.query_typed(
            "UPDATE repovault.workers SET heartbeat = now() WHERE id = $1",
            &[(&worker.worker_id, Type::INT8)],
        )
        .await?;
        Ok(())
    })
}

/// Leaves the night: this worker is finished, and the night is closed when no other live
/// worker is still in it.
pub fn leave(db: &Db, worker: Worker, lease: Duration) -> Result<()> {
    db.transaction("leaving the night", "", async |c| {
        c.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&NIGHT_LOCK, Type::INT8)]).await?;
        c.query_typed(
            "UPDATE repovault.workers SET finished_at = now() WHERE id = $1",
            &[(&worker.worker_id, Type::INT8)],
        )
        .await?;
        c.query_typed(
            "UPDATE repovault.nights n SET finished_at = now() WHERE n.id = $1 AND n.finished_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM repovault.workers w WHERE w.night_id = n.id AND w.finished_at IS NULL
                 AND w.heartbeat > now() - make_interval(secs => $2))",
            &[(&worker.night_id, Type::INT8), (&secs(lease), Type::FLOAT8)],
        )
        .await?;
        Ok(())
    })
}

/// A night's totals over all its workers.
#[derive(Debug, Default)]
pub struct NightSummary {
    pub backed_up: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub refused: u64,
    pub not_backed_up: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// (name, outcome, why) of every repository that failed, was refused or left alone.
    pub problems: Vec<(String, String, String)>,
}

impl NightSummary {
    pub fn examined(&self) -> u64 {
        self.backed_up + self.unchanged + self.failed + self.refused + self.not_backed_up
    }
}

pub fn summary(db: &Db, night_id: i64) -> Result<NightSummary> {
    db.call("summing up the night", async |c| {
        let mut summary = NightSummary::default();
        let night: (&(dyn tokio_postgres::types::ToSql + Sync), Type) = (&night_id, Type::INT8);
        for row in c
            .query_typed(
                // Bytes of every result, counts of repositories: a repository queued again
                // within the night (changed again) counts once, by its latest result.
                "WITH latest AS (
                     SELECT DISTINCT ON (name) name, outcome FROM repovault.results WHERE night_id = $1
                     ORDER BY name, id DESC),
                 bytes AS (
                     SELECT coalesce(sum(bytes_read), 0)::int8 AS r, coalesce(sum(bytes_stored), 0)::int8 AS s
                     FROM repovault.results WHERE night_id = $1)
                 SELECT l.outcome, count(*), min(b.r), min(b.s) FROM latest l CROSS JOIN bytes b GROUP BY l.outcome",
                std::slice::from_ref(&night),
            )
            .await?
        {
            let count = row.get::<_, i64>(1) as u64;
            summary.bytes_read = row.get::<_, i64>(2) as u64;
            summary.bytes_stored = row.get::<_, i64>(3) as u64;
            match row.get::<_, &str>(0) {
                "backed_up" => summary.backed_up = count,
                "unchanged" => summary.unchanged = count,
                "failed" => summary.failed = count,
                "refused" => summary.refused = count,
                _ => summary.not_backed_up = count,
            }
        }
        summary.problems = c
            .query_typed(
                "SELECT name, outcome, coalesce(error, '') FROM repovault.results
                 WHERE night_id = $1 AND outcome IN ('failed', 'refused', 'not_backed_up') ORDER BY name, id",
                &[night],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok(summary)
    })
}
