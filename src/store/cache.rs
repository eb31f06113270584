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

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use super::{StoreConfig, StoredSnapshot, hash_hex, repo_key};

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
        let bytes = std::fs::read(self.dir.join("latest").join(repo_key(repo))).ok()?;
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
        std::fs::read(self.dir.join("indexes").join(pack)).ok()
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

    /// Forgets everything kept for this store.
    pub fn clear(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(cache = %self.dir.display(), error = %e, "cannot clear the store's cache");
        }
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
