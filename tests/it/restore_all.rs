//! Disaster recovery: a host's Docker data root is lost, and `restore --all` brings every
//! volume back from the repository alone, with its name, labels, driver options and files;
//! containers started on the restored volumes read what they read before.
//!
//! Runs on a private dockerd ([`PrivateDockerd`]) whose data root the test replaces with
//! an empty one, as a new machine would have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::private_dockerd::PrivateDockerd;
use crate::common::treecmp::compare_trees;
use crate::common::*;
use serde_json::Value;

/// The host name the "old machine" backs up as.
const OLD_HOST: &str = "old-host";

/// Lists, from inside a container, every entry of the volume mounted at /d with its type,
/// mode, owner, size and mtime, and every file's MD5: what an application would see.
const LIST_VOLUME: &str = "cd /d && find . | sort | xargs stat -c '%n %F %a %u %g %s %Y' && \
     find . -type f | sort | xargs -r md5sum";

fn volguard(repo: &TestRepo, daemon: &PrivateDockerd, args: &[&str]) -> Output {
    let mut c = repo.cmd();
    c.env("DOCKER_HOST", daemon.socket())
        .env("VOLGUARD_HOST", OLD_HOST)
        .arg("--docker-root")
        .arg(daemon.root())
        .args(args);
    c.output().unwrap()
}

fn volguard_json(repo: &TestRepo, daemon: &PrivateDockerd, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = volguard(repo, daemon, &all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "volguard {args:?}: stdout is not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Name, driver, labels and options as `docker volume inspect` shows them.
fn definition(daemon: &PrivateDockerd, name: &str) -> (String, BTreeMap<String, String>, Value) {
    let v: Value = serde_json::from_str(&daemon.docker(&[
        "volume",
        "inspect",
        "--format",
        "{{json .}}",
        name,
    ]))
    .unwrap();
    let labels = v["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let options = match &v["Options"] {
        Value::Null => Value::Object(Default::default()),
        o => o.clone(),
    };
    (v["Driver"].as_str().unwrap().to_string(), labels, options)
}

/// Runs `script` with sh in a throwaway container that mounts `volume` at /d.
fn in_volume(daemon: &PrivateDockerd, volume: &str, script: &str) -> String {
    daemon.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{volume}:/d"),
        IMAGE,
        "sh",
        "-c",
        script,
    ])
}

fn seen_by_container(daemon: &PrivateDockerd, volume: &str) -> String {
    in_volume(daemon, volume, LIST_VOLUME)
}

fn fill(daemon: &PrivateDockerd, volume: &str, script: &str) {
    in_volume(daemon, volume, &format!("set -e; cd /d; {script}"));
}

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

struct Vol {
    name: &'static str,
    /// Where its files live on the host.
    data: PathBuf,
    definition: (String, BTreeMap<String, String>, Value),
    seen: String,
    reference: PathBuf,
}

