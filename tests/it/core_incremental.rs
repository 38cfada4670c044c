//! Incremental backups: unchanged files are not read again and cost almost nothing; changed
//! files are found by size, mtime, ctime and inode.

use crate::common::*;
use std::io::Write;

fn write_random(path: &std::path::Path, len: usize, seed: u64) {
    std::fs::write(path, pseudo_random(len, seed)).unwrap();
}

fn dataset(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("text")).unwrap();
    write_random(&dir.join("db/pages.db"), 8 << 20, 1);
    write_random(&dir.join("media.bin"), 4 << 20, 2);
    for i in 0..500 {
        std::fs::write(
            dir.join(format!("text/{i}.txt")),
            format!("entry {i}\n").repeat(40),
        )
        .unwrap();
    }
}

#[test]
fn second_backup_without_changes_reads_nothing_and_adds_under_one_percent() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    dataset(&src);
    let p = src.to_str().unwrap();
    let first = &repo.run_json(&["backup", "--path", p, "--name", "inc"])["snapshots"][0].clone();
    let second = &repo.run_json(&["backup", "--path", p, "--name", "inc"])["snapshots"][0].clone();
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(second["files_new"], 0);
    assert_eq!(second["files_changed"], 0);
    assert_eq!(second["files_unmodified"], first["files_new"]);
    assert_eq!(second["parent"], first["snapshot_id"]);
    let (a, b) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    assert!(b * 100 <= a, "second backup added {b} bytes, first {a}");
}

#[test]
fn changed_files_are_detected_and_only_new_chunks_are_stored() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    dataset(&src);
    let p = src.to_str().unwrap();
    repo.run_json(&["backup", "--path", p, "--name", "inc"]);
    // Overwrite one 8 KiB page in the middle of the database file, in place.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("db/pages.db"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xAB; 8192], 4 << 20).unwrap();
    f.flush().unwrap();
    std::fs::write(src.join("text/7.txt"), "changed\n").unwrap();
    let out = repo.run_json(&["backup", "--path", p, "--name", "inc"]);
    let s = &out["snapshots"][0];
    assert_eq!(s["files_changed"], 2, "{s}");
    assert_eq!(s["files_new"], 0);
    // One changed page costs a chunk or two (64 KiB average), never the whole 8 MiB file.
    assert!(s["bytes_added"].as_u64().unwrap() < 1 << 20, "{s}");
    let dst = repo.path().join("dst");
    repo.run_ok(&[
        "restore",
        "inc",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}
