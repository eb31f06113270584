//! Which objects a snapshot chain holds, from the indexes of its packs in the store.
//!
//! An incremental snapshot may name an object of an earlier snapshot as a delta's base (a
//! thin pack) only when a restore of the chain will find it there. The chain's pack indexes
//! say so exactly; they are read from the store once, when the first question is asked
//! (many nights ask none), and kept as they are stored: binary search in the index bytes,
//! about 28 bytes an object of the chain (24 MiB for git.git's 850k objects).

use std::{cell::OnceCell, io::Read};

use anyhow::{Context, Result};
use gix::ObjectId;

use super::pack_index::{contains_v2, is_index_of};
use crate::store::{Store, StoredSnapshot, chunker::ChunkReader};

/// The objects of a chain's packs (every pack of every link, each once).
pub struct StoredObjects<'s> {
    store: &'s Store,
    /// (snapshot id, pack) for every pack of the chain, newest link first.
    packs: Vec<(String, crate::snapshot::PackRecord)>,
    indexes: OnceCell<Vec<Vec<u8>>>,
}

impl<'s> StoredObjects<'s> {
    pub fn new(store: &'s Store, chain: &[StoredSnapshot]) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut packs = Vec::new();
        for link in chain.iter().rev() {
            for pack in &link.snapshot.packs {
                if seen.insert(pack.checksum.clone()) {
                    packs.push((link.id.clone(), pack.clone()));
                }
            }
        }
        StoredObjects { store, packs, indexes: OnceCell::new() }
    }

    /// Whether some pack of the chain holds `id`.
    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        for index in self.indexes()? {
            if contains_v2(index, id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn indexes(&self) -> Result<&Vec<Vec<u8>>> {
        if let Some(indexes) = self.indexes.get() {
            return Ok(indexes);
        }
        let mut indexes = Vec::with_capacity(self.packs.len());
        for (snapshot, pack) in &self.packs {
            // A store on another host: this host keeps the indexes it wrote or read, so that
            // the night does not wait on the link for them (any copy that is that pack's
            // index will do: it is checked, and an index is determined by its pack).
            let checksum = ObjectId::from_hex(pack.checksum.as_bytes()).ok();
            let cached = checksum.and_then(|checksum| {
                self.store.cached_pack_index(&pack.checksum).filter(|index| is_index_of(index, &checksum))
            });
            if let Some(index) = cached {
                indexes.push(index);
                continue;
            }
            let mut index = Vec::new();
            ChunkReader::new(self.store, &pack.index)
                .read_to_end(&mut index)
                .with_context(|| format!("snapshot {snapshot}: reading the index of pack {}", pack.checksum))?;
            if checksum.is_some_and(|checksum| is_index_of(&index, &checksum)) {
                self.store.cache_pack_index(&pack.checksum, &index);
            }
            indexes.push(index);
        }
        Ok(self.indexes.get_or_init(|| indexes))
    }
}
