//! The FUSE operations over the inode table: attributes, directory listings, links,
//! xattrs, SEEK_DATA/SEEK_HOLE and reads. Reads fetch only the blobs covering the range
//! (plus read-ahead when a handle reads sequentially) through the blob cache; a blob that
//! does not verify fails that read with EIO and is logged with the file's path.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyXattr, Request,
};

use crate::backend::Kind;
use crate::ids::{BlobId, SnapshotId};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind};

use super::cache::BlobCache;
use super::content::{FileLayout, copy_from_blobs};
use super::layout;
use super::tree::{Children, ROOT, Table, What};

/// How long the kernel may keep what it was told about snapshot content (which never
/// changes) and about the layout directories (which change when snapshots come).
const CONTENT_TTL: Duration = Duration::from_secs(300);
const LAYOUT_TTL: Duration = Duration::from_secs(1);
/// A layout directory looked into this long after the last listing lists the snapshots
/// again, so new ones appear without remounting.
pub const REFRESH_AFTER: Duration = Duration::from_secs(3);
/// Data fetched ahead when a handle reads sequentially: one ranged read serves many of
/// the kernel's 128 KiB requests.
const READ_AHEAD_BYTES: u64 = 4 * 1024 * 1024;
/// A read this close to where the handle's last one ended counts as sequential (the
/// kernel's read-ahead requests may arrive a little out of order).
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;

/// What the mount counted while it ran.
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub bytes_served: AtomicU64,
    pub io_errors: AtomicU64,
    pub refreshes: AtomicU64,
}

struct OpenFile {
    ino: u64,
    layout: FileLayout,
    /// Where the last read of this handle ended.
    last_end: AtomicU64,
}

pub struct MountFs {
    repo: Repository,
    index: RwLock<Arc<Index>>,
    table: Mutex<Table>,
    snapshots: Mutex<Snapshots>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    cache: BlobCache,
    pub counters: Arc<Counters>,
    volume: Option<String>,
    host: Option<String>,
}

struct Snapshots {
    /// The snapshot object names of the last listing.
    names: HashSet<String>,
    listed: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
    }
}

