//! The S3 backend: one object per repository object, under an optional key prefix, with
//! the same layout as the local directory store (`config`, `keys/<id>`,
//! `packs/<xx>/<id>`, `index/<id>`, `snapshots/<id>`).
//!
//! Settings come from the standard AWS sources (environment including `AWS_ENDPOINT_URL`,
//! shared config and credentials files, profiles, container and instance roles), each
//! overridable by the `[s3]` table of volguard's config file (see [`S3Settings`]). A custom
//! endpoint gets path-style addressing unless told otherwise. Checksums are only computed
//! when an operation requires them (many S3-compatible servers reject the SDK's default
//! CRC trailers and aws-chunked bodies), and every PutObject and UploadPart carries a
//! `Content-MD5` header, which Object Lock buckets require.
//!
//! Uploaded bodies are not hashed into the request signature (`UNSIGNED-PAYLOAD`): the
//! Content-MD5 header is signed and covers the body, and every object is sealed (AEAD)
//! anyway. Signing the payload hashed every uploaded byte with SHA-256 once more, about
//! 1 s of CPU per GiB (the benchmark's initial S3 backup: 10.2 s of user CPU, 9.0 s without).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use bytes::Bytes;

use self::errors::is_missing_object;
use self::objects::{Body, content_md5};
pub use self::settings::S3Settings;
use self::settings::Tuning;
use super::{
    Backend, BackendError, BucketSettings, Kind, LifecycleRule, LockMode, ObjectInfo, Retention,
    VersionSummary,
};

mod client;
mod errors;
mod objects;
mod retention;
mod settings;

/// Attempts per request (the first try included) with the SDK's standard retry strategy,
/// which backs off exponentially with full jitter on 5xx, throttling (SlowDown), timeouts
/// and connection resets.
const MAX_ATTEMPTS: u32 = 5;
/// Longest wait for the first byte of an answer, upload time included; a hung server
/// fails the attempt instead of the whole backup hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

pub struct S3Backend {
    client: Client,
    bucket: String,
    /// Key prefix without leading or trailing slash; empty for the bucket root.
    prefix: String,
    /// Where requests go, for messages: the custom endpoint or `AWS S3 (<region>)`.
    endpoint: String,
    tuning: Tuning,
}

impl S3Backend {
    fn key(&self, kind: Kind, name: &str) -> String {
        let rel = match kind {
            Kind::Config => "config".to_string(),
            Kind::Pack if name.len() >= 2 => format!("packs/{}/{name}", &name[..2]),
            _ => format!("{}/{name}", kind.dir()),
        };
        self.with_prefix(&rel)
    }

    fn with_prefix(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        let path = if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        };
        format!("{path} at {}", self.endpoint)
    }

    async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError> {
        let key = self.key(kind, name);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_missing_object(&e) => Ok(false),
            Err(e) => Err(self.fail("HeadObject", &key, &e)),
        }
    }

    async fn put(&self, kind: Kind, name: &str, data: Bytes) -> Result<(), BackendError> {
        self.put_with(kind, name, data, None).await
    }

    async fn put_locked(
        &self,
        kind: Kind,
        name: &str,
        data: Bytes,
        lock: Retention,
    ) -> Result<(), BackendError> {
        self.put_with(kind, name, data, Some(lock)).await
    }

    async fn retention(&self, kind: Kind, name: &str) -> Result<Option<Retention>, BackendError> {
        self.get_retention(&self.key(kind, name), None).await
    }

    async fn extend_retention(
        &self,
        kind: Kind,
        name: &str,
        lock: Retention,
    ) -> Result<(), BackendError> {
        self.put_retention(&self.key(kind, name), lock).await
    }

    async fn delete_all_versions(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        self.delete_versions(&self.key(kind, name), &format!("{}/{name}", kind.dir()))
            .await
    }

    async fn verify_object_lock(&self, mode: LockMode) -> Result<(), BackendError> {
        self.prove_object_lock(mode).await
    }

    async fn bucket_settings(&self) -> Result<BucketSettings, BackendError> {
        self.read_bucket_settings().await
    }

    async fn put_lifecycle(&self, rules: &[LifecycleRule]) -> Result<(), BackendError> {
        self.write_lifecycle(rules).await
    }

    async fn version_summary(&self) -> Result<Option<VersionSummary>, BackendError> {
        self.summarize_versions().await
    }

    fn sub(&self, dir: &str) -> Option<std::sync::Arc<dyn Backend>> {
        Some(std::sync::Arc::new(S3Backend {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            prefix: self.with_prefix(dir.trim_matches('/')),
            endpoint: self.endpoint.clone(),
            tuning: self.tuning.clone(),
        }))
    }

    async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, BackendError> {
        let prefix = self.with_prefix(&format!("{}/", dir.trim_matches('/')));
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("ListObjectsV2", &prefix, &e))?;
            for p in page.common_prefixes() {
                if let Some(name) = p
                    .prefix()
                    .and_then(|k| k.strip_prefix(prefix.as_str()))
                    .map(|k| k.trim_end_matches('/'))
                    .filter(|k| !k.is_empty())
                {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn upload_concurrency(&self) -> usize {
        self.tuning.upload_concurrency
    }

    fn read_concurrency(&self) -> usize {
        self.tuning.download_concurrency
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError> {
        let mut data = Vec::new();
        self.read("GetObject", kind, name, None, Body::Collect(&mut data))
            .await?;
        Ok(data)
    }

    async fn get_range_into(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        // `read` refuses (after retries) a body of any other length than asked for.
        self.read(
            "GetObject (range)",
            kind,
            name,
            Some((offset, len)),
            Body::Collect(buf),
        )
        .await
    }

    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> Result<(), BackendError> {
        self.read(
            "GetObject (range)",
            kind,
            name,
            Some((offset, len)),
            Body::Each(sink),
        )
        .await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
        let prefix = self.with_prefix(&format!("{}/", kind.dir()));
        if kind == Kind::Config {
            // `config` is a single object, not a namespace.
            return Ok(match self.exists(kind, "config").await? {
                true => vec![ObjectInfo {
                    name: "config".into(),
                    size: 0,
                    modified: None,
                }],
                false => Vec::new(),
            });
        }
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("ListObjectsV2", &prefix, &e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let rel = &key[prefix.len().min(key.len())..];
                // Packs sit one fan-out level down; anything deeper is not ours.
                let name = match (kind, rel.split_once('/')) {
                    (Kind::Pack, Some((_, n))) if !n.contains('/') => n,
                    (_, None) => rel,
                    _ => continue,
                };
                if name.is_empty() {
                    continue;
                }
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    modified: obj
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        let key = self.key(kind, name);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.fail("DeleteObject", &key, &e))?;
        Ok(())
    }

    /// S3 needs no directories, and `check_reachable` has already seen the bucket.
    async fn create(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn check_reachable(&self) -> Result<(), BackendError> {
        self.probe().await
    }
}
