//! Reading the change feed: the contract's table `repovault.repositories`, or any SQL the
//! config key `feed_query` gives that returns `name, path, vcs, changed_at` (and optionally
//! `storage`), with `$1` bound to the time from which changes are wanted.
//!
//! The query is wrapped (`SELECT feed.name::text, ... FROM (<feed_query>) AS feed`) so that
//! whatever types a forge's columns have, rows arrive as text and timestamptz: built-in types
//! only, which need no named statement (pgbouncer). A missing column is said by name.
//!
//! Rows are data from outside: a hostile NAME, a path that escapes `repos_root` (or lies
//! outside it), or an unknown `vcs` refuses that row alone; the others go on.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use anyhow::Result;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
use tokio_postgres::{Client, types::Type};

use crate::{error::usage, snapshot::Vcs};

/// The feed of the contract, used when no `feed_query` is configured.
pub const DEFAULT_FEED: &str =
    "SELECT name, path, vcs, changed_at, storage FROM repovault.repositories WHERE changed_at > $1";

/// The columns a feed must return.
const REQUIRED: [&str; 4] = ["name", "path", "vcs", "changed_at"];

/// Where the feed comes from and how its rows are turned into repositories.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    /// The SQL (`$1`: changes since).
    pub query: String,
    /// Whether the query is the operator's `feed_query` (messages name it).
    pub custom: bool,
    /// Base of relative paths; absolute paths must lie under it.
    pub repos_root: Option<PathBuf>,
    /// Whether the query returns a `storage` column (learnt by [`FeedSpec::probe`]).
    pub has_storage: bool,
}

/// A valid feed row.
#[derive(Debug, Clone)]
pub struct FeedRow {
    pub name: String,
    /// Absolute.
    pub path: PathBuf,
    pub vcs: Vcs,
    pub changed_at: DateTime<Utc>,
    pub storage: Option<String>,
}

/// A feed row refused, and why.
#[derive(Debug, Clone)]
pub struct RefusedRow {
    pub name: String,
    pub path: String,
    pub reason: String,
}

impl RefusedRow {
    /// Why, naming the path when the reason does not already.
    pub fn why(&self) -> String {
        if self.reason.contains(&self.path) {
            self.reason.clone()
        } else {
            format!("{} (path {})", self.reason, self.path)
        }
    }
}

/// What one read of the feed returned.
#[derive(Debug, Default)]
pub struct FeedRead {
    pub rows: Vec<FeedRow>,
    pub refused: Vec<RefusedRow>,
}

/// What a night or a lag report reads from: the primary (claims, state), the feed's own
/// database when it is another (a hot standby), and the feed checked against it.
pub struct FeedSource {
    pub db: super::Db,
    pub feed_db: Option<super::Db>,
    pub spec: FeedSpec,
}

impl FeedSource {
    /// Connects to `url` and to the config's `feed_database_url`, refuses a database that is
    /// not migrated, and probes the feed (usage errors, exit 2, for all of it).
    pub fn open(config: &crate::config::Config, url: &str) -> Result<FeedSource> {
        let retry = config.database_retry()?;
        let db =
            super::Db::connect(url, "database URL (--database-url, DATABASE_URL or config key database_url)", retry)?;
        super::migrate::check(&db)?;
        let feed_db = config
            .feed_database_url
            .as_deref()
            .map(|url| super::Db::connect(url, "config key feed_database_url", retry))
            .transpose()?;
        let mut spec = FeedSpec::new(config)?;
        spec.has_storage = feed_db.as_ref().unwrap_or(&db).call("checking the feed", async |c| spec.probe(c).await)?;
        Ok(FeedSource { db, feed_db, spec })
    }
}

/// Rows of the feed as they are read: validated, a name listed twice keeping its newest change.
#[derive(Default)]
struct Accumulator {
    read: FeedRead,
    seen: HashMap<String, usize>,
}

