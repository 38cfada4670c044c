//! `restore` and `export`: turn a snapshot back into files, into a Docker volume, or into a
//! tar stream.
//!
//! Safety rests on two things: tree names are validated when decoded (single components,
//! strictly sorted, see `Tree::decode`), and every entry is created exclusively inside a
//! target that starts empty, so nothing can be written through a symlink restored earlier
//! or outside the target.

mod content;
mod filter;
pub mod host;
mod packs;
mod tar;
mod walk;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::unbounded;

pub(crate) use self::content::verify_file;
pub use self::content::{DataRuns, FileReader, blake3_of_file, check_content};
pub use self::filter::Filter;
use self::packs::{FileTarget, Planner, Span, SpanWriter, restore_span};
pub use self::tar::to_tar;
pub use self::walk::{MAX_TREE_DEPTH, walk};
use self::walk::{TreeCache, walk_with};
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind};

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
