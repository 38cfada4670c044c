//! `volumes/metadata.db` read in a loop while a real dockerd creates and removes volumes and
//! restarts (issue 3): every read must give a set of volumes that existed at some moment
//! (never a torn or partial tree), and dockerd must never wait for the reader: its volume
//! calls stay quick, it restarts (taking its exclusive flock on the file again) while the
//! reader keeps reading, and the reader never holds a lock on the file.
//!
//! The check is linearizability against the writer's own log: the writer runs one volume
//! call at a time and counts calls started and finished; each answer must equal the volume
//! set after exactly j calls, for some j between the calls finished before the read began and
//! the calls started before it ended. A torn read would show a set no prefix of the log has.
//!
//! It runs on a private dockerd (tests/it/common/private_dockerd.rs) because it restarts it.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::private_dockerd::PrivateDockerd;
use crate::common::*;
use volguard::docker::volumes::{self, Origin};

/// Volumes that exist for the whole loop; enough, with their labels, for a multi-page tree.
const STABLE_VOLUMES: usize = 40;
/// Volume calls (create or remove) made while the reader reads.
const CHURN_CALLS: usize = 120;
/// The daemon is restarted after every this many calls.
const RESTART_EVERY: usize = 30;
/// Loose bound on one `docker volume create/rm`: a dockerd waiting on a lock the reader
/// held would not answer at all. Not a performance goal (those live in benches/).
const CALL_BOUND: Duration = Duration::from_secs(10);
/// Pause between reads, so the reader does not take a whole core of this shared machine.
const READ_PAUSE: Duration = Duration::from_millis(2);

/// The label every volume carries: a record with it intact was not read torn.
const PAD_LABEL: &str = "vg.pad";

fn pad_value(name: &str) -> String {
    format!("{name}-{}", "p".repeat(96))
}

/// One answer of the reader, with the window of writer calls it overlapped.
struct Answer {
    names: BTreeSet<String>,
    finished_before: usize,
    started_after: usize,
}

/// The volume names in metadata.db, as volguard's reader gives them; every record must be
/// complete (its own name, the label it was created with).
fn read_once(root: &Path) -> Result<BTreeSet<String>, String> {
    let (records, warnings) = volumes::read_volumes(root);
    if !warnings.is_empty() {
        return Err(format!("warnings: {warnings:?}"));
    }
    let mut names = BTreeSet::new();
    for r in records {
        // Directory-only records are volumes whose directory exists before (or after) their
        // record: the filesystem's state, not the database's.
        if r.origin != Origin::MetadataDb {
            continue;
        }
        if r.labels.get(PAD_LABEL) != Some(&pad_value(&r.name)) || r.driver != "local" {
            return Err(format!("incomplete record for {}: {r:?}", r.name));
        }
        names.insert(r.name);
    }
    Ok(names)
}

