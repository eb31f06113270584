//! Freshness from the database: every repository the feed knows joined with the latest
//! snapshot per repository (`repovault.state`), as one query when the feed and the state
//! are in the same database.
