//! A private dockerd for tests that must stop, restart or load a daemon: the same binary
//! and flags as tests/env/setup.sh, plus its own data root, exec root, socket and pid file.
//! The shared test daemon is never stopped: other test binaries, and other checkouts on this
//! machine, use it at any time, and stopping it under them would fail their tests for no
//! fault of theirs. Dropping the value removes the daemon's containers, stops it and
//! unmounts what it left mounted, also when the test fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{IMAGE, docker_status};

/// Longest wait for the private daemon to answer or to exit, so a broken daemon fails the
/// test with its log instead of hanging it; not a performance goal.
pub const DAEMON_WAIT_SECS: u64 = 120;

pub struct PrivateDockerd {
    dir: tempfile::TempDir,
    /// The running dockerd (setsid execs it in the spawned process), reaped on stop.
    child: std::cell::RefCell<Option<std::process::Child>>,
}

impl PrivateDockerd {
    pub fn start() -> Self {
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

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// The socket of the containerd this dockerd started (under its exec root), for `ctr -a`.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("exec/containerd/containerd.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("docker.pid")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn launch(&self) {
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

    pub fn answers(&self) -> bool {
        let (code, out, _) = self.status(&["info", "--format", "{{.ServerVersion}}"]);
        code == 0 && !out.trim().is_empty()
    }

    pub fn status(&self, args: &[&str]) -> (i32, String, String) {
        let sock = self.socket();
        let mut all = vec!["-H", sock.as_str()];
        all.extend_from_slice(args);
        docker_status(&all)
    }

    pub fn docker(&self, args: &[&str]) -> String {
        let (code, out, err) = self.status(args);
        assert_eq!(code, 0, "docker {args:?} on the private daemon: {err}");
        out.trim().to_string()
    }

    /// Copies the test image from the shared daemon (`docker save | docker load`), since no
    /// registry is reachable.
    pub fn load_test_image(&self) {
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = Command::new("docker")
            .args(["-H", &self.socket(), "load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {IMAGE} failed");
        assert!(load.status.success(), "docker load: {load:?}");
    }

    /// SIGTERM, then wait until the process has exited (and reap it).
    pub fn stop(&self) {
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
