//! `layer-diff`, `backup --container` and `inventory --sizes` on the containerd snapshotter
//! layout (Docker Engine 29's default), which the test dockerd (Debian's 20.10, overlay2)
//! cannot produce itself. The layout is made as close to the real thing as this machine
//! allows:
//!   - the snapshots are made by a REAL containerd (the one a private dockerd starts, whose
//!     overlayfs snapshotter lives at `<root>/containerd/daemon/...overlayfs`, exactly where
//!     Docker 29's own containerd keeps it) with `ctr snapshots prepare/commit`: its own
//!     bbolt metadata.db, its own `snapshots/<id>/fs` directories;
//!   - the base snapshot holds the test image's files (`docker export`), and the container's
//!     changes are made through a real overlayfs mount of the container snapshot, so the
//!     kernel writes the whiteouts and opaque directories;
//!   - only the container record is written by hand: `containers/<id>/config.v2.json` with
//!     driver `overlayfs` and the container id as its snapshot key in namespace `moby`, as
//!     Docker 29 does (from its source, not observed here).
//!
//! The reference is `docker diff` of a real overlay2 container that made the same changes.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::dockerdiff::{canonical, parse};
use crate::common::private_dockerd::PrivateDockerd;
use crate::common::treecmp::compare_trees;
use crate::common::*;

/// The container's changes; `R` is its root (empty inside the container).
const SCRIPT: &str = "set -e; echo new > $R/added; mkdir -p $R/newdir/deep; echo n > $R/newdir/deep/f;\
     rm $R/bin/ls $R/bin/vi; rm -r $R/tmp; mkdir $R/tmp; echo t > $R/tmp/new; mkdir $R/data/sub;\
     echo s > $R/data/sub/f";

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctr(daemon: &PrivateDockerd, args: &[&str]) -> String {
    run_ok(
        Command::new("ctr")
            .arg("-a")
            .arg(daemon.containerd_socket())
            .args(["-n", "moby"])
            .args(args)
            .stdin(Stdio::null()),
    )
}

/// The `-o` options `ctr snapshots mounts` prints for snapshot `key`.
fn mount_options(daemon: &PrivateDockerd, key: &str, target: &Path) -> String {
    let line = ctr(
        daemon,
        &["snapshots", "mounts", target.to_str().unwrap(), key],
    );
    let opts = line
        .split(" -o ")
        .nth(1)
        .unwrap_or_else(|| panic!("no options in {line:?}"))
        .trim()
        .to_string();
    assert!(opts.contains("upperdir="), "{opts}");
    opts
}

fn volguard(repo: &TestRepo, root: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--docker-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    repo.run_ok(&all)
}

