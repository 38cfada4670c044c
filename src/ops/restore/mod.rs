//! `restore` and `export`: turn a snapshot back into files, into a Docker volume, or into a
//! tar stream.
//!
//! Safety rests on two things: tree names are validated when decoded (single components,
//! strictly sorted, see `Tree::decode`), and every entry is created exclusively inside a
//! target that starts empty, so nothing can be written through a symlink restored earlier
//! or outside the target.

pub mod host;
mod packs;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::unbounded;
use globset::{Glob, GlobSet, GlobSetBuilder};

use self::packs::{FileTarget, Planner, Span, SpanWriter, restore_span};
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::ids::BlobId;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind, Tree};
use crate::repo::{Repository, TREES_AT_ONCE};

/// Which entries to restore: `--include` / `--exclude` globs over paths inside the snapshot.
#[derive(Debug, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// Exact paths of the entries to restore (a drill's sample), on top of the globs.
    paths: Option<std::collections::HashSet<Vec<u8>>>,
}

fn globset(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_start_matches('/');
        b.add(
            Glob::new(p)
                .map_err(|e| Error::Usage(format!("{flag} {p:?} is not a valid glob: {e}")))?,
        );
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Usage(format!("{flag}: {e}")))
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter> {
        Ok(Filter {
            include: globset(include, "--include")?,
            exclude: globset(exclude, "--exclude")?,
            paths: None,
        })
    }

    /// Restores exactly these paths (and the directories leading to them).
    pub fn only(paths: std::collections::HashSet<Vec<u8>>) -> Filter {
        Filter {
            paths: Some(paths),
            ..Filter::default()
        }
    }

    fn excluded(&self, path: &[u8]) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|g| g.is_match(Path::new(OsStr::from_bytes(path))))
    }

    fn included(&self, path: &[u8]) -> bool {
        self.include
            .as_ref()
            .is_none_or(|g| g.is_match(Path::new(OsStr::from_bytes(path))))
            && self.paths.as_ref().is_none_or(|p| p.contains(path))
    }
}

