//! What this host last saw of an ssh:// store, kept on local disk (as restic and borg keep
//! an index cache): the store's config and each repository's latest snapshot manifest as
//! this host last wrote or read it. A backup then reads the source against the cached
//! previous snapshot while the ssh connection is still being opened (a handshake costs
//! about as much as a whole incremental backup of a large repository), and checks once
//! connected that the cache was right.
//!
//! The cache is never trusted: a manifest is used only when the store's latest snapshot is
//! the very file it was (snapshot ids are the hash of the manifest's bytes), and the config
//! only when the store's own reads the same. A cache that is stale, damaged, missing or
//! cannot be written only costs the time it would have saved.
//!
//! Layout: `$XDG_CACHE_HOME/repovault` (else `~/.cache/repovault`), one directory per store
//! named by the hash of its location, holding `config`, `latest/<repository key>` (the
//! manifest's bytes as stored), `indexes/<pack checksum>` (the index of each git pack this
//! host wrote or read, which an incremental backup reads to know what the chain holds:
//! 4 MB for tokio, 24 MB for git.git, otherwise over the link every night) and `created` when
//! this host made the store with `init`.
//!
//! Trimming: an entry is touched whenever it is used, and once a day (the `trimmed` marker's
//! age says when) pack indexes and latest snapshots not used for [`UNUSED_FOR`] are deleted
//! (and with a latest snapshot, the `created` marker, which vouches for the absent ones).
//! Without it the cache would keep the index of every pack the store ever held, pruned or
//! not, for every repository this host ever backed up: about 28 bytes an object.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{StoreConfig, StoredSnapshot, hash_hex, repo_key};

/// Pack indexes and latest snapshots unused this long are deleted: a repository this host
/// has not backed up for a month pays one read over the link when it is backed up again.
const UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the cache is trimmed: it lists every entry, so not at every backup.
const TRIM_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The cache of one store.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache of the store at `location`; `None` when there is no home for caches.
    pub fn for_store(location: &str) -> Option<Cache> {
        let root =
            std::env::var_os("XDG_CACHE_HOME").filter(|dir| Path::new(dir).is_absolute()).map(PathBuf::from).or_else(
                || std::env::var_os("HOME").filter(|home| !home.is_empty()).map(|h| Path::new(&h).join(".cache")),
            )?;
        Some(Cache { dir: root.join("repovault").join(&hash_hex(location.as_bytes())[..32]) })
    }

    /// The store's config as last read, when the cache holds one that parses.
    pub fn config(&self) -> Option<StoreConfig> {
        let raw = std::fs::read(self.dir.join("config")).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Keeps `config`, unless the cache already holds the same.
    pub fn save_config(&self, config: &StoreConfig) {
        let Ok(bytes) = serde_json::to_vec_pretty(config) else { return };
        if std::fs::read(self.dir.join("config")).is_ok_and(|cached| cached == bytes) {
            return;
        }
        self.write("config", &bytes);
    }

    /// The latest snapshot of `repo` as last seen, when its file reads and parses and names
    /// `repo`. Its id is the hash of the bytes read, so a damaged file is never taken for the
    /// snapshot it was: its id matches no snapshot in the store.
    pub fn latest(&self, repo: &str) -> Option<StoredSnapshot> {
        let path = self.dir.join("latest").join(repo_key(repo));
        let bytes = std::fs::read(&path).ok()?;
        touch(&path);
        let snapshot: crate::snapshot::Snapshot = serde_json::from_slice(&bytes).ok()?;
        (snapshot.repo == repo).then(|| StoredSnapshot { id: hash_hex(&bytes), snapshot })
    }

    /// Keeps `manifest` (its bytes as stored) as the latest snapshot of `repo`.
    pub fn save_latest(&self, repo: &str, manifest: &[u8]) {
        self.write(&format!("latest/{}", repo_key(repo)), manifest);
    }

    /// The pack index kept for the pack with trailing checksum `pack` (hex), unchecked: the
    /// caller checks it is that pack's index before trusting it.
    pub fn pack_index(&self, pack: &str) -> Option<Vec<u8>> {
        let path = self.dir.join("indexes").join(pack);
        let bytes = std::fs::read(&path).ok()?;
        touch(&path);
        Some(bytes)
    }

    /// Keeps the index of pack `pack` (hex), read from or written to the store.
    pub fn save_pack_index(&self, pack: &str, index: &[u8]) {
        self.write(&format!("indexes/{pack}"), index);
    }

    /// Records that this host created the store (empty): a repository with no latest
    /// snapshot cached then had none when this host last looked.
    pub fn mark_created(&self) {
        self.write("created", b"");
    }

    /// Whether this host created the store (see [`Cache::mark_created`]).
    pub fn created_here(&self) -> bool {
        self.dir.join("created").exists()
    }

    /// Deletes the pack indexes and latest snapshots unused for [`UNUSED_FOR`], when the
    /// last trim was a day ago or more (or never happened).
    pub fn trim_if_due(&self) {
        self.trim_if_due_at(SystemTime::now());
    }

    fn trim_if_due_at(&self, now: SystemTime) {
        let marker = self.dir.join("trimmed");
        let last = std::fs::metadata(&marker).and_then(|m| m.modified()).ok();
        if last.is_some_and(|last| now.duration_since(last).map_or(true, |age| age < TRIM_EVERY)) {
            return;
        }
        // Marked first: other processes opening the store meanwhile need not trim too.
        self.write("trimmed", b"");
        let Some(cutoff) = now.checked_sub(UNUSED_FOR) else { return };
        let mut removed = 0;
        for kind in ["indexes", "latest"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(kind)) else { continue };
            for entry in entries.flatten() {
                let unused = entry.metadata().and_then(|m| m.modified()).is_ok_and(|used| used < cutoff);
                if unused && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                    if kind == "latest" {
                        // "Created here" means a repository with no latest cached has no
                        // snapshot: no longer true of one whose latest was trimmed (a backup
                        // would guess a first snapshot and send a whole pack for nothing).
                        let _ = std::fs::remove_file(self.dir.join("created"));
                    }
                }
            }
        }
        tracing::debug!(cache = %self.dir.display(), removed, "trimmed the store's cache");
    }

    /// Forgets everything kept for this store.
    pub fn clear(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(cache = %self.dir.display(), error = %e, "cannot clear the store's cache");
        }
    }

    #[cfg(test)]
    fn at(dir: &Path) -> Cache {
        Cache { dir: dir.to_owned() }
    }

    /// Writes `name` whole or not at all (a temporary file renamed into place), so that a
    /// reader never sees half a file; a failure is only logged: a cache that cannot be
    /// written costs speed, never a backup.
    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.dir.join(name);
        let written = (|| -> std::io::Result<()> {
            let parent = path.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(parent)?;
            let mut temp = tempfile::NamedTempFile::new_in(parent)?;
            temp.write_all(bytes)?;
            temp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = written {
            tracing::debug!(cache = %path.display(), error = %e, "cannot write the store's cache");
        }
    }
}

