//! Where repository objects live: an async byte store keyed by object kind and name.
//!
//! The pipeline only ever talks to `dyn Backend`; the local directory store lives in
//! `local.rs`, the S3 store in `s3.rs`. Objects are immutable: `put` of an
//! existing name must leave the stored bytes as they were or replace them with identical
//! bytes (names are content hashes), and a reader must never see a partial object.

pub mod local;
pub mod s3;

use async_trait::async_trait;

/// The kinds of objects a repository holds, each in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    /// Packs `prune` has marked for deletion once a grace period has passed.
    Mark,
    /// Blobs a running backup is about to upload (see inflight.rs).
    Pending,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Config => "",
            Kind::Key => "keys",
            Kind::Pack => "packs",
            Kind::Index => "index",
            Kind::Snapshot => "snapshots",
            Kind::Mark => "marks",
            Kind::Pending => "pending",
        }
    }
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// When the object was stored, where the store says (prune leaves young packs alone:
    /// they may belong to a backup that is still running).
    pub modified: Option<std::time::SystemTime>,
}

/// Backend failures, phrased so the user knows what, where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {kind:?}/{name} does not exist in {location}")]
    NotFound {
        kind: Kind,
        name: String,
        location: String,
    },
    #[error("{op} {kind:?}/{name} in {location} failed: {source}")]
    Io {
        op: &'static str,
        kind: Kind,
        name: String,
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

impl From<BackendError> for crate::error::Error {
    fn from(e: BackendError) -> Self {
        crate::error::Error::Other(e.to_string())
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// Human-readable location, used in messages.
    fn location(&self) -> String;
    /// Whether a repository (its `config` object) exists here.
    async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError>;
    /// Stores an object durably; returns only once it would survive a crash.
    async fn put(&self, kind: Kind, name: &str, data: Vec<u8>) -> Result<(), BackendError>;
    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError>;
    async fn get_range(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError>;
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError>;
    async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError>;
    /// Creates whatever the store needs before the first object (directories, ...).
    async fn create(&self) -> Result<(), BackendError>;
    /// Fails with one clear line when the store cannot be used at all (missing bucket,
    /// wrong credentials or region, not an S3 endpoint), before any real work starts.
    async fn check_reachable(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Packs a backup stores at the same time: enough to hide one request's latency
    /// behind the next pack's transfer; each in flight holds one pack in memory.
    fn upload_concurrency(&self) -> usize {
        2
    }
    /// Reads a restore keeps in flight at once.
    fn read_concurrency(&self) -> usize {
        2
    }
}
