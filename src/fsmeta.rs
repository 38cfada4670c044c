//! Reading filesystem metadata into tree nodes and putting it back on restore: ownership,
//! permission bits (setuid/setgid/sticky), nanosecond mtimes, xattrs (capabilities, POSIX
//! ACLs), symlinks, device nodes, FIFOs, sockets, hard-link identity and sparse extents.
//!
//! Nothing here follows a symlink: every call works on the link itself. All syscalls go
//! through `nix`, `xattr` (whose non-`_deref` functions are the `l*xattr` calls) or std,
//! so this module needs no `unsafe`.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mknod, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence, fchown, fchownat, lseek, mkfifo};
use xattr::FileExt;

use crate::repo::format::tree::{Node, NodeKind, Xattr};

/// Namespace of xattrs that belong to the running system's security modules (SELinux or
/// Smack labels, IMA/EVM) rather than to the data. A restore sets the ones the snapshot
/// has, but never strips one the target's policy put there. `security.capability` is in
/// this namespace too; it is only ever present when a snapshot (or an admin) set it.
const SECURITY_NAMESPACE: &[u8] = b"security.";

fn kind_of(meta: &Metadata) -> NodeKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

/// The filesystem (or the kernel for this kind of inode) has no xattrs of this kind.
/// On Linux ENOTSUP and EOPNOTSUPP are the same number.
fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Names of the xattrs on `path` itself; a filesystem without xattr support has none.
fn xattr_names(path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    names_listed(xattr::list(path))
}

/// The names of a listing; an entry on a filesystem without xattr support has none.
fn names_listed(listed: io::Result<xattr::XAttrs>) -> io::Result<Vec<std::ffi::OsString>> {
    match listed {
        Ok(names) => Ok(names.collect()),
        Err(e) if is_unsupported(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Extended attributes of `path` itself (never its symlink target), sorted by name.
/// A filesystem without xattr support simply has none. Only what the caller may list is
/// seen: `trusted.*` needs CAP_SYS_ADMIN, so a non-root backup does not carry it.
pub fn xattrs_of(path: &Path) -> io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for name in xattr_names(path)? {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            // Removed between list and get.
            Ok(None) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read xattr {}: {e}", name.to_string_lossy()),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Builds a node from lstat metadata, the entry's own xattrs and, for a symlink, its
/// target. Content, hash, extents and subtree are left for the backup pipeline to fill.
pub fn read_node(path: &Path, name: &[u8], meta: &Metadata) -> io::Result<Node> {
    let kind = kind_of(meta);
    let link_target = if kind == NodeKind::Symlink {
        std::fs::read_link(path)?.as_os_str().as_bytes().to_vec()
    } else {
        Vec::new()
    };
    Ok(Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        // The kernel keeps nanoseconds in 0..1e9, so this never truncates.
        mtime_nsec: meta.mtime_nsec() as u32,
        ctime_sec: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
        inode: meta.ino(),
        size: if kind == NodeKind::File {
            meta.len()
        } else {
            0
        },
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            meta.rdev()
        } else {
            0
        },
        xattrs: xattrs_of(path)?,
        link_target,
        // Directories always have nlink > 1 (their `.` entries); they cannot be hard links.
        hardlink: (kind != NodeKind::Dir && meta.nlink() > 1).then_some(meta.ino()),
        content: Vec::new(),
        extents: None,
        file_hash: None,
        subtree: None,
    })
}

/// Data extents `(offset, length)` of a sparse file via SEEK_DATA/SEEK_HOLE; `None` for a
/// dense file. Only files with fewer allocated bytes than their size are asked, so dense
/// files cost no syscall. An all-hole file gives `Some(vec![])`.
///
/// Extents are as the filesystem reports them (block-aligned on ext4/xfs), so they may
/// include a few zero bytes around the written data; the last one never passes `size`.
/// Moves the file offset; readers are expected to use positioned reads.
pub fn data_extents(file: &File, meta: &Metadata) -> io::Result<Option<Vec<(u64, u64)>>> {
    let size = meta.len();
    if size == 0 || meta.blocks().saturating_mul(512) >= size {
        return Ok(None);
    }
    let Ok(end_of_file) = i64::try_from(size) else {
        return Ok(None);
    };
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    while pos < end_of_file {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            // No data at or after `pos`: only a hole remains (or the file shrank).
            Err(Errno::ENXIO) => break,
            // A filesystem without SEEK_DATA: read it as dense, which is always correct.
            Err(Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= end_of_file {
            break;
        }
        let hole = lseek(file, data, Whence::SeekHole)?;
        let end = hole.min(end_of_file);
        if end > data {
            extents.push((data as u64, (end - data) as u64));
        }
        if hole <= pos {
            // Cannot happen on a sane filesystem; never loop forever on an insane one.
            return Ok(None);
        }
        pos = hole;
    }
    // Few blocks but no holes: compressed or inline data (btrfs, ext4 inline_data).
    if extents.len() == 1 && extents[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(extents))
}

/// Creates a symlink, FIFO, device node or socket at `path`, which must not exist (the
/// kernel reports EEXIST). Permission bits start at 0600 and are set by `apply_metadata`,
/// so nothing is ever more open than the snapshot says, not even briefly.
pub fn create_special(path: &Path, node: &Node) -> io::Result<()> {
    let perm = Mode::from_bits_truncate(0o600);
    match node.kind {
        NodeKind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&node.link_target), path),
        NodeKind::Fifo => mkfifo(path, perm).map_err(io::Error::from),
        NodeKind::CharDevice => {
            mknod(path, SFlag::S_IFCHR, perm, node.rdev).map_err(io::Error::from)
        }
        NodeKind::BlockDevice => {
            mknod(path, SFlag::S_IFBLK, perm, node.rdev).map_err(io::Error::from)
        }
        // A socket file is only a name: nothing listens on it after a restore, exactly as
        // after a reboot, but applications that expect the entry find it.
        NodeKind::Socket => mknod(path, SFlag::S_IFSOCK, perm, 0).map_err(io::Error::from),
        NodeKind::File | NodeKind::Dir => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "create_special is for non-regular, non-directory entries",
        )),
    }
}

