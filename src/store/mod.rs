//! The repository layer: a content-addressed object store plus snapshot manifests, on top
//! of a [`Backend`]. The layout and encodings are specified in docs/FORMAT.md; anything
//! changed here must change there too, with the format version.

pub mod backend;
pub mod cache;
pub mod chunker;
pub mod gc;
pub mod local;
pub mod lock;
pub mod protocol;
pub mod runs;
pub mod session;
pub mod ssh;

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{error::usage, snapshot::Snapshot};
pub use backend::{Backend, RootState};
use local::LocalBackend;
pub use runs::RunRecord;

/// The store format this binary writes into new stores. See docs/FORMAT.md.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest store format this binary reads and writes. A store keeps the version it was
/// created with (other binaries may still use it): version 1 gets only self-contained packs,
/// versions 1 and 2 get snapshots chained to their parents.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
const CONFIG_PATH: &str = "config";
const MAGIC: &str = "repovault-store";

/// Encoding byte that starts every object file.
const ENCODING_RAW: u8 = 0;
const ENCODING_ZSTD: u8 = 1;
/// zstd level: pack data is mostly zlib-compressed already, so a high level buys nothing.
const ZSTD_LEVEL: i32 = 3;
/// No object is larger than the largest chunk fastcdc can cut.
const MAX_OBJECT_SIZE: u64 = fastcdc::v2020::MAXIMUM_MAX as u64;

/// The store's `config` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    pub magic: String,
    pub format: u32,
    pub id: String,
    pub chunking: ChunkParams,
}

/// Content-defined chunking parameters, fixed per store so that every writer cuts the same
/// data at the same places (that is what makes re-sent data deduplicate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkParams {
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkParams {
    /// About 2 MiB a chunk: pack data does not deduplicate below the pack, so chunks serve
    /// streaming and re-runs, and larger ones mean fewer files and fsyncs.
    fn default() -> Self {
        ChunkParams { algorithm: "fastcdc-v2020".into(), min_size: 512 << 10, avg_size: 2 << 20, max_size: 8 << 20 }
    }
}

/// The BLAKE3 name of an object: 64 lowercase hex digits.
pub type ObjectId = String;

pub fn hash_hex(data: &[u8]) -> ObjectId {
    blake3::hash(data).to_hex().to_string()
}

/// A set of object names held as their 32 bytes rather than 64 hex digits: prune's mark
/// holds every chunk of the store.
pub type ChunkSet = HashSet<[u8; 32]>;

/// The 32 bytes an object name stands for; `None` for a string that is not one.
pub fn chunk_key(id: &str) -> Option<[u8; 32]> {
    if !is_hex_id(id) {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(id.as_bytes().chunks(2)) {
        let digit = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(key)
}

fn object_path(id: &str) -> String {
    format!("objects/{}/{}", &id[..2], id)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What `put_object` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOutcome {
    /// Bytes written to the store (0 when the object was already there).
    pub stored_bytes: u64,
}

/// File names of snapshots start with their creation time in this format, so that a
/// directory listing is already in time order.
pub(crate) const STAMP_FORMAT: &str = "%Y%m%dT%H%M%S%.9fZ";

/// A snapshot file found by listing, not yet read.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub path: String,
    pub id: String,
    /// The repository's directory key (see [`repo_key`]).
    pub key: String,
    stamp: String,
}

impl SnapshotEntry {
    /// When the snapshot was made, as its file name says: known even when the file is
    /// damaged. `None` for a stamp that does not parse.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        NaiveDateTime::parse_from_str(&self.stamp, STAMP_FORMAT).ok().map(|t| t.and_utc())
    }
}

/// A snapshot as found in the store: its id and its manifest.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub id: String,
    pub snapshot: Snapshot,
}

/// The reason a snapshot file that was read is unusable: it no longer hashes to its name,
/// or does not parse. Kept apart from I/O errors (an unreachable store) in the error chain,
/// so that callers can tell "this manifest is damaged" from "the store cannot be read".
#[derive(Debug)]
pub struct ManifestDamage(pub String);

impl std::fmt::Display for ManifestDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestDamage {}

/// True when `err` says a manifest's content is damaged (not that it could not be read).
pub fn is_manifest_damage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<ManifestDamage>())
}

/// A snapshot file that cannot be read or no longer hashes to its name.
#[derive(Debug)]
pub struct DamagedSnapshot {
    pub entry: SnapshotEntry,
    /// The repository, when known (asked for by name, or named by another of its snapshots).
    pub repo: Option<String>,
    pub error: anyhow::Error,
}

impl DamagedSnapshot {
    /// How to name the repository in a message when its name is unknown.
    pub fn repo_label(&self) -> String {
        match &self.repo {
            Some(repo) => repo.clone(),
            None => format!("(unknown: every snapshot under snapshots/{} is damaged)", self.entry.key),
        }
    }

    /// Whether its content is damaged (it no longer hashes or parses), as opposed to a file
    /// that could not be read at all.
    pub fn is_damage(&self) -> bool {
        is_manifest_damage(&self.error)
    }

