//! Retention modes of a repository, and the `object-lock` mode's machinery.
//!
//! In object-lock mode every repository object (config, keys, packs, index files,
//! snapshots) is written with an S3 Object Lock retain-until date, and each backup, before
//! it writes its snapshot, makes sure every object that snapshot needs is retained at least
//! until the snapshot's *protect-until* (snapshot time + retention). Deletes never go to an
//! object still under retention, and remove every version of an object (on a versioned
//! bucket a plain DELETE only hides the bytes behind a delete marker).
//!
//! All of it sits in [`ObjectLock`], a `Backend` that wraps the S3 backend: the rest of
//! the code writes and deletes as always. Coordination objects (`marks/`, `pending/`) carry
//! no retention: they are deleted as part of normal operation, and losing one early only
//! delays a prune or costs a duplicate upload.
//!
//! Extending every object on every backup would cost one request per object per backup,
//! so extensions go *past* what is needed by a margin (a quarter of the retention, at most
//! [`MAX_MARGIN`]), and the retain-until dates this host has seen or set are remembered in
//! a cache file under the state directory: most backups need no request at all. Dates only
//! ever grow under COMPLIANCE, so a stale cache can only make volguard ask again, never
//! skip an extension that is needed. (Under GOVERNANCE a principal allowed to bypass it can
//! shorten a retention behind the cache's back; that is what GOVERNANCE means.)

use crate::fmt::{fmt_time, human_duration};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, Kind, LockMode, ObjectInfo, Retention};
use crate::error::{Error, Result};
use crate::ids::PackId;
use crate::repo::Repository;
use crate::repo::format::index::IndexFile;

/// The longest extension margin: however long the retention, objects are extended again
/// at least every this often when backups keep referencing them.
pub const MAX_MARGIN: Duration = Duration::from_secs(30 * 86_400);
/// Retention requests kept in flight at once.
const PARALLEL_REQUESTS: usize = 16;

/// How a repository coexists with bucket retention; fixed when the repository is created
/// (see README "Retention modes" for why it cannot be changed later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum RetentionConfig {
    /// No retention handling: prune deletes, nothing is locked.
    #[default]
    None,
    /// Every object under S3 Object Lock; each backup extends what its snapshot needs.
    ObjectLock {
        retain_secs: u64,
        lock_mode: LockMode,
    },
    /// Objects grouped in time epochs; the bucket's lifecycle rule deletes whole epochs
    /// (see epochs.rs).
    Epochs { retain_secs: u64, epoch_secs: u64 },
}

impl RetentionConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            RetentionConfig::None => Ok(()),
            RetentionConfig::ObjectLock { retain_secs, .. } => {
                if retain_secs == 0 || retain_secs > 100 * 365 * 86_400 {
                    Err(format!(
                        "retention of {retain_secs} s is out of range (1 s to 100 years)"
                    ))
                } else {
                    Ok(())
                }
            }
            RetentionConfig::Epochs {
                retain_secs,
                epoch_secs,
            } => {
                if retain_secs == 0 || retain_secs > 100 * 365 * 86_400 {
                    Err(format!(
                        "retention of {retain_secs} s is out of range (1 s to 100 years)"
                    ))
                } else if !(86_400..=366 * 86_400).contains(&epoch_secs) {
                    Err(format!(
                        "epoch length of {epoch_secs} s is out of range (1 to 366 days)"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RetentionConfig::None => "none",
            RetentionConfig::ObjectLock { .. } => "object-lock",
            RetentionConfig::Epochs { .. } => "epochs",
        }
    }

    /// How long every snapshot is kept at least, when the mode promises that.
    pub fn retain(&self) -> Option<Duration> {
        match *self {
            RetentionConfig::None => None,
            RetentionConfig::ObjectLock { retain_secs, .. }
            | RetentionConfig::Epochs { retain_secs, .. } => Some(Duration::from_secs(retain_secs)),
        }
    }

    /// One line for people: "object-lock, COMPLIANCE, 30 days".
    pub fn describe(&self) -> String {
        match *self {
            RetentionConfig::None => "none".into(),
            RetentionConfig::ObjectLock {
                retain_secs,
                lock_mode,
            } => format!(
                "object-lock, {} retention of {}",
                lock_mode.as_s3(),
                human_duration(retain_secs)
            ),
            RetentionConfig::Epochs {
                retain_secs,
                epoch_secs,
            } => format!(
                "epochs of {}, snapshots kept at least {}",
                human_duration(epoch_secs),
                human_duration(retain_secs)
            ),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

/// Kinds whose objects carry retention.
fn locked_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Config | Kind::Key | Kind::Pack | Kind::Index | Kind::Snapshot
    )
}

fn cache_key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.dir())
}

