//! The `[s3]` table of the config file and its validation into the values the backend
//! runs with (concurrency, part sizes, storage class, server-side encryption).

use std::path::PathBuf;

use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use serde::Deserialize;

use super::BackendError;

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
pub(super) struct Tuning {
    pub(super) upload_concurrency: usize,
    pub(super) download_concurrency: usize,
    pub(super) multipart_threshold: usize,
    pub(super) part_size: usize,
    pub(super) part_concurrency: usize,
    pub(super) storage_class: Option<StorageClass>,
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) sse_kms_key_id: Option<String>,
}

impl S3Settings {
    /// Checks the values without building a client, so a bad `[s3]` table is refused when
    /// the config file is loaded instead of at the first upload. Each message starts with
    /// the offending key.
    pub fn validate(&self) -> Result<(), BackendError> {
        self.tuning().map(|_| ())
    }

    pub(super) fn tuning(&self) -> Result<Tuning, BackendError> {
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
