//! Deleting data no snapshot names, while backups run (docs/FORMAT.md, "Prune", argues why
//! this is safe step by step).
//!
//! Unreferenced objects are first moved into a trash batch `trash/<32 hex>/`, which is then
//! sealed with the list of writer sessions alive after the last move (`trash/<batch>/sessions`).
//! A batch is finished (each object a snapshot now names moved back, the rest deleted) only
//! when every session its seal lists has ended or was revoked: only those sessions can have
//! looked at the batch's objects in `objects/` and still commit a snapshot naming them.
//! Only the caller's prune lock keeps two prunes apart; the fences here (a batch found
//! unsealed is renamed before it is sealed) keep a prune that lost its lock from doing harm.

use std::{collections::HashSet, io, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    ChunkSet, Store, chunk_key, is_hex_id, object_path,
    session::{ALIVE, REVOKED, SESSIONS, STALE_SESSION, SessionInfo, session_dir},
};

pub(crate) const TRASH: &str = "trash";
const SEAL: &str = "sessions";
const REVOKED_MARK: &str = "revoked";
/// Unfinished writes and revoked sessions older than this (store clock) are removed.
const LEFTOVER_AGE: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) fn trash_path(batch: &str, id: &str) -> String {
    format!("{TRASH}/{batch}/{id}")
}

fn new_batch_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What one garbage collection did.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Objects in trash batches that wait for running backups to end.
    pub objects_pending: u64,
    pub bytes_pending: u64,
    /// Running sessions the waiting batches wait for.
    pub sessions_waited_for: usize,
    /// Sessions revoked because their heartbeat stopped for `STALE_SESSION`.
    pub sessions_revoked: Vec<String>,
    /// Objects moved back from trash because a snapshot committed meanwhile names them.
    pub objects_restored: u64,
    /// Old unfinished writes and revoked sessions removed.
    pub leftovers_removed: u64,
    /// Set when finishing was skipped because a manifest could not be read: why.
    pub finishing_skipped: Option<String>,
}

/// A sealed batch's verdict.
enum BatchState {
    Ready,
    /// Waits for these sessions.
    Waiting(Vec<String>),
}

impl Store {
    /// Steps c to e of a prune (forgetting is the caller's): fences and seals batches an
    /// earlier prune left unsealed, revokes stale sessions, moves every object of `objects/`
    /// that `mark` (every chunk the manifests read after forgetting name) lacks into a new
    /// batch and seals it, finishes every batch whose sessions are gone, and removes old
    /// leftovers. The caller holds the prune lock and found no damaged manifest.
    pub fn collect_garbage(&self, mark: &ChunkSet) -> Result<GcReport> {
        let mut report = GcReport::default();
        for batch in self.list_dir(TRASH)? {
            if !self.backend.exists(&format!("{TRASH}/{batch}/{SEAL}"))? {
                self.fence_and_seal(&batch)?;
            }
        }
        report.sessions_revoked = self.revoke_stale_sessions()?;
        self.trash_unmarked(mark)?;

        let mut ready = Vec::new();
        let mut waiting_for = HashSet::new();
        for batch in self.list_dir(TRASH)? {
            match self.batch_state(&batch)? {
                None => {} // unsealed: a prune that lost its lock is still filling it
                Some(BatchState::Ready) => ready.push(batch),
                Some(BatchState::Waiting(sessions)) => {
                    let (objects, bytes) = self.batch_size(&batch)?;
                    report.objects_pending += objects;
                    report.bytes_pending += bytes;
                    waiting_for.extend(sessions);
                }
            }
        }
        report.sessions_waited_for = waiting_for.len();
        if !ready.is_empty() {
            // Read after every listed session was seen gone: each snapshot those sessions
            // will ever commit is among these manifests.
            match self.named_chunks()? {
                Err(d) => {
                    report.finishing_skipped = Some(format!(
                        "snapshot {} became unreadable during the prune ({}); trash batches stay for the next prune",
                        d.entry.path,
                        d.reason()
                    ));
                    for batch in &ready {
                        let (objects, bytes) = self.batch_size(batch)?;
                        report.objects_pending += objects;
                        report.bytes_pending += bytes;
                    }
                }
                Ok(named) => {
                    for batch in &ready {
                        self.finish_batch(batch, &named, &mut report)?;
                    }
                }
            }
        }
        report.leftovers_removed = self.remove_leftovers()?;
        Ok(report)
    }

