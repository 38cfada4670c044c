//! `prune` on real repositories: garbage is marked first and deleted only by a later run
//! after the grace period; kept snapshots restore byte for byte afterwards; a backup never
//! builds on marked packs; young packs (a backup may still be running) are left alone; and
//! prune running in a loop beside two hosts backing up into the same repository loses
//! nothing that a kept snapshot needs.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Removes a snapshot object directly, as a forget on another host would.
fn drop_snapshot(repo: &TestRepo, id: &str) {
    std::fs::remove_file(repo.repo.join("snapshots").join(id)).unwrap();
}

fn snapshot_id(backup: &serde_json::Value) -> String {
    backup["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn prune(repo: &TestRepo, grace: &str) -> serde_json::Value {
    repo.run_json(&["prune", "--grace", grace])
}

fn assert_check_clean(repo: &TestRepo) {
    let c = repo.run_json(&["check"]);
    assert_eq!(c["errors"].as_array().unwrap().len(), 0, "{c}");
}

fn restore_and_compare(repo: &TestRepo, volume: &str, snapshot: &str, expected: &Path) {
    let dst = repo.path().join(format!("restore-{snapshot}"));
    repo.run_ok(&[
        "restore",
        volume,
        "--snapshot",
        snapshot,
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    let out = Command::new("diff")
        .arg("-r")
        .arg(expected)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot {snapshot} differs: {out:?}");
    std::fs::remove_dir_all(&dst).unwrap();
}

#[test]
fn garbage_is_marked_first_and_deleted_after_the_grace_period() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep.bin"), pseudo_random(20 << 20, 1)).unwrap();
    std::fs::write(src.join("gone.bin"), pseudo_random(40 << 20, 2)).unwrap();
    let p = src.to_str().unwrap();
    let old = snapshot_id(&repo.run_json(&["backup", "--path", p, "--name", "v"]));
    std::fs::remove_file(src.join("gone.bin")).unwrap();
    std::fs::write(src.join("new.bin"), pseudo_random(1 << 20, 3)).unwrap();
    let new = snapshot_id(&repo.run_json(&["backup", "--path", p, "--name", "v"]));
    // forget --prune: the old snapshot goes; its packs are too young to be even marked.
    let f = repo.run_json(&["forget", "--keep-last", "1", "--prune", "--grace", "24h"]);
    assert_eq!(f["prune"]["packs_marked"], 0, "{f}");
    assert!(!repo.repo.join("snapshots").join(&old).exists());
    let size_before = dir_size(&repo.repo.join("packs"));

    // Dry run: says what it would mark, writes nothing.
    let r = repo.run_json(&["prune", "--grace", "0s", "--dry-run"]);
    assert!(r["packs_marked"].as_u64().unwrap() >= 2, "{r}");
    assert!(!repo.repo.join("marks").exists() || dir_size(&repo.repo.join("marks")) == 0);

    // First run marks; nothing is deleted yet and everything still restores.
    let r = prune(&repo, "0s");
    assert!(r["packs_marked"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["bytes_marked"].as_u64().unwrap() >= 40 << 20, "{r}");
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert!(dir_size(&repo.repo.join("packs")) >= size_before);
    assert_check_clean(&repo);
    restore_and_compare(&repo, "v", &new, &src);

    // The next run, past the (zero) grace period, deletes them.
    let r = prune(&repo, "0s");
    assert!(r["packs_deleted"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["packs_kept_alive"], 0, "{r}");
    assert_check_clean(&repo);
    let size_after = dir_size(&repo.repo.join("packs"));
    assert!(
        size_after < (23 << 20) && size_after > (21 << 20),
        "{size_after} bytes of packs left for 21 MiB of live data"
    );
    restore_and_compare(&repo, "v", &new, &src);
    repo.run_ok(&["check", "--read-data"]);
    // Nothing left to do.
    let r = prune(&repo, "0s");
    assert_eq!(r["packs_marked"], 0, "{r}");
    assert_eq!(r["packs_deleted"], 0, "{r}");
}

#[test]
fn a_backup_never_builds_on_marked_packs() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), pseudo_random(20 << 20, 9)).unwrap();
    let p = src.to_str().unwrap();
    let first = snapshot_id(&repo.run_json(&["backup", "--path", p, "--name", "v"]));
    drop_snapshot(&repo, &first);
    let r = prune(&repo, "0s");
    assert!(r["packs_marked"].as_u64().unwrap() >= 1, "{r}");

    // The same data again: its packs are marked, so the backup uploads it anew instead of
    // pointing its snapshot at packs that are about to go.
    let again = repo.run_json(&["backup", "--path", p, "--name", "v"]);
    let added = again["snapshots"][0]["bytes_added"].as_u64().unwrap();
    assert!(added >= 20 << 20, "reused marked data: {again}");
    let id = snapshot_id(&again);

    let r = prune(&repo, "0s");
    assert!(r["packs_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_check_clean(&repo);
    restore_and_compare(&repo, "v", &id, &src);
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The content host `h` backs up in round `i`: files that persist over a few rounds
/// (deduplicated), files that change every round (garbage once forgotten), and one file
/// both hosts share.
fn round_data(dir: &Path, h: u64, i: u64) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("shared"), pseudo_random(3 << 20, 1000 + i / 3)).unwrap();
    std::fs::write(
        dir.join("slow"),
        pseudo_random(2 << 20, 2000 + h * 100 + i / 2),
    )
    .unwrap();
    std::fs::write(dir.join("fast"), pseudo_random(1 << 20, 3000 + h * 100 + i)).unwrap();
    std::fs::write(dir.join("round"), format!("host {h} round {i}\n")).unwrap();
}

#[test]
fn prune_in_a_loop_beside_two_hosts_loses_nothing_kept() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let stop = AtomicBool::new(false);
    // Marks count whole seconds, so a backup that checks the marks just before a mark's
    // reuse deadline has `grace - grace / 2` seconds to make its snapshot visible: 3 s here,
    // which a loaded machine's fsyncs stay well inside.
    let grace_secs = 5;
    let grace = &format!("{grace_secs}s");
    let started = Instant::now();
    let run_for = Duration::from_secs(25);

    std::thread::scope(|s| {
        let hosts: Vec<_> = (0..2u64)
            .map(|h| {
                let repo = &repo;
                s.spawn(move || {
                    // Same repository and key, its own config naming its host.
                    let mut me = TestRepo::new();
                    me.repo = repo.repo.clone();
                    me.key_file = repo.key_file.clone();
                    me.config = me.path().join("config.toml");
                    std::fs::write(&me.config, format!("host = \"host{h}\"\n")).unwrap();
                    let src = repo.path().join(format!("src{h}"));
                    let mut kept = Vec::new();
                    let mut refused = 0;
                    let mut i = 0;
                    while started.elapsed() < run_for {
                        round_data(&src, h, i);
                        let mut c = me.cmd();
                        c.args([
                            "--json",
                            "backup",
                            "--path",
                            src.to_str().unwrap(),
                            "--name",
                            &format!("vol{h}"),
                        ]);
                        let out = c.output().unwrap();
                        if out.status.success() {
                            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                            kept.push((i, snapshot_id(&v)));
                        } else {
                            // The one failure prune may cause, and it writes no snapshot.
                            let err = String::from_utf8_lossy(&out.stderr);
                            assert!(err.contains("Run the backup again"), "{err}");
                            refused += 1;
                        }
                        // Forget all but the newest three snapshots of this host.
                        me.run_ok(&["forget", "--keep-last", "3", "--volume", &format!("vol{h}")]);
                        while kept.len() > 3 {
                            let (_, id) = kept.remove(0);
                            assert!(!me.repo.join("snapshots").join(&id).exists());
                        }
                        i += 1;
                    }
                    (kept, refused, i)
                })
            })
            .collect();
        let pruner = s.spawn(|| {
            let mut runs = 0;
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = prune(&repo, grace);
                deleted += r["packs_deleted"].as_u64().unwrap();
                runs += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            (runs, deleted)
        });
        // Stop the pruner whatever happened to the hosts, or a failed host hangs the test.
        let results: Vec<_> = hosts.into_iter().map(|h| h.join()).collect();
        stop.store(true, Ordering::Relaxed);
        let (runs, deleted) = pruner.join().unwrap();
        let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        eprintln!("prune ran {runs} times and deleted {deleted} packs; hosts: {results:?}");
        assert!(runs >= 5, "prune ran only {runs} times");
        assert!(
            deleted > 0,
            "the loop never deleted anything: it proves nothing"
        );

        // Everything kept restores byte for byte, after a final prune past the grace.
        std::thread::sleep(Duration::from_secs(grace_secs + 1));
        prune(&repo, grace);
        let r = prune(&repo, grace);
        assert_eq!(r["packs_kept_alive"], 0, "{r}");
        assert_check_clean(&repo);
        for (h, (kept, _, rounds)) in results.iter().enumerate() {
            assert!(*rounds >= 5, "host {h} ran only {rounds} rounds");
            assert!(!kept.is_empty(), "host {h} kept no snapshot");
            for (i, id) in kept {
                let expected = repo.path().join(format!("expected-{h}-{i}"));
                round_data(&expected, h as u64, *i);
                restore_and_compare(&repo, &format!("vol{h}"), id, &expected);
            }
        }
        repo.run_ok(&["check", "--read-data"]);
    });
}
