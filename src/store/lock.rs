//! One `run` at a time per store, and one `prune`.
//!
//! A lock is the file `locks/run` (or `locks/prune`), created atomically (see
//! `Backend::create_exclusive`) and holding who took it. The holder touches it every minute
//! (the storage's clock sets the time). A lock is stale only on evidence: on the same host,
//! its process is gone (or the pid now belongs to a process started later); on another
//! host, its heartbeat is older than `STALE_AFTER` by the store's clock (a file just written
//! there), so that no two hosts' clocks are compared. A stale lock is moved aside and
//! checked once more before it is deleted, so two processes that both judge it stale cannot
//! both take over.

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Store;

const RUN_LOCK: &str = "locks/run";
const PRUNE_LOCK: &str = "locks/prune";
const HEARTBEAT: Duration = Duration::from_secs(60);
/// A lock of another host whose heartbeat is older than this is stale.
const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22): a
    /// recycled pid has a different one.
    pub pid_start: Option<u64>,
    pub started_at: DateTime<Utc>,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {}",
            self.pid,
            self.host,
            self.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// A held lock; released on drop.
pub struct RunLock<'a> {
    store: &'a Store,
    path: &'static str,
    /// What we wrote into the lock file.
    content: Vec<u8>,
    /// Dropping it wakes the heartbeat thread at once to end.
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

pub enum LockAttempt<'a> {
    Acquired(RunLock<'a>),
    HeldBy(LockInfo),
}

pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19)?.parse().ok()
}

/// Whether process `pid` of this host is still the one that started at `recorded_start`
/// (clock ticks since boot; `None`: unknown, any process with that pid counts).
pub(crate) fn process_lives(pid: u32, recorded_start: Option<u64>) -> bool {
    match process_start(pid) {
        None => false,
        Some(start) => recorded_start.is_none_or(|recorded| recorded == start),
    }
}

impl Store {
    /// Takes the run lock, or says who holds it.
    /// A store that cannot be written (read-only mount, no permission) is a usage error
    /// (exit 2) naming the store: nothing could be backed up into it.
    pub fn lock_run(&self) -> Result<LockAttempt<'_>> {
        self.lock(RUN_LOCK)
    }

    /// Takes the prune lock, or says who holds it. Backups never take it.
    pub fn lock_prune(&self) -> Result<LockAttempt<'_>> {
        self.lock(PRUNE_LOCK)
    }

    fn lock(&self, path: &'static str) -> Result<LockAttempt<'_>> {
        self.backend.create_dir("locks").map_err(|e| self.not_writable(e, path, "creating locks/"))?;
        let me = LockInfo {
            host: crate::backup::hostname(),
            pid: std::process::id(),
            pid_start: process_start(std::process::id()),
            started_at: Utc::now(),
        };
        let mine = serde_json::to_vec(&me)?;
        for _ in 0..5 {
            if self
                .backend
                .create_exclusive(path, &mine)
                .map_err(|e| self.not_writable(e, path, "creating the lock"))?
            {
                return Ok(LockAttempt::Acquired(self.start_heartbeat(path, mine)));
            }
            let held = match self.backend.read(path) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("store {}: reading {path}", self.location())),
            };
            let Ok(holder) = serde_json::from_slice::<LockInfo>(&held) else {
                anyhow::bail!(
                    "store {}: {path} is not a lock this program wrote; remove it by hand if no process holds it",
                    self.location()
                );
            };
            if !self.is_stale(path, &holder)? {
                return Ok(LockAttempt::HeldBy(holder));
            }
            tracing::warn!(holder = %holder, lock = path, "taking over a stale lock");
            let aside = format!("locks/stale-{:016x}", rand::random::<u64>());
            if self.backend.rename(path, &aside).is_err() {
                continue; // someone else moved or released it: try again
            }
            let moved = self.backend.read(&aside)?;
            if moved != held {
                // We moved a fresh lock someone took in between: put it back.
                let _ = self.backend.create_exclusive(path, &moved);
                self.backend.remove(&aside)?;
                continue;
            }
            self.backend.remove(&aside)?;
        }
        anyhow::bail!("store {}: could not take {path} (it keeps changing hands)", self.location())
    }

    /// Turns "cannot write" into a usage error naming the store; other errors keep their kind.
    fn not_writable(&self, error: std::io::Error, lock: &str, step: &str) -> anyhow::Error {
        // EPERM, EACCES, EROFS
        if matches!(error.raw_os_error(), Some(1 | 13 | 30)) {
            crate::error::usage(format!(
                "store {} cannot be written ({step}: {error}): is it mounted read-only or owned by another user?",
                self.location()
            ))
        } else {
            anyhow::Error::new(error).context(format!("store {}: {step} ({lock})", self.location()))
        }
    }

    fn is_stale(&self, path: &str, holder: &LockInfo) -> Result<bool> {
        if holder.host == crate::backup::hostname() {
            return Ok(!process_lives(holder.pid, holder.pid_start));
        }
        let beat = self.backend.modified(path)?;
        let now = self.store_clock()?;
        Ok(now.duration_since(beat).unwrap_or_default() > STALE_AFTER)
    }

    /// "Now" by the storage's clock: the modification time of a file just written there.
    /// Every age that decides whether something of another process is abandoned is measured
    /// against this, never against this host's clock.
    pub fn store_clock(&self) -> Result<SystemTime> {
        let probe = format!("locks/clock-{:016x}", rand::random::<u64>());
        let read = (|| {
            self.backend.create_dir("locks")?;
            self.backend.write_new(&probe, b"")?;
            let now = self.backend.modified(&probe);
            self.backend.remove(&probe)?;
            now
        })();
        read.with_context(|| format!("store {}: reading the store's clock ({probe})", self.location()))
    }

    fn start_heartbeat(&self, path: &'static str, content: Vec<u8>) -> RunLock<'_> {
        let (stop, stopped) = mpsc::channel::<()>();
        let location = self.location();
        let backend = self.backend.clone();
        let heartbeat = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                if let Err(e) = backend.touch(path) {
                    tracing::warn!(store = location, lock = path, error = %e, "cannot refresh the lock");
                }
            }
        });
        RunLock { store: self, path, stop: Some(stop), heartbeat: Some(heartbeat), content }
    }
}

impl Drop for RunLock<'_> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.heartbeat.take() {
            let _ = handle.join();
        }
        // Only our own lock is removed: had another run judged us stale and taken over, the
        // lock would now be theirs.
        let path = self.path;
        match self.store.backend.read(path) {
            Ok(held) if held == self.content => {
                if let Err(e) = self.store.backend.remove(path) {
                    tracing::warn!(lock = path, error = %e, "cannot remove the lock");
                }
            }
            Ok(_) => tracing::warn!(lock = path, "the lock was taken over by another process; leaving it"),
            Err(e) => tracing::warn!(lock = path, error = %e, "cannot read the lock to release it"),
        }
    }
}
