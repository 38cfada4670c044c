//! Corruption campaign (issue 8): bit flips, truncation and deletion of packs, index files,
//! tree packs and snapshot objects in a real local repository. After each fault `check`
//! must name exactly the damaged object, the affected snapshots and the affected files (and
//! never an unaffected snapshot); every unaffected file must still restore byte for byte;
//! `repair` must rebuild the index and mark exactly the broken snapshots.
//!
//! The expected names are worked out independently of `check`: the test opens the repository
//! through the library, finds where each blob lives, damages chosen bytes itself, and walks
//! the snapshot trees to see which paths hold a damaged blob. Run with `--nocapture` to see
//! the counts that the README's table is made from.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use volguard::backend::local::LocalBackend;
use volguard::ids::{BlobId, PackId, SnapshotId};
use volguard::repo::Repository;
use volguard::repo::format::crypto::Secret;
use volguard::repo::format::index::Index;
use volguard::repo::format::tree::NodeKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Pack,
    IndexFile,
    TreePack,
    SnapshotObject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    BitFlip,
    Truncate,
    Delete,
}

/// Files of two volumes: "vola" is backed up twice (the second run changes y.bin),
/// "volb" once. No directory or file content is shared between them, so no blob is.
fn sources(root: &Path) -> (PathBuf, PathBuf) {
    let a = root.join("src-a");
    let b = root.join("src-b");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::create_dir_all(b.join("deep")).unwrap();
    std::fs::write(a.join("x.bin"), pseudo_random(400_000, 1)).unwrap();
    std::fs::write(a.join("y.bin"), pseudo_random(200_000, 2)).unwrap();
    std::fs::write(a.join("sub/z.bin"), pseudo_random(300_000, 3)).unwrap();
    std::fs::write(a.join("sub/w.txt"), b"a small text file in a\n").unwrap();
    std::fs::write(a.join("empty"), b"").unwrap();
    std::fs::write(b.join("q.bin"), pseudo_random(350_000, 4)).unwrap();
    std::fs::write(b.join("deep/r.bin"), pseudo_random(100_000, 5)).unwrap();
    std::fs::write(b.join("notes.txt"), b"volume b keeps its own notes\n").unwrap();
    (a, b)
}