    /// Why it is unusable, without the store and path (which the caller names itself).
    pub fn reason(&self) -> String {
        match self.error.chain().find_map(|cause| cause.downcast_ref::<ManifestDamage>()) {
            Some(damage) => damage.to_string(),
            None => format!("cannot be read: {}", self.error.root_cause()),
        }
    }
}

/// Where a snapshot's chain stops short of a full snapshot: `child` names `parent`, and
/// `parent` is damaged or not in the store at all (forgotten, or deleted by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub child: String,
    pub parent: String,
    pub parent_damaged: bool,
}

impl ChainBreak {
    /// Why snapshot `id` (whose chain this break is on) cannot be restored.
    pub fn describe(&self, id: &str) -> String {
        let what = if self.parent_damaged { "is damaged" } else { "is missing (forgotten or deleted)" };
        let parent = Snapshot::short_id(&self.parent);
        if self.child == id {
            format!("its parent {parent} {what}")
        } else {
            format!("its chain is broken: {parent}, parent of {}, {what}", Snapshot::short_id(&self.child))
        }
    }
}

/// For every readable snapshot whose chain does not reach a full snapshot through readable
/// snapshots, where the chain breaks (the break nearest to it). Snapshots not in the map
/// are restorable as far as manifests tell. Only stores before format 3 have chains: pass
/// [`Store::snapshots_are_complete`] as `complete`.
pub fn chain_breaks(
    complete: bool,
    good: &[StoredSnapshot],
    damaged: &[DamagedSnapshot],
) -> HashMap<String, ChainBreak> {
    if complete {
        return HashMap::new();
    }
    let parents: HashMap<&str, Option<&str>> =
        good.iter().map(|s| (s.id.as_str(), s.snapshot.parent.as_deref())).collect();
    let damaged: HashSet<&str> = damaged.iter().map(|d| d.entry.id.as_str()).collect();
    // Known answers, so that each link is walked once however long the chains.
    let mut known: HashMap<&str, Option<ChainBreak>> = HashMap::new();
    for start in good {
        let mut path: Vec<&str> = Vec::new();
        let mut current = start.id.as_str();
        let verdict = loop {
            if let Some(answer) = known.get(current) {
                break answer.clone();
            }
            if path.contains(&current) {
                // Ids are content hashes, so only a forged store has a cycle: it never
                // reaches a full snapshot.
                break Some(ChainBreak { child: current.to_owned(), parent: current.to_owned(), parent_damaged: true });
            }
            path.push(current);
            match parents.get(current).copied().flatten() {
                None => break None,
                Some(parent) if parents.contains_key(parent) => current = parent,
                Some(parent) => {
                    break Some(ChainBreak {
                        child: current.to_owned(),
                        parent: parent.to_owned(),
                        parent_damaged: damaged.contains(parent),
                    });
                }
            }
        };
        for id in path {
            known.insert(id, verdict.clone());
        }
    }
    known.into_iter().filter_map(|(id, verdict)| verdict.map(|v| (id.to_owned(), v))).collect()
}

/// What a walk up a snapshot's chain found.
#[derive(Debug)]
pub enum ChainState {
    /// Every link reads and hashes: the chain, oldest first.
    Complete(Vec<StoredSnapshot>),
    /// A parent is damaged or missing: the snapshot cannot be restored.
    Broken(ChainBreak),
}

pub struct Store {
    backend: std::sync::Arc<dyn Backend>,
    config: StoreConfig,
    /// Bytes of objects this process has written, for progress displays.
    stored_bytes: AtomicU64,
    /// This process's writer session, once it asked for one; ended when the Store is dropped.
    /// Read-only commands never have one.
    session: std::sync::Mutex<Option<session::Session>>,
    /// What this host last saw of the store, for stores on another host.
    cache: Option<cache::Cache>,
    /// `config` came from the cache and the store's own has not been read yet
    /// ([`Store::open_speculating`]): it is read before the session starts.
    config_unconfirmed: AtomicBool,
    /// Objects are written only inside the writer session ([`Store::ensure_session`]): set
    /// while a backup reads its source before the session could start.
    writes_need_session: AtomicBool,
}

/// A backup started from a cached config or manifest that the store contradicts: it is
/// started again without the cache (see [`cache`]).
#[derive(Debug)]
pub struct StaleCache(pub String);

impl std::fmt::Display for StaleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StaleCache {}

/// True when `err` says the cache a backup started from was stale.
pub fn is_stale_cache(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<StaleCache>())
}

/// A repository's latest snapshot, as `backup` and `run` need to know it.
#[derive(Debug)]
pub enum Latest {
    /// The repository has no snapshot.
    None,
    Readable(Box<StoredSnapshot>),
    /// The newest snapshot file is damaged: nothing can be chained to it until it is
    /// forgotten.
    Damaged(DamagedSnapshot),
}

/// Result of `Store::init`.
pub enum InitOutcome {
    Created,
    AlreadyAStore,
}

