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

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::{
    Backend, BackendError, BucketSettings, Kind, LifecycleRule, LockMode, ObjectInfo, Retention,
    VersionSummary,
};

mod retention;

/// Attempts per request (the first try included) with the SDK's standard retry strategy,
/// which backs off exponentially with full jitter on 5xx, throttling (SlowDown), timeouts
/// and connection resets.
const MAX_ATTEMPTS: u32 = 5;
/// Region used when no source names one.
const DEFAULT_REGION: &str = "us-east-1";
/// A server that does not accept a connection within this is treated as down (retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the first byte of an answer, upload time included; a hung server
/// fails the attempt instead of the whole backup hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Packs stored at the same time by default (each in flight holds one pack in memory).
const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Objects above this go up in parts by default. Packs (16 MiB) stay single requests: for
/// them a multipart upload costs two extra round trips and buys nothing.
const DEFAULT_MULTIPART_THRESHOLD_MIB: u64 = 64;
const DEFAULT_PART_SIZE_MIB: u64 = 16;
/// Reads a restore keeps in flight by default: restores wait on round trips, not cores.
const DEFAULT_DOWNLOAD_CONCURRENCY: usize = 8;
/// Parts of one object uploaded at the same time by default.
const DEFAULT_PART_CONCURRENCY: usize = 4;
/// S3's lower bound on every part but the last.
const MIN_PART_SIZE_MIB: u64 = 5;

/// The `[s3]` table of the config file. Every field is optional: unset ones come from the
/// standard AWS sources or the defaults above. Secrets are only ever given by file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// e.g. `https://s3.example.internal:9000`; default `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default on for custom endpoints.
    pub path_style: Option<bool>,
    /// A profile of the shared AWS config and credentials files.
    pub profile: Option<String>,
    /// Static credentials: the key id, with the secret key read from a 0600 file.
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Storage class for packs (e.g. `STANDARD_IA`); metadata stays in the default class
    /// because it is read on every run.
    pub storage_class: Option<String>,
    /// Server-side encryption: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS).
    pub sse: Option<String>,
    /// KMS key for `sse = "aws:kms"`; default the bucket's / account's key.
    pub sse_kms_key_id: Option<String>,
    /// PEM file of extra root certificates for a private endpoint (added to the system's).
    pub ca_bundle: Option<PathBuf>,
    /// Packs stored at the same time.
    pub upload_concurrency: Option<usize>,
    /// Reads a restore keeps in flight.
    pub download_concurrency: Option<usize>,
    pub multipart_threshold_mib: Option<u64>,
    pub part_size_mib: Option<u64>,
    pub part_concurrency: Option<usize>,
}

/// Settings after validation, as the backend uses them.
#[derive(Clone)]
struct Tuning {
    upload_concurrency: usize,
    download_concurrency: usize,
    multipart_threshold: usize,
    part_size: usize,
    part_concurrency: usize,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
}

impl S3Settings {
    /// Checks the values without building a client, so a bad `[s3]` table is refused when
    /// the config file is loaded instead of at the first upload. Each message starts with
    /// the offending key.
    pub fn validate(&self) -> Result<(), BackendError> {
        self.tuning().map(|_| ())
    }

