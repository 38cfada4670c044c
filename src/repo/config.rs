//! The repository's config object (format version, chunker, compression, pack size,
//! retention mode) and where a repository lives (`--repo`: a path or `s3://`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::backend::s3::{S3Backend, S3Settings};
use crate::error::{Error, Result};
use crate::repo::format::pack::MAX_BLOB_BYTES;

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
    pub(super) fn validate(&self) -> Result<()> {
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
