//! The Debian package, end to end on this machine: packaging/build-deb.sh builds it
//! (release binary, generated man pages and completions, cargo-deb), `dpkg -i` installs it,
//! the installed units pass `systemd-analyze verify` and rate at most 3.0 in
//! `systemd-analyze security --offline=true`, the installed binary runs, the conffile, man
//! pages, completions and state directory are where the README says, nothing was enabled or
//! started, and `dpkg --purge` removes it all again (the state directory only because it
//! is empty).
//!
//! It installs into the real root, so it refuses to run over a volguard that someone else
//! installed (package or loose /usr/bin/volguard), and a guard purges the package again
//! when the test fails. The other tests use the cargo-built binary, never /usr/bin/volguard.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "volguard";
/// `systemd-analyze security` exposure the issue allows for the agent unit ("OK").
const MAX_EXPOSURE: f64 = 3.0;
/// Files the package installs that the test checks one by one.
const INSTALLED: &[&str] = &[
    "/usr/bin/volguard",
    "/usr/lib/systemd/system/volguard.service",
    "/usr/lib/systemd/system/volguard-backup.service",
    "/usr/lib/systemd/system/volguard-backup.timer",
    "/etc/volguard/config.toml",
    "/usr/share/man/man1/volguard.1.gz",
    "/usr/share/man/man1/volguard-backup.1.gz",
    "/usr/share/man/man1/volguard-restore.1.gz",
    "/usr/share/bash-completion/completions/volguard",
    "/usr/share/zsh/vendor-completions/_volguard",
    "/usr/share/fish/vendor_completions.d/volguard.fish",
    "/usr/share/doc/volguard/README.md",
];
const UNITS: &[&str] = &[
    "volguard.service",
    "volguard-backup.service",
    "volguard-backup.timer",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Marks that this test installed the package, so a run killed before its cleanup is
/// recognised (and purged) by the next one instead of blocking it.
fn marker() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/volguard/packaging-test.installed")
}

/// Purges the package when dropped, also when the test panics.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).status();
        let _ = std::fs::remove_file(marker());
    }
}

/// Refuses to touch a volguard this test did not install. Returns whether the state and
/// config directories existed before (then the purge rightly leaves them).
fn preflight() -> (bool, bool) {
    let status = dpkg_status();
    if status.contains("installed") || status.contains("config-files") {
        assert!(
            marker().exists(),
            "the {PACKAGE} package is installed ({status}) and not by this test; it installs \
             and purges the package, so remove it first (dpkg --purge {PACKAGE})"
        );
        eprintln!("purging {PACKAGE} left by an interrupted run of this test");
        run_ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    }
    for p in ["/usr/bin/volguard", "/etc/volguard/config.toml"] {
        assert!(
            !Path::new(p).exists(),
            "{p} exists but belongs to no volguard package; this test would overwrite it \
             with its own and then delete it: move it away first"
        );
    }
    (
        Path::new("/var/lib/volguard").exists(),
        Path::new("/etc/volguard").exists(),
    )
}

/// The checkout under test: cargo test says so at run time; the compile-time path is only
/// a fallback (a build directory shared between checkouts keeps whichever compiled it).
fn checkout() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn build_deb(out_dir: &Path) -> PathBuf {
    let root = &checkout();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("packaging/build-deb.sh")).arg(out_dir);
    // Reuse the target dir of this build (tests/run.sh exports it); otherwise the crate's.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        cmd.env("CARGO_TARGET_DIR", root.join("target"));
    }
    let stdout = run_ok(&mut cmd);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "build-deb.sh printed {deb:?}, not a .deb file"
    );
    deb
}

/// The maintainer scripts may reload systemd, restart on upgrade what already runs, and
/// re-enable after an upgrade what the admin had enabled; they never enable or start
/// anything on their own.
fn assert_scripts_start_nothing(deb: &Path, scratch: &Path) {
    let control = scratch.join("control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let Ok(text) = std::fs::read_to_string(control.join(script)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            for forbidden in [
                "systemctl enable",
                "systemctl start",
                "systemctl restart",
                "deb-systemd-invoke start",
                "deb-systemd-invoke restart",
                "_dh_action=start",
            ] {
                assert!(
                    !line.contains(forbidden),
                    "{script} line {}: {line:?} enables or starts a unit",
                    i + 1
                );
            }
            if line.contains("deb-systemd-helper enable") {
                let guard = lines[..i]
                    .iter()
                    .rev()
                    .take(3)
                    .any(|l| l.contains("was-enabled"));
                assert!(
                    guard,
                    "{script} line {}: enables a unit without checking it was enabled before",
                    i + 1
                );
            }
        }
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("daemon-reload"),
        "postinst lacks daemon-reload"
    );
}