/// The object-lock backend wrapper (see the module comment).
pub struct ObjectLock {
    inner: Arc<dyn Backend>,
    mode: LockMode,
    retain: Duration,
    margin: Duration,
    verified: tokio::sync::OnceCell<()>,
    /// Known retain-until dates (unix seconds) by `kind/name`.
    known: Mutex<HashMap<String, u64>>,
    /// Which index files list each pack (filled as index files are read or written).
    index_of: Mutex<HashMap<PackId, Vec<String>>>,
    cache_path: Option<PathBuf>,
    dirty: AtomicBool,
}

/// What one extension pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExtendReport {
    pub objects: usize,
    /// Objects whose retention had to be read (not in the cache).
    pub looked_up: usize,
    pub extended: usize,
}

impl ObjectLock {
    pub fn new(
        inner: Arc<dyn Backend>,
        mode: LockMode,
        retain: Duration,
        repo_id: &str,
    ) -> ObjectLock {
        let margin = (retain / 4).min(MAX_MARGIN);
        let cache_path = (!repo_id.is_empty()).then(|| {
            crate::paths::state_dir()
                .join("object-lock")
                .join(format!("{repo_id}.json"))
        });
        let known = cache_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<HashMap<String, u64>>(&b).ok())
            .unwrap_or_default();
        ObjectLock {
            inner,
            mode,
            retain,
            margin,
            verified: tokio::sync::OnceCell::new(),
            known: Mutex::new(known),
            index_of: Mutex::new(HashMap::new()),
            cache_path,
            dirty: AtomicBool::new(false),
        }
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Proves once per process that the bucket enforces Object Lock (see
    /// `Backend::verify_object_lock`); every write goes through this first.
    pub async fn verify(&self) -> std::result::Result<(), BackendError> {
        self.verified
            .get_or_try_init(|| self.inner.verify_object_lock(self.mode))
            .await
            .map(|_| ())
    }

    fn known_until(&self, key: &str) -> Option<u64> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn remember(&self, key: String, until: u64) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let e = k.entry(key).or_insert(0);
        if until > *e {
            *e = until;
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    fn forget_key(&self, key: &str) {
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .is_some()
        {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache of known dates (temp file + rename; a lost race with another
    /// process only loses entries, which costs requests later, never safety).
    pub fn save_cache(&self) {
        let Some(path) = &self.cache_path else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let now = unix(SystemTime::now());
        let snapshot: HashMap<String, u64> = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(k, u)| (k.clone(), *u))
            .collect();
        let Ok(bytes) = serde_json::to_vec(&snapshot) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                "cannot save the Object Lock date cache {}: {e} (later runs ask the bucket instead)",
                path.display()
            );
        }
    }

    /// Notes which packs an index file lists, so a backup knows which index files its
    /// snapshot needs.
    pub fn note_index(&self, name: &str, file: &IndexFile) {
        let mut m = self.index_of.lock().unwrap_or_else(|p| p.into_inner());
        for p in &file.packs {
            let v = m.entry(p.id).or_default();
            if !v.iter().any(|n| n == name) {
                v.push(name.to_string());
            }
        }
    }

    fn index_files_of(&self, pack: &PackId) -> Vec<String> {
        self.index_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pack)
            .cloned()
            .unwrap_or_default()
    }

    /// The current retain-until date of an object (unix seconds, 0 for none), from the
    /// cache when known to be at least `at_least`, else from the bucket.
    async fn until(
        &self,
        kind: Kind,
        name: &str,
        at_least: u64,
    ) -> std::result::Result<(u64, bool), BackendError> {
        let key = cache_key(kind, name);
        if let Some(u) = self.known_until(&key)
            && u >= at_least
        {
            return Ok((u, false));
        }
        let u = self
            .inner
            .retention(kind, name)
            .await?
            .map_or(0, |r| unix(r.until));
        if u > 0 {
            self.remember(key, u);
        }
        Ok((u, true))
    }

    /// Makes sure `kind/name` is retained until at least `protect`; extends it to
    /// `protect + margin` when it is not. Returns (looked up, extended).
    async fn ensure(
        &self,
        kind: Kind,
        name: &str,
        protect: u64,
    ) -> std::result::Result<(bool, bool), BackendError> {
        let (u, looked) = self.until(kind, name, protect).await?;
        if u >= protect {
            return Ok((looked, false));
        }
        let until = protect + self.margin.as_secs();
        self.inner
            .extend_retention(
                kind,
                name,
                Retention {
                    mode: self.mode,
                    until: from_unix(until),
                },
            )
            .await?;
        self.remember(cache_key(kind, name), until);
        Ok((looked, true))
    }

    /// Extends every object in `objects` to at least `protect`.
    pub async fn extend_all(
        &self,
        objects: Vec<(Kind, String)>,
        protect: SystemTime,
    ) -> std::result::Result<ExtendReport, BackendError> {
        use futures_util::{StreamExt, TryStreamExt};
        self.verify().await?;
        let protect = unix(protect);
        let mut report = ExtendReport {
            objects: objects.len(),
            ..Default::default()
        };
        let results: Vec<(bool, bool)> = futures_util::stream::iter(
            objects
                .iter()
                .map(|(kind, name)| self.ensure(*kind, name, protect)),
        )
        .buffer_unordered(PARALLEL_REQUESTS)
        .try_collect()
        .await?;
        for (looked, extended) in results {
            report.looked_up += usize::from(looked);
            report.extended += usize::from(extended);
        }
        Ok(report)
    }

    /// The retain-until date of every object in `objects` that is still under retention
    /// at `now`, read from the bucket (a prune must not trust the cache's lower bounds
    /// to decide that something is deletable: it asks).
    pub async fn still_locked(
        &self,
        objects: Vec<(Kind, String)>,
        now: SystemTime,
    ) -> std::result::Result<HashMap<(Kind, String), u64>, BackendError> {
        use futures_util::{StreamExt, TryStreamExt};
        let now = unix(now);
        let got: Vec<Option<((Kind, String), u64)>> =
            futures_util::stream::iter(objects.into_iter().map(|(kind, name)| async move {
                // A known date in the future is a fact (dates only grow); only an object
                // the cache thinks expired is asked about.
                let (u, _) = self.until(kind, &name, now + 1).await?;
                Ok::<_, BackendError>((u > now).then_some(((kind, name), u)))
            }))
            .buffer_unordered(PARALLEL_REQUESTS)
            .try_collect()
            .await?;
        Ok(got.into_iter().flatten().collect())
    }
}

#[async_trait]
impl Backend for ObjectLock {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn exists(&self, kind: Kind, name: &str) -> std::result::Result<bool, BackendError> {
        self.inner.exists(kind, name).await
    }
    async fn put(
        &self,
        kind: Kind,
        name: &str,
        data: Bytes,
    ) -> std::result::Result<(), BackendError> {
        self.verify().await?;
        if !locked_kind(kind) {
            return self.inner.put(kind, name, data).await;
        }
        // The date is taken before the upload, so what is remembered is a lower bound.
        let until = unix(SystemTime::now() + self.retain + self.margin);
        self.inner
            .put_locked(
                kind,
                name,
                data,
                Retention {
                    mode: self.mode,
                    until: from_unix(until),
                },
            )
            .await?;
        self.remember(cache_key(kind, name), until);
        Ok(())
    }
    async fn get(&self, kind: Kind, name: &str) -> std::result::Result<Vec<u8>, BackendError> {
        self.inner.get(kind, name).await
    }
    async fn get_range_into(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> std::result::Result<(), BackendError> {
        self.inner
            .get_range_into(kind, name, offset, len, buf)
            .await
    }
    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> std::result::Result<(), BackendError> {
        self.inner
            .get_range_streamed(kind, name, offset, len, sink)
            .await
    }
    async fn list(&self, kind: Kind) -> std::result::Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(kind).await
    }
    /// Never sends a delete for an object still under retention (it says until when
    /// instead), and removes every version, so nothing stays behind a delete marker.
    async fn delete(&self, kind: Kind, name: &str) -> std::result::Result<(), BackendError> {
        self.verify().await?;
        if locked_kind(kind) {
            let now = unix(SystemTime::now());
            let (u, _) = self.until(kind, name, now + 1).await?;
            if u > now {
                return Err(BackendError::Locked {
                    what: cache_key(kind, name),
                    location: self.location(),
                    until: fmt_time(from_unix(u)),
                });
            }
        }
        self.inner.delete_all_versions(kind, name).await?;
        self.forget_key(&cache_key(kind, name));
        Ok(())
    }
    async fn create(&self) -> std::result::Result<(), BackendError> {
        self.inner.create().await
    }
    async fn check_reachable(&self) -> std::result::Result<(), BackendError> {
        self.inner.check_reachable().await
    }
    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }
    fn read_concurrency(&self) -> usize {
        self.inner.read_concurrency()
    }
    async fn retention(
        &self,
        kind: Kind,
        name: &str,
    ) -> std::result::Result<Option<Retention>, BackendError> {
        self.inner.retention(kind, name).await
    }
    async fn version_summary(
        &self,
    ) -> std::result::Result<Option<crate::backend::VersionSummary>, BackendError> {
        self.inner.version_summary().await
    }
    async fn verify_object_lock(&self, _mode: LockMode) -> std::result::Result<(), BackendError> {
        self.verify().await
    }
    async fn bucket_settings(
        &self,
    ) -> std::result::Result<crate::backend::BucketSettings, BackendError> {
        self.inner.bucket_settings().await
    }
    async fn put_lifecycle(
        &self,
        rules: &[crate::backend::LifecycleRule],
    ) -> std::result::Result<(), BackendError> {
        self.inner.put_lifecycle(rules).await
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        self.save_cache();
    }
}

