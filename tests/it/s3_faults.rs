//! S3 faults that only a server this test owns can show: the server is SIGKILLed in the
//! middle of a backup's uploads (volguard fails with one clear line and leaves nothing
//! corrupt; after a restart the next backup sends only what had not landed), and a
//! region the server does not serve. The server is a private single-node Garage (binary
//! installed by tests/env/setup.sh) on free loopback ports, so killing it disturbs no
//! other test.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Garage binary tests/env/setup.sh installs (cached outside the checkout).
fn garage_bin() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let bin = PathBuf::from(home).join(".cache/volguard/garage/bin/garage");
    assert!(
        bin.is_file(),
        "{} is missing: run `bash tests/env/setup.sh` (it installs Garage)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-node Garage with its own data, ports, access key and bucket.
struct PrivateGarage {
    dir: PathBuf,
    child: Option<Child>,
    s3_port: u16,
    key_id: String,
    secret: String,
}

const REGION: &str = "garage";

impl PrivateGarage {
    fn start(dir: &Path) -> PrivateGarage {
        // Tests run in parallel: one node at a time picks its free ports and binds them,
        // so two nodes never pick the same one.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(dir).unwrap();
        let s3_port = free_port();
        let config = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.display(),
            rpc = free_port(),
            admin = free_port(),
            secret = hex::encode(rand::random::<[u8; 32]>()),
        );
        std::fs::write(dir.join("garage.toml"), config).unwrap();
        let mut g = PrivateGarage {
            dir: dir.to_path_buf(),
            child: None,
            s3_port,
            key_id: String::new(),
            secret: String::new(),
        };
        g.run_server();
        let id = g.cli(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli(&["layout", "apply", "--version", "1"]);
        let key = g.cli(&["key", "create", "volguard-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name:?} in `garage key create` output:\n{key}"))
                .trim()
                .to_string()
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g
    }

    /// Runs the `garage` CLI against this node; panics with its output on failure.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(out.status.success(), "garage {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(garage_bin())
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts the server process and waits until its S3 port accepts connections and
    /// the node answers the CLI.
    fn run_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .unwrap();
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // The port alone is not enough: another process may hold it, and the node writes
        // its key some time after it starts (CI once saw `node id` fail with "Unable to
        // read node key" right after the port answered).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let ready = exited.is_none()
                && std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
                && self.cli_output(&["node", "id", "-q"]).status.success();
            if ready {
                return;
            }
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "garage did not start (exit: {exited:?}); its log:\n{}",
                    std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            "volguard-test",
        ]);
    }

    fn env(&self) -> S3Env {
        S3Env {
            // A private node started by this test, not setup.sh's.
            server: S3Server::Garage,
            vars: Default::default(),
            endpoint: format!("http://127.0.0.1:{}", self.s3_port),
            access_key: self.key_id.clone(),
            secret_key: self.secret.clone(),
            region: REGION.into(),
        }
    }

    /// Sizes of the objects under `prefix/packs/`, from a signed ListObjectsV2.
    fn pack_sizes(&self, bucket: &str, prefix: &str) -> Vec<u64> {
        let s3 = self.env();
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "30", "--aws-sigv4"])
            .arg(format!("aws:amz:{REGION}:s3"))
            // Garage insists on the payload hash header, which curl leaves out; this is
            // the SHA-256 of the empty body.
            .args([
                "-H",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ])
            .arg("--user")
            .arg(format!("{}:{}", s3.access_key, s3.secret_key))
            .arg(format!("{}/{bucket}?list-type=2", s3.endpoint))
            .output()
            .unwrap();
        assert!(out.status.success(), "list {bucket}: {out:?}");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.split("<Contents>")
            .skip(1)
            .filter(|c| c.contains(&format!("<Key>{prefix}/packs/")))
            .filter_map(|c| {
                c.split_once("<Size>")?
                    .1
                    .split_once("</Size>")?
                    .0
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A repository on the private Garage.
fn repo_on(g: &PrivateGarage, bucket: &str, prefix: &str) -> TestRepo {
    let mut repo = TestRepo::new();
    repo.repo = PathBuf::from(format!("s3://{bucket}/{prefix}"));
    repo.env = g.env().vars();
    repo
}

const FILES: u64 = 7;

fn file_data(i: u64) -> Vec<u8> {
    pseudo_random(16 << 20, 40 + i)
}

#[test]
fn server_killed_mid_upload_fails_cleanly_and_the_next_backup_sends_only_what_was_missing() {
    let work = tempfile::tempdir().unwrap();
    let mut garage = PrivateGarage::start(&work.path().join("garage"));
    garage.bucket("faults");

    // 112 MiB that does not compress: seven 16 MiB packs.
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i}.bin")), file_data(i)).unwrap();
    }
    let p = src.to_str().unwrap();

    // What a clean, uninterrupted backup of the same data sends.
    let reference = repo_on(&garage, "faults", "reference");
    reference.run_ok(&["init"]);
    let full = reference.run_json(&["backup", "--path", p, "--name", "data"])["snapshots"][0]
        ["bytes_added"]
        .as_u64()
        .unwrap();

    let repo = repo_on(&garage, "faults", "cut");
    repo.run_ok(&["init"]);
    let mut cmd = repo.cmd();
    cmd.args(["--json", "backup", "--path", p, "--name", "data"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut backup = cmd.spawn().unwrap();
    // Kill the server once a few packs have landed, while more are on their way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let landed = garage.pack_sizes("faults", "cut").len();
        if landed >= 2 {
            break;
        }
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup ended before the server could be killed ({landed} packs landed)"
        );
        assert!(Instant::now() < deadline, "no packs landed within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    garage.kill();
    let status = backup.wait().unwrap();
    let stderr: Vec<String> = BufReader::new(backup.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    // One line says what failed; no per-file noise about the files the walk was on.
    let errors: Vec<_> = stderr
        .iter()
        .filter(|l| l.contains("ERROR") || l.starts_with("volguard: error"))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr:?}");
    assert!(
        !stderr.iter().any(|l| l.contains("WARN")),
        "stderr: {stderr:?}"
    );
    assert!(
        errors[0].contains("cannot reach the server"),
        "stderr: {stderr:?}"
    );

    garage.run_server();
    let landed: u64 = garage.pack_sizes("faults", "cut").iter().sum();
    assert!(landed > 0);
    // Nothing corrupt: the structure check passes and no snapshot claims the cut data.
    repo.run_ok(&["check"]);
    let snaps = repo.run_json(&["snapshots"]);
    assert_eq!(
        snaps["snapshots"].as_array().map(Vec::len),
        Some(0),
        "{snaps}"
    );

    let resumed =
        repo.run_json(&["backup", "--path", p, "--name", "data"])["snapshots"][0]["bytes_added"]
            .as_u64()
            .unwrap();
    // The packs that landed are reused from their trailers: the resumed run sends the
    // rest and nothing more (pack boundaries differ, so allow 1% of slack).
    let slack = full / 100;
    assert!(
        resumed + landed <= full + slack && resumed + landed + slack >= full,
        "resumed run sent {resumed} B, {landed} B had landed, a clean run sends {full} B"
    );
    assert!(resumed < full - landed / 2, "resumed {resumed} full {full}");
    eprintln!("clean run {full} B; landed before the kill {landed} B; resumed run {resumed} B");

    let dst = work.path().join("dst");
    repo.run_ok(&[
        "restore",
        "data",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    for i in 0..FILES {
        let name = format!("f{i}.bin");
        assert!(
            std::fs::read(dst.join(&name)).unwrap() == file_data(i),
            "{name} differs after restore"
        );
    }
    repo.run_ok(&["check", "--read-data"]);
}

#[test]
fn a_region_the_server_does_not_serve_is_named() {
    let work = tempfile::tempdir().unwrap();
    let garage = PrivateGarage::start(&work.path().join("garage"));
    garage.bucket("regions");
    let mut repo = repo_on(&garage, "regions", "r");
    for (k, v) in repo.env.iter_mut() {
        if k == "AWS_REGION" {
            *v = "eu-west-3".into();
        }
    }
    let out = repo.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("another region") && err.contains("eu-west-3") && err.contains("garage"),
        "{err}"
    );
    assert!(garage.pack_sizes("regions", "r").is_empty());
}