impl Accumulator {
    fn push(&mut self, spec: &FeedSpec, row: &tokio_postgres::Row) {
        let name: Option<String> = row.get(0);
        let path: Option<String> = row.get(1);
        let vcs: Option<String> = row.get(2);
        let changed_at: Option<DateTime<Utc>> = row.get(3);
        let storage: Option<String> = row.get(4);
        let read = &mut self.read;
        match spec.validate(name.as_deref(), path.as_deref(), vcs.as_deref(), changed_at) {
            Ok((name, path, vcs, changed_at)) => {
                let row = FeedRow { name, path, vcs, changed_at, storage };
                match self.seen.get(&row.name) {
                    Some(&i) if read.rows[i].changed_at >= row.changed_at => {}
                    Some(&i) => read.rows[i] = row,
                    None => {
                        self.seen.insert(row.name.clone(), read.rows.len());
                        read.rows.push(row);
                    }
                }
            }
            Err(reason) => {
                read.refused.push(RefusedRow { name: name.unwrap_or_default(), path: path.unwrap_or_default(), reason })
            }
        }
    }
}

/// A time before every change: what "since the beginning" is bound to (PostgreSQL's
/// `-infinity` has no chrono value).
pub fn beginning() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or_default()
}

impl FeedSpec {
    pub fn new(config: &crate::config::Config) -> Result<FeedSpec> {
        let repos_root = config
            .repos_root
            .as_ref()
            .map(|root| {
                std::path::absolute(root).map_err(|e| usage(format!("config key repos_root ({}): {e}", root.display())))
            })
            .transpose()?;
        let (query, custom) = match config.feed_query.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => (q.trim_end_matches(';').to_owned(), true),
            None => (DEFAULT_FEED.to_owned(), false),
        };
        Ok(FeedSpec { query, custom, repos_root, has_storage: !custom })
    }

    /// What messages call this feed.
    pub fn describe(&self) -> &'static str {
        if self.custom { "feed_query" } else { "the feed table repovault.repositories" }
    }

    /// The feed wrapped so that its columns arrive as built-in types, for `WITH feed AS (...)`
    /// or a plain read.
    pub fn wrapped(&self) -> String {
        let storage = if self.has_storage { "feed.storage::text" } else { "NULL::text" };
        format!(
            "SELECT feed.name::text AS name, feed.path::text AS path, feed.vcs::text AS vcs, \
             feed.changed_at::timestamptz AS changed_at, {storage} AS storage FROM ({}\n) AS feed",
            self.query
        )
    }

    /// Whether the query takes the `$1` parameter (a feed may ignore it, then it is not bound).
    pub fn takes_since(&self) -> bool {
        self.query.contains("$1")
    }

    /// Runs the query once with no rows wanted: learns whether it has a `storage` column and
    /// refuses (exit 2) one that lacks a required column or does not run, naming why.
    pub async fn probe(&self, client: &Client) -> Result<bool> {
        for with_storage in [self.custom, false] {
            let spec = FeedSpec { has_storage: with_storage, ..self.clone() };
            let sql = format!("{} LIMIT 0", spec.wrapped());
            let result = if self.takes_since() {
                client.query_typed(&sql, &[(&beginning(), Type::TIMESTAMPTZ)]).await
            } else {
                client.query_typed(&sql, &[]).await
            };
            let Err(e) = result else { return Ok(with_storage || !self.custom) };
            let Some(db) = e.as_db_error() else { return Err(e.into()) };
            let undefined_column = db.code().code() == "42703";
            if undefined_column && with_storage && db.message().contains("storage") {
                continue;
            }
            if undefined_column && let Some(column) = REQUIRED.iter().find(|c| db.message().contains(&format!(".{c}")))
            {
                return Err(usage(format!(
                    "{}: it returns no column `{column}` (a feed returns name, path, vcs, changed_at and optionally storage)",
                    self.describe()
                )));
            }
            if db.code().code() == "42P01" && !self.custom {
                return Err(usage(format!("{}: {} (run repovault migrate)", self.describe(), db.message())));
            }
            return Err(usage(format!("{}: {} ({})", self.describe(), db.message(), db.code().code())));
        }
        Ok(false)
    }

    /// Every row changed since `since`, validated.
    /// The whole feed since `since`, validated (for a preview; a night queues it in batches).
    pub async fn read(&self, client: &Client, since: DateTime<Utc>) -> Result<FeedRead> {
        let params = self.params(since);
        let mut rows =
            std::pin::pin!(client.query_typed_raw(&self.wrapped(), params.iter().map(|(v, t)| (v, t.clone()))).await?);
        let mut read = Accumulator::default();
        while let Some(row) = rows.try_next().await? {
            read.push(self, &row);
        }
        Ok(read.read)
    }

    /// The feed's rows, validated, handed to `on_batch` `batch` rows at a time through a
    /// cursor of the caller's transaction: a first night reads the whole feed (a million rows
    /// at a large forge), which is never held at once, and the batches can be queued on the
    /// same connection between fetches (one server connection: nothing to wait for in a
    /// pooler's pool). A name listed twice within a batch keeps its newest change (across
    /// batches, queueing keeps the newest).
    pub async fn read_batches(
        &self,
        client: &Client,
        since: DateTime<Utc>,
        batch: usize,
        on_batch: &impl AsyncFn(FeedRead) -> Result<()>,
    ) -> Result<()> {
        let params = self.params(since);
        let declare = format!("DECLARE repovault_feed NO SCROLL CURSOR FOR {}", self.wrapped());
        client.query_typed(&declare, &params.iter().map(|(v, t)| (v as _, t.clone())).collect::<Vec<_>>()).await?;
        let fetch = format!("FETCH FORWARD {batch} FROM repovault_feed");
        loop {
            let rows = client.query_typed(&fetch, &[]).await?;
            if rows.is_empty() {
                break;
            }
            let mut read = Accumulator::default();
            for row in &rows {
                read.push(self, row);
            }
            drop(rows);
            on_batch(read.read).await?;
        }
        client.batch_execute("CLOSE repovault_feed").await?;
        Ok(())
    }

    fn params(&self, since: DateTime<Utc>) -> Vec<(DateTime<Utc>, Type)> {
        if self.takes_since() { vec![(since, Type::TIMESTAMPTZ)] } else { Vec::new() }
    }

    fn validate(
        &self,
        name: Option<&str>,
        path: Option<&str>,
        vcs: Option<&str>,
        changed_at: Option<DateTime<Utc>>,
    ) -> Result<(String, PathBuf, Vcs, DateTime<Utc>), String> {
        let name = name.ok_or("its name is NULL")?;
        crate::name::validate(name).map_err(|e| format!("{e:#}"))?;
        let path = resolve_path(path.ok_or("its path is NULL")?, self.repos_root.as_deref())?;
        let vcs = match vcs {
            Some("git") => Vcs::Git,
            Some("hg") => Vcs::Hg,
            other => return Err(format!("vcs {:?} is neither git nor hg", other.unwrap_or("NULL"))),
        };
        let changed_at = changed_at.ok_or("its changed_at is NULL")?;
        Ok((name.to_owned(), path, vcs, changed_at))
    }
}

