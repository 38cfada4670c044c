//! `volguard diff` and `volguard verify` on a real Docker volume: ordinary changes (write,
//! add, remove, chmod, chown, xattr) are listed with their BLAKE3 and leave `verify` at exit
//! 0; a file whose content was changed and whose mtime was put back with `touch -d` makes
//! `verify` exit 1 naming it.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "sh -c {script:?} failed");
}

fn b3(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

fn find<'a>(list: &'a Value, path: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|e| e["path"] == path)
}

fn changes_of(v: &Value, path: &str) -> Vec<String> {
    let m = find(&v["modified"], path).unwrap_or_else(|| panic!("{path} not modified: {v:#}"));
    m["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn diff_lists_changes_and_verify_names_tampering() {
    require_docker();
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-vdiff"));
    docker(&["volume", "create", &vol]);
    sh_in_volume(
        &vol,
        "set -e; mkdir /data/d; echo appended > /data/a; echo original > /data/t; echo gone > /data/c;\
         echo x > /data/d/x; echo m > /data/m; echo o > /data/o; echo keep > /data/k",
    );
    let data = volume_data_dir(&vol);
    let root = docker_root();
    let root = root.to_str().unwrap();
    repo.run_ok(&["--docker-root", root, "backup", &vol]);

    // Nothing changed yet: verify passes, diff is empty.
    repo.run_ok(&["--docker-root", root, "verify", &vol]);
    let v = repo.run_json(&["--docker-root", root, "diff", &vol]);
    assert_eq!(
        (
            v["added"].as_array().unwrap().len(),
            v["removed"].as_array().unwrap().len(),
            v["modified"].as_array().unwrap().len()
        ),
        (0, 0, 0),
        "{v:#}"
    );

    let d = data.display();
    // Ordinary changes: each moves the metadata that explains it.
    sh(&format!(
        "set -e; cd {d}; echo more >> a; rm c; echo new > new; chmod 600 m; chown 123:456 o;\
         setfattr -n user.vg -v 1 d/x"
    ));
    // Tampering: same size, content changed, mtime put back to the snapshot's.
    sh(&format!(
        "set -e; cd {d}; old=\"$(stat -c %y t)\"; printf 'ORIGINAL\\n' > t; touch -d \"$old\" t"
    ));

    let v = repo.run_json(&["--docker-root", root, "diff", &vol, "latest", "live"]);
    let added = find(&v["added"], "new").unwrap_or_else(|| panic!("new not added: {v:#}"));
    assert_eq!(added["blake3"], b3(&data.join("new")).as_str());
    assert_eq!(added["type"], "file");
    assert!(find(&v["removed"], "c").is_some(), "{v:#}");
    assert_eq!(changes_of(&v, "a"), ["content", "mtime"]);
    assert_eq!(
        find(&v["modified"], "a").unwrap()["to"]["blake3"],
        b3(&data.join("a")).as_str()
    );
    assert_eq!(changes_of(&v, "t"), ["content"]);
    assert_eq!(changes_of(&v, "m"), ["mode"]);
    assert_eq!(find(&v["modified"], "m").unwrap()["to"]["mode"], "0600");
    assert_eq!(changes_of(&v, "o"), ["owner"]);
    assert_eq!(changes_of(&v, "d/x"), ["xattrs"]);
    assert!(find(&v["modified"], "k").is_none(), "{v:#}");
    assert!(
        find(&v["modified"], "d").is_none(),
        "a directory's mtime alone is no change: {v:#}"
    );

    let out = repo.run(&["--docker-root", root, "verify", &vol]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "verify must fail: {stdout}");
    let tampered: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("TAMPERED "))
        .collect();
    assert_eq!(tampered.len(), 1, "{stdout}");
    assert!(tampered[0].starts_with("TAMPERED t: "), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("M  a  content")),
        "{stdout}"
    );
    let j = repo
        .cmd()
        .args(["--json", "--docker-root", root, "verify", &vol])
        .output()
        .unwrap();
    assert_eq!(j.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(j["tampered"].as_array().unwrap().len(), 1, "{j:#}");
    assert_eq!(j["tampered"][0]["path"], "t");
    assert_eq!(
        j["tampered"][0]["live_blake3"],
        b3(&data.join("t")).as_str()
    );

    // A new snapshot takes the current state as the reference: verify passes again, and
    // a normal write afterwards is listed, not flagged.
    repo.run_ok(&["--docker-root", root, "backup", &vol]);
    repo.run_ok(&["--docker-root", root, "verify", &vol]);
    sh(&format!("set -e; cd {d}; sleep 0.01; echo again >> t"));
    let out = repo.run_ok(&["--docker-root", root, "verify", &vol]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("M  t  content")),
        "{stdout}"
    );

    // Snapshot against snapshot, by id prefix: the first backup against the second.
    let snaps = repo.run_json(&["snapshots", "--volume", &vol]);
    let ids: Vec<String> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{snaps:#}");
    let v = repo.run_json(&["diff", &vol, &ids[0][..10], &ids[1][..10]]);
    assert_eq!(changes_of(&v, "t"), ["content"]);
    assert!(find(&v["added"], "new").is_some());
    assert_eq!(v["from"]["snapshot"], ids[0].as_str());
}