/// Marks a cache entry as used now (its modification time: what trimming goes by).
fn touch(path: &Path) {
    let touched =
        std::fs::File::options().append(true).open(path).and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(cache = %path.display(), error = %e, "cannot mark a cache entry as used");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let file = std::fs::File::options().append(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn entries_unused_for_a_month_are_trimmed_once_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let day = Duration::from_secs(24 * 3600);
        cache.save_pack_index("old", b"old index");
        cache.save_pack_index("used", b"used index");
        cache.save_pack_index("recent", b"recent index");
        cache.save_latest("old/repo", b"{}");
        cache.mark_created();
        for name in ["indexes/old", "indexes/used", &format!("latest/{}", repo_key("old/repo"))] {
            age(&dir.path().join(name), UNUSED_FOR + day);
        }
        age(&dir.path().join("indexes/recent"), UNUSED_FOR - day);
        // Reading an entry marks it used.
        assert_eq!(cache.pack_index("used").as_deref(), Some(&b"used index"[..]));

        cache.trim_if_due();
        assert_eq!(cache.pack_index("old"), None, "unused for over a month");
        assert_eq!(std::fs::read_dir(dir.path().join("latest")).unwrap().count(), 0, "unused for over a month");
        assert!(!cache.created_here(), "a repository without a latest cached may have snapshots now");
        assert!(cache.pack_index("used").is_some(), "used just now");
        assert!(cache.pack_index("recent").is_some(), "unused for less than a month");

        // Not again within the day, even for entries that became old meanwhile.
        age(&dir.path().join("indexes/recent"), UNUSED_FOR + day);
        cache.trim_if_due();
        assert!(dir.path().join("indexes/recent").exists(), "trimmed again within a day");
        cache.trim_if_due_at(SystemTime::now() + day);
        assert!(!dir.path().join("indexes/recent").exists(), "a day later it is trimmed");
    }
}
