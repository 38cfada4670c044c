//! Where repository objects live: an async byte store keyed by object kind and name.
//!
//! The pipeline only ever talks to `dyn Backend`; the local directory store lives in
//! `local.rs`, the S3 store in `s3.rs`. Objects are immutable: `put` of an
//! existing name must leave the stored bytes as they were or replace them with identical
//! bytes (names are content hashes), and a reader must never see a partial object.

pub mod counting;
pub mod local;
pub mod s3;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

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
    /// Snapshots `repair` found broken (see repair.rs).
    Repair,
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
            Kind::Repair => "repair",
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
    /// A delete refused because the object is under Object Lock retention.
    #[error(
        "{what} in {location} is under Object Lock retention until {until}; it cannot be deleted before then"
    )]
    Locked {
        what: String,
        location: String,
        until: String,
    },
    /// The S3 server refused the request (credentials, signature, permission).
    #[error(transparent)]
    Denied(#[from] crate::error::S3Refusal),
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    pub fn is_locked(&self) -> bool {
        matches!(self, BackendError::Locked { .. })
    }
}

/// S3 Object Lock retention modes. COMPLIANCE cannot be shortened or removed by anyone
/// before it ends; GOVERNANCE can, by a principal allowed to bypass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Compliance,
    Governance,
}

impl LockMode {
    /// The name S3 uses on the wire.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// The retention an object version carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub until: SystemTime,
}

/// What a bucket says about itself: the settings `bucket audit` judges.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BucketSettings {
    /// `Enabled`, `Suspended`, or None when versioning was never turned on.
    pub versioning: Option<String>,
    /// Whether Object Lock is enabled on the bucket; None when the server does not
    /// implement Object Lock at all (the error it gave is in `object_lock_error`).
    pub object_lock: Option<bool>,
    pub object_lock_error: Option<String>,
    /// The bucket's default retention: (mode, days).
    pub default_retention: Option<(String, u32)>,
    pub lifecycle: Vec<LifecycleRule>,
    /// Why lifecycle rules could not be read, when they could not.
    pub lifecycle_error: Option<String>,
    /// The server's `Server` header, when it sends one (names the implementation).
    pub server: Option<String>,
}

/// What the versions of a versioned bucket hold besides the visible objects.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VersionSummary {
    /// Keys (relative to the repository) whose newest version is a delete marker, with
    /// the marker's version id.
    pub hidden: Vec<(String, String)>,
    /// Versions that are not the newest one (left by deletes or rewrites), and their bytes.
    pub noncurrent: u64,
    pub noncurrent_bytes: u64,
}

/// One lifecycle rule, reduced to what can delete data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LifecycleRule {
    pub id: String,
    pub enabled: bool,
    /// Key prefix the rule applies to (empty: the whole bucket).
    pub prefix: String,
    pub expiration_days: Option<i32>,
    pub expiration_date: Option<String>,
    pub noncurrent_days: Option<i32>,
    pub abort_multipart_days: Option<i32>,
    /// Whether the rule filters by something volguard cannot judge (tags, sizes).
    pub other_filter: bool,
}

/// The kinds callers decide on stay typed (an object that is not there, a refusal by the
/// S3 server); the rest become one line of text.
impl From<BackendError> for crate::error::Error {
    fn from(e: BackendError) -> Self {
        use crate::error::Error;
        match e {
            BackendError::Denied(r) => Error::S3Denied(r),
            BackendError::NotFound {
                kind,
                name,
                location,
            } => Error::NotFound {
                what: format!("object {kind:?}/{name} does not exist"),
                location,
                hint: "another volguard (a forget or prune) may have removed it meanwhile; \
                       if the next run says so again, run `volguard check`"
                    .into(),
            },
            e => Error::Other(e.to_string()),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// Human-readable location, used in messages.
    fn location(&self) -> String;
    /// Whether a repository (its `config` object) exists here.
    async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError>;
    /// Stores an object durably; returns only once it would survive a crash. `Bytes` so a
    /// caller can hand over a buffer it wants back when the store is done with it
    /// (`Bytes::from_owner`; see backup.rs's pack buffers).
    async fn put(&self, kind: Kind, name: &str, data: Bytes) -> Result<(), BackendError>;
    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError>;
    async fn get_range(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let mut buf = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut buf)
            .await?;
        Ok(buf)
    }
    /// `len` bytes at `offset` into `buf` (emptied first), so that a caller reading many
    /// ranges reuses one allocation: a fresh buffer of several MiB per read is faulted in
    /// page by page, which cost a pack-ordered restore from S3 about a seventh of its CPU.
    async fn get_range_into(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), BackendError>;
    /// `len` bytes at `offset`, handed to `sink` in order as they arrive, so that a reader
    /// of large ranges holds only what it has not used yet (a restore reads whole packs
    /// this way). Every byte reaches `sink` once, in order, also when a read cut off is
    /// resumed; after an error, `sink` has seen some first part of the range.
    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> Result<(), BackendError> {
        let mut buf = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut buf)
            .await?;
        sink(&buf);
        Ok(())
    }
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

