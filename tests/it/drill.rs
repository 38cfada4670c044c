//! `volguard drill`: restores the latest snapshots into a scratch directory and verifies
//! them; names the volume and files a corrupted pack breaks while the other volume passes;
//! catches live data changed behind its metadata's back; samples; logs every result.

use crate::common::*;
use std::path::{Path, PathBuf};

/// A repository whose drill log goes to its own temp dir (not /var/lib/volguard).
fn repo_with_state() -> (TestRepo, PathBuf) {
    let mut repo = TestRepo::new();
    let state = repo.path().join("state");
    repo.env
        .push(("VOLGUARD_STATE_DIR".into(), state.display().to_string()));
    repo.run_ok(&["init"]);
    (repo, state.join("drills.jsonl"))
}

/// `n` files of `size` pseudo-random bytes in a new directory `name` under the repo's dir.
fn make_dir(repo: &TestRepo, name: &str, n: usize, size: usize, seed: u64) -> PathBuf {
    let dir = repo.path().join(name);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..n {
        let sub = if i % 2 == 0 { "" } else { "sub/" };
        std::fs::write(
            dir.join(format!("{sub}f{i}")),
            pseudo_random(size, seed + i as u64),
        )
        .unwrap();
    }
    dir
}

fn backup(repo: &TestRepo, dir: &Path, name: &str) {
    repo.run_ok(&["backup", "--path", dir.to_str().unwrap(), "--name", name]);
}

fn drills(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["drills"]
        .as_array()
        .unwrap_or_else(|| panic!("no drills: {v}"))
        .clone()
}

#[test]
fn a_corrupted_pack_fails_the_drill_of_its_volume_and_names_its_files() {
    let (repo, log) = repo_with_state();
    let good = make_dir(&repo, "good", 6, 40_000, 1);
    backup(&repo, &good, "good");
    let packs_before = pack_files(&repo.repo);
    let bad = make_dir(&repo, "bad", 1, 3 << 20, 100);
    backup(&repo, &bad, "bad");

    // All well first: both volumes restore and verify, and live data is compared.
    let v = repo.run_json(&["drill"]);
    let d = drills(&v);
    assert_eq!(d.len(), 2, "{v}");
    for x in &d {
        assert_eq!(x["ok"], true, "{v}");
        assert_eq!(x["files_restored"], x["files_in_snapshot"], "{v}");
        assert_eq!(x["files_verified"], x["files_restored"], "{v}");
        assert_eq!(x["live_compared"], x["files_restored"], "{v}");
    }

    // Flip one byte in the middle of the data pack the second backup wrote: only the
    // `bad` volume's single file lives there.
    let new_packs: Vec<PathBuf> = pack_files(&repo.repo)
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .collect();
    let data_pack = new_packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the second backup wrote packs");
    let mut bytes = std::fs::read(data_pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(data_pack, bytes).unwrap();

    let out = repo.run(&["--json", "drill"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = drills(&v);
    let by = |name: &str| d.iter().find(|x| x["volume"] == name).unwrap().clone();
    assert_eq!(by("good")["ok"], true, "{v}");
    let b = by("bad");
    assert_eq!(b["ok"], false, "{v}");
    let errors = b["errors"].to_string();
    assert!(errors.contains("f0"), "the damaged file is not named: {v}");
    assert_eq!(b["files_restored"], 0, "{v}");

    // Every run was logged, one JSON line per volume.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l["seconds"].as_f64().is_some()));
}

#[test]
fn live_data_changed_behind_its_metadata_fails_the_drill() {
    let (repo, _) = repo_with_state();
    let dir = make_dir(&repo, "app", 4, 10_000, 7);
    backup(&repo, &dir, "app");
    // Same size, same mtime, different bytes: what an editor that restores timestamps,
    // or an attacker, leaves behind.
    let f = dir.join("f0");
    let meta = std::fs::metadata(&f).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let st = std::process::Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!(
            "@{}.{:09}",
            meta.modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            meta.modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ))
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    let out = repo.run(&["--json", "drill", "--volume", "app"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &drills(&v)[0];
    assert_eq!(d["errors"].as_array().unwrap().len(), 0, "{v}");
    let differs = d["live_differs"].as_array().unwrap();
    assert_eq!(differs.len(), 1, "{v}");
    assert!(differs[0].as_str().unwrap().contains("f0"), "{v}");
    // A normal edit (new mtime) is not flagged.
    std::fs::write(dir.join("f1"), b"edited").unwrap();
    std::fs::write(&f, pseudo_random(10_000, 7)).unwrap(); // back to the snapshot's bytes
    let v = repo.run_json(&["drill", "--volume", "app"]);
    assert_eq!(drills(&v)[0]["ok"], true, "{v}");
}

#[test]
fn a_sample_restores_part_of_the_files_and_bad_arguments_are_refused() {
    let (repo, _) = repo_with_state();
    let dir = make_dir(&repo, "many", 200, 100, 3);
    backup(&repo, &dir, "many");
    let v = repo.run_json(&["drill", "--sample", "25"]);
    let d = &drills(&v)[0];
    let n = d["files_restored"].as_u64().unwrap();
    // 25% of 200, binomial: 50 +- 6 (sd); outside 10..=120 is practically impossible.
    assert!((10..=120).contains(&n), "{v}");
    assert_eq!(d["files_verified"].as_u64(), Some(n), "{v}");
    assert_eq!(d["files_in_snapshot"], 200, "{v}");
    assert_eq!(d["ok"], true, "{v}");

    for bad in ["0", "150", "ten"] {
        let out = repo.run(&["drill", "--sample", bad]);
        assert_eq!(out.status.code(), Some(2), "--sample {bad}: {out:?}");
    }
    let out = repo.run(&["drill", "--volume", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot of \"nope\""));
}

/// Every pack file of a local repository.
fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(repo.join("packs")).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            for f in std::fs::read_dir(&sub).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out
}