/// How to reach an ssh:// store (unused for local ones): the config's `ssh_command` and
/// `remote_command`, or `--remote-command`. `REPOVAULT_RSH` wins over `ssh_command`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub ssh_command: Option<String>,
    pub remote_command: Option<String>,
    /// How long a request waits for its answer (`ssh_timeout`; `None`: the default).
    pub request_timeout: Option<std::time::Duration>,
}

fn open_backend(location: &str, access: &Access) -> Result<std::sync::Arc<dyn Backend>> {
    if location.is_empty() {
        return Err(usage("no store given: pass --store, set REPOVAULT_STORE or `store` in the config file"));
    }
    if location.starts_with("ssh://") {
        return Ok(std::sync::Arc::new(ssh::SshBackend::new(location, access)?));
    }
    Ok(std::sync::Arc::new(LocalBackend::new(location)))
}

/// Reads and checks a store's config; every error names `location` and is the user's to
/// fix (exit 2).
fn read_config(backend: &dyn Backend, location: &str) -> Result<StoreConfig> {
    let raw = match backend.read(CONFIG_PATH) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(usage(format!(
                "store {location}: not a repovault store (no config file); create one with `repovault init --store {location}`"
            )));
        }
        Err(e) => {
            return Err(usage(format!("store {location}: cannot read its config: {e}")));
        }
    };
    let config: StoreConfig =
        serde_json::from_slice(&raw).map_err(|e| usage(format!("store {location}: config file is damaged: {e}")))?;
    check_config(&config, location)?;
    Ok(config)
}

fn check_config(config: &StoreConfig, location: &str) -> Result<()> {
    if config.magic != MAGIC {
        return Err(usage(format!("store {location}: config file is not a repovault store config")));
    }
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&config.format) {
        return Err(usage(format!(
            "store {location}: format version {} is not supported by this repovault (it reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
            config.format
        )));
    }
    Ok(())
}

/// Whether two configs describe the same store the same way.
fn same_config(a: &StoreConfig, b: &StoreConfig) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

impl Store {
    /// [`Store::init_with`] with the default ssh access.
    pub fn init(location: &str) -> Result<InitOutcome> {
        Self::init_with(location, &Access::default())
    }

    /// Creates an empty store at `location`. An existing store is left alone; a non-empty
    /// directory that is not a store, or anything that is not a directory, is refused.
    /// Every error names `location`.
    pub fn init_with(location: &str, access: &Access) -> Result<InitOutcome> {
        let backend = open_backend(location, access)?;
        let state = backend.root_state().map_err(|e| usage(format!("store {location}: cannot examine it: {e}")))?;
        match state {
            RootState::NotADirectory => {
                return Err(usage(format!(
                    "store {location}: exists and is not a directory; give a new or empty directory"
                )));
            }
            RootState::NotEmpty => {
                let has_config = backend
                    .exists(CONFIG_PATH)
                    .map_err(|e| usage(format!("store {location}: cannot look inside the directory: {e}")))?;
                if has_config {
                    Self::open_with(location, access)?;
                    return Ok(InitOutcome::AlreadyAStore);
                }
                return Err(usage(format!(
                    "store {location}: directory is not empty and is not a repovault store; refusing to initialize it"
                )));
            }
            RootState::Missing | RootState::Empty => {}
        }
        backend.create_root().map_err(|e| usage(format!("store {location}: cannot create the directory: {e}")))?;
        for dir in ["objects", "snapshots", "locks"] {
            backend.create_dir(dir).with_context(|| format!("store {location}: cannot create {dir}/"))?;
        }
        for fan in 0..=255u8 {
            backend
                .create_dir(&format!("objects/{fan:02x}"))
                .with_context(|| format!("store {location}: cannot create objects/{fan:02x}/"))?;
        }
        let config = StoreConfig {
            magic: MAGIC.into(),
            format: FORMAT_VERSION,
            id: format!("{:032x}", rand::random::<u128>()),
            chunking: ChunkParams::default(),
        };
        // The config is written last: a store without it is not a store, so an interrupted
        // init leaves nothing that looks finished.
        backend
            .write_new(CONFIG_PATH, &serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("store {location}: cannot write its config file"))?;
        // Whatever was cached for a store that was here before is of another store.
        if location.starts_with("ssh://")
            && let Some(cache) = cache::Cache::for_store(location)
        {
            cache.clear();
            cache.save_config(&config);
            cache.mark_created();
        }
        Ok(InitOutcome::Created)
    }

    /// [`Store::open_with`] with the default ssh access.
    pub fn open(location: &str) -> Result<Store> {
        Self::open_with(location, &Access::default())
    }

    /// Opens an existing store, checking its format version.
    pub fn open_with(location: &str, access: &Access) -> Result<Store> {
        let backend = open_backend(location, access)?;
        let config = read_config(backend.as_ref(), location)?;
        let cache = location.starts_with("ssh://").then(|| cache::Cache::for_store(location)).flatten();
        if let Some(cache) = &cache {
            cache.save_config(&config);
        }
        Ok(Store::with(backend, config, cache, false))
    }

