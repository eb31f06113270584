//! Writer sessions: how a process that writes snapshots tells `prune` it is running, and the
//! fence through which its snapshots are committed (docs/FORMAT.md, "Prune").
//!
//! A session is the directory `sessions/<32 hex>/` holding `alive`, whose modification time
//! a heartbeat thread refreshes every minute through the storage's clock. A snapshot is
//! first written into the session directory and then renamed into `snapshots/`: a prune that
//! gave up on a stalled session renames the directory to `revoked/<id>`, and the rename of a
//! snapshot that wakes up later fails because its source is gone.

use std::{
    sync::{
        Arc,
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::json;

use super::{Backend, Store};

pub(crate) const SESSIONS: &str = "sessions";
pub(crate) const REVOKED: &str = "revoked";
pub(crate) const ALIVE: &str = "alive";
const HEARTBEAT: Duration = Duration::from_secs(60);
/// A session whose heartbeat is older than this, by the store's clock, may be revoked. Much
/// longer than `HEARTBEAT`, so that only a process stopped for that long loses its session.
pub const STALE_SESSION: Duration = Duration::from_secs(60 * 60);

/// Who holds a session, as its `alive` file says.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct SessionInfo {
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub pid_start: Option<u64>,
}

impl SessionInfo {
    /// True when the session's process is known to be gone: it ran on this host and its pid
    /// is free or belongs to a later process. Revoking such a session costs nothing (a dead
    /// process commits nothing) and frees the trash that waits for it without the hour's wait.
    pub fn process_is_gone(&self) -> bool {
        self.host == crate::backup::hostname() && !super::lock::process_lives(self.pid, self.pid_start)
    }
}

/// This process's registration in the store; ended (its directory removed) on drop.
pub(crate) struct Session {
    pub id: String,
    backend: Arc<dyn Backend>,
    /// Dropping it wakes the heartbeat thread at once to end.
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

pub(crate) fn session_dir(id: &str) -> String {
    format!("{SESSIONS}/{id}")
}

impl Session {
    pub fn start(store: &Store) -> Result<Session> {
        let backend = store.backend.clone();
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = session_dir(&id);
        let alive = format!("{dir}/{ALIVE}");
        let about = json!({
            "host": crate::backup::hostname(),
            "pid": std::process::id(),
            "pid_start": super::lock::process_start(std::process::id()),
            "started_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        (|| -> std::io::Result<()> {
            backend.create_dir(SESSIONS)?;
            backend.create_dir(&dir)?;
            backend.write_new(&alive, &serde_json::to_vec(&about)?).inspect_err(|_| {
                // A session directory without `alive` would look like a session to prune for
                // an hour (until revoked as stale), holding back every trash batch meanwhile.
                let _ = backend.remove_dir(&dir);
            })?;
            Ok(())
        })()
        .with_context(|| format!("store {}: registering this process's session ({dir})", store.location()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let location = store.location();
        let beat_backend = backend.clone();
        let heartbeat = std::thread::spawn(move || {
            let mut warned = false;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                match beat_backend.touch(&alive) {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(store = location, session = alive, error = %e, "cannot refresh this process's session");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Session { id, backend, stop: Some(stop), heartbeat: Some(heartbeat) })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.heartbeat.take() {
            let _ = handle.join();
        }
        // A revoked session's directory is under revoked/ now, and these find nothing.
        let dir = session_dir(&self.id);
        let removed = (|| -> std::io::Result<()> {
            for name in self.backend.list(&dir)? {
                self.backend.remove(&format!("{dir}/{name}"))?;
            }
            self.backend.remove_dir(&dir)
        })();
        if let Err(e) = removed {
            tracing::warn!(session = dir, error = %e, "cannot remove this process's session; a prune will revoke it when it is stale");
        }
    }
}
