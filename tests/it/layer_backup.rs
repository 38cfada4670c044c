//! `backup --container NAME` on a real dockerd: a running container that wrote files,
//! deleted one of its image (a whiteout: character device 0/0) and replaced a directory of
//! its image (an opaque directory: xattr `trusted.overlay.opaque=y`) is backed up as
//! `container:<name>`, and restored to a directory and to a tar, both of which must hold
//! the overlay upper directory exactly as dockerd left it. `--all-writable-layers` is tested
//! on a private data root in tests/it/daemon_stopped.rs, where no other test's containers come
//! and go.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::common::treecmp::compare_trees;
use crate::common::*;

fn upper_dir(ctr: &str) -> PathBuf {
    PathBuf::from(docker(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        ctr,
    ]))
}

fn volguard(repo: &TestRepo, args: &[&str]) -> std::process::Output {
    let root = docker_root();
    let mut all = vec!["--docker-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    repo.run_ok(&all)
}

/// compare_trees, less one difference that does not matter to overlayfs: since Linux 5.8 the
/// kernel makes whiteouts hard links of one shared 0/0 device, and a restore recreates
/// hard links of regular files only, so whiteouts come back as separate 0/0 devices. Regular
/// files' hard links must still be kept.
fn layer_differences(upper: &Path, restored: &Path) -> Vec<String> {
    compare_trees(upper, restored)
        .into_iter()
        .filter(|d| !d.starts_with("hard-link groups differ"))
        .chain(
            (!same_inode(&restored.join("added/dir/f"), &restored.join("added/hard")))
                .then(|| "added/hard is no longer a hard link of added/dir/f".to_string()),
        )
        .collect()
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn assert_whiteout_and_opaque(dir: &Path) {
    let wh = std::fs::symlink_metadata(dir.join("bin/ls")).unwrap();
    assert!(wh.file_type().is_char_device(), "bin/ls: {wh:?}");
    assert_eq!(wh.rdev(), 0, "a whiteout is device 0/0");
    assert_eq!(
        xattr::get(dir.join("tmp"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec()),
        "tmp must stay an opaque directory"
    );
    assert_eq!(std::fs::read(dir.join("tmp/new")).unwrap(), b"t\n");
    assert_eq!(std::fs::read(dir.join("added/dir/f")).unwrap(), b"hello\n");
}

#[test]
fn container_writable_layer_restores_to_dir_and_tar_with_whiteouts_and_opaque_dirs() {
    require_docker();
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let mut clean = DockerCleanup::new();
    let ctr = clean.container(unique("vg-lb"));
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        IMAGE,
        "sleep",
        "600",
    ]);
    docker(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "set -e; mkdir -p /added/dir; echo hello > /added/dir/f; chmod 4750 /added/dir/f;\
         chown 12:34 /added/dir; ln -s dir/f /added/link; ln /added/dir/f /added/hard;\
         rm /bin/ls; rm -r /tmp; mkdir /tmp; echo t > /tmp/new; mkfifo /added/fifo",
    ]);
    let upper = upper_dir(&ctr);
    assert!(upper.is_dir(), "{}", upper.display());
    // The scenario has what it is about, on disk.
    assert_whiteout_and_opaque(&upper);

    let out = volguard(&repo, &["--json", "backup", "--container", &ctr]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap_name = format!("container:{ctr}");
    assert_eq!(v["snapshots"][0]["volume"], snap_name.as_str(), "{v:#}");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(v["failed"].as_array().unwrap().is_empty(), "{v:#}");

    // The snapshot says where it came from.
    let snaps = repo.run_json(&["snapshots", "--volume", &snap_name]);
    let text = snaps.to_string();
    assert!(text.contains(&upper.display().to_string()), "{snaps:#}");

    // Restore to a directory: the upper directory, entry for entry.
    let target = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        &snap_name,
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    assert_whiteout_and_opaque(&target);
    let diffs = layer_differences(&upper, &target);
    assert!(diffs.is_empty(), "restored layer differs: {diffs:#?}");

    // Restore to a tar: the whiteout is a character device 0/0, the opaque dir carries its
    // xattr; GNU tar unpacks it to the same tree.
    let tar_path = repo.path().join("layer.tar");
    repo.run_ok(&[
        "restore",
        &snap_name,
        "--to-tar",
        tar_path.to_str().unwrap(),
    ]);
    let mut ar = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    let (mut saw_whiteout, mut saw_opaque) = (false, false);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        if path.ends_with("bin/ls") {
            assert_eq!(e.header().entry_type(), tar::EntryType::Char);
            assert_eq!(e.header().device_major().unwrap(), Some(0));
            assert_eq!(e.header().device_minor().unwrap(), Some(0));
            saw_whiteout = true;
        }
        if path.trim_start_matches("./") == "tmp" {
            let mut found = false;
            if let Some(exts) = e.pax_extensions().unwrap() {
                for x in exts {
                    let x = x.unwrap();
                    if x.key().unwrap() == "SCHILY.xattr.trusted.overlay.opaque" {
                        assert_eq!(x.value_bytes(), b"y");
                        found = true;
                    }
                }
            }
            assert!(found, "tmp/ in the tar has no opaque xattr");
            saw_opaque = true;
        }
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
    }
    assert!(
        saw_whiteout && saw_opaque,
        "tar lacks the whiteout or the opaque dir"
    );
    let untarred = repo.path().join("untarred");
    std::fs::create_dir(&untarred).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&untarred)
        .status()
        .unwrap();
    assert!(st.success(), "GNU tar could not unpack the layer");
    let diffs = layer_differences(&upper, &untarred);
    assert!(
        diffs.is_empty(),
        "layer unpacked from the tar differs: {diffs:#?}"
    );

    // A second backup is incremental and sees the new changes (and a new deletion).
    docker(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "echo again > /added/second; rm /bin/vi",
    ]);
    let out = volguard(&repo, &["--json", "backup", "--container", &ctr]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["snapshots"][0]["parent"].is_null(), "{v:#}");
    let again = repo.path().join("again");
    repo.run_ok(&["restore", &snap_name, "--target", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(again.join("added/second")).unwrap(),
        b"again\n"
    );
    assert!(
        std::fs::symlink_metadata(again.join("bin/vi"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let diffs = layer_differences(&upper_dir(&ctr), &again);
    assert!(diffs.is_empty(), "second restore differs: {diffs:#?}");
}

#[test]
fn backup_container_refuses_unknown_names_and_volume_flags_still_work() {
    require_docker();
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let out = repo.run(&[
        "--docker-root",
        root.to_str().unwrap(),
        "backup",
        "--container",
        "vg-no-such-container-anywhere",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no container named"), "{err}");
    // --container and --path do not mix.
    let out = repo.run(&[
        "backup",
        "--container",
        "x",
        "--path",
        "/tmp",
        "--name",
        "n",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