/// `systemd-analyze security --offline=true` ends with
/// `→ Overall exposure level for volguard.service: 2.6 OK 🙂`.
fn exposure(unit: &Path) -> f64 {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let after = line.rsplit_once(": ").map(|(_, r)| r).unwrap_or_default();
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

/// Processes whose executable is `exe`.
fn processes_running(exe: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path().join("exe"))
            && target == exe
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn deb_installs_verifies_runs_and_purges() {
    let (had_state_dir, had_config_dir) = preflight();
    let scratch = tempfile::tempdir().unwrap();
    let deb = build_deb(&scratch.path().join("out"));
    assert_scripts_start_nothing(&deb, scratch.path());

    std::fs::create_dir_all(marker().parent().unwrap()).unwrap();
    std::fs::write(marker(), deb.display().to_string()).unwrap();
    let _installed = Installed;
    run_ok(
        Command::new("dpkg")
            .arg("-i")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    assert!(
        dpkg_status().contains("install ok installed"),
        "{}",
        dpkg_status()
    );

    for p in INSTALLED {
        assert!(Path::new(p).is_file(), "{p} is not installed");
    }
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        conffiles.contains("/etc/volguard/config.toml"),
        "config.toml is no conffile: {conffiles:?}"
    );
    let shipped = std::fs::read(checkout().join("packaging/config.toml")).unwrap();
    assert_eq!(std::fs::read("/etc/volguard/config.toml").unwrap(), shipped);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/var/lib/volguard")
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700, "/var/lib/volguard mode {mode:o}");
    }

    // The units are valid as installed (the binary and man page they name exist now).
    for unit in UNITS {
        let path = Path::new("/usr/lib/systemd/system").join(unit);
        let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify {unit}: {stderr}"
        );
        assert!(
            !stderr.lines().any(|l| l.contains("volguard")),
            "systemd-analyze verify {unit} complains: {stderr}"
        );
    }
    let agent = Path::new("/usr/lib/systemd/system/volguard.service");
    let level = exposure(agent);
    assert!(
        level <= MAX_EXPOSURE,
        "volguard.service exposure {level} > {MAX_EXPOSURE}"
    );
    eprintln!("volguard.service exposure: {level}");

    let version = run_ok(Command::new("/usr/bin/volguard").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("volguard {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let man = run_ok(Command::new("man").args(["-w", "volguard"]));
    assert!(man.contains("/usr/share/man/man1/volguard.1.gz"), "{man}");

    // Nothing enabled: no unit linked into a .wants directory, systemctl agrees (it reads
    // the unit files, no running systemd needed), and no installed volguard runs.
    for unit in UNITS {
        for wants in [
            "multi-user.target.wants",
            "timers.target.wants",
            "default.target.wants",
        ] {
            let link = Path::new("/etc/systemd/system").join(wants).join(unit);
            assert!(
                !link.exists() && link.symlink_metadata().is_err(),
                "{} exists",
                link.display()
            );
        }
    }
    for unit in ["volguard.service", "volguard-backup.timer"] {
        let out = run(Command::new("systemctl").args(["is-enabled", unit]));
        let state = String::from_utf8_lossy(&out.stdout);
        assert_eq!(state.trim(), "disabled", "{unit} is {state:?}");
    }
    let running = processes_running(Path::new("/usr/bin/volguard"));
    assert!(
        running.is_empty(),
        "installed volguard runs as pids {running:?}"
    );

    drop(_installed);
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.ends_with("not-installed"),
        "still known to dpkg after purge: {status}"
    );
    for p in INSTALLED {
        assert!(!Path::new(p).exists(), "{p} survived the purge");
    }
    // Directories that existed before may hold someone's repository or key: kept.
    assert_eq!(
        Path::new("/var/lib/volguard").exists(),
        had_state_dir,
        "/var/lib/volguard after the purge"
    );
    assert_eq!(
        Path::new("/etc/volguard").exists(),
        had_config_dir,
        "/etc/volguard after the purge"
    );
}
