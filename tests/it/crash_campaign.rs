//! Crash campaign: volguard is SIGKILLed at random points of backup, forget + prune and
//! restore, over and over, on one repository whose source keeps changing. After every
//! kill: `check` passes, the interrupted operation run again succeeds, and a snapshot
//! completed earlier restores byte for byte; at the end every surviving snapshot does.
//! Prints the campaign's table (the README carries it). CI size: 100 iterations;
//! `VOLGUARD_CRASH_ITERATIONS=1000` for a longer campaign.

use crate::common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Relative path -> (size, BLAKE3) of every regular file under `root`.
type Manifest = BTreeMap<String, (u64, [u8; 32])>;

fn manifest(root: &Path) -> Manifest {
    let mut m = Manifest::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                m.insert(rel, (bytes.len() as u64, *blake3::hash(&bytes).as_bytes()));
            }
        }
    }
    m
}

/// A small xorshift so each run's choices differ but can be replayed from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Backup,
    Prune,
    Restore,
}

#[derive(Default, Debug)]
struct Tally {
    iterations: u64,
    killed_mid_run: u64,
    finished_before_kill: u64,
    per_op_killed: BTreeMap<&'static str, u64>,
    snapshots_verified: u64,
    data_lost: u64,
    wrong_bytes: u64,
    failures: Vec<String>,
}

/// Changes the source a little: rewrites 64 KiB somewhere in one big file, replaces one
/// small file.
fn mutate(src: &Path, rng: &mut Rng, step: u64) {
    let big = src.join(format!("big-{}", rng.below(3)));
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    let at = rng.below(((6 << 20) - (64 << 10)) as u64);
    f.write_all_at(&pseudo_random(64 << 10, 1000 + step), at)
        .unwrap();
    let small = src.join("small").join(format!("s{}", rng.below(40)));
    std::fs::write(small, pseudo_random(200 + rng.below(4000) as usize, step)).unwrap();
}

fn spawn(repo: &TestRepo, args: &[&str]) -> Child {
    let mut c = repo.cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("spawn volguard")
}

