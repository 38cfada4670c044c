//! Test fixture with every metadata kind volguard must round-trip, and a tree comparison
//! that reports every difference in names, type, mode, owner, times, xattrs, content,
//! hard links, devices and sparseness.
//!
//! Self-contained (std, libc, nix, xattr) so any integration test can include it; the
//! fixture needs root (chown, mknod, security.* and trusted.* xattrs) and `setfacl`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `security.capability` v2 granting cap_net_bind_service (bit 10), permitted + effective.
const CAP_NET_BIND_SERVICE_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic v2, effective flag
    0x00, 0x04, 0x00, 0x00, // permitted low word: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable low word
    0x00, 0x00, 0x00, 0x00, // permitted high
    0x00, 0x00, 0x00, 0x00, // inheritable high
];

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cmd: &str, args: &[&OsStr]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// Builds the fixture inside `dir` (which must exist and be empty).
pub fn build_fixture(dir: &Path) {
    let d = |p: &str| dir.join(p);
    fs::create_dir_all(d("etc/conf.d")).unwrap();
    fs::create_dir_all(d("bin")).unwrap();
    fs::create_dir_all(d("empty/nested/deeper")).unwrap();
    fs::create_dir_all(d("shared/tmp")).unwrap();
    fs::create_dir_all(d("links/a")).unwrap();
    fs::create_dir_all(d("links/b")).unwrap();
    fs::create_dir_all(d("dev")).unwrap();
    fs::create_dir_all(d("acl-dir")).unwrap();

    fs::write(d("etc/app.conf"), "listen = 8080\nworkers = 4\n").unwrap();
    fs::write(d("etc/conf.d/empty.conf"), "").unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(d("bin/large.bin"), &big).unwrap();

    fs::write(d("bin/setuid"), "#!/bin/sh\n").unwrap();
    chmod(&d("bin/setuid"), 0o4755);
    fs::write(d("bin/setgid"), "#!/bin/sh\n").unwrap();
    chown(&d("bin/setgid"), 0, 50);
    chmod(&d("bin/setgid"), 0o2755);
    chmod(&d("shared/tmp"), 0o1777);
    fs::write(d("etc/owned"), "owned by someone else").unwrap();
    chown(&d("etc/owned"), 1234, 5678);
    chmod(&d("etc/owned"), 0o640);

    fs::write(d("bin/cap"), "binary with a capability").unwrap();
    chmod(&d("bin/cap"), 0o755);
    xattr::set(
        d("bin/cap"),
        "security.capability",
        &CAP_NET_BIND_SERVICE_V2,
    )
    .unwrap();
    xattr::set(d("etc/app.conf"), "user.origin", b"fixture").unwrap();
    xattr::set(d("etc"), "user.dir-note", b"xattr on a directory").unwrap();
    xattr::set(d("etc/app.conf"), "user.binary", &[0u8, 1, 2, 255]).unwrap();
    fs::write(d("acl-dir/file"), "acl").unwrap();
    run(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:1234:rwx"),
            d("acl-dir/file").as_os_str(),
        ],
    );
    run(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:1234:rx"),
            d("acl-dir").as_os_str(),
        ],
    );
    run(
        "setfacl",
        &[
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("g:5678:rx"),
            d("acl-dir").as_os_str(),
        ],
    );

    std::os::unix::fs::symlink("../etc/app.conf", d("bin/relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", d("bin/absolute-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", d("bin/dangling-link")).unwrap();
    // Linux refuses user.* on symlinks but root may put trusted.* there.
    xattr::set(
        d("bin/relative-link"),
        "trusted.link-note",
        b"on the link itself",
    )
    .unwrap();

    fs::write(d("links/a/one"), "hard linked content").unwrap();
    fs::hard_link(d("links/a/one"), d("links/b/two")).unwrap();
    fs::hard_link(d("links/a/one"), d("links/three")).unwrap();

    let sparse = fs::File::create(d("sparse.img")).unwrap();
    sparse.write_all_at(b"head of the sparse file", 0).unwrap();
    sparse.write_all_at(&[0x5A; 8192], 40 << 20).unwrap();
    sparse.set_len(64 << 20).unwrap();
    drop(sparse);

    nix::unistd::mkfifo(
        &d("dev/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let perm = nix::sys::stat::Mode::from_bits_truncate(0o666);
    nix::sys::stat::mknod(
        &d("dev/null-like"),
        nix::sys::stat::SFlag::S_IFCHR,
        perm,
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &d("dev/loop-like"),
        nix::sys::stat::SFlag::S_IFBLK,
        perm,
        nix::sys::stat::makedev(7, 200),
    )
    .unwrap();

    fs::write(
        dir.join(OsStr::from_bytes(b"caf\xe9-latin1")),
        "not utf-8 name",
    )
    .unwrap();
    fs::write(dir.join(OsStr::from_bytes(b"new\nline")), "newline in name").unwrap();
    fs::write(d("zero-length"), "").unwrap();

    // Times last, children before parents, so creating entries does not disturb them.
    let mut errors = Vec::new();
    let mut all: Vec<PathBuf> = walk(dir, &mut errors)
        .into_iter()
        .map(|(p, _)| dir.join(p))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64, 123_456_789 - i as i64);
    }
}

/// Every entry below `root` (not `root` itself) as (relative path, lstat), never following
/// links. What cannot be read is reported in `errors` rather than panicking, so a broken
/// restore shows up as differences.
fn walk(root: &Path, errors: &mut Vec<String>) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match fs::read_dir(root.join(&rel)) {
            Ok(it) => it,
            Err(e) => {
                errors.push(format!(
                    "{}: cannot read directory: {e}",
                    show(&root.join(&rel))
                ));
                continue;
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.file_name()),
                Err(e) => errors.push(format!("{}: cannot list: {e}", show(&root.join(&rel)))),
            }
        }
        names.sort();
        for n in names {
            let r = rel.join(&n);
            match fs::symlink_metadata(root.join(&r)) {
                Ok(m) => {
                    if m.is_dir() {
                        stack.push(r.clone());
                    }
                    out.push((r, m));
                }
                Err(e) => errors.push(format!("{}: cannot lstat: {e}", show(&root.join(&r)))),
            }
        }
    }
    out
}

