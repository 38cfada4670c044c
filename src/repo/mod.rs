//! Opening and creating repositories: the sealed config, the key entries, and the
//! read paths (index, blobs, trees, snapshots) every command shares.

pub mod chunk;
pub mod epochs;
pub mod format;
pub mod inflight;
pub mod retention;

use crate::fmt::format_time;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::local::LocalBackend;
use crate::backend::s3::{S3Backend, S3Settings};
use crate::backend::{Backend, Kind};
use crate::error::{Error, Result};
use crate::ids::{BlobId, IndexId, PackId, SnapshotId};
use crate::repo::format::crypto::{self, KeyEntry, Keys, Purpose, Secret};
use crate::repo::format::index::{BlobLoc, Index, IndexFile, IndexedPack};
use crate::repo::format::pack::{self, BlobKind, MAX_BLOB_BYTES};
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::Tree;

pub const FORMAT_VERSION: u32 = 1;

/// Content-defined chunking parameters, fixed per repository (they decide chunk ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// Chosen by measurement (README, "Chunk size"): database files of 8 KiB pages with
/// scattered updates dominate volumes. 32 KiB average chunks re-upload 8% of such a file
/// after 1% of its pages change (64 KiB: 13%, restic's 1 MiB: 86%), while the in-memory
/// index stays near 1.2 MiB per GiB stored.
pub const DEFAULT_CHUNKER: ChunkerParams = ChunkerParams {
    min: 8 * 1024,
    avg: 32 * 1024,
    max: 128 * 1024,
};

/// zstd level for new repositories. Level 2 stores database pages within 0.5% of level 3's
/// size at about 1.4x its speed (README, "Compression level"); compression was the largest
/// CPU cost of a backup.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_bytes: u32,
    /// How the repository coexists with bucket retention (absent in older configs: none).
    #[serde(default)]
    pub retention: crate::repo::retention::RetentionConfig,
}

impl RepoConfig {
    fn validate(&self) -> Result<()> {
        let c = &self.chunker;
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        // The chunker asserts on these ranges; a crafted config must fail here instead.
        let ok = self.version == FORMAT_VERSION
            && (MINIMUM_MIN..=MINIMUM_MAX).contains(&c.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&c.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&c.max)
            && c.min <= c.avg
            && c.avg <= c.max
            && (1..=22).contains(&self.compression_level)
            && (1024 * 1024..=MAX_BLOB_BYTES).contains(&self.pack_bytes)
            && self.retention.validate().is_ok();
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                "config",
                format!("unsupported or out-of-range settings: {self:?}"),
            ))
        }
    }
}

/// Where a repository lives, as given by `--repo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Usage(format!(
                    "repository {s:?} names no bucket: use s3://bucket[/prefix]"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::Usage("empty repository path".into()));
        }
        Ok(Location::Local(path.into()))
    }

    pub fn backend(&self, s3: &S3Settings) -> Result<Arc<dyn Backend>> {
        match self {
            Location::Local(p) => Ok(Arc::new(LocalBackend::new(p.clone()))),
            Location::S3 { bucket, prefix } => Ok(Arc::new(S3Backend::new(bucket, prefix, s3)?)),
        }
    }
}

/// A snapshot with its id.
pub type SnapshotEntry = (SnapshotId, Snapshot);

/// An open repository: backend, keys, config, and the runtime that drives the backend.
pub struct Repository {
    backend: Arc<dyn Backend>,
    runtime: Arc<tokio::runtime::Runtime>,
    keys: Keys,
    config: RepoConfig,
    /// The Object Lock wrapper `backend` is, in object-lock mode.
    lock: Option<Arc<crate::repo::retention::ObjectLock>>,
    /// The epoch router `backend` is, in epochs mode.
    epochs: Option<Arc<crate::repo::epochs::Epochs>>,
}

type Wrapped = (
    Arc<dyn Backend>,
    Option<Arc<crate::repo::retention::ObjectLock>>,
    Option<Arc<crate::repo::epochs::Epochs>>,
);

