//! An S3 client of the tests' own (aws-sdk-s3, not volguard's backend), for looking at and
//! changing a test bucket directly: object versions, retention, lifecycle rules.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};

use super::S3Env;

/// A small runtime for one blocking call at a time.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A client for `s3` (path-style, checksums only where required, like volguard's).
pub fn client(s3: &S3Env) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&s3.endpoint)
        .region(Region::new(s3.region.clone()))
        .credentials_provider(Credentials::new(
            &s3.access_key,
            &s3.secret_key,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

/// One object version: key, version id, whether it is a delete marker.
#[derive(Debug, Clone)]
pub struct Version {
    pub key: String,
    pub id: String,
    pub marker: bool,
}

pub fn versions(c: &Client, bucket: &str) -> Vec<Version> {
    let page = rt()
        .block_on(c.list_object_versions().bucket(bucket).send())
        .unwrap();
    assert_ne!(page.is_truncated(), Some(true), "test buckets stay small");
    let mut out: Vec<Version> = page
        .versions()
        .iter()
        .map(|v| Version {
            key: v.key().unwrap().to_string(),
            id: v.version_id().unwrap().to_string(),
            marker: false,
        })
        .collect();
    out.extend(page.delete_markers().iter().map(|m| Version {
        key: m.key().unwrap().to_string(),
        id: m.version_id().unwrap().to_string(),
        marker: true,
    }));
    out
}

/// (mode, retain-until) of one version, or None.
pub fn retention(
    c: &Client,
    bucket: &str,
    key: &str,
    version: &str,
) -> Option<(String, SystemTime)> {
    let out = rt()
        .block_on(
            c.get_object_retention()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send(),
        )
        .ok()?;
    let r = out.retention()?;
    Some((
        r.mode()?.as_str().to_string(),
        SystemTime::try_from(*r.retain_until_date()?).ok()?,
    ))
}

pub fn try_delete_version(
    c: &Client,
    bucket: &str,
    key: &str,
    version: &str,
) -> Result<(), String> {
    rt().block_on(
        c.delete_object()
            .bucket(bucket)
            .key(key)
            .version_id(version)
            .send(),
    )
    .map(|_| ())
    .map_err(|e| {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        e.code().unwrap_or("no code").to_string()
    })
}

/// Deletes every version once retention allows, then the bucket (waits up to 2 minutes).
pub fn purge(c: &Client, bucket: &str) {
    let deadline = SystemTime::now() + Duration::from_secs(120);
    loop {
        let left: Vec<Version> = versions(c, bucket)
            .into_iter()
            .filter(|v| try_delete_version(c, bucket, &v.key, &v.id).is_err())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            SystemTime::now() < deadline,
            "versions still locked 2 minutes later: {left:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    rt().block_on(c.delete_bucket().bucket(bucket).send())
        .unwrap_or_else(|e| panic!("delete bucket {bucket}: {e:?}"));
}
