//! S3 Object Lock and bucket-rule requests (a child module of `s3`, so it shares the
//! client and messages): retention reads and extensions, deleting every version of an
//! object on a versioned bucket, the proof that a bucket really enforces Object Lock, and
//! the versioning / Object Lock / lifecycle settings `bucket audit` and `bucket policy` use.
//!
//! Why a proof: a 200 to a PutObject with lock headers does not show the lock took. Garage
//! answers Object Lock calls with 501 (or accepts the headers and stores nothing); a repository
//! that believes its data is locked when it is not is worse than one that knows it is not.

use crate::fmt::fmt_time;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
    LifecycleExpiration, LifecycleRuleFilter, NoncurrentVersionExpiration, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};

use super::{
    BackendError, BucketSettings, LifecycleRule, LockMode, Retention, S3Backend, VersionSummary,
    content_md5,
};

/// How long the probe object of `prove_object_lock` stays locked. Short, because a probe
/// in COMPLIANCE mode cannot be removed before then; long enough that the delete attempt
/// certainly happens while it is locked.
const PROBE_RETENTION: Duration = Duration::from_secs(10);
/// Where probe objects go, under the repository prefix.
const PROBE_DIR: &str = "lock-probes";

pub(super) fn object_lock_mode(m: LockMode) -> ObjectLockMode {
    match m {
        LockMode::Compliance => ObjectLockMode::Compliance,
        LockMode::Governance => ObjectLockMode::Governance,
    }
}

fn retention_mode(m: LockMode) -> ObjectLockRetentionMode {
    match m {
        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        LockMode::Governance => ObjectLockRetentionMode::Governance,
    }
}

/// The server's `Server` header from an error answer ("SeaweedFS 8000GB 4.48", "Garage").
fn server_of<E>(err: &SdkError<E>) -> Option<String> {
    err.raw_response()
        .and_then(|r| r.headers().get("server"))
        .map(str::to_string)
}

fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Codes servers give for "this object or bucket has no retention / lock configuration".
fn is_no_lock_config<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    matches!(
        err.code(),
        Some(
            "ObjectLockConfigurationNotFoundError"
                | "NoSuchObjectLockConfiguration"
                | "InvalidRequest"
        )
    )
}

fn is_not_implemented<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("NotImplemented") || status_of(err) == Some(501)
}

impl S3Backend {
    /// GetObjectRetention of the current version (or `version`); None when the object has
    /// no retention or does not exist.
    pub(super) async fn get_retention(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<Retention>, BackendError> {
        let out = match self
            .client
            .get_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if is_no_lock_config(&e) || super::is_missing_object(&e) => return Ok(None),
            Err(e) => return Err(self.fail("GetObjectRetention", key, &e)),
        };
        let Some(r) = out.retention() else {
            return Ok(None);
        };
        let mode = match r.mode() {
            Some(ObjectLockRetentionMode::Compliance) => LockMode::Compliance,
            Some(ObjectLockRetentionMode::Governance) => LockMode::Governance,
            _ => return Ok(None),
        };
        let Some(until) = r
            .retain_until_date()
            .and_then(|d| SystemTime::try_from(*d).ok())
        else {
            return Ok(None);
        };
        Ok(Some(Retention { mode, until }))
    }

