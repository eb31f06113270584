//! Makes a synthetic store for `scripts/bench-prune`: REPOS repositories with NIGHTS nightly
//! snapshots each (one a day from 2026-01-01), written through the library as a backup
//! would write them. Each night adds one small pack of its own (a few KiB, unique) and
//! names the packs before it, with a full snapshot every 20 nights, as format 3 backups do.
//! What prune's cost depends on (manifests to read, chunks to mark and list, files to move
//! and delete) is there; git data is not (prune never reads it).
//!
//!     cargo run --release --example make-prune-store -- STORE REPOS NIGHTS

use anyhow::{Context, Result, bail};
use chrono::{Duration, TimeZone, Utc};
use repovault::{
    snapshot::{PackRecord, Snapshot, Vcs},
    store::{Store, chunker::ChunkList, hash_hex},
};

/// A night's new data: unique bytes, so nothing deduplicates across nights or repositories.
fn night_data(repo: usize, night: usize, what: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(4096);
    let mut x = (repo as u64) << 32 | night as u64;
    while data.len() < 4096 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.extend_from_slice(what.as_bytes());
    data
}

fn stored(store: &Store, data: &[u8]) -> Result<ChunkList> {
    let id = hash_hex(data);
    store.put_object(&id, data)?;
    Ok(ChunkList { size: data.len() as u64, chunks: vec![id] })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, repos, nights] = args.as_slice() else {
        bail!("usage: make-prune-store STORE REPOS NIGHTS");
    };
    let repos: usize = repos.parse().context("REPOS")?;
    let nights: usize = nights.parse().context("NIGHTS")?;
    Store::init(path)?;
    let store = Store::open(path)?;
    store.ensure_session()?;
    let first_night = Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap();
    for repo in 0..repos {
        let name = format!("group{}/repo-{repo}", repo % 50);
        let mut packs: Vec<PackRecord> = Vec::new();
        let mut parent = None;
        for night in 0..nights {
            if night % 20 == 0 {
                packs.clear();
                parent = None;
            }
            let pack = stored(&store, &night_data(repo, night, "pack"))?;
            let index = stored(&store, &night_data(repo, night, "index"))?;
            packs.push(PackRecord { checksum: pack.chunks[0][..40].to_owned(), objects: 1, pack, index, thin: false });
            let created_at = first_night + Duration::days(night as i64);
            let snapshot = Snapshot {
                repo: name.clone(),
                vcs: Vcs::Git,
                created_at,
                source_changed_at: created_at,
                source_fingerprint: None,
                parent: parent.clone(),
                head: Some("refs/heads/main".into()),
                head_detached: None,
                refs: [("refs/heads/main".to_owned(), format!("{:040x}", repo * 1000 + night))].into(),
                symbolic_refs: Default::default(),
                object_format: "sha1".into(),
                packs: packs.clone(),
                new_packs: Some(1),
                packs_hold_unreachable: Some(false),
                bundles: Vec::new(),
                new_bundles: None,
                files: Default::default(),
                heads: Vec::new(),
                source_path: format!("/srv/git/{name}.git"),
                hostname: "bench".into(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
            };
            parent = Some(store.write_snapshot(&snapshot)?);
        }
    }
    Ok(())
}