/// In object-lock mode, wraps the backend so every write carries retention (lock.rs).
fn wrap_for_retention(backend: Arc<dyn Backend>, config: &RepoConfig) -> Wrapped {
    match config.retention {
        crate::repo::retention::RetentionConfig::ObjectLock {
            retain_secs,
            lock_mode,
        } => {
            let lock = Arc::new(crate::repo::retention::ObjectLock::new(
                backend,
                lock_mode,
                std::time::Duration::from_secs(retain_secs),
                &config.id,
            ));
            (lock.clone() as Arc<dyn Backend>, Some(lock), None)
        }
        crate::repo::retention::RetentionConfig::Epochs { epoch_secs, .. } => {
            let e = Arc::new(crate::repo::epochs::Epochs::new(backend, epoch_secs));
            (e.clone() as Arc<dyn Backend>, None, Some(e))
        }
        crate::repo::retention::RetentionConfig::None => (backend, None, None),
    }
}

fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

pub fn hostname() -> String {
    if let Ok(h) = std::env::var("VOLGUARD_HOST")
        && !h.is_empty()
    {
        return h;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("volguard-io")
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Other(format!("cannot start the I/O runtime: {e}")))
}

/// Subdirectory trees a walk loads together (and holds while their directory is walked).
pub const TREES_AT_ONCE: usize = 32;

impl Repository {
    /// Creates a new repository; refuses if one already exists there.
    pub fn init(
        backend: Arc<dyn Backend>,
        secret: &Secret,
        chunker: ChunkerParams,
    ) -> Result<Repository> {
        Self::init_with_retention(
            backend,
            secret,
            chunker,
            crate::repo::retention::RetentionConfig::None,
        )
    }

    /// `init` with a retention mode (`init --retention-mode`). In object-lock mode the
    /// bucket is proven to enforce Object Lock before anything is written, and the key and
    /// config objects are written under retention like everything else.
    pub fn init_with_retention(
        backend: Arc<dyn Backend>,
        secret: &Secret,
        chunker: ChunkerParams,
        retention: crate::repo::retention::RetentionConfig,
    ) -> Result<Repository> {
        retention.validate().map_err(Error::Usage)?;
        let runtime = runtime()?;
        let location = backend.location();
        runtime.block_on(backend.check_reachable())?;
        if runtime.block_on(backend.exists(Kind::Config, "config"))? {
            return Err(Error::Other(format!(
                "a repository already exists at {location}; nothing was changed"
            )));
        }
        runtime.block_on(backend.create())?;
        let config_id = hex::encode(rand::random::<[u8; 16]>());
        let placeholder = RepoConfig {
            version: FORMAT_VERSION,
            id: config_id.clone(),
            created: String::new(),
            chunker,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            pack_bytes: pack::TARGET_PACK_BYTES as u32,
            retention,
        };
        let (backend, lock, epochs) = wrap_for_retention(backend, &placeholder);
        if let Some(l) = &lock {
            runtime.block_on(l.verify())?;
        }
        let master = crypto::random_master();
        let keys = Keys::from_master(&master);
        let now = now_rfc3339();
        let entry = crypto::wrap_master(&master, secret, &hostname(), &now)?;
        let entry_bytes = serde_json::to_vec_pretty(&entry).expect("key entry serializes");
        let key_name = hex::encode(blake3::hash(&entry_bytes).as_bytes());
        runtime.block_on(backend.put(Kind::Key, &key_name, entry_bytes.into()))?;
        let config = RepoConfig {
            created: now,
            ..placeholder
        };
        config.validate()?;
        let sealed = keys.seal(
            Purpose::Config,
            &serde_json::to_vec(&config).expect("config serializes"),
        );
        // The config is written last: a crash before this leaves no half-made repository
        // that `open` would accept.
        runtime.block_on(backend.put(Kind::Config, "config", sealed.into()))?;
        Ok(Repository {
            backend,
            runtime,
            keys,
            config,
            lock,
            epochs,
        })
    }

    pub fn open(backend: Arc<dyn Backend>, secret: &Secret) -> Result<Repository> {
        let runtime = runtime()?;
        let location = backend.location();
        runtime.block_on(backend.check_reachable())?;
        let sealed_config = match runtime.block_on(backend.get(Kind::Config, "config")) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => {
                return Err(Error::NoRepository {
                    location,
                    hint:
                        "it has no config object; create one with `volguard init` or check --repo"
                            .into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let key_objects = runtime.block_on(backend.list(Kind::Key))?;
        let mut master = None;
        for k in &key_objects {
            if k.size > 64 * 1024 {
                continue;
            }
            let bytes = runtime.block_on(backend.get(Kind::Key, &k.name))?;
            let entry: KeyEntry = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(key = %k.name, "ignoring unreadable key entry: {e}");
                    continue;
                }
            };
            if let Some(m) = crypto::unwrap_master(&entry, secret)? {
                master = Some(m);
                break;
            }
        }
        let Some(master) = master else {
            return Err(Error::WrongKey {
                location,
                keys: key_objects.len(),
                given: secret.describe(),
            });
        };
        let keys = Keys::from_master(&master);
        let plain = keys.open(Purpose::Config, &sealed_config, "config")?;
        let config: RepoConfig = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt("config", format!("decode: {e}")))?;
        config.validate()?;
        let (backend, lock, epochs) = wrap_for_retention(backend, &config);
        Ok(Repository {
            backend,
            runtime,
            keys,
            config,
            lock,
            epochs,
        })
    }