/// Called by a backup right before it writes its snapshot: every object the snapshot
/// needs (its packs, the index files listing them, the config and the keys) must be
/// retained until the snapshot's time plus the retention. The snapshot object itself is
/// written afterwards, with a full retention from now.
pub fn protect_snapshot(
    repo: &Repository,
    packs: &HashSet<PackId>,
    snapshot_time: SystemTime,
) -> Result<Option<ExtendReport>> {
    let Some(lock) = repo.object_lock() else {
        return Ok(None);
    };
    let protect = snapshot_time + lock.retain;
    if protect <= SystemTime::now() {
        // A snapshot recorded with an old --time whose retention has already passed.
        return Ok(Some(ExtendReport::default()));
    }
    let mut objects: Vec<(Kind, String)> = vec![(Kind::Config, "config".into())];
    for k in repo.block_on(lock.inner.list(Kind::Key))? {
        objects.push((Kind::Key, k.name));
    }
    let mut index_files = HashSet::new();
    for p in packs {
        objects.push((Kind::Pack, p.to_hex()));
        index_files.extend(lock.index_files_of(p));
    }
    objects.extend(index_files.into_iter().map(|n| (Kind::Index, n)));
    let report = repo
        .block_on(lock.extend_all(objects, protect))
        .map_err(|e| {
            Error::Other(format!(
                "cannot extend the Object Lock retention of what the snapshot needs, so the \
                 snapshot was not written: {e}"
            ))
        })?;
    lock.save_cache();
    tracing::info!(
        objects = report.objects,
        looked_up = report.looked_up,
        extended = report.extended,
        "object lock retention checked"
    );
    Ok(Some(report))
}

