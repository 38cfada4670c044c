//! With dockerd stopped, `inventory`, `backup` and `layer-diff` still work from the files
//! alone, and give the answers the running daemon gave.
//!
//! The daemon stopped here is a private dockerd this test starts (same binary and flags as
//! tests/env/setup.sh, plus its own data root, exec root, socket and pid file), never the
//! shared test daemon: other test binaries, and other checkouts on this machine, use that
//! one at any time, and stopping it under them would fail their tests for no fault of
//! theirs. A guard stops the private daemon and removes its files even when the test fails.

mod common;

use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};

use common::dockerdiff::{assert_docker_shape, canonical, parse};
use common::*;
use serde_json::Value;

/// Longest wait for the private daemon to answer or to exit, so a broken daemon fails the
/// test with its log instead of hanging it; not a performance goal.
const DAEMON_WAIT_SECS: u64 = 120;

struct PrivateDockerd {
    dir: tempfile::TempDir,
    /// The running dockerd (setsid execs it in the spawned process), reaped on stop.
    child: std::cell::RefCell<Option<std::process::Child>>,
}

impl PrivateDockerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vg-dockerd-")
            .tempdir()
            .unwrap();
        let d = PrivateDockerd {
            dir,
            child: Default::default(),
        };
        d.launch();
        d
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("docker.pid")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn launch(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .unwrap();
        let child = Command::new("setsid")
            .arg("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(self.root())
            .arg("--exec-root")
            .arg(self.dir.path().join("exec"))
            .arg("--pidfile")
            .arg(self.pid_file())
            .arg("-H")
            .arg(self.socket())
            // Containers are killed at shutdown; no need to wait the default 15 s.
            .arg("--shutdown-timeout=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        *self.child.borrow_mut() = Some(child);
        for _ in 0..DAEMON_WAIT_SECS {
            if self.answers() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        panic!(
            "private dockerd did not answer within {DAEMON_WAIT_SECS}s; log:\n{}",
            self.log()
        );
    }

    fn answers(&self) -> bool {
        let (code, out, _) = self.status(&["info", "--format", "{{.ServerVersion}}"]);
        code == 0 && !out.trim().is_empty()
    }

    fn status(&self, args: &[&str]) -> (i32, String, String) {
        let sock = self.socket();
        let mut all = vec!["-H", sock.as_str()];
        all.extend_from_slice(args);
        docker_status(&all)
    }

    fn docker(&self, args: &[&str]) -> String {
        let (code, out, err) = self.status(args);
        assert_eq!(code, 0, "docker {args:?} on the private daemon: {err}");
        out.trim().to_string()
    }

    /// SIGTERM, then wait until the process has exited (and reap it).
    fn stop(&self) {
        let Some(mut child) = self.child.borrow_mut().take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).is_err() {
            let _ = child.wait();
            return;
        }
        for _ in 0..DAEMON_WAIT_SECS * 10 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        if !std::thread::panicking() {
            panic!(
                "private dockerd {pid} did not exit within {DAEMON_WAIT_SECS}s after SIGTERM; killed it"
            );
        }
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if self.answers() {
            let ids = self.status(&["ps", "-aq"]).1;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = self.status(&args);
            }
        }
        self.stop();
        // Mounts left behind by a daemon that died would make removal fail or reach into
        // them: unmount whatever is still mounted under the private directories first.
        let me = self.dir.path().display().to_string();
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&me))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn run_code(repo: &TestRepo, root: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = repo.cmd();
    c.arg("--docker-root").arg(root).args(args);
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inventory_backup_and_layer_diff_work_with_dockerd_stopped() {
    require_docker();
    let daemon = PrivateDockerd::start();
    // The test image, from the shared daemon.
    let mut save = Command::new("docker")
        .args(["save", IMAGE])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let load = Command::new("docker")
        .args(["-H", &daemon.socket(), "load", "-q"])
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success(), "docker save {IMAGE} failed");
    assert!(load.status.success(), "docker load: {load:?}");

    daemon.docker(&["volume", "create", "--label", "vg.test=stopped", "pv"]);
    daemon.docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "c1",
        "-v",
        "pv:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    daemon.docker(&[
        "exec",
        "c1",
        "sh",
        "-c",
        "set -e; echo payload > /data/f; mkdir /data/d; echo deep > /data/d/g;\
         echo x > /added; rm /bin/ls; rm -r /tmp; mkdir /tmp; echo t > /tmp/new",
    ]);
    let docker_diff = parse(&daemon.docker(&["diff", "c1"]));
    assert_docker_shape(&docker_diff);
    let want_diff = canonical(docker_diff);
    let ctr_id = daemon.docker(&["inspect", "--format", "{{.Id}}", "c1"]);
    let root = daemon.root();

    daemon.stop();
    assert!(!daemon.answers(), "the private daemon still answers");

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);

    // inventory: the volume, its label, the container and what it mounts.
    let (code, out, err) = run_code(&repo, &root, &["--json", "inventory"]);
    assert_eq!(code, 0, "inventory: {err}");
    let inv: Value = serde_json::from_str(&out).unwrap();
    let vols = inv["volumes"].as_array().unwrap();
    let pv = vols
        .iter()
        .find(|v| v["name"] == "pv")
        .unwrap_or_else(|| panic!("{inv:#}"));
    assert_eq!(pv["labels"]["vg.test"], "stopped");
    assert_eq!(pv["source"], "metadata_db");
    assert_eq!(pv["containers"][0]["name"], "c1");
    assert_eq!(pv["dangling"], false);
    let c1 = inv["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == ctr_id.as_str())
        .unwrap_or_else(|| panic!("{inv:#}"));
    assert_eq!(c1["name"], "c1");
    assert_eq!(c1["running"], false, "no process runs it any more");

    // backup, then restore what it stored.
    let (code, _, err) = run_code(&repo, &root, &["backup", "pv"]);
    assert_eq!(code, 0, "backup: {err}");
    let target = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        "pv",
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"payload\n");
    assert_eq!(std::fs::read(target.join("d/g")).unwrap(), b"deep\n");

    // layer-diff: what docker diff said while the daemon ran.
    let (code, out, err) = run_code(&repo, &root, &["layer-diff", "c1"]);
    assert_eq!(code, 0, "layer-diff: {err}");
    let got: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(got, want_diff);

    // The daemon starts again on the same files and still agrees.
    daemon.launch();
    let again = canonical(parse(&daemon.docker(&["diff", "c1"])));
    assert_eq!(again, want_diff);
}
