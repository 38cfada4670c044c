//! With dockerd stopped, `inventory`, `backup` (of volumes and of writable layers) and
//! `layer-diff` still work from the files alone, and give the answers the running daemon
//! gave.
//!
//! The daemon stopped here is a private dockerd this test starts ([`PrivateDockerd`]), never
//! the shared test daemon.

use std::path::Path;

use crate::common::dockerdiff::{assert_docker_shape, canonical, parse};
use crate::common::private_dockerd::PrivateDockerd;
use crate::common::*;
use serde_json::Value;

fn run_code(repo: &TestRepo, root: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = repo.cmd();
    c.arg("--docker-root").arg(root).args(args);
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inventory_backup_and_layer_diff_work_with_dockerd_stopped() {
    require_docker();
    let daemon = PrivateDockerd::start();
    daemon.load_test_image();

    daemon.docker(&["volume", "create", "--label", "vg.test=stopped", "pv"]);
    daemon.docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "c1",
        "-v",
        "pv:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    daemon.docker(&[
        "exec",
        "c1",
        "sh",
        "-c",
        "set -e; echo payload > /data/f; mkdir /data/d; echo deep > /data/d/g;\
         echo x > /added; rm /bin/ls; rm -r /tmp; mkdir /tmp; echo t > /tmp/new",
    ]);
    let docker_diff = parse(&daemon.docker(&["diff", "c1"]));
    assert_docker_shape(&docker_diff);
    let want_diff = canonical(docker_diff);
    let ctr_id = daemon.docker(&["inspect", "--format", "{{.Id}}", "c1"]);
    let root = daemon.root();

    daemon.stop();
    assert!(!daemon.answers(), "the private daemon still answers");

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);

    // inventory: the volume, its label, the container and what it mounts.
    let (code, out, err) = run_code(&repo, &root, &["--json", "inventory"]);
    assert_eq!(code, 0, "inventory: {err}");
    let inv: Value = serde_json::from_str(&out).unwrap();
    let vols = inv["volumes"].as_array().unwrap();
    let pv = vols
        .iter()
        .find(|v| v["name"] == "pv")
        .unwrap_or_else(|| panic!("{inv:#}"));
    assert_eq!(pv["labels"]["vg.test"], "stopped");
    assert_eq!(pv["source"], "metadata_db");
    assert_eq!(pv["containers"][0]["name"], "c1");
    assert_eq!(pv["dangling"], false);
    let c1 = inv["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == ctr_id.as_str())
        .unwrap_or_else(|| panic!("{inv:#}"));
    assert_eq!(c1["name"], "c1");
    assert_eq!(c1["running"], false, "no process runs it any more");

    // backup, then restore what it stored.
    let (code, _, err) = run_code(&repo, &root, &["backup", "pv"]);
    assert_eq!(code, 0, "backup: {err}");
    let target = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        "pv",
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"payload\n");
    assert_eq!(std::fs::read(target.join("d/g")).unwrap(), b"deep\n");

    // The containers' writable layers, with the daemon stopped: c1's (the only one here).
    let (code, out, err) = run_code(&repo, &root, &["--json", "backup", "--all-writable-layers"]);
    assert_eq!(code, 0, "backup --all-writable-layers: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["volume"].as_str())
        .collect();
    assert_eq!(names, ["container:c1"], "{v:#}");
    let layer = repo.path().join("layer");
    repo.run_ok(&[
        "restore",
        "container:c1",
        "--target",
        layer.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(std::fs::read(layer.join("added")).unwrap(), b"x\n");
    assert_eq!(std::fs::read(layer.join("tmp/new")).unwrap(), b"t\n");
    let wh = std::fs::symlink_metadata(layer.join("bin/ls")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()),
        "bin/ls must be a whiteout"
    );
    assert_eq!(
        xattr::get(layer.join("tmp"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );

    // layer-diff: what docker diff said while the daemon ran.
    let (code, out, err) = run_code(&repo, &root, &["layer-diff", "c1"]);
    assert_eq!(code, 0, "layer-diff: {err}");
    let got: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(got, want_diff);

    // The daemon starts again on the same files and still agrees.
    daemon.launch();
    let again = canonical(parse(&daemon.docker(&["diff", "c1"])));
    assert_eq!(again, want_diff);
}
