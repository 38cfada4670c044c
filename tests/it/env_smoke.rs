//! Proves the test environment (docs/design.md, Test environment) that every Docker-backed
//! integration test relies on, and exercises the shared helpers in `common`:
//! a real dockerd answers, the offline busybox image runs with networking off,
//! and a named volume's data shows up on the host under
//! `<docker_root>/volumes/<name>/_data`, where volguard reads it.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

#[test]
fn container_write_into_named_volume_is_visible_under_docker_root() {
    require_docker();
    let mut cleanup = DockerCleanup::new();
    let vol = cleanup.volume(unique("vg-smoke-vol"));
    let ctr = cleanup.container(unique("vg-smoke-ctr"));

    docker(&["volume", "create", &vol]);
    let mount = format!("{vol}:/data");
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--name",
        &ctr,
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /data/sub && echo hello-volguard > /data/sub/hello.txt && cat /data/sub/hello.txt",
    ]);
    assert_eq!(out, "hello-volguard");

    let data = volume_data_dir(&vol);
    assert_eq!(data, docker_root().join("volumes").join(&vol).join("_data"));
    let file = data.join("sub").join("hello.txt");
    let content = fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{} not readable on the host: {e}", file.display()));
    assert_eq!(content, "hello-volguard\n");
}

#[test]
fn docker_status_reports_failure_without_panicking() {
    require_docker();
    let (code, _stdout, stderr) = docker_status(&["volume", "inspect", &unique("vg-absent")]);
    assert_ne!(code, 0);
    assert!(!stderr.is_empty());
}

#[test]
fn unique_names_are_distinct_and_docker_safe() {
    let a = unique("Vg Smoke/Name");
    let b = unique("Vg Smoke/Name");
    assert_ne!(a, b);
    for n in [&a, &b, &unique("-x")] {
        assert!(n.starts_with(|c: char| c.is_ascii_alphanumeric()), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)),
            "{n}"
        );
    }
}

#[test]
fn test_repo_has_private_hex_key_and_isolated_config() {
    let r = TestRepo::new();
    let key = fs::read_to_string(&r.key_file).expect("read key file");
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = fs::metadata(&r.key_file)
        .expect("stat key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!r.config.exists());
    assert!(r.repo.starts_with(r.path()));
    assert!(volguard_bin().is_file());

    // Global flags come before the subcommand (docs/design.md, Conventions).
    let mut c = r.cmd();
    c.arg("snapshots");
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("--config"));
    assert_eq!(args.last().map(String::as_str), Some("snapshots"));
    assert!(args.contains(&"--key-file".to_string()));
}
