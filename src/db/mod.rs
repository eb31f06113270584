//! The database side of repovault: everything that talks to PostgreSQL lives under here.
//!
//! - [`Db`]: one connection, guarded by an async mutex, reconnected with backoff when it is
//!   dropped (a server restart, a pooler closing it); every message it produces names the
//!   database as `host/db` and never carries the password ([`redact`]).
//! - [`migrate`]: the numbered SQL files of `schema/`, applied in one transaction.
//! - [`feed`]: reading the change feed (the default table or `feed_query`), validating rows.
//! - [`queue`]: nights, workers, the work queue with leased claims, results, summaries.
//! - [`lag`]: freshness of every repository the feed knows, as one query.
//!
//! Only `query_typed` (the unnamed statement) and `simple_query` are used: pgbouncer in
//! transaction mode, the version Debian ships, breaks named prepared statements. Locks are
//! `pg_advisory_xact_lock` only: session locks leak through poolers.
//!
//! The copy work keeps its own std threads; the database needs a little async machinery
//! (the connection's driver, the lease heartbeat) running beside it. So a [`Db`] owns a
//! small tokio runtime driven by one background thread; synchronous callers enter it with
//! `block_on`, which keeps the rest of the code synchronous.

pub mod feed;
pub mod lag;
pub mod migrate;
pub mod queue;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls, error::SqlState};

use crate::error::usage;

/// How long a first connection may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest pause between reconnection attempts.
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A PostgreSQL connection that survives being dropped. Cheap to clone (shared).
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
}

struct Shared {
    config: Config,
    /// `host/db`, what messages name; never the password.
    label: String,
    password: Option<String>,
    client: Mutex<Option<Client>>,
    /// How long a dropped connection is retried before an operation gives up.
    retry: Duration,
}