#[test]
fn layer_diff_backup_and_inventory_read_the_containerd_snapshotter_layout() {
    require_docker();
    // The reference: the same changes in an overlay2 container, as docker diff lists them.
    let mut clean = DockerCleanup::new();
    let reference = clean.container(unique("vg-snap-ref"));
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &reference,
        IMAGE,
        "sleep",
        "600",
    ]);
    docker(&["exec", &reference, "sh", "-c", &format!("R=; {SCRIPT}")]);
    let want = canonical(parse(&docker(&["diff", &reference])));
    assert!(want.contains(&"D /bin/ls".to_string()), "{want:?}");

    let daemon = PrivateDockerd::start();
    let root = daemon.root();
    let work = tempfile::tempdir().unwrap();

    // Base snapshot: the image's files, from a container export of the shared daemon.
    let fresh = clean.container(unique("vg-snap-img"));
    docker(&["create", "--name", &fresh, IMAGE, "true"]);
    ctr(&daemon, &["snapshots", "prepare", "base-active", ""]);
    // A snapshot without parent mounts as a bind: `mount -t bind <fs dir> <target> -o ...`.
    let line = ctr(
        &daemon,
        &[
            "snapshots",
            "mounts",
            work.path().to_str().unwrap(),
            "base-active",
        ],
    );
    let base_fs = line
        .split_whitespace()
        .nth(3)
        .filter(|p| p.ends_with("/fs"))
        .unwrap_or_else(|| panic!("no fs directory in {line:?}"))
        .to_string();
    let mut export = Command::new("docker")
        .args(["export", &fresh])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tar_in = export.stdout.take().unwrap();
    run_ok(
        Command::new("tar")
            .args(["-x", "-p", "--numeric-owner", "-C", &base_fs])
            .stdin(tar_in),
    );
    assert!(export.wait().unwrap().success(), "docker export failed");
    ctr(&daemon, &["snapshots", "commit", "base", "base-active"]);

    // The container's snapshot, keyed by its id, changed through a real overlay mount.
    let cid = hex::encode(rand::random::<[u8; 32]>());
    let name = unique("vg-snap-ctr");
    ctr(&daemon, &["snapshots", "prepare", &cid, "base"]);
    let merged = work.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let opts = mount_options(&daemon, &cid, &merged);
    run_ok(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged),
    );
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("R='{}'; {SCRIPT}", merged.display())),
    );
    run_ok(Command::new("umount").arg(&merged));
    let upper = opts
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(std::path::PathBuf::from)
        .unwrap();

    // The container record Docker 29 would write (only the fields volguard reads).
    let cdir = root.join("containers").join(&cid);
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("config.v2.json"),
        serde_json::json!({
            "ID": cid,
            "Name": format!("/{name}"),
            "Driver": "overlayfs",
            "Config": {"Image": IMAGE},
            "State": {"Running": false, "Pid": 0},
            "MountPoints": {},
        })
        .to_string(),
    )
    .unwrap();
    // Read from the files alone: containerd (and dockerd) stopped.
    daemon.stop();

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let got: Vec<String> = String::from_utf8(volguard(&repo, &root, &["layer-diff", &name]).stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        got, want,
        "volguard layer-diff on the snapshotter (left) vs docker diff on overlay2 (right)"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &volguard(&repo, &root, &["--json", "layer-diff", &cid[..12]]).stdout,
    )
    .unwrap();
    assert_eq!(v["storage"], "containerd_snapshotter", "{v:#}");
    assert_eq!(v["upper_dir"], upper.display().to_string().as_str());
    assert_eq!(v["lower_dirs"].as_array().unwrap().len(), 1, "{v:#}");

    // backup --container, restored to a directory: the upper directory as the kernel left it.
    let out = volguard(&repo, &root, &["--json", "backup", "--container", &name]);
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = format!("container:{name}");
    assert_eq!(b["snapshots"][0]["volume"], snap.as_str(), "{b:#}");
    let target = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        &snap,
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    let wh = std::fs::symlink_metadata(target.join("bin/ls")).unwrap();
    assert!(wh.file_type().is_char_device(), "bin/ls is a whiteout");
    assert_eq!(
        xattr::get(target.join("tmp"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    // Whiteouts the kernel shares as hard links come back as separate 0/0 devices (see
    // tests/it/layer_backup.rs); overlayfs reads them alike.
    let diffs: Vec<String> = compare_trees(&upper, &target)
        .into_iter()
        .filter(|d| !d.starts_with("hard-link groups differ"))
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");

    // inventory --sizes: the container, its layout and its writable layer's size.
    let inv: serde_json::Value =
        serde_json::from_slice(&volguard(&repo, &root, &["--json", "inventory", "--sizes"]).stdout)
            .unwrap();
    let c = inv["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cid.as_str())
        .unwrap_or_else(|| panic!("{inv:#}"));
    assert_eq!(c["driver"], "overlayfs");
    // added (4) + newdir/deep/f (2) + tmp/new (2) + data/sub/f (2) bytes of file content.
    assert_eq!(c["writable_layer_bytes"], 10, "{c:#}");
}