/// A path as an unambiguous, escaped string: names may be non-UTF-8 or contain newlines.
fn show(p: &Path) -> String {
    format!("{:?}", p.as_os_str())
}

/// All xattrs of `p` itself (never a symlink's target); none on a filesystem without them.
fn xattrs(p: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot list xattrs: {e}")),
    };
    let mut out = BTreeMap::new();
    for n in names {
        match xattr::get(p, &n) {
            Ok(Some(v)) => {
                out.insert(n.as_bytes().to_vec(), v);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot read xattr {n:?}: {e}")),
        }
    }
    Ok(out)
}

fn kind(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else if t.is_socket() {
        "socket"
    } else {
        "file"
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn fill(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Offset of the first byte where the two files differ (a length difference counts at
/// the shorter length), streamed so large files do not have to fit in memory.
fn first_difference(a: &Path, b: &Path) -> std::io::Result<Option<u64>> {
    const BUF: usize = 1 << 20;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut offset = 0u64;
    loop {
        let (na, nb) = (fill(&mut fa, &mut ba)?, fill(&mut fb, &mut bb)?);
        if let Some(i) = ba[..na.min(nb)]
            .iter()
            .zip(&bb[..na.min(nb)])
            .position(|(x, y)| x != y)
        {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

/// Groups of paths sharing an inode, as sorted lists of relative paths. An inode whose
/// other links are outside the tree is not a group: only the partition within the tree
/// is compared.
fn link_groups(entries: &[(PathBuf, fs::Metadata)]) -> Vec<Vec<PathBuf>> {
    let mut by_ino: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for (p, m) in entries {
        if !m.is_dir() && m.nlink() > 1 {
            by_ino
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(p.clone());
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    groups
}

/// Every difference between two trees, one human-readable line each (empty when
/// identical). Never follows symlinks. The roots' own metadata is not compared, only
/// what is below them. Per entry: type, mode & 0o7777, owner, mtime with nanoseconds (all
/// types), all xattrs, symlink target, device number, file size and content, and for a
/// file that is sparse in `expected` that `actual` did not fill its holes (at most 16
/// more 512-byte blocks). Across the tree: names (as bytes) and hard-link groups.
pub fn compare_trees(expected: &Path, actual: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let e = walk(expected, &mut diffs);
    let a = walk(actual, &mut diffs);
    let a_map: BTreeMap<PathBuf, fs::Metadata> = a.iter().cloned().collect();
    let e_map: BTreeMap<PathBuf, fs::Metadata> = e.iter().cloned().collect();
    for p in a_map.keys().filter(|p| !e_map.contains_key(*p)) {
        diffs.push(format!("{}: unexpected entry", show(p)));
    }
    for (p, em) in &e_map {
        let Some(am) = a_map.get(p) else {
            diffs.push(format!("{}: missing", show(p)));
            continue;
        };
        let (ep, ap) = (expected.join(p), actual.join(p));
        let mut diff = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{}: {what} {x} != {y}", show(p)));
            }
        };
        diff("type", kind(em).into(), kind(am).into());
        if kind(em) != kind(am) {
            continue;
        }
        diff(
            "mode",
            format!("{:o}", em.mode() & 0o7777),
            format!("{:o}", am.mode() & 0o7777),
        );
        diff(
            "owner",
            format!("{}:{}", em.uid(), em.gid()),
            format!("{}:{}", am.uid(), am.gid()),
        );
        diff(
            "mtime",
            format!("{}.{:09}", em.mtime(), em.mtime_nsec()),
            format!("{}.{:09}", am.mtime(), am.mtime_nsec()),
        );
        diff(
            "xattrs",
            format!("{:?}", xattrs(&ep)),
            format!("{:?}", xattrs(&ap)),
        );
        match kind(em) {
            "symlink" => diff(
                "target",
                format!("{:?}", fs::read_link(&ep)),
                format!("{:?}", fs::read_link(&ap)),
            ),
            "char" | "block" => diff("rdev", em.rdev().to_string(), am.rdev().to_string()),
            "file" => {
                diff("size", em.len().to_string(), am.len().to_string());
                match first_difference(&ep, &ap) {
                    Ok(None) => {}
                    Ok(Some(at)) => {
                        diffs.push(format!("{}: content differs from byte {at}", show(p)))
                    }
                    Err(e) => diffs.push(format!("{}: cannot compare content: {e}", show(p))),
                }
                if em.blocks() * 512 < em.len() && am.blocks() > em.blocks() + 16 {
                    diffs.push(format!(
                        "{}: sparse file lost its holes ({} blocks, expected about {})",
                        show(p),
                        am.blocks(),
                        em.blocks()
                    ));
                }
            }
            _ => {}
        }
    }
    let (eg, ag) = (link_groups(&e), link_groups(&a));
    if eg != ag {
        diffs.push(format!("hard-link groups differ: {eg:?} != {ag:?}"));
    }
    diffs
}
