//! Shared helpers for the integration tests: `mod common;` of tests/it/main.rs, so compiled
//! once for all its modules (`crate::common`); secrets.rs and watch.rs include it by path.
//!
//! Why this exists: every integration test needs the same plumbing: a throwaway
//! repository with a key file, a `volguard` command whose global flags never
//! pick up the host's configuration, and a real dockerd (docs/design.md,
//! Conventions and Test environment) with uniquely named containers and volumes
//! that are removed even when a test panics. The environment is prepared by `tests/env/setup.sh` (run by
//! `tests/run.sh`); tests FAIL, never skip, when it is missing.
#![allow(dead_code)]

pub mod dockerdiff;
pub mod private_dockerd;
pub mod s3client;
pub mod treecmp;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The tiny offline image built by `tests/env/setup.sh` (busybox applets, `PATH=/bin`).
pub const IMAGE: &str = "volguard-test/busybox:latest";

/// Environment variables that would leak host key material, repository or S3
/// choices into a test's `volguard` process.
pub const LEAKY_ENV: &[&str] = &[
    "VOLGUARD_REPO",
    "VOLGUARD_PASSWORD",
    "VOLGUARD_PASSWORD_FILE",
    "VOLGUARD_CONFIG",
    "VOLGUARD_KEY_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

/// Path of the `volguard` binary built for these tests.
pub fn volguard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_volguard"))
}

/// A throwaway local repository plus its key file, removed on drop.
pub struct TestRepo {
    dir: tempfile::TempDir,
    /// Repository location (not created: `volguard init` creates it).
    pub repo: PathBuf,
    /// Key file holding 64 random hex characters, mode 0600.
    pub key_file: PathBuf,
    /// A config path that does not exist, so `/etc/volguard/config.toml` never
    /// leaks into tests (a missing file means defaults).
    pub config: PathBuf,
    /// Extra environment for every `volguard` process (S3 endpoint and credentials).
    pub env: Vec<(String, String)>,
}

impl TestRepo {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("volguard-test-")
            .tempdir()
            .expect("create temp dir for TestRepo");
        let repo = dir.path().join("repo");
        let key_file = dir.path().join("key");
        let config = dir.path().join("no-such-config.toml");
        let key = hex::encode(rand::random::<[u8; 32]>());
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .expect("create key file");
        f.write_all(key.as_bytes()).expect("write key file");
        TestRepo {
            dir,
            repo,
            key_file,
            config,
            env: Vec::new(),
        }
    }

    /// The temp dir holding repo, key file and anything else the test wants.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `volguard --config <missing> --repo <repo> --key-file <key>`; append the
    /// subcommand (and, before it, any further global flags) yourself.
    pub fn cmd(&self) -> Command {
        self.cmd_with_config(&self.config)
    }

    /// [`TestRepo::cmd`] with another config file, e.g. one naming a different
    /// `host`, so several "machines" can share one repository.
    pub fn cmd_with_config(&self, config: &Path) -> Command {
        let mut c = Command::new(volguard_bin());
        for var in LEAKY_ENV {
            c.env_remove(var);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.arg("--config")
            .arg(config)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--key-file")
            .arg(&self.key_file);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `volguard <global flags> args...` and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        output_of(&mut c)
    }

    /// `restore VOLUME --snapshot ID --target <new dir> --verify`; returns the directory.
    pub fn restore_to_new_dir(&self, volume: &str, id: &str) -> PathBuf {
        let dst = self.path().join(unique("restore"));
        self.run_ok(&[
            "restore",
            volume,
            "--snapshot",
            id,
            "--target",
            dst.to_str().unwrap(),
            "--verify",
        ]);
        dst
    }

    /// Like [`TestRepo::run`], but panics (showing stdout and stderr) on a non-zero exit.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        let out = output_of(&mut c);
        if !out.status.success() {
            panic!("command failed: {}", describe(&c, &out));
        }
        out
    }

    /// Runs `volguard <global flags> --json args...`, requires success and
    /// parses stdout as one JSON document.
    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let mut c = self.cmd();
        c.arg("--json").args(args);
        let out = output_of(&mut c);
        if !out.status.success() {
            panic!("command failed: {}", describe(&c, &out));
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {}",
                describe(&c, &out)
            )
        })
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