    /// Opens a store for a backup without waiting for it when it is on another host and
    /// this host has its config cached: the connection opens in the background while the
    /// backup reads its source. The cached config is checked against the store's before the
    /// writer session starts ([`Store::ensure_session`]), which every write and every read
    /// a backup builds on waits for; a config that differs fails with [`StaleCache`].
    pub fn open_speculating(location: &str, access: &Access) -> Result<Store> {
        if location.starts_with("ssh://")
            && let Some(cache) = cache::Cache::for_store(location)
            && let Some(config) = cache.config().filter(|config| check_config(config, location).is_ok())
        {
            let backend = ssh::SshBackend::new(location, access)?;
            backend.connect_in_background();
            return Ok(Store::with(std::sync::Arc::new(backend), config, Some(cache), true));
        }
        Self::open_with(location, access)
    }

    fn with(
        backend: std::sync::Arc<dyn Backend>,
        config: StoreConfig,
        cache: Option<cache::Cache>,
        unconfirmed: bool,
    ) -> Store {
        if let Some(cache) = &cache {
            cache.trim_if_due();
        }
        Store {
            backend,
            config,
            stored_bytes: AtomicU64::new(0),
            session: std::sync::Mutex::new(None),
            cache,
            config_unconfirmed: AtomicBool::new(unconfirmed),
            writes_need_session: AtomicBool::new(false),
        }
    }

    /// The latest snapshot of `repo` as this host last saw it, for a store on another host:
    /// only a guess until the store confirms it.
    /// `Some(None)`: none, as far as this host knows (it created the store and never saw
    /// one); `None`: nothing is known.
    pub fn cached_latest(&self, repo: &str) -> Option<Option<StoredSnapshot>> {
        let cache = self.cache.as_ref()?;
        match cache.latest(repo) {
            Some(latest) => Some(Some(latest)),
            None => cache.created_here().then_some(None),
        }
    }

    /// The index of the git pack with trailing checksum `pack` (hex) as this host kept it,
    /// for a store on another host; unchecked (see [`cache::Cache::pack_index`]).
    pub fn cached_pack_index(&self, pack: &str) -> Option<Vec<u8>> {
        self.cache.as_ref()?.pack_index(pack)
    }

    /// Keeps the index of git pack `pack` on this host, for a store on another host.
    pub fn cache_pack_index(&self, pack: &str, index: &[u8]) {
        if let Some(cache) = &self.cache {
            cache.save_pack_index(pack, index);
        }
    }

