//! A hostile repository. First an attacker with write access to the storage but no key:
//! objects flipped, replaced, swapped and replayed must be refused by authentication or by
//! the id check, with an error naming the object, and no wrong byte may be restored. Then
//! an attacker WITH the key: snapshots crafted through the crate's own encoding (`..`,
//! `/`, NUL and empty names, symlink-then-file and hard-link tricks, device nodes,
//! setuid bits, absurd sizes, deep nesting) must never write outside the target, never
//! create a device node unless `--devices` is given, never allocate by a claimed size,
//! and end in a named soft error.
//!
//! Each case bumps a counter; the totals are printed at the end of each test (the README's
//! table comes from them).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::*;
use volguard::backend::local::LocalBackend;
use volguard::backend::{Backend, Kind};
use volguard::ids::{BlobId, SnapshotId};
use volguard::repo::Repository;
use volguard::repo::format::crypto::Secret;
use volguard::repo::format::index::{IndexFile, IndexedPack};
use volguard::repo::format::pack::{BlobKind, PackBuilder};
use volguard::repo::format::snapshot::{Snapshot, Summary};
use volguard::repo::format::tree::{Node, NodeKind, Tree};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn open_repo(repo: &TestRepo) -> Repository {
    let key = std::fs::read(&repo.key_file).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&repo.repo));
    Repository::open(backend, &Secret::KeyFile(key.trim_ascii_end().to_vec())).unwrap()
}

fn backup(repo: &TestRepo, src: &Path, name: &str) -> String {
    let out = repo.run_json(&["backup", "--path", src.to_str().unwrap(), "--name", name]);
    out["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn restore(
    repo: &TestRepo,
    name: &str,
    snap: &str,
    dst: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "restore",
        name,
        "--snapshot",
        snap,
        "--target",
        dst.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    repo.run(&args)
}

/// Every regular file under `dst` must be byte-identical to the same path under `src`:
/// a restore may leave files out, never restore a wrong byte. Returns how many matched.
fn assert_no_wrong_bytes(src: &Path, dst: &Path) -> usize {
    let mut same = 0;
    if !dst.exists() {
        return 0;
    }
    for e in walkdir::WalkDir::new(dst) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(dst).unwrap();
        let want = std::fs::read(src.join(rel))
            .unwrap_or_else(|_| panic!("{} restored but not in the source", rel.display()));
        let got = std::fs::read(e.path()).unwrap();
        assert!(got == want, "{}: wrong bytes restored", rel.display());
        same += 1;
    }
    same
}

fn pack_path(repo: &TestRepo, pack: &str) -> PathBuf {
    repo.repo.join("packs").join(&pack[..2]).join(pack)
}

