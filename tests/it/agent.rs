//! The agent as systemd runs it: a child process with `NOTIFY_SOCKET` pointed at a socket
//! this test reads. READY and WATCHDOG arrive, scheduled backups of real dockerd volumes
//! run, SIGHUP picks up a new volume (and a broken config is refused while the old one
//! keeps running), metrics and `volguard status` say what happened, SIGTERM during a
//! backup ends the process within the configured bound and leaves a repository that
//! passes `check`. Freeze mode keeps a constantly written volume consistent, and thaws the
//! container also when the backup fails.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use md5::Digest;
use serde_json::Value;

/// Longest wait for something the agent does within seconds when healthy; generous
/// because other tests share the two cores. Not a performance goal.
const WAIT: Duration = Duration::from_secs(90);

struct AgentProc {
    child: Child,
    messages: mpsc::Receiver<String>,
    dir: PathBuf,
    config: PathBuf,
}

impl AgentProc {
    /// Starts `volguard agent` on `repo` with `config` (TOML text) and a notify socket of
    /// its own; `repo_path` overrides the repository location.
    fn start(repo: &TestRepo, name: &str, config: &str) -> AgentProc {
        Self::start_on(repo, &repo.repo, name, config)
    }

    fn start_on(repo: &TestRepo, repo_path: &Path, name: &str, config: &str) -> AgentProc {
        let dir = repo.path().join(name);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let sock_path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let stderr = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = std::process::Command::new(volguard_bin());
        for var in LEAKY_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .arg("--repo")
            .arg(repo_path)
            .arg("--key-file")
            .arg(&repo.key_file)
            .arg("agent")
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("VOLGUARD_STATE_DIR", dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        AgentProc {
            child,
            messages,
            dir,
            config: cfg,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits for a notify message containing `what`; returns it.
    fn expect_message(&self, what: &str) -> String {
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Ok(m) = self.messages.recv_timeout(Duration::from_millis(200))
                && m.contains(what)
            {
                return m;
            }
        }
        panic!(
            "no {what:?} from the agent within {WAIT:?}; log:\n{}",
            self.log()
        );
    }

    fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("state/agent-status.json"))
            .unwrap_or_else(|e| panic!("no status file: {e}; log:\n{}", self.log()));
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until `pred` holds for the status file.
    fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Ok(text) = std::fs::read_to_string(self.dir.join("state/agent-status.json"))
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && pred(&v)
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "status never showed {what} within {WAIT:?}; log:\n{}",
            self.log()
        );
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn snapshots_of(repo: &TestRepo, volume: &str) -> usize {
    let v = repo.run_json(&["snapshots", "--volume", volume]);
    v["snapshots"].as_array().map_or(0, Vec::len)
}

fn config(volumes: &[&str], extra: &str) -> String {
    config_every("2s", volumes, extra)
}

fn config_every(schedule: &str, volumes: &[&str], extra: &str) -> String {
    let include: Vec<String> = volumes.iter().map(|v| format!("{v:?}")).collect();
    format!(
        "docker_root = {:?}\n[agent]\nschedule = {schedule:?}\njitter = \"0s\"\ntick = \"1s\"\n\
         metrics_listen = \"127.0.0.1:0\"\nshutdown_timeout = \"1s\"\ncheck_every = \"off\"\n\
         drill_every = \"off\"\ninclude = [{}]\n{extra}",
        docker_root().display().to_string(),
        include.join(", ")
    )
}

fn http_get(agent: &AgentProc, addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut out = String::new();
    let sent = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")
        .and_then(|()| s.read_to_string(&mut out));
    if let Err(e) = sent {
        panic!("GET http://{addr}{path}: {e}; agent log:\n{}", agent.log());
    }
    out
}

/// The value of an unlabelled metric in exposition text; panics when it is missing.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn agent_notifies_schedules_reloads_and_stops_within_its_bound() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let a = clean.volume(unique("agent-a"));
    let b = clean.volume(unique("agent-b"));
    let big = clean.volume(unique("agent-big"));
    for v in [&a, &b, &big] {
        docker(&["volume", "create", v]);
    }
    sh_in_volume(&a, "echo a > /data/f");
    sh_in_volume(&b, "echo b > /data/f");
    // Big enough that its backup outlasts the 1 s shutdown bound.
    sh_in_volume(&big, "head -c 700000000 /dev/urandom > /data/big");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);

    let agent = AgentProc::start(&repo, "agent", &config(&[&a], ""));
    let ready = agent.expect_message("READY=1");
    assert!(ready.contains("MAINPID="), "{ready}");
    agent.expect_message("WATCHDOG=1");
    agent.expect_message("WATCHDOG=1");

    // The schedule (every 2 s) backs `a` up, and again.
    agent.wait_status("two backups of a", |s| {
        s["volumes"][&a]["figures"]["backups_ok"].as_u64() >= Some(2)
    });
    assert!(snapshots_of(&repo, &a) >= 2);
    assert_eq!(snapshots_of(&repo, &b), 0, "b is not selected yet");

    // Metrics on the loopback port the status names.
    let status = agent.status();
    let addr = status["metrics_addr"].as_str().unwrap().to_string();
    let metrics = http_get(&agent, &addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(&format!("volguard_backups_total{{volume=\"{a}\"}}")),
        "{metrics}"
    );
    // Host and process gauges, real values of this host and the agent's process.
    let total = metric_value(&metrics, "volguard_host_memory_total_bytes");
    let available = metric_value(&metrics, "volguard_host_memory_available_bytes");
    assert!(total > 0.0 && available <= total, "{metrics}");
    for load in [
        "volguard_host_load1",
        "volguard_host_load5",
        "volguard_host_load15",
    ] {
        assert!(metric_value(&metrics, load) >= 0.0, "{metrics}");
    }
    assert!(metric_value(&metrics, "volguard_host_uptime_seconds") > 0.0);
    let rss = metric_value(&metrics, "volguard_process_resident_memory_bytes");
    assert!(rss > 0.0 && rss < total, "{metrics}");
    // Two backups have run: the agent has used CPU.
    assert!(metric_value(&metrics, "volguard_process_cpu_seconds_total") > 0.0);
    assert!(metrics.contains("# TYPE volguard_process_cpu_seconds_total counter\n"));

    // The agent runs the watcher: a host process writing into `a` is a foreign write.
    std::fs::write(volume_data_dir(&a).join("planted"), b"x").unwrap();
    let until = Instant::now() + WAIT;
    let counted = format!("volguard_foreign_writes_total{{volume=\"{a}\"}} ");
    while !http_get(&agent, &addr, "/metrics")
        .lines()
        .any(|l| l.starts_with(&counted) && !l.ends_with(" 0"))
    {
        assert!(
            Instant::now() < until,
            "no foreign write counted; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains("foreign change to volume"),
        "{}",
        agent.log()
    );

    // A broken config on SIGHUP is refused; the agent keeps running as it was.
    agent.rewrite_config("[agent]\nschedule = \"sometimes\"\n");
    let until = Instant::now() + WAIT;
    while !agent.log().contains("config reload refused") {
        assert!(
            Instant::now() < until,
            "no refusal logged:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("not a schedule"), "{}", agent.log());
    assert!(
        http_get(&agent, &addr, "/metrics").contains("volguard_config_reload_failures_total 1"),
        "the refusal is counted"
    );
    // SIGHUP with `b` added: it is backed up without a restart.
    agent.rewrite_config(&config(&[&a, &b], ""));
    agent.wait_status("a backup of b", |s| {
        s["volumes"][&b]["figures"]["backups_ok"].as_u64() >= Some(1)
    });
    assert!(snapshots_of(&repo, &b) >= 1);

    // `volguard status` reads the same file.
    let mut c = repo.cmd();
    c.env("VOLGUARD_STATE_DIR", agent.dir.join("state"))
        .args(["--json", "status"]);
    let out = c.output().unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["running"], true, "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(out.status.code(), Some(0));
    // With the host's facts and the agent process's, read now.
    let sys = &st["system"];
    let total = sys["memory_total_bytes"].as_u64().unwrap_or(0);
    assert!(total > 0, "{st:#}");
    assert!(
        sys["memory_available_bytes"].as_u64().unwrap() <= total,
        "{st:#}"
    );
    for load in ["load1", "load5", "load15"] {
        assert!(sys[load].as_f64().unwrap() >= 0.0, "{st:#}");
    }
    assert!(sys["uptime_seconds"].as_u64().unwrap() > 0, "{st:#}");
    let process = &st["process"];
    assert_eq!(process["pid"].as_u64(), Some(u64::from(agent.child.id())));
    let rss = process["resident_memory_bytes"].as_u64().unwrap_or(0);
    assert!(rss > 0 && rss < total, "{st:#}");
    assert!(
        process["cpu_seconds_total"].as_f64().unwrap() > 0.0,
        "{st:#}"
    );
    // The text form says the same in two lines.
    let mut c = repo.cmd();
    c.env("VOLGUARD_STATE_DIR", agent.dir.join("state"))
        .arg("status");
    let text = String::from_utf8(c.output().unwrap().stdout).unwrap();
    assert!(text.contains("\nsystem: memory "), "{text}");
    assert!(text.contains("\nagent process: "), "{text}");

    // SIGTERM while the big volume is being backed up: gone within the 1 s bound (plus
    // slack for a loaded machine), and the repository is consistent.
    agent.rewrite_config(&config_every("1h", &[&a, &b, &big], ""));
    agent.wait_status("the big backup running", |s| {
        s["activity"].as_str() == Some(&format!("backing up {big}"))
    });
    let sent = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let mut agent = agent;
    let code = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "agent still running {:?} after SIGTERM; log:\n{}",
            sent.elapsed(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "log:\n{}", agent.log());
    assert!(
        agent.log().contains("abandoned backing up"),
        "the big backup was abandoned, not finished: {took:?}\n{}",
        agent.log()
    );
    agent.expect_message("STOPPING=1");
    eprintln!("agent exited {took:?} after SIGTERM (bound 1 s)");
    repo.run_ok(&["check"]);
    // Nothing of the abandoned backup shows as a snapshot.
    assert_eq!(snapshots_of(&repo, &big), 0);
}

#[test]
fn agent_leaves_out_a_volume_labelled_backup_false() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let kept = clean.volume(unique("agent-kept"));
    let opted = clean.volume(unique("agent-optout"));
    docker(&["volume", "create", &kept]);
    docker(&[
        "volume",
        "create",
        "--label",
        "volguard.backup=false",
        &opted,
    ]);
    sh_in_volume(&kept, "echo k > /data/f");
    sh_in_volume(&opted, "echo o > /data/f");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let agent = AgentProc::start(&repo, "agent-optout", &config(&[&kept, &opted], ""));
    agent.wait_status("two backups of the kept volume", |s| {
        s["volumes"][&kept]["figures"]["backups_ok"].as_u64() >= Some(2)
    });
    assert_eq!(snapshots_of(&repo, &opted), 0, "{}", agent.log());
    assert!(
        agent.status()["volumes"].get(&opted).is_none(),
        "{}",
        agent.status()
    );
}

#[test]
fn a_volumes_keep_labels_replace_the_agents_retention_rules_for_it() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let own = clean.volume(unique("agent-keep1"));
    let global = clean.volume(unique("agent-keep3"));
    docker(&["volume", "create", "--label", "volguard.keep-last=1", &own]);
    docker(&["volume", "create", &global]);
    sh_in_volume(&own, "echo o > /data/f");
    sh_in_volume(&global, "echo g > /data/f");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let retention = "[agent.retention]\nevery = \"1s\"\nkeep_last = 3\nprune = false\n";
    let agent = AgentProc::start(&repo, "agent-keep", &config(&[&own, &global], retention));
    // Backups every 2 s, retention every second: the labelled volume is held at one
    // snapshot, the other at three (a fresh backup may add one until the next pass).
    let until = Instant::now() + WAIT;
    loop {
        let (o, g) = (snapshots_of(&repo, &own), snapshots_of(&repo, &global));
        if o == 1 && g >= 3 {
            assert!(g <= 4, "global rules kept {g}; log:\n{}", agent.log());
            break;
        }
        assert!(
            Instant::now() < until,
            "own {o}, global {g} snapshots; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent
            .log()
            .contains(&format!("retention by volume {own} (its labels")),
        "{}",
        agent.log()
    );
}

#[test]
fn agent_refuses_to_start_on_a_bad_config() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let dir = repo.path().join("bad");
    std::fs::create_dir(&dir).unwrap();
    for (text, want) in [
        ("[agent]\nnice = 40\n", "agent.nice"),
        ("[agent]\njitter = \"soon\"\n", "c.toml:2"),
        (
            "[agent]\nmetrics_listen = \"192.0.2.1:9469\"\n",
            "not a loopback address",
        ),
    ] {
        let cfg = dir.join("c.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = repo
            .cmd_with_config(&cfg)
            .env("VOLGUARD_STATE_DIR", dir.join("state"))
            .arg("agent")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(
            err.contains(want) && err.contains("c.toml"),
            "{text}: {err}"
        );
        assert!(err.contains("the agent does not start"), "{err}");
    }
}

/// The container's writer: each generation is a directory with a data file and its MD5,
/// published by swapping the `current` symlink in one rename. At any instant the volume is
/// consistent, so a frozen copy must be too.
const WRITER: &str = "cd /data; i=0; while true; do i=$((i+1)); mkdir g$i; \
     head -c $((20000 + i % 7 * 1000)) /dev/urandom > g$i/data; md5sum g$i/data | cut -d' ' -f1 > g$i/sum; \
     ln -s g$i cur.tmp; mv -T cur.tmp current; rm -rf g$((i-1)); echo $i > count; done";

fn freezer_state(container: &str) -> String {
    let id = docker(&["inspect", "--format", "{{.Id}}", container]);
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/freezer/docker/{id}/freezer.state"));
    if v1.exists() {
        return std::fs::read_to_string(v1).unwrap().trim().to_string();
    }
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", container]);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let events = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.events")).unwrap();
    if events.contains("frozen 1") {
        "FROZEN"
    } else {
        "THAWED"
    }
    .into()
}

