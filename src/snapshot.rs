//! The snapshot manifest: what one backup of one repository recorded. Serialized as JSON
//! into `snapshots/<repo key>/<id>`, where the id is the BLAKE3 hash of those bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::chunker::ChunkList;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vcs {
    Git,
    Hg,
}

impl std::fmt::Display for Vcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vcs::Git => "git",
            Vcs::Hg => "hg",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub repo: String,
    pub vcs: Vcs,
    pub created_at: DateTime<Utc>,
    /// When the source last changed, as far as the source could tell us (newest ref update).
    pub source_changed_at: DateTime<Utc>,
    /// Fingerprint of the source's ref files when the snapshot was taken (taken before the
    /// refs were read): `run` compares it with the source's current one to skip unchanged
    /// repositories without reading them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_fingerprint: Option<String>,
    /// The snapshot this one is incremental to; `None` for a full snapshot.
    pub parent: Option<String>,
    /// HEAD's symbolic target, `None` when HEAD is detached (see `head_detached`).
    pub head: Option<String>,
    /// HEAD's object id when it is detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_detached: Option<String>,
    /// Every direct ref: name to the object id it points at (not peeled).
    pub refs: BTreeMap<String, String>,
    /// Symbolic refs other than HEAD: name to the ref they point at.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub symbolic_refs: BTreeMap<String, String>,
    /// "sha1" or "sha256" for git.
    pub object_format: String,
    /// Store format 3 on: every pack the snapshot needs, in restore order (oldest first),
    /// those it inherited from earlier snapshots and its new one. Formats 1 and 2: only the
    /// data new in this snapshot (the rest is in its parent chain).
    pub packs: Vec<PackRecord>,
    /// Store format 3 on: how many packs at the end of `packs` this snapshot stored (the
    /// others it inherited). Absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_packs: Option<usize>,
    /// Store format 3 on: whether `packs` may hold objects that `refs` no longer reach (a
    /// branch deleted or force-pushed since the packs were written), which a restore must
    /// then leave out. Absent in older snapshots: unknown, so taken as `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs_hold_unreachable: Option<bool>,
    /// Mercurial: the changegroup bundles (`hg bundle` output) the snapshot needs, in the
    /// order they are applied: the last full one and each later one up to its own, those it
    /// inherited and its new one (as format 3 `packs`, whatever the store's format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<BundleRecord>,
    /// Mercurial: how many bundles at the end of `bundles` this snapshot stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bundles: Option<usize>,
    /// Mercurial: files of the repository that no bundle carries, byte for byte (path from
    /// the repository's root, e.g. `.hg/bookmarks`, to content): bookmarks, phases,
    /// obsolescence markers, local tags, hgrc, requirements. A file the source lacked is
    /// absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, ChunkList>,
    /// Mercurial: every head (visible, hidden and secret changesets alike), by node: the
    /// bases of the next snapshot's bundle, and what a restore must end with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<String>,
    /// Where and how the snapshot was made, for people reading the store.
    pub source_path: String,
    pub hostname: String,
    pub tool_version: String,
}

/// One git pack (with its index) stored as chunked streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    /// The pack's own trailing checksum (hex), which git names the pack files after.
    pub checksum: String,
    pub objects: u64,
    pub pack: ChunkList,
    pub index: ChunkList,
    /// Whether some entries are deltas against objects of earlier snapshots of the chain
    /// (REF_DELTA entries whose base is not in this pack). Such a pack is completed with
    /// those bases when it is restored. Store format 2 on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thin: bool,
}

/// One Mercurial changegroup bundle stored as a chunked stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// The bundle file as `hg bundle` wrote it.
    pub bundle: ChunkList,
    /// The changesets it adds.
    pub changesets: u64,
}

impl Snapshot {
    /// Every chunk list the snapshot names: what must be in the store for it to restore
    /// (packs and their indexes, bundles, files).
    pub fn chunk_lists(&self) -> impl Iterator<Item = &ChunkList> {
        self.packs
            .iter()
            .flat_map(|p| [&p.pack, &p.index])
            .chain(self.bundles.iter().map(|b| &b.bundle))
            .chain(self.files.values())
    }

    /// Every chunk the snapshot names.
    pub fn chunks(&self) -> impl Iterator<Item = &crate::store::ObjectId> {
        self.chunk_lists().flat_map(|list| &list.chunks)
    }

    /// The bundles this snapshot stored, as opposed to those it inherited.
    pub fn bundles_stored_here(&self) -> &[BundleRecord] {
        let new = self.new_bundles.unwrap_or(self.bundles.len()).min(self.bundles.len());
        &self.bundles[self.bundles.len() - new..]
    }

    /// Bytes of history (packs, bundles) this snapshot stored itself.
    pub fn new_history_bytes(&self) -> u64 {
        self.packs_stored_here().iter().map(|p| p.pack.size).sum::<u64>()
            + self.bundles_stored_here().iter().map(|b| b.bundle.size).sum::<u64>()
    }

    /// The short form shown to people; any unique prefix works for `--at`.
    pub fn short_id(id: &str) -> &str {
        &id[..id.len().min(12)]
    }

    /// For unit tests: a full snapshot of `repo` made at `created_at` whose one pack is the
    /// stream of `chunks` (with an empty index).
    #[cfg(test)]
    pub(crate) fn naming_chunks(repo: &str, created_at: DateTime<Utc>, chunks: &[&str]) -> Snapshot {
        let list = ChunkList { size: 0, chunks: chunks.iter().map(|c| (*c).to_owned()).collect() };
        Snapshot {
            repo: repo.into(),
            vcs: Vcs::Git,
            created_at,
            source_changed_at: created_at,
            source_fingerprint: None,
            parent: None,
            head: None,
            head_detached: None,
            refs: Default::default(),
            symbolic_refs: Default::default(),
            object_format: "sha1".into(),
            packs: vec![PackRecord {
                checksum: "c".into(),
                objects: 1,
                pack: list,
                index: ChunkList::default(),
                thin: false,
            }],
            new_packs: Some(1),
            packs_hold_unreachable: Some(false),
            bundles: Vec::new(),
            new_bundles: None,
            files: Default::default(),
            heads: Vec::new(),
            source_path: format!("/{repo}"),
            hostname: "h".into(),
            tool_version: "t".into(),
        }
    }

    /// The packs this snapshot stored, as opposed to those it inherited.
    pub fn packs_stored_here(&self) -> &[PackRecord] {
        let new = self.new_packs.unwrap_or(self.packs.len()).min(self.packs.len());
        &self.packs[self.packs.len() - new..]
    }

    /// Whether a restore must leave out objects the refs do not reach (see
    /// `packs_hold_unreachable`); unknown counts as yes.
    pub fn may_hold_unreachable(&self) -> bool {
        self.packs_hold_unreachable.unwrap_or(true)
    }
}