fn fill_source(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.bin"), pseudo_random(300_000, seed)).unwrap();
    std::fs::write(dir.join("sub/b.txt"), format!("small file {seed}")).unwrap();
    // Same names, sizes and times in every source, so the trees encode to equal lengths.
    for p in ["a.bin", "sub/b.txt", "sub", "."] {
        let t = nix::sys::time::TimeSpec::new(1_700_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

#[test]
fn tampering_without_the_key_is_refused_and_named() {
    let mut cases = 0;
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src1 = repo.path().join("src1");
    let src2 = repo.path().join("src2");
    fill_source(&src1, 1);
    fill_source(&src2, 2);
    let s1 = backup(&repo, &src1, "one");
    let index_after_1: Vec<String> = std::fs::read_dir(repo.repo.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let s2 = backup(&repo, &src2, "two");
    let r = open_repo(&repo);
    let (index, _) = r.load_index().unwrap();
    let snap1 = r.find_snapshot("one", &s1).unwrap().1;
    let snap2 = r.find_snapshot("two", &s2).unwrap().1;
    let root1 = snap1.root.subtree.unwrap();
    let root2 = snap2.root.subtree.unwrap();
    let (tree_pack1, tree_loc1) = index.get(&root1).unwrap();
    let (_, tree_loc2) = index.get(&root2).unwrap();
    let a1 = &r.load_tree(&index, &root1).unwrap().nodes[0];
    assert_eq!(a1.name, b"a.bin");
    let (data_pack1, data_loc1) = index.get(&a1.content[0]).unwrap();
    drop(r);

    // Each case tampers with a copy of the repository, so they do not mix.
    let copy = |label: &str| -> TestRepo {
        let t = TestRepo::new();
        std::fs::copy(&repo.key_file, &t.key_file).unwrap();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&repo.repo)
            .arg(&t.repo)
            .status()
            .unwrap();
        assert!(st.success(), "{label}: cp");
        t
    };

    // 1. A snapshot object replaced by another repository's snapshot (same name).
    {
        let t = copy("foreign snapshot");
        let other = TestRepo::new();
        other.run_ok(&["init"]);
        let os = backup(&other, &src2, "one");
        std::fs::copy(
            other.repo.join("snapshots").join(&os),
            t.repo.join("snapshots").join(&s1),
        )
        .unwrap();
        let dst = t.path().join("dst");
        let out = restore(&t, "one", &s1, &dst, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("snapshots/{s1}")),
            "the error must name the object: {}",
            stderr(&out)
        );
        assert_eq!(assert_no_wrong_bytes(&src1, &dst), 0);
        cases += 1;
    }

    // 2. Two snapshots of the same repository swapped under each other's names.
    {
        let t = copy("swapped snapshots");
        let d = t.repo.join("snapshots");
        let b1 = std::fs::read(d.join(&s1)).unwrap();
        let b2 = std::fs::read(d.join(&s2)).unwrap();
        std::fs::write(d.join(&s1), b2).unwrap();
        std::fs::write(d.join(&s2), b1).unwrap();
        for (name, id) in [("one", &s1), ("two", &s2)] {
            let dst = t.path().join(unique("dst"));
            let out = restore(&t, name, id, &dst, &[]);
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            let e = stderr(&out);
            assert!(
                e.contains(&format!("snapshots/{id}")) && e.contains("does not match its name"),
                "{e}"
            );
            assert!(!dst.exists() || std::fs::read_dir(&dst).unwrap().count() == 0);
            cases += 1;
        }
    }

    // 3. A pack replaced by another pack under its name.
    {
        let t = copy("swapped pack");
        let p1 = pack_path(&t, &data_pack1.to_hex());
        let other = std::fs::read_dir(t.repo.join("packs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|e| e.unwrap().path())
            .find(|p| p != &p1)
            .expect("a second pack");
        std::fs::copy(&other, &p1).unwrap();
        let dst = t.path().join("dst");
        let out = restore(&t, "one", &s1, &dst, &[]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        let e = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(
            e.contains(&a1.content[0].to_hex())
                || e.contains(&root1.to_hex())
                || e.contains(&data_pack1.to_hex()),
            "the error must name the blob that did not authenticate: {e}"
        );
        assert_no_wrong_bytes(&src1, &dst);
        cases += 1;
    }

    // 4. One bit of a file's data flipped in its pack: that file is left out, named; the
    //    rest restores.
    {
        let t = copy("flipped data");
        let p = pack_path(&t, &data_pack1.to_hex());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[data_loc1.offset as usize + data_loc1.length as usize / 2] ^= 0x10;
        std::fs::write(&p, bytes).unwrap();
        let dst = t.path().join("dst");
        let out = restore(&t, "one", &s1, &dst, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let e = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(
            e.contains("a.bin") && e.contains(&a1.content[0].to_hex()),
            "{e}"
        );
        assert!(
            !dst.join("a.bin").exists(),
            "a file with a damaged chunk was left in place"
        );
        assert_eq!(assert_no_wrong_bytes(&src1, &dst), 1, "sub/b.txt restores");
        cases += 1;
    }

    // 5. A tree blob substituted by another (validly sealed) tree blob of the same length.
    {
        // Compression makes the two root trees seal to different lengths; the substitute
        // is cut or zero-padded to fit. When the lengths happen to agree the AEAD passes
        // and the id check is what refuses it.
        let same_length = tree_loc1.length == tree_loc2.length;
        let t = copy("substituted tree");
        let (tree_pack2, _) = {
            let r = open_repo(&t);
            let (ix, _) = r.load_index().unwrap();
            ix.get(&root2).unwrap()
        };
        let other = std::fs::read(pack_path(&t, &tree_pack2.to_hex())).unwrap();
        let mut sealed2 = other
            [tree_loc2.offset as usize..tree_loc2.offset as usize + tree_loc2.length as usize]
            .to_vec();
        sealed2.resize(tree_loc1.length as usize, 0);
        let p = pack_path(&t, &tree_pack1.to_hex());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[tree_loc1.offset as usize..tree_loc1.offset as usize + tree_loc1.length as usize]
            .copy_from_slice(&sealed2);
        std::fs::write(&p, bytes).unwrap();
        let dst = t.path().join("dst");
        let out = restore(&t, "one", &s1, &dst, &[]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        let e = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(
            e.contains(&root1.to_hex())
                && e.contains(if same_length {
                    "does not match its id"
                } else {
                    "authentication failed"
                }),
            "the substituted tree must be refused by its id: {e}"
        );
        assert_eq!(assert_no_wrong_bytes(&src1, &dst), 0);
        cases += 1;
    }

    // 6. An index file replaced by an older one (the state after the first backup) under
    //    the newer one's name, and 7. the newer index file deleted outright (the older
    //    state replayed): snapshot two's blobs are then unknown or mislabelled. Nothing
    //    wrong may be restored; either the packs' own trailers recover the blobs and the
    //    restore is exact, or it fails naming what is missing.
    for delete in [false, true] {
        let t = copy("replayed index");
        let newer: Vec<PathBuf> = std::fs::read_dir(t.repo.join("index"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                !index_after_1.contains(&p.file_name().unwrap().to_string_lossy().into_owned())
            })
            .collect();
        assert!(!newer.is_empty());
        let old = t.repo.join("index").join(&index_after_1[0]);
        for n in &newer {
            if delete {
                std::fs::remove_file(n).unwrap();
            } else {
                std::fs::copy(&old, n).unwrap();
            }
        }
        let dst = t.path().join("dst");
        let out = restore(&t, "two", &s2, &dst, &["--verify"]);
        let e = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            assert_eq!(assert_no_wrong_bytes(&src2, &dst), 2, "{e}");
        } else {
            assert!(
                e.contains("not in any index") || e.contains("does not match its name"),
                "{e}"
            );
            if !delete {
                assert!(
                    e.contains(&format!(
                        "index/{}",
                        newer[0].file_name().unwrap().to_string_lossy()
                    )),
                    "{e}"
                );
            }
            assert_no_wrong_bytes(&src2, &dst);
        }
        cases += 1;
    }

    // 8. A pack truncated by a few bytes (a partial upload, or an attacker cutting it).
    {
        let t = copy("truncated pack");
        let p = pack_path(&t, &data_pack1.to_hex());
        // Cut in the middle of a.bin's chunk (and so also its trailer).
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(u64::from(data_loc1.offset) + u64::from(data_loc1.length) / 2)
            .unwrap();
        let dst = t.path().join("dst");
        let out = restore(&t, "one", &s1, &dst, &[]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_no_wrong_bytes(&src1, &dst);
        cases += 1;
    }

    // 9. Random garbage as a snapshot object under a well-formed name.
    {
        let t = copy("garbage snapshot");
        std::fs::write(t.repo.join("snapshots").join(&s1), pseudo_random(500, 9)).unwrap();
        let out = t.run(&["snapshots"]);
        let e = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(e.contains(&format!("snapshots/{s1}")), "{e}");
        cases += 1;
    }

    // The untouched original still restores exactly.
    let dst = repo.restore_to_new_dir("one", &s1);
    assert_eq!(assert_no_wrong_bytes(&src1, &dst), 2);
    eprintln!("hostile repository without key: {cases} tamper cases refused, 0 wrong bytes");
    assert_eq!(cases, 10);
}

/// Writes crafted trees and file data into the repository with its own key and encoding,
/// and a snapshot over them: what an attacker holding the key could store.
struct Crafter {
    repo: Repository,
    pack: PackBuilder,
    zstd: volguard::repo::format::pack::BlobCompressor,
}

impl Crafter {
    fn new(repo: &TestRepo) -> Self {
        Crafter {
            repo: open_repo(repo),
            pack: PackBuilder::default(),
            zstd: volguard::repo::format::pack::BlobCompressor::new(3).unwrap(),
        }
    }

    fn blob(&mut self, kind: BlobKind, raw: &[u8]) -> BlobId {
        let id = BlobId(self.repo.keys().id_of(raw));
        let sealed = volguard::repo::format::pack::seal_blob(self.repo.keys(), raw, &mut self.zstd);
        self.pack.add(kind, id, &sealed, raw.len() as u32);
        id
    }

    /// A tree blob with exactly these nodes, in this order, unvalidated.
    fn tree(&mut self, nodes: Vec<Node>) -> BlobId {
        self.blob(BlobKind::Tree, &Tree { nodes }.encode())
    }

    /// Stores the pack and an index for it, then the snapshot of `volume` over `root`.
    fn snapshot(mut self, volume: &str, root: BlobId) -> String {
        let pack = std::mem::take(&mut self.pack);
        let (id, bytes, entries) = pack.finish(self.repo.keys());
        let size = bytes.len() as u64;
        self.repo
            .block_on(
                self.repo
                    .backend()
                    .put(Kind::Pack, &id.to_hex(), bytes.into()),
            )
            .unwrap();
        self.repo
            .save_index(&IndexFile {
                packs: vec![IndexedPack {
                    id,
                    size,
                    blobs: entries,
                }],
            })
            .unwrap();
        let mut root_node = node(b"/", NodeKind::Dir);
        root_node.mode = 0o755;
        root_node.subtree = Some(root);
        let snap = Snapshot {
            version: 1,
            time: Repository::now(),
            host: "attacker".into(),
            volume: volume.into(),
            source: "/crafted".into(),
            tags: vec![],
            parent: None,
            root: root_node,
            summary: Summary::default(),
            program: "crafted".into(),
            docker_volume: None,
        };
        let (sid, _): (SnapshotId, u64) = self.repo.save_snapshot(&snap).unwrap();
        sid.to_hex()
    }
}

fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        ..Node::default()
    }
}

fn file(c: &mut Crafter, name: &[u8], data: &[u8]) -> Node {
    let mut n = node(name, NodeKind::File);
    n.size = data.len() as u64;
    if !data.is_empty() {
        n.content = vec![c.blob(BlobKind::Data, data)];
    }
    n.file_hash = Some(*blake3::hash(data).as_bytes());
    n
}

fn dir(name: &[u8], subtree: BlobId) -> Node {
    let mut n = node(name, NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(subtree);
    n
}

/// Everything under `dir` (paths relative to it), to prove nothing appeared outside.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    v.sort();
    v
}

/// A crafted restore in a sandbox: `jail/target` is the target, `jail` itself and the
/// absolute `outside` directory are watched for anything new.
struct Sandbox {
    jail: PathBuf,
    target: PathBuf,
    outside: PathBuf,
    before_jail: Vec<PathBuf>,
    before_outside: Vec<PathBuf>,
}

impl Sandbox {
    fn new(repo: &TestRepo, outside: &Path) -> Self {
        let jail = repo.path().join(unique("jail"));
        std::fs::create_dir_all(&jail).unwrap();
        std::fs::write(jail.join("sentinel"), "untouched").unwrap();
        std::fs::create_dir_all(outside).unwrap();
        Sandbox {
            target: jail.join("target"),
            before_jail: listing(&jail),
            before_outside: listing(outside),
            jail,
            outside: outside.to_path_buf(),
        }
    }

    /// Nothing was created or changed outside the target.
    fn check(&self) {
        let now: Vec<PathBuf> = listing(&self.jail)
            .into_iter()
            .filter(|p| !p.starts_with("target"))
            .collect();
        assert_eq!(
            now, self.before_jail,
            "something was written next to the target"
        );
        assert_eq!(
            std::fs::read_to_string(self.jail.join("sentinel")).unwrap(),
            "untouched"
        );
        assert_eq!(
            listing(&self.outside),
            self.before_outside,
            "something was written in {}",
            self.outside.display()
        );
    }
}

fn out_text(o: &std::process::Output) -> String {
    stderr(o) + &String::from_utf8_lossy(&o.stdout)
}

#[test]
fn crafted_names_are_refused_and_nothing_lands_outside_the_target() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let outside = PathBuf::from("/tmp").join(unique("volguard-outside"));
    let mut cases = 0;
    let bad_names: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b".".to_vec(),
        b"../escape".to_vec(),
        b"a/../../escape".to_vec(),
        [b"/".as_slice(), outside.as_os_str().as_bytes(), b"/abs"].concat(),
        b"".to_vec(),
        b"nul\0byte".to_vec(),
        b"x/y".to_vec(),
    ];
    for bad in &bad_names {
        let mut c = Crafter::new(&repo);
        let evil = file(&mut c, bad, b"evil bytes");
        let bad_tree = c.tree(vec![evil]);
        let good = file(&mut c, b"good.txt", b"good");
        let root = c.tree(vec![dir(b"d", bad_tree), good]);
        let vol = unique("names");
        let sid = c.snapshot(&vol, root);
        let sb = Sandbox::new(&repo, &outside);
        let out = restore(&repo, &vol, &sid, &sb.target, &[]);
        let e = out_text(&out);
        assert_eq!(out.status.code(), Some(1), "name {bad:?}: {e}");
        assert!(
            e.contains("subtree skipped") && e.contains("tree "),
            "name {bad:?}: {e}"
        );
        assert_eq!(std::fs::read(sb.target.join("good.txt")).unwrap(), b"good");
        // The directory entry itself is sound and may be made; nothing from its refused
        // tree is in it.
        let d = sb.target.join("d");
        assert!(!d.exists() || std::fs::read_dir(&d).unwrap().count() == 0);
        sb.check();
        cases += 1;
    }

    // A name that is both a symlink and a directory (`d -> outside`, then `d/x`): the
    // second entry of the same name is refused with the tree, and even a symlink alone
    // is only ever a link, never followed.
    {
        let mut c = Crafter::new(&repo);
        let x = file(&mut c, b"x", b"through the link");
        let sub = c.tree(vec![x]);
        let mut link = node(b"d", NodeKind::Symlink);
        link.link_target = outside.as_os_str().as_bytes().to_vec();
        let root = c.tree(vec![link, dir(b"d", sub)]);
        let vol = unique("symdir");
        let sid = c.snapshot(&vol, root);
        let sb = Sandbox::new(&repo, &outside);
        let out = restore(&repo, &vol, &sid, &sb.target, &[]);
        let e = out_text(&out);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains("not strictly sorted"), "{e}");
        sb.check();
        cases += 1;
    }
    // The order reversed (dir `d` first, then symlink `d`) and split over two levels:
    // symlink `d` at the root, and a directory whose tree holds `../d/x`-style names is
    // already refused above; here the symlink comes first in one snapshot and a file
    // `d` in another tree level.
    {
        let mut c = Crafter::new(&repo);
        let mut link = node(b"d", NodeKind::Symlink);
        link.link_target = outside.as_os_str().as_bytes().to_vec();
        let x = file(&mut c, b"x", b"through the link");
        let sub = c.tree(vec![x]);
        // `d` the symlink, then `e` a directory, with the file `x` under `e`; plus hard
        // links whose group is first seen on the symlink (a symlink never starts a
        // hard-link group, so `h` is a new plain file, not a link to outside).
        link.hardlink = Some(77);
        let mut h = file(&mut c, b"h", b"hard");
        h.hardlink = Some(77);
        let root = c.tree(vec![link, dir(b"e", sub), h]);
        let vol = unique("symfirst");
        let sid = c.snapshot(&vol, root);
        let sb = Sandbox::new(&repo, &outside);
        let out = restore(&repo, &vol, &sid, &sb.target, &[]);
        let e = out_text(&out);
        assert_eq!(out.status.code(), Some(0), "{e}");
        let d = std::fs::symlink_metadata(sb.target.join("d")).unwrap();
        assert!(d.file_type().is_symlink());
        assert_eq!(
            std::fs::read(sb.target.join("e/x")).unwrap(),
            b"through the link"
        );
        let hm = std::fs::symlink_metadata(sb.target.join("h")).unwrap();
        assert!(
            hm.is_file() && hm.nlink() == 1,
            "h must be a plain file of its own"
        );
        assert_eq!(std::fs::read(sb.target.join("h")).unwrap(), b"hard");
        sb.check();
        cases += 1;
    }
    // Hard links: a group whose first member is in a directory, the second member in a
    // sibling: both inside the target, same inode; a link can only ever point at a file
    // this restore created.
    {
        let mut c = Crafter::new(&repo);
        let mut one = file(&mut c, b"one", b"shared");
        one.hardlink = Some(5);
        let mut two = file(&mut c, b"two", b"shared");
        two.hardlink = Some(5);
        let a = c.tree(vec![one]);
        let b = c.tree(vec![two]);
        let root = c.tree(vec![dir(b"a", a), dir(b"b", b)]);
        let vol = unique("links");
        let sid = c.snapshot(&vol, root);
        let sb = Sandbox::new(&repo, &outside);
        let out = restore(&repo, &vol, &sid, &sb.target, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let m1 = std::fs::metadata(sb.target.join("a/one")).unwrap();
        let m2 = std::fs::metadata(sb.target.join("b/two")).unwrap();
        assert_eq!(m1.ino(), m2.ino());
        sb.check();
        cases += 1;
    }
    std::fs::remove_dir_all(&outside).ok();
    eprintln!("crafted names and link tricks: {cases} cases, 0 writes outside the target");
    assert_eq!(cases, bad_names.len() + 3);
}

#[test]
fn crafted_devices_setuid_and_absurd_sizes_are_contained() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let outside = PathBuf::from("/tmp").join(unique("volguard-outside"));
    let mut cases = 0;

    // Device nodes: /dev/mem-like (char 1:1) and a disk (block 8:0), world-writable; a
    // FIFO and a whiteout (char 0:0). Without --devices the devices are skipped, named.
    let mut c = Crafter::new(&repo);
    let mut mem = node(b"mem", NodeKind::CharDevice);
    mem.rdev = nix::sys::stat::makedev(1, 1);
    mem.mode = 0o666;
    let mut disk = node(b"sda", NodeKind::BlockDevice);
    disk.rdev = nix::sys::stat::makedev(8, 0);
    disk.mode = 0o666;
    let mut fifo = node(b"fifo", NodeKind::Fifo);
    fifo.mode = 0o600;
    let whiteout = node(b"whiteout", NodeKind::CharDevice);
    // setuid/setgid root executables and one owned by another user.
    let mut suid = file(&mut c, b"suid-root", b"#!/bin/sh\n");
    suid.mode = 0o6755;
    let mut suid_other = file(&mut c, b"suid-user", b"#!/bin/sh\n");
    suid_other.mode = 0o4755;
    suid_other.uid = 4242;
    suid_other.gid = 4242;
    let root = c.tree(vec![fifo, mem, disk, suid, suid_other, whiteout]);
    let vol = unique("devices");
    let sid = c.snapshot(&vol, root);
    let sb = Sandbox::new(&repo, &outside);
    let out = restore(&repo, &vol, &sid, &sb.target, &[]);
    let e = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("mem: device node 1:1 not created") && e.contains("--devices"),
        "{e}"
    );
    assert!(e.contains("sda: device node 8:0 not created"), "{e}");
    assert!(!sb.target.join("mem").exists() && !sb.target.join("sda").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(sb.target.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let w = std::fs::symlink_metadata(sb.target.join("whiteout")).unwrap();
    assert!(
        w.file_type().is_char_device() && w.rdev() == 0,
        "whiteouts are restored"
    );
    // Root restoring ownership: the bits are the snapshot's, on files owned as it says
    // (the same as any archive tool run by root). Without ownership they are dropped
    // (fsmeta::apply_metadata; unit-tested there).
    let m = std::fs::metadata(sb.target.join("suid-root")).unwrap();
    let m2 = std::fs::metadata(sb.target.join("suid-user")).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o6755, 0));
        assert_eq!((m2.mode() & 0o7777, m2.uid()), (0o4755, 4242));
    } else {
        assert_eq!(m2.mode() & 0o6000, 0, "setuid kept without ownership");
    }
    sb.check();
    cases += 3; // devices skipped, whiteout/fifo restored, setuid rules
    // With --devices (root only), they are created as the snapshot says.
    if nix::unistd::geteuid().is_root() {
        let sb = Sandbox::new(&repo, &outside);
        let out = restore(&repo, &vol, &sid, &sb.target, &["--devices"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let m = std::fs::symlink_metadata(sb.target.join("sda")).unwrap();
        assert!(m.file_type().is_block_device() && m.rdev() == nix::sys::stat::makedev(8, 0));
        sb.check();
        cases += 1;
    }

    // Absurd sizes. Each file below is refused before it is created; `ok` still restores.
    let mut c = Crafter::new(&repo);
    let mut huge = file(&mut c, b"huge-dense", b"tiny");
    huge.size = 1 << 60;
    let mut huge_sparse = file(&mut c, b"huge-sparse", b"tiny");
    huge_sparse.size = 1 << 60;
    huge_sparse.extents = Some(vec![(1 << 59, 1 << 40)]);
    let mut overlap = file(&mut c, b"overlap", b"0123456789");
    overlap.size = 100;
    overlap.extents = Some(vec![(0, 8), (4, 2)]);
    let mut beyond = file(&mut c, b"beyond", b"0123456789");
    beyond.size = 10;
    beyond.extents = Some(vec![(u64::MAX - 4, 10)]);
    let mut short = file(&mut c, b"short", b"0123456789");
    short.size = 20;
    let ok = file(&mut c, b"ok", b"fine");
    let root = c.tree(vec![beyond, huge, huge_sparse, ok, overlap, short]);
    let vol = unique("sizes");
    let sid = c.snapshot(&vol, root);
    let sb = Sandbox::new(&repo, &outside);
    let out = restore(&repo, &vol, &sid, &sb.target, &[]);
    let e = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    for name in ["beyond", "huge-dense", "huge-sparse", "overlap", "short"] {
        assert!(e.contains(&format!("{name}:")), "{name} not named: {e}");
        assert!(!sb.target.join(name).exists(), "{name} was created");
        cases += 1;
    }
    assert_eq!(std::fs::read(sb.target.join("ok")).unwrap(), b"fine");
    sb.check();
    // The same snapshot as a tar stream: the files are left out (named), the stream ends.
    let tar = repo.path().join(unique("x.tar"));
    let out = repo.run(&[
        "restore",
        &vol,
        "--snapshot",
        &sid,
        "--to-tar",
        tar.to_str().unwrap(),
    ]);
    let e = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("huge-dense: skipped"), "{e}");
    assert!(std::fs::metadata(&tar).unwrap().len() < 1 << 20);
    let mut names = Vec::new();
    for ent in tar::Archive::new(std::fs::File::open(&tar).unwrap())
        .entries()
        .unwrap()
    {
        names.push(ent.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(names, ["ok"], "only the sound file is exported");
    cases += 1;

    // A tree blob that claims billions of entries (a postcard length prefix of 2^32 with
    // nothing behind it) and one of garbage: refused without allocating by the claim.
    let mut c = Crafter::new(&repo);
    let mut claim = Vec::new();
    let mut n: u64 = 4_000_000_000;
    while n >= 0x80 {
        claim.push((n as u8) | 0x80);
        n >>= 7;
    }
    claim.push(n as u8);
    let billions = c.blob(BlobKind::Tree, &claim);
    let garbage = c.blob(BlobKind::Tree, &pseudo_random(4096, 3));
    let ok = file(&mut c, b"ok", b"fine");
    let root = c.tree(vec![
        dir(b"billions", billions),
        dir(b"garbage", garbage),
        ok,
    ]);
    let vol = unique("claims");
    let sid = c.snapshot(&vol, root);
    let sb = Sandbox::new(&repo, &outside);
    let out = restore(&repo, &vol, &sid, &sb.target, &[]);
    let e = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&billions.to_hex()) && e.contains(&garbage.to_hex()),
        "{e}"
    );
    assert_eq!(std::fs::read(sb.target.join("ok")).unwrap(), b"fine");
    sb.check();
    cases += 2;

    // Nesting deeper than any backup can write: 5000 levels of one-letter directories
    // (past PATH_MAX after about 2048). The restore stops at the limit with a named
    // error instead of running out of stack, and every directory it made is inside.
    let mut c = Crafter::new(&repo);
    let leaf = file(&mut c, b"leaf", b"deep");
    let mut t = c.tree(vec![leaf]);
    for _ in 0..5000 {
        t = c.tree(vec![dir(b"d", t)]);
    }
    let vol = unique("deep");
    let sid = c.snapshot(&vol, t);
    let sb = Sandbox::new(&repo, &outside);
    let out = restore(&repo, &vol, &sid, &sb.target, &[]);
    let e = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("subtree skipped"), "{e}");
    assert!(
        e.len() < 1 << 20,
        "one error per skipped subtree, not one per level"
    );
    sb.check();
    cases += 1;

    std::fs::remove_dir_all(&outside).ok();
    eprintln!("crafted devices, setuid, sizes, claims, depth: {cases} cases, contained");
}

