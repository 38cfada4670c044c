//! The scanner: walks the source in name order, reuses unchanged files from the parent
//! snapshot, chunks the rest and hands new blobs to the pipeline; builds the trees.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Sender;
use walkdir::WalkDir;

use super::exclude::Exclude;
use super::pipeline::RawBlob;
use super::read::{
    DIRECT_FILE_MIN, DirectReads, ExtentReader, ReadError, TeeHasher, open_for_backup,
};
use super::readahead::READAHEAD_FILE_MAX;
use super::usable_parent_tree;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::format::index::Index;
use crate::repo::format::pack::BlobKind;
use crate::repo::format::snapshot::Summary;
use crate::repo::format::tree::{Node, NodeKind, Tree};
use crate::repo::{Repository, TREES_AT_ONCE};
use crate::{fsmeta, repo::chunk};

/// Soft-error messages kept verbatim in the snapshot; the rest are only counted.
const MAX_ERROR_MESSAGES: usize = 1000;

/// One directory being built: its own node and the children seen so far.
struct Frame {
    node: Node,
    children: Vec<Node>,
    /// The same directory in the parent snapshot, for the unchanged-file shortcut.
    parent: Option<Arc<Tree>>,
    /// Subdirectory trees of `parent` loaded ahead, by tree id (see `parent_subtree`).
    ahead: HashMap<BlobId, Arc<Tree>>,
}

pub(super) struct Scanner<'a> {
    pub(super) repo: &'a Repository,
    pub(super) index: &'a Index,
    pub(super) exclude: &'a Exclude,
    /// Blobs sent into the pipeline during this run.
    pub(super) pending: HashSet<BlobId>,
    /// Packs that supplied blobs this run reused.
    pub(super) reused_packs: HashSet<PackId>,
    pub(super) tx: Sender<RawBlob>,
    pub(super) summary: Summary,
    pub(super) error_count: u64,
    pub(super) progress: Option<indicatif::ProgressBar>,
    pub(super) readahead: Option<Sender<(PathBuf, Option<Arc<Tree>>)>>,
}

/// A problem with one file that is recorded and skipped.
struct SoftError(String);

fn pipeline_closed() -> Error {
    Error::Other("the upload pipeline stopped".into())
}