/// Visits every entry of a snapshot in pre-order (a directory before its contents, names
/// in order). The visitor returns whether to descend into a directory. Trees that cannot be
/// read are returned as `(path, error)` and their contents skipped.
pub fn walk(
    repo: &Repository,
    index: &Index,
    root: &Node,
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<Vec<(Vec<u8>, Error)>> {
    walk_with(repo, index, root, visit, &mut TreeCache::default())
}

/// `walk`, with trees kept in or taken from `cache`.
fn walk_with(
    repo: &Repository,
    index: &Index,
    root: &Node,
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
    cache: &mut TreeCache,
) -> Result<Vec<(Vec<u8>, Error)>> {
    let mut problems = Vec::new();
    let mut path = Vec::new();
    if let Some(t) = root.subtree {
        let mut w = Walk {
            repo,
            index,
            visit,
            problems: &mut problems,
            cache,
        };
        w.tree(&t, None, &mut path)?;
    }
    Ok(problems)
}

/// Trees loaded before the walk needs them. On S3 each load is a round trip, so:
/// - a restore walks the snapshot twice, and the first walk keeps the trees it visited for
///   the second, up to a budget;
/// - whenever the walk loads trees, the trees of their subdirectories are loaded with them
///   (the walk asks for those next), up to a budget: a walk of 20 directories of 15
///   subdirectories each made 21 round trips one after the other, now 2.
#[derive(Default)]
struct TreeCache {
    /// Whether the walk keeps the trees it has visited (the first) or takes them (the next).
    keep: bool,
    kept: HashMap<BlobId, Tree>,
    /// Sizes of the trees kept so far (plaintext, from the index).
    kept_bytes: u64,
    /// Trees loaded ahead of the walk, with their sizes.
    ahead: HashMap<BlobId, (Tree, u64)>,
    ahead_bytes: u64,
}

/// Tree bytes (plaintext, before decoding) a `TreeCache` keeps for the next walk, at most.
const KEPT_TREE_BYTES: u64 = 16 * 1024 * 1024;
/// Tree bytes loaded ahead of the walk, at most.
const AHEAD_TREE_BYTES: u64 = 4 * 1024 * 1024;

impl TreeCache {
    fn keeping() -> Self {
        TreeCache {
            keep: true,
            ..Default::default()
        }
    }

    fn size(index: &Index, id: &BlobId) -> u64 {
        index
            .get(id)
            .map_or(0, |(_, loc)| u64::from(loc.raw_length))
    }

    /// Called with each tree the walk has finished.
    fn put(&mut self, index: &Index, id: &BlobId, tree: Tree) {
        let size = Self::size(index, id);
        if self.keep && self.kept_bytes + size <= KEPT_TREE_BYTES {
            self.kept_bytes += size;
            self.kept.insert(*id, tree);
        }
    }

    fn take(&mut self, id: &BlobId) -> Option<Tree> {
        if let Some((tree, size)) = self.ahead.remove(id) {
            self.ahead_bytes -= size;
            return Some(tree);
        }
        self.kept.remove(id)
    }

    /// The trees of `ids`, in order: those at hand, and the others loaded together.
    fn load(&mut self, repo: &Repository, index: &Index, ids: &[BlobId]) -> Vec<Result<Tree>> {
        let mut got: Vec<Option<Result<Tree>>> =
            ids.iter().map(|id| self.take(id).map(Ok)).collect();
        let missing: Vec<BlobId> = ids
            .iter()
            .zip(&got)
            .filter(|(_, t)| t.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            let mut loaded = repo.load_trees(index, &missing).into_iter();
            for slot in got.iter_mut().filter(|t| t.is_none()) {
                *slot = loaded.next();
            }
        }
        let got: Vec<Result<Tree>> = got
            .into_iter()
            .map(|t| t.expect("load_trees returns one result per id"))
            .collect();
        self.load_ahead(repo, index, &got);
        got
    }

    /// Loads the subdirectories' trees of `trees` that are not at hand, within the budget.
    /// One that fails is left out: the walk loads it again when it gets there, and reports.
    fn load_ahead(&mut self, repo: &Repository, index: &Index, trees: &[Result<Tree>]) {
        let mut next: Vec<BlobId> = Vec::new();
        let mut sizes: Vec<u64> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = self.ahead_bytes;
        let subtrees = trees
            .iter()
            .flatten()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| n.subtree);
        for id in subtrees {
            let size = Self::size(index, &id);
            if bytes + size > AHEAD_TREE_BYTES {
                break;
            }
            if !self.ahead.contains_key(&id) && !self.kept.contains_key(&id) && seen.insert(id) {
                bytes += size;
                next.push(id);
                sizes.push(size);
            }
        }
        if next.is_empty() {
            return;
        }
        let loaded = repo.load_trees(index, &next);
        for ((id, tree), size) in next.into_iter().zip(loaded).zip(sizes) {
            if let Ok(tree) = tree {
                self.ahead_bytes += size;
                self.ahead.insert(id, (tree, size));
            }
        }
    }
}

/// Deepest directory nesting a walk follows. A backup reads paths whole, so PATH_MAX
/// (4096 bytes, at least two per level) bounds what it can store to about 2048 levels; a
/// deeper chain of trees can only be crafted, and following it would exhaust the stack.
pub const MAX_TREE_DEPTH: usize = 4096;

/// One walk's state.
struct Walk<'a, 'v> {
    repo: &'a Repository,
    index: &'a Index,
    visit: &'v mut dyn FnMut(&[u8], &Node) -> Result<bool>,
    problems: &'a mut Vec<(Vec<u8>, Error)>,
    cache: &'a mut TreeCache,
}

impl Walk<'_, '_> {
    fn tree(
        &mut self,
        tree: &BlobId,
        loaded: Option<Result<Tree>>,
        path: &mut Vec<u8>,
    ) -> Result<()> {
        let depth = path.iter().filter(|&&b| b == b'/').count() + usize::from(!path.is_empty());
        if depth >= MAX_TREE_DEPTH {
            self.problems.push((
                path.clone(),
                Error::corrupt(
                    format!("tree {tree}"),
                    format!(
                        "nested deeper than {MAX_TREE_DEPTH} directories, which no backup writes"
                    ),
                ),
            ));
            return Ok(());
        }
        let loaded = loaded.unwrap_or_else(|| {
            let mut one = self
                .cache
                .load(self.repo, self.index, std::slice::from_ref(tree));
            one.pop().expect("one result for one tree")
        });
        let t = match loaded {
            Ok(t) => t,
            Err(e) => {
                self.problems.push((path.clone(), e));
                return Ok(());
            }
        };
        // The subdirectories' trees are loaded a group at a time, together: on S3 each is a
        // request, and loading them one by one made the walk of a few hundred directories
        // wait seconds on round trips while the restore workers had nothing to do.
        let subtrees: Vec<BlobId> = t.nodes.iter().filter_map(|n| n.subtree).collect();
        let mut next_sub = 0;
        let mut ahead: std::collections::VecDeque<Result<Tree>> = Default::default();
        for node in &t.nodes {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            let descend = (self.visit)(path, node)?;
            if let Some(sub) = &node.subtree {
                if ahead.is_empty() {
                    let group = &subtrees[next_sub..subtrees.len().min(next_sub + TREES_AT_ONCE)];
                    ahead.extend(self.cache.load(self.repo, self.index, group));
                }
                next_sub += 1;
                let loaded = ahead.pop_front();
                if descend {
                    self.tree(sub, loaded, path)?;
                }
            }
            path.truncate(len);
        }
        self.cache.put(self.index, tree, t);
        Ok(())
    }
}

