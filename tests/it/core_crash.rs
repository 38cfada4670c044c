//! SIGKILL in the middle of a backup leaves a repository that passes `check`, and the next
//! backup succeeds and reuses what already landed.

use crate::common::*;
use std::time::{Duration, Instant};

fn write_random(path: &std::path::Path, len: usize, seed: u64) {
    std::fs::write(path, pseudo_random(len, seed)).unwrap();
}

fn pack_bytes(repo: &std::path::Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for d in std::fs::read_dir(repo.join("packs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            n += 1;
            bytes += f.metadata().unwrap().len();
        }
    }
    (n, bytes)
}

#[test]
fn sigkill_mid_backup_leaves_a_checkable_repository_and_the_next_backup_reuses_landed_packs() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    const FILES: usize = 12;
    const FILE_BYTES: usize = 24 << 20;
    for i in 0..FILES {
        write_random(&src.join(format!("f{i:02}.bin")), FILE_BYTES, i as u64 + 1);
    }
    let p = src.to_str().unwrap();
    let mut child = repo
        .cmd()
        .args(["backup", "--path", p, "--name", "crash"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if pack_bytes(&repo.repo).0 >= 3 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed; make the data set larger"
        );
        assert!(Instant::now() < deadline, "no packs landed within 60s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (packs, landed) = pack_bytes(&repo.repo);
    assert!(packs >= 3);

    // No snapshot was written, and what is there is consistent.
    let snaps = repo.run_json(&["snapshots"]);
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0);
    let check = repo.run_json(&["check", "--read-data"]);
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");

    let out = repo.run_json(&["backup", "--path", p, "--name", "crash"]);
    let added = out["snapshots"][0]["bytes_added"].as_u64().unwrap();
    let total = (FILES * FILE_BYTES) as u64;
    // Random data does not compress: a backup from scratch adds about `total`.
    assert!(
        added + landed * 9 / 10 <= total + (1 << 20),
        "after {landed} bytes of packs had landed, the next backup still added {added} of {total}"
    );
    let check = repo.run_json(&["check", "--read-data"]);
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let dst = repo.path().join("dst");
    repo.run_ok(&[
        "restore",
        "crash",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    for i in 0..FILES {
        let name = format!("f{i:02}.bin");
        assert!(
            std::fs::read(src.join(&name)).unwrap() == std::fs::read(dst.join(&name)).unwrap(),
            "{name} differs"
        );
    }
}
