//! `volguard watch` against the real kernel and the real dockerd: who changed volume data,
//! and whether that makes a warning (docs/design.md, Watcher; issue 6). Other engineers' tests and
//! builds run on the same filesystem and the same dockerd at the same time, so every
//! assertion looks only at this test's own uniquely named volumes.
//!
//! A test binary of its own (not a module of tests/it): the overflow test lowers the
//! machine-wide `/proc/sys/fs/fanotify/max_queued_events` while a watcher starts (a
//! watcher another test started meanwhile, such as the agent's, would get the tiny
//! queue), and catching short-lived writers needs a machine the rest of the suite does
//! not load meanwhile: cargo runs test binaries one after another.

#[path = "it/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DockerCleanup, IMAGE, docker, require_docker, unique, volume_data_dir};
use serde_json::Value;

/// A webhook receiver on 127.0.0.1 collecting POSTed JSON bodies.
struct Hook {
    url: String,
    bodies: Receiver<Value>,
}

fn start_hook() -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if first {
                    assert!(line.starts_with("POST /hook "), "{line}");
                    first = false;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                break;
            }
        }
    });
    Hook { url, bodies: rx }
}

/// A `volguard --json watch` process with its own state dir and config.
struct Watcher {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    state: tempfile::TempDir,
    config: PathBuf,
}

/// Held while a watcher starts: the overflow test shrinks the kernel's queue limit for the
/// group it creates, and no other test's watcher may be created meanwhile.
static STARTING: Mutex<()> = Mutex::new(());

/// One test at a time: each watcher marks the whole filesystem and follows every fork and
/// exec on the machine, so parallel tests make each other's short-lived processes exit
/// before they are caught, on a loaded 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

impl Watcher {
    fn start(config_text: &str, env: &[(&str, &str)]) -> Watcher {
        let _guard = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        Self::start_unlocked(config_text, env)
    }

