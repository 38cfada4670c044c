//! The repository key and password stay secret: never in logs (even at trace level), never
//! on the command line, never in a hook's environment, never in a core dump or readable
//! through /proc by another process of the same user; secret files that others can read
//! are refused with the file named and the chmod to run.
//!
//! A test binary of its own (not a module of tests/it): one test sets secrets in this
//! process's environment (`std::env::set_var`), which is only sound while no other
//! thread runs and would leak into every process the other tests spawn.

#[path = "it/common/mod.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
}

/// volguard with a password from the environment (no --key-file), logging at trace.
fn with_password(repo: &TestRepo, password: &str) -> Command {
    let mut c = Command::new(volguard_bin());
    for v in LEAKY_ENV {
        c.env_remove(v);
    }
    c.env("VOLGUARD_PASSWORD", password)
        .env("VOLGUARD_LOG", "trace")
        .arg("--config")
        .arg(repo.path().join("no-config.toml"))
        .arg("--repo")
        .arg(&repo.repo)
        .arg("-vv")
        .stdin(Stdio::null());
    c
}

#[test]
fn the_key_and_password_never_appear_in_logs() {
    let repo = TestRepo::new();
    let password = format!("pw-{}", hex::encode(rand::random::<[u8; 12]>()));
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "data").unwrap();
    let mut all = String::new();
    for args in [
        vec!["init"],
        vec!["backup", "--path", src.to_str().unwrap(), "--name", "s"],
        vec!["snapshots"],
        vec!["check", "--read-data"],
    ] {
        let out = with_password(&repo, &password)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        all += &text(&out);
    }
    // A wrong password's error (exit 12, restic's code) must not echo either one.
    let out = with_password(&repo, "the-wrong-one")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    all += &text(&out);
    // (A local repository logs little even at trace; the S3 SDK's trace output is not
    // covered here.)
    assert!(all.contains("snapshot"), "{all}");
    assert!(!all.contains(&password), "the password is in the logs");
    assert!(!all.contains("the-wrong-one"), "a wrong password is echoed");

    // The same with a key file: its content never shows.
    let key = std::fs::read_to_string(&repo.key_file).unwrap();
    let r2 = TestRepo::new();
    let mut log = String::new();
    for args in [
        vec!["init"],
        vec!["backup", "--path", src.to_str().unwrap(), "--name", "s"],
    ] {
        let out = r2
            .cmd()
            .env("VOLGUARD_LOG", "trace")
            .arg("-vv")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        log += &text(&out);
    }
    let key2 = std::fs::read_to_string(&r2.key_file).unwrap();
    assert!(!log.contains(key2.trim()) && !log.contains(key.trim()));
    eprintln!(
        "secrets in logs: {} bytes of trace output searched, 0 hits",
        all.len() + log.len()
    );
}

#[test]
fn no_flag_takes_a_secret_on_the_command_line() {
    // Every subcommand's help: no option named like a secret that takes a value.
    let top = Command::new(volguard_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&top.stdout).into_owned();
    let mut seen = 0;
    let mut all = help.clone();
    for line in help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
    {
        let Some(cmd) = line.split_whitespace().next() else {
            break;
        };
        if line.starts_with("Options:") || !line.starts_with("  ") {
            break;
        }
        let out = Command::new(volguard_bin())
            .args([cmd, "--help"])
            .output()
            .unwrap();
        all += &String::from_utf8_lossy(&out.stdout);
        seen += 1;
    }
    assert!(seen > 10, "only {seen} subcommands found in: {help}");
    for flag in all.split_whitespace().filter(|w| w.starts_with("--")) {
        let f = flag.to_lowercase();
        assert!(
            !(f.contains("password")
                || f.contains("secret")
                || f.starts_with("--key=")
                || f == "--key"),
            "{flag} takes a secret on the command line"
        );
    }
}