/// Yields a file's data as runs `(logical offset, bytes)`, fetching and verifying one
/// chunk at a time; holes between extents are simply absent.
pub struct DataRuns<'a> {
    repo: &'a Repository,
    index: &'a Index,
    node: &'a Node,
    extents: Vec<(u64, u64)>,
    next_chunk: usize,
    /// Chunks read ahead in one go (see `Repository::read_blobs`), next one last.
    ahead: Vec<Vec<u8>>,
    chunk: Vec<u8>,
    chunk_pos: usize,
    extent: usize,
    extent_used: u64,
}

impl<'a> DataRuns<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, node: &'a Node) -> Self {
        DataRuns {
            repo,
            index,
            node,
            extents: node.extents.clone().unwrap_or_else(|| vec![(0, node.size)]),
            next_chunk: 0,
            ahead: Vec::new(),
            chunk: Vec::new(),
            chunk_pos: 0,
            extent: 0,
            extent_used: 0,
        }
    }

    pub fn next_run(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.chunk_pos >= self.chunk.len() {
            if self.ahead.is_empty() {
                /// Chunks fetched per batch: a few MiB, so memory stays small.
                const READ_AHEAD_CHUNKS: usize = 64;
                let content = &self.node.content;
                let end = content.len().min(self.next_chunk + READ_AHEAD_CHUNKS);
                if self.next_chunk >= end {
                    return Ok(None);
                }
                self.ahead = self
                    .repo
                    .read_blobs(self.index, &content[self.next_chunk..end])?;
                self.ahead.reverse();
            }
            let Some(chunk) = self.ahead.pop() else {
                return Ok(None);
            };
            self.chunk = chunk;
            self.chunk_pos = 0;
            self.next_chunk += 1;
            if self.chunk.is_empty() {
                return self.next_run();
            }
        }
        loop {
            let Some(&(start, len)) = self.extents.get(self.extent) else {
                return Err(Error::corrupt(
                    "file content",
                    "more data than the file's extents hold",
                ));
            };
            if self.extent_used >= len {
                self.extent += 1;
                self.extent_used = 0;
                continue;
            }
            let n = ((len - self.extent_used) as usize).min(self.chunk.len() - self.chunk_pos);
            let offset = start + self.extent_used;
            if offset + n as u64 > self.node.size {
                return Err(Error::corrupt(
                    "file content",
                    "data beyond the file's size",
                ));
            }
            let run = self.chunk[self.chunk_pos..self.chunk_pos + n].to_vec();
            self.chunk_pos += n;
            self.extent_used += n as u64;
            return Ok(Some((offset, run)));
        }
    }
}

/// The logical content of a file (holes read as zeros), for tar export and verification.
pub struct FileReader<'a> {
    runs: DataRuns<'a>,
    size: u64,
    pos: u64,
    current: Option<(u64, Vec<u8>)>,
}

