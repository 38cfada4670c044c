//! `backup` excludes against a real dockerd: flags, an exclude file, the volume's
//! `.volguardignore`, `volguard.exclude` labels on the volume and on a container that mounts
//! it, a size limit and CACHEDIR.TAG; bad patterns are named and do not stop other volumes;
//! `--dry-run` writes nothing; `volguard.backup=false` leaves a volume out of `--all`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;

/// Every path below `root`, relative, directories included.
fn paths_below(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Creates (never starts) container `name` with `label`, mounting `volume` at /data: a
/// container that mounts a volume speaks for it whether it runs or not.
fn labelled_container(name: &str, label: &str, volume: &str) {
    docker(&[
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--label",
        label,
        "-v",
        &format!("{volume}:/data"),
        IMAGE,
        "true",
    ]);
}

const DATA: &str = r#"
set -e
cd /data
mkdir -p keep cache/sub scratch logs deep/logs
echo a > keep/a.txt
echo t > keep/b.tmp
printf 'only named like a tag' > keep/CACHEDIR.TAG
echo s > scratch/s.txt
printf 'Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n' > cache/CACHEDIR.TAG
echo c > cache/sub/c
echo l > logs/app.log
echo d > deep/logs/keep.log
dd if=/dev/zero of=big.bin bs=1024 count=2048 2>/dev/null
echo i > ignored.bak
echo f > fromfile.x
printf '# from the volume itself\n*.bak\n' > .volguardignore
"#;

#[test]
fn excludes_of_every_kind_leave_exactly_the_expected_paths_out() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-excl"));
    docker(&[
        "volume",
        "create",
        "--label",
        "volguard.exclude=*.tmp",
        &vol,
    ]);
    sh_in_volume(&vol, DATA);
    let ctr = clean.container(unique("vg-excl-c"));
    labelled_container(&ctr, "volguard.exclude=scratch", &vol);

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let list = repo.path().join("excludes.txt");
    std::fs::write(&list, "# one more\nfromfile.x\n\n").unwrap();
    let root = docker_root();
    let out = repo.run_json(&[
        "--docker-root",
        root.to_str().unwrap(),
        "backup",
        &vol,
        "--exclude",
        "/logs",
        "--exclude-file",
        list.to_str().unwrap(),
        "--exclude-larger-than",
        "1M",
        "--exclude-caches",
    ]);
    let snap = &out["snapshots"][0];
    assert_eq!(snap["errors"].as_array().unwrap().len(), 0, "{out}");
    // b.tmp, scratch/, logs/, cache/, big.bin, ignored.bak, fromfile.x.
    assert_eq!(snap["excluded"], 7, "{out}");

    let restored = repo.restore_to_new_dir(&vol, snap["snapshot_id"].as_str().unwrap());
    let expected: BTreeSet<String> = [
        ".volguardignore",
        "keep",
        "keep/a.txt",
        "keep/CACHEDIR.TAG",
        "deep",
        "deep/logs",
        "deep/logs/keep.log",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths_below(&restored), expected);
}

