//! The S3 backend: one object per repository object, under an optional key prefix, with
//! the same layout as the local directory store (`config`, `keys/<id>`,
//! `packs/<xx>/<id>`, `index/<id>`, `snapshots/<id>`).
//!
//! Settings come from the standard AWS sources (environment, profile files): the endpoint
//! from `AWS_ENDPOINT_URL`, the region from `AWS_REGION`/`AWS_DEFAULT_REGION`/the profile,
//! else `us-east-1`. A custom endpoint gets path-style addressing unless
//! `VOLGUARD_S3_PATH_STYLE=0`. Checksums are only computed when an operation requires
//! them (many S3-compatible servers reject the SDK's default CRC trailers), and every
//! PutObject carries a `Content-MD5` header, which Object Lock buckets require.

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use md5::{Digest, Md5};

use super::{Backend, BackendError, Kind, ObjectInfo};

/// Attempts per request (the first try included) with the SDK's standard retry strategy.
const MAX_ATTEMPTS: u32 = 5;
/// Region used when no standard source names one.
const DEFAULT_REGION: &str = "us-east-1";
/// Set to `0` to keep virtual-hosted-style addressing with a custom endpoint.
const PATH_STYLE_ENV: &str = "VOLGUARD_S3_PATH_STYLE";

pub struct S3Backend {
    client: Client,
    bucket: String,
    /// Key prefix without leading or trailing slash; empty for the bucket root.
    prefix: String,
    /// Where requests go, for messages: the custom endpoint or `AWS S3 (<region>)`.
    endpoint: String,
}

impl S3Backend {
    /// Loads the AWS settings and builds the client. Runs on a small runtime of its own,
    /// so callers stay synchronous; requests later run on the repository's runtime.
    pub fn new(bucket: &str, prefix: &str) -> Result<S3Backend, BackendError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Other(format!("cannot start a runtime for S3: {e}")))?;
        Ok(rt.block_on(Self::build(bucket, prefix)))
    }

    async fn build(bucket: &str, prefix: &str) -> S3Backend {
        // Environment and profile files only: the instance-metadata lookup of the default
        // chain would stall for seconds on a host that is not a cloud VM.
        let region = RegionProviderChain::first_try(
            aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new())
        .or_else(DEFAULT_REGION);
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let custom_endpoint = shared.endpoint_url().map(str::to_string);
        let path_style = custom_endpoint.is_some()
            && std::env::var(PATH_STYLE_ENV)
                .map(|v| v != "0")
                .unwrap_or(true);
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .build();
        let endpoint = custom_endpoint.unwrap_or_else(|| {
            let r = shared
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| DEFAULT_REGION.into());
            format!("AWS S3 ({r})")
        });
        S3Backend {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
        }
    }

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

    /// One line: operation, object, endpoint, service error code, message, HTTP status.
    fn fail<E>(&self, op: &str, key: &str, err: &SdkError<E>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let what = match (err.code(), err.message()) {
            (Some(code), Some(msg)) if !msg.is_empty() => format!("{code}: {msg}"),
            (Some(code), _) => code.to_string(),
            _ => match status {
                // HEAD responses carry no body, so no code: name the usual ones.
                Some(403) => "AccessDenied (a HEAD answer carries no error code: wrong credentials or no permission)".to_string(),
                Some(404) => "NotFound (a HEAD answer carries no error code)".to_string(),
                _ => one_line(&DisplayErrorContext(err).to_string()),
            },
        };
        let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
        BackendError::Other(format!(
            "S3 {op} of s3://{}/{key} at {} failed: {what}{status}",
            self.bucket, self.endpoint
        ))
    }

    fn not_found(&self, kind: Kind, name: &str) -> BackendError {
        BackendError::NotFound {
            kind,
            name: name.to_string(),
            location: self.location(),
        }
    }

    async fn read(
        &self,
        op: &str,
        kind: Kind,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>, BackendError> {
        let key = self.key(kind, name);
        let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
        if let Some((offset, len)) = range {
            req = req.range(format!("bytes={}-{}", offset, offset + len - 1));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if is_missing_object(&e) => return Err(self.not_found(kind, name)),
            Err(e) => return Err(self.fail(op, &key, &e)),
        };
        let body = resp.body.collect().await.map_err(|e| {
            BackendError::Other(format!(
                "S3 {op} of s3://{}/{key} at {} failed while reading the body: {}",
                self.bucket,
                self.endpoint,
                one_line(&DisplayErrorContext(&e).to_string())
            ))
        })?;
        Ok(body.into_bytes().to_vec())
    }
}

/// A missing object (not a missing bucket, which must be reported as such).
fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err.code() {
        Some("NoSuchKey") | Some("NotFound") => true,
        Some(_) => false,
        None => status == Some(404),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

    async fn put(&self, kind: Kind, name: &str, data: Vec<u8>) -> Result<(), BackendError> {
        let key = self.key(kind, name);
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data));
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_md5(md5)
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.fail("PutObject", &key, &e))?;
        Ok(())
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError> {
        self.read("GetObject", kind, name, None).await
    }

    async fn get_range(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let data = self
            .read("GetObject (range)", kind, name, Some((offset, len)))
            .await?;
        if data.len() as u64 != len {
            return Err(BackendError::Other(format!(
                "S3 GetObject (range) of s3://{}/{} at {}: asked for {len} bytes at offset {offset}, got {} (object shorter than the index says?)",
                self.bucket,
                self.key(kind, name),
                self.endpoint,
                data.len()
            )));
        }
        Ok(data)
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
        let prefix = self.with_prefix(&format!("{}/", kind.dir()));
        if kind == Kind::Config {
            // `config` is a single object, not a namespace.
            return Ok(match self.exists(kind, "config").await? {
                true => vec![ObjectInfo {
                    name: "config".into(),
                    size: 0,
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

    /// S3 needs no directories; only checks that the bucket exists and is reachable.
    async fn create(&self) -> Result<(), BackendError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                Err(BackendError::Other(format!(
                    "bucket {:?} does not exist at {} (HeadBucket: NoSuchBucket); create it first, volguard does not create buckets",
                    self.bucket, self.endpoint
                )))
            }
            Err(e) => Err(self.fail("HeadBucket", "", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