    fn tuning(&self) -> Result<Tuning, BackendError> {
        let bad = |what: String| BackendError::Other(format!("config [s3]: {what}"));
        let count = |v: Option<usize>, name: &str, default: usize| match v {
            Some(0) => Err(bad(format!("{name} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let part_size_mib = self.part_size_mib.unwrap_or(DEFAULT_PART_SIZE_MIB);
        if part_size_mib < MIN_PART_SIZE_MIB {
            return Err(bad(format!(
                "part_size_mib = {part_size_mib} is below S3's minimum part size of {MIN_PART_SIZE_MIB} MiB"
            )));
        }
        let sse = match self.sse.as_deref() {
            None => None,
            Some("AES256") => Some(ServerSideEncryption::Aes256),
            Some("aws:kms") => Some(ServerSideEncryption::AwsKms),
            Some(other) => {
                return Err(bad(format!(
                    "sse = {other:?} is not known; use \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"
                )));
            }
        };
        if self.sse_kms_key_id.is_some() && sse != Some(ServerSideEncryption::AwsKms) {
            return Err(bad(
                "sse_kms_key_id is set but sse is not \"aws:kms\"".into()
            ));
        }
        let mib = |m: u64| usize::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        Ok(Tuning {
            upload_concurrency: count(
                self.upload_concurrency,
                "upload_concurrency",
                DEFAULT_UPLOAD_CONCURRENCY,
            )?,
            download_concurrency: count(
                self.download_concurrency,
                "download_concurrency",
                DEFAULT_DOWNLOAD_CONCURRENCY,
            )?,
            multipart_threshold: mib(self
                .multipart_threshold_mib
                .unwrap_or(DEFAULT_MULTIPART_THRESHOLD_MIB)),
            part_size: mib(part_size_mib),
            part_concurrency: count(
                self.part_concurrency,
                "part_concurrency",
                DEFAULT_PART_CONCURRENCY,
            )?,
            storage_class: self.storage_class.as_deref().map(StorageClass::from),
            sse,
            sse_kms_key_id: self.sse_kms_key_id.clone(),
        })
    }
}

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
    /// Loads the AWS settings and builds the client. Runs on a small runtime of its own,
    /// so callers stay synchronous; requests later run on the repository's runtime.
    pub fn new(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Result<S3Backend, BackendError> {
        let tuning = settings.tuning()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Other(format!("cannot start a runtime for S3: {e}")))?;
        rt.block_on(Self::build(bucket, prefix, settings, tuning))
    }

    async fn build(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
        tuning: Tuning,
    ) -> Result<S3Backend, BackendError> {
        // Environment and profile files only: the instance-metadata lookup of the default
        // region chain would stall for seconds on a host that is not a cloud VM.
        let region =
            RegionProviderChain::first_try(settings.region.clone().map(aws_config::Region::new))
                .or_else(aws_config::environment::region::EnvironmentVariableRegionProvider::new())
                .or_else(aws_config::profile::ProfileFileRegionProvider::new())
                .or_else(DEFAULT_REGION);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        match (&settings.access_key_id, &settings.secret_access_key_file) {
            (Some(id), Some(file)) => {
                let secret = crate::secrets::read_secret_file(file, "S3 secret access key file")
                    .map_err(|e| BackendError::Other(e.to_string()))?;
                let secret = String::from_utf8(secret).map_err(|_| {
                    BackendError::Other(format!(
                        "S3 secret access key file {} is not text",
                        file.display()
                    ))
                })?;
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "volguard config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(BackendError::Other(
                    "config [s3]: access_key_id and secret_access_key_file go together; set both or neither".into(),
                ));
            }
        }
        if let Some(ca) = &settings.ca_bundle {
            loader = loader.http_client(http_client_trusting(ca)?);
        }
        let shared = loader.load().await;
        let custom_endpoint = shared.endpoint_url().map(str::to_string);
        let path_style = settings.path_style.unwrap_or(custom_endpoint.is_some());
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
        Ok(S3Backend {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            tuning,
        })
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
            _ => match (status, err) {
                // HEAD responses carry no body, so no code: name the usual ones.
                (Some(403), _) => "AccessDenied (a HEAD answer carries no error code: wrong credentials or no permission)".to_string(),
                (Some(404), _) => "NotFound (a HEAD answer carries no error code)".to_string(),
                (_, SdkError::DispatchFailure(d)) => {
                    let cause = d
                        .as_connector_error()
                        .map(|c| root_cause(c))
                        .unwrap_or_else(|| one_line(&DisplayErrorContext(err).to_string()));
                    let hint = if cause.contains("certificate") {
                        "the server's TLS certificate is not trusted: put the CA certificate that signed it in a PEM file and name that file as ca_bundle in the [s3] config table"
                    } else {
                        "is it running, and is the endpoint right?"
                    };
                    format!("cannot reach the server ({cause}) after {MAX_ATTEMPTS} attempts; {hint}")
                }
                (_, SdkError::TimeoutError(_)) => format!(
                    "no answer within {}s after {MAX_ATTEMPTS} attempts; the server is overloaded or hung",
                    READ_TIMEOUT.as_secs()
                ),
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

    /// GetObject of the whole object (`range` None) or of `(offset, len)`, into `sink`.
    async fn read(
        &self,
        op: &str,
        kind: Kind,
        name: &str,
        range: Option<(u64, u64)>,
        mut sink: Body<'_>,
    ) -> Result<(), BackendError> {
        if let Some((_, 0)) = range {
            // An empty range is not a valid Range header; there is nothing to fetch.
            if let Body::Collect(buf) = sink {
                buf.clear();
            }
            return Ok(());
        }
        let key = self.key(kind, name);
        // The SDK retries a request until its headers arrive; a body cut off after that
        // (a reset, a dying proxy) is retried here, with the same backoff. A range is
        // resumed after the bytes already handed on, so a consumer of pieces sees each byte
        // once; a whole object starts again (it might have been replaced meanwhile).
        let mut got = 0u64;
        let mut attempt = 1;
        loop {
            let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
            if let Some((offset, len)) = range {
                req = req.range(format!("bytes={}-{}", offset + got, offset + len - 1));
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if is_missing_object(&e) => return Err(self.not_found(kind, name)),
                Err(e) => return Err(self.fail(op, &key, &e)),
            };
            // A server that ignores the range answers from byte 0: only a body that starts
            // where asked is taken (a resumed read must not splice in the object's start).
            if let Some((offset, _)) = range
                && range_start(resp.content_range()) != Some(offset + got)
                && !(resp.content_range().is_none() && offset + got == 0)
            {
                return Err(BackendError::Other(format!(
                    "S3 {op} of s3://{}/{key} at {}: asked for bytes from {}, the answer has \
                     Content-Range {:?}; the server does not serve ranges as S3 does",
                    self.bucket,
                    self.endpoint,
                    offset + got,
                    resp.content_range().unwrap_or("(none)"),
                )));
            }
            if got == 0
                && let Body::Collect(buf) = &mut sink
            {
                buf.clear();
                if let Some((_, len)) = range {
                    buf.reserve(len as usize);
                }
            }
            let mut body = resp.body;
            let problem = loop {
                match body.next().await {
                    Some(Ok(piece)) => {
                        if range.is_some_and(|(_, len)| got + piece.len() as u64 > len) {
                            break "more bytes arrived than were asked for".to_string();
                        }
                        got += piece.len() as u64;
                        match &mut sink {
                            Body::Collect(buf) => buf.extend_from_slice(&piece),
                            Body::Each(f) => f(&piece),
                        }
                    }
                    Some(Err(e)) => break one_line(&DisplayErrorContext(&e).to_string()),
                    None => match range {
                        Some((_, len)) if got != len => {
                            break format!("{got} bytes arrived, {len} were asked for");
                        }
                        _ => return Ok(()),
                    },
                }
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(BackendError::Other(format!(
                    "S3 {op} of s3://{}/{key} at {} failed while reading the body ({MAX_ATTEMPTS} \
                     attempts): {problem}",
                    self.bucket, self.endpoint
                )));
            }
            if range.is_none() {
                got = 0;
            }
            let backoff = 100u64 << attempt.min(6);
            let jitter = rand::random::<u64>() % backoff;
            tokio::time::sleep(std::time::Duration::from_millis(backoff + jitter)).await;
            attempt += 1;
        }
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(header: Option<&str>) -> Option<u64> {
    header?
        .strip_prefix("bytes ")?
        .split_once('-')?
        .0
        .trim()
        .parse()
        .ok()
}

/// Where `S3Backend::read` puts a body.
enum Body<'a> {
    /// Collected whole.
    Collect(&'a mut Vec<u8>),
    /// Handed on piece by piece as it arrives.
    Each(&'a mut (dyn for<'p> FnMut(&'p [u8]) + Send)),
}

impl S3Backend {
    /// PutObject (or a multipart upload for large objects), with an Object Lock retention
    /// when `lock` is given.
    async fn put_with(
        &self,
        kind: Kind,
        name: &str,
        data: Bytes,
        lock: Option<Retention>,
    ) -> Result<(), BackendError> {
        let key = self.key(kind, name);
        if data.len() > self.tuning.multipart_threshold {
            return self.put_multipart(kind, &key, data, lock).await;
        }
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_md5(content_md5(&data))
            .set_object_lock_mode(lock.map(|l| retention::object_lock_mode(l.mode)))
            .set_object_lock_retain_until_date(lock.map(|l| l.until.into()))
            .content_length(len)
            .set_storage_class(self.storage_class(kind))
            .set_server_side_encryption(self.tuning.sse.clone())
            .set_ssekms_key_id(self.tuning.sse_kms_key_id.clone())
            .body(ByteStream::from(data))
            // UNSIGNED-PAYLOAD: the signed Content-MD5 covers the body (module docs).
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.fail("PutObject", &key, &e))?;
        Ok(())
    }

    /// Packs get the configured storage class; everything else is read on every run and
    /// stays in the bucket's default class.
    fn storage_class(&self, kind: Kind) -> Option<StorageClass> {
        (kind == Kind::Pack)
            .then(|| self.tuning.storage_class.clone())
            .flatten()
    }

    /// Uploads a large object in parts, a bounded number at a time. On any failure the
    /// upload is aborted so no invisible parts are left to be billed; if even the abort
    /// fails, the bucket's AbortIncompleteMultipartUpload rule is what cleans up.
    async fn put_multipart(
        &self,
        kind: Kind,
        key: &str,
        data: Bytes,
        lock: Option<Retention>,
    ) -> Result<(), BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_object_lock_mode(lock.map(|l| retention::object_lock_mode(l.mode)))
            .set_object_lock_retain_until_date(lock.map(|l| l.until.into()))
            .set_storage_class(self.storage_class(kind))
            .set_server_side_encryption(self.tuning.sse.clone())
            .set_ssekms_key_id(self.tuning.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.fail("CreateMultipartUpload", key, &e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(BackendError::Other(format!(
                "S3 CreateMultipartUpload of s3://{}/{key} at {} returned no upload id; the endpoint does not behave like S3",
                self.bucket, self.endpoint
            )));
        };
        let result = match self.upload_parts(key, upload_id, data).await {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.fail("CompleteMultipartUpload", key, &e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(key, "{}", self.fail("AbortMultipartUpload", key, &e));
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: Bytes,
    ) -> Result<Vec<CompletedPart>, BackendError> {
        use futures_util::{StreamExt, TryStreamExt};
        let part_size = self.tuning.part_size;
        let uploads = (0..data.len().div_ceil(part_size)).map(|i| {
            let part = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
            let number = i as i32 + 1;
            async move {
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_md5(content_md5(&part))
                    .content_length(part.len() as i64)
                    .body(ByteStream::from(part))
                    // UNSIGNED-PAYLOAD, as in `put_with`.
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| self.fail(&format!("UploadPart {number}"), key, &e))?;
                Ok::<_, BackendError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            }
        });
        let mut parts: Vec<CompletedPart> = futures_util::stream::iter(uploads)
            .buffer_unordered(self.tuning.part_concurrency)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    /// One cheap request that tells the common set-up mistakes apart before any real
    /// work: missing bucket, wrong credentials, wrong region, an endpoint that is not S3.
    async fn probe(&self) -> Result<(), BackendError> {
        let prefix = self.with_prefix("");
        let err = match self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(1)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let status = err.raw_response().map(|r| r.status().as_u16());
        let what = match (err.code(), &err) {
            (Some("NoSuchBucket"), _) => format!(
                "bucket {:?} does not exist at {} (NoSuchBucket); create it first, volguard does not create buckets",
                self.bucket, self.endpoint
            ),
            (
                Some(
                    code @ ("AuthorizationHeaderMalformed"
                    | "PermanentRedirect"
                    | "IllegalLocationConstraintException"),
                ),
                _,
            ) => format!(
                "bucket {:?} at {} is in another region than the configured {:?} ({code}: {}); set AWS_REGION or region in the [s3] config table",
                self.bucket,
                self.endpoint,
                self.client
                    .config()
                    .region()
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                err.message().unwrap_or("")
            ),
            (Some(_), _) => return Err(self.fail("ListObjectsV2", &prefix, &err)),
            // An answer that parses as no S3 error at all: a web server, a proxy's login
            // page, the S3 console URL instead of the API endpoint.
            (None, SdkError::ServiceError(_) | SdkError::ResponseError(_)) => format!(
                "{} answered ListObjectsV2 with something that is not an S3 response{}; check the endpoint URL (AWS_ENDPOINT_URL or endpoint in the [s3] config table)",
                self.endpoint,
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
            ),
            (None, _) => return Err(self.fail("ListObjectsV2", &prefix, &err)),
        };
        Err(BackendError::Other(what))
    }
}

/// The base64 MD5 that Object Lock buckets demand on every PutObject and UploadPart.
///
/// It runs over every byte a backup uploads, so it uses AWS-LC's assembly MD5 (already
/// linked for TLS): 620 MB/s here against 485 MB/s for the portable md-5 crate.
fn content_md5(data: &[u8]) -> String {
    let mut digest = [0u8; 16];
    // SAFETY: MD5 reads exactly `len` bytes from `data`, which is a live slice of that
    // length, and writes exactly 16 bytes to `digest`, which has that size. It keeps
    // neither pointer after returning.
    unsafe { aws_lc_sys::MD5(data.as_ptr(), data.len(), digest.as_mut_ptr()) };
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// An HTTPS client that trusts the system roots plus the certificates of a PEM file.
fn http_client_trusting(
    ca: &std::path::Path,
) -> Result<aws_sdk_s3::config::SharedHttpClient, BackendError> {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca).map_err(|e| {
        BackendError::Other(format!(
            "cannot read the CA bundle {} named by ca_bundle in the [s3] config table: {e}",
            ca.display()
        ))
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(BackendError::Other(format!(
            "the CA bundle {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca.display()
        )));
    }
    let ctx = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| BackendError::Other(format!("CA bundle {}: {e}", ca.display())))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(ctx)
        .build_https())
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

/// The innermost cause of an error chain ("Connection refused (os error 111)"), which is
/// the part a person can act on; the wrappers above it only say which layer saw it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_start_reads_content_range_and_refuses_garbage() {
        assert_eq!(range_start(Some("bytes 100-199/1000")), Some(100));
        assert_eq!(range_start(Some("bytes 0-0/*")), Some(0));
        for bad in ["", "bytes */1000", "items 1-2/3", "bytes x-2/3", "bytes 5"] {
            assert_eq!(range_start(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(range_start(None), None);
    }

    #[test]
    fn one_line_joins_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }

    #[test]
    fn content_md5_matches_the_reference_md5() {
        use md5::{Digest, Md5};
        // RFC 1321's test vector, then lengths around MD5's 64-byte block.
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
        for len in [0usize, 1, 55, 56, 63, 64, 65, 1000, (1 << 20) + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let want = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data));
            assert_eq!(content_md5(&data), want, "length {len}");
        }
    }
}
