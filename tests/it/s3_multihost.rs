//! Several hosts share one repository on a real 3-node Garage cluster (replication
//! factor 3, started by tests/env/setup.sh): two `volguard` processes with different
//! host ids back up at the same time, each restores byte for byte, the data they share
//! is stored once (also when uploaded at the same moment), data one host already indexed
//! is not stored again by the other, and the repository keeps working (backup
//! and restore) while one of the three nodes is down. Fails, never skips, when the
//! cluster is not there.

use crate::common::*;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Size of each big file: large enough that pack and index overhead is noise.
const FILE_BYTES: usize = 16 << 20;
/// What one run may add beyond its file data: pack headers, per-blob crypto overhead,
/// trees, index files and the snapshot object (measured well under 1 MiB per 64 MiB).
const OVERHEAD_BYTES: u64 = MIB;
/// How long a Garage node may take to stop, start or be seen by the cluster.
const GARAGE_WAIT: Duration = Duration::from_secs(60);

/// One node of the cluster, as tests/env/setup.sh describes it in garage3.env, so the
/// test can stop and restart it exactly the way setup.sh starts it.
struct GarageNode {
    n: u32,
    bin: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    endpoint: String,
}

impl GarageNode {
    /// Node `n` (1-3) of the cluster described by `s3`.
    fn load(s3: &S3Env, n: u32) -> GarageNode {
        let v = |k: &str| s3.var(&format!("GARAGE_NODE{n}_{k}"));
        GarageNode {
            n,
            bin: PathBuf::from(s3.var("GARAGE_BIN")),
            config: PathBuf::from(v("CONFIG")),
            pid_file: PathBuf::from(v("PID_FILE")),
            log: PathBuf::from(v("LOG")),
            endpoint: v("ENDPOINT"),
        }
    }