#[test]
fn hooks_get_no_secrets_in_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    // The test process plays volguard: it has the secrets in its environment.
    // SAFETY: this test binary sets these before starting any thread of its own.
    unsafe {
        std::env::set_var("VOLGUARD_PASSWORD", "hook-must-not-see-this");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "nor-this");
        std::env::set_var("VOLGUARD_PASSWORD_FILE", "/nor/this");
    }
    let dump = |name: &str| dir.path().join(name);
    let sh = |out: &Path| {
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("env > {}", out.display()),
        ]
    };
    // The agent's consistency hooks (pre/post).
    volguard::hooks::run_hook(
        &sh(&dump("consistency")),
        "pre",
        "vol",
        dir.path(),
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    // The watch command hook.
    volguard::watch::alerts::run_command(&sh(&dump("watch")), b"{}").unwrap();
    for name in ["consistency", "watch"] {
        let env = std::fs::read_to_string(dump(name)).unwrap();
        assert!(
            env.contains("PATH="),
            "{name}: the hook ran without an environment?"
        );
        for leaked in [
            "hook-must-not-see-this",
            "nor-this",
            "/nor/this",
            "VOLGUARD_PASSWORD",
        ] {
            assert!(!env.contains(leaked), "{name} hook sees {leaked}: {env}");
        }
    }
}

#[test]
fn a_running_volguard_is_not_dumpable_and_its_memory_not_readable() {
    // volguard runs as an unprivileged user (nobody), with its own key file, streaming a
    // tar to a pipe nobody reads, so it stays alive while we look at it.
    const NOBODY: u32 = 65534;
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), pseudo_random(4 << 20, 5)).unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "big"]);
    std::fs::set_permissions(repo.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(st.success());
    // The test binary lives under /root, which nobody cannot enter: run a copy.
    let bin = repo.path().join("volguard");
    std::fs::copy(volguard_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(&bin);
    for v in LEAKY_ENV {
        c.env_remove(v);
    }
    c.arg("--config")
        .arg(repo.path().join("none.toml"))
        .arg("--repo")
        .arg(&repo.repo)
        .arg("--key-file")
        .arg(&repo.key_file)
        .args(["restore", "big", "--to-tar", "-"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    // Wait until it has opened the repository (and so loaded the key): its pipe is full.
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "volguard ended early");
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap();
    let key = std::fs::read_to_string(&repo.key_file).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(key.trim()),
        "the key is in argv"
    );
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    assert!(status.contains(&format!("Uid:\t{NOBODY}")), "{status}");
    // A non-dumpable process's /proc files belong to root, not to the user it runs as.
    let mem_owner = std::fs::metadata(proc_dir.join("mem")).unwrap().uid();
    assert_eq!(
        mem_owner, 0,
        "/proc/{pid}/mem belongs to the process's user: it is dumpable"
    );
    // Another process of the same user cannot read its memory or environment.
    // (mem cannot be read at offset 0 even when allowed, so environ is the probe.)
    let out = Command::new("cat")
        .arg(proc_dir.join("environ"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "environ of volguard is readable by its own user"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn secret_files_others_can_read_are_refused_with_the_chmod_to_run() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&repo.key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = repo.run(&["snapshots"]);
        let e = text(&out);
        assert_eq!(out.status.code(), Some(1), "mode {mode:o}: {e}");
        assert!(
            e.contains(&repo.key_file.display().to_string()) && e.contains("chmod 600"),
            "mode {mode:o}: {e}"
        );
    }
    std::fs::set_permissions(&repo.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A password file named by the config file, and by VOLGUARD_PASSWORD_FILE.
    let pw = repo.path().join("pw");
    std::fs::write(&pw, "a password\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = repo.path().join("config.toml");
    std::fs::write(&cfg, format!("password_file = \"{}\"\n", pw.display())).unwrap();
    // The config file itself holds no secret (only the paths of secret files, by design:
    // it has no field for one), so a world-readable config is fine.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Command::new(volguard_bin());
    for v in LEAKY_ENV {
        c.env_remove(v);
    }
    let out = c
        .arg("--config")
        .arg(&cfg)
        .arg("--repo")
        .arg(&repo.repo)
        .arg("snapshots")
        .output()
        .unwrap();
    let e = text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&pw.display().to_string()) && e.contains("chmod 600"),
        "{e}"
    );
    let mut c = Command::new(volguard_bin());
    for v in LEAKY_ENV {
        c.env_remove(v);
    }
    let out = c
        .env("VOLGUARD_PASSWORD_FILE", &pw)
        .arg("--config")
        .arg(repo.path().join("none.toml"))
        .arg("--repo")
        .arg(&repo.repo)
        .arg("snapshots")
        .output()
        .unwrap();
    let e = text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&pw.display().to_string()) && e.contains("chmod 600"),
        "{e}"
    );
}