/// Whether a refusal to set or remove an xattr is the kernel saying this kind of inode
/// cannot carry it at all: `user.*` is only allowed on regular files and directories
/// (EPERM elsewhere), POSIX ACLs are not allowed on symlinks (EOPNOTSUPP). A Linux source
/// cannot have had such an xattr either, so there is nothing to lose by skipping it.
fn refused_for_kind(kind: NodeKind, e: &io::Error) -> bool {
    !matches!(kind, NodeKind::File | NodeKind::Dir)
        && (e.raw_os_error() == Some(libc::EPERM) || is_unsupported(e))
}

/// Makes the entry's xattrs exactly the node's: sets every one the node has and removes
/// the others, because a new entry may have inherited a default ACL from its parent
/// directory that the original never had. LSM labels (`security.*`) are left alone.
fn apply_xattrs(entry: Entry, node: &Node) -> io::Result<()> {
    let mut first_err = None;
    let existing = match entry.xattr_names() {
        Ok(names) => names,
        Err(e) => {
            first_err.get_or_insert(e);
            Vec::new()
        }
    };
    for name in existing {
        let bytes = name.as_bytes();
        if bytes.starts_with(SECURITY_NAMESPACE) || node.xattrs.iter().any(|x| x.name == bytes) {
            continue;
        }
        match entry.remove_xattr(&name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) if refused_for_kind(node.kind, &e) => {}
            Err(e) => {
                first_err.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("cannot remove xattr {}: {e}", name.to_string_lossy()),
                ));
            }
        }
    }
    for x in &node.xattrs {
        match entry.set_xattr(OsStr::from_bytes(&x.name), &x.value) {
            Ok(()) => {}
            Err(e) if refused_for_kind(node.kind, &e) => {}
            Err(e) => {
                first_err.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(&x.name)),
                ));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// chmod that refuses to go through a symlink. glibc emulates AT_SYMLINK_NOFOLLOW via
/// /proc/self/fd and reports EOPNOTSUPP both for a symlink and for a missing /proc; in the
/// second case an lstat decides, and a plain chmod is safe for a non-symlink.
fn chmod_nofollow(path: &Path, mode: Mode) -> io::Result<()> {
    match fchmodat(AT_FDCWD, path, mode, FchmodatFlags::NoFollowSymlink) {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP) => {
            if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "entry is a symlink, refusing to chmod through it",
                ));
            }
            fchmodat(AT_FDCWD, path, mode, FchmodatFlags::FollowSymlink).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies ownership, xattrs, permission bits and mtime to an existing entry, never