    /// The epoch router, in epochs mode.
    pub fn epochs(&self) -> Option<&Arc<crate::repo::epochs::Epochs>> {
        self.epochs.as_ref()
    }

    /// In epochs mode, makes the epoch of `t` the one this command writes to and reads
    /// from (a backup's time); a no-op in other modes.
    pub fn enter_epoch(&self, t: std::time::SystemTime) {
        if let Some(e) = &self.epochs {
            let dir = e.enter(t);
            tracing::debug!(epoch = %dir, "entered epoch");
        }
    }

    /// The Object Lock machinery, in object-lock mode.
    pub fn object_lock(&self) -> Option<&Arc<crate::repo::retention::ObjectLock>> {
        self.lock.as_ref()
    }

    /// In object-lock mode, proves (once per process) that the bucket enforces the lock;
    /// write commands call this before they start work.
    pub fn verify_retention(&self) -> Result<()> {
        if let Some(l) = &self.lock {
            self.block_on(l.verify())?;
        }
        Ok(())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn runtime(&self) -> &Arc<tokio::runtime::Runtime> {
        &self.runtime
    }

    /// Runs backend I/O from synchronous code (never call from inside the runtime).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Loads every index file. Unreadable index files are reported, not fatal: the packs
    /// they described are recovered from their own trailers by `recover_unindexed`.
    pub fn load_index(&self) -> Result<(Index, Vec<String>)> {
        self.load_index_except(&HashSet::new())
    }

    /// The index without the packs in `skip` (packs prune has marked: a backup must not
    /// reuse their blobs, though an unmarked duplicate elsewhere is fine).
    pub fn load_index_except(&self, skip: &HashSet<PackId>) -> Result<(Index, Vec<String>)> {
        let mut index = Index::default();
        let problems = self.for_each_index_file(|_, f| {
            for p in f.packs.iter().filter(|p| !skip.contains(&p.id)) {
                index.add_pack(p.id, p.size, &p.blobs);
            }
        })?;
        Ok((index, problems))
    }

    /// Reads every index file, one at a time, and returns the unreadable ones as problems.
    /// Prune replaces index files (new one written, then the old one deleted), so a listed
    /// file may be gone when read: then the listing is taken again, which holds its
    /// replacement, and the files not yet seen are read.
    pub fn for_each_index_file(&self, mut f: impl FnMut(&str, IndexFile)) -> Result<Vec<String>> {
        const LISTINGS: usize = 5;
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for _ in 0..LISTINGS {
            let mut vanished = false;
            for obj in self.block_on(self.backend.list(Kind::Index))? {
                if !seen.insert(obj.name.clone()) {
                    continue;
                }
                let bytes = match self.block_on(self.backend.get(Kind::Index, &obj.name)) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        vanished = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let open = |b: &[u8]| IndexFile::open(&self.keys, &obj.name, b);
                match self.again_if_corrupt(Kind::Index, &obj.name, open(&bytes), open) {
                    Ok(file) => {
                        if let Some(l) = &self.lock {
                            l.note_index(&obj.name, &file);
                        }
                        f(&obj.name, file)
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if !vanished {
                return Ok(problems);
            }
        }
        Err(Error::Other(format!(
            "index files of {} kept vanishing while being read ({LISTINGS} listings): is a \
             prune running in a loop? Try again",
            self.location()
        )))
    }

    /// Adds to `index`, in memory only, every stored pack it does not know, from the pack's
    /// own trailer: packs left by an interrupted backup, or listed only by a damaged or
    /// deleted index file, so intact data is never hidden from readers. Packs in `skip`
    /// (marked by prune) stay out. Returns the packs added and, for packs whose trailer is
    /// unreadable, why.
    pub fn index_unlisted_packs(
        &self,
        index: &mut Index,
        skip: &HashSet<PackId>,
    ) -> Result<(Vec<IndexedPack>, HashMap<PackId, String>)> {
        let mut recovered = Vec::new();
        let mut unreadable = HashMap::new();
        for obj in self.block_on(self.backend.list(Kind::Pack))? {
            let Some(id) = PackId::from_hex(&obj.name) else {
                continue;
            };
            if index.has_pack(&id) || skip.contains(&id) {
                continue;
            }
            match self.read_pack_trailer(&id, obj.size) {
                Ok(blobs) => {
                    index.add_pack(id, obj.size, &blobs);
                    recovered.push(IndexedPack {
                        id,
                        size: obj.size,
                        blobs,
                    });
                }
                Err(e) => {
                    unreadable.insert(id, e.to_string());
                }
            }
        }
        Ok((recovered, unreadable))
    }

    /// `index_unlisted_packs`, then an index file for the packs it found, so a backup
    /// reuses their blobs instead of uploading them again. Returns how many packs that was.
    pub fn recover_unindexed(&self, index: &mut Index, skip: &HashSet<PackId>) -> Result<usize> {
        let (recovered, unreadable) = self.index_unlisted_packs(index, skip)?;
        for (id, e) in &unreadable {
            tracing::warn!(pack = %id, "unindexed pack is unreadable, ignoring it: {e}");
        }
        let n = recovered.len();
        if n > 0 {
            self.save_index(&IndexFile { packs: recovered })?;
        }
        Ok(n)
    }

    pub fn read_pack_trailer(&self, id: &PackId, size: u64) -> Result<Vec<pack::PackEntry>> {
        let what = format!("packs/{id}");
        if size < pack::FOOTER_LEN {
            return Err(Error::corrupt(&what, "shorter than a pack footer"));
        }
        let name = id.to_hex();
        let footer = self.block_on(self.backend.get_range(
            Kind::Pack,
            &name,
            size - pack::FOOTER_LEN,
            pack::FOOTER_LEN,
        ))?;
        let tlen = pack::trailer_len(&footer, size, &what)? as u64;
        let start = size - pack::FOOTER_LEN - tlen;
        let sealed = self.block_on(self.backend.get_range(Kind::Pack, &name, start, tlen))?;
        pack::parse_trailer(&self.keys, &sealed, start, &what)
    }

    /// Writes one index file; returns its id and stored size.
    pub fn save_index(&self, file: &IndexFile) -> Result<(IndexId, u64)> {
        let (id, sealed) = file.seal(&self.keys);
        let n = sealed.len() as u64;
        self.block_on(self.backend.put(Kind::Index, &id.to_hex(), sealed.into()))?;
        if let Some(l) = &self.lock {
            l.note_index(&id.to_hex(), file);
        }
        Ok((id, n))
    }

    /// Reads, decrypts and verifies one blob.
    pub fn read_blob(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        let (pack_id, loc) = index.get(id).ok_or_else(|| {
            Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
        })?;
        self.fetch_verified(
            Kind::Pack,
            &pack_id.to_hex(),
            Some((loc.offset as u64, loc.length as u64)),
            |sealed| pack::open_blob(&self.keys, sealed, id, loc.raw_length),
        )
    }

    /// Fetches an object (or a range of it) and opens it with `open`; when the bytes fail
    /// to authenticate they are fetched once more before the object is called damaged, so
    /// a bit flipped on the way (a faulty proxy, NIC or cable) costs a second read, not a
    /// restore.
    pub fn fetch_verified<T>(
        &self,
        kind: Kind,
        name: &str,
        range: Option<(u64, u64)>,
        open: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let fetch = || match range {
            Some((offset, len)) => self.block_on(self.backend.get_range(kind, name, offset, len)),
            None => self.block_on(self.backend.get(kind, name)),
        };
        match open(&fetch()?) {
            Err(Error::Corrupt { object, reason }) => {
                tracing::debug!("{object} did not verify ({reason}); reading it again");
                open(&fetch()?)
            }
            other => other,
        }
    }

    /// `first` is what opening a whole object gave; if it did not verify, the object is
    /// read and opened once more (see `fetch_verified`), and the first error stands when
    /// the second read fails.
    fn again_if_corrupt<T>(
        &self,
        kind: Kind,
        name: &str,
        first: Result<T>,
        open: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        match first {
            Err(e @ Error::Corrupt { .. }) => match self.block_on(self.backend.get(kind, name)) {
                Ok(bytes) => open(&bytes),
                Err(_) => Err(e),
            },
            other => other,
        }
    }

    /// Reads several blobs, in order, with one ranged read per run of blobs that sit next
    /// to each other in the same pack (a file's chunks usually do): on S3 each read is a
    /// request, and one per chunk makes restores wait on round trips.
    pub fn read_blobs(&self, index: &Index, ids: &[BlobId]) -> Result<Vec<Vec<u8>>> {
        let locs = ids
            .iter()
            .map(|id| {
                index.get(id).ok_or_else(|| {
                    Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for run in neighbour_runs(&locs) {
            out.extend(self.read_run(&ids[run.clone()], &locs[run])?);
        }
        Ok(out)
    }

    /// Reads blobs that `neighbour_runs` put together, with one ranged read.
    fn read_run(&self, ids: &[BlobId], locs: &[(PackId, BlobLoc)]) -> Result<Vec<Vec<u8>>> {
        let (Some((pack_id, first)), Some((_, last))) = (locs.first(), locs.last()) else {
            return Ok(Vec::new());
        };
        let start = u64::from(first.offset);
        let end = u64::from(last.offset) + u64::from(last.length);
        self.fetch_verified(
            Kind::Pack,
            &pack_id.to_hex(),
            Some((start, end - start)),
            |span| {
                ids.iter()
                    .zip(locs)
                    .map(|(id, (_, loc))| {
                        let at = (u64::from(loc.offset) - start) as usize;
                        let sealed = span.get(at..at + loc.length as usize).ok_or_else(|| {
                            Error::corrupt(
                                format!("packs/{pack_id}"),
                                "shorter than the index says",
                            )
                        })?;
                        pack::open_blob(&self.keys, sealed, id, loc.raw_length)
                    })
                    .collect::<Result<Vec<_>>>()
            },
        )
    }

    pub fn load_tree(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        check_is_tree(index, id)?;
        let bytes = self.read_blob(index, id)?;
        Tree::decode(&bytes, &format!("tree {id}"))
    }

    /// Loads trees; results in order. On S3 each read is a request: walks (restore, and a
    /// backup's parent snapshot) load the subdirectories of a directory together. Trees
    /// written one after the other (siblings usually are) are read with one ranged read,
    /// and the reads run as many at once as the backend serves. A read that fails is
    /// retried tree by tree, so a damaged tree fails only itself.
    pub fn load_trees(&self, index: &Index, ids: &[BlobId]) -> Vec<Result<Tree>> {
        let mut out: Vec<Option<Result<Tree>>> = ids.iter().map(|_| None).collect();
        // Trees the index lists as trees, in pack order, so that neighbours form runs; any
        // other id gets `load_tree`'s error at once.
        let mut known: Vec<(usize, (PackId, BlobLoc))> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match index.get(id) {
                Some(loc) if loc.1.kind == BlobKind::Tree => known.push((i, loc)),
                _ => out[i] = Some(self.load_tree(index, id)),
            }
        }
        known.sort_by_key(|&(_, (pack, loc))| (pack, loc.offset));
        let locs: Vec<(PackId, BlobLoc)> = known.iter().map(|&(_, l)| l).collect();
        let runs = neighbour_runs(&locs);
        let load_run = |run: &std::ops::Range<usize>| -> Vec<(usize, Result<Tree>)> {
            let at = &known[run.clone()];
            let run_ids: Vec<BlobId> = at.iter().map(|&(i, _)| ids[i]).collect();
            let read = (run.len() > 1)
                .then(|| self.read_run(&run_ids, &locs[run.clone()]).ok())
                .flatten();
            match read {
                Some(blobs) => at
                    .iter()
                    .zip(blobs)
                    .map(|(&(i, _), b)| (i, Tree::decode(&b, &format!("tree {}", ids[i]))))
                    .collect(),
                None => at
                    .iter()
                    .map(|&(i, _)| (i, self.load_tree(index, &ids[i])))
                    .collect(),
            }
        };
        let threads = self.backend().read_concurrency().min(runs.len()).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let (runs, load_run) = (&runs, &load_run);
                    s.spawn(move || {
                        runs.iter()
                            .skip(k)
                            .step_by(threads)
                            .flat_map(load_run)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (i, t) in h.join().unwrap_or_default() {
                    out[i] = Some(t);
                }
            }
        });
        ids.iter()
            .zip(out)
            .map(|(id, t)| {
                t.unwrap_or_else(|| Err(Error::Other(format!("loading tree {id} stopped"))))
            })
            .collect()
    }

    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<(SnapshotId, u64)> {
        let (id, sealed) = snap.seal(&self.keys);
        let n = sealed.len() as u64;
        self.block_on(
            self.backend
                .put(Kind::Snapshot, &id.to_hex(), sealed.into()),
        )?;
        Ok((id, n))
    }

    /// All readable snapshots, oldest first; unreadable ones are returned as problems.
    pub fn list_snapshots(&self) -> Result<(Vec<SnapshotEntry>, Vec<String>)> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for obj in self.block_on(self.backend.list(Kind::Snapshot))? {
            let Some(id) = SnapshotId::from_hex(&obj.name) else {
                continue;
            };
            let bytes = match self.block_on(self.backend.get(Kind::Snapshot, &obj.name)) {
                Ok(b) => b,
                // Forgotten between listing and reading: it is simply no longer there.
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let open = |b: &[u8]| Snapshot::open(&self.keys, &obj.name, b);
            match self.again_if_corrupt(Kind::Snapshot, &obj.name, open(&bytes), open) {
                Ok(s) => out.push((id, s)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, problems))
    }

    /// Resolves `latest` or an id prefix among the snapshots of `volume`.
    pub fn find_snapshot(&self, volume: &str, which: &str) -> Result<(SnapshotId, Snapshot)> {
        let (all, problems) = self.list_snapshots()?;
        // A snapshot object that did not open (tampered, damaged) is why the one asked
        // for may be missing: name it rather than only saying "no snapshot".
        let rejected = if problems.is_empty() {
            String::new()
        } else {
            format!(
                "; {} snapshot object(s) were rejected: {}",
                problems.len(),
                problems.join("; ")
            )
        };
        let mut of_volume: Vec<_> = all
            .into_iter()
            .filter(|(_, s)| s.volume == volume)
            .collect();
        if of_volume.is_empty() {
            return Err(Error::Other(format!(
                "no snapshot of {volume:?} in {}; `volguard snapshots` lists what there is{rejected}",
                self.location()
            )));
        }
        // Epochs mode: what follows reads the snapshot's own epoch only.
        let focus = |found: (SnapshotId, Snapshot)| {
            if let Some(e) = &self.epochs {
                e.focus_on(Kind::Snapshot, &found.0.to_hex());
            }
            found
        };
        if which == "latest" {
            return Ok(focus(of_volume.pop().expect("non-empty")));
        }
        let matches: Vec<_> = of_volume
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&which.to_ascii_lowercase()))
            .collect();
        match matches.len() {
            1 => Ok(focus(matches.into_iter().next().expect("one"))),
            0 => Err(Error::Other(format!(
                "no snapshot of {volume:?} has an id starting with {which:?}{rejected}"
            ))),
            n => Err(Error::Other(format!(
                "{n} snapshots of {volume:?} start with {which:?}; give more characters"
            ))),
        }
    }

    pub fn now() -> String {
        now_rfc3339()
    }
}

/// Splits blob locations (in the order they will be read) into runs that one ranged read
/// serves: the same pack, ascending, gaps of at most MAX_GAP and at most MAX_SPAN in all.
fn neighbour_runs(locs: &[(PackId, BlobLoc)]) -> Vec<std::ops::Range<usize>> {
    /// Bytes between two blobs still fetched in one read rather than split in two.
    const MAX_GAP: u64 = 256 * 1024;
    /// Largest single read.
    const MAX_SPAN: u64 = 32 * 1024 * 1024;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < locs.len() {
        let (pack_id, first) = locs[i];
        let start = u64::from(first.offset);
        let mut end = start + u64::from(first.length);
        let mut j = i + 1;
        while let Some((p, l)) = locs.get(j) {
            let (o, e) = (
                u64::from(l.offset),
                u64::from(l.offset) + u64::from(l.length),
            );
            if *p != pack_id || o < end || o - end > MAX_GAP || e - start > MAX_SPAN {
                break;
            }
            end = e;
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

/// A tree id the index lists as file data is refused before anything is read.
fn check_is_tree(index: &Index, id: &BlobId) -> Result<()> {
    match index.get(id) {
        Some((_, loc)) if loc.kind != BlobKind::Tree => Err(Error::corrupt(
            format!("tree {id}"),
            "the index lists it as file data",
        )),
        _ => Ok(()),
    }
}
