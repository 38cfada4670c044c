//! Opening and creating repositories: the sealed config, the key entries, and the
//! read paths (index, blobs, trees, snapshots) every command shares.

mod blobs;
pub mod chunk;
mod config;
pub mod epochs;
pub mod format;
mod index_files;
pub mod inflight;
pub mod retention;
mod snapshots;

use std::future::Future;
use std::sync::Arc;

pub use self::config::{
    ChunkerParams, DEFAULT_CHUNKER, DEFAULT_COMPRESSION_LEVEL, FORMAT_VERSION, Location, RepoConfig,
};
pub use self::snapshots::{Which, pick, split_spec};
use crate::backend::{Backend, Kind};
use crate::error::{Error, Result};
use crate::fmt::format_time;
use crate::ids::SnapshotId;
use crate::repo::format::crypto::{self, KeyEntry, Keys, Purpose, Secret};
use crate::repo::format::pack;
use crate::repo::format::snapshot::Snapshot;

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

/// In object-lock mode, wraps the backend so every write carries retention (repo/retention.rs).
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
        // Key entries are named by the BLAKE3 of their bytes: one that does not match was
        // damaged in storage or in transit. It is read once more; if it still does not
        // match, it is tried anyway, and named if no entry opens.
        let mut damaged = None;
        for k in &key_objects {
            if k.size > 64 * 1024 {
                continue;
            }
            let matches = |b: &[u8]| hex::encode(blake3::hash(b).as_bytes()) == k.name;
            let mut bytes = runtime.block_on(backend.get(Kind::Key, &k.name))?;
            if !matches(&bytes) {
                bytes = runtime.block_on(backend.get(Kind::Key, &k.name))?;
                if !matches(&bytes) {
                    damaged.get_or_insert(k.name.clone());
                }
            }
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
            if let Some(name) = damaged {
                return Err(Error::corrupt(
                    format!("keys/{name}"),
                    "its content does not match its name, read twice (damaged in storage or \
                     in transit), and no other key entry opens with this key; run the command \
                     again, and if this stays, restore that object from a copy",
                ));
            }
            return Err(Error::WrongKey {
                location,
                keys: key_objects.len(),
                given: secret.describe(),
            });
        };
        let keys = Keys::from_master(&master);
        // A config damaged in transit opens on a second read.
        let plain = match keys.open(Purpose::Config, &sealed_config, "config") {
            Ok(p) => p,
            Err(_) => {
                let again = runtime.block_on(backend.get(Kind::Config, "config"))?;
                keys.open(Purpose::Config, &again, "config")?
            }
        };
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

    pub fn now() -> String {
        now_rfc3339()
    }
}