impl MountFs {
    pub fn new(
        repo: Repository,
        index: Index,
        snaps: Vec<(SnapshotId, Snapshot)>,
        names: HashSet<String>,
        cache_bytes: usize,
        volume: Option<String>,
        host: Option<String>,
    ) -> MountFs {
        let fs = MountFs {
            repo,
            index: RwLock::new(Arc::new(index)),
            table: Mutex::new(Table::new()),
            snapshots: Mutex::new(Snapshots {
                names,
                listed: Instant::now(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cache: BlobCache::new(cache_bytes),
            counters: Arc::new(Counters::default()),
            volume,
            host,
        };
        fs.apply(snaps);
        fs
    }

    fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshots the mount shows: those of `--volume` and `--host` when given.
    fn apply(&self, snaps: Vec<(SnapshotId, Snapshot)>) {
        let snaps: Vec<_> = snaps
            .into_iter()
            .filter(|(_, s)| self.volume.as_ref().is_none_or(|v| &s.volume == v))
            .filter(|(_, s)| self.host.as_ref().is_none_or(|h| &s.host == h))
            .collect();
        let l = layout::build(&snaps);
        let by_id: HashMap<SnapshotId, Snapshot> = snaps.into_iter().collect();
        lock(&self.table).apply(&l, &by_id);
    }

    /// Lists the snapshots again when the last listing is older than REFRESH_AFTER; new
    /// ones bring their index files with them, so the index is read again first.
    fn refresh_if_stale(&self) {
        let Ok(mut s) = self.snapshots.try_lock() else {
            // Another request is listing right now.
            return;
        };
        if s.listed.elapsed() < REFRESH_AFTER {
            return;
        }
        s.listed = Instant::now();
        let names: HashSet<String> =
            match self.repo.block_on(self.repo.backend().list(Kind::Snapshot)) {
                Ok(objs) => objs.into_iter().map(|o| o.name).collect(),
                Err(e) => {
                    tracing::warn!(
                        "cannot list the snapshots again (the mount shows the last listing): {e}"
                    );
                    return;
                }
            };
        if names == s.names {
            return;
        }
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let grown = !names.is_subset(&s.names);
        if grown {
            match crate::ops::prune::load_index_for_read(&self.repo) {
                Ok(i) => *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(i),
                Err(e) => {
                    tracing::warn!("cannot read the index again (new snapshots stay hidden): {e}");
                    return;
                }
            }
        }
        match self.repo.list_snapshots() {
            Ok((snaps, problems)) => {
                for p in problems {
                    tracing::warn!("{p}");
                }
                self.apply(snaps);
                s.names = names;
            }
            Err(e) => tracing::warn!("cannot read the snapshots again: {e}"),
        }
    }

    fn is_layout(&self, ino: u64) -> bool {
        matches!(
            lock(&self.table).get(ino).map(|i| &i.what),
            Some(What::Layout { .. } | What::Latest { .. })
        )
    }

    fn attr(&self, t: &Table, ino: u64) -> Option<(FileAttr, Duration)> {
        let i = t.get(ino)?;
        let newest = time(t.newest, 0);
        let base = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: newest,
            mtime: newest,
            ctime: newest,
            crtime: newest,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        Some(match &i.what {
            What::Layout { .. } => (base, LAYOUT_TTL),
            What::Latest { target } => (
                FileAttr {
                    kind: FileType::Symlink,
                    perm: 0o777,
                    nlink: 1,
                    size: target.len() as u64,
                    ..base
                },
                LAYOUT_TTL,
            ),
            What::Node { root, node, .. } => {
                let (m, c) = (
                    time(node.mtime_sec, node.mtime_nsec),
                    time(node.ctime_sec, node.ctime_nsec),
                );
                let nlink = match (node.kind, node.hardlink) {
                    (NodeKind::Dir, _) => 2,
                    (_, Some(g)) => t
                        .link_counts
                        .get(root)
                        .and_then(|c| c.get(&g).copied())
                        .unwrap_or(1),
                    _ => 1,
                };
                let size = match node.kind {
                    NodeKind::File => node.size,
                    NodeKind::Symlink => node.link_target.len() as u64,
                    _ => 0,
                };
                let blocks = match node.kind {
                    NodeKind::File => FileLayout::stored(node).div_ceil(512),
                    _ => 0,
                };
                (
                    FileAttr {
                        size,
                        blocks,
                        atime: m,
                        mtime: m,
                        ctime: c,
                        crtime: m,
                        kind: file_type(node.kind),
                        perm: (node.mode & 0o7777) as u16,
                        nlink,
                        uid: node.uid,
                        gid: node.gid,
                        rdev: node.rdev as u32,
                        ..base
                    },
                    CONTENT_TTL,
                )
            }
        })
    }

    /// The entries of snapshot directory `ino`, its tree loaded on first use.
    fn children(&self, ino: u64) -> Result<Children, Errno> {
        let (root, node) = {
            let t = lock(&self.table);
            match t.get(ino).map(|i| &i.what) {
                Some(What::Node {
                    children: Some(c), ..
                }) => return Ok(c.clone()),
                Some(What::Node { root, node, .. }) if node.kind == NodeKind::Dir => {
                    (*root, node.clone())
                }
                Some(_) => return Err(Errno::ENOTDIR),
                None => return Err(Errno::ENOENT),
            }
        };
        let index = self.index();
        let Some(subtree) = node.subtree else {
            return Err(Errno::EIO);
        };
        let tree = self.repo.load_tree(&index, &subtree).map_err(|e| {
            let path = lock(&self.table).path_of(ino);
            tracing::warn!("{path}: cannot read this directory: {e}");
            self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            Errno::EIO
        })?;
        let need_counts = tree.nodes.iter().any(|n| n.hardlink.is_some())
            && !lock(&self.table).link_counts.contains_key(&root);
        if need_counts {
            let root_tree = lock(&self.table).get(root).and_then(|i| match &i.what {
                What::Node { node, .. } => node.subtree,
                _ => None,
            });
            if let Some(r) = root_tree {
                let counts = self.link_counts(&index, r);
                lock(&self.table).link_counts.insert(root, Arc::new(counts));
            }
        }
        Ok(lock(&self.table).add_children(ino, root, tree.nodes))
    }

    /// The size of every hard-link group of a snapshot: its whole tree is walked once, the
    /// first time a directory holding a hard link is listed. A tree that cannot be read
    /// leaves its links uncounted (they count 1), it is not an error of the listing.
    fn link_counts(&self, index: &Index, root: BlobId) -> HashMap<u64, u32> {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        let mut todo = vec![root];
        while !todo.is_empty() {
            let at = todo.len().saturating_sub(crate::repo::TREES_AT_ONCE);
            let batch: Vec<BlobId> = todo.drain(at..).collect();
            for tree in self.repo.load_trees(index, &batch).into_iter().flatten() {
                for n in tree.nodes {
                    if let Some(s) = n.subtree {
                        todo.push(s);
                    } else if let Some(g) = n.hardlink {
                        *counts.entry(g).or_default() += 1;
                    }
                }
            }
        }
        counts
    }

    fn node(&self, ino: u64) -> Option<Arc<Node>> {
        match lock(&self.table).get(ino).map(|i| &i.what) {
            Some(What::Node { node, .. }) => Some(node.clone()),
            _ => None,
        }
    }

    /// The blobs `span` of an open file, from the cache or fetched; a sequential reader
    /// also gets the following blobs up to READ_AHEAD_BYTES, fetched with the same reads.
    fn blobs(
        &self,
        f: &OpenFile,
        span: std::ops::Range<usize>,
        sequential: bool,
    ) -> Result<Vec<Arc<Vec<u8>>>, Errno> {
        let l = &f.layout;
        let mut got: Vec<Option<Arc<Vec<u8>>>> =
            span.clone().map(|i| self.cache.get(&l.blobs[i])).collect();
        let missing: Vec<usize> = span
            .clone()
            .filter(|&i| got[i - span.start].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(got.into_iter().flatten().collect());
        }
        let mut fetch = missing.clone();
        if sequential {
            let mut ahead = 0u64;
            let mut i = span.end;
            while i < l.blobs.len() && ahead < READ_AHEAD_BYTES && !self.cache.contains(&l.blobs[i])
            {
                ahead += l.blob_range(i).1;
                fetch.push(i);
                i += 1;
            }
        }
        let index = self.index();
        let ids = |at: &[usize]| at.iter().map(|&i| l.blobs[i]).collect::<Vec<BlobId>>();
        let read = match self.repo.read_blobs(&index, &ids(&fetch)) {
            // A damaged blob ahead must not fail what was asked for.
            Err(_) if fetch.len() > missing.len() => {
                fetch = missing;
                self.repo.read_blobs(&index, &ids(&fetch))
            }
            r => r,
        };
        let data = read.map_err(|e| {
            let path = lock(&self.table).path_of(f.ino);
            tracing::warn!("{path}: cannot read its content: {e}");
            self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            Errno::EIO
        })?;
        for (i, d) in fetch.into_iter().zip(data) {
            let d = Arc::new(d);
            self.cache.insert(l.blobs[i], d.clone());
            if span.contains(&i) {
                got[i - span.start] = Some(d);
            }
        }
        got.into_iter().map(|b| b.ok_or(Errno::EIO)).collect()
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        lock(&self.handles).get(&fh.0).cloned()
    }

    fn xattrs(&self, ino: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.node(ino)
            .map(|n| {
                n.xattrs
                    .iter()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Answers an xattr request: the size when asked for it, the bytes when they fit.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // ACLs are xattrs of the snapshot; without this the kernel answers
        // system.posix_acl_* itself (EOPNOTSUPP) instead of asking.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = parent.0;
        let name = name.as_bytes();
        if self.is_layout(parent) {
            self.refresh_if_stale();
            let t = lock(&self.table);
            let found = match t.get(parent).map(|i| &i.what) {
                Some(What::Layout { path, names }) => {
                    let n = String::from_utf8_lossy(name);
                    names
                        .iter()
                        .any(|x| *x == n)
                        .then(|| {
                            let child = if path.is_empty() {
                                n.to_string()
                            } else {
                                format!("{path}/{n}")
                            };
                            t.layout_inode(&child)
                        })
                        .flatten()
                }
                _ => None,
            };
            match found.and_then(|ino| self.attr(&t, ino)) {
                Some((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
                None => reply.error(Errno::ENOENT),
            }
            return;
        }
        let children = match self.children(parent) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let Ok(at) = children.binary_search_by(|(n, _)| n.as_slice().cmp(name)) else {
            return reply.error(Errno::ENOENT);
        };
        let t = lock(&self.table);
        match self.attr(&t, children[at].1) {
            Some((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            self.refresh_if_stale();
        }
        let t = lock(&self.table);
        match self.attr(&t, ino.0) {
            Some((a, ttl)) => reply.attr(&ttl, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match lock(&self.table).get(ino.0).map(|i| &i.what) {
            Some(What::Latest { target }) => reply.data(target.as_bytes()),
            Some(What::Node { node, .. }) if node.kind == NodeKind::Symlink => {
                reply.data(&node.link_target)
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        if node.kind != NodeKind::File {
            return reply.error(Errno::EINVAL);
        }
        let layout = match FileLayout::new(&self.index(), &node) {
            Ok(l) => l,
            Err(e) => {
                let path = lock(&self.table).path_of(ino.0);
                tracing::warn!("{path}: cannot open it: {e}");
                self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                return reply.error(Errno::EIO);
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(OpenFile {
                ino: ino.0,
                layout,
                last_end: AtomicU64::new(0),
            }),
        );
        // Snapshot content never changes: what the kernel cached stays valid.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let (pieces, n) = f.layout.pieces(offset, u64::from(size));
        let last = f.last_end.swap(offset + n as u64, Ordering::Relaxed);
        let sequential = offset.abs_diff(last) <= SEQUENTIAL_SLACK;
        // Holes are the zeros this starts with.
        let mut out = vec![0u8; n];
        for p in pieces {
            let span = f.layout.blob_span(p.data, p.len);
            match self.blobs(&f, span.clone(), sequential) {
                Ok(blobs) => copy_from_blobs(
                    &f.layout,
                    span,
                    &blobs,
                    p.data,
                    &mut out[p.out..p.out + p.len],
                ),
                Err(e) => return reply.error(e),
            }
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_served
            .fetch_add(n as u64, Ordering::Relaxed);
        reply.data(&out);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = ino.0;
        let mut entries: Vec<(u64, FileType, Vec<u8>)> = Vec::new();
        if self.is_layout(ino) {
            self.refresh_if_stale();
            let t = lock(&self.table);
            let Some(i) = t.get(ino) else {
                return reply.error(Errno::ENOENT);
            };
            entries.push((ino, FileType::Directory, b".".to_vec()));
            entries.push((i.parent, FileType::Directory, b"..".to_vec()));
            if let What::Layout { path, names } = &i.what {
                for n in names {
                    let child = if path.is_empty() {
                        n.clone()
                    } else {
                        format!("{path}/{n}")
                    };
                    if let Some(c) = t.layout_inode(&child)
                        && let Some((a, _)) = self.attr(&t, c)
                    {
                        entries.push((c, a.kind, n.clone().into_bytes()));
                    }
                }
            }
        } else {
            let children = match self.children(ino) {
                Ok(c) => c,
                Err(e) => return reply.error(e),
            };
            let t = lock(&self.table);
            let parent = t.get(ino).map_or(ROOT, |i| i.parent);
            entries.push((ino, FileType::Directory, b".".to_vec()));
            entries.push((parent, FileType::Directory, b"..".to_vec()));
            for (name, c) in children.iter() {
                if let Some((a, _)) = self.attr(&t, *c) {
                    entries.push((*c, a.kind, name.clone()));
                }
            }
        }
        for (i, (c, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(c), i as u64 + 1, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self
            .xattrs(ino.0)
            .into_iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
        {
            Some((_, v)) => reply_xattr(reply, size, &v),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        for (n, _) in self.xattrs(ino.0) {
            list.extend_from_slice(&n);
            list.push(0);
        }
        reply_xattr(reply, size, &list);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(f) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        match f.layout.seek(off, data) {
            Some(o) => reply.offset(o as i64),
            None => reply.error(Errno::ENXIO),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 0);
    }
}
