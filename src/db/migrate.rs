//! Schema migrations: the numbered SQL files of `schema/`, embedded in the binary.
//!
//! All pending migrations are applied in one transaction that first takes a transaction-level
//! advisory lock (session locks leak through poolers), so that many hosts starting at once
//! apply each exactly once; each applied version is recorded in `repovault.schema_version`.
//! Migrations only ever add (`CREATE ... IF NOT EXISTS`, new columns): they never drop data.

use anyhow::{Context, Result};
use tokio_postgres::types::Type;

use super::Db;
use crate::error::usage;

/// A migration: its version, its name, its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. The last version is the one this binary needs.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "feed", sql: include_str!("../../schema/0001_feed.sql") },
    Migration { version: 2, name: "scheduler", sql: include_str!("../../schema/0002_scheduler.sql") },
];

/// The advisory lock key migrations are applied under (any fixed number; "rvmigrat").
const MIGRATE_LOCK: i64 = 0x7276_6d69_6772_6174;

/// `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database even when the schema exists:
/// the check comes first, so that a role owning only the schema can migrate (and re-run).
const VERSION_TABLE: &str = "DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'repovault') THEN
        CREATE SCHEMA repovault;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS repovault.schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    name       text NOT NULL
)";

pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the pending migrations; returns those applied (none: the schema was up to date).
pub fn migrate(db: &Db) -> Result<Vec<&'static Migration>> {
    db.transaction("migrating", "", async |client| {
        client
            .query_typed("SELECT pg_advisory_xact_lock($1)", &[(&MIGRATE_LOCK, Type::INT8)])
            .await
            .context("waiting for the migration lock")?;
        client.batch_execute(VERSION_TABLE).await.context("creating repovault.schema_version")?;
        let applied: Vec<i32> = client
            .query_typed("SELECT version FROM repovault.schema_version", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut done = Vec::new();
        for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            client
                .batch_execute(migration.sql)
                .await
                .with_context(|| format!("applying migration {} ({})", migration.version, migration.name))?;
            client
                .query_typed(
                    "INSERT INTO repovault.schema_version (version, name) VALUES ($1, $2)",
                    &[(&migration.version, Type::INT4), (&migration.name, Type::TEXT)],
                )
                .await?;
            done.push(migration);
        }
        Ok(done)
    })
}

/// Refuses (exit 2) a database whose schema is missing or older than this binary needs.
pub fn check(db: &Db) -> Result<()> {
    let version = db.call("reading the schema version", async |client| {
        match client.query_typed("SELECT max(version) FROM repovault.schema_version", &[]).await {
            Ok(rows) => Ok(rows.first().and_then(|r| r.get::<_, Option<i32>>(0))),
            Err(e) if e.code().is_some_and(|c| c.code() == "42P01" || c.code() == "3F000") => Ok(None),
            Err(e) => Err(e.into()),
        }
    })?;
    match version {
        Some(v) if v >= latest_version() => Ok(()),
        Some(v) => Err(usage(format!(
            "database {}: schema at version {v}, this repovault needs {}: run repovault migrate",
            db.label(),
            latest_version()
        ))),
        None => Err(usage(format!("database {}: not migrated: run repovault migrate", db.label()))),
    }
}
