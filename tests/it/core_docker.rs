//! Real containers: data written by a container into a named volume survives backup and
//! restore into a new volume, checked by a container reading it back.

use crate::common::*;

/// Writes a mixed data set inside a container, with a sha256 manifest made in the container.
const WRITE_DATA: &str = r#"
set -e
cd /data
mkdir -p app/logs app/empty 'dir with spaces'
for i in $(seq 1 200); do echo "line $i of the log $(date)" >> app/logs/app.log; done
dd if=/dev/urandom of=app/blob.bin bs=1024 count=3000 2>/dev/null
dd if=/dev/zero of=app/zeros.bin bs=1024 count=2000 2>/dev/null
for i in $(seq 1 50); do echo "config $i" > "dir with spaces/conf-$i.txt"; done
ln -s app/logs/app.log latest.log
ln app/blob.bin app/blob-hardlink.bin
chmod 4755 app/blob.bin
chown 1000:1000 app/logs
find . -type f ! -name 'MANIFEST*' -exec sha256sum {} + | sort > MANIFEST.tmp && mv MANIFEST.tmp MANIFEST
"#;

#[test]
fn container_data_round_trips_into_a_new_volume() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let src = clean.volume(unique("vg-src"));
    let dst = clean.volume(unique("vg-dst"));
    docker(&["volume", "create", &src]);
    sh_in_volume(&src, WRITE_DATA);

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    let out = repo.run_json(&["--docker-root", root, "backup", &src]);
    let snap = &out["snapshots"][0];
    assert_eq!(snap["volume"], src.as_str());
    assert!(snap["files_new"].as_u64().unwrap() >= 53, "{out}");
    assert_eq!(snap["errors"].as_array().unwrap().len(), 0, "{out}");

    // dst does not exist yet: volguard creates it through dockerd, then fills it.
    let out = repo.run_json(&[
        "--docker-root",
        root,
        "restore",
        &src,
        "--into-volume",
        &dst,
        "--verify",
    ]);
    assert_eq!(out["errors"].as_array().unwrap().len(), 0, "{out}");
    assert!(
        docker(&["volume", "ls", "-q"]).lines().any(|l| l == dst),
        "dockerd does not know {dst}"
    );

    let check = sh_in_volume(
        &dst,
        "cd /data && sha256sum -c MANIFEST >/dev/null && readlink latest.log && stat -c '%a %u:%g' app/blob.bin app/logs && stat -c %h app/blob.bin && ls -d app/empty",
    );
    let lines: Vec<&str> = check.lines().collect();
    assert_eq!(
        lines,
        [
            "app/logs/app.log",
            "4755 0:0",
            "755 1000:1000",
            "2",
            "app/empty"
        ],
        "{check}"
    );
    let diffs = treecmp::compare_trees(&volume_data_dir(&src), &volume_data_dir(&dst));
    assert!(diffs.is_empty(), "restored volume differs: {diffs:#?}");
}

#[test]
fn restore_into_a_volume_in_use_is_refused_and_leaves_it_untouched() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-busy"));
    let ctr = clean.container(unique("vg-busy-ctr"));
    docker(&["volume", "create", &vol]);
    sh_in_volume(&vol, "echo v1 > /data/f");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    repo.run_ok(&["--docker-root", root, "backup", &vol]);
    docker(&[
        "run",
        "-d",
        "--name",
        &ctr,
        "--network",
        "none",
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sh",
        "-c",
        "echo v2 > /data/f; sleep 300",
    ]);
    // Wait until the container wrote v2.
    let data = volume_data_dir(&vol).join("f");
    for _ in 0..100 {
        if std::fs::read_to_string(&data).unwrap_or_default() == "v2\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = repo.run(&[
        "--docker-root",
        root,
        "restore",
        &vol,
        "--into-volume",
        &vol,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mounted by running container") && err.contains(&ctr),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "v2\n");
    // With --force the swap happens: the volume holds the snapshot's content, whole.
    repo.run_ok(&[
        "--docker-root",
        root,
        "restore",
        &vol,
        "--into-volume",
        &vol,
        "--force",
    ]);
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "v1\n");
    let leftovers: Vec<_> = std::fs::read_dir(data.parent().unwrap().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["_data"], "staging directories left behind");
}

#[test]
fn backup_all_covers_every_volume_and_unknown_volume_is_named() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let a = clean.volume(unique("vg-all-a"));
    docker(&["volume", "create", &a]);
    sh_in_volume(&a, "echo a > /data/a");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    // Other tests create and remove volumes meanwhile: files vanishing under the walk are
    // soft errors (exit 3), which is what such a race deserves.
    let out = repo
        .cmd()
        .args(["--json", "--docker-root", root, "backup", "--all"])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vols: Vec<&str> = out["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["volume"].as_str().unwrap())
        .collect();
    assert!(vols.contains(&a.as_str()), "{out}");

    let out = repo.run(&["--docker-root", root, "backup", "no-such-volume-xyz"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Docker volume \"no-such-volume-xyz\"") && err.contains("docker volume ls"),
        "{err}"
    );
}