/// Locks held on `file` as /proc/locks lists them: (pid, line).
fn locks_on(file: &Path) -> Vec<(i32, String)> {
    let md = std::fs::metadata(file).unwrap();
    let (maj, min) = (libc::major(md.dev()), libc::minor(md.dev()));
    let want = format!("{maj:02x}:{min:02x}:{}", md.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().any(|f| f == want))
        .map(|l| {
            let pid = l
                .split_whitespace()
                .nth(4)
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1);
            (pid, l.to_string())
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create(usize),
    Remove(usize),
}

fn churn_name(i: usize) -> String {
    format!("churn-{i:04}")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[test]
fn metadata_db_reads_stay_consistent_while_dockerd_writes_and_restarts() {
    require_docker();
    let daemon = PrivateDockerd::start();
    let root = daemon.root();
    let db = root.join("volumes/metadata.db");

    let stable: Vec<String> = (0..STABLE_VOLUMES)
        .map(|i| format!("stable-{i:03}"))
        .collect();
    let create = |name: &str| {
        let label = format!("{PAD_LABEL}={}", pad_value(name));
        daemon.docker(&["volume", "create", "--label", &label, name]);
    };
    // Baseline latency of a volume call, without the reader.
    let mut baseline = Vec::new();
    for name in &stable {
        let t = Instant::now();
        create(name);
        baseline.push(t.elapsed());
    }
    let stable_set: BTreeSet<String> = stable.iter().cloned().collect();
    assert_eq!(read_once(&root).unwrap(), stable_set, "before the loop");

    // The writer's plan: create churn volumes, removing the one created three calls earlier
    // every other call, so the set both grows and shrinks (page splits and merges).
    let mut ops = Vec::new();
    let mut next = 0;
    while ops.len() < CHURN_CALLS {
        ops.push(Op::Create(next));
        next += 1;
        if next >= 3 && ops.len() % 2 == 0 {
            ops.push(Op::Remove(next - 3));
        }
    }
    ops.truncate(CHURN_CALLS);
    // states[j] = the volume set after j calls.
    let mut states = vec![stable_set.clone()];
    for op in &ops {
        let mut s = states.last().unwrap().clone();
        match *op {
            Op::Create(i) => assert!(s.insert(churn_name(i))),
            Op::Remove(i) => assert!(s.remove(&churn_name(i))),
        }
        states.push(s);
    }

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (started, finished, stop, root) = (
            started.clone(),
            finished.clone(),
            stop.clone(),
            root.clone(),
        );
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let finished_before = finished.load(Ordering::SeqCst);
                let got = read_once(&root);
                let started_after = started.load(Ordering::SeqCst);
                match got {
                    Ok(names) => answers.push(Answer {
                        names,
                        finished_before,
                        started_after,
                    }),
                    Err(e) => errors.push(e),
                }
                std::thread::sleep(READ_PAUSE);
            }
            (answers, errors)
        })
    };

    let mut latencies = Vec::new();
    let mut restarts = Vec::new();
    let mut lock_checks = 0;
    for (j, op) in ops.iter().enumerate() {
        if j > 0 && j % RESTART_EVERY == 0 {
            // dockerd takes its flock on metadata.db at start with a 1 s timeout: a reader
            // holding any lock on the file would make this restart fail.
            let t = Instant::now();
            daemon.stop();
            daemon.launch();
            restarts.push(t.elapsed());
        }
        started.store(j + 1, Ordering::SeqCst);
        let t = Instant::now();
        match *op {
            Op::Create(i) => create(&churn_name(i)),
            Op::Remove(i) => {
                daemon.docker(&["volume", "rm", &churn_name(i)]);
            }
        }
        let took = t.elapsed();
        finished.store(j + 1, Ordering::SeqCst);
        assert!(
            took < CALL_BOUND,
            "call {j} ({op:?}) took {took:?}: dockerd was held up"
        );
        latencies.push(took);
        if j % 10 == 0 {
            // Only dockerd may hold a lock on the file, never this process (the reader).
            let locks = locks_on(&db);
            let me = std::process::id() as i32;
            assert!(
                locks.iter().all(|(pid, _)| *pid != me),
                "the reader holds a lock on {}: {locks:?}",
                db.display()
            );
            assert!(
                !locks.is_empty(),
                "dockerd holds no lock on {} (is this the file it uses?)",
                db.display()
            );
            lock_checks += 1;
        }
    }
    // Let the reader see the final state a few times.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (answers, errors) = reader.join().unwrap();

    assert!(
        errors.is_empty(),
        "{} failed reads: {errors:?}",
        errors.len()
    );
    assert!(
        answers.len() >= CHURN_CALLS,
        "only {} reads during {CHURN_CALLS} calls",
        answers.len()
    );
    let mut distinct = BTreeSet::new();
    for (n, a) in answers.iter().enumerate() {
        let window = a.finished_before..=a.started_after;
        let at = window.clone().find(|&j| states[j] == a.names);
        let Some(j) = at else {
            let extra: Vec<_> = a.names.difference(&states[a.finished_before]).collect();
            let missing: Vec<_> = states[a.finished_before].difference(&a.names).collect();
            panic!(
                "read {n} matches no state between calls {window:?}: {} volumes, extra vs the \
                 first of them {extra:?}, missing {missing:?}",
                a.names.len()
            );
        };
        assert!(a.names.is_superset(&stable_set));
        distinct.insert(j);
    }
    // The reader must have seen the set change, or the check above proves little.
    assert!(
        distinct.len() >= CHURN_CALLS / 4,
        "the reads saw only {} distinct states of {CHURN_CALLS}",
        distinct.len()
    );
    assert_eq!(read_once(&root).unwrap(), states[CHURN_CALLS]);

    // dockerd's own view agrees with the last state.
    let ls: BTreeSet<String> = daemon
        .docker(&["volume", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ls, states[CHURN_CALLS]);

    let slowest = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "metadata.db read loop: {} consistent reads ({} distinct states) over {CHURN_CALLS} volume \
         calls and {} restarts; call latency median {:?} (baseline without reader {:?}), \
         slowest {slowest:?}; restarts took {restarts:?}; {lock_checks} lock checks",
        answers.len(),
        distinct.len(),
        restarts.len(),
        median(latencies),
        median(baseline),
    );
}