/// `check`'s view of a versioned bucket: repository objects hidden behind delete markers
/// (a DELETE without a version id, by someone or something other than volguard, which
/// removes every version itself) and noncurrent versions. Each is one warning line saying
/// what it means and what to do.
pub fn version_warnings(repo: &Repository) -> Result<Vec<String>> {
    let Some(v) = repo.block_on(repo.backend().version_summary())? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (key, marker) in &v.hidden {
        out.push(format!(
            "{key} is hidden behind a delete marker (version {marker}): something deleted it \
             without a version id, and on this versioned bucket its bytes are still stored; \
             delete that marker (DeleteObject with versionId={marker}) to bring it back"
        ));
    }
    if v.noncurrent > 0 {
        out.push(format!(
            "{} noncurrent object version(s) ({} bytes) are stored besides the current \
             objects; a lifecycle rule with NoncurrentVersionExpiration removes them \
             (`volguard bucket policy --apply`)",
            v.noncurrent, v.noncurrent_bytes
        ));
    }
    Ok(out)
}

/// What prune could not delete because of retention.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LockedSkip {
    pub packs: HashSet<PackId>,
    /// Unix seconds: when the first and the last of them become deletable.
    pub earliest: Option<u64>,
    pub latest: Option<u64>,
}

/// Of the packs prune is about to delete, removes (and returns) those that cannot go yet:
/// the pack, or an index file that lists it (which must be rewritten without it), is
/// under retention. Asks the bucket; a run never tries a delete that would be refused.
pub fn hold_locked(
    repo: &Repository,
    deleting: &mut HashSet<PackId>,
    files: &[(String, IndexFile)],
) -> Result<LockedSkip> {
    let mut skip = LockedSkip::default();
    let Some(lock) = repo.object_lock() else {
        return Ok(skip);
    };
    if deleting.is_empty() {
        return Ok(skip);
    }
    let mut objects: Vec<(Kind, String)> =
        deleting.iter().map(|p| (Kind::Pack, p.to_hex())).collect();
    let touched: Vec<&(String, IndexFile)> = files
        .iter()
        .filter(|(_, f)| f.packs.iter().any(|p| deleting.contains(&p.id)))
        .collect();
    objects.extend(touched.iter().map(|(n, _)| (Kind::Index, n.clone())));
    let locked = repo
        .block_on(lock.still_locked(objects, SystemTime::now()))
        .map_err(Error::from)?;
    let mut held: Vec<(PackId, u64)> = Vec::new();
    for ((kind, name), until) in &locked {
        match kind {
            Kind::Pack => {
                if let Some(id) = PackId::from_hex(name) {
                    held.push((id, *until));
                }
            }
            Kind::Index => {
                if let Some((_, f)) = touched.iter().find(|(n, _)| n == name) {
                    for p in &f.packs {
                        if deleting.contains(&p.id) {
                            held.push((p.id, *until));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (id, until) in held {
        deleting.remove(&id);
        skip.packs.insert(id);
        skip.earliest = Some(skip.earliest.map_or(until, |e| e.min(until)));
        skip.latest = Some(skip.latest.map_or(until, |l| l.max(until)));
    }
    Ok(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_old_configs() {
        let c = RetentionConfig::ObjectLock {
            retain_secs: 86_400,
            lock_mode: LockMode::Compliance,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(
            j,
            r#"{"mode":"object-lock","retain_secs":86400,"lock_mode":"compliance"}"#
        );
        assert_eq!(serde_json::from_str::<RetentionConfig>(&j).unwrap(), c);
        assert!(c.validate().is_ok());
        assert!(
            RetentionConfig::ObjectLock {
                retain_secs: 0,
                lock_mode: LockMode::Governance
            }
            .validate()
            .is_err()
        );
        assert_eq!(human_duration(30 * 86_400), "30 days");
        assert_eq!(human_duration(90), "90 seconds");
    }
}