/// following a symlink. The order is the kernel's: chown clears setuid/setgid and
/// `security.capability`, so it comes first; setting an ACL rewrites the group bits, so
/// chmod comes after the xattrs; anything else touches ctime/mtime, so times come last
/// (atime is set to the mtime). Symlinks get ownership, the xattrs Linux allows on them
/// (`trusted.*`, `security.*`) and times; their mode does not exist.
///
/// Every step is tried even when an earlier one failed, so one refused xattr does not
/// also cost the mode and times; the first error is returned. When ownership could not be
/// set, setuid/setgid are dropped: they would otherwise grant the restoring user's ids.
pub fn apply_metadata(path: &Path, node: &Node) -> io::Result<()> {
    apply(Entry::Path(path), node, None)
}

/// `apply_metadata` through an open regular file: a restore sets the metadata of the
/// files it wrote on the descriptor it wrote them with, which saves a path lookup per
/// call (and glibc's /proc-based emulation of a no-follow chmod) on every file. `now` is
/// the file's metadata as it stands: an owner and a mode that are already right are not
/// set again, which saves two inode updates per file when the restoring user owns them.
pub fn apply_file_metadata(file: &File, node: &Node, now: &std::fs::Metadata) -> io::Result<()> {
    let owned = now.uid() == node.uid && now.gid() == node.gid;
    apply(
        Entry::File(file),
        node,
        owned.then_some(now.mode() & 0o7777),
    )
}

/// `owned_with_mode`: the entry already has the node's owner, and these mode bits.
fn apply(entry: Entry, node: &Node, owned_with_mode: Option<u32>) -> io::Result<()> {
    let mut first_err: Option<io::Error> = None;
    let owned = match owned_with_mode {
        Some(_) => Ok(()),
        None => entry.chown(Uid::from_raw(node.uid), Gid::from_raw(node.gid)),
    };
    if let Err(e) = owned {
        first_err.get_or_insert(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot chown to {}:{}: {e}", node.uid, node.gid),
        ));
    }
    if let Err(e) = apply_xattrs(entry, node) {
        first_err.get_or_insert(e);
    }
    if node.kind != NodeKind::Symlink {
        let mut mode = node.mode & 0o7777;
        if owned.is_err() {
            mode &= !0o6000;
        }
        if owned_with_mode != Some(mode)
            && let Err(e) = entry.chmod(Mode::from_bits_truncate(mode))
        {
            first_err.get_or_insert(io::Error::new(
                e.kind(),
                format!("cannot chmod to {mode:o}: {e}"),
            ));
        }
    }
    let mtime = TimeSpec::new(node.mtime_sec, i64::from(node.mtime_nsec));
    if let Err(e) = entry.set_mtime(&mtime) {
        first_err.get_or_insert(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot set mtime: {e}"),
        ));
    }
    first_err.map_or(Ok(()), Err)
}

/// What metadata is put on: a path, never followed if it is a symlink, or an open file.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Path(&'a Path),
    File(&'a File),
}