#[test]
fn bad_patterns_are_named_and_never_stop_other_volumes() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let bad = clean.volume(unique("vg-badlabel"));
    let good = clean.volume(unique("vg-goodlabel"));
    docker(&[
        "volume",
        "create",
        "--label",
        "volguard.exclude=*.tmp,x[",
        &bad,
    ]);
    docker(&["volume", "create", &good]);
    sh_in_volume(&bad, "echo k > /data/k.txt; echo t > /data/t.tmp");
    sh_in_volume(&good, "echo g > /data/g.txt");

    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();

    // A bad glob of the run itself: usage error before anything is read or written.
    let out = repo.run(&["--docker-root", root, "backup", &good, "--exclude", "a[b"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe(&repo.cmd(), &out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exclude \"a[b\" is not a valid glob"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(repo.repo.join("snapshots"))
            .unwrap()
            .count(),
        0
    );
    let missing = repo.path().join("no-such-list");
    let out = repo.run(&[
        "--docker-root",
        root,
        "backup",
        &good,
        "--exclude-file",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the exclude file") && err.contains("no-such-list"),
        "{err}"
    );

    // A bad glob in a label: that volume's soft error (exit 3); its other glob applies, and
    // the other volume backs up untouched.
    let out = repo.run(&["--docker-root", root, "--json", "backup", &bad, &good]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        describe(&repo.cmd(), &out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v}");
    let of = |name: &str| snaps.iter().find(|s| s["volume"] == name).unwrap();
    let errors = of(&bad)["errors"].to_string();
    assert!(
        errors.contains(&format!("volume {bad} label volguard.exclude")) && errors.contains("x["),
        "{errors}"
    );
    assert_eq!(of(&bad)["excluded"], 1, "{v}");
    assert_eq!(of(&good)["errors"].as_array().unwrap().len(), 0, "{v}");
    let restored = repo.restore_to_new_dir(&bad, of(&bad)["snapshot_id"].as_str().unwrap());
    assert_eq!(
        paths_below(&restored),
        BTreeSet::from(["k.txt".to_string()])
    );
}

/// Every file below `root` with its bytes: the repository, to compare before and after.
fn files_with_bytes(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn dry_run_reports_what_is_new_and_excluded_and_writes_nothing() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-dry"));
    docker(&["volume", "create", &vol]);
    sh_in_volume(
        &vol,
        "cd /data && echo same > same.txt && echo old > edit.txt && echo t > x.tmp",
    );
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    let dry = |repo: &TestRepo| {
        let before = files_with_bytes(&repo.repo);
        let out = repo.run_json(&[
            "--docker-root",
            root,
            "backup",
            &vol,
            "--dry-run",
            "--exclude",
            "*.tmp",
        ]);
        assert_eq!(
            files_with_bytes(&repo.repo),
            before,
            "a dry run changed the repository"
        );
        out["snapshots"][0].clone()
    };

    // Into an empty repository, everything is new.
    let first = dry(&repo);
    assert!(first["snapshot_id"].is_null(), "{first}");
    assert_eq!(first["files_new"], 2, "{first}");
    assert_eq!(first["excluded"], 1, "{first}");
    assert!(first["bytes_added"].as_u64().unwrap() >= 9, "{first}");

    repo.run_ok(&["--docker-root", root, "backup", &vol, "--exclude", "*.tmp"]);
    sh_in_volume(
        &vol,
        "cd /data && sleep 1 && echo newer > edit.txt && echo n > new.txt",
    );
    let second = dry(&repo);
    assert_eq!(second["files_new"], 1, "{second}");
    assert_eq!(second["files_changed"], 1, "{second}");
    assert_eq!(second["files_unmodified"], 1, "{second}");
    assert!(second["parent"].is_string(), "{second}");
    // Only one snapshot exists: the real backup's.
    let snaps = repo.run_json(&["snapshots"]);
    assert_eq!(
        snaps["snapshots"].as_array().map(Vec::len),
        Some(1),
        "{snaps}"
    );
}

#[test]
fn opted_out_volumes_are_left_out_of_all_and_bad_labels_are_named() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let by_volume = clean.volume(unique("vg-optout-v"));
    let by_container = clean.volume(unique("vg-optout-c"));
    let odd = clean.volume(unique("vg-oddlabels"));
    docker(&[
        "volume",
        "create",
        "--label",
        "volguard.backup=false",
        &by_volume,
    ]);
    docker(&["volume", "create", &by_container]);
    docker(&[
        "volume",
        "create",
        "--label",
        "volguard.backup=maybe",
        "--label",
        "volguard.exclud=x",
        &odd,
    ]);
    for v in [&by_volume, &by_container, &odd] {
        sh_in_volume(v, "echo x > /data/x");
    }
    let ctr = clean.container(unique("vg-optout-ctr"));
    labelled_container(&ctr, "volguard.backup=false", &by_container);
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();

    // Other tests create and remove volumes meanwhile, which may end as a soft error (3).
    let out = repo.run(&["--json", "--docker-root", root, "backup", "--all"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        describe(&repo.cmd(), &out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backed: Vec<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["volume"].as_str().unwrap())
        .collect();
    assert!(backed.contains(&odd.as_str()), "{v}");
    assert!(
        !backed.contains(&by_volume.as_str()) && !backed.contains(&by_container.as_str()),
        "{v}"
    );
    let opted = v["opted_out"].to_string();
    assert!(
        opted.contains(&format!(
            "{by_volume}: volguard.backup=false on volume {by_volume}"
        )),
        "{opted}"
    );
    assert!(
        opted.contains(&format!(
            "{by_container}: volguard.backup=false on container {ctr}"
        )),
        "{opted}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "volume {odd}: label volguard.backup=\"maybe\" is neither true nor false"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "volume {odd}: label volguard.exclud is not a volguard label"
        )),
        "{err}"
    );

    // Named explicitly, an opted-out volume is backed up: the operator asked for it.
    let out = repo.run_json(&["--docker-root", root, "backup", &by_volume]);
    assert_eq!(out["snapshots"][0]["volume"], by_volume.as_str(), "{out}");
}
