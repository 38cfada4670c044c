//! A restore puts every blob where it belongs: blobs shared between files and repeated
//! inside one, stored raw and compressed, dense and sparse files, written in batches of
//! neighbouring blobs; large files restored by a first pass and everything else by a
//! second (from the trees the first kept), with and without a filter.

use crate::common::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

/// Compressible, varied text (zstd shrinks it, so its blobs are stored compressed).
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("{i:08} INFO request served in {} ms\n", i % 97).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn dataset(src: &Path) {
    let a = pseudo_random(3 * MIB, 1);
    let log = text(4 * MIB, 7);
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/a.bin"), &a).unwrap();
    fs::write(src.join("data/copy-of-a.bin"), &a).unwrap();
    // The same blobs at two places of one file.
    let twice = [&a[..MIB], &a[..MIB], &a[..MIB / 2]].concat();
    fs::write(src.join("data/a-twice.bin"), &twice).unwrap();
    fs::write(src.join("data/app.log"), &log).unwrap();
    fs::write(src.join("data/app-copy.log"), &log).unwrap();
    // Holes with raw and compressed data between them.
    let mut sparse = fs::File::create(src.join("data/sparse.img")).unwrap();
    sparse.set_len(16 * MIB as u64).unwrap();
    sparse.seek(SeekFrom::Start(2 * MIB as u64)).unwrap();
    sparse.write_all(&a[..MIB]).unwrap();
    sparse.seek(SeekFrom::Start(9 * MIB as u64)).unwrap();
    sparse.write_all(&log[..MIB + 12345]).unwrap();
    drop(sparse);
    // Many small files first in name order, some alike, and a large file among them.
    fs::create_dir_all(src.join("aaa-small/nested")).unwrap();
    for i in 0..400u64 {
        let body = if i % 4 == 0 {
            b"the same small file\n".to_vec()
        } else {
            text(100 + (i as usize * 37) % 5000, i)
        };
        fs::write(src.join(format!("aaa-small/f{i:03}.txt")), body).unwrap();
    }
    fs::write(src.join("aaa-small/nested/big.bin"), &a[MIB..]).unwrap();
    fs::set_permissions(
        src.join("aaa-small/nested"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    // Empty directories share one tree: the second walk finds it taken by the first of them
    // and loads it again.
    for d in ["data/empty-a", "data/empty-b", "aaa-small/empty"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    // A large hard-linked file: all its names are restored in the same pass.
    fs::write(src.join("data/linked.bin"), &a[..2 * MIB]).unwrap();
    fs::hard_link(src.join("data/linked.bin"), src.join("aaa-small/link.bin")).unwrap();
}

/// A repository with one backup of `dataset`, and the source directory.
fn backed_up() -> (TestRepo, PathBuf) {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    dataset(&src);
    let p = src.to_str().unwrap();
    let out = repo.run_json(&["backup", "--path", p, "--name", "layout"]);
    let errors = out["snapshots"][0]["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "{out}");
    (repo, src)
}

/// Restores the backup into a new directory with `args`; requires no error.
fn restore(repo: &TestRepo, args: &[&str]) -> (PathBuf, serde_json::Value) {
    let dst = repo.path().join("dst");
    let target = dst.to_str().unwrap();
    let out = repo.run_json(&[&["restore", "layout", "--target", target], args].concat());
    assert_eq!(out["errors"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(out["discarded"].as_u64().unwrap_or(0), 0, "{out}");
    (dst, out)
}

#[test]
fn every_blob_lands_where_it_belongs_in_a_full_restore() {
    let (repo, src) = backed_up();
    let (dst, _) = restore(&repo, &["--verify"]);
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "restore differs from source: {diffs:#?}");
    // The holes stayed holes.
    let allocated = fs::metadata(dst.join("data/sparse.img")).unwrap().blocks() * 512;
    assert!(
        allocated < 4 * MIB as u64,
        "sparse file restored with {allocated} bytes allocated"
    );
}

#[test]
fn a_filtered_restore_takes_large_and_small_files_once() {
    let (repo, src) = backed_up();
    let only = ["--include", "aaa-small/**", "--include", "data/a-twice.bin"];
    let (dst, out) = restore(&repo, &only);
    // 400 small files, big.bin, link.bin, a-twice.bin.
    assert_eq!(out["files"], 403, "{out}");
    let diffs = treecmp::compare_trees(&src.join("aaa-small"), &dst.join("aaa-small"));
    assert!(diffs.is_empty(), "aaa-small differs: {diffs:#?}");
    assert_eq!(
        fs::read(dst.join("data/a-twice.bin")).unwrap(),
        fs::read(src.join("data/a-twice.bin")).unwrap()
    );
    let names: Vec<_> = fs::read_dir(dst.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a-twice.bin"], "only the included file of data/");
}
