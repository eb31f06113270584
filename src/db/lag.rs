//! Freshness from the database: every repository the feed knows (the feed asked for changes
//! since the beginning), joined with the latest snapshot per repository (`repovault.state`),
//! as one query when the feed and the state are in the same database. No store reads.
//!
//! Lag, per the contract: 0 when the state's `feed_changed_at` (the change its snapshot is
//! known to hold) is at or after the feed's `changed_at`; otherwise the time since that
//! snapshot was taken; never backed up: the time since the change.

use std::{collections::HashMap, pin::pin};

use anyhow::Result;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use tokio_postgres::types::Type;

use super::{
    Db,
    feed::{FeedSpec, beginning},
};

/// One repository the feed knows, with its state.
#[derive(Debug, Clone)]
pub struct FeedLag {
    pub name: String,
    pub vcs: String,
    pub changed_at: DateTime<Utc>,
    pub backed_up_change_at: Option<DateTime<Utc>>,
    pub lag_seconds: i64,
}

struct State {
    feed_changed_at: Option<DateTime<Utc>>,
    snapshot_created_at: DateTime<Utc>,
}

/// Where `measure` puts the rows as they arrive: a million of them are never held twice.
pub trait LagSink {
    /// A new attempt starts (the connection was lost and the query runs again): forget the
    /// rows of the previous one.
    fn restart(&mut self);
    fn row(&mut self, row: FeedLag);
}

/// Every repository of the feed with its lag, measured at the database's `now()`, streamed
/// into `sink`. Rows whose name or changed_at is NULL are skipped (they are no repository).
pub fn measure(db: &Db, feed_db: Option<&Db>, spec: &FeedSpec, sink: &mut impl LagSink) -> Result<()> {
    let since = beginning();
    let params: Vec<(DateTime<Utc>, Type)> =
        if spec.takes_since() { vec![(since, Type::TIMESTAMPTZ)] } else { Vec::new() };
    let sink = std::sync::Mutex::new(sink);
    let each = |row: FeedLag| sink.lock().unwrap_or_else(|e| e.into_inner()).row(row);
    let restart = || sink.lock().unwrap_or_else(|e| e.into_inner()).restart();
    match feed_db {
        None => db.call("measuring lag", async |c| {
            restart();
            let sql = format!(
                "WITH feed AS ({}) SELECT feed.name, feed.vcs, feed.changed_at, s.feed_changed_at,
                     s.snapshot_created_at, now() FROM feed LEFT JOIN repovault.state s ON s.name = feed.name
                 WHERE feed.name IS NOT NULL AND feed.changed_at IS NOT NULL",
                spec.wrapped()
            );
            let mut rows = pin!(c.query_typed_raw(&sql, params.iter().map(|(v, t)| (v, t.clone()))).await?);
            while let Some(r) = rows.try_next().await? {
                let state = r
                    .get::<_, Option<DateTime<Utc>>>(4)
                    .map(|created| State { feed_changed_at: r.get(3), snapshot_created_at: created });
                each(lag_of(
                    r.get(0),
                    r.get::<_, Option<String>>(1).unwrap_or_default(),
                    r.get(2),
                    state.as_ref(),
                    r.get(5),
                ));
            }
            Ok(())
        }),
        Some(feed_db) => {
            let (now, states) = db.call("reading the state", async |c| {
                let now: DateTime<Utc> = c.query_typed("SELECT now()", &[]).await?[0].get(0);
                let mut states = HashMap::new();
                let mut rows = pin!(
                    c.query_typed_raw(
                        "SELECT name, feed_changed_at, snapshot_created_at FROM repovault.state",
                        std::iter::empty::<(&DateTime<Utc>, Type)>()
                    )
                    .await?
                );
                while let Some(r) = rows.try_next().await? {
                    states.insert(
                        r.get::<_, String>(0),
                        State { feed_changed_at: r.get(1), snapshot_created_at: r.get(2) },
                    );
                }
                Ok((now, states))
            })?;
            feed_db.call("reading the feed", async |c| {
                restart();
                let sql = format!(
                    "SELECT name, vcs, changed_at FROM ({}) AS feed WHERE name IS NOT NULL AND changed_at IS NOT NULL",
                    spec.wrapped()
                );
                let mut rows = pin!(c.query_typed_raw(&sql, params.iter().map(|(v, t)| (v, t.clone()))).await?);
                while let Some(r) = rows.try_next().await? {
                    let name: String = r.get(0);
                    let state = states.get(&name);
                    each(lag_of(name, r.get::<_, Option<String>>(1).unwrap_or_default(), r.get(2), state, now));
                }
                Ok(())
            })
        }
    }
}

fn lag_of(name: String, vcs: String, changed_at: DateTime<Utc>, state: Option<&State>, now: DateTime<Utc>) -> FeedLag {
    let since = |t: DateTime<Utc>| (now - t).num_seconds().max(0);
    let lag_seconds = match state {
        Some(s) if s.feed_changed_at.is_some_and(|held| held >= changed_at) => 0,
        Some(s) => since(s.snapshot_created_at),
        None => since(changed_at),
    };
    FeedLag { name, vcs, changed_at, backed_up_change_at: state.and_then(|s| s.feed_changed_at), lag_seconds }
}