impl Entry<'_> {
    fn chown(self, uid: Uid, gid: Gid) -> nix::Result<()> {
        match self {
            Entry::Path(path) => fchownat(
                AT_FDCWD,
                path,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
            Entry::File(file) => fchown(file, Some(uid), Some(gid)),
        }
    }

    fn chmod(self, mode: Mode) -> io::Result<()> {
        match self {
            Entry::Path(path) => chmod_nofollow(path, mode),
            Entry::File(file) => fchmod(file, mode).map_err(io::Error::from),
        }
    }

    fn set_mtime(self, mtime: &TimeSpec) -> nix::Result<()> {
        match self {
            Entry::Path(path) => utimensat(
                AT_FDCWD,
                path,
                mtime,
                mtime,
                UtimensatFlags::NoFollowSymlink,
            ),
            Entry::File(file) => futimens(file, mtime, mtime),
        }
    }

    fn xattr_names(self) -> io::Result<Vec<std::ffi::OsString>> {
        match self {
            Entry::Path(path) => xattr_names(path),
            Entry::File(file) => names_listed(file.list_xattr()),
        }
    }

    fn remove_xattr(self, name: &OsStr) -> io::Result<()> {
        match self {
            Entry::Path(path) => xattr::remove(path, name),
            Entry::File(file) => file.remove_xattr(name),
        }
    }

    fn set_xattr(self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        match self {
            Entry::Path(path) => xattr::set(path, name, value),
            Entry::File(file) => file.set_xattr(name, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    /// `security.capability` v2 granting cap_net_bind_service, permitted + effective.
    const CAP_NET_BIND_SERVICE: [u8; 20] =
        [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A POSIX ACL in the kernel's xattr format: user::rwx user:1234:rwx group::r-x
    /// mask::rwx other::r-x.
    fn acl_xattr() -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 7u16, u32::MAX),
            (0x02, 7, 1234),
            (0x04, 5, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 5, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn lstat(p: &Path) -> Metadata {
        std::fs::symlink_metadata(p).unwrap()
    }

    fn set_times(p: &Path, sec: i64, nsec: i64) {
        let t = TimeSpec::new(sec, nsec);
        utimensat(AT_FDCWD, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    /// Every entry below `root` in pre-order (parents before children), as (relative
    /// path, node), read with `read_node`.
    fn read_tree(root: &Path) -> Vec<(PathBuf, Node)> {
        fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Node)>) {
            let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let r = rel.join(&name);
                let p = root.join(&r);
                let node = read_node(&p, name.as_bytes(), &lstat(&p)).unwrap();
                let is_dir = node.kind == NodeKind::Dir;
                out.push((r.clone(), node));
                if is_dir {
                    walk(root, &r, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, Path::new(""), &mut out);
        out
    }

    /// The nodes with what a restore cannot keep (inode, ctime) replaced: hard-link ids
    /// become the first path of their group, so the partition is compared, not numbers.
    fn comparable(tree: Vec<(PathBuf, Node)>) -> Vec<(PathBuf, Node)> {
        let mut first: HashMap<u64, u64> = HashMap::new();
        tree.into_iter()
            .enumerate()
            .map(|(i, (p, mut n))| {
                n.hardlink = n.hardlink.map(|id| *first.entry(id).or_insert(i as u64));
                n.inode = 0;
                n.ctime_sec = 0;
                n.ctime_nsec = 0;
                (p, n)
            })
            .collect()
    }

    /// Recreates `nodes` (from `read_tree(src)`) under `dst` the way a restore does:
    /// content copied here, everything else through `create_special`/`apply_metadata`,
    /// directory metadata last and deepest first.
    fn recreate(src: &Path, dst: &Path, nodes: &[(PathBuf, Node)]) {
        let mut linked: HashMap<u64, PathBuf> = HashMap::new();
        let mut dirs = Vec::new();
        for (rel, node) in nodes {
            let (from, to) = (src.join(rel), dst.join(rel));
            match node.kind {
                NodeKind::Dir => {
                    std::fs::create_dir(&to).unwrap();
                    dirs.push((to, node));
                    continue;
                }
                NodeKind::File => {
                    if let Some(first) = node.hardlink.and_then(|id| linked.get(&id)) {
                        std::fs::hard_link(first, &to).unwrap();
                        continue;
                    }
                    if let Some(id) = node.hardlink {
                        linked.insert(id, to.clone());
                    }
                    let input = File::open(&from).unwrap();
                    let output = File::create(&to).unwrap();
                    let extents = data_extents(&input, &input.metadata().unwrap()).unwrap();
                    let extents = extents.unwrap_or(vec![(0, node.size)]);
                    for (offset, len) in extents {
                        let mut buf = vec![0; len as usize];
                        input.read_exact_at(&mut buf, offset).unwrap();
                        output.write_all_at(&buf, offset).unwrap();
                    }
                    output.set_len(node.size).unwrap();
                }
                _ => create_special(&to, node).unwrap(),
            }
            apply_metadata(&to, node).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
        for (to, node) in dirs.iter().rev() {
            apply_metadata(to, node).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
    }

    #[test]
    fn sparse_file_extents_are_found_and_dense_files_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 10 << 20).unwrap();
        f.set_len(20 << 20).unwrap();
        let meta = f.metadata().unwrap();
        let ext = data_extents(&f, &meta).unwrap().expect("sparse");
        assert_eq!(ext.first().unwrap().0, 0);
        assert!(
            ext.iter()
                .any(|&(o, l)| o <= 10 << 20 && o + l >= (10 << 20) + 4096)
        );
        assert!(ext.iter().map(|e| e.1).sum::<u64>() < 1 << 20);
        assert!(ext.iter().all(|&(o, l)| o + l <= 20 << 20));

        let d = dir.path().join("dense");
        std::fs::write(&d, vec![7u8; 100_000]).unwrap();
        let f = File::open(&d).unwrap();
        assert_eq!(data_extents(&f, &f.metadata().unwrap()).unwrap(), None);

        let empty = File::create(dir.path().join("empty")).unwrap();
        assert_eq!(
            data_extents(&empty, &empty.metadata().unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn an_all_hole_file_has_no_extents_and_trailing_data_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("holes")).unwrap();
        f.set_len(5 << 20).unwrap();
        assert_eq!(
            data_extents(&f, &f.metadata().unwrap()).unwrap(),
            Some(vec![])
        );
        // Data only at the very end: the last extent reaches exactly the size.
        f.write_all_at(b"tail", (5 << 20) - 4).unwrap();
        let ext = data_extents(&f, &f.metadata().unwrap()).unwrap().unwrap();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].0 + ext[0].1, 5 << 20);
    }

    #[test]
    fn create_special_refuses_an_existing_path_and_regular_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "keep").unwrap();
        let mut node = read_node(&p, b"x", &lstat(&p)).unwrap();
        assert!(create_special(&p, &node).is_err(), "regular file accepted");
        node.kind = NodeKind::Fifo;
        let e = create_special(&p, &node).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        node.kind = NodeKind::Symlink;
        node.link_target = b"elsewhere".to_vec();
        assert!(create_special(&p, &node).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
    }

    #[test]
    fn metadata_is_captured_and_reapplied_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "x").unwrap();
        xattr::set(&a, "user.k", b"v").unwrap();
        let mut node = read_node(&a, b"a", &lstat(&a)).unwrap();
        assert_eq!(
            node.xattrs,
            vec![Xattr {
                name: b"user.k".to_vec(),
                value: b"v".to_vec()
            }]
        );
        // Ids the test can always chown to: its own.
        let me = lstat(dir.path());
        node.mode = 0o751;
        node.uid = me.uid();
        node.gid = me.gid();
        node.mtime_sec = 1_600_000_000;
        node.mtime_nsec = 123_456_789;
        let b = dir.path().join("b");
        std::fs::write(&b, "x").unwrap();
        xattr::set(&b, "user.stale", b"gone after apply").unwrap();
        apply_metadata(&b, &node).unwrap();
        let m = lstat(&b);
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!((m.atime(), m.atime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!(xattrs_of(&b).unwrap(), node.xattrs);

        // A symlink node carrying a user.* xattr (which Linux refuses on links) still
        // gets its times, and its target is not touched.
        let l = dir.path().join("l");
        let mut link = node.clone();
        link.kind = NodeKind::Symlink;
        link.link_target = b"b".to_vec();
        link.mode = 0o777;
        link.mtime_nsec = 5;
        create_special(&l, &link).unwrap();
        apply_metadata(&l, &link).unwrap();
        assert_eq!(lstat(&b).mode() & 0o7777, 0o751);
        assert_eq!(lstat(&b).mtime_nsec(), 123_456_789);
        assert_eq!(lstat(&l).mtime_nsec(), 5);
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("b"));
    }

    #[test]
    fn a_failed_step_does_not_skip_the_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "x").unwrap();
        let mut node = read_node(&p, b"f", &lstat(&p)).unwrap();
        // Not a valid xattr namespace: every filesystem refuses it.
        node.xattrs = vec![Xattr {
            name: b"bogus.name".to_vec(),
            value: b"v".to_vec(),
        }];
        node.mode = 0o640;
        node.mtime_sec = 1_500_000_000;
        node.mtime_nsec = 42;
        let e = apply_metadata(&p, &node).unwrap_err();
        assert!(e.to_string().contains("bogus.name"), "{e}");
        let m = lstat(&p);
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 42));
    }

    /// Every kind of entry and metadata, read from one tree and recreated in another
    /// whose root has a default ACL (so new entries inherit ACLs the source never had),
    /// comes out equal node for node. Needs root for chown, mknod, trusted.* and
    /// security.capability.
    #[test]
    fn a_tree_with_every_kind_round_trips_through_read_node_and_apply_metadata() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let s = |p: &str| src.join(p);
        std::fs::create_dir_all(s("d/sub/empty")).unwrap();
        std::fs::create_dir_all(s("acl")).unwrap();

        std::fs::write(s("f"), "capable setuid binary").unwrap();
        xattr::set(s("f"), "user.bin", &[0, 1, 255]).unwrap();
        std::os::unix::fs::lchown(s("f"), Some(1234), Some(5678)).unwrap();
        xattr::set(s("f"), "security.capability", &CAP_NET_BIND_SERVICE).unwrap();
        chmod_nofollow(&s("f"), Mode::from_bits_truncate(0o4755)).unwrap();
        std::fs::write(s("d/setgid"), "sgid").unwrap();
        std::os::unix::fs::lchown(s("d/setgid"), Some(0), Some(50)).unwrap();
        chmod_nofollow(&s("d/setgid"), Mode::from_bits_truncate(0o2750)).unwrap();
        chmod_nofollow(&s("d"), Mode::from_bits_truncate(0o1777)).unwrap();
        xattr::set(s("d"), "user.dir", b"on a directory").unwrap();
        std::fs::write(s("acl/file"), "acl").unwrap();
        xattr::set(s("acl/file"), "system.posix_acl_access", &acl_xattr()).unwrap();
        xattr::set(s("acl"), "system.posix_acl_default", &acl_xattr()).unwrap();
        std::fs::write(s("zero"), "").unwrap();
        std::fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), "latin-1").unwrap();
        std::fs::write(src.join(OsStr::from_bytes(b"new\nline")), "nl").unwrap();

        std::fs::write(s("d/h1"), "linked").unwrap();
        std::fs::hard_link(s("d/h1"), s("h2")).unwrap();
        std::fs::hard_link(s("d/h1"), s("d/sub/h3")).unwrap();

        let sparse = File::create(s("sparse")).unwrap();
        sparse.write_all_at(b"head", 0).unwrap();
        sparse.write_all_at(&[0x5a; 8192], 5 << 20).unwrap();
        sparse.set_len(8 << 20).unwrap();
        drop(sparse);

        std::os::unix::fs::symlink("f", s("rel")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", s("d/dangling")).unwrap();
        std::os::unix::fs::lchown(s("rel"), Some(1234), Some(5678)).unwrap();
        xattr::set(s("rel"), "trusted.on-a-link", b"allowed for root").unwrap();

        let perm = Mode::from_bits_truncate(0o640);
        mkfifo(&s("fifo"), perm).unwrap();
        mknod(
            &s("null"),
            SFlag::S_IFCHR,
            perm,
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        mknod(
            &s("loop"),
            SFlag::S_IFBLK,
            perm,
            nix::sys::stat::makedev(7, 200),
        )
        .unwrap();
        mknod(&s("sock"), SFlag::S_IFSOCK, perm, 0).unwrap();

        let mut all: Vec<PathBuf> = read_tree(&src).into_iter().map(|(p, _)| p).collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, p) in all.iter().enumerate() {
            set_times(
                &src.join(p),
                1_600_000_000 + i as i64,
                123_456_789 - i as i64,
            );
        }

        let expected = read_tree(&src);
        let by_name = |n: &str| {
            &expected
                .iter()
                .find(|(p, _)| p == Path::new(n))
                .unwrap_or_else(|| panic!("{n} not read"))
                .1
        };
        assert_eq!(by_name("null").rdev, nix::sys::stat::makedev(1, 3));
        assert_eq!(by_name("rel").link_target, b"f");
        assert_eq!(by_name("sock").kind, NodeKind::Socket);
        assert!(by_name("h2").hardlink.is_some());
        assert_eq!(by_name("d/h1").hardlink, by_name("h2").hardlink);
        assert_eq!(by_name("d").hardlink, None);
        assert_eq!(by_name("sparse").size, 8 << 20);
        assert!(
            by_name("f")
                .xattrs
                .iter()
                .any(|x| x.name == b"security.capability")
        );

        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        xattr::set(&dst, "system.posix_acl_default", &acl_xattr()).unwrap();
        recreate(&src, &dst, &expected);

        let (want, got) = (comparable(expected), comparable(read_tree(&dst)));
        assert_eq!(want.len(), got.len());
        for ((wp, wn), (gp, gn)) in want.iter().zip(&got) {
            assert_eq!(wp, gp);
            assert_eq!(wn, gn, "{} differs", wp.display());
        }
        for (rel, node) in &want {
            if node.kind == NodeKind::File {
                let (a, b) = (src.join(rel), dst.join(rel));
                assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            }
        }
        assert!(lstat(&dst.join("sparse")).blocks() <= lstat(&src.join("sparse")).blocks() + 16);
    }
}