#[test]
fn restore_all_recreates_every_volume_of_a_lost_host() {
    require_docker();
    let daemon = PrivateDockerd::start();
    daemon.load_test_image();
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let bind_src = repo.path().join("bind-src");
    std::fs::create_dir(&bind_src).unwrap();

    daemon.docker(&[
        "volume",
        "create",
        "--label",
        "app=db",
        "--label",
        "tier=data",
        "labelled",
    ]);
    daemon.docker(&[
        "volume",
        "create",
        "--label",
        "kind=bind",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        &format!("device={}", bind_src.display()),
        "bound",
    ]);
    daemon.docker(&["volume", "create", "plain"]);
    fill(
        &daemon,
        "labelled",
        "mkdir -p base/sub; head -c 300000 /dev/urandom > base/sub/big; echo hi > base/small; \
         chmod 600 base/small; chown 999:999 base/small; ln -s base/small link; ln base/small hard; \
         touch -d '2020-02-02 02:02:02' base/small",
    );
    fill(
        &daemon,
        "bound",
        "echo bound-data > f; mkdir -p d/e; head -c 70000 /dev/urandom > d/e/g",
    );
    fill(&daemon, "plain", "echo v1 > version; echo keep > other");

    // The first backup of everything, then a change to `plain` and a second one: --at
    // must be able to go back to the first.
    let first_time = "2024-03-01T00:00:00Z";
    let (code, v) = volguard_json(&repo, &daemon, &["backup", "--all", "--time", first_time]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3, "{v:#}");
    let plain_v1 = repo.path().join("plain-v1");
    copy_tree(&daemon.root().join("volumes/plain/_data"), &plain_v1);
    fill(
        &daemon,
        "plain",
        "echo v2 > version; rm other; echo new > added",
    );

    let refs = repo.path().join("refs");
    std::fs::create_dir(&refs).unwrap();
    let mut vols: Vec<Vol> = ["labelled", "bound", "plain"]
        .into_iter()
        .map(|name| {
            let data = if name == "bound" {
                bind_src.clone()
            } else {
                daemon.root().join("volumes").join(name).join("_data")
            };
            let reference = refs.join(name);
            copy_tree(&data, &reference);
            Vol {
                name,
                data,
                definition: definition(&daemon, name),
                seen: seen_by_container(&daemon, name),
                reference,
            }
        })
        .collect();
    assert!(vols[1].seen.contains("./d/e/g"), "{}", vols[1].seen);
    assert_eq!(vols[1].definition.2["o"], "bind");
    let (code, v) = volguard_json(&repo, &daemon, &["backup", "--all"]);
    assert_eq!(code, 0, "{v:#}");
    // A backup of the bind volume while no container mounts it reads the bound directory.
    let bound = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume"] == "bound")
        .unwrap()
        .clone();
    assert_eq!(bound["files_unmodified"], 2, "{bound:#}");

    // The host dies: a new machine, an empty data root, an empty bind source.
    daemon.stop();
    let old_root = repo.path().join("old-root");
    std::fs::rename(daemon.root(), &old_root).unwrap();
    std::fs::remove_dir_all(&bind_src).unwrap();
    daemon.launch();
    daemon.load_test_image();
    assert_eq!(daemon.docker(&["volume", "ls", "-q"]), "");

    let (code, v) = volguard_json(&repo, &daemon, &["restore", "--all", "--host", OLD_HOST]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["restored"], 3, "{v:#}");
    for o in v["volumes"].as_array().unwrap() {
        assert_eq!(o["created"], "dockerd", "{o:#}");
        assert!(
            o["report"]["verified_files"].as_u64().unwrap() >= 1,
            "{o:#}"
        );
    }
    for vol in &mut vols {
        assert_eq!(
            definition(&daemon, vol.name),
            vol.definition,
            "definition of {}",
            vol.name
        );
        let diffs = compare_trees(&vol.reference, &vol.data);
        assert!(diffs.is_empty(), "{}: {diffs:#?}", vol.name);
        assert_eq!(
            seen_by_container(&daemon, vol.name),
            vol.seen,
            "{}",
            vol.name
        );
    }

    // Run again: every volume now exists and holds data, and is left alone.
    let (code, v) = volguard_json(&repo, &daemon, &["restore", "--all", "--host", OLD_HOST]);
    assert_eq!(code, 1, "{v:#}");
    for o in v["volumes"].as_array().unwrap() {
        let e = o["error"].as_str().unwrap_or_default();
        assert!(e.contains("exists and holds data"), "{o:#}");
    }
    for vol in &vols {
        assert!(compare_trees(&vol.reference, &vol.data).is_empty());
    }

    // Again a new machine, and dockerd not running while restoring: the volumes are made
    // as directories, dockerd finds them when it starts, --at picks the first backup.
    daemon.stop();
    std::fs::remove_dir_all(daemon.root()).unwrap();
    std::fs::remove_dir_all(&bind_src).unwrap();
    let (code, v) = volguard_json(
        &repo,
        &daemon,
        &[
            "restore",
            "--all",
            "--host",
            OLD_HOST,
            "--at",
            "2024-03-01T00:00:00Z",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    for o in v["volumes"].as_array().unwrap() {
        assert_eq!(o["created"], "directory", "{o:#}");
        assert!(
            o["snapshot_time"]
                .as_str()
                .unwrap()
                .starts_with("2024-03-01T00:00:00")
        );
    }
    let labelled = v["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["volume"] == "labelled")
        .unwrap();
    assert!(
        labelled["notes"]
            .to_string()
            .contains("labels not restored (app=db, tier=data)"),
        "{labelled:#}"
    );
    daemon.launch();
    daemon.load_test_image();
    let listed = daemon.docker(&["volume", "ls", "-q"]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(listed, ["bound", "labelled", "plain"]);
    let diffs = compare_trees(&plain_v1, &daemon.root().join("volumes/plain/_data"));
    assert!(diffs.is_empty(), "plain at --at: {diffs:#?}");
    // The bind volume's options came back through opts.json: a container sees its files.
    assert_eq!(seen_by_container(&daemon, "bound"), vols[1].seen);
    assert_eq!(seen_by_container(&daemon, "labelled"), vols[0].seen);
}

#[test]
fn restore_all_without_snapshots_of_the_host_names_the_hosts_there_are() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let mut c = repo.cmd();
    c.env("VOLGUARD_HOST", "web1").args([
        "backup",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "www",
    ]);
    assert!(c.status().unwrap().success());
    let out = repo.run(&["restore", "--all", "--host", "db9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no snapshot of a Docker volume from host \"db9\"")
            && err.contains("hosts with snapshots: web1"),
        "{err}"
    );
    // A --path backup is not a volume: restore --all passes over it, saying so.
    let out = repo.run(&["restore", "--all", "--host", "web1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from host \"web1\""), "{err}");
    // --host and --at need --all.
    assert_eq!(
        repo.run(&["restore", "www", "--host", "x", "--target", "/tmp/x"])
            .status
            .code(),
        Some(2)
    );
}