impl<'a> Scanner<'a> {
    /// A scanner sending new blobs to `tx`, with `problems` (bad excludes) already
    /// recorded as soft errors of the source at `root`.
    pub(super) fn new(
        repo: &'a Repository,
        index: &'a Index,
        exclude: &'a Exclude,
        tx: Sender<RawBlob>,
        problems: Vec<String>,
        root: &Path,
    ) -> Scanner<'a> {
        let mut s = Scanner {
            repo,
            index,
            exclude,
            pending: HashSet::new(),
            reused_packs: HashSet::new(),
            tx,
            summary: Summary::default(),
            error_count: 0,
            progress: None,
            readahead: None,
        };
        for p in problems {
            s.soft_error(root, p);
        }
        s
    }

    fn soft_error(&mut self, path: &Path, msg: impl std::fmt::Display) {
        let line = format!("{}: {msg}", path.display());
        tracing::warn!("{line}");
        self.error_count += 1;
        if self.summary.errors.len() < MAX_ERROR_MESSAGES {
            self.summary.errors.push(line);
        }
    }

    /// Whether the blob is stored or on its way; a stored one's pack is remembered, so
    /// the snapshot can be checked against marks made while this backup ran.
    fn known(&mut self, id: &BlobId) -> bool {
        if let Some((pack, _)) = self.index.get(id) {
            self.reused_packs.insert(pack);
            return true;
        }
        self.pending.contains(id)
    }

    /// Queues a blob unless the repository already has it or it is already on its way.
    fn store(&mut self, kind: BlobKind, raw: Vec<u8>) -> Result<BlobId> {
        let id = BlobId(self.repo.keys().id_of(&raw));
        if !self.known(&id) {
            self.pending.insert(id);
            self.tx
                .send(RawBlob { kind, id, raw })
                .map_err(|_| pipeline_closed())?;
        }
        Ok(id)
    }

    /// Walks the tree in name order and returns the root directory's node.
    pub(super) fn walk(
        &mut self,
        root: &Path,
        root_meta: &std::fs::Metadata,
        parent_root: Option<Tree>,
    ) -> Result<Node> {
        let mut stack: Vec<Frame> = Vec::new();
        let walker = WalkDir::new(root)
            .follow_links(false)
            .same_file_system(true)
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let mut entries = walker.into_iter();
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.to_path_buf());
                    if e.depth() == 0 {
                        return Err(Error::io(
                            "cannot read",
                            path,
                            io::Error::other(e.to_string()),
                        ));
                    }
                    self.soft_error(&path, format!("cannot read: {e}"));
                    continue;
                }
            };
            let depth = entry.depth();
            while stack.len() > depth {
                self.finish_dir(&mut stack)?;
            }
            let path = entry.path();
            let meta = if depth == 0 {
                root_meta.clone()
            } else {
                match entry.metadata() {
                    Ok(m) => m,
                    Err(e) => {
                        self.soft_error(path, format!("cannot stat: {e}"));
                        continue;
                    }
                }
            };
            let name = if depth == 0 {
                b"/".to_vec()
            } else {
                entry.file_name().as_bytes().to_vec()
            };
            if depth > 0 {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(path)
                    .as_os_str()
                    .as_bytes();
                if self.exclude.excludes(rel, &name, path, &meta) {
                    self.summary.excluded += 1;
                    if meta.is_dir() {
                        entries.skip_current_dir();
                    }
                    continue;
                }
            }
            let mut node = match fsmeta::read_node(path, &name, &meta) {
                Ok(n) => n,
                Err(e) => {
                    self.soft_error(path, format!("cannot read metadata: {e}"));
                    continue;
                }
            };
            if node.kind == NodeKind::Dir {
                let parent = if depth == 0 {
                    parent_root.clone().map(Arc::new)
                } else {
                    self.parent_subtree(stack.last_mut(), &node.name)
                };
                if let Some(ra) = &self.readahead {
                    // Never wait for it: readahead is an optimization only.
                    let _ = ra.try_send((path.to_path_buf(), parent.clone()));
                }
                self.summary.dirs += 1;
                stack.push(Frame {
                    node,
                    children: Vec::new(),
                    parent,
                    ahead: HashMap::new(),
                });
                continue;
            }
            let Some(top) = stack.last_mut() else {
                return Err(Error::Other(format!(
                    "{} is not a directory",
                    root.display()
                )));
            };
            let prev = top.parent.as_ref().and_then(|t| {
                t.nodes
                    .binary_search_by(|n| n.name.as_slice().cmp(&node.name))
                    .ok()
                    .map(|i| t.nodes[i].clone())
            });
            if node.kind == NodeKind::File {
                // A hard error (the upload pipeline stopped) ends the walk; it is not a
                // problem of this file.
                match self.file_content(path, &meta, &mut node, prev.as_ref())? {
                    Ok(()) => {}
                    Err(SoftError(msg)) => {
                        self.soft_error(path, msg);
                        continue;
                    }
                }
                self.summary.files += 1;
                self.summary.total_bytes += node.size;
            } else {
                self.summary.others += 1;
            }
            if let Some(top) = stack.last_mut() {
                top.children.push(node);
            }
        }
        while stack.len() > 1 {
            self.finish_dir(&mut stack)?;
        }
        let mut root_frame = stack
            .pop()
            .ok_or_else(|| Error::Other("walk produced no root".into()))?;
        root_frame.node.subtree = Some(self.store_tree(std::mem::take(&mut root_frame.children))?);
        Ok(root_frame.node)
    }

    /// The parent snapshot's tree of subdirectory `name` of `top`. It is loaded together
    /// with the next TREES_AT_ONCE subdirectories' (the walk goes in name order, as the
    /// tree does): on S3 each is a request, and one at a time made a no-change backup of a
    /// few hundred directories wait seconds on round trips.
    fn parent_subtree(&self, top: Option<&mut Frame>, name: &[u8]) -> Option<Arc<Tree>> {
        let top = top?;
        let t = top.parent.as_ref()?;
        let i = t
            .nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()?;
        let sub = t.nodes[i].subtree?;
        if let Some(tree) = top.ahead.remove(&sub) {
            return Some(tree);
        }
        let group: Vec<BlobId> = t.nodes[i..]
            .iter()
            .filter_map(|n| n.subtree)
            .take(TREES_AT_ONCE)
            .collect();
        let mut loaded = group.iter().zip(self.repo.load_trees(self.index, &group));
        // The first is this directory's own tree; the others that fail are tried again
        // when the walk gets to them.
        let (_, own) = loaded.next()?;
        top.ahead = loaded
            .filter_map(|(id, t)| Some((*id, Arc::new(t.ok()?))))
            .collect();
        usable_parent_tree(own).map(Arc::new)
    }

    fn store_tree(&mut self, nodes: Vec<Node>) -> Result<BlobId> {
        let bytes = Tree { nodes }.encode();
        self.store(BlobKind::Tree, bytes)
    }

    fn finish_dir(&mut self, stack: &mut Vec<Frame>) -> Result<()> {
        let Some(mut frame) = stack.pop() else {
            return Ok(());
        };
        frame.node.subtree = Some(self.store_tree(frame.children)?);
        if let Some(top) = stack.last_mut() {
            top.children.push(frame.node);
        }
        Ok(())
    }

    /// Fills a file node's content, reusing the parent's when the file is unchanged. The
    /// inner error is a problem of this file (skipped); the outer one ends the backup.
    fn file_content(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        node: &mut Node,
        prev: Option<&Node>,
    ) -> Result<Result<(), SoftError>> {
        if let Some(p) = prev
            && unchanged(p, node)
            && p.content.iter().all(|c| self.known(c))
        {
            node.content = p.content.clone();
            node.extents = p.extents.clone();
            node.file_hash = p.file_hash;
            self.summary.files_unmodified += 1;
            return Ok(Ok(()));
        }
        if prev.is_some_and(|p| p.kind == NodeKind::File) {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        // A file that changes while it is read is read once more; if it changes again it is
        // left out rather than stored in a state that never existed on disk.
        let mut last = String::new();
        for _attempt in 0..2 {
            match self.read_file(path, meta, node) {
                Ok(true) => return Ok(Ok(())),
                Ok(false) => {
                    last = "changed while being read (twice); not included in this snapshot".into()
                }
                Err(ReadError::Soft(e)) => return Ok(Err(SoftError(e))),
                Err(ReadError::Hard(e)) => return Err(e),
            }
        }
        Ok(Err(SoftError(last)))
    }

    /// Reads and chunks one file. `Ok(false)` means it changed while being read.
    fn read_file(
        &mut self,
        path: &Path,
        before: &std::fs::Metadata,
        node: &mut Node,
    ) -> Result<bool, ReadError> {
        let file =
            open_for_backup(path).map_err(|e| ReadError::Soft(format!("cannot open: {e}")))?;
        let opened = file
            .metadata()
            .map_err(|e| ReadError::Soft(format!("cannot stat: {e}")))?;
        if !opened.is_file() || opened.ino() != before.ino() {
            return Ok(false);
        }
        let direct = opened.len() >= DIRECT_FILE_MIN && DirectReads::enable(&file);
        if !direct && opened.len() > READAHEAD_FILE_MAX {
            // A larger readahead window: large files are read start to end exactly once.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
            );
        }
        let extents = fsmeta::data_extents(&file, &opened)
            .map_err(|e| ReadError::Soft(format!("cannot map holes: {e}")))?;
        let size = opened.len();
        let mut reader = ExtentReader::new(&file, size, extents.clone());
        if direct {
            reader.direct = Some(DirectReads::new());
        }
        let params = self.repo.config().chunker;
        let seed = self.repo.keys().chunker_seed;
        let mut content = Vec::new();
        let mut read_err = None;
        {
            let mut tee = TeeHasher {
                inner: &mut reader,
                bytes: 0,
            };
            let data_bytes = extents
                .as_ref()
                .map_or(size, |e| e.iter().map(|x| x.1).sum());
            for c in chunk::chunks(&mut tee, data_bytes, params, seed) {
                match c {
                    Ok(data) => {
                        if let Some(p) = &self.progress {
                            p.inc(data.len() as u64);
                        }
                        content.push(self.store(BlobKind::Data, data).map_err(ReadError::Hard)?);
                    }
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
            self.summary.bytes_read += tee.bytes;
        }
        if let Some(e) = read_err {
            return Err(ReadError::Soft(format!("read failed: {e}")));
        }
        let after = file
            .metadata()
            .map_err(|e| ReadError::Soft(format!("cannot stat: {e}")))?;
        if after.len() != size
            || after.len() != before.len()
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec()
        {
            return Ok(false);
        }
        node.size = size;
        node.content = content;
        node.extents = extents;
        node.file_hash = Some(reader.finish_hash());
        Ok(true)
    }
}

fn unchanged(prev: &Node, now: &Node) -> bool {
    prev.kind == NodeKind::File
        && prev.size == now.size
        && prev.mtime_sec == now.mtime_sec
        && prev.mtime_nsec == now.mtime_nsec
        && prev.ctime_sec == now.ctime_sec
        && prev.ctime_nsec == now.ctime_nsec
        && prev.inode == now.inode
}