/// A feed row's path made absolute: relative paths are taken under `root`; a `..` component
/// anywhere, or an absolute path outside `root` (when set), is refused.
pub fn resolve_path(raw: &str, root: Option<&Path>) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("its path is empty".into());
    }
    let path = Path::new(raw);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("path {raw} contains '..' (it could escape repos_root)"));
    }
    match (path.is_absolute(), root) {
        (true, Some(root)) if !path.starts_with(root) => {
            Err(format!("path {raw} is outside repos_root {}", root.display()))
        }
        (true, _) => Ok(path.to_owned()),
        (false, Some(root)) => Ok(root.join(path)),
        (false, None) => Err(format!("path {raw} is relative and no repos_root is configured")),
    }
}

/// A stable key for the cursor of this feed: the default table, or a hash of `feed_query`
/// (a new query starts from the beginning; repositories already backed up are skipped).
pub fn cursor_key(spec: &FeedSpec) -> String {
    if spec.custom {
        format!("feed_query:{}", &crate::store::hash_hex(spec.query.as_bytes()).to_string()[..16])
    } else {
        "repovault.repositories".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_the_root_are_refused() {
        let root = Path::new("/srv/repos");
        assert_eq!(resolve_path("team/app.git", Some(root)).unwrap(), Path::new("/srv/repos/team/app.git"));
        assert_eq!(resolve_path("/srv/repos/a.git", Some(root)).unwrap(), Path::new("/srv/repos/a.git"));
        assert!(resolve_path("../etc", Some(root)).is_err());
        assert!(resolve_path("a/../../b", Some(root)).is_err());
        assert!(resolve_path("/srv/repos/../x", Some(root)).is_err());
        assert!(resolve_path("/etc/passwd", Some(root)).is_err());
        assert!(resolve_path("/srv/repository", Some(root)).is_err());
        assert!(resolve_path("rel.git", None).is_err());
        assert!(resolve_path("/anywhere/a.git", None).is_ok());
        assert!(resolve_path("", Some(root)).is_err());
    }
}