fn output_of(c: &mut Command) -> Output {
    c.output()
        .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", c.get_program()))
}

/// Command line, exit status, stdout and stderr, for failure messages.
pub fn describe(c: &Command, out: &Output) -> String {
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "`{} {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        c.get_program().to_string_lossy(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

// ---------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------

fn docker_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `docker args...`; panics with stderr on failure; returns stdout trimmed.
pub fn docker(args: &[&str]) -> String {
    let mut c = docker_cmd(args);
    let out = output_of(&mut c);
    if !out.status.success() {
        panic!("docker failed: {}", describe(&c, &out));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker args...`; returns (exit code, -1 if killed by a signal; stdout; stderr).
pub fn docker_status(args: &[&str]) -> (i32, String, String) {
    let out = output_of(&mut docker_cmd(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A name unique across test threads and processes, valid for Docker
/// containers and volumes: `<prefix>-<pid>-<counter>-<random>`, lowercase.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut p: String = prefix
        .chars()
        .map(|ch| {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-') {
                ch
            } else {
                '-'
            }
        })
        .collect();
    // Docker names must start with an alphanumeric character.
    if !p.starts_with(|ch: char| ch.is_ascii_alphanumeric()) {
        p.insert_str(0, "vg");
    }
    let rnd = hex::encode(rand::random::<[u8; 3]>());
    format!("{p}-{}-{n}-{rnd}", std::process::id())
}

/// Force-removes the registered containers (with their anonymous volumes),
/// then the volumes, when dropped, also on panic. Errors are ignored.
#[derive(Debug, Default)]
pub struct DockerCleanup {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl DockerCleanup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a container name (or id) for removal; returns it.
    pub fn container(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.containers.push(name.clone());
        name
    }

    /// Registers a volume name for removal; returns it.
    pub fn volume(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.volumes.push(name.clone());
        name
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        // Containers first: a volume in use by one cannot be removed.
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = docker_cmd(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !self.volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(self.volumes.iter().map(String::as_str));
            let _ = docker_cmd(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The daemon's data root (`docker info --format '{{.DockerRootDir}}'`).
pub fn docker_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = docker(&["info", "--format", "{{.DockerRootDir}}"]);
        assert!(
            !root.is_empty(),
            "docker info printed no DockerRootDir; is dockerd running? run tests/env/setup.sh"
        );
        PathBuf::from(root)
    })
    .clone()
}

/// Panics unless a dockerd answers and the test image exists. Tests FAIL,
/// never skip, without Docker: `tests/run.sh` always starts it.
pub fn require_docker() {
    let (code, stdout, stderr) = docker_status(&["info", "--format", "{{.ServerVersion}}"]);
    let version = stdout.trim();
    if code != 0 || version.is_empty() || version == "<no value>" {
        panic!(
            "dockerd does not answer `docker info` (exit {code}): {}\n\
             Run `bash tests/env/setup.sh` (or the whole suite with `bash tests/run.sh`).",
            stderr.trim()
        );
    }
    let (code, _, stderr) = docker_status(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    if code != 0 {
        panic!(
            "test image {IMAGE} is missing ({}).\n\
             Run `bash tests/env/setup.sh` (or the whole suite with `bash tests/run.sh`).",
            stderr.trim()
        );
    }
}

/// Host path of a named volume's data: `<docker_root>/volumes/<name>/_data`.
pub fn volume_data_dir(name: &str) -> PathBuf {
    docker_root().join("volumes").join(name).join("_data")
}

/// Deterministic incompressible bytes (xorshift64), so tests need no data files.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut buf = Vec::with_capacity(len + 8);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    buf
}

/// Runs `sh -c script` in a throwaway container (no network) with `volume` at /data.
pub fn sh_in_volume(volume: &str, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{volume}:/data"),
        IMAGE,
        "sh",
        "-c",
        script,
    ])
}

// ---------------------------------------------------------------------------
// S3 (SeaweedFS and Garage, started by tests/env/setup.sh)
// ---------------------------------------------------------------------------

/// The real S3 servers `tests/env/setup.sh` runs on 127.0.0.1; each has its own env file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Server {
    /// SeaweedFS `weed mini` on :8333.
    SeaweedFs,
    /// Garage, one node (sqlite, replication factor 1) on :3900.
    Garage,
    /// Garage, three nodes (replication factor 3); tests talk to node 1 on :3910.
    Garage3,
}

impl S3Server {
    /// Where `tests/env/setup.sh` writes this server's endpoint and credentials.
    pub fn env_file(self) -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        let name = match self {
            S3Server::SeaweedFs => "s3.env",
            S3Server::Garage => "garage.env",
            S3Server::Garage3 => "garage3.env",
        };
        PathBuf::from(home).join(".cache/volguard").join(name)
    }
}

/// Held for writing by a test that takes a node of the shared 3-node Garage cluster down
/// (s3_multihost), for reading by every other test that uses the cluster. They used to be
/// separate test binaries, run one after another; in one binary they would run at once.
static GARAGE3_NODES: RwLock<()> = RwLock::new(());

/// Guard for a test on `server`: shared for [`S3Server::Garage3`] (no node goes down while
/// it is held), nothing for the other servers.
pub fn garage3_nodes_up(server: S3Server) -> Option<RwLockReadGuard<'static, ()>> {
    (server == S3Server::Garage3).then(|| GARAGE3_NODES.read().unwrap_or_else(|p| p.into_inner()))
}

/// Guard for a test that stops a node of the 3-node Garage cluster: no other test uses the
/// cluster while it is held.
pub fn garage3_node_may_go_down() -> RwLockWriteGuard<'static, ()> {
    GARAGE3_NODES.write().unwrap_or_else(|p| p.into_inner())
}

/// Endpoint and credentials of a test S3 server, as `tests/env/setup.sh` writes them.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub server: S3Server,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// Every `KEY=value` line of the env file (Garage's also name the binary, and
    /// per node the endpoint, config file, pid file and log).
    pub vars: std::collections::BTreeMap<String, String>,
}

/// SHA-256 of an empty body: Garage rejects a signed request without an
/// `x-amz-content-sha256` header, which curl's --aws-sigv4 only sends when given.
const EMPTY_BODY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl S3Env {
    /// Reads the server's env file; panics (tests FAIL, never skip) when it is missing.
    pub fn load(server: S3Server) -> S3Env {
        let path = server.env_file();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}): the {server:?} test server is not set up.\n\
                 Run `bash tests/env/setup.sh` (or the whole suite with `bash tests/run.sh`).",
                path.display()
            )
        });
        let vars: std::collections::BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{} names no {k}", path.display()))
        };
        let env = S3Env {
            server,
            endpoint: get("AWS_ENDPOINT_URL"),
            access_key: get("AWS_ACCESS_KEY_ID"),
            secret_key: get("AWS_SECRET_ACCESS_KEY"),
            region: get("AWS_REGION"),
            vars,
        };
        env.require_up();
        env
    }

    /// Panics unless a signed ListBuckets answers 200, so a test whose server is down
    /// fails saying so instead of with a confusing error further on.
    fn require_up(&self) {
        let mut c = self.curl();
        c.args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}/", self.endpoint.trim_end_matches('/')));
        let out = output_of(&mut c);
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if code != "200" {
            panic!(
                "the {:?} test server at {} does not answer a signed ListBuckets (HTTP {code}).\n\
                 Run `bash tests/env/setup.sh` (or the whole suite with `bash tests/run.sh`).\n{}",
                self.server,
                self.endpoint,
                describe(&c, &out)
            );
        }
    }

    /// A value of the env file beyond the four AWS ones; panics naming the file when absent.
    pub fn var(&self, key: &str) -> String {
        self.vars.get(key).cloned().unwrap_or_else(|| {
            panic!(
                "{} names no {key}; run `bash tests/env/setup.sh`",
                self.server.env_file().display()
            )
        })
    }

    /// `host:port` of the endpoint, as volguard's error messages name it.
    pub fn host_port(&self) -> &str {
        self.endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
    }

    /// The environment a `volguard` process needs to reach this server.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            // Never let a host profile or session token change what the test talks to.
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
        ]
    }

    /// Every key in `bucket` (first 1000 only, enough for tests), via a signed
    /// ListObjectsV2 with curl.
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        let url = format!(
            "{}/{bucket}?list-type=2",
            self.endpoint.trim_end_matches('/')
        );
        let mut c = self.curl();
        c.arg("--fail").arg(&url);
        let out = output_of(&mut c);
        if !out.status.success() {
            panic!("cannot list bucket {bucket}: {}", describe(&c, &out));
        }
        let body = String::from_utf8_lossy(&out.stdout);
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// curl with SigV4 signing for this server (body-less requests only).
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30"])
            .arg("-H")
            .arg(format!("x-amz-content-sha256: {EMPTY_BODY_SHA256}"))
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.access_key, self.secret_key))
            .stdin(Stdio::null());
        c
    }

    /// Creates `bucket` with a SigV4-signed `PUT /bucket` (S3 CreateBucket); panics
    /// with the server's answer when that fails, e.g. because the server is not running.
    pub fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.endpoint.trim_end_matches('/'));
        let mut c = self.curl();
        c.args(["-o", "-", "-w", "\n%{http_code}", "-X", "PUT", &url]);
        let out = output_of(&mut c);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = stdout.lines().last().unwrap_or("").trim().to_string();
        if !out.status.success() || code != "200" {
            panic!(
                "cannot create bucket {bucket} at {} (HTTP {code}); is the {:?} server running? \
                 Run `bash tests/env/setup.sh`.\n{}",
                self.endpoint,
                self.server,
                describe(&c, &out)
            );
        }
    }
}

impl S3Env {
    /// Deletes every object of `bucket`, then the bucket, so test data does not pile up
    /// on the servers (a multi-host run stores ~230 MiB, three times on the cluster).
    /// Panics on any answer but success: a leak should be seen.
    pub fn remove_bucket(&self, bucket: &str) {
        let base = self.endpoint.trim_end_matches('/');
        loop {
            let keys = self.list_keys(bucket);
            if keys.is_empty() {
                break;
            }
            for key in keys {
                self.delete_ok(&format!("{base}/{bucket}/{key}"));
            }
        }
        self.delete_ok(&format!("{base}/{bucket}"));
    }

    /// A signed DELETE that must answer 204 (or 200).
    fn delete_ok(&self, url: &str) {
        let mut c = self.curl();
        c.args(["-o", "-", "-w", "\n%{http_code}", "-X", "DELETE", url]);
        let out = output_of(&mut c);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = stdout.lines().last().unwrap_or("").trim();
        if !out.status.success() || !matches!(code, "200" | "204") {
            panic!("DELETE {url} answered HTTP {code}: {}", describe(&c, &out));
        }
    }
}

/// A bucket name unique across test threads and processes (S3 rules: 3-63 characters,
/// lowercase letters, digits and hyphens).
pub fn unique_bucket(prefix: &str) -> String {
    let mut name = unique(prefix).replace(['_', '.'], "-");
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

impl TestRepo {
    /// A repository `s3://<new unique bucket>/<prefix>` on `server`, with the key file
    /// and config handling of [`TestRepo::new`]. Panics if the server is down.
    pub fn s3(server: S3Server, prefix: &str) -> (TestRepo, S3Env, String) {
        let s3 = S3Env::load(server);
        let bucket = unique_bucket("vg");
        s3.create_bucket(&bucket);
        let mut repo = TestRepo::new();
        repo.repo = PathBuf::from(format!("s3://{bucket}/{prefix}"));
        repo.env = s3.vars();
        (repo, s3, bucket)
    }
}

/// Forks and execs `argv[2:]`, then writes the child's peak RSS in KiB (`wait4`'s
/// `ru_maxrss`) to the file `argv[1]` and exits with the child's status. The launcher is a
/// small, fresh process because Linux folds the exec-ing process's own RSS high-water mark
/// into the new program's `ru_maxrss`: spawned straight from the test binary, a command
/// would report at least the test process's peak.
const PEAK_RSS_LAUNCHER: &str = "\
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], 'w') as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
";

/// `cmd` (program, arguments and environment) run under [`PEAK_RSS_LAUNCHER`], which
/// writes its peak RSS in KiB to `report`; read it with [`peak_rss_mib`].
pub fn with_peak_rss(cmd: &Command, report: &Path) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(PEAK_RSS_LAUNCHER)
        .arg(report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// The peak RSS a [`with_peak_rss`] command wrote to `report`, in MiB.
pub fn peak_rss_mib(report: &Path) -> f64 {
    let kib: f64 = fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("no peak RSS report at {}: {e}", report.display()))
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}