/// A directory's subtrees are loaded together, and siblings that sit next to each other in
/// a pack with one ranged read. One damaged tree among them must fail alone: its siblings
/// still load, each in the place it was asked for.
#[test]
fn a_damaged_tree_fails_alone_among_siblings_read_together() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        std::fs::write(src.join(d).join("f"), format!("content of {d}")).unwrap();
    }
    let snap_id = backup(&repo, &src, "siblings");
    let r = open_repo(&repo);
    let (index, _) = r.load_index().unwrap();
    let snap = r.find_snapshot("siblings", &snap_id).unwrap().1;
    let root = r.load_tree(&index, &snap.root.subtree.unwrap()).unwrap();
    let subs: Vec<BlobId> = root.nodes.iter().map(|n| n.subtree.unwrap()).collect();
    assert_eq!(subs.len(), 4);
    let one_by_one: Vec<Tree> = subs
        .iter()
        .map(|id| r.load_tree(&index, id).unwrap())
        .collect();
    let packs: std::collections::HashSet<_> =
        subs.iter().map(|id| index.get(id).unwrap().0).collect();
    assert_eq!(packs.len(), 1, "the sibling trees should share a pack");

    // Asked out of order: each result is the tree asked for in that place.
    let order = [3, 1, 0, 2];
    let asked: Vec<BlobId> = order.iter().map(|&k| subs[k]).collect();
    for (got, &k) in r.load_trees(&index, &asked).into_iter().zip(&order) {
        assert_eq!(got.unwrap(), one_by_one[k]);
    }

    // Damage b's tree in the pack file.
    let (pack, loc) = index.get(&subs[1]).unwrap();
    let pack_file = walkdir::WalkDir::new(repo.repo.join("packs"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .find(|p| p.file_name().is_some_and(|n| n == pack.to_hex().as_str()))
        .expect("the pack file");
    let mut bytes = std::fs::read(&pack_file).unwrap();
    bytes[(loc.offset + loc.length / 2) as usize] ^= 0x40;
    std::fs::write(&pack_file, &bytes).unwrap();
    drop(r);

    let r = open_repo(&repo);
    let got = r.load_trees(&index, &subs);
    for (k, t) in got.iter().enumerate() {
        if k == 1 {
            let e = t.as_ref().expect_err("the damaged tree must not load");
            assert!(e.to_string().contains(&subs[1].to_string()), "{e}");
        } else {
            assert_eq!(t.as_ref().unwrap(), &one_by_one[k], "sibling {k}");
        }
    }
}