/// A current-thread runtime kept running by a background thread, so spawned tasks (the
/// connection drivers, the heartbeat) make progress while callers do blocking work.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    fn start() -> Result<Runtime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the database runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("repovault-db".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })
            .context("starting the database thread")?;
        Ok(Runtime { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Db {
    /// Connects to `url` (a URL or a `key=value` connection string). Failing to connect now
    /// is a usage error (exit 2): the database is unreachable or the credentials are wrong.
    /// `what` names the setting the URL came from, for the message.
    pub fn connect(url: &str, what: &str, retry: Duration) -> Result<Db> {
        let mut config: Config = url.parse().map_err(|e| {
            usage(redact(&format!("{what}: not a PostgreSQL URL or connection string: {e}"), None, Some(url)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A vanished server is noticed by TCP keepalives, not after hours.
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        let label = label_of(&config);
        let shared = Arc::new(Shared { config, label, password, client: Mutex::new(None), retry });
        let db = Db { shared, runtime: Arc::new(Runtime::start()?) };
        db.block_on(async {
            let client = db.shared.open().await.map_err(|e| usage(db.shared.message("cannot connect", &e)))?;
            *db.shared.client.lock().await = Some(client);
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(db)
    }

    /// `host/db`: how messages name this database.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Runs `future` on the database runtime, blocking this thread until it is done.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.handle.block_on(future)
    }

    /// Runs `op` with the connection, reconnecting with backoff and running it again when
    /// the connection was lost, for up to `retry`. `what` says what was being done.
    pub fn call<T>(&self, what: &str, op: impl AsyncFn(&Client) -> Result<T>) -> Result<T> {
        self.block_on(self.call_async(what, op))
    }

    /// [`Db::call`] inside a transaction (BEGIN `begin` ... COMMIT), rolled back on error.
    pub fn transaction<T>(&self, what: &str, begin: &str, op: impl AsyncFn(&Client) -> Result<T>) -> Result<T> {
        self.call(what, async |client| {
            client.batch_execute(&format!("BEGIN {begin}")).await?;
            match op(client).await {
                Ok(value) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(value)
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }

    /// The async form of [`Db::call`].
    pub async fn call_async<T>(&self, what: &str, op: impl AsyncFn(&Client) -> Result<T>) -> Result<T> {
        let deadline = Instant::now() + self.shared.retry;
        let mut pause = BACKOFF_START;
        loop {
            let attempt = async {
                let guard = self.shared.connected().await?;
                let client = guard.as_ref().ok_or_else(|| anyhow!("not connected"))?;
                let result = op(client).await;
                if result.is_err() && client.is_closed() {
                    drop(guard);
                    *self.shared.client.lock().await = None;
                }
                result
            }
            .await;
            match attempt {
                Ok(value) => return Ok(value),
                Err(e) if is_connection_loss(&e) && Instant::now() < deadline => {
                    tracing::warn!(database = self.shared.label, error = %self.shared.message(what, &e), "database connection lost; reconnecting");
                    *self.shared.client.lock().await = None;
                    tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
                Err(e) if is_connection_loss(&e) => {
                    return Err(DatabaseDown(self.shared.message(what, &e)).into());
                }
                // Already one clear line for the operator (a bad feed_query): kept as it is.
                Err(e) if crate::error::is_usage(&e) => return Err(e),
                // A standby cancels a read that conflicts with recovery, and any transaction
                // may lose a serialization or deadlock race: the whole operation runs again.
                Err(e) if is_conflict(&e) && Instant::now() < deadline => {
                    tracing::warn!(database = self.shared.label, error = %self.shared.message(what, &e), "conflict; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(anyhow!(self.shared.message(what, &e))),
            }
        }
    }

    /// A one-line message about `err` naming this database, with the password redacted.
    pub fn message(&self, what: &str, err: &anyhow::Error) -> String {
        self.shared.message(what, err)
    }
}

impl Shared {
    async fn open(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; the client then reports `is_closed`.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The connection, opened again first when it was lost.
    async fn connected(&self) -> Result<MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            *guard = Some(self.open().await?);
        }
        Ok(guard)
    }

    fn message(&self, what: &str, err: &anyhow::Error) -> String {
        let text = format!("database {}: {what}: {}", self.label, describe(err));
        redact(&text, self.password.as_deref(), None)
    }
}

/// The error's chain in one line, with a PostgreSQL error's own message and code.
fn describe(err: &anyhow::Error) -> String {
    if let Some(db) = err.chain().find_map(|c| c.downcast_ref::<tokio_postgres::Error>()).and_then(|e| e.as_db_error())
    {
        let context: Vec<String> = err
            .chain()
            .take_while(|c| c.downcast_ref::<tokio_postgres::Error>().is_none())
            .map(ToString::to_string)
            .collect();
        let own = format!("{} ({})", db.message(), db.code().code());
        return if context.is_empty() { own } else { format!("{}: {own}", context.join(": ")) };
    }
    format!("{err:#}")
}

/// The database gave no answer for longer than `database_retry`.
#[derive(Debug)]
pub struct DatabaseDown(pub String);

impl std::fmt::Display for DatabaseDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DatabaseDown {}

/// Whether `err` says the connection is gone (worth reconnecting), as opposed to a query
/// the server refused.
/// A serialization failure (a hot standby's "conflict with recovery" is one) or a deadlock:
/// nothing is wrong but timing, and running the operation again is the cure.
pub fn is_conflict(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|e| e.code())
        .any(|code| [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED].contains(code))
}

pub fn is_connection_loss(err: &anyhow::Error) -> bool {
    err.chain().filter_map(|c| c.downcast_ref::<tokio_postgres::Error>()).any(|e| {
        if e.is_closed() {
            return true;
        }
        match e.code() {
            Some(code) => {
                code.code().starts_with("08")
                    || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code)
            }
            // No server error: an I/O error, a timeout, a refused connection.
            None => {
                std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                    || e.to_string().contains("timeout")
                    || e.to_string().contains("closed")
            }
        }
    })
}

/// `host/db` of a connection config (a socket directory for a Unix socket).
fn label_of(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().filter(|&&p| p != 5432).map(|p| format!(":{p}")).unwrap_or_default();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}{port}/{db}")
}

/// `text` with every password removed: the given one wherever it appears, the password part
/// of URLs (`scheme://user:PASSWORD@`) and `password=...` in connection strings and query
/// parameters. `url`, when given, is a connection string whose password is removed too.
pub fn redact(text: &str, password: Option<&str>, url: Option<&str>) -> String {
    let mut out = text.to_owned();
    let from_url = url.and_then(|u| u.parse::<Config>().ok()).and_then(|c| c.get_password().map(<[u8]>::to_vec));
    for secret in
        password.map(str::to_owned).into_iter().chain(from_url.map(|p| String::from_utf8_lossy(&p).into_owned()))
    {
        if !secret.is_empty() {
            out = out.replace(&secret, "***");
        }
    }
    redact_url_passwords(&redact_key_value_passwords(&out))
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', ' ', '\n']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `password=secret` / `password = 'se cret'` -> `password=***` (connection strings, URLs).
fn redact_key_value_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.to_ascii_lowercase().find("password") {
        let (head, tail) = rest.split_at(found + "password".len());
        out.push_str(head);
        let after = tail.trim_start();
        let Some(value) = after.strip_prefix('=') else {
            rest = tail;
            continue;
        };
        out.push_str("=***");
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |i| i + 2)
        } else {
            value.find([' ', '&', '\n', ')', ',']).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let url = "postgres://backup:s3cr%40t@db.example:5433/forge?sslmode=disable";
        let text = format!("cannot connect to {url}");
        let red = redact(&text, None, None);
        assert!(!red.contains("s3cr"), "{red}");
        assert!(red.contains("backup:***@db.example:5433/forge"), "{red}");
        let kv = "host=db user=backup password='a b c' dbname=forge";
        let red = redact(kv, None, None);
        assert!(!red.contains("a b c") && red.contains("password=***"), "{red}");
        assert!(!redact("x password=hunter2&y=1", None, None).contains("hunter2"));
        assert!(!redact("auth failed for hunter2", Some("hunter2"), None).contains("hunter2"));
        assert!(!redact("the url was host=x password=pw", None, Some("host=x password=pw")).contains("pw"));
    }

    #[test]
    fn labels_name_host_and_database_only() {
        let config: Config = "postgres://u:pw@db.example:5433/forge".parse().unwrap();
        assert_eq!(label_of(&config), "db.example:5433/forge");
        let config: Config = "host=/run/pg dbname=x user=u password=pw".parse().unwrap();
        assert_eq!(label_of(&config), "/run/pg/x");
    }
}