impl<'a> FileReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, node: &'a Node) -> Self {
        FileReader {
            runs: DataRuns::new(repo, index, node),
            size: node.size,
            pos: 0,
            current: None,
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.size || out.is_empty() {
                return Ok(0);
            }
            let current_end = self.current.as_ref().map(|(o, d)| o + d.len() as u64);
            if current_end.is_none_or(|end| end <= self.pos) {
                self.current = self
                    .runs
                    .next_run()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if self.current.is_none() {
                    // Trailing hole.
                    let n = ((self.size - self.pos) as usize).min(out.len());
                    out[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                continue;
            }
            let (off, data) = self.current.as_ref().expect("checked above");
            if self.pos < *off {
                let n = ((off - self.pos) as usize).min(out.len());
                out[..n].fill(0);
                self.pos += n as u64;
                return Ok(n);
            }
            let start = (self.pos - off) as usize;
            let n = (data.len() - start).min(out.len());
            out[..n].copy_from_slice(&data[start..start + n]);
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    pub verified_files: u64,
    pub errors: Vec<String>,
    /// Files created but then removed because their content could not be restored whole
    /// (counted in `files` by the walk, taken out again at the end).
    #[serde(skip)]
    pub discarded: u64,
    /// Paths inside the snapshot, filled only for `--dry-run`.
    pub planned: Vec<String>,
}

#[derive(Debug, Default)]
pub struct RestoreOptions {
    pub filter: Filter,
    pub verify: bool,
    pub dry_run: bool,
    /// Create character and block device nodes. Off by default: a device node in a
    /// snapshot (crafted, or copied from a container that had one) would open that device
    /// on this host to whoever can reach the restored directory. Overlay whiteouts (char
    /// 0:0) are not devices and are always restored.
    pub devices: bool,
    /// Advanced by the bytes written (one bar may span several restores).
    pub progress: Option<indicatif::ProgressBar>,
}

/// A directory on the walk stack: created on disk only once something inside it is restored.
struct PendingDir {
    depth: usize,
    path: PathBuf,
    node: Node,
    created: bool,
    /// Matched an include pattern itself or through an ancestor: everything below is restored.
    selected: bool,
}

/// Files at least this large are restored by a first pass over the snapshot, before
/// everything else. Creating a file is the walk's work and restoring its data the workers':
/// with many small files first in name order, the workers would wait for the walk to create
/// them while the large files' data, most of the work, waited behind them.
const LARGE_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Large files only, and the directories they are in.
    Large,
    /// Everything the first pass did not restore.
    Rest,
}

/// Taken by the first pass: a regular file of `LARGE_FILE_BYTES` or more that is not a
/// hard link (all the names of a hard-linked file are restored in the same pass).
fn is_large(node: &Node) -> bool {
    node.kind == NodeKind::File && node.hardlink.is_none() && node.size >= LARGE_FILE_BYTES
}

/// What the first pass did, for the second.
#[derive(Default)]
struct FirstPass {
    done: bool,
    /// Directories it created; the second pass must not create them again.
    dirs: std::collections::HashSet<PathBuf>,
    /// Paths it could not reach (a tree it could not read, a directory it could not make):
    /// the second pass takes the large files below them too.
    missed: Vec<Vec<u8>>,
}

impl FirstPass {
    /// Whether the first pass took this entry (restored it, or reported why not).
    fn restored(&self, rel: &[u8], node: &Node) -> bool {
        self.done
            && is_large(node)
            && !self.missed.iter().any(|m| {
                m.is_empty()
                    || (rel.starts_with(m) && matches!(rel.get(m.len()), None | Some(b'/')))
            })
    }
}

/// Restores `snap` into `target`, which must not exist or be an empty directory.
pub fn to_dir(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    if !opts.dry_run {
        prepare_target(target)?;
    }
    // Workers fetch spans of packs, then decrypt, decompress and write what is in them: on
    // a remote store they mostly wait for reads, so as many as the backend serves at once,
    // and at least one per core.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(repo.backend().read_concurrency());
    // Spans queued for the workers; the planner bounds them by windows in flight. Should
    // every worker stop, the channel drops what is queued, which frees the windows, and the
    // planner's next send fails: the walk never waits forever.
    let (tx, rx) = unbounded::<Span>();
    let mut dir_meta: Vec<(PathBuf, Node)> = Vec::new();
    let (walk_result, worker_reports) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || {
                    let mut r = RestoreReport::default();
                    let mut buf = Vec::new();
                    let mut writer = SpanWriter::new(opts.verify, opts.progress.as_ref());
                    for span in rx {
                        restore_span(repo, index, span, &mut writer, &mut r, &mut buf);
                    }
                    r
                })
            })
            .collect();
        drop(rx);
        let mut planner = Planner::new(index, tx, opts.verify);
        let mut links: HashMap<u64, PathBuf> = HashMap::new();
        let mut walk_pass =
            |pass: Pass, planner: &mut Planner, made: &mut FirstPass, trees: &mut TreeCache| {
                let mut stack: Vec<PendingDir> = Vec::new();
                let depth_of = |p: &[u8]| p.iter().filter(|&&b| b == b'/').count();
                let visit = &mut |rel: &[u8], node: &Node| {
                    let depth = depth_of(rel);
                    while stack.last().is_some_and(|d| d.depth >= depth) {
                        stack.pop();
                    }
                    if opts.filter.excluded(rel) {
                        return Ok(false);
                    }
                    let selected =
                        opts.filter.included(rel) || stack.last().is_some_and(|d| d.selected);
                    // Joined only for what is made here: the first pass passes over 50k
                    // small files, the second over every large one.
                    let path = || target.join(OsStr::from_bytes(rel));
                    if node.kind == NodeKind::Dir {
                        let path = path();
                        stack.push(PendingDir {
                            depth,
                            created: made.dirs.contains(&path),
                            path,
                            node: node.clone(),
                            selected,
                        });
                        // A directory that cannot be made (a name too long for the target's
                        // filesystem, a path past PATH_MAX) costs its subtree, not the restore.
                        // The first pass makes only the directories its files are in.
                        if selected
                            && pass == Pass::Rest
                            && let Err(e) =
                                ensure_dirs(&mut stack, &mut dir_meta, &mut report, opts.dry_run)
                        {
                            report.errors.push(subtree_skipped(rel, &e));
                            stack.pop();
                            return Ok(false);
                        }
                        return Ok(true);
                    }
                    let wanted = match pass {
                        Pass::Large => is_large(node),
                        Pass::Rest => !made.restored(rel, node),
                    };
                    if !selected || !wanted {
                        return Ok(false);
                    }
                    let path = path();
                    let display = String::from_utf8_lossy(rel).into_owned();
                    let fresh = stack.iter().rev().take_while(|d| !d.created).count();
                    let dirs = ensure_dirs(&mut stack, &mut dir_meta, &mut report, opts.dry_run);
                    if pass == Pass::Large {
                        // Also those made before one failed: the second pass must not make
                        // them again.
                        let new_dirs = stack[stack.len() - fresh..].iter().filter(|d| d.created);
                        made.dirs.extend(new_dirs.map(|d| d.path.clone()));
                    }
                    if let Err(e) = dirs {
                        match pass {
                            // The second pass meets the directory again and says what failed.
                            Pass::Large => made.missed.push(rel.to_vec()),
                            Pass::Rest => report.errors.push(format!("{display}: {e}")),
                        }
                        return Ok(false);
                    }
                    if opts.dry_run {
                        report.planned.push(display);
                        match node.kind {
                            NodeKind::File => {
                                report.files += 1;
                                report.bytes += node.size;
                            }
                            _ => report.others += 1,
                        }
                        return Ok(false);
                    }
                    if let Err(e) = refuse_device(node, opts.devices).and_then(|()| {
                        restore_entry(
                            index,
                            node,
                            &path,
                            &display,
                            &mut links,
                            planner,
                            &mut report,
                        )
                    }) {
                        report.errors.push(format!("{display}: {e}"));
                    }
                    Ok(false)
                };
                walk_with(repo, index, &snap.root, visit, trees)
            };
        let mut first = FirstPass::default();
        let mut trees = TreeCache::keeping();
        let res = (|| {
            if !opts.dry_run {
                // Trees the first pass could not read are reported by the second, which
                // restores their large files too if it can read them then.
                let unread = walk_pass(Pass::Large, &mut planner, &mut first, &mut trees)?;
                first.missed.extend(unread.into_iter().map(|(rel, _)| rel));
                first.done = true;
                planner.flush()?;
            }
            trees.keep = false;
            walk_pass(Pass::Rest, &mut planner, &mut first, &mut trees)
        })();
        let res = res.and_then(|r| planner.flush().map(|()| r));
        drop(planner);
        // A worker that panicked leaves files half written and unreported: the restore
        // must not end as a success.
        let reports: Vec<RestoreReport> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| RestoreReport {
                    errors: vec![
                        "a restore worker stopped on an internal error (a bug: please report \
                         it); files it was writing may be incomplete, so restore again into a \
                         new directory"
                            .into(),
                    ],
                    ..RestoreReport::default()
                })
            })
            .collect();
        (res, reports)
    });
    for (path, e) in walk_result? {
        report.errors.push(subtree_skipped(&path, &e));
    }
    for r in worker_reports {
        report.bytes += r.bytes;
        report.verified_files += r.verified_files;
        report.discarded += r.discarded;
        report.errors.extend(r.errors);
    }
    // Files removed after a failure were counted when the walk created them.
    report.files = report.files.saturating_sub(report.discarded);
    if opts.dry_run {
        return Ok(report);
    }
    // Directory times last, deepest first: creating children changed them.
    for (path, node) in dir_meta.iter().rev() {
        if let Err(e) = fsmeta::apply_metadata(path, node) {
            report.errors.push(format!("{}: {e}", path.display()));
        }
    }
    if opts.filter.include.is_none()
        && opts.filter.exclude.is_none()
        && let Err(e) = fsmeta::apply_metadata(target, &snap.root)
    {
        report.errors.push(format!("{}: {e}", target.display()));
    }
    Ok(report)
}