    /// Renames an unsealed batch to a new id (so that moves of a prune still filling the old
    /// name fail from now on), then seals it.
    fn fence_and_seal(&self, batch: &str) -> Result<()> {
        let fenced = new_batch_id();
        match self.backend.rename(&format!("{TRASH}/{batch}"), &format!("{TRASH}/{fenced}")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("store {}: fencing unsealed trash batch {TRASH}/{batch}", self.location())));
            }
        }
        tracing::info!(batch, fenced, "fenced a trash batch an interrupted prune left unsealed");
        self.seal(&fenced)
    }

    /// Writes the seal: the sessions alive now, after the batch's last move.
    fn seal(&self, batch: &str) -> Result<()> {
        let sessions = self.list_dir(SESSIONS)?;
        let mut text = sessions.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        self.backend
            .write_new(&format!("{TRASH}/{batch}/{SEAL}"), text.as_bytes())
            .with_context(|| format!("store {}: sealing trash batch {TRASH}/{batch}", self.location()))?;
        Ok(())
    }

    /// Revokes every session whose heartbeat is older than `STALE_SESSION` by the store's
    /// clock, or whose process is gone from this host: renames its directory into
    /// `revoked/`, which makes its commits fail.
    fn revoke_stale_sessions(&self) -> Result<Vec<String>> {
        let now = self.store_clock()?;
        let mut revoked = Vec::new();
        for id in self.list_dir(SESSIONS)? {
            let dir = session_dir(&id);
            let beat = match self.backend.modified(&format!("{dir}/{ALIVE}")) {
                Ok(beat) => beat,
                // Not written yet, or its writer died first: the directory's own time says
                // when it was made.
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.backend.modified(&dir) {
                    Ok(made) => made,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            };
            let dead = match self.backend.read(&format!("{dir}/{ALIVE}")) {
                Ok(raw) => serde_json::from_slice::<SessionInfo>(&raw).is_ok_and(|info| info.process_is_gone()),
                Err(_) => false,
            };
            if !dead && now.duration_since(beat).unwrap_or_default() <= STALE_SESSION {
                continue;
            }
            self.backend.create_dir(REVOKED)?;
            match self.backend.rename(&dir, &format!("{REVOKED}/{id}")) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // it ended meanwhile
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("store {}: revoking stale session {dir}", self.location())));
                }
            }
            // When it was revoked, by the store's clock, for the removal a day later.
            self.backend.write_new(&format!("{REVOKED}/{id}/{REVOKED_MARK}"), b"")?;
            tracing::warn!(
                session = id,
                dead,
                "revoked a writer session whose process is gone or stopped over an hour ago"
            );
            revoked.push(id);
        }
        Ok(revoked)
    }

    /// Moves every object of `objects/` that `mark` lacks into a new batch, then seals it.
    fn trash_unmarked(&self, mark: &ChunkSet) -> Result<()> {
        let batch = new_batch_id();
        let batch_dir = format!("{TRASH}/{batch}");
        self.backend.create_dir(TRASH)?;
        self.backend.create_dir(&batch_dir)?;
        let mut moved = 0u64;
        for fan in self.list_dir("objects")? {
            for name in self.list_dir(&format!("objects/{fan}"))? {
                if !name.starts_with(&fan) || chunk_key(&name).is_none_or(|key| mark.contains(&key)) {
                    continue;
                }
                match self.backend.rename(&object_path(&name), &trash_path(&batch, &name)) {
                    Ok(()) => moved += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !self.backend.exists(super::CONFIG_PATH).unwrap_or(false) {
                            return Err(crate::error::usage(format!(
                                "store {}: the store is gone (its config file is no longer there: unmounted, moved \
                                 or deleted?) while prune was moving object {name}; stopping",
                                self.location()
                            )));
                        }
                        if !self.backend.exists(&batch_dir)? {
                            bail!(
                                "store {}: another prune fenced this prune's trash batch {batch_dir} (this prune's lock \
                                 was taken over as stale); stopping",
                                self.location()
                            );
                        }
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("store {}: moving object {name} into {batch_dir}", self.location())));
                    }
                }
            }
        }
        if moved == 0 {
            self.backend.remove_dir(&batch_dir)?;
            return Ok(());
        }
        self.seal(&batch)
    }

    /// `None` for an unsealed batch; else whether every session its seal lists is gone.
    fn batch_state(&self, batch: &str) -> Result<Option<BatchState>> {
        let seal = match self.backend.read(&format!("{TRASH}/{batch}/{SEAL}")) {
            Ok(seal) => seal,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut live = Vec::new();
        for id in String::from_utf8_lossy(&seal).lines().filter(|l| !l.is_empty()) {
            if self.backend.exists(&session_dir(id))? {
                live.push(id.to_owned());
            }
        }
        Ok(Some(if live.is_empty() { BatchState::Ready } else { BatchState::Waiting(live) }))
    }

    /// Objects in a batch and their bytes.
    fn batch_size(&self, batch: &str) -> Result<(u64, u64)> {
        let (mut objects, mut bytes) = (0, 0);
        for name in self.list_dir(&format!("{TRASH}/{batch}"))? {
            if is_hex_id(&name) {
                objects += 1;
                bytes += self.backend.size(&trash_path(batch, &name)).unwrap_or(0);
            }
        }
        Ok((objects, bytes))
    }

    /// Moves back what `named` names (or drops the trash copy when `objects/` has the object
    /// again), deletes the rest, then removes the batch. Each step may be repeated by a later
    /// prune if this one is killed.
    fn finish_batch(&self, batch: &str, named: &ChunkSet, report: &mut GcReport) -> Result<()> {
        let dir = format!("{TRASH}/{batch}");
        let context = || format!("store {}: finishing trash batch {dir}", self.location());
        for name in self.list_dir(&dir)? {
            let Some(key) = chunk_key(&name) else { continue };
            let trashed = trash_path(batch, &name);
            if named.contains(&key) {
                let home = object_path(&name);
                if self.backend.exists(&home)? {
                    self.backend.remove(&trashed).with_context(context)?;
                } else {
                    self.backend.create_dir(&format!("objects/{}", &name[..2])).with_context(context)?;
                    match self.backend.rename(&trashed, &home) {
                        Ok(()) => report.objects_restored += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(anyhow::Error::new(e).context(context())),
                    }
                }
            } else {
                let size = match self.backend.size(&trashed) {
                    Ok(size) => size,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(anyhow::Error::new(e).context(context())),
                };
                self.backend.remove(&trashed).with_context(context)?;
                report.objects_deleted += 1;
                report.bytes_deleted += size;
            }
        }
        for temp in self.backend.list_unfinished(&dir)? {
            self.backend.remove(&format!("{dir}/{temp}")).with_context(context)?;
        }
        self.backend.remove(&format!("{dir}/{SEAL}")).with_context(context)?;
        self.backend.remove_dir(&dir).with_context(context)?;
        Ok(())
    }

    /// Removes unfinished writes older than a day (a writer killed mid-write) in every
    /// directory writers use, revoked sessions revoked over a day ago, and clock probes a
    /// killed process left. Ages are by the store's clock.
    fn remove_leftovers(&self) -> Result<u64> {
        let now = self.store_clock()?;
        let old = |path: &str| -> Result<bool> {
            Ok(match self.backend.modified(path) {
                Ok(t) => now.duration_since(t).unwrap_or_default() > LEFTOVER_AGE,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            })
        };
        let mut dirs: Vec<String> = vec![String::new(), "locks".into()];
        for top in ["objects", "snapshots", SESSIONS, TRASH, REVOKED] {
            dirs.push(top.into());
            dirs.extend(self.list_dir(top)?.into_iter().map(|d| format!("{top}/{d}")));
        }
        let mut removed = 0;
        for dir in &dirs {
            for temp in self.backend.list_unfinished(dir)? {
                let path = if dir.is_empty() { temp } else { format!("{dir}/{temp}") };
                if old(&path)? {
                    self.backend.remove(&path)?;
                    removed += 1;
                }
            }
        }
        for name in self.list_dir("locks")? {
            let path = format!("locks/{name}");
            if name.starts_with("clock-") && old(&path)? {
                self.backend.remove(&path)?;
                removed += 1;
            }
        }
        for id in self.list_dir(REVOKED)? {
            let dir = format!("{REVOKED}/{id}");
            let mark = format!("{dir}/{REVOKED_MARK}");
            let since = if self.backend.exists(&mark)? { mark.clone() } else { dir.clone() };
            if !old(&since)? {
                continue;
            }
            for name in self.list_dir(&dir)?.into_iter().chain(self.backend.list_unfinished(&dir)?) {
                self.backend.remove(&format!("{dir}/{name}"))?;
            }
            self.backend.remove_dir(&dir)?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{snapshot::Snapshot, store::hash_hex};

    fn new_store() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("store").to_string_lossy().into_owned();
        Store::init(&location).unwrap();
        (dir, location)
    }

    fn put(store: &Store, data: &[u8]) -> String {
        let id = hash_hex(data);
        store.put_object(&id, data).unwrap();
        id
    }

    fn snapshot_naming(chunks: &[&str]) -> Snapshot {
        Snapshot::naming_chunks("r", chrono::Utc::now(), chunks)
    }

    fn mark_of(store: &Store) -> ChunkSet {
        store.named_chunks().unwrap().unwrap()
    }

    fn in_objects(store: &Store, id: &str) -> bool {
        store.backend.exists(&object_path(id)).unwrap()
    }

    #[test]
    fn garbage_is_deleted_at_once_when_no_backup_runs() {
        let (_dir, location) = new_store();
        let writer = Store::open(&location).unwrap();
        writer.ensure_session().unwrap();
        let (named, garbage) = (put(&writer, b"named"), put(&writer, b"garbage"));
        writer.write_snapshot(&snapshot_naming(&[&named])).unwrap();
        drop(writer);
        let prune = Store::open(&location).unwrap();
        let report = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!((report.objects_deleted, report.objects_pending), (1, 0));
        assert!(report.bytes_deleted > 0);
        assert!(in_objects(&prune, &named) && !in_objects(&prune, &garbage));
        assert!(prune.backend.list(TRASH).unwrap().is_empty(), "the batch was finished and removed");
        assert!(prune.backend.list(SESSIONS).unwrap().is_empty(), "the writer's session ended with it");
    }

    #[test]
    fn a_batch_waits_for_a_session_alive_at_its_seal_and_gives_back_what_it_commits() {
        let (_dir, location) = new_store();
        let writer = Store::open(&location).unwrap();
        writer.ensure_session().unwrap();
        let (reused, abandoned) = (put(&writer, b"reused"), put(&writer, b"abandoned"));
        let prune = Store::open(&location).unwrap();
        let first = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!((first.objects_deleted, first.objects_pending, first.sessions_waited_for), (0, 2, 1));
        // The backup saw `reused` before the prune moved it: readers still find it, dedup no
        // longer does.
        assert!(!writer.has_object(&reused).unwrap());
        assert_eq!(writer.get_object(&reused).unwrap(), b"reused");
        writer.write_snapshot(&snapshot_naming(&[&reused])).unwrap();
        let second = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!(second.objects_pending, 2, "the batch waits while the session runs");
        drop(writer);
        let third = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!((third.objects_deleted, third.objects_restored, third.objects_pending), (1, 1, 0));
        assert!(in_objects(&prune, &reused) && !in_objects(&prune, &abandoned));
        assert!(prune.get_object(&abandoned).is_err());
        assert!(prune.backend.list(TRASH).unwrap().is_empty());
    }

    #[test]
    fn a_stale_session_is_revoked_and_its_commit_fails() {
        let (_dir, location) = new_store();
        let writer = Store::open(&location).unwrap();
        writer.ensure_session().unwrap();
        let chunk = put(&writer, b"written before the stall");
        let session = writer.session_id().unwrap();
        let alive = std::path::Path::new(&location).join(session_dir(&session)).join(ALIVE);
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
        std::fs::File::options().write(true).open(&alive).unwrap().set_modified(two_hours_ago).unwrap();
        let prune = Store::open(&location).unwrap();
        let report = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!(report.sessions_revoked, std::slice::from_ref(&session));
        assert_eq!((report.objects_deleted, report.objects_pending), (1, 0), "nothing waits for a revoked session");
        let err = writer.write_snapshot(&snapshot_naming(&[&chunk])).unwrap_err();
        assert!(format!("{err:#}").contains("prune revoked its session"), "{err:#}");
        assert!(prune.snapshot_entries(None).unwrap().is_empty(), "no snapshot was committed");
        assert!(prune.backend.exists(&format!("{REVOKED}/{session}")).unwrap());
    }

    #[test]
    fn an_unsealed_batch_is_fenced_before_it_is_finished() {
        let (_dir, location) = new_store();
        let prune = Store::open(&location).unwrap();
        let (kept, dropped) = (put(&prune, b"kept"), put(&prune, b"dropped"));
        // An interrupted prune's batch: both objects moved, no seal.
        prune.backend.create_dir(TRASH).unwrap();
        prune.backend.create_dir(&format!("{TRASH}/old")).unwrap();
        for id in [&kept, &dropped] {
            prune.backend.rename(&object_path(id), &trash_path("old", id)).unwrap();
        }
        let mut writer = Store::open(&location).unwrap();
        writer.ensure_session().unwrap();
        writer.write_snapshot(&snapshot_naming(&[&kept])).unwrap();
        drop(std::mem::replace(&mut writer, Store::open(&location).unwrap()));
        let report = prune.collect_garbage(&mark_of(&prune)).unwrap();
        assert_eq!((report.objects_deleted, report.objects_restored), (1, 1));
        assert!(in_objects(&prune, &kept) && !in_objects(&prune, &dropped));
        // The old name is gone: a prune still filling it would fail, not add to a sealed batch.
        assert!(!prune.backend.exists(&format!("{TRASH}/old")).unwrap());
    }
}