    /// PutObjectRetention on the current version.
    pub(super) async fn put_retention(
        &self,
        key: &str,
        lock: Retention,
    ) -> Result<(), BackendError> {
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(retention_mode(lock.mode))
                    .retain_until_date(lock.until.into())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail("PutObjectRetention", key, &e))?;
        Ok(())
    }

    /// Calls `each` with every page of ListObjectVersions under `prefix`.
    async fn each_versions_page(
        &self,
        prefix: &str,
        mut each: impl FnMut(&ListObjectVersionsOutput),
    ) -> Result<(), BackendError> {
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.fail("ListObjectVersions", prefix, &e))?;
            each(&page);
            if page.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(());
            }
        }
    }

    /// Every (version id, is delete marker) of exactly `key`.
    async fn versions_of(&self, key: &str) -> Result<Vec<(String, bool)>, BackendError> {
        let mut out = Vec::new();
        self.each_versions_page(key, |page| {
            for v in page.versions() {
                if v.key() == Some(key)
                    && let Some(id) = v.version_id()
                {
                    out.push((id.to_string(), false));
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(key)
                    && let Some(id) = m.version_id()
                {
                    out.push((id.to_string(), true));
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// Deletes every version of `key`, data versions first, delete markers last (so a
    /// refused version stays visible instead of hidden behind a marker). A version still
    /// under retention ends it with `Locked`.
    pub(super) async fn delete_versions(&self, key: &str, what: &str) -> Result<(), BackendError> {
        let mut versions = self.versions_of(key).await?;
        if versions.is_empty() {
            // Unversioned bucket (or nothing there): a plain delete is a real delete.
            return self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.fail("DeleteObject", key, &e));
        }
        versions.sort_by_key(|(_, marker)| *marker);
        for (id, _) in versions {
            if let Err(e) = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .version_id(&id)
                .send()
                .await
            {
                if e.code() == Some("AccessDenied") || status_of(&e) == Some(403) {
                    let until = match self.get_retention(key, Some(&id)).await {
                        Ok(Some(r)) => fmt_time(r.until),
                        _ => "an unknown date (the server refused the delete)".into(),
                    };
                    return Err(BackendError::Locked {
                        what: what.to_string(),
                        location: super::Backend::location(self),
                        until,
                    });
                }
                return Err(self.fail("DeleteObject (version)", key, &e));
            }
        }
        Ok(())
    }

    /// Proves that this bucket enforces Object Lock: its lock configuration says enabled,
    /// a probe object written with a short retention in `mode` reads back that retention,
    /// and deleting that very version is refused. Each failure names what the server did.
    pub(super) async fn prove_object_lock(&self, mode: LockMode) -> Result<(), BackendError> {
        let here = format!("bucket {:?} at {}", self.bucket, self.endpoint);
        let refuse = |what: String| {
            BackendError::Other(format!(
                "object-lock mode refused: {what}; volguard will not pretend data is locked \
                 there. Use a server that enforces S3 Object Lock (AWS S3, MinIO, Ceph RGW, \
                 SeaweedFS), or --retention-mode none / epochs"
            ))
        };
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                if !enabled {
                    return Err(refuse(format!(
                        "{here} does not have Object Lock enabled (GetObjectLockConfiguration \
                         says so); Object Lock can only be enabled when a bucket is created \
                         (x-amz-bucket-object-lock-enabled: true): create a new bucket with it"
                    )));
                }
            }
            Err(e) if is_not_implemented(&e) => {
                return Err(refuse(format!(
                    "the server{} at {} does not implement Object Lock: \
                     GetObjectLockConfiguration on {:?} answered {} (Garage behaves like this)",
                    server_of(&e).map(|s| format!(" ({s})")).unwrap_or_default(),
                    self.endpoint,
                    self.bucket,
                    e.code().unwrap_or("HTTP 501 Not Implemented")
                )));
            }
            Err(e) if is_no_lock_config(&e) => {
                return Err(refuse(format!(
                    "{here} has no Object Lock configuration ({}); Object Lock can only be \
                     enabled when a bucket is created (x-amz-bucket-object-lock-enabled: true)",
                    e.code().unwrap_or("no configuration")
                )));
            }
            Err(e) => return Err(self.fail("GetObjectLockConfiguration", &self.bucket, &e)),
        }
        self.remove_expired_probes().await;
        let until = SystemTime::now() + PROBE_RETENTION;
        let unix = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = self.with_prefix(&format!(
            "{PROBE_DIR}/{unix}-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let body = b"volguard object lock probe".to_vec();
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_md5(content_md5(&body))
            .object_lock_mode(object_lock_mode(mode))
            .object_lock_retain_until_date(until.into())
            .body(ByteStream::from(body))
            .send()
            .await;
        let version = match put {
            Ok(o) => o.version_id().map(str::to_string),
            Err(e) if is_not_implemented(&e) => {
                return Err(refuse(format!(
                    "the server{} at {} refuses a PutObject with Object Lock headers ({})",
                    server_of(&e).map(|s| format!(" ({s})")).unwrap_or_default(),
                    self.endpoint,
                    e.code().unwrap_or("HTTP 501")
                )));
            }
            Err(e) => return Err(self.fail("PutObject (Object Lock probe)", &key, &e)),
        };
        let Some(version) = version else {
            return Err(refuse(format!(
                "{here} accepted a PutObject with Object Lock headers but returned no version \
                 id: versioning is off, so the lock headers were ignored"
            )));
        };
        let got = match self.get_retention(&key, Some(&version)).await {
            Ok(r) => r,
            Err(e) => {
                return Err(refuse(format!(
                    "{here} accepted a PutObject with Object Lock headers, but GetObjectRetention \
                     on it failed ({e})"
                )));
            }
        };
        let close = |t: SystemTime| {
            let d = match t.duration_since(until) {
                Ok(d) => d,
                Err(e) => e.duration(),
            };
            d <= Duration::from_secs(2)
        };
        match got {
            Some(r) if r.mode == mode && close(r.until) => {}
            Some(r) => {
                return Err(refuse(format!(
                    "{here} stored a different retention than asked for ({} until {} instead of \
                     {} until {})",
                    r.mode.as_s3(),
                    fmt_time(r.until),
                    mode.as_s3(),
                    fmt_time(until)
                )));
            }
            None => {
                return Err(refuse(format!(
                    "{here} accepted a PutObject with Object Lock headers ({} until {}) but \
                     GetObjectRetention shows no retention on it: the server ignores the lock \
                     headers",
                    mode.as_s3(),
                    fmt_time(until)
                )));
            }
        }
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .version_id(&version)
            .send()
            .await
        {
            Ok(_) => Err(refuse(format!(
                "{here} deleted an object version still under {} retention (probe {key}): the \
                 server records retention but does not enforce it",
                mode.as_s3()
            ))),
            Err(e) if e.code() == Some("AccessDenied") || status_of(&e) == Some(403) => Ok(()),
            Err(e) => Err(self.fail("DeleteObject (Object Lock probe)", &key, &e)),
        }
    }

    /// Deletes probe objects whose retention has passed (their name starts with the unix
    /// time it ends). Best effort: a leftover probe costs a few bytes.
    async fn remove_expired_probes(&self) {
        let prefix = self.with_prefix(&format!("{PROBE_DIR}/"));
        let Ok(page) = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .send()
            .await
        else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let entries = page
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                page.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            );
        for (key, version) in entries {
            let (Some(key), Some(version)) = (key, version) else {
                continue;
            };
            let expired = key[prefix.len().min(key.len())..]
                .split('-')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t + 1 < now);
            if expired {
                let _ = self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .version_id(version)
                    .send()
                    .await;
            }
        }
    }

    /// Delete markers that hide repository objects, and noncurrent versions, under the
    /// repository prefix (volguard's own probes excluded). None on an unversioned bucket.
    pub(super) async fn summarize_versions(&self) -> Result<Option<VersionSummary>, BackendError> {
        let v = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.fail("GetBucketVersioning", &self.bucket, &e))?;
        if v.status().is_none() {
            return Ok(None);
        }
        let prefix = self.with_prefix("");
        let probes = self.with_prefix(&format!("{PROBE_DIR}/"));
        let mut summary = VersionSummary::default();
        self.each_versions_page(&prefix, |page| {
            for m in page.delete_markers() {
                if let (Some(k), Some(id), Some(true)) = (m.key(), m.version_id(), m.is_latest())
                    && !k.starts_with(&probes)
                {
                    let rel = k[prefix.len().min(k.len())..].to_string();
                    summary.hidden.push((rel, id.to_string()));
                }
            }
            for v in page.versions() {
                if v.is_latest() != Some(true) && !v.key().is_some_and(|k| k.starts_with(&probes)) {
                    summary.noncurrent += 1;
                    summary.noncurrent_bytes += v.size().unwrap_or(0).max(0) as u64;
                }
            }
        })
        .await?;
        Ok(Some(summary))
    }

    /// Versioning, Object Lock configuration and lifecycle rules of the bucket.
    pub(super) async fn read_bucket_settings(&self) -> Result<BucketSettings, BackendError> {
        let mut s = BucketSettings::default();
        let v = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.fail("GetBucketVersioning", &self.bucket, &e))?;
        s.versioning = v.status().map(|st| st.as_str().to_string());
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let c = out.object_lock_configuration();
                s.object_lock = Some(
                    c.and_then(|c| c.object_lock_enabled())
                        .is_some_and(|e| e.as_str() == "Enabled"),
                );
                if let Some(d) = c.and_then(|c| c.rule()).and_then(|r| r.default_retention()) {
                    let days = d.days().unwrap_or(0) + d.years().unwrap_or(0) * 365;
                    s.default_retention = Some((
                        d.mode().map(|m| m.as_str().to_string()).unwrap_or_default(),
                        days.max(0) as u32,
                    ));
                }
            }
            Err(e) if is_no_lock_config(&e) => s.object_lock = Some(false),
            Err(e) => {
                s.server = server_of(&e);
                s.object_lock_error = Some(format!(
                    "{} (HTTP {})",
                    e.code().unwrap_or("error"),
                    status_of(&e).unwrap_or(0)
                ));
            }
        }
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                for r in out.rules() {
                    let f = r.filter();
                    let prefix = f
                        .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                        .or({
                            #[allow(deprecated)]
                            r.prefix()
                        })
                        .unwrap_or("")
                        .to_string();
                    let other_filter = f.is_some_and(|f| {
                        f.tag().is_some()
                            || f.object_size_greater_than().is_some()
                            || f.object_size_less_than().is_some()
                            || f.and().is_some_and(|a| {
                                !a.tags().is_empty()
                                    || a.object_size_greater_than().is_some()
                                    || a.object_size_less_than().is_some()
                            })
                    });
                    s.lifecycle.push(LifecycleRule {
                        id: r.id().unwrap_or("").to_string(),
                        enabled: *r.status() == ExpirationStatus::Enabled,
                        prefix,
                        expiration_days: r.expiration().and_then(|e| e.days()),
                        expiration_date: r
                            .expiration()
                            .and_then(|e| e.date())
                            .and_then(|d| SystemTime::try_from(*d).ok())
                            .map(fmt_time),
                        noncurrent_days: r
                            .noncurrent_version_expiration()
                            .and_then(|n| n.noncurrent_days()),
                        abort_multipart_days: r
                            .abort_incomplete_multipart_upload()
                            .and_then(|a| a.days_after_initiation()),
                        other_filter,
                    });
                }
            }
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => {}
            Err(e) => {
                s.server = s.server.or_else(|| server_of(&e));
                s.lifecycle_error = Some(format!(
                    "{} (HTTP {})",
                    e.code().unwrap_or("error"),
                    status_of(&e).unwrap_or(0)
                ));
            }
        }
        Ok(s)
    }

    /// PutBucketLifecycleConfiguration with `rules` (replacing the bucket's rules).
    pub(super) async fn write_lifecycle(
        &self,
        rules: &[LifecycleRule],
    ) -> Result<(), BackendError> {
        let mut built = Vec::new();
        for r in rules {
            let mut b = aws_sdk_s3::types::LifecycleRule::builder()
                .id(&r.id)
                .status(if r.enabled {
                    ExpirationStatus::Enabled
                } else {
                    ExpirationStatus::Disabled
                })
                .filter(LifecycleRuleFilter::builder().prefix(&r.prefix).build());
            if let Some(d) = r.expiration_days {
                b = b.expiration(LifecycleExpiration::builder().days(d).build());
            }
            if let Some(d) = r.noncurrent_days {
                b = b.noncurrent_version_expiration(
                    NoncurrentVersionExpiration::builder()
                        .noncurrent_days(d)
                        .build(),
                );
            }
            if let Some(d) = r.abort_multipart_days {
                b = b.abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(d)
                        .build(),
                );
            }
            built.push(b.build().map_err(|e| {
                BackendError::Other(format!("lifecycle rule {:?} is incomplete: {e}", r.id))
            })?);
        }
        let conf = BucketLifecycleConfiguration::builder()
            .set_rules(Some(built))
            .build()
            .map_err(|e| BackendError::Other(format!("lifecycle configuration: {e}")))?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(conf)
            .send()
            .await
            .map_err(|e| self.fail("PutBucketLifecycleConfiguration", &self.bucket, &e))?;
        Ok(())
    }
}