    /// The pid of this node's running server: the pid file's, checked against the
    /// process's command line so a recycled pid is never killed.
    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let config = self.config.as_os_str().as_encoded_bytes();
        (args.contains(&config) && args.contains(&&b"server"[..])).then_some(pid)
    }

    /// SIGKILL, like a machine that dies; returns once the process is gone.
    fn kill(&self) {
        let pid = self.pid().unwrap_or_else(|| {
            panic!(
                "garage node {} is not running (pid file {}); run `bash tests/env/setup.sh`",
                self.n,
                self.pid_file.display()
            )
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("cannot kill garage node {} (pid {pid}): {e}", self.n));
        let started = Instant::now();
        while self.pid().is_some() {
            assert!(
                started.elapsed() < GARAGE_WAIT,
                "garage node {} (pid {pid}) still runs after SIGKILL",
                self.n
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server on its existing data, with the command line setup.sh uses
    /// (so setup.sh recognises it later), in its own process group so it outlives the
    /// test; records the pid and waits until its S3 port accepts connections.
    fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        writeln!(
            &log,
            "\n=== s3_multihost restarting garage node {} ===",
            self.n
        )
        .unwrap();
        let child = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        std::fs::write(&self.pid_file, format!("{}\n", child.id())).unwrap();
        drop(child); // not killed on drop: the node outlives the test, like setup.sh's
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < GARAGE_WAIT,
                "restarted garage node {} does not listen on {addr}; see {}",
                self.n,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `garage json-api GetClusterHealth` through this node.
    fn cluster_health(&self) -> serde_json::Value {
        let mut c = std::process::Command::new(&self.bin);
        c.arg("-c")
            .arg(&self.config)
            .args(["json-api", "GetClusterHealth"])
            .stdin(Stdio::null());
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the cluster, seen from this node, has exactly `up` storage nodes up,
    /// so the test acts on the state it claims (a dead node noticed, a restarted one back).
    fn wait_storage_nodes_up(&self, up: u64) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let h = self.cluster_health();
            if h["storageNodesUp"].as_u64() == Some(up) {
                return h;
            }
            assert!(
                started.elapsed() < GARAGE_WAIT,
                "the Garage cluster does not report {up} storage nodes up: {h}; \
                 run `bash tests/env/setup.sh`"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Restarts a killed node when dropped, also when the test panics, so a failure never
/// leaves the cluster degraded for the next test run.
struct RestartOnDrop<'a> {
    node: &'a GarageNode,
    restarted: bool,
}

impl RestartOnDrop<'_> {
    /// Restarts the node now (the normal path); the drop then has nothing to do.
    fn restart(&mut self) {
        if !self.restarted {
            self.restarted = true;
            self.node.start();
        }
    }
}

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        if !self.restarted && self.node.pid().is_none() {
            self.restarted = true;
            // Already unwinding: a second panic would abort and hide the first one.
            let node = std::panic::AssertUnwindSafe(self.node);
            if std::panic::catch_unwind(|| node.start()).is_err() {
                eprintln!(
                    "could not restart garage node {}; run tests/env/setup.sh",
                    self.node.n
                );
            }
        }
    }
}

/// Writes `files` (name, seed) of FILE_BYTES pseudo-random bytes each under `dir`.
fn write_files(dir: &Path, files: &[(&str, u64)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, seed) in files {
        std::fs::write(dir.join(name), pseudo_random(FILE_BYTES, *seed)).unwrap();
    }
}

/// A config file naming the host id that goes into this "machine's" snapshots.
fn host_config(repo: &TestRepo, host: &str) -> PathBuf {
    let path = repo.path().join(format!("{host}.toml"));
    std::fs::write(&path, format!("host = \"{host}\"\n")).unwrap();
    path
}

/// Starts `volguard --json backup --path DIR --name NAME` as the host of `config`
/// without waiting, so two hosts can run at the same time.
fn spawn_backup(repo: &TestRepo, config: &Path, dir: &Path, name: &str) -> Child {
    let mut c = repo.cmd_with_config(config);
    c.arg("--json")
        .args(["backup", "--path", dir.to_str().unwrap(), "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("spawn volguard backup")
}

/// Waits for a spawned backup, requires exit 0 and returns `snapshots[0]` of its JSON.
fn finish_backup(child: Child, who: &str) -> serde_json::Value {
    let out = child.wait_with_output().expect("wait for volguard backup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{who}: backup failed\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{who}: backup --json is not JSON ({e}); stderr: {stderr}"));
    v["snapshots"][0].clone()
}

/// Runs one backup as the host of `config` to completion.
fn backup_as(repo: &TestRepo, config: &Path, dir: &Path, name: &str) -> serde_json::Value {
    finish_backup(spawn_backup(repo, config, dir, name), name)
}

/// `snapshots --json --host HOST`, as the ids listed.
fn snapshot_ids_of_host(repo: &TestRepo, host: &str) -> Vec<String> {
    let v = repo.run_json(&["snapshots", "--host", host]);
    v["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("snapshots --json has no snapshots array: {v}"))
        .iter()
        .map(|s| {
            assert_eq!(s["host"], host, "{v}");
            s["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Restores snapshot `id` of `volume` into a new directory and requires it to equal `src`.
fn restore_equals(repo: &TestRepo, volume: &str, id: &str, src: &Path) {
    let t = Instant::now();
    let dst = repo.restore_to_new_dir(volume, id);
    eprintln!("restore {id}: {:.1}s", t.elapsed().as_secs_f64());
    let diffs = treecmp::compare_trees(src, &dst);
    assert!(diffs.is_empty(), "snapshot {id}: {diffs:#?}");
}

/// `check --read-data` must find nothing wrong.
fn check_read_data(repo: &TestRepo) {
    let check = repo.run_json(&["check", "--read-data"]);
    let errors = check["errors"]
        .as_array()
        .map(|a| a.len() as u64)
        .or_else(|| check["errors"].as_u64())
        .unwrap_or_else(|| panic!("check --json has no errors field: {check}"));
    assert_eq!(errors, 0, "{check}");
}

/// The bytes_added of a backup report.
fn added(report: &serde_json::Value) -> u64 {
    report["bytes_added"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_added: {report}"))
}

/// Two hosts back up half-shared data at the same time into one repository on the
/// 3-node cluster; then a third backup shows cross-host dedup of indexed data; then one
/// node dies and backup and restore still work with 2 of 3 nodes.
#[test]
fn two_hosts_share_one_repository_and_survive_a_dead_garage_node() {
    let _alone_on_the_cluster = crate::common::garage3_node_may_go_down();
    let (repo, s3, bucket) = TestRepo::s3(S3Server::Garage3, "fleet");
    let node1 = GarageNode::load(&s3, 1);
    let node3 = GarageNode::load(&s3, 3);
    node1.wait_storage_nodes_up(3);
    repo.run_ok(&["init"]);
    let cfg_a = host_config(&repo, "host-a");
    let cfg_b = host_config(&repo, "host-b");

    // Same volume name on both hosts (the usual fleet case): only the host id differs.
    // Each directory: two files both hosts have, two of its own.
    let dir_a = repo.path().join("a");
    let dir_b = repo.path().join("b");
    write_files(
        &dir_a,
        &[("shared-1", 1), ("shared-2", 2), ("a-1", 11), ("a-2", 12)],
    );
    write_files(
        &dir_b,
        &[("shared-1", 1), ("shared-2", 2), ("b-1", 21), ("b-2", 22)],
    );
    let raw_total = 8 * FILE_BYTES as u64;
    let unique_total = 6 * FILE_BYTES as u64;

    // --- both hosts at the same time -------------------------------------------------
    let started = Instant::now();
    let child_a = spawn_backup(&repo, &cfg_a, &dir_a, "app");
    let child_b = spawn_backup(&repo, &cfg_b, &dir_b, "app");
    let rep_a = finish_backup(child_a, "host-a");
    let rep_b = finish_backup(child_b, "host-b");
    let sum = added(&rep_a) + added(&rep_b);
    eprintln!(
        "concurrent backups in {:.1}s: host-a added {} bytes, host-b added {} bytes, sum {} \
         = {:.3} of the raw {} (unique data {}: {:.1} MiB stored beyond it)",
        started.elapsed().as_secs_f64(),
        added(&rep_a),
        added(&rep_b),
        sum,
        sum as f64 / raw_total as f64,
        raw_total,
        unique_total,
        (sum as f64 - unique_total as f64) / MIB as f64,
    );
    for (who, rep) in [("host-a", &rep_a), ("host-b", &rep_b)] {
        assert_eq!(rep["bytes_read"], 4 * FILE_BYTES as u64, "{who}: {rep}");
        // At least its own half, at most everything it read: nothing is lost, nothing
        // is stored more than once by one run.
        let a = added(rep);
        assert!(a >= 2 * FILE_BYTES as u64, "{who} added too little: {rep}");
        assert!(
            a <= 4 * FILE_BYTES as u64 + OVERHEAD_BYTES,
            "{who} added more than it read: {rep}"
        );
    }
    // The shared half is stored once: the two runs announce each pack's blobs before
    // uploading it and the later announcer leaves shared blobs to the earlier one
    // (src/inflight.rs), so together they add the unique data plus overhead.
    assert!(
        sum >= unique_total,
        "unique data missing: {sum} < {unique_total}"
    );
    assert!(
        sum <= unique_total + 2 * OVERHEAD_BYTES,
        "the shared half was stored more than once: the two runs added {sum} bytes, the \
         unique data is {unique_total}"
    );

    let id_a = rep_a["snapshot_id"].as_str().unwrap().to_string();
    let id_b = rep_b["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(snapshot_ids_of_host(&repo, "host-a"), vec![id_a.clone()]);
    assert_eq!(snapshot_ids_of_host(&repo, "host-b"), vec![id_b.clone()]);
    restore_equals(&repo, "app", &id_a, &dir_a);
    restore_equals(&repo, "app", &id_b, &dir_b);

    // --- host B, later, with data host A already indexed -----------------------------
    // Host A's own two files (which host B never stored) plus two new ones: only the
    // new half may be added.
    let dir_c = repo.path().join("c");
    write_files(
        &dir_c,
        &[("a-1", 11), ("a-2", 12), ("c-1", 31), ("c-2", 32)],
    );
    let rep_c = backup_as(&repo, &cfg_b, &dir_c, "reports");
    let new_half = 2 * FILE_BYTES as u64;
    eprintln!(
        "sequential host-b backup of 2 indexed + 2 new files added {} bytes (new data {new_half})",
        added(&rep_c)
    );
    assert!(added(&rep_c) >= new_half, "{rep_c}");
    assert!(
        added(&rep_c) <= new_half + OVERHEAD_BYTES,
        "host B stored host A's indexed data again: {rep_c}"
    );
    let id_c = rep_c["snapshot_id"].as_str().unwrap().to_string();
    restore_equals(&repo, "reports", &id_c, &dir_c);
    let mut b_ids = snapshot_ids_of_host(&repo, "host-b");
    b_ids.sort();
    let mut want = vec![id_b.clone(), id_c];
    want.sort();
    assert_eq!(b_ids, want);

    // --- one node of three dies ----------------------------------------------------------
    let mut guard = RestartOnDrop {
        node: &node3,
        restarted: false,
    };
    node3.kill();
    let health = node1.wait_storage_nodes_up(2);
    eprintln!("node 3 killed; cluster health from node 1: {health}");
    std::fs::write(dir_a.join("new-while-degraded"), pseudo_random(8 << 20, 41)).unwrap();
    let rep_d = backup_as(&repo, &cfg_a, &dir_a, "app");
    assert_eq!(rep_d["parent"], id_a.as_str(), "{rep_d}");
    assert_eq!(rep_d["files_new"], 1, "{rep_d}");
    assert!(added(&rep_d) >= 8 * MIB, "{rep_d}");
    let id_d = rep_d["snapshot_id"].as_str().unwrap().to_string();
    // Reads data written with 3 nodes up and with 2.
    restore_equals(&repo, "app", &id_d, &dir_a);

    guard.restart();
    node1.wait_storage_nodes_up(3);
    check_read_data(&repo);
    s3.remove_bucket(&bucket);
}