    fn start_unlocked(config_text: &str, env: &[(&str, &str)]) -> Watcher {
        let state = tempfile::Builder::new()
            .prefix("volguard-watch-")
            .tempdir()
            .unwrap();
        let config = state.path().join("config.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut c = Command::new(common::volguard_bin());
        c.arg("--config")
            .arg(&config)
            .args(["--json", "watch"])
            .env("VOLGUARD_STATE_DIR", state.path().join("state"))
            .env("VOLGUARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let (tx, rx) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed a non-JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let w = Watcher {
            child,
            events: rx,
            seen: Vec::new(),
            stderr,
            state,
            config,
        };
        let t = Instant::now();
        while !w.stderr_text().contains("volguard watch: watching") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "watch did not get ready: {}",
                w.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// Waits up to `timeout` for an event matching `pred`; every event read is kept.
    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    /// Reads whatever arrives within `d`.
    fn drain(&mut self, d: Duration) {
        let _ = self.wait_for(d, |_| false);
    }

    fn events_of(&self, volume: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["volume"] == volume)
            .cloned()
            .collect()
    }

    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `volguard events` with this watcher's state dir and config.
    fn events_cmd(&self, args: &[&str]) -> Value {
        let out = Command::new(common::volguard_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--json", "events"])
            .args(args)
            .env("VOLGUARD_STATE_DIR", self.state_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A docker volume with this test's unique name, removed at the end.
fn new_volume(cleanup: &mut DockerCleanup, prefix: &str) -> (String, PathBuf) {
    let name = cleanup.volume(unique(prefix));
    docker(&["volume", "create", &name]);
    let data = volume_data_dir(&name);
    assert!(data.is_dir(), "{}", data.display());
    (name, data)
}

/// Runs `sh -c 'echo $$; <script>' sh args...` so the script's pid is known: the shell
/// prints its pid, then (with `exec`) becomes the program that makes the change.
fn run_with_pid(script: &str, args: &[&Path]) -> i64 {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$; {script}"))
        .arg("sh")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn real_exe(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::canonicalize(p).unwrap().display().to_string()
}

fn config_with_hook(hook: &Hook) -> String {
    format!("[watch]\nwebhook = \"{}\"\n", hook.url)
}

#[test]
fn host_processes_each_warn_once_with_the_right_process_in_every_sink() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, data) = new_volume(&mut cleanup, "watch-host");
    for f in ["a.txt", "c.txt", "d.txt"] {
        std::fs::write(data.join(f), "seed\n").unwrap();
    }
    let hook = start_hook();
    let hook_file = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "{}command = [\"/bin/sh\", \"-c\", \"(cat; echo) >> {}\"]\n",
        config_with_hook(&hook),
        hook_file.path().display()
    );
    let mut w = Watcher::start(&config, &[]);

    // (script, files, op, path, from, comm, exe)
    let a = data.join("a.txt");
    let b = data.join("b.txt");
    let c = data.join("c.txt");
    let d = data.join("d.txt");
    let e = data.join("e.txt");
    let f = data.join("f.txt");
    type Case<'a> = (
        &'a str,
        Vec<&'a Path>,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            r#"echo more >> "$1""#,
            vec![&a],
            "modify",
            "a.txt",
            None,
            "sh",
        ),
        (
            r#"exec cp "$1" "$2""#,
            vec![&a, &b],
            "create",
            "b.txt",
            None,
            "cp",
        ),
        (r#"exec rm "$1""#, vec![&c], "delete", "c.txt", None, "rm"),
        (
            r#"exec mv "$1" "$2""#,
            vec![&d, &e],
            "rename",
            "e.txt",
            Some("d.txt"),
            "mv",
        ),
        (
            r#"exec touch "$1""#,
            vec![&f],
            "create",
            "f.txt",
            None,
            "touch",
        ),
        (
            r#"exec chmod 600 "$1""#,
            vec![&a],
            "attrib",
            "a.txt",
            None,
            "chmod",
        ),
    ];
    let mut expected = Vec::new();
    for (script, files, op, path, from, comm) in &cases {
        let started = Instant::now();
        let pid = run_with_pid(script, files);
        let ev = w
            .wait_for(Duration::from_secs(5), |v| {
                v["volume"] == vol.as_str() && v["pid"] == pid
            })
            .unwrap_or_else(|| {
                panic!(
                    "no event within 5 s for `{script}` (pid {pid}); stderr:\n{}",
                    w.stderr_text()
                )
            });
        // The loose bound the issue asks for: a warning within a few seconds.
        assert!(started.elapsed() < Duration::from_secs(5));
        expected.push((pid, *op, *path, *from, *comm));
        assert_eq!(ev["op"], *op, "{script}: {ev}");
        assert_eq!(ev["path"], *path, "{script}: {ev}");
        if let Some(from) = from {
            assert_eq!(ev["from"], *from, "{ev}");
        }
        assert_eq!(ev["verdict"], "foreign", "{ev}");
        assert_eq!(ev["warning"], true, "{ev}");
        let exe = real_exe(comm);
        // A process that exited before its event was read is named from the exec watch,
        // which sees the resolved file (/usr/bin/dash), not the name it was run by (sh).
        let exe_name = exe.rsplit('/').next().unwrap();
        let named_from_exec = ev["process_gone"] == true && ev["comm"] == exe_name;
        assert!(ev["comm"] == *comm || named_from_exec, "{ev}");
        assert_eq!(ev["exe"], exe.as_str(), "{ev}");
        assert_eq!(ev["uid"], 0, "{ev}");
        assert!(ev["container"].is_null(), "{ev}");
        assert!(ev["time"].as_str().unwrap().ends_with('Z'), "{ev}");
    }
    // Let any trailing events of these operations arrive: still one per operation.
    w.drain(Duration::from_millis(1500));
    let events = w.events_of(&vol);
    for (pid, op, path, _, _) in &expected {
        let mine: Vec<&Value> = events.iter().filter(|v| v["pid"] == *pid).collect();
        assert_eq!(
            mine.len(),
            1,
            "{op} {path}: expected one event, got {mine:#?}"
        );
    }
    // Every warning reached the event log, stderr (tracing WARN) and the webhook.
    let log = w.log_lines();
    let mut hooked = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while hooked.len() < expected.len() && Instant::now() < end {
        if let Ok(v) = hook.bodies.recv_timeout(Duration::from_millis(200))
            && v["volume"] == vol.as_str()
        {
            hooked.push(v);
        }
    }
    let stderr = w.stderr_text();
    let end = Instant::now() + Duration::from_secs(10);
    let commanded = loop {
        let lines: Vec<Value> = std::fs::read_to_string(hook_file.path())
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &Value| v["volume"] == vol.as_str())
            .collect();
        if lines.len() >= expected.len() || Instant::now() > end {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (pid, op, path, _, _) in &expected {
        let n = commanded.iter().filter(|v| v["pid"] == *pid).count();
        assert_eq!(
            n, 1,
            "{op} {path} (pid {pid}) through the command hook: {commanded:#?}"
        );
    }
    for (pid, op, path, _, _) in &expected {
        let in_log = log
            .iter()
            .filter(|l| l["volume"] == vol.as_str() && l["pid"] == *pid)
            .count();
        assert_eq!(
            in_log, 1,
            "{op} {path} (pid {pid}) in the event log: {log:#?}"
        );
        let hooks = hooked.iter().filter(|v| v["pid"] == *pid).count();
        assert_eq!(
            hooks, 1,
            "{op} {path} (pid {pid}) at the webhook: {hooked:#?}"
        );
        assert!(
            stderr.contains(&format!("by pid {pid} ")) && stderr.contains("WARN"),
            "pid {pid} not warned on stderr:\n{stderr}"
        );
    }
    // `volguard events` reads the same warnings back, filtered by volume and time.
    let listed = w.events_cmd(&["--volume", &vol, "--since", "1h"]);
    let listed = listed["events"].as_array().unwrap();
    assert_eq!(listed.len(), expected.len(), "{listed:#?}");
    let none = w.events_cmd(&["--volume", &vol, "--since", "2999-01-01T00:00:00Z"]);
    assert!(none["events"].as_array().unwrap().is_empty());
}

#[test]
fn containers_writing_their_volume_and_dockerd_filling_one_are_not_warned() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, _) = new_volume(&mut cleanup, "watch-ctr");
    let mut w = Watcher::start("", &[]);

    // A short-lived container writes into the volume it mounts.
    let name = cleanup.container(unique("watch-ctr"));
    docker(&[
        "run",
        "--name",
        &name,
        "--network",
        "none",
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sh",
        "-c",
        "echo x > /data/f; mkdir /data/d; echo y > /data/d/g; chmod 600 /data/f",
    ]);
    let id = docker(&["inspect", "--format", "{{.Id}}", &name]);
    let ev = w
        .wait_for(Duration::from_secs(10), |v| {
            v["volume"] == vol.as_str() && v["path"] == "d/g"
        })
        .unwrap_or_else(|| panic!("no event for d/g; stderr:\n{}", w.stderr_text()));
    assert_eq!(ev["verdict"], "container", "{ev}");
    assert_eq!(ev["container"], id.as_str(), "{ev}");
    assert_eq!(ev["container_name"], name.as_str(), "{ev}");
    assert_eq!(ev["warning"], false, "{ev}");

    // dockerd copies image content into a fresh volume mounted over a non-empty directory.
    let fresh = cleanup.volume(unique("watch-fill"));
    let filler = cleanup.container(unique("watch-fill"));
    docker(&[
        "run",
        "--name",
        &filler,
        "--network",
        "none",
        "-v",
        &format!("{fresh}:/bin"),
        IMAGE,
        "true",
    ]);
    assert!(volume_data_dir(&fresh).join("busybox").exists());
    let ev = w
        .wait_for(Duration::from_secs(10), |v| {
            v["volume"] == fresh.as_str() && v["path"] == "busybox"
        })
        .unwrap_or_else(|| {
            panic!(
                "no event for the copied busybox; stderr:\n{}",
                w.stderr_text()
            )
        });
    assert_eq!(ev["verdict"], "docker", "{ev}");
    assert_eq!(ev["comm"], "dockerd", "{ev}");
    w.drain(Duration::from_millis(1500));
    for v in [&vol, &fresh] {
        let events = w.events_of(v);
        assert!(!events.is_empty());
        let foreign: Vec<&Value> = events
            .iter()
            .filter(|e| e["verdict"] == "foreign")
            .collect();
        assert!(foreign.is_empty(), "foreign events in {v}: {foreign:#?}");
    }
    assert!(
        !w.log_lines()
            .iter()
            .any(|l| l["volume"] == vol.as_str() || l["volume"] == fresh.as_str()),
        "no warning may reach the event log"
    );
}

#[test]
fn nsenter_into_a_container_from_a_host_cgroup_is_foreign() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, _) = new_volume(&mut cleanup, "watch-ns");
    let name = cleanup.container(unique("watch-ns"));
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sleep",
        "300",
    ]);
    let cpid = docker(&["inspect", "--format", "{{.State.Pid}}", &name]);
    let mut w = Watcher::start("", &[]);

    // Through the container's own mount of the volume, but from the host's cgroup.
    let pid = run_with_pid(
        &format!(r#"exec nsenter -m -t {cpid} sh -c 'echo x >> /data/ns.txt'"#),
        &[],
    );
    let ev = w
        .wait_for(Duration::from_secs(5), |v| {
            v["volume"] == vol.as_str() && v["pid"] == pid
        })
        .unwrap_or_else(|| panic!("no event for nsenter (pid {pid}); {}", w.stderr_text()));
    assert_eq!(ev["path"], "ns.txt", "{ev}");
    assert_eq!(ev["verdict"], "foreign", "{ev}");
    assert!(ev["container"].is_null(), "{ev}");
    assert_eq!(ev["warning"], true, "{ev}");

    // The same change from inside the container (docker exec: its cgroup) is the container's.
    docker(&["exec", &name, "sh", "-c", "echo y >> /data/exec.txt"]);
    let ev = w
        .wait_for(Duration::from_secs(5), |v| {
            v["volume"] == vol.as_str() && v["path"] == "exec.txt"
        })
        .unwrap_or_else(|| panic!("no event for docker exec; {}", w.stderr_text()));
    assert_eq!(ev["verdict"], "container", "{ev}");
}

