//! The exit-code contract for interruption: SIGINT ends volguard with 130 and leaves a
//! repository that passes `check`; a reader of its output that went away ends it with 141
//! and no panic.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn sigint_exits_with_130_and_the_repository_stays_consistent() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(32 << 20, i + 1)).unwrap();
    }
    let mut child = repo
        .cmd()
        .args(["backup", "--path", src.to_str().unwrap(), "--name", "int"])
        .spawn()
        .unwrap();
    // Interrupt once the backup is under way (a pack directory appeared).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !repo
        .repo
        .join("packs")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        assert!(Instant::now() < deadline, "backup never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    // 192 MiB take far longer than the first 16 MiB pack, so the backup is still running.
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(
        repo.run_json(&["snapshots"])["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let check = repo.run_json(&["check"]);
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly_with_141() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    // The reading end is closed before volguard starts, so its first write fails (EPIPE:
    // Rust ignores SIGPIPE) whatever the timing.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = repo
        .cmd()
        .args(["--json", "snapshots"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "nothing on stderr, got: {stderr}");
}
