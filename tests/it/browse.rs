//! `ls`, `find`, `dump` and the `VOLUME:SNAPSHOT` spelling, on a real container's volume.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use crate::common::*;

/// `--json` output as one JSON value per line.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn exit_code(repo: &TestRepo, args: &[&str]) -> (i32, String) {
    let out = repo.run(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The snapshot ids `find --json` reports hits in.
fn find_hits(repo: &TestRepo, args: &[&str]) -> Vec<String> {
    let v = repo.run_json(&[&["find"], args].concat());
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["hits"].as_u64().unwrap_or(0) > 0)
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ls_find_and_dump_show_a_volume_snapshot_as_its_source() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-browse"));
    docker(&["volume", "create", &vol]);
    let data = volume_data_dir(&vol);
    treecmp::build_fixture(&data);
    sh_in_volume(&vol, "echo from-a-container > /data/container.txt");
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    repo.run_ok(&["--docker-root", root, "backup", &vol]);
    let first = repo.run_json(&["snapshots", "--volume", &vol]);
    let first_id = first["snapshots"][0]["id"].as_str().unwrap().to_string();

    // A second snapshot with one more file, dated in the past.
    std::fs::write(data.join("etc/later.conf"), b"added later\n").unwrap();
    let st = Command::new("touch")
        .args(["-d", "2020-01-01T00:00:00Z"])
        .arg(data.join("etc/later.conf"))
        .status()
        .unwrap();
    assert!(st.success());
    repo.run_ok(&["--docker-root", root, "backup", &vol]);

    // ls -R --json: every regular file of the source with its size, owner and mode.
    let out = repo.run_ok(&["--json", "ls", &format!("{vol}:latest"), "-R"]);
    let nodes: BTreeMap<String, serde_json::Value> = json_lines(&out)
        .into_iter()
        .filter(|v| v["struct_type"] == "node")
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    let mut files = 0;
    for entry in walkdir::WalkDir::new(&data).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(&data).unwrap();
        let key = format!("/{}", rel.display());
        let node = nodes
            .get(&key)
            .unwrap_or_else(|| panic!("ls lacks {key}: {:?}", nodes.keys()));
        let meta = entry.path().symlink_metadata().unwrap();
        assert_eq!(node["uid"].as_u64(), Some(meta.uid() as u64), "{key}");
        assert_eq!(node["gid"].as_u64(), Some(meta.gid() as u64), "{key}");
        if meta.file_type().is_file() {
            files += 1;
            assert_eq!(node["type"], "file", "{key}");
            assert_eq!(node["size"].as_u64(), Some(meta.len()), "{key}");
        }
    }
    assert!(files > 5, "the fixture has files");
    assert_eq!(
        nodes.len(),
        walkdir::WalkDir::new(&data)
            .min_depth(1)
            .into_iter()
            .count()
    );

    // find by glob: the later file is in one snapshot, app.conf in both.
    assert_eq!(find_hits(&repo, &["later.conf", "--volume", &vol]).len(), 1);
    assert_eq!(find_hits(&repo, &["*.conf", "--volume", &vol]).len(), 2);
    assert_eq!(
        find_hits(&repo, &["/etc/app.conf", "--volume", &vol]).len(),
        2
    );
    assert!(find_hits(&repo, &["no-such-name", "--volume", &vol]).is_empty());
    // find by content: both snapshots hold app.conf's exact bytes; changed bytes match none.
    let app = std::fs::read(data.join("etc/app.conf")).unwrap();
    let hex = blake3::hash(&app).to_hex().to_string();
    assert_eq!(find_hits(&repo, &["--blake3", &hex]).len(), 2);
    let other = blake3::hash(b"not in any snapshot").to_hex().to_string();
    assert!(find_hits(&repo, &["--blake3", &other]).is_empty());
    // find by time (the file's mtime): later.conf is older than 2021, not newer.
    assert_eq!(
        find_hits(&repo, &["later.conf", "--older", "2021-01-01"]).len(),
        1
    );
    assert!(find_hits(&repo, &["later.conf", "--newer", "2021-01-01"]).is_empty());
    assert!(find_hits(&repo, &["later.conf", "--snapshot", &first_id]).is_empty());
    assert_eq!(
        find_hits(&repo, &["app.conf", "--snapshot", &first_id]),
        vec![first_id.clone()]
    );

    // dump: a file's bytes, and a directory as tar.
    let out = repo.run_ok(&["dump", &vol, "/bin/large.bin"]);
    assert!(out.stdout == std::fs::read(data.join("bin/large.bin")).unwrap());
    let out = repo.run_ok(&["dump", &format!("{vol}:latest"), "/etc/later.conf"]);
    assert_eq!(out.stdout, b"added later\n");
    let untar = repo.path().join("untar");
    std::fs::create_dir_all(&untar).unwrap();
    let tar_bytes = repo.run_ok(&["dump", &vol, "/etc"]).stdout;
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&untar)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin.take().unwrap().write_all(&tar_bytes).unwrap();
    assert!(tar.wait().unwrap().success());
    assert_eq!(std::fs::read(untar.join("app.conf")).unwrap(), app);
    assert_eq!(
        std::fs::read(untar.join("later.conf")).unwrap(),
        b"added later\n"
    );

    // restore with the same spelling: latest and a time before the second snapshot.
    let dst = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        &format!("{vol}:latest"),
        "--target",
        dst.to_str().unwrap(),
        "--devices",
    ]);
    let diffs = treecmp::compare_trees(&data, &dst);
    assert!(diffs.is_empty(), "restore VOL:latest differs: {diffs:#?}");

    // Bad input: exit 2, naming what was not found.
    let (code, err) = exit_code(&repo, &["ls", &format!("{vol}:ffffffffffff")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ffffffffffff"), "{err}");
    let (code, err) = exit_code(&repo, &["ls", &vol, "/no/such/path"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/no/such/path"), "{err}");
    let (code, err) = exit_code(&repo, &["dump", &vol, "/no/such/file"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = exit_code(&repo, &["ls", &format!("{vol}:@2000-01-01")]);
    assert_eq!(code, 2, "no snapshot that old: {err}");
}

#[test]
fn an_ambiguous_snapshot_prefix_is_refused_with_the_candidates() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 17 snapshots: two of them must share a first hex digit.
    for i in 0..17 {
        std::fs::write(src.join("f"), format!("{i}")).unwrap();
        repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "app"]);
    }
    let out = repo.run_ok(&["--json", "ls", "app:latest", "/f"]);
    assert!(!json_lines(&out).is_empty());
    let listed = repo.run_json(&["snapshots"]);
    let ids: Vec<String> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 17);
    let mut by_first: BTreeMap<char, usize> = BTreeMap::new();
    for id in &ids {
        *by_first.entry(id.chars().next().unwrap()).or_default() += 1;
    }
    let (shared, _) = by_first.iter().find(|(_, n)| **n > 1).unwrap();
    let (code, err) = exit_code(&repo, &["ls", &format!("app:{shared}")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("have ids starting with \"{shared}\""))
            && err.contains("give more characters"),
        "{err}"
    );
}

#[test]
fn diff_and_restore_take_volume_colon_snapshot_by_prefix_and_by_time() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "first").unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "app"]);
    // The second snapshot's time is a later second than the first's, so @FIRST names it alone.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.join("f"), "second, longer").unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "app"]);
    let listed = repo.run_json(&["snapshots"]);
    let snaps = listed["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let (first, first_time) = (
        snaps[0]["id"].as_str().unwrap(),
        snaps[0]["time"].as_str().unwrap(),
    );

    let diff = repo.run_json(&["diff", &format!("app:{}", &first[..8]), "app:latest"]);
    let modified = diff["modified"].as_array().unwrap();
    assert_eq!(modified.len(), 1, "{diff}");
    assert_eq!(modified[0]["path"], "f", "{diff}");
    assert!(
        modified[0]["changes"]
            .as_array()
            .unwrap()
            .contains(&"content".into()),
        "{diff}"
    );

    let dst = repo.path().join("restored");
    repo.run_ok(&[
        "restore",
        &format!("app:@{first_time}"),
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "first");
}