#[test]
fn a_process_that_exits_before_its_event_is_read_is_still_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, data) = new_volume(&mut cleanup, "watch-short");
    // The watcher reads its queue only every 1.5 s, so the writer is long gone (and reaped)
    // when its event is read; its details must come from what was captured at fork/exec.
    let mut w = Watcher::start("", &[("VOLGUARD_WATCH_TEST_READ_DELAY_MS", "1500")]);
    let python = std::fs::canonicalize("/usr/bin/python3")
        .unwrap()
        .display()
        .to_string();
    let mut gone_seen = false;
    for attempt in 0..3 {
        let target = data.join(format!("short-{attempt}.txt"));
        let pid = run_with_pid(
            r#"exec /usr/bin/python3 -c 'import sys; open(sys.argv[1], "a").write("x")' "$1""#,
            &[&target],
        );
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let ev = w
            .wait_for(Duration::from_secs(10), |v| {
                v["volume"] == vol.as_str() && v["pid"] == pid
            })
            .unwrap_or_else(|| panic!("no event for pid {pid}; {}", w.stderr_text()));
        assert_eq!(ev["comm"], "python3", "{ev}");
        assert_eq!(ev["exe"], python.as_str(), "{ev}");
        assert_eq!(ev["uid"], 0, "{ev}");
        assert_eq!(ev["verdict"], "foreign", "{ev}");
        assert_eq!(ev["path"], format!("short-{attempt}.txt"), "{ev}");
        if ev["process_gone"] == true {
            gone_seen = true;
            break;
        }
    }
    assert!(
        gone_seen,
        "the writer was never gone when its event was read"
    );
}

