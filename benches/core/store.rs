//! Where each tool keeps its backups: a local directory, or a bucket of its
//! own on a loopback S3 server (the bench's own SeaweedFS, see seaweed.rs, or
//! the one `--s3-env` names).
//!
//! The S3 side talks to the server with `curl --aws-sigv4` rather than an SDK:
//! the bench only needs four calls (CreateBucket, ListObjectsV2, DeleteObject,
//! DeleteBucket), curl is already required by the test environment, and the
//! bench binary stays small and quick to build. Endpoint and credentials are
//! handed to the measured tools through their own environment only, never set
//! on this process.
//!
//! "Bytes stored" is the sum of the sizes of all objects in a tool's bucket
//! as ListObjectsV2 reports them: what the server keeps (and a provider would
//! bill), the S3 counterpart of the apparent size of a local repository.

use crate::measure::dir_bytes;
use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::rc::Rc;

/// Every bucket this bench creates starts with this, so that a stray one on
/// the server is recognisable at a glance.
const BUCKET_PREFIX: &str = "volguard-bench";
/// Keys per DELETE batch: one curl process deletes this many objects.
const DELETE_BATCH: usize = 200;

/// A tool's storage.
pub enum Storage {
    /// A directory under the bench's work directory.
    Dir(PathBuf),
    /// A bucket on the S3 server, created by this bench for this tool alone.
    Bucket {
        server: Rc<S3Server>,
        bucket: String,
    },
}

impl Storage {
    /// Bytes stored: apparent size of the directory, or the sum of the
    /// bucket's object sizes.
    pub fn bytes(&self) -> Result<u64> {
        match self {
            Storage::Dir(dir) => dir_bytes(dir),
            Storage::Bucket { server, bucket } => {
                Ok(server.list(bucket)?.iter().map(|(_, size)| size).sum())
            }
        }
    }

    /// Whether the tool's `init` left anything behind (a CLI that is still a
    /// stub exits 0 without doing anything).
    pub fn is_initialised(&self) -> Result<bool> {
        match self {
            Storage::Dir(dir) => Ok(dir.is_dir()),
            Storage::Bucket { server, bucket } => Ok(!server.list(bucket)?.is_empty()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Storage::Dir(dir) => dir.display().to_string(),
            Storage::Bucket { server, bucket } => format!("bucket {bucket} at {}", server.endpoint),
        }
    }
}

/// An S3 server on loopback, and the settings to reach it.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
    /// Where the settings came from, for messages.
    source: String,
}

impl S3Server {
    pub fn new(
        endpoint: String,
        access_key: &str,
        secret_key: &str,
        region: &str,
        source: String,
    ) -> Self {
        Self {
            endpoint,
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: region.into(),
            source,
        }
    }