/// The writer's generation counter; retried while the writer is rewriting the file.
fn count(volume_dir: &Path) -> u64 {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(n) = std::fs::read_to_string(volume_dir.join("count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return n;
        }
        assert!(
            Instant::now() < until,
            "no count file in {}",
            volume_dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the writer has made progress past `before`.
fn assert_writer_runs(volume_dir: &Path, before: u64, when: &str) {
    let until = Instant::now() + WAIT;
    while count(volume_dir) <= before {
        assert!(
            Instant::now() < until,
            "the writer does not run again {when}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn freeze_keeps_a_busy_volume_consistent_and_always_thaws() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("agent-freeze"));
    let ctr = clean.container(unique("agent-writer"));
    docker(&["volume", "create", &vol]);
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sh",
        "-c",
        WRITER,
    ]);
    let data = volume_data_dir(&vol);
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let extra = format!("[[agent.volume]]\nname = {vol:?}\nconsistency = \"freeze\"\n");
    let agent = AgentProc::start(&repo, "freeze", &config(&[&vol], &extra));
    agent.wait_status("three frozen backups", |s| {
        s["volumes"][&vol]["figures"]["backups_ok"].as_u64() >= Some(3)
    });
    drop(agent);
    assert_eq!(freezer_state(&ctr), "THAWED");
    let before = count(&data);
    assert_writer_runs(&data, before, "after the backups");

    let snaps = repo.run_json(&["snapshots", "--volume", &vol]);
    let ids: Vec<String> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 3, "{snaps:#}");
    for id in &ids {
        let dir = repo.restore_to_new_dir(&vol, id);
        let current = std::fs::read_link(dir.join("current")).unwrap();
        let gen_dir = dir.join(&current);
        let bytes = std::fs::read(gen_dir.join("data"))
            .unwrap_or_else(|e| panic!("snapshot {id}: {current:?}/data: {e}"));
        let sum = std::fs::read_to_string(gen_dir.join("sum")).unwrap();
        assert_eq!(
            hex::encode(md5::Md5::digest(&bytes)),
            sum.trim(),
            "snapshot {id}: data and sum of {current:?} disagree"
        );
    }

    // A backup that fails while the container is frozen (the repository's filesystem is
    // full) still thaws it.
    let full = repo.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(full.clone());
    let out = std::process::Command::new(volguard_bin())
        .arg("--repo")
        .arg(full.join("repo"))
        .arg("--key-file")
        .arg(&repo.key_file)
        .arg("--config")
        .arg(&repo.config)
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    sh_in_volume(&vol, "head -c 5000000 /dev/urandom > /data/ballast");
    let failing = AgentProc::start_on(
        &repo,
        &full.join("repo"),
        "failing",
        &config(&[&vol], &extra),
    );
    failing.wait_status("a failed backup", |s| {
        s["volumes"][&vol]["figures"]["backups_failed"].as_u64() >= Some(1)
    });
    let log = failing.log();
    assert!(
        log.contains(&format!("froze /{ctr}")) || log.contains("froze"),
        "{log}"
    );
    assert!(log.contains("thawed"), "{log}");
    drop(failing);
    assert_eq!(freezer_state(&ctr), "THAWED");
    let before = count(&data);
    assert_writer_runs(&data, before, "after the failed backup");
}