/// The soft error for a directory whose entries were left out; the snapshot's root shows
/// as `/`, so the message never starts with an empty name.
fn subtree_skipped(rel: &[u8], e: &dyn std::fmt::Display) -> String {
    let shown = if rel.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(rel)
    };
    format!("{shown}: subtree skipped: {e}")
}

fn prepare_target(target: &Path) -> Result<()> {
    match std::fs::read_dir(target) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::Other(format!(
                    "restore target {} is not empty; choose a new or empty directory",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(target)
            .map_err(|e| Error::io("cannot create restore target", target, e)),
        Err(e) => Err(Error::io("cannot open restore target", target, e)),
    }
}

use std::os::unix::fs::DirBuilderExt;

fn ensure_dirs(
    stack: &mut [PendingDir],
    dir_meta: &mut Vec<(PathBuf, Node)>,
    report: &mut RestoreReport,
    dry_run: bool,
) -> Result<()> {
    for d in stack.iter_mut().filter(|d| !d.created) {
        if !dry_run {
            // mkdir fails on anything already there, so no earlier entry can redirect it.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d.path)
                .map_err(|e| Error::io("cannot create directory", &d.path, e))?;
            dir_meta.push((d.path.clone(), d.node.clone()));
        }
        d.created = true;
        report.dirs += 1;
    }
    Ok(())
}

/// Device nodes are created only when asked for (`--devices`): a restored device node
/// opens that device on this host.
fn refuse_device(node: &Node, devices: bool) -> Result<()> {
    if is_device(node) && !devices {
        return Err(Error::Other(format!(
            "device node {}:{} not created (a restored device node opens that device on this \
             host); restore with --devices to create it",
            nix::sys::stat::major(node.rdev),
            nix::sys::stat::minor(node.rdev)
        )));
    }
    Ok(())
}

fn restore_entry(
    index: &Index,
    node: &Node,
    path: &Path,
    display: &str,
    links: &mut HashMap<u64, PathBuf>,
    planner: &mut Planner,
    report: &mut RestoreReport,
) -> Result<()> {
    if node.kind == NodeKind::File {
        if let Some(group) = node.hardlink
            && let Some(first) = links.get(&group)
        {
            std::fs::hard_link(first, path)
                .map_err(|e| Error::io("cannot create hard link", path, e))?;
            report.hardlinks += 1;
            return Ok(());
        }
        check_content(index, node)?;
        // O_EXCL + O_NOFOLLOW: never reuse or follow anything that is already there. The
        // node's permission bits from the start (the owner's read and write added until
        // the metadata is set), so most files need no chmod when finished. Not readable by
        // others meanwhile: the directories stay 0700 until the end.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600 | (node.mode & 0o777))
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("cannot create file", path, e))?;
        if let Some(group) = node.hardlink {
            links.insert(group, path.to_path_buf());
        }
        report.files += 1;
        if node.extents.is_some() {
            // Holes stay holes: the size first, then the data lands on the extents.
            file.set_len(node.size)
                .map_err(|e| Error::io("cannot set the size of", path, e))?;
        }
        if node.content.is_empty() {
            let target = FileTarget::new(path.into(), display.into(), node.clone(), None);
            packs::finish(&target, planner.verify, report, Some(&file));
            return Ok(());
        }
        let file = planner.fds.keep(file);
        let target = Arc::new(FileTarget::new(
            path.to_path_buf(),
            display.to_string(),
            node.clone(),
            file,
        ));
        planner.add(&target)?;
        return Ok(());
    }
    fsmeta::create_special(path, node).map_err(|e| Error::io("cannot create", path, e))?;
    fsmeta::apply_metadata(path, node).map_err(|e| Error::io("cannot set metadata of", path, e))?;
    report.others += 1;
    Ok(())
}