    // --- Object Lock and bucket rules (S3 only; see repo/retention.rs and ops/bucket.rs) ---

    /// Stores an object with an Object Lock retention (mode, retain-until date).
    async fn put_locked(
        &self,
        kind: Kind,
        name: &str,
        data: Bytes,
        lock: Retention,
    ) -> Result<(), BackendError> {
        let _ = (kind, name, data, lock);
        Err(self.no_object_lock())
    }

    /// The retention of the current version of an object; None when it has none.
    async fn retention(&self, kind: Kind, name: &str) -> Result<Option<Retention>, BackendError> {
        let _ = (kind, name);
        Err(self.no_object_lock())
    }

    /// Sets a later retain-until date on the current version of an object.
    async fn extend_retention(
        &self,
        kind: Kind,
        name: &str,
        lock: Retention,
    ) -> Result<(), BackendError> {
        let _ = (kind, name, lock);
        Err(self.no_object_lock())
    }

    /// Deletes every version of an object (and its delete markers), so that on a
    /// versioned bucket the bytes are really gone, not hidden behind a delete marker.
    async fn delete_all_versions(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        self.delete(kind, name).await
    }

    /// Proves that the bucket enforces Object Lock in `mode` (see `S3Backend`); fails with
    /// one line naming what the server did instead.
    async fn verify_object_lock(&self, mode: LockMode) -> Result<(), BackendError> {
        let _ = mode;
        Err(self.no_object_lock())
    }

    /// Versioning, Object Lock and lifecycle settings of the bucket.
    async fn bucket_settings(&self) -> Result<BucketSettings, BackendError> {
        Err(BackendError::Other(format!(
            "{} is not an S3 bucket: it has no bucket settings to audit",
            self.location()
        )))
    }

    /// Replaces the bucket's lifecycle configuration with `rules`.
    async fn put_lifecycle(&self, rules: &[LifecycleRule]) -> Result<(), BackendError> {
        let _ = rules;
        Err(BackendError::Other(format!(
            "{} is not an S3 bucket: lifecycle rules need one",
            self.location()
        )))
    }

    /// On a versioned bucket: the repository's objects whose newest version is a delete
    /// marker (hidden, but their bytes still there) and how many older versions are stored
    /// besides the current ones. None where the store keeps no versions.
    async fn version_summary(&self) -> Result<Option<VersionSummary>, BackendError> {
        Ok(None)
    }

    /// The same store rooted at the sub-directory (key prefix) `dir` of this one: epochs
    /// mode keeps each epoch's objects in a store of its own under `epochs/<start date>`.
    fn sub(&self, dir: &str) -> Option<std::sync::Arc<dyn Backend>> {
        let _ = dir;
        None
    }

    /// The names of the sub-directories directly under `dir` (e.g. the epochs).
    async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, BackendError> {
        let _ = dir;
        Ok(Vec::new())
    }

    /// The error for Object Lock operations on a store that has none.
    fn no_object_lock(&self) -> BackendError {
        BackendError::Other(format!(
            "{} cannot hold Object Lock retention (only an S3 bucket with Object Lock \
             enabled can); use --retention-mode none for a local repository",
            self.location()
        ))
    }
}
