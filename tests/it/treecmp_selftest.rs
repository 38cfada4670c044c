//! Checks the integration tests' tree comparison itself: a faithful copy (`cp -a`) of the
//! fixture shows no difference, and every kind of damage a restore could do is reported,
//! with nothing reported about the entries that were left alone.

use crate::common::treecmp;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn run(cmd: &str, args: &[&OsStr]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?} failed");
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Gives `path` the mtime `like` has, so a mutation shows up only as what it changed.
fn copy_mtime(like: &Path, path: &Path) {
    let m = fs::symlink_metadata(like).unwrap();
    set_mtime(path, m.mtime(), m.mtime_nsec());
}

fn copy_with_cp(src: &Path, dst: &Path) {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    run("cp", &[OsStr::new("-a"), &from, dst.as_os_str()]);
}

#[test]
fn a_faithful_copy_has_no_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    treecmp::build_fixture(&src);
    assert_eq!(treecmp::compare_trees(&src, &src), Vec::<String>::new());
    fs::create_dir(&dst).unwrap();
    copy_with_cp(&src, &dst);
    // The roots' own metadata is not part of the comparison.
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime(&dst, 1, 1);
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "cp -a copy differs: {diffs:#?}");
}

#[test]
fn every_kind_of_damage_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    treecmp::build_fixture(&src);
    fs::create_dir(&dst).unwrap();
    copy_with_cp(&src, &dst);
    let d = |p: &str| dst.join(p);
    let s = |p: &str| src.join(p);

    // Structural damage first; it changes directory mtimes, which are put back below.
    fs::remove_dir(d("empty/nested/deeper")).unwrap();
    fs::write(d("etc/extra"), "not in the source").unwrap();
    fs::rename(
        dst.join(OsStr::from_bytes(b"caf\xe9-latin1")),
        d("cafe-latin1"),
    )
    .unwrap();
    fs::remove_file(d("dev/fifo")).unwrap();
    fs::write(d("dev/fifo"), "").unwrap();
    fs::remove_file(d("dev/loop-like")).unwrap();
    nix::sys::stat::mknod(
        &d("dev/loop-like"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(7, 201),
    )
    .unwrap();
    fs::remove_file(d("bin/dangling-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist/either", d("bin/dangling-link")).unwrap();
    // Break the hard-link group: links/three becomes its own copy.
    fs::remove_file(d("links/three")).unwrap();
    fs::copy(s("links/three"), d("links/three")).unwrap();
    // Fill the holes of the sparse file with the zeros they read as.
    let content = fs::read(s("sparse.img")).unwrap();
    fs::remove_file(d("sparse.img")).unwrap();
    fs::write(d("sparse.img"), &content).unwrap();
    // Same size, one byte flipped in the middle.
    let big = fs::OpenOptions::new()
        .write(true)
        .open(d("bin/large.bin"))
        .unwrap();
    let mut byte = [0u8];
    fs::File::open(s("bin/large.bin"))
        .unwrap()
        .read_exact_at(&mut byte, 1_500_000)
        .unwrap();
    big.write_all_at(&[!byte[0]], 1_500_000).unwrap();
    drop(big);
    fs::write(d("etc/conf.d/empty.conf"), "x").unwrap();

    for path in [
        "empty/nested",
        "etc",
        "dev",
        "dev/fifo",
        "dev/loop-like",
        "bin",
        "bin/dangling-link",
        "links",
        "links/three",
        "sparse.img",
        "bin/large.bin",
        "etc/conf.d",
        "etc/conf.d/empty.conf",
    ] {
        copy_mtime(&s(path), &d(path));
    }
    // chown/chmod/xattr changes do not touch any mtime.
    fs::set_permissions(d("bin/setuid"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::lchown(d("etc/owned"), Some(1234), Some(0)).unwrap();
    xattr::remove(d("etc/app.conf"), "user.origin").unwrap();
    xattr::set(d("etc"), "user.dir-note", b"changed").unwrap();
    xattr::remove(d("bin/cap"), "security.capability").unwrap();
    xattr::remove(d("bin/relative-link"), "trusted.link-note").unwrap();
    run(
        "setfacl",
        &[OsStr::new("-b"), d("acl-dir/file").as_os_str()],
    );
    run("setfacl", &[OsStr::new("-k"), d("acl-dir").as_os_str()]);
    // One nanosecond off on a file, a directory and a symlink.
    for path in ["zero-length", "shared/tmp", "bin/absolute-link"] {
        let m = fs::symlink_metadata(s(path)).unwrap();
        set_mtime(&d(path), m.mtime(), m.mtime_nsec() + 1);
    }

    let diffs = treecmp::compare_trees(&src, &dst);
    let expected: &[(&str, &str)] = &[
        ("\"empty/nested/deeper\"", "missing"),
        ("\"etc/extra\"", "unexpected entry"),
        ("\"caf\\xE9-latin1\"", "missing"),
        ("\"cafe-latin1\"", "unexpected entry"),
        ("\"dev/fifo\"", "type fifo != file"),
        ("\"dev/loop-like\"", "rdev"),
        ("\"bin/dangling-link\"", "target"),
        ("hard-link groups differ", "links/three"),
        ("\"sparse.img\"", "lost its holes"),
        ("\"bin/large.bin\"", "content differs from byte 1500000"),
        ("\"etc/conf.d/empty.conf\"", "size 0 != 1"),
        ("\"etc/conf.d/empty.conf\"", "content differs from byte 0"),
        ("\"bin/setuid\"", "mode 4755 != 755"),
        ("\"etc/owned\"", "owner 1234:5678 != 1234:0"),
        ("\"etc/app.conf\"", "xattrs"),
        ("\"etc\"", "xattrs"),
        ("\"bin/cap\"", "xattrs"),
        ("\"bin/relative-link\"", "xattrs"),
        ("\"acl-dir/file\"", "xattrs"),
        ("\"acl-dir\"", "xattrs"),
        ("\"zero-length\"", "mtime"),
        ("\"shared/tmp\"", "mtime"),
        ("\"bin/absolute-link\"", "mtime"),
    ];
    for (who, what) in expected {
        assert!(
            diffs.iter().any(|d| d.starts_with(who) && d.contains(what)),
            "{who}: {what} not reported in {diffs:#?}"
        );
    }
    // Nothing else: every line is about one of the damaged entries. (The setfacl -b on
    // acl-dir/file also rewrote its group bits from the ACL mask, hence its mode line.)
    for line in &diffs {
        assert!(
            expected.iter().any(|(who, _)| line.starts_with(who))
                || line.starts_with("\"acl-dir/file\": mode"),
            "unexpected difference: {line}"
        );
    }
}