    /// Forgets what the cache holds for this store (it was found stale).
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// From now on, objects are written only once the writer session has started.
    pub fn require_session_for_writes(&self) {
        self.writes_need_session.store(true, Ordering::Relaxed);
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Bytes of objects written through this `Store` so far (for progress displays; read
    /// from another thread while a backup runs).
    pub fn stored_bytes_so_far(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// Whether packs may hold deltas against earlier snapshots (format 2 on).
    pub fn supports_thin_packs(&self) -> bool {
        self.config.format >= 2
    }

    /// Whether every snapshot names every pack it needs (format 3 on), so that its `parent`
    /// is provenance only: forgetting a snapshot never breaks another. Before format 3 a
    /// snapshot names only its new data and needs its parent chain.
    pub fn snapshots_are_complete(&self) -> bool {
        self.config.format >= 3
    }

    /// Whether the store may hold Mercurial snapshots (format 4 on): binaries that know only
    /// earlier formats do not see their bundles, and their prune would delete them.
    pub fn holds_mercurial(&self) -> bool {
        self.config.format >= 4
    }

    /// Stores `data` under its BLAKE3 name, compressed with zstd when that saves at least
    /// an eighth. Already present objects are not written again.
    pub fn put_object(&self, id: &str, data: &[u8]) -> Result<PutOutcome> {
        // Whether the object is already there is a look into the store, which a prune must
        // know about first.
        if self.writes_need_session.load(Ordering::Relaxed) {
            self.ensure_session()?;
        }
        let path = object_path(id);
        if self.backend.exists(&path)? {
            return Ok(PutOutcome::default());
        }
        let encoded = encode(data)?;
        let written = self
            .backend
            .write_new(&path, &encoded)
            .with_context(|| format!("store {}: writing object {path}", self.location()))?;
        let stored_bytes = if written { encoded.len() as u64 } else { 0 };
        self.stored_bytes.fetch_add(stored_bytes, Ordering::Relaxed);
        Ok(PutOutcome { stored_bytes })
    }

    /// Registers this process as a writer (docs/FORMAT.md, "Prune"): a backup calls it before
    /// it looks at anything in the store. Idempotent and thread-safe: every backup of a `run`
    /// shares one session, which ends when the Store is dropped.
    pub fn ensure_session(&self) -> Result<()> {
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if session.is_none() {
            self.confirm_config()?;
            *session = Some(session::Session::start(self)?);
        }
        Ok(())
    }

    /// Reads the store's config when the one in use came from the cache: a store created
    /// anew at the same place (another id, format or chunking) makes the backup start again
    /// without the cache.
    fn confirm_config(&self) -> Result<()> {
        if !self.config_unconfirmed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let location = self.location();
        let config = read_config(self.backend.as_ref(), &location)?;
        if !same_config(&config, &self.config) {
            self.clear_cache();
            return Err(anyhow::Error::new(StaleCache(format!(
                "store {location}: its config is not the one cached on this host (a store created anew there?)"
            ))));
        }
        self.config_unconfirmed.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn session_id(&self) -> Option<String> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|s| s.id.clone())
    }

    /// Reads an object and checks that it still hashes to its name. An object missing from
    /// `objects/` is looked for in prune's unfinished trash batches: a snapshot committed
    /// while a prune ran may name one until that batch is finished.
    pub fn get_object(&self, id: &str) -> Result<Vec<u8>> {
        let (path, raw) = self.read_object_file(id).with_context(|| {
            format!("store {}: object {} is missing or unreadable", self.location(), object_path(id))
        })?;
        verified_content(id, &raw).with_context(|| format!("store {}: object {path} is damaged", self.location()))
    }

    /// The object's file, from `objects/` or a trash batch, and where it was found. Looked for
    /// a few times over: a prune finishing a batch moves objects back into `objects/`, and a
    /// prune fencing a batch renames it, between our looks.
    fn read_object_file(&self, id: &str) -> io::Result<(String, Vec<u8>)> {
        let path = object_path(id);
        for _ in 0..3 {
            match self.backend.read(&path) {
                Ok(raw) => return Ok((path, raw)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            for batch in self.backend.list(gc::TRASH)? {
                let trashed = gc::trash_path(&batch, id);
                match self.backend.read(&trashed) {
                    Ok(raw) => return Ok((trashed, raw)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::NotFound, "not in objects/ nor in any trash batch"))
    }

    /// Whether `objects/` holds the object: what a backup may reuse. Trash batches do not
    /// count (a prune may be about to delete what is there).
    pub fn has_object(&self, id: &str) -> Result<bool> {
        Ok(self.backend.exists(&object_path(id))?)
    }

    /// Bytes an object's file takes in `objects/` (as stored: compressed or not); 0 when it
    /// is not there.
    pub fn object_size(&self, id: &str) -> Result<u64> {
        if !is_hex_id(id) {
            return Ok(0);
        }
        let path = object_path(id);
        match self.backend.size(&path) {
            Ok(size) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("store {}: reading the size of {path}", self.location())))
            }
        }
    }

    /// The entries of a store directory (see [`Backend::list`]); an error names it.
    pub(crate) fn list_dir(&self, dir: &str) -> Result<Vec<String>> {
        self.backend.list(dir).with_context(|| format!("store {}: listing {dir}/", self.location()))
    }

    /// Every object id in the store.
    pub fn list_objects(&self) -> Result<Vec<ObjectId>> {
        let mut ids = Vec::new();
        for fan in self.list_dir("objects")? {
            for name in self.list_dir(&format!("objects/{fan}"))? {
                if is_hex_id(&name) && name.starts_with(&fan) {
                    ids.push(name);
                }
            }
        }
        Ok(ids)
    }

    /// Writes a snapshot manifest. Called only after every object it names is durable, so
    /// a snapshot that can be listed can be restored. Returns the snapshot id.
    ///
    /// The commit goes through this process's session (see [`Store::ensure_session`]): the
    /// manifest is written durably into `sessions/<id>/`, then renamed into `snapshots/`. If a
    /// prune revoked the session meanwhile, the rename's source is gone and nothing is
    /// committed: the prune may have deleted data this snapshot would name.
    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<String> {
        let repo = &snapshot.repo;
        let Some(session) = self.session_id() else {
            bail!(
                "store {}: repository {repo}: a snapshot can only be committed inside a writer session (Store::ensure_session)",
                self.location()
            );
        };
        let bytes = serde_json::to_vec_pretty(snapshot)?;
        let id = hash_hex(&bytes);
        let dir = format!("snapshots/{}", repo_key(repo));
        self.backend.create_dir(&dir)?;
        let file = format!("{}-{id}", snapshot.created_at.format(STAMP_FORMAT));
        let staged = format!("{}/{file}", session::session_dir(&session));
        let target = format!("{dir}/{file}");
        let revoked = || {
            anyhow::anyhow!(
                "store {}: repository {repo}: the snapshot was not committed: this backup stalled for longer than {} min \
                 (by the store's clock) and a prune revoked its session ({}/{session}); run it again",
                self.location(),
                session::STALE_SESSION.as_secs() / 60,
                session::REVOKED
            )
        };
        let session_gone = || !self.backend.exists(&session::session_dir(&session)).unwrap_or(true);
        if let Err(e) = self.backend.write_new(&staged, &bytes) {
            if session_gone() {
                return Err(revoked());
            }
            return Err(anyhow::Error::new(e)
                .context(format!("store {}: writing snapshot {id} of {repo} into {staged}", self.location())));
        }
        if let Err(e) = self.backend.rename(&staged, &target) {
            // On NFS a rename that reports failure may have happened (a retransmission).
            if self.backend.exists(&target).unwrap_or(false) {
                self.remember_latest(repo, &bytes);
                return Ok(id);
            }
            if session_gone() {
                return Err(revoked());
            }
            return Err(anyhow::Error::new(e).context(format!(
                "store {}: committing snapshot {id} of {repo} ({staged} to {target})",
                self.location()
            )));
        }
        self.remember_latest(repo, &bytes);
        Ok(id)
    }

    /// Keeps a manifest this process committed as the repository's latest in the cache (for
    /// stores on another host): the next backup starts from it.
    fn remember_latest(&self, repo: &str, manifest: &[u8]) {
        if let Some(cache) = &self.cache {
            cache.save_latest(repo, manifest);
        }
    }

    /// The snapshot files of one repository (or of all), oldest first, without reading them.
    pub fn snapshot_entries(&self, repo: Option<&str>) -> Result<Vec<SnapshotEntry>> {
        let keys = match repo {
            Some(repo) => vec![repo_key(repo)],
            None => self.list_dir("snapshots")?,
        };
        let mut entries = Vec::new();
        for key in keys {
            entries.extend(self.entries_under(&key)?);
        }
        entries.sort_by(|a, b| a.stamp.cmp(&b.stamp).then(a.id.cmp(&b.id)));
        Ok(entries)
    }

    fn entries_under(&self, key: &str) -> Result<Vec<SnapshotEntry>> {
        let mut entries = Vec::new();
        for file in self.list_dir(&format!("snapshots/{key}"))? {
            if let Some((stamp, id)) = file.split_once('-')
                && is_hex_id(id)
            {
                entries.push(SnapshotEntry {
                    path: format!("snapshots/{key}/{file}"),
                    id: id.to_owned(),
                    key: key.to_owned(),
                    stamp: stamp.to_owned(),
                });
            }
        }
        entries.sort_by(|a, b| a.stamp.cmp(&b.stamp).then(a.id.cmp(&b.id)));
        Ok(entries)
    }

    /// Reads a snapshot file, checking that it still hashes to its id. Damage (a file that
    /// no longer hashes or parses) is a [`ManifestDamage`] in the error chain; a file that
    /// cannot be read is an I/O error.
    pub fn load_snapshot(&self, entry: &SnapshotEntry) -> Result<StoredSnapshot> {
        let path = &entry.path;
        let bytes = self.backend.read(path).with_context(|| format!("store {}: reading {path}", self.location()))?;
        let damaged = |why: String| {
            anyhow::Error::new(ManifestDamage(why))
                .context(format!("store {}: snapshot {path} is damaged", self.location()))
        };
        if hash_hex(&bytes) != entry.id {
            return Err(damaged("it no longer hashes to its name".into()));
        }
        let snapshot = serde_json::from_slice(&bytes).map_err(|e| damaged(format!("it does not parse: {e}")))?;
        Ok(StoredSnapshot { id: entry.id.clone(), snapshot })
    }

    /// Removes a snapshot file durably (the directory is synced). The objects it named stay
    /// until a prune finds nothing needs them.
    pub fn remove_snapshot(&self, entry: &SnapshotEntry) -> Result<()> {
        self.backend
            .remove(&entry.path)
            .with_context(|| format!("store {}: removing snapshot {}", self.location(), entry.path))
    }

    /// The full path of a store file, for messages.
    pub fn file_location(&self, path: &str) -> String {
        format!("{}/{path}", self.location().trim_end_matches('/'))
    }

    /// Snapshots of one repository (or of all), oldest first. A damaged manifest is an error
    /// naming it: listing must not hide damage.
    pub fn snapshots(&self, repo: Option<&str>) -> Result<Vec<StoredSnapshot>> {
        let mut all = Vec::new();
        for entry in self.snapshot_entries(repo)? {
            let loaded = self.load_snapshot(&entry)?;
            if repo.is_none_or(|r| r == loaded.snapshot.repo) {
                all.push(loaded);
            }
        }
        Ok(all)
    }

    /// Snapshots of one repository (or of all), oldest first, and apart from them the
    /// snapshot files that cannot be read or no longer hash to their name. One damaged
    /// manifest must not hide the others: callers list what is readable and name the rest.
    pub fn snapshots_and_damage(&self, repo: Option<&str>) -> Result<(Vec<StoredSnapshot>, Vec<DamagedSnapshot>)> {
        let mut good = Vec::new();
        let mut damaged = Vec::new();
        for entry in self.snapshot_entries(repo)? {
            match self.load_snapshot(&entry) {
                Ok(loaded) if repo.is_none_or(|r| r == loaded.snapshot.repo) => good.push(loaded),
                Ok(_) => {}
                Err(error) => damaged.push(DamagedSnapshot { entry, repo: repo.map(str::to_owned), error }),
            }
        }
        if repo.is_none() {
            for d in &mut damaged {
                d.repo = good
                    .iter()
                    .rev()
                    .find(|s| repo_key(&s.snapshot.repo) == d.entry.key)
                    .map(|s| s.snapshot.repo.clone());
            }
        }
        Ok((good, damaged))
    }

    /// Every chunk any snapshot manifest of the store names, read one manifest at a time (a
    /// store of 2,000 repositories x 60 nights holds 120,000 of them). A damaged manifest
    /// stops the read: what it names cannot be known.
    pub fn named_chunks(&self) -> Result<std::result::Result<ChunkSet, DamagedSnapshot>> {
        let mut named = ChunkSet::new();
        for entry in self.snapshot_entries(None)? {
            match self.load_snapshot(&entry) {
                Ok(stored) => named.extend(stored.snapshot.chunks().filter_map(|c| chunk_key(c))),
                Err(error) if is_manifest_damage(&error) => {
                    return Ok(Err(DamagedSnapshot { entry, repo: None, error }));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Ok(named))
    }

    /// The repository whose snapshots are under `key`, learnt from the newest of them that
    /// still reads; `None` when none does (the name is only inside the manifests).
    pub fn name_of_key(&self, key: &str) -> Option<String> {
        let entries = self.entries_under(key).ok()?;
        entries.iter().rev().find_map(|e| self.load_snapshot(e).ok()).map(|s| s.snapshot.repo)
    }

    /// Reads one snapshot of `repo` by its full id.
    pub fn read_snapshot(&self, repo: &str, id: &str) -> Result<Snapshot> {
        let entry = self
            .snapshot_entries(Some(repo))?
            .into_iter()
            .find(|e| e.id == id)
            .with_context(|| format!("store {}: snapshot {id} of {repo} is missing", self.location()))?;
        Ok(self.load_snapshot(&entry)?.snapshot)
    }

    /// The latest snapshot of `repo`, if any; reads only that one manifest. A damaged one is
    /// an error naming the repository (see [`Store::latest`] to tell damage apart).
    pub fn latest_snapshot(&self, repo: &str) -> Result<Option<StoredSnapshot>> {
        match self.latest(repo)? {
            Latest::None => Ok(None),
            Latest::Readable(latest) => Ok(Some(*latest)),
            Latest::Damaged(damaged) => Err(damaged.error.context(format!(
                "repository {repo}: its latest snapshot {} is damaged; forget it with `repovault forget {repo} --snapshot {}`",
                damaged.entry.id, damaged.entry.id
            ))),
        }
    }

    /// The latest snapshot of `repo`: none, readable, or damaged. I/O errors (a store that
    /// cannot be read) are errors, never taken for damage.
    pub fn latest(&self, repo: &str) -> Result<Latest> {
        let Some(entry) = self.snapshot_entries(Some(repo))?.pop() else {
            return Ok(Latest::None);
        };
        match self.load_snapshot(&entry) {
            Ok(latest) => Ok(Latest::Readable(Box::new(latest))),
            Err(error) if is_manifest_damage(&error) => {
                Ok(Latest::Damaged(DamagedSnapshot { entry, repo: Some(repo.to_owned()), error }))
            }
            Err(error) => Err(error),
        }
    }

    /// The directory keys of every repository with snapshots (see [`repo_key`]).
    pub fn repo_keys(&self) -> Result<Vec<String>> {
        self.list_dir("snapshots")
    }

    /// The latest snapshot under a repository key, if any.
    pub fn latest_snapshot_by_key(&self, key: &str) -> Result<Option<StoredSnapshot>> {
        self.entries_under(key)?.last().map(|e| self.load_snapshot(e)).transpose()
    }

    /// A snapshot and all its ancestors, oldest first. A parent that is missing or damaged
    /// is an error: the chain would not restore.
    pub fn chain(&self, repo: &str, id: &str) -> Result<Vec<StoredSnapshot>> {
        let entries = self.snapshot_entries(Some(repo))?;
        let entry = entries
            .iter()
            .find(|e| e.id == id)
            .with_context(|| format!("store {}: snapshot {id} of {repo} is missing", self.location()))?;
        let start = self.load_snapshot(entry).with_context(|| format!("repository {repo}: snapshot {id}"))?;
        match self.chain_state(&entries, start)? {
            ChainState::Complete(chain) => Ok(chain),
            ChainState::Broken(broken) => {
                bail!("repository {repo}: snapshot {id} cannot be restored: {}", broken.describe(id))
            }
        }
    }

    /// Walks from `start` up its parents among `entries` (the repository's snapshot files)
    /// and says whether the chain is complete. Damaged or missing links make it broken; a
    /// file that cannot be read (I/O) is an error, never a broken chain.
    pub fn chain_state(&self, entries: &[SnapshotEntry], start: StoredSnapshot) -> Result<ChainState> {
        if self.snapshots_are_complete() {
            return Ok(ChainState::Complete(vec![start]));
        }
        let by_id: HashMap<&str, &SnapshotEntry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
        let mut seen = HashSet::new();
        let mut chain = vec![start];
        loop {
            let child = chain.last().expect("the chain starts with one snapshot");
            let Some(parent) = child.snapshot.parent.clone() else { break };
            let broken = |parent_damaged| {
                Ok(ChainState::Broken(ChainBreak { child: child.id.clone(), parent: parent.clone(), parent_damaged }))
            };
            if !seen.insert(parent.clone()) {
                // Ids are content hashes: only a forged store has a cycle.
                return broken(true);
            }
            let Some(entry) = by_id.get(parent.as_str()) else { return broken(false) };
            match self.load_snapshot(entry) {
                Ok(loaded) => chain.push(loaded),
                Err(e) if is_manifest_damage(&e) => return broken(true),
                Err(e) => return Err(e),
            }
        }
        chain.reverse();
        Ok(ChainState::Complete(chain))
    }
}

/// Directory key for a repository's snapshots: names are hashed so that any name, however
/// hostile, maps to a fixed-shape path.
pub fn repo_key(repo: &str) -> String {
    blake3::hash(repo.as_bytes()).to_hex()[..32].to_string()
}

/// Bytes of a chunk compressed first to predict whether the whole chunk will compress.
const PROBE_SIZE: usize = 64 << 10;

fn raw_object(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + data.len());
    out.push(ENCODING_RAW);
    out.extend_from_slice(data);
    out
}

fn encode(data: &[u8]) -> Result<Vec<u8>> {
    // Most pack data is zlib-compressed already: a cheap look at a sample spares
    // compressing whole chunks only to throw the result away.
    if data.len() > 2 * PROBE_SIZE {
        let sample = &data[..PROBE_SIZE];
        if zstd::bulk::compress(sample, 1)?.len() > sample.len() - sample.len() / 10 {
            return Ok(raw_object(data));
        }
    }
    let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)?;
    if compressed.len() < data.len() - data.len() / 8 {
        let mut out = Vec::with_capacity(1 + compressed.len());
        out.push(ENCODING_ZSTD);
        out.extend_from_slice(&compressed);
        Ok(out)
    } else {
        Ok(raw_object(data))
    }
}

/// The content of object `id` from its file's bytes, when it decodes and hashes to `id`.
pub(crate) fn verified_content(id: &str, raw: &[u8]) -> Result<Vec<u8>> {
    let data = decode(raw)?;
    if hash_hex(&data) != id {
        bail!("its content no longer hashes to its name");
    }
    Ok(data)
}

pub(crate) fn decode(raw: &[u8]) -> Result<Vec<u8>> {
    match raw.split_first() {
        Some((&ENCODING_RAW, rest)) => Ok(rest.to_vec()),
        Some((&ENCODING_ZSTD, rest)) => {
            // Objects are at most one chunk; the cap keeps a damaged frame from making us
            // allocate without bound.
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(rest)?;
            std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_OBJECT_SIZE + 1), &mut out)?;
            if out.len() as u64 > MAX_OBJECT_SIZE {
                bail!("object decodes to more than {MAX_OBJECT_SIZE} bytes");
            }
            Ok(out)
        }
        Some((other, _)) => bail!("unknown object encoding {other}"),
        None => bail!("empty object file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, parent: Option<&str>) -> StoredSnapshot {
        let now = chrono::Utc::now();
        StoredSnapshot {
            id: id.into(),
            snapshot: Snapshot {
                repo: "r".into(),
                vcs: crate::snapshot::Vcs::Git,
                created_at: now,
                source_changed_at: now,
                source_fingerprint: None,
                parent: parent.map(str::to_owned),
                head: None,
                head_detached: None,
                refs: Default::default(),
                symbolic_refs: Default::default(),
                object_format: "sha1".into(),
                packs: Vec::new(),
                new_packs: None,
                packs_hold_unreachable: None,
                bundles: Vec::new(),
                new_bundles: None,
                files: Default::default(),
                heads: Vec::new(),
                source_path: "/r".into(),
                hostname: "h".into(),
                tool_version: "t".into(),
            },
        }
    }

    #[test]
    fn chain_breaks_name_the_nearest_missing_or_damaged_link() {
        // full <- a <- (forgotten f) <- b <- c ; (damaged d) <- e
        let good = [
            stored("full", None),
            stored("a", Some("full")),
            stored("b", Some("f")),
            stored("c", Some("b")),
            stored("e", Some("d")),
        ];
        let damaged = [DamagedSnapshot {
            entry: SnapshotEntry { path: "p".into(), id: "d".into(), key: "k".into(), stamp: "s".into() },
            repo: None,
            error: anyhow::anyhow!("x"),
        }];
        let breaks = chain_breaks(false, &good, &damaged);
        assert!(!breaks.contains_key("full") && !breaks.contains_key("a"));
        let missing = ChainBreak { child: "b".into(), parent: "f".into(), parent_damaged: false };
        assert_eq!(breaks["b"], missing);
        assert_eq!(breaks["c"], missing);
        assert!(breaks["c"].describe("c").contains("parent of b"));
        assert!(breaks["e"].parent_damaged && breaks["e"].describe("e").starts_with("its parent d is damaged"));
    }

    #[test]
    fn objects_round_trip_compressed_or_raw() {
        let text = b"fn main() { println!(\"hello\"); }\n".repeat(10_000);
        let mut x = 1u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 33) as u8
            })
            .collect();
        for (data, encoding) in [(&text[..], ENCODING_ZSTD), (&noise[..], ENCODING_RAW), (&b""[..], ENCODING_RAW)] {
            let encoded = encode(data).unwrap();
            assert_eq!(encoded[0], encoding);
            assert_eq!(decode(&encoded).unwrap(), data);
        }
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(decode(&[]).is_err());
    }
}