fn backup(t: &TestRepo, dir: &Path, name: &str) -> String {
    let v = t.run_json(&["backup", "--path", dir.to_str().unwrap(), "--name", name]);
    v["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn open_lib(t: &TestRepo) -> Repository {
    let backend = Arc::new(LocalBackend::new(&t.repo));
    let secret =
        Secret::KeyFile(volguard::secrets::read_secret_file(&t.key_file, "key file").unwrap());
    Repository::open(backend, &secret).unwrap()
}

/// One snapshot as the test knows it: files (path → chunks) and directories (path → tree).
#[derive(Default)]
struct Layout {
    root: Option<BlobId>,
    files: BTreeMap<String, Vec<BlobId>>,
    dirs: BTreeMap<String, BlobId>,
}

fn layout(repo: &Repository, index: &Index, sid: &str) -> Layout {
    let (all, _) = repo.list_snapshots().unwrap();
    let snap = &all
        .iter()
        .find(|(id, _)| id.to_hex() == sid)
        .expect("snapshot listed")
        .1;
    let mut l = Layout {
        root: snap.root.subtree,
        ..Layout::default()
    };
    let mut stack = vec![(String::new(), snap.root.subtree.unwrap())];
    while let Some((prefix, tree)) = stack.pop() {
        for n in repo.load_tree(index, &tree).unwrap().nodes {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
            match n.kind {
                NodeKind::Dir => {
                    let sub = n.subtree.unwrap();
                    l.dirs.insert(path.clone(), sub);
                    stack.push((path, sub));
                }
                NodeKind::File => {
                    l.files.insert(path, n.content);
                }
                _ => {}
            }
        }
    }
    l
}

/// The paths `check` should name for a snapshot when `bad` blobs are unreadable: the
/// topmost damaged directory, and every file outside it with a damaged chunk. Returns
/// (named paths, files lost).
fn expected_damage(l: &Layout, bad: &HashSet<BlobId>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut named = BTreeSet::new();
    let mut lost = BTreeSet::new();
    if l.root.is_some_and(|r| bad.contains(&r)) {
        named.insert("/".to_string());
        lost.extend(l.files.keys().cloned());
        return (named, lost);
    }
    let bad_dirs: Vec<&String> = l
        .dirs
        .iter()
        .filter(|(_, t)| bad.contains(t))
        .map(|(p, _)| p)
        .collect();
    let under = |p: &str, d: &str| p.starts_with(&format!("{d}/"));
    for d in &bad_dirs {
        if !bad_dirs.iter().any(|o| under(d, o)) {
            named.insert((*d).clone());
        }
    }
    for (p, chunks) in &l.files {
        if bad_dirs.iter().any(|d| under(p, d)) {
            lost.insert(p.clone());
        } else if chunks.iter().any(|c| bad.contains(c)) {
            named.insert(p.clone());
            lost.insert(p.clone());
        }
    }
    (named, lost)
}

fn pack_path(t: &TestRepo, p: &PackId) -> PathBuf {
    let h = p.to_hex();
    t.repo.join("packs").join(&h[..2]).join(h)
}

fn damage(path: &Path, fault: Fault, at: Option<usize>) {
    match fault {
        Fault::BitFlip => {
            let mut b = std::fs::read(path).unwrap();
            let i = at.unwrap_or(b.len() / 2);
            b[i] ^= 0x10;
            std::fs::write(path, b).unwrap();
        }
        Fault::Truncate => {
            let n = std::fs::metadata(path).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(n / 2).unwrap();
        }
        Fault::Delete => std::fs::remove_file(path).unwrap(),
    }
}

fn check_json(t: &TestRepo) -> (i32, Vec<String>, Vec<String>) {
    let out = t.run(&["--json", "check", "--read-data"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    (
        out.status.code().unwrap_or(-1),
        strs("errors"),
        strs("warnings"),
    )
}

/// Restores `sid` of `volume` and compares with `src`: returns (files equal, files lost
/// that were expected to survive, files present with wrong bytes) and the exit code.
fn restore_compare(
    t: &TestRepo,
    volume: &str,
    sid: &str,
    src: &BTreeMap<String, Vec<u8>>,
    expect_lost: &BTreeSet<String>,
) -> (usize, usize, usize, i32) {
    let dst = t.path().join(unique("restore"));
    let out = t.run(&[
        "restore",
        volume,
        "--snapshot",
        sid,
        "--target",
        dst.to_str().unwrap(),
    ]);
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut ok, mut lost, mut wrong) = (0, 0, 0);
    for (p, want) in src {
        match std::fs::read(dst.join(&p[1..])) {
            Ok(got) if &got == want => ok += 1,
            Ok(_) => {
                eprintln!("WRONG BYTES: {volume} {p}");
                wrong += 1
            }
            Err(_) if expect_lost.contains(p) => {
                // Named itself, or through the directory whose listing was lost.
                let reported = Path::new(&p[1..])
                    .ancestors()
                    .map(|a| match a.to_str().unwrap() {
                        "" => "error: /: subtree skipped".to_string(),
                        a => format!("error: {a}: "),
                    })
                    .any(|a| stderr.contains(&a));
                assert!(reported, "lost file {p} not reported: {stderr}");
            }
            Err(e) => {
                eprintln!("LOST: {volume} {p}: {e}: {stderr}");
                lost += 1
            }
        }
    }
    (ok, lost, wrong, code)
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(dir).unwrap().to_str().unwrap();
            out.insert(format!("/{rel}"), std::fs::read(e.path()).unwrap());
        }
    }
    out
}

#[derive(Default, Debug)]
struct Counts {
    damaged: usize,
    named_correctly: usize,
    files_restored: usize,
    data_lost: usize,
    wrong_bytes: usize,
    files_unrestorable: usize,
}

fn short(id: &str) -> &str {
    &id[..8]
}