    /// Reads `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and `AWS_REGION` from `env_file` (`KEY=value` lines, as setup.sh
    /// writes them) and refuses any endpoint that is not plain HTTP on
    /// 127.0.0.1: the benchmark must never send data off this machine.
    pub fn load(env_file: &Path) -> Result<Self> {
        let text = fs::read_to_string(env_file).with_context(|| {
            format!(
                "reading {} (run `bash tests/env/setup.sh` to start SeaweedFS and write it)",
                env_file.display()
            )
        })?;
        let get = |key: &str| -> Result<String> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{} sets no {key}", env_file.display()))
        };
        let endpoint = get("AWS_ENDPOINT_URL")?.trim_end_matches('/').to_owned();
        let port = endpoint
            .strip_prefix("http://127.0.0.1:")
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ensure!(
            port.is_some(),
            "AWS_ENDPOINT_URL in {} is {endpoint:?}; the S3 bench only talks to \
             http://127.0.0.1:<port> so that nothing leaves this machine",
            env_file.display()
        );
        Ok(Self::new(
            endpoint,
            &get("AWS_ACCESS_KEY_ID")?,
            &get("AWS_SECRET_ACCESS_KEY")?,
            &get("AWS_REGION")?,
            env_file.display().to_string(),
        ))
    }

    /// The environment of a measured tool: these settings, and nothing from
    /// the host that could redirect it (profiles, session tokens, proxies).
    /// Applied with `Command::env`/`env_remove`, which the launcher passes on.
    pub fn child_env(&self) -> Vec<(&'static str, Option<String>)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL", Some(self.endpoint.clone())),
            ("AWS_ACCESS_KEY_ID", Some(self.access_key.clone())),
            ("AWS_SECRET_ACCESS_KEY", Some(self.secret_key.clone())),
            ("AWS_REGION", Some(self.region.clone())),
            // restic reads the region from here.
            ("AWS_DEFAULT_REGION", Some(self.region.clone())),
            ("AWS_CONFIG_FILE", Some("/dev/null".into())),
            ("AWS_SHARED_CREDENTIALS_FILE", Some("/dev/null".into())),
            ("NO_PROXY", Some("127.0.0.1".into())),
            ("no_proxy", Some("127.0.0.1".into())),
        ];
        for var in [
            // Virtual-hosted style would send requests to <bucket>.127.0.0.1.
            "VOLGUARD_S3_PATH_STYLE",
            "AWS_ENDPOINT_URL_S3",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            env.push((var, None));
        }
        env
    }

    /// A bucket name nobody else uses: prefix, pid, random bits, tool label.
    pub fn fresh_bucket_name(label: &str) -> String {
        let random = hex::encode(rand::random::<[u8; 4]>());
        let mut name = format!("{BUCKET_PREFIX}-{}-{random}-{label}", std::process::id());
        name.truncate(63);
        name
    }

    /// CreateBucket; a bucket that already exists is an error, because its
    /// objects would be counted as this run's.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let out = self.request("PUT", &self.url(bucket, ""))?;
        ensure!(
            out.status.success() && http_code(&out) == "200",
            "cannot create bucket {bucket} at {} (HTTP {}): {}",
            self.endpoint,
            http_code(&out),
            explain(&out)
        );
        Ok(())
    }

    /// A signed ListBuckets: fails at once, before any data is generated or
    /// volguard is built, when the server is down or the keys are wrong.
    pub fn check(&self) -> Result<()> {
        let out = self.request("GET", &format!("{}/", self.endpoint))?;
        ensure!(
            out.status.success() && http_code(&out) == "200",
            "the S3 server at {} does not accept the settings from {} (HTTP {}): {}",
            self.endpoint,
            self.source,
            http_code(&out),
            explain(&out)
        );
        Ok(())
    }

    /// Every object in `bucket` as (key, size), following continuation tokens.
    pub fn list(&self, bucket: &str) -> Result<Vec<(String, u64)>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // SigV4 signs the canonical query: parameters sorted by name,
            // values percent-encoded. curl (7.88) signs the query exactly as
            // written, so it is written canonically here.
            let query = match &token {
                Some(t) => format!("?continuation-token={}&list-type=2", uri_encode(t)),
                None => "?list-type=2".to_owned(),
            };
            let out = self.request("GET", &self.url(bucket, &query))?;
            let xml = body(&out);
            ensure!(
                out.status.success() && http_code(&out) == "200",
                "ListObjectsV2 of bucket {bucket} failed (HTTP {}): {}",
                http_code(&out),
                explain(&out)
            );
            for contents in xml.split("<Contents>").skip(1) {
                let key = tag(contents, "Key").context("ListObjectsV2 entry without <Key>")?;
                let size = tag(contents, "Size")
                    .and_then(|s| s.parse::<u64>().ok())
                    .with_context(|| format!("ListObjectsV2 entry {key} without a <Size>"))?;
                objects.push((xml_unescape(&key), size));
            }
            if tag(&xml, "IsTruncated").as_deref() != Some("true") {
                return Ok(objects);
            }
            let next = tag(&xml, "NextContinuationToken")
                .map(|t| xml_unescape(&t))
                .context("truncated ListObjectsV2 answer without NextContinuationToken")?;
            ensure!(
                token.as_deref() != Some(next.as_str()),
                "ListObjectsV2 of bucket {bucket} returned the same continuation token twice"
            );
            token = Some(next);
        }
    }

    /// Deletes every object in `bucket`, then the bucket. Objects go first
    /// because S3 refuses to delete a non-empty bucket (SeaweedFS does not,
    /// but other servers the env file may name do).
    pub fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let keys: Vec<String> = self.list(bucket)?.into_iter().map(|(k, _)| k).collect();
        for batch in keys.chunks(DELETE_BATCH) {
            // One curl process, many transfers: each URL is signed on its own.
            let mut cmd = self.curl("DELETE");
            cmd.args(["-o", "/dev/null", "--fail"]);
            for key in batch {
                cmd.arg(self.url(bucket, &format!("/{}", uri_encode_path(key))));
            }
            let out = cmd.output().context("running curl")?;
            if !out.status.success() {
                bail!(
                    "deleting objects of bucket {bucket} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let left = self.list(bucket)?.len();
        ensure!(left == 0, "bucket {bucket} still holds {left} objects");
        let out = self.request("DELETE", &self.url(bucket, ""))?;
        ensure!(
            out.status.success() && matches!(http_code(&out).as_str(), "204" | "200"),
            "cannot delete bucket {bucket} (HTTP {}): {}",
            http_code(&out),
            explain(&out)
        );
        Ok(())
    }

    fn url(&self, bucket: &str, rest: &str) -> String {
        format!("{}/{bucket}{rest}", self.endpoint)
    }

    /// curl with SigV4 signing and no proxy, whatever the host environment
    /// says. The credentials travel on the command line, visible in `ps`;
    /// acceptable for the test-only keys of a loopback server.
    fn curl(&self, method: &str) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "60", "-X", method])
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.access_key, self.secret_key))
            .stdin(Stdio::null());
        cmd
    }

    /// One request; stdout is the body followed by a line with the HTTP code.
    fn request(&self, method: &str, url: &str) -> Result<Output> {
        self.curl(method)
            .args(["-o", "-", "-w", "\n%{http_code}", url])
            .output()
            .context("running curl (needed for the S3 bench)")
    }
}

fn http_code(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The server's error document, or curl's own complaint when there was no
/// answer at all (HTTP code 000, e.g. connection refused); on one line.
fn explain(out: &Output) -> String {
    let body = body(out);
    let text = if body.trim().is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        body
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn body(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    match text.rsplit_once('\n') {
        Some((body, _code)) => body.to_owned(),
        None => String::new(),
    }
}

/// Text of the first `<name>...</name>` in `xml`.
fn tag(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].to_owned())
}

/// The five predefined XML entities and numeric references (SeaweedFS writes
/// `&#34;` in ETags).
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            break;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(ch) => {
                out.push(ch);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// SigV4 URI encoding: everything but unreserved characters as `%XX`.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An object key in a URL path: like [`uri_encode`], keeping the slashes.
fn uri_encode_path(key: &str) -> String {
    key.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
}
