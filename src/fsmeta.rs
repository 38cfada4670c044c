//! Reading filesystem metadata into tree nodes and putting it back on restore: ownership,
//! permission bits (setuid/setgid/sticky), nanosecond mtimes, xattrs (capabilities, POSIX
//! ACLs), symlinks, device nodes, FIFOs, hard-link identity and sparse-file extents.
//!
//! Nothing here follows a symlink: every call works on the link itself.

use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};

use crate::tree::{Node, NodeKind, Xattr};

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

/// Extended attributes of `path` itself (never its symlink target), sorted by name.
/// A filesystem without xattr support simply has none.
pub fn xattrs_of(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            // Removed between list and get.
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Builds a node from lstat metadata; content, hash, extents and subtree are left for the
/// backup pipeline to fill.
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
        hardlink: (kind != NodeKind::Dir && meta.nlink() > 1).then_some(meta.ino()),
        content: Vec::new(),
        extents: None,
        file_hash: None,
        subtree: None,
    })
}

/// Data extents of a sparse file via SEEK_DATA/SEEK_HOLE; `None` for a dense file. Only
/// files with fewer allocated blocks than their size are asked, so dense files cost nothing.
pub fn data_extents(file: &File, meta: &Metadata) -> io::Result<Option<Vec<(u64, u64)>>> {
    let size = meta.len();
    if size == 0 || meta.blocks() * 512 >= size {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a valid, owned descriptor has no memory-safety implications.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(None); // filesystem without SEEK_DATA: treat as dense
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            extents.push((data as u64, end - data as u64));
        }
        pos = hole;
    }
    // The reader uses pread, so the file offset moved by lseek does not matter.
    if extents.len() == 1 && extents[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(extents))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Creates a symlink, FIFO, device node or socket at `path` (which must not exist).
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
        NodeKind::Socket => mknod(path, SFlag::S_IFSOCK, perm, 0).map_err(io::Error::from),
        NodeKind::File | NodeKind::Dir => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "create_special is for non-regular, non-directory entries",
        )),
    }
}

/// Applies ownership, xattrs, permission bits and mtime, in the order the kernel needs:
/// chown clears setuid/setgid and `security.capability`, so it comes first; times last.
pub fn apply_metadata(path: &Path, node: &Node) -> io::Result<()> {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(node.uid)),
        Some(Gid::from_raw(node.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)?;
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value) {
            // Linux refuses user.* xattrs on symlinks; nothing can carry them there.
            if node.kind == NodeKind::Symlink && e.raw_os_error() == Some(libc::EPERM) {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("cannot set xattr {}: {e}", String::from_utf8_lossy(&x.name)),
            ));
        }
    }
    if node.kind != NodeKind::Symlink {
        let c = cpath(path)?;
        // SAFETY: `c` is a valid NUL-terminated path; chmod only reads it.
        if unsafe { libc::chmod(c.as_ptr(), node.mode & 0o7777) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mtime = TimeSpec::new(node.mtime_sec, node.mtime_nsec as i64);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_extents_are_found_and_dense_files_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 10 << 20).unwrap();
        f.set_len(20 << 20).unwrap();
        let meta = f.metadata().unwrap();
        let ext = data_extents(&f, &meta).unwrap().expect("sparse");
        assert_eq!(ext.first().unwrap().0, 0);
        assert!(
            ext.iter()
                .any(|&(o, _)| o <= 10 << 20 && o + 4096 >= 10 << 20)
        );
        assert!(ext.iter().map(|e| e.1).sum::<u64>() < 1 << 20);
        let d = dir.path().join("dense");
        std::fs::write(&d, vec![7u8; 100_000]).unwrap();
        let f = File::open(&d).unwrap();
        assert_eq!(data_extents(&f, &f.metadata().unwrap()).unwrap(), None);
    }

    #[test]
    fn metadata_is_captured_and_reapplied_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "x").unwrap();
        xattr::set(&a, "user.k", b"v").unwrap();
        let mut node = read_node(&a, b"a", &std::fs::symlink_metadata(&a).unwrap()).unwrap();
        assert_eq!(
            node.xattrs,
            vec![Xattr {
                name: b"user.k".to_vec(),
                value: b"v".to_vec()
            }]
        );
        node.mode = 0o4751;
        node.uid = 1234;
        node.gid = 5678;
        node.mtime_sec = 1_600_000_000;
        node.mtime_nsec = 123_456_789;
        let b = dir.path().join("b");
        std::fs::write(&b, "x").unwrap();
        apply_metadata(&b, &node).unwrap();
        let m = std::fs::symlink_metadata(&b).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4751, 1234, 5678));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!(xattr::get(&b, "user.k").unwrap().unwrap(), b"v");

        let l = dir.path().join("l");
        let mut link = node.clone();
        link.kind = NodeKind::Symlink;
        link.link_target = b"b".to_vec();
        link.xattrs.clear();
        create_special(&l, &link).unwrap();
        apply_metadata(&l, &link).unwrap();
        // The target kept its own mode: the link was not followed.
        assert_eq!(
            std::fs::symlink_metadata(&b).unwrap().mode() & 0o7777,
            0o4751
        );
        assert_eq!(
            std::fs::symlink_metadata(&l).unwrap().mtime_nsec(),
            123_456_789
        );
    }
}