/// A character or block device other than an overlay whiteout (char 0:0, which opens
/// nothing).
fn is_device(node: &Node) -> bool {
    match node.kind {
        NodeKind::CharDevice => node.rdev != 0,
        NodeKind::BlockDevice => true,
        _ => false,
    }
}

/// Checks what a file node claims against what its content holds, before anything is
/// created: the data the index knows for its chunks must be exactly its size (dense) or
/// its extents (sparse, which must be ordered, apart and inside the size). So a crafted
/// node cannot make a restore or an export allocate, write or zero-fill by a claimed size
/// (a "2^60-byte file" with one chunk), and missing data is never padded with zeros.
pub fn check_content(index: &Index, node: &Node) -> Result<()> {
    let mut data = 0u64;
    for id in &node.content {
        let (_, loc) = index.get(id).ok_or_else(|| {
            Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
        })?;
        data += u64::from(loc.raw_length);
    }
    let bad = |why: String| Err(Error::corrupt("file node", why));
    match &node.extents {
        None if data != node.size => bad(format!(
            "claims {} bytes but its chunks hold {data}",
            node.size
        )),
        None => Ok(()),
        Some(extents) => {
            let (mut end, mut sum) = (0u64, 0u64);
            for &(offset, len) in extents {
                let Some(stop) = offset.checked_add(len).filter(|&s| s <= node.size) else {
                    return bad(format!(
                        "extent ({offset}, {len}) passes its size {}",
                        node.size
                    ));
                };
                if offset < end {
                    return bad("extents overlap or are out of order".into());
                }
                (end, sum) = (stop, sum + len);
            }
            if sum != data {
                return bad(format!(
                    "extents hold {sum} bytes but its chunks hold {data}"
                ));
            }
            Ok(())
        }
    }
}