#[test]
fn queue_overflow_says_events_were_lost_and_marks_volumes_for_verify() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, data) = new_volume(&mut cleanup, "watch-overflow");
    const LIMIT: &str = "/proc/sys/fs/fanotify/max_queued_events";
    let mut w = {
        let _guard = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::read_to_string(LIMIT).unwrap();
        // The limit is read when the group is created: only this watcher gets a tiny queue.
        std::fs::write(LIMIT, "64").unwrap();
        let w = std::panic::catch_unwind(|| {
            Watcher::start_unlocked("", &[("VOLGUARD_WATCH_TEST_READ_DELAY_MS", "2000")])
        });
        std::fs::write(LIMIT, old.trim()).unwrap();
        w.unwrap()
    };
    for i in 0..500 {
        std::fs::write(data.join(format!("f{i}")), "x").unwrap();
    }
    let end = Instant::now() + Duration::from_secs(20);
    while !w.stderr_text().contains("events may have been lost") {
        assert!(
            Instant::now() < end,
            "no overflow warning: {}",
            w.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let doc = w.events_cmd(&["--volume", &vol]);
    assert!(
        doc["verify_needed"][vol.as_str()]["reason"]
            .as_str()
            .unwrap()
            .contains("overflow"),
        "{doc:#}"
    );
    let lost: Vec<&Value> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "events_lost")
        .collect();
    assert!(!lost.is_empty(), "{doc:#}");

    // A backup, then a clean verify, answers the mark: it goes, and only it.
    let _ = w.child.kill();
    let _ = w.child.wait();
    let repo = common::TestRepo::new();
    repo.run_ok(&["init"]);
    repo.run_ok(&["backup", &vol]);
    let marks = w.state_dir().join("verify-needed.json");
    let before: Value = serde_json::from_slice(&std::fs::read(&marks).unwrap()).unwrap();
    let others = before["volumes"].as_object().unwrap().len() - 1;
    let out = repo
        .cmd()
        .args(["--json", "verify", &vol])
        .env("VOLGUARD_STATE_DIR", w.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verify_mark_cleared"], true, "{v}");
    let left: Value = serde_json::from_slice(&std::fs::read(&marks).unwrap()).unwrap();
    assert!(left["volumes"].get(vol.as_str()).is_none(), "{left}");
    assert_eq!(left["volumes"].as_object().unwrap().len(), others, "{left}");
}

#[test]
fn a_foreign_change_takes_one_forensic_snapshot_of_the_touched_volume() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let (vol, data) = new_volume(&mut cleanup, "watch-forensic");
    std::fs::write(data.join("db"), "good").unwrap();
    let repo = common::TestRepo::new();
    repo.run_ok(&["init"]);
    let (r, k) = (
        repo.repo.display().to_string(),
        repo.key_file.display().to_string(),
    );
    let mut w = Watcher::start(
        "[watch]\nforensic_snapshot = true\n",
        &[("VOLGUARD_REPO", &r), ("VOLGUARD_KEY_FILE", &k)],
    );
    // This test process is a host process: its write is foreign.
    std::fs::write(data.join("planted"), "evil").unwrap();
    let forensic_lines = |w: &Watcher| -> Vec<Value> {
        w.log_lines()
            .into_iter()
            .filter(|l| l["op"] == "forensic_snapshot" && l["volume"] == vol.as_str())
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(60);
    while forensic_lines(&w).is_empty() {
        assert!(
            Instant::now() < end,
            "no forensic snapshot within 60 s: {}",
            w.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let line = &forensic_lines(&w)[0];
    assert_eq!(line["ok"], true, "{line}");
    let snaps = repo.run_json(&["snapshots", "--volume", &vol]);
    let snaps = snaps["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["id"], line["snapshot"], "{snaps:?} {line}");
    assert_eq!(
        snaps[0]["tags"],
        serde_json::json!(["forensic", "foreign-write"]),
        "{snaps:?}"
    );
    // The evidence is in it.
    let id = snaps[0]["id"].as_str().unwrap();
    let restored = repo.restore_to_new_dir(&vol, id);
    assert_eq!(std::fs::read(restored.join("planted")).unwrap(), b"evil");
    assert_eq!(std::fs::read(restored.join("db")).unwrap(), b"good");

    // A second foreign change within the interval is warned about, not backed up again.
    std::fs::write(data.join("again"), "x").unwrap();
    w.wait_for(Duration::from_secs(10), |v| {
        v["volume"] == vol.as_str() && v["path"] == "again" && v["warning"] == true
    })
    .unwrap_or_else(|| panic!("no warning for the second write: {}", w.stderr_text()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(forensic_lines(&w).len(), 1, "{:?}", w.log_lines());
    let snaps = repo.run_json(&["snapshots", "--volume", &vol]);
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1, "{snaps}");
}