/// Lets `child` run for `after`, then SIGKILLs it; true if it was still running.
fn kill_after(mut child: Child, after: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// Restores `id` and compares it with the manifest taken when it was made; failures are
/// counted and described, so the table shows them all.
fn verify(repo: &TestRepo, id: &str, want: &Manifest, tally: &mut Tally) {
    let dst = repo.path().join(unique("v"));
    let out = repo.run(&[
        "restore",
        "data",
        "--snapshot",
        id,
        "--target",
        dst.to_str().unwrap(),
    ]);
    tally.snapshots_verified += 1;
    if !out.status.success() {
        tally.data_lost += 1;
        tally
            .failures
            .push(format!("snapshot {id} does not restore: {out:?}"));
    } else if &manifest(&dst) != want {
        tally.wrong_bytes += 1;
        tally.failures.push(format!(
            "snapshot {id} restored other bytes than were backed up"
        ));
    }
    let _ = std::fs::remove_dir_all(&dst);
}

fn snapshot_ids(repo: &TestRepo) -> Vec<String> {
    repo.run_json(&["snapshots"])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup_id(out: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn sigkill_at_random_points_of_backup_prune_and_restore_loses_nothing() {
    let iterations: u64 = std::env::var("VOLGUARD_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let seed = std::env::var("VOLGUARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    eprintln!("crash campaign: {iterations} iterations, seed {seed} (VOLGUARD_CRASH_SEED)");
    let mut rng = Rng(seed);
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("big-{i}")), pseudo_random(6 << 20, i)).unwrap();
    }
    for i in 0..40 {
        std::fs::write(
            src.join("small").join(format!("s{i}")),
            pseudo_random(1000, 100 + i),
        )
        .unwrap();
    }
    let src_arg = src.to_str().unwrap().to_string();
    let backup_args = ["--json", "backup", "--path", &src_arg, "--name", "data"];
    // Snapshots known complete, with what they must restore to.
    let mut expected: BTreeMap<String, Manifest> = BTreeMap::new();
    let first = backup_id(&repo.run_ok(&backup_args));
    expected.insert(first.clone(), manifest(&src));
    // Completed snapshots, oldest first (each backup's time is later than the one before).
    let mut order = vec![first];

    // How long each operation took when last run to the end (start: a guess).
    let mut typical = [Duration::from_millis(300); 3];
    let mut tally = Tally::default();
    let started = Instant::now();
    for step in 0..iterations {
        tally.iterations += 1;
        let op = match rng.below(4) {
            0 | 1 => Op::Backup,
            2 => Op::Prune,
            _ => Op::Restore,
        };
        if op == Op::Backup {
            mutate(&src, &mut rng, step);
        }
        let now = manifest(&src);
        let restore_dst = repo.path().join(unique("r"));
        let restore_id = expected
            .keys()
            .nth(rng.below(expected.len() as u64) as usize)
            .cloned()
            .unwrap();
        let args: Vec<String> = match op {
            Op::Backup => backup_args.iter().map(|s| s.to_string()).collect(),
            Op::Prune => ["forget", "--keep-last", "3", "--prune", "--grace", "0s"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Op::Restore => vec![
                "restore".into(),
                "data".into(),
                "--snapshot".into(),
                restore_id.clone(),
                "--target".into(),
                restore_dst.display().to_string(),
            ],
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        // Kill anywhere within the time this operation took when it last ran to the end
        // (process start included), so most runs die mid-way.
        let span = typical[op as usize].as_millis().max(1) as u64;
        let delay = Duration::from_millis(rng.below(span));
        let killed = kill_after(spawn(&repo, &argv), delay);
        if killed {
            tally.killed_mid_run += 1;
            *tally
                .per_op_killed
                .entry(match op {
                    Op::Backup => "backup",
                    Op::Prune => "forget --prune",
                    Op::Restore => "restore",
                })
                .or_default() += 1;
        } else {
            tally.finished_before_kill += 1;
        }
        // The repository is consistent after the kill.
        repo.run_ok(&["check"]);
        // A snapshot the killed run managed to write must be complete: it is verified like
        // the others below.
        let present = snapshot_ids(&repo);
        // The interrupted operation, run again, succeeds.
        let _ = std::fs::remove_dir_all(&restore_dst);
        let rerun = Instant::now();
        match op {
            Op::Backup => {
                // A snapshot the killed run managed to write holds the same source.
                let landed: Vec<String> = present
                    .iter()
                    .filter(|id| !expected.contains_key(*id))
                    .cloned()
                    .collect();
                for id in landed {
                    expected.insert(id.clone(), now.clone());
                    order.push(id);
                }
                let out = repo.run_ok(&backup_args);
                let id = backup_id(&out);
                expected.insert(id.clone(), now.clone());
                order.push(id);
            }
            Op::Prune => {
                repo.run_ok(&argv);
            }
            Op::Restore => {
                let want = expected[&restore_id].clone();
                verify(&repo, &restore_id, &want, &mut tally);
            }
        }
        typical[op as usize] = rerun.elapsed();
        // forget --keep-last 3 removes older snapshots only: the 3 newest always stay, and
        // nothing appears that was not completed.
        let present = snapshot_ids(&repo);
        for id in &present {
            assert!(
                expected.contains_key(id),
                "snapshot {id} was never completed"
            );
        }
        for id in order.iter().rev().take(3) {
            if !present.contains(id) {
                tally.data_lost += 1;
                tally
                    .failures
                    .push(format!("step {step}: kept snapshot {id} vanished"));
            }
        }
        expected.retain(|id, _| present.contains(id));
        order.retain(|id| present.contains(id));
        // One surviving snapshot, chosen at random, restores byte for byte.
        let pick = expected
            .keys()
            .nth(rng.below(expected.len() as u64) as usize)
            .cloned()
            .unwrap();
        let want = expected[&pick].clone();
        verify(&repo, &pick, &want, &mut tally);
        if step % 25 == 24 {
            repo.run_ok(&["check", "--read-data"]);
        }
    }
    for (id, want) in expected.clone() {
        verify(&repo, &id, &want, &mut tally);
    }
    repo.run_ok(&["check", "--read-data"]);
    eprintln!(
        "\n| iterations | killed mid-run | (backup / forget --prune / restore) | finished before the kill | snapshots verified | data lost | wrong bytes restored | seconds |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} / {} / {} | {} | {} | {} | {} | {:.0} |\n",
        tally.iterations,
        tally.killed_mid_run,
        tally.per_op_killed.get("backup").unwrap_or(&0),
        tally.per_op_killed.get("forget --prune").unwrap_or(&0),
        tally.per_op_killed.get("restore").unwrap_or(&0),
        tally.finished_before_kill,
        tally.snapshots_verified,
        tally.data_lost,
        tally.wrong_bytes,
        started.elapsed().as_secs_f64()
    );
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    assert_eq!((tally.data_lost, tally.wrong_bytes), (0, 0));
    // The campaign must actually interrupt things, not only watch them finish.
    assert!(
        tally.killed_mid_run >= iterations / 2,
        "only {} of {iterations} runs were killed mid-run: the delays are too long",
        tally.killed_mid_run
    );
}