/// Re-reads a restored file and compares its plain BLAKE3 with the snapshot's.
pub(crate) fn verify_file(path: &Path, node: &Node) -> Result<()> {
    let Some(expected) = node.file_hash else {
        return Ok(());
    };
    let got =
        blake3_of_file(path).map_err(|e| Error::io("cannot re-read for --verify", path, e))?;
    if got != expected {
        return Err(Error::Other(format!(
            "{}: content on disk does not match the snapshot's BLAKE3 after restore",
            path.display()
        )));
    }
    Ok(())
}

/// The plain BLAKE3 of a file's content (what the snapshot keeps as `file_hash`).
pub fn blake3_of_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}

/// Writes the snapshot as a tar stream (PAX headers carry nanosecond times, xattrs and
/// long or non-UTF-8 names; hard links become link entries).
pub fn to_tar<W: Write>(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    out: W,
    filter: &Filter,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
    let problems = walk(repo, index, &snap.root, &mut |rel, node| {
        if filter.excluded(rel) {
            return Ok(false);
        }
        if node.kind != NodeKind::Dir && !filter.included(rel) {
            return Ok(false);
        }
        append_tar_entry(
            repo,
            index,
            &mut builder,
            rel,
            node,
            &mut links,
            &mut report,
        )
        .map_err(|e| Error::Other(format!("{}: {e}", String::from_utf8_lossy(rel))))?;
        Ok(true)
    })?;
    for (p, e) in problems {
        report.errors.push(subtree_skipped(&p, &e));
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::Other(format!("cannot finish the tar stream: {e}")))?;
    Ok(report)
}

