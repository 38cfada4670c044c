//! Every metadata kind volguard promises survives backup and restore, to a directory and
//! through the tar export.

use crate::common::*;

#[test]
fn every_metadata_kind_round_trips_through_a_directory_restore() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    treecmp::build_fixture(&src);
    let out = repo.run_json(&[
        "backup",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "fixture",
    ]);
    assert_eq!(
        out["snapshots"][0]["errors"].as_array().unwrap().len(),
        0,
        "{out}"
    );

    let dst = repo.path().join("dst");
    let out = repo.run_json(&[
        "restore",
        "fixture",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
        // The fixture has device nodes; they are only created when asked for.
        "--devices",
    ]);
    assert_eq!(out["errors"].as_array().unwrap().len(), 0, "{out}");
    assert!(out["verified_files"].as_u64().unwrap() > 0);
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "restore differs from source: {diffs:#?}");
}

/// The walk keeps the descriptors of the files it creates for the workers only while the
/// budget (at least half of RLIMIT_NOFILE) has room; past it, workers open files by path.
/// With 64 descriptors and 400 files of several blobs each, most files take that way, and every
/// mode must still come out as it went in (files are created with their permission bits
/// plus the owner's read and write, and fixed when finished).
#[test]
fn a_restore_with_few_descriptors_opens_files_by_path_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    for d in 0..4 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100u64 {
            let path = dir.join(format!("f{f}"));
            // 1 to 300 KiB: from one blob to several.
            let len = 1024 * (1 + (f * 37 + d) % 300) as usize;
            std::fs::write(&path, pseudo_random(len, f * 10 + d)).unwrap();
            let mode = [0o644, 0o400, 0o000, 0o755, 0o640][f as usize % 5];
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "many"]);
    let dst = repo.path().join("dst");
    let mut c = repo.cmd();
    c.args([
        "--json",
        "restore",
        "many",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", describe(&c, &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified_files"], 400, "{v}");
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "restore differs from source: {diffs:#?}");
}

#[test]
fn tar_export_carries_names_links_devices_and_xattrs() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    treecmp::build_fixture(&src);
    repo.run_ok(&[
        "backup",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "fixture",
    ]);
    let tar = repo.path().join("out.tar");
    repo.run_ok(&["restore", "fixture", "--to-tar", tar.to_str().unwrap()]);
    // GNU tar, as an operator would use it, unpacks the stream with xattrs.
    let dst = repo.path().join("untar");
    std::fs::create_dir(&dst).unwrap();
    let st = std::process::Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    let diffs: Vec<String> = treecmp::compare_trees(&src, &dst)
        .into_iter()
        // The tar export writes holes as zeros (no GNU sparse entries), so only the
        // sparseness check is waived; content, times and xattrs of the file still count.
        .filter(|d| !d.contains("lost its holes"))
        .collect();
    assert!(diffs.is_empty(), "tar round trip differs: {diffs:#?}");

    // `export` writes the same stream to stdout.
    let out = repo.run_ok(&["export", "fixture"]);
    assert_eq!(
        out.stdout.len() as u64,
        std::fs::metadata(&tar).unwrap().len()
    );
}

#[test]
fn include_exclude_and_dry_run_select_entries() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("c")).unwrap();
    std::fs::write(src.join("a/b/keep.txt"), "k").unwrap();
    std::fs::write(src.join("a/b/skip.log"), "s").unwrap();
    std::fs::write(src.join("c/other.txt"), "o").unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "sel"]);
    let dst = repo.path().join("dst");
    let out = repo.run_json(&[
        "restore",
        "sel",
        "--target",
        dst.to_str().unwrap(),
        "--include",
        "a/**",
        "--exclude",
        "*.log",
        "--dry-run",
    ]);
    assert_eq!(out["planned"], serde_json::json!(["a/b/keep.txt"]), "{out}");
    assert!(!dst.exists(), "dry run created the target");
    repo.run_ok(&[
        "restore",
        "sel",
        "--target",
        dst.to_str().unwrap(),
        "--include",
        "a/**",
        "--exclude",
        "*.log",
    ]);
    assert_eq!(
        std::fs::read_to_string(dst.join("a/b/keep.txt")).unwrap(),
        "k"
    );
    assert!(!dst.join("a/b/skip.log").exists());
    assert!(!dst.join("c").exists());
    // Naming a directory restores everything below it.
    let dst2 = repo.path().join("dst2");
    repo.run_ok(&[
        "restore",
        "sel",
        "--target",
        dst2.to_str().unwrap(),
        "--include",
        "a",
    ]);
    assert!(dst2.join("a/b/keep.txt").exists() && dst2.join("a/b/skip.log").exists());
    assert!(!dst2.join("c").exists());
}