fn one_case(target: Target, fault: Fault, counts: &mut Counts) {
    let t = TestRepo::new();
    t.run_ok(&["init"]);
    let (a, b) = sources(t.path());
    let sa1 = backup(&t, &a, "vola");
    let src_a1 = read_tree(&a);
    std::fs::write(a.join("y.bin"), pseudo_random(200_000, 22)).unwrap();
    let sa2 = backup(&t, &a, "vola");
    let src_a2 = read_tree(&a);
    let sb = backup(&t, &b, "volb");
    let src_b = read_tree(&b);

    // Where things are, before anything is damaged.
    let repo = open_lib(&t);
    let (index, problems) = repo.load_index().unwrap();
    assert!(problems.is_empty());
    let lay = |s: &str| layout(&repo, &index, s);
    let (l1, l2, lb) = (lay(&sa1), lay(&sa2), lay(&sb));
    let pack_of = |blob: &BlobId| index.get(blob).unwrap();
    let blobs_in = |p: &PackId| -> HashSet<BlobId> {
        index
            .iter()
            .filter(|(_, q, _)| q == p)
            .map(|(b, _, _)| *b)
            .collect()
    };
    let mut bad: HashSet<BlobId> = HashSet::new();
    let mut object = String::new();
    let mut extra_objects: Vec<String> = Vec::new();
    let mut dead_snapshot: Option<&str> = None;
    match target {
        Target::Pack | Target::TreePack => {
            // The data pack of x.bin, or the tree pack holding `sub`'s listing.
            let blob = match target {
                Target::Pack => l1.files["/x.bin"][0],
                _ => l1.dirs["/sub"],
            };
            let (p, loc) = pack_of(&blob);
            object = format!("packs/{p}");
            let at = loc.offset as usize + loc.length as usize / 2;
            damage(&pack_path(&t, &p), fault, Some(at));
            // A truncated pack keeps the blobs that lie wholly in its first half.
            let half = std::fs::metadata(pack_path(&t, &p)).map_or(0, |m| m.len());
            bad = match fault {
                Fault::BitFlip => [blob].into(),
                Fault::Truncate => index
                    .iter()
                    .filter(|(_, q, l)| *q == p && u64::from(l.offset + l.length) > half)
                    .map(|(b, _, _)| *b)
                    .collect(),
                Fault::Delete => blobs_in(&p),
            };
        }
        Target::IndexFile => {
            // The index file that lists x.bin's pack: the data stays intact, so the
            // packs it listed are named and no snapshot is.
            let (p, _) = pack_of(&l1.files["/x.bin"][0]);
            let mut hit = None;
            repo.for_each_index_file(|name, f| {
                if f.packs.iter().any(|q| q.id == p) {
                    hit = Some((
                        name.to_string(),
                        f.packs.iter().map(|q| q.id).collect::<Vec<_>>(),
                    ));
                }
            })
            .unwrap();
            let (name, packs) = hit.unwrap();
            if fault != Fault::Delete {
                object = format!("index/{name}");
            }
            extra_objects = packs.iter().map(|p| format!("packs/{p}")).collect();
            damage(&t.repo.join("index").join(&name), fault, None);
        }
        Target::SnapshotObject => {
            object = format!("snapshots/{sa1}");
            damage(&t.repo.join("snapshots").join(&sa1), fault, None);
            dead_snapshot = Some(&sa1);
        }
    }
    drop(repo);
    // The premise of "volb is never named": none of its blobs was damaged.
    let b_blobs: HashSet<BlobId> = lb
        .files
        .values()
        .flatten()
        .chain(lb.dirs.values())
        .chain(lb.root.iter())
        .copied()
        .collect();
    assert!(
        b_blobs.is_disjoint(&bad),
        "{target:?}: volb shares a damaged blob"
    );
    counts.damaged += 1;

    let (code, errors, warnings) = check_json(&t);
    let all = errors.join("\n");
    let label = format!("{target:?}/{fault:?}");
    // Deleting a snapshot object leaves nothing to detect but its child's missing parent:
    // the same picture `forget` leaves, so it is a warning and check passes.
    let snapshot_deleted = target == Target::SnapshotObject && fault == Fault::Delete;
    if snapshot_deleted {
        assert_eq!(code, 0, "{label}: {all}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&object) && w.contains(short(&sa2))),
            "{label}: {warnings:?}"
        );
    } else {
        assert_eq!(code, 1, "{label}: check must fail: {all}");
    }
    if !object.is_empty() && !snapshot_deleted {
        assert!(all.contains(&object), "{label}: {object} not named: {all}");
    }
    for o in &extra_objects {
        assert!(all.contains(o), "{label}: {o} not named: {all}");
    }
    // volb shares nothing with vola: never named.
    assert!(
        !all.contains(short(&sb)) && !all.contains("volb"),
        "{label}: {all}"
    );
    // Exactly the expected paths of each vola snapshot, nothing else.
    let mut lost_by_snapshot = BTreeMap::new();
    for (sid, l) in [(&sa1, &l1), (&sa2, &l2)] {
        let (named, lost) = if dead_snapshot == Some(sid.as_str()) {
            (BTreeSet::new(), l.files.keys().cloned().collect())
        } else {
            expected_damage(l, &bad)
        };
        let mine: Vec<&String> = errors
            .iter()
            .filter(|e| e.starts_with(&format!("snapshot {} ", short(sid))))
            .collect();
        let got: BTreeSet<String> = mine
            .iter()
            .map(|e| {
                let rest = e.split_once("): ").unwrap().1;
                rest.split_once(": ").unwrap().0.to_string()
            })
            .collect();
        assert_eq!(got, named, "{label}: snapshot {sid}: {all}");
        lost_by_snapshot.insert(sid.clone(), lost);
    }
    counts.named_correctly += 1;
    eprintln!(
        "{label}: check named {object} {extra_objects:?}; {} error line(s)",
        errors.len()
    );

    // Unaffected files restore byte for byte; damaged ones are reported, never wrong.
    let none = BTreeSet::new();
    for (vol, sid, src) in [
        ("vola", &sa1, &src_a1),
        ("vola", &sa2, &src_a2),
        ("volb", &sb, &src_b),
    ] {
        if dead_snapshot == Some(sid.as_str()) {
            counts.files_unrestorable += src.len();
            continue;
        }
        let lost = lost_by_snapshot.get(sid).unwrap_or(&none);
        let (ok, missing, wrong, code) = restore_compare(&t, vol, sid, src, lost);
        assert_eq!(ok + lost.len(), src.len(), "{label}: {vol} {sid}");
        assert_eq!(
            code,
            if lost.is_empty() { 0 } else { 1 },
            "{label}: restore {sid}"
        );
        counts.files_restored += ok;
        counts.files_unrestorable += lost.len();
        counts.data_lost += missing;
        counts.wrong_bytes += wrong;
    }

    // Repair: rebuild the index, mark exactly the broken snapshots.
    let out = t.run(&["--json", "repair"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let broken: BTreeSet<String> = r["broken_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let want_broken: BTreeSet<String> = lost_by_snapshot
        .iter()
        .filter(|(s, l)| !l.is_empty() && dead_snapshot != Some(s.as_str()))
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(broken, want_broken, "{label}: {r}");
    assert_eq!(
        out.status.code(),
        Some(if r_damaged(&r) { 3 } else { 0 }),
        "{label}: {r}"
    );
    // A damaged snapshot object is still there to warn about: `snapshots` exits 3.
    let out = t.run(&["--json", "snapshots"]);
    let damaged_snapshot = target == Target::SnapshotObject && fault != Fault::Delete;
    assert_eq!(
        out.status.code(),
        Some(if damaged_snapshot { 3 } else { 0 }),
        "{label}"
    );
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in snaps["snapshots"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        assert_eq!(
            !s["broken"].is_null(),
            want_broken.contains(id),
            "{label}: {s}"
        );
    }
    let (code, errors, _) = check_json(&t);
    if target == Target::IndexFile {
        assert_eq!(code, 0, "{label}: after repair: {errors:?}");
    }
    // Good snapshots still restore, byte for byte, after repair.
    let (ok, missing, wrong, code) = restore_compare(&t, "volb", &sb, &src_b, &none);
    assert_eq!(
        (ok, missing, wrong, code),
        (src_b.len(), 0, 0, 0),
        "{label}"
    );
    if want_broken.is_empty() && dead_snapshot.is_none() {
        let (ok, _, _, code) = restore_compare(&t, "vola", &sa2, &src_a2, &none);
        assert_eq!((ok, code), (src_a2.len(), 0), "{label}");
    }
    // A second repair finds the same and writes nothing new.
    let again = t.run(&["--json", "repair", "--dry-run"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["index_files_deleted"].as_array().unwrap().len(),
        0,
        "{label}: {again}"
    );
}

fn r_damaged(r: &serde_json::Value) -> bool {
    [
        "packs_unreadable",
        "blobs_damaged",
        "broken_snapshots",
        "unreadable_snapshots",
    ]
    .iter()
    .any(|k| !r[k].as_array().unwrap().is_empty())
}

#[test]
fn corruption_is_named_exactly_and_repair_marks_only_broken_snapshots() {
    let mut table: BTreeMap<Target, Counts> = BTreeMap::new();
    for target in [
        Target::Pack,
        Target::IndexFile,
        Target::TreePack,
        Target::SnapshotObject,
    ] {
        for fault in [Fault::BitFlip, Fault::Truncate, Fault::Delete] {
            one_case(target, fault, table.entry(target).or_default());
        }
    }
    println!(
        "| damaged | objects damaged | check named correctly | files restored | files in damaged places (reported) | data lost | wrong bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (t, c) in &table {
        println!(
            "| {t:?} | {} | {} | {} | {} | {} | {} |",
            c.damaged,
            c.named_correctly,
            c.files_restored,
            c.files_unrestorable,
            c.data_lost,
            c.wrong_bytes
        );
        assert_eq!(c.data_lost, 0, "{t:?}");
        assert_eq!(c.wrong_bytes, 0, "{t:?}");
    }
}

#[test]
fn repair_rebuilds_a_deleted_index_from_the_packs() {
    let t = TestRepo::new();
    t.run_ok(&["init"]);
    let (a, b) = sources(t.path());
    let sa = backup(&t, &a, "vola");
    let sb = backup(&t, &b, "volb");
    let before = t.run_json(&["check", "--read-data"]);
    for e in std::fs::read_dir(t.repo.join("index")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    // Blobs that only unindexed packs hold are an error for check (and repair's job).
    let out = t.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no readable index file lists it"), "{text}");
    let dry = t.run_json(&["repair", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        std::fs::read_dir(t.repo.join("index")).unwrap().count(),
        0,
        "dry run wrote"
    );
    let r = t.run_json(&["repair"]);
    assert_eq!(r["broken_snapshots"].as_array().unwrap().len(), 0, "{r}");
    assert!(std::fs::read_dir(t.repo.join("index")).unwrap().count() > 0);
    let after = t.run_json(&["check", "--read-data"]);
    assert_eq!(after["errors"].as_array().unwrap().len(), 0, "{after}");
    assert_eq!(after["blobs"], before["blobs"]);
    let none = BTreeSet::new();
    for (vol, sid, src) in [("vola", &sa, read_tree(&a)), ("volb", &sb, read_tree(&b))] {
        let (ok, lost, wrong, code) = restore_compare(&t, vol, sid, &src, &none);
        assert_eq!((ok, lost, wrong, code), (src.len(), 0, 0, 0));
    }
    let _ = SnapshotId::from_hex(&sa).unwrap();
}

#[test]
fn a_damaged_key_entry_is_named_as_damage_not_as_a_wrong_key() {
    let t = TestRepo::new();
    t.run_ok(&["init"]);
    let keys: Vec<PathBuf> = std::fs::read_dir(t.repo.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let good = std::fs::read(&keys[0]).unwrap();
    damage(&keys[0], Fault::BitFlip, None);
    let out = t.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let name = keys[0].file_name().unwrap().to_string_lossy();
    assert!(
        err.contains(&format!("keys/{name}")) && err.contains("does not match its name"),
        "{err}"
    );
    // The entry as it was opens again: the key was right all along.
    std::fs::write(&keys[0], good).unwrap();
    t.run_ok(&["snapshots"]);
}