fn append_tar_entry<W: Write>(
    repo: &Repository,
    index: &Index,
    b: &mut tar::Builder<W>,
    rel: &[u8],
    node: &Node,
    links: &mut HashMap<u64, Vec<u8>>,
    report: &mut RestoreReport,
) -> io::Result<()> {
    // Checked before any header (the PAX one included): a tar entry cannot be taken back
    // once begun, and a file left out must not leave its header to the next entry.
    let linked = node.hardlink.is_some_and(|g| links.contains_key(&g));
    if node.kind == NodeKind::File
        && !linked
        && let Err(e) = check_content(index, node)
    {
        report
            .errors
            .push(format!("{}: skipped: {e}", String::from_utf8_lossy(rel)));
        return Ok(());
    }
    let mut pax: Vec<(String, Vec<u8>)> = vec![(
        "mtime".into(),
        format!("{}.{:09}", node.mtime_sec, node.mtime_nsec).into_bytes(),
    )];
    for x in &node.xattrs {
        // GNU tar and star carry POSIX ACLs as text records, not as raw xattrs.
        let acl_key = match x.name.as_slice() {
            b"system.posix_acl_access" => Some("SCHILY.acl.access"),
            b"system.posix_acl_default" => Some("SCHILY.acl.default"),
            _ => None,
        };
        match acl_key.map(|k| (k, acl_to_text(&x.value))) {
            Some((k, Some(text))) => pax.push((k.to_string(), text.into_bytes())),
            _ => pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(&x.name)),
                x.value.clone(),
            )),
        }
    }
    append_pax(b, &pax, node.mtime_sec.max(0) as u64)?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(node.mode & 0o7777);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    h.set_mtime(node.mtime_sec.max(0) as u64);
    h.set_size(0);
    let path = Path::new(OsStr::from_bytes(rel));
    match node.kind {
        NodeKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            report.dirs += 1;
            b.append_data(&mut h, path, io::empty())
        }
        NodeKind::File => {
            if let Some(g) = node.hardlink {
                if let Some(first) = links.get(&g) {
                    h.set_entry_type(tar::EntryType::Link);
                    report.hardlinks += 1;
                    return b.append_link(&mut h, path, Path::new(OsStr::from_bytes(first)));
                }
                links.insert(g, rel.to_vec());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(node.size);
            report.files += 1;
            report.bytes += node.size;
            b.append_data(&mut h, path, FileReader::new(repo, index, node))
        }
        NodeKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            report.others += 1;
            b.append_link(
                &mut h,
                path,
                Path::new(OsStr::from_bytes(&node.link_target)),
            )
        }
        NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
            h.set_entry_type(match node.kind {
                NodeKind::Fifo => tar::EntryType::Fifo,
                NodeKind::CharDevice => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            if node.kind != NodeKind::Fifo {
                h.set_device_major(nix::sys::stat::major(node.rdev) as u32)?;
                h.set_device_minor(nix::sys::stat::minor(node.rdev) as u32)?;
            }
            report.others += 1;
            b.append_data(&mut h, path, io::empty())
        }
        // tar has no socket type; a socket is only meaningful to the process that bound it.
        NodeKind::Socket => Ok(()),
    }
}

/// Writes a POSIX.1-2001 extended header (`x`) with `records`. The tar crate's own writes
/// one with an empty name and mode 0, which busybox tar refuses ("invalid tar magic"), and
/// the export must unpack with `docker run -i busybox tar x`; GNU tar names these
/// `./PaxHeaders/<file>`, and readers ignore the name.
fn append_pax<W: Write>(
    b: &mut tar::Builder<W>,
    records: &[(String, Vec<u8>)],
    mtime: u64,
) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in records {
        // "LEN key=value\n", where LEN counts the whole record, its own digits included.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeaders/volguard")?;
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data.as_slice())
}

/// Converts a kernel `system.posix_acl_*` value (version 2: a u32 header, then entries of
/// u16 tag, u16 permissions, u32 id) to the text form `acl_from_text` reads. `None` when
/// the bytes are not a valid ACL, in which case the raw xattr is exported instead.
fn acl_to_text(value: &[u8]) -> Option<String> {
    const VERSION: u32 = 2;
    let header = value.get(..4)?;
    if u32::from_le_bytes(header.try_into().ok()?) != VERSION
        || !(value.len() - 4).is_multiple_of(8)
    {
        return None;
    }
    let mut out = Vec::new();
    for e in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(bit, c)| if perm & bit != 0 { c } else { '-' })
            .collect();
        out.push(match tag {
            0x01 => format!("user::{rwx}"),
            0x02 => format!("user:{id}:{rwx}"),
            0x04 => format!("group::{rwx}"),
            0x08 => format!("group:{id}:{rwx}"),
            0x10 => format!("mask::{rwx}"),
            0x20 => format!("other::{rwx}"),
            _ => return None,
        });
    }
    Some(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_xattr_becomes_text_and_garbage_does_not() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 7, 1234),
            (4, 4, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(
            acl_to_text(&v).unwrap(),
            "user::rw-,user:1234:rwx,group::r--,mask::rwx,other::r--"
        );
        assert_eq!(acl_to_text(&v[..7]), None);
        assert_eq!(acl_to_text(b"garbage!"), None);
    }

    #[test]
    fn pax_records_count_their_own_length_and_read_back() {
        let records: Vec<(String, Vec<u8>)> = vec![
            ("mtime".into(), b"1.000000000".to_vec()),
            // 9 + 3 + 1 digit: the length crosses from one digit to two.
            ("ab".into(), b"abcd".to_vec()),
            ("SCHILY.xattr.user.k".into(), vec![0u8, 1, 255]),
        ];
        let mut b = tar::Builder::new(Vec::new());
        append_pax(&mut b, &records, 7).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "f", io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();
        // Named, so busybox tar does not take it for the end of the archive.
        assert_eq!(&bytes[..19], b"PaxHeaders/volguard");
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut entry = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap(), Path::new("f"));
        let got: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(got, records);
    }
}
