//! `backup`: turn one directory into a snapshot.
//!
//! Threads, joined by bounded channels so memory stays flat whatever the volume size:
//! the scanner (this thread) walks, reads and chunks files and hashes chunks; workers
//! compress and seal new blobs; the packer fills packs; the uploader stores packs and
//! writes index files. The snapshot object is written only after all of that is durable.

pub mod batch;
pub mod layers;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use walkdir::WalkDir;

use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId, SnapshotId};
use crate::repo::format::index::{Index, IndexFile, IndexedPack};
use crate::repo::format::pack::{self, BlobKind, PackBuilder, PackEntry};
use crate::repo::format::snapshot::{Snapshot, Summary};
use crate::repo::format::tree::{Node, NodeKind, Tree};
use crate::repo::inflight::Inflight;
use crate::repo::{Repository, TREES_AT_ONCE};
use crate::{fsmeta, repo::chunk};

/// Packs uploaded between two index files: a crash loses at most this many packs' worth
/// of index, and those packs are recovered from their trailers by the next run anyway.
const INDEX_EVERY_PACKS: usize = 32;
/// Blobs queued between pipeline stages (each at most one chunk).
const QUEUE_BLOBS: usize = 16;
/// Directories queued for readahead ahead of the scanner.
const READAHEAD_DIRS: usize = 256;
/// Files up to this size are read ahead; larger ones stream well enough on their own.
const READAHEAD_FILE_MAX: u64 = 1024 * 1024;
/// Entries of subdirectories read ahead with their parent directory, at most: enough to
/// cover the time the scanner spends in the parent, bounded so a huge tree is not pulled
/// into the page cache long before it is read.
const READAHEAD_LOOKAHEAD_FILES: usize = 4096;
/// Files at least this large are read with O_DIRECT (see `DirectReads`).
const DIRECT_FILE_MIN: u64 = 8 * 1024 * 1024;
/// One O_DIRECT read: large enough that a disk streams at close to full speed without
/// readahead, small enough to stay a small part of the backup's memory.
const DIRECT_READ_BYTES: usize = 4 * 1024 * 1024;
/// Offsets, lengths and buffer addresses of O_DIRECT reads must be multiples of the
/// device's logical block size; 4 KiB covers every common device.
const DIRECT_ALIGN: usize = 4096;
/// Soft-error messages kept verbatim in the snapshot; the rest are only counted.
const MAX_ERROR_MESSAGES: usize = 1000;

/// What to back up.
#[derive(Debug, Clone)]
pub struct Source {
    /// Volume name (or the `--name` of a `--path` backup).
    pub name: String,
    pub path: PathBuf,
    /// What the snapshot names as its source when not `path` (an imported archive).
    pub origin: Option<String>,
    /// The Docker volume's definition, recorded in the snapshot for `restore --all`.
    pub docker_volume: Option<crate::repo::format::snapshot::VolumeMeta>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tags: Vec<String>,
    pub host: String,
    /// The snapshot's time when not now (`backup --time`, for imports and tests).
    pub time: Option<time::OffsetDateTime>,
    pub progress: Option<indicatif::ProgressBar>,
    /// Packs prune has marked, loaded before the index (see `prune`).
    pub marked: crate::ops::prune::MarkedPacks,
    /// How long to wait for blobs left to a concurrent backup once it falls silent.
    pub wait_for_others: std::time::Duration,
    /// Told once every file has been read (uploads may still run): the agent thaws frozen
    /// containers then, not when the upload ends.
    pub read_done: Option<crossbeam_channel::Sender<()>>,
}

/// Result of one backup, as `backup --json` reports it.
#[derive(Debug, Clone)]
pub struct Report {
    pub volume: String,
    pub snapshot_id: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub summary: Summary,
    /// object-lock mode: what making the snapshot's objects retained long enough took.
    pub retention: Option<crate::repo::retention::ExtendReport>,
}

/// A new blob on its way to a pack.
struct RawBlob {
    kind: BlobKind,
    id: BlobId,
    raw: Vec<u8>,
}

struct SealedBlob {
    kind: BlobKind,
    id: BlobId,
    sealed: Vec<u8>,
    raw_length: u32,
}

struct FinishedPack {
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

#[derive(Default)]
struct Uploaded {
    packs: Vec<IndexedPack>,
    bytes: u64,
}

/// Backs up `source`, deduplicating against `index`, which is extended with what was added.
pub fn run(
    repo: &Repository,
    index: &mut Index,
    source: &Source,
    opts: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let root_meta = std::fs::symlink_metadata(&source.path)
        .map_err(|e| Error::io("cannot read the directory to back up", &source.path, e))?;
    if !root_meta.is_dir() {
        return Err(Error::Other(format!(
            "{} is not a directory",
            source.path.display()
        )));
    }
    let parent = find_parent(repo, &source.name, &opts.host)?;
    let parent_root = match &parent {
        Some((_, snap)) => snap
            .root
            .subtree
            .and_then(|t| usable_parent_tree(repo.load_tree(index, &t))),
        None => None,
    };

    let inflight = Inflight::start(repo, &opts.host, &opts.marked.packs, opts.wait_for_others)?;
    let inflight = &inflight;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (raw_tx, raw_rx) = bounded::<RawBlob>(QUEUE_BLOBS);
    let (sealed_tx, sealed_rx) = bounded::<SealedBlob>(QUEUE_BLOBS);
    let (pack_tx, pack_rx) = bounded::<FinishedPack>(1);
    let upload_state = Mutex::new(UploadState::default());
    // A pack ends with the blob that takes it past the pack size (at most a chunk, or a
    // directory listing, which may be larger and then grows the buffer), then its trailer.
    let room = repo.config().pack_bytes as usize + repo.config().chunker.max as usize + (1 << 20);
    // Two packs being filled, one queued, one per uploader.
    let buffers = &PackBuffers::new(repo.backend().upload_concurrency() + 3, room);

    let (scan_result, uploaded) = std::thread::scope(|s| {
        for i in 0..workers {
            let rx = raw_rx.clone();
            let tx = sealed_tx.clone();
            std::thread::Builder::new()
                .name(format!("seal-{i}"))
                .spawn_scoped(s, move || seal_worker(repo, rx, tx))
                .expect("spawning a thread");
        }
        drop(raw_rx);
        drop(sealed_tx);
        std::thread::Builder::new()
            .name("packer".into())
            .spawn_scoped(s, || packer(repo, sealed_rx, pack_tx, buffers))
            .expect("spawning a thread");
        let uploaders: Vec<_> = (0..repo.backend().upload_concurrency())
            .map(|i| {
                let rx = pack_rx.clone();
                let state = &upload_state;
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn_scoped(s, move || uploader(repo, rx, state, inflight, buffers))
                    .expect("spawning a thread")
            })
            .collect();
        drop(pack_rx);
        let (ra_tx, ra_rx) = bounded(READAHEAD_DIRS);
        std::thread::Builder::new()
            .name("readahead".into())
            .spawn_scoped(s, move || readahead(ra_rx))
            .expect("spawning a thread");

        let mut scanner = Scanner {
            repo,
            index,
            pending: HashSet::new(),
            reused_packs: HashSet::new(),
            tx: raw_tx,
            summary: Summary::default(),
            error_count: 0,
            progress: opts.progress.clone(),
            readahead: Some(ra_tx),
        };
        let scan_result = scanner.walk(&source.path, &root_meta, parent_root);
        if let Some(tx) = &opts.read_done {
            let _ = tx.send(());
        }
        let summary = std::mem::take(&mut scanner.summary);
        let reused_packs = std::mem::take(&mut scanner.reused_packs);
        let error_count = scanner.error_count;
        drop(scanner); // closes the channel so the pipeline drains and ends
        let mut uploaded: Result<()> = Ok(());
        for u in uploaders {
            let r = u
                .join()
                .unwrap_or_else(|_| Err(Error::Other("uploader thread panicked".into())));
            if uploaded.is_ok() {
                uploaded = r;
            }
        }
        (
            scan_result.map(|root| (root, summary, error_count, reused_packs)),
            uploaded,
        )
    });
    // An upload failure explains a scan that stopped early, so it is reported first.
    uploaded?;
    // Index what landed before waiting for concurrent backups: they may be waiting for it.
    let rest = std::mem::take(&mut upload_state.lock().unwrap_or_else(|p| p.into_inner()).batch);
    flush_index(repo, rest, &upload_state, inflight)?;
    // Blobs left to concurrent backups: wait for them, upload what never arrived.
    let resolved = inflight.resolve()?;
    let mut fallback = PackBuilder::default();
    for d in &resolved.missing {
        let sealed = inflight.spooled(d)?;
        fallback.add(d.entry.kind, d.entry.id, &sealed, d.entry.raw_length);
        if fallback.len() >= repo.config().pack_bytes as usize {
            upload_pack(
                repo,
                finish_pack(repo, std::mem::take(&mut fallback)),
                &upload_state,
                inflight,
                buffers,
            )?;
        }
    }
    if !fallback.is_empty() {
        let last = finish_pack(repo, fallback);
        upload_pack(repo, last, &upload_state, inflight, buffers)?;
    }
    let rest = std::mem::take(&mut upload_state.lock().unwrap_or_else(|p| p.into_inner()).batch);
    flush_index(repo, rest, &upload_state, inflight)?;
    let uploaded = upload_state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .done;
    let (root, mut summary, error_count, mut reused_packs) = scan_result?;
    for p in uploaded.packs.iter().chain(&resolved.others_packs) {
        index.add_pack(p.id, p.size, &p.blobs);
    }
    reused_packs.extend(&resolved.used_packs);
    summary.blobs_added = uploaded.packs.iter().map(|p| p.blobs.len() as u64).sum();
    if error_count > summary.errors.len() as u64 {
        summary.errors.push(format!(
            "... and {} more errors",
            error_count - summary.errors.len() as u64
        ));
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    let mut snap = Snapshot {
        version: 1,
        time: match opts.time {
            Some(t) => crate::fmt::format_time(t),
            None => Repository::now(),
        },
        host: opts.host.clone(),
        volume: source.name.clone(),
        source: source
            .origin
            .clone()
            .unwrap_or_else(|| source.path.display().to_string()),
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|(id, _)| *id),
        root,
        summary,
        program: format!("volguard {}", env!("CARGO_PKG_VERSION")),
        docker_volume: source.docker_volume.clone(),
    };
    // bytes_added must include the snapshot object itself; its size barely depends on
    // the number written into it, so estimate with the current figures, then correct.
    snap.summary.bytes_added = uploaded.bytes;
    let estimate = snap.seal(repo.keys()).1.len() as u64;
    snap.summary.bytes_added = uploaded.bytes + estimate;
    opts.marked.check_reused(repo, &reused_packs)?;
    // Object-lock mode: everything the snapshot needs is retained long enough first.
    let mut retention = None;
    if repo.object_lock().is_some() {
        let mut needed = reused_packs;
        needed.extend(uploaded.packs.iter().map(|p| p.id));
        needed.extend(resolved.others_packs.iter().map(|p| p.id));
        let at = opts
            .time
            .map_or_else(std::time::SystemTime::now, Into::into);
        retention = crate::repo::retention::protect_snapshot(repo, &needed, at)?;
    }
    let (id, _) = repo.save_snapshot(&snap)?;
    Ok(Report {
        volume: source.name.clone(),
        snapshot_id: id,
        parent: snap.parent,
        summary: snap.summary,
        retention,
    })
}

/// The latest snapshot of the same volume from the same host.
fn find_parent(
    repo: &Repository,
    volume: &str,
    host: &str,
) -> Result<Option<(SnapshotId, Snapshot)>> {
    let (snaps, _) = repo.list_snapshots()?;
    Ok(snaps
        .into_iter()
        .rev()
        .find(|(_, s)| s.volume == volume && s.host == host))
}

/// A parent tree that cannot be read only costs the incremental shortcut, never the backup.
fn usable_parent_tree(loaded: Result<Tree>) -> Option<Tree> {
    match loaded {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("parent snapshot tree unreadable, reading files again: {e}");
            None
        }
    }
}

fn seal_worker(repo: &Repository, rx: Receiver<RawBlob>, tx: Sender<SealedBlob>) {
    let Ok(mut zstd) = pack::BlobCompressor::new(repo.config().compression_level) else {
        tracing::error!("cannot create a zstd compressor");
        return;
    };
    for b in rx {
        let sealed = pack::seal_blob(repo.keys(), &b.raw, &mut zstd);
        let msg = SealedBlob {
            kind: b.kind,
            id: b.id,
            sealed,
            raw_length: b.raw.len() as u32,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Data and trees go to separate packs, so reading trees (restore planning, check) never
/// drags file data along.
fn packer(
    repo: &Repository,
    rx: Receiver<SealedBlob>,
    tx: Sender<FinishedPack>,
    buffers: &PackBuffers,
) {
    let limit = repo.config().pack_bytes as usize;
    let mut data = PackBuilder::with_buffer(buffers.take());
    let mut trees = PackBuilder::with_buffer(buffers.take());
    let finish = |b: PackBuilder| finish_pack(repo, b);
    for b in rx {
        let builder = match b.kind {
            BlobKind::Data => &mut data,
            BlobKind::Tree => &mut trees,
        };
        builder.add(b.kind, b.id, &b.sealed, b.raw_length);
        if builder.len() >= limit
            && tx
                .send(finish(std::mem::replace(
                    builder,
                    PackBuilder::with_buffer(buffers.take()),
                )))
                .is_err()
        {
            return;
        }
    }
    for b in [data, trees] {
        if !b.is_empty() && tx.send(finish(b)).is_err() {
            return;
        }
    }
}

fn finish_pack(repo: &Repository, b: PackBuilder) -> FinishedPack {
    let (id, bytes, entries) = b.finish(repo.keys());
    FinishedPack { id, bytes, entries }
}

/// Index state shared by the uploader threads.
#[derive(Default)]
struct UploadState {
    batch: Vec<IndexedPack>,
    done: Uploaded,
}

/// Writes an index file for the packs in `batch` (all of them already durable).
fn flush_index(
    repo: &Repository,
    batch: Vec<IndexedPack>,
    state: &Mutex<UploadState>,
    inflight: &Inflight,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let file = IndexFile { packs: batch };
    let (id, n) = repo.save_index(&file)?;
    inflight.own_index(id.to_hex());
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.done.bytes += n;
    s.done.packs.extend(file.packs);
    Ok(())
}

/// Several uploaders run at once so one pack's fsync (or S3 round trip) overlaps the
/// next pack's transfer instead of stalling the whole pipeline.
fn uploader(
    repo: &Repository,
    rx: Receiver<FinishedPack>,
    state: &Mutex<UploadState>,
    inflight: &Inflight,
    buffers: &PackBuffers,
) -> Result<()> {
    for p in rx {
        // Blobs a concurrent backup announced first are left to it.
        let keep = inflight.before_upload(&p.entries, &p.bytes)?;
        let p = if keep.len() == p.entries.len() {
            p
        } else if keep.is_empty() {
            continue;
        } else {
            let mut b = PackBuilder::default();
            for e in keep {
                let sealed = &p.bytes[e.offset as usize..][..e.length as usize];
                b.add(e.kind, e.id, sealed, e.raw_length);
            }
            finish_pack(repo, b)
        };
        upload_pack(repo, p, state, inflight, buffers)?;
    }
    Ok(())
}

/// Stores one pack and queues it for the next index file.
fn upload_pack(
    repo: &Repository,
    p: FinishedPack,
    state: &Mutex<UploadState>,
    inflight: &Inflight,
    buffers: &PackBuffers,
) -> Result<()> {
    let size = p.bytes.len() as u64;
    let span = tracing::debug_span!("pack", id = %p.id.short(), size);
    let _g = span.enter();
    repo.block_on(repo.backend().put(
        crate::backend::Kind::Pack,
        &p.id.to_hex(),
        buffers.lend(p.bytes),
    ))?;
    let full = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.done.bytes += size;
        s.batch.push(IndexedPack {
            id: p.id,
            size,
            blobs: p.entries,
        });
        (s.batch.len() >= INDEX_EVERY_PACKS).then(|| std::mem::take(&mut s.batch))
    };
    if let Some(batch) = full {
        flush_index(repo, batch, state, inflight)?;
    }
    Ok(())
}

/// Pack buffers the store is done with, for the packer to fill again. A fresh buffer per pack
/// is faulted in page by page: the benchmark's initial S3 backup took about 390,000 page
/// faults and 3.0 s of system CPU with fresh buffers, 80,000-100,000 and 2.2-2.5 s with
/// buffers that go round.
struct PackBuffers {
    home: Sender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    /// What a new buffer holds without growing.
    room: usize,
}

/// A pack buffer lent to the store; it goes back to `home` when the store drops its last
/// reference (after the upload, retries included).
struct Lent {
    buf: Vec<u8>,
    home: Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Dropped instead when the spares are full or the backup is over.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

impl PackBuffers {
    /// Keeps at most `spares` buffers: as many as can be in flight at once.
    fn new(spares: usize, room: usize) -> Self {
        let (home, spare) = bounded(spares);
        PackBuffers { home, spare, room }
    }

    /// An empty buffer that holds a pack without growing (growing a 16 MiB buffer by
    /// doubling copies it about once more), a returned one when there is one.
    fn take(&self) -> Vec<u8> {
        match self.spare.try_recv() {
            // One that grew far past a pack (a huge directory listing) is let go, and so is
            // one made smaller (a pack repacked from a concurrent backup's leftovers), which
            // would grow by doubling.
            Ok(mut buf) if (self.room..=2 * self.room).contains(&buf.capacity()) => {
                buf.clear();
                buf
            }
            _ => Vec::with_capacity(self.room),
        }
    }

    fn lend(&self, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(Lent {
            buf,
            home: self.home.clone(),
        })
    }
}

/// Asks the kernel to start reading the small files of each directory the scanner enters,
/// so the many small reads of a cold cache overlap instead of waiting one by one. Files go
/// in the scanner's (name) order, so the first it needs are asked for first. A directory
/// with no listing in the parent snapshot (all of an initial backup) also has the small
/// files of its subdirectories asked for, since the scanner reaches them next; with a
/// listing, files it says are unchanged are only stat'ed (which warms their inodes).
fn readahead(rx: Receiver<(PathBuf, Option<Arc<Tree>>)>) {
    // Subdirectories whose files were read ahead with their parent.
    let mut done: HashSet<PathBuf> = HashSet::new();
    for (dir, parent) in rx {
        let files = !done.remove(&dir);
        let (subdirs, _) = readahead_dir(&dir, parent.as_deref(), files);
        if parent.is_none() {
            let mut budget = READAHEAD_LOOKAHEAD_FILES;
            for sub in subdirs {
                if budget == 0 {
                    break;
                }
                budget = budget.saturating_sub(readahead_dir(&sub, None, true).1);
                done.insert(sub);
            }
        }
    }
}

/// Reads ahead the small files of `dir` (unless `files` is false); returns its
/// subdirectories in name order and how many entries it has.
fn readahead_dir(dir: &Path, parent: Option<&Tree>, files: bool) -> (Vec<PathBuf>, usize) {
    let entries = sorted_entries(dir);
    let count = entries.len();
    let mut subdirs = Vec::new();
    for (path, meta) in entries {
        if meta.is_dir() {
            subdirs.push(path);
        } else if files {
            readahead_file(&path, &meta, parent);
        }
    }
    (subdirs, count)
}

/// The entries of `dir` in name order, each stat'ed. The stat is itself read-ahead: it
/// loads the inode that the walk stats next, and a no-change backup is mostly those stats
/// (taking the type from the directory entry instead made it 0.25 s slower at 50k files).
fn sorted_entries(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<_> = rd
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .collect();
    entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    entries
}

fn readahead_file(path: &Path, meta: &std::fs::Metadata, parent: Option<&Tree>) {
    if !meta.is_file() || meta.len() == 0 || meta.len() > READAHEAD_FILE_MAX {
        return;
    }
    let unchanged = parent.is_some_and(|t| {
        let name = path.file_name().unwrap_or_default();
        t.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name.as_bytes()))
            .is_ok_and(|i| {
                let p = &t.nodes[i];
                p.size == meta.len()
                    && p.mtime_sec == meta.mtime()
                    && p.mtime_nsec == meta.mtime_nsec() as u32
                    && p.inode == meta.ino()
            })
    });
    if unchanged {
        return;
    }
    if let Ok(f) = open_for_backup(path) {
        let _ = nix::fcntl::posix_fadvise(
            &f,
            0,
            meta.len() as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

/// One directory being built: its own node and the children seen so far.
struct Frame {
    node: Node,
    children: Vec<Node>,
    /// The same directory in the parent snapshot, for the unchanged-file shortcut.
    parent: Option<Arc<Tree>>,
    /// Subdirectory trees of `parent` loaded ahead, by tree id (see `parent_subtree`).
    ahead: HashMap<BlobId, Arc<Tree>>,
}

struct Scanner<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Blobs sent into the pipeline during this run.
    pending: HashSet<BlobId>,
    /// Packs that supplied blobs this run reused.
    reused_packs: HashSet<PackId>,
    tx: Sender<RawBlob>,
    summary: Summary,
    error_count: u64,
    progress: Option<indicatif::ProgressBar>,
    readahead: Option<Sender<(PathBuf, Option<Arc<Tree>>)>>,
}

/// A problem with one file that is recorded and skipped.
struct SoftError(String);

fn pipeline_closed() -> Error {
    Error::Other("the upload pipeline stopped".into())
}

impl Scanner<'_> {
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
    fn walk(
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
        for entry in walker {
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

/// Large files are read with O_DIRECT: the bytes go from the device into one reused,
/// aligned buffer instead of through the page cache. A backup reads every byte once, so
/// caching them only evicts what the host's services keep there (a database's working
/// set), and filling fresh page-cache pages costs more CPU than the copy itself (the
/// S3 benchmark's initial backup spent 15% of its CPU there). Dirty pages of the range
/// are written back by the kernel before it reads, so what is read is current.
struct DirectReads {
    buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    pad: usize,
    /// The file offset of the aligned part's first byte, and how many bytes it holds.
    start: u64,
    len: usize,
}

impl DirectReads {
    fn new() -> Self {
        let buf = vec![0; DIRECT_READ_BYTES + DIRECT_ALIGN];
        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
        DirectReads {
            buf,
            pad,
            start: 0,
            len: 0,
        }
    }

    /// Turns O_DIRECT on for `file`; false where the filesystem has no such mode (tmpfs,
    /// some FUSE filesystems), which then read through the page cache as before.
    fn enable(file: &File) -> bool {
        Self::set(file, true).is_ok()
    }

    fn disable(file: &File) -> io::Result<()> {
        Self::set(file, false)
    }

    fn set(file: &File, on: bool) -> io::Result<()> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
        let flags = if on {
            flags | OFlag::O_DIRECT
        } else {
            flags - OFlag::O_DIRECT
        };
        fcntl(file, FcntlArg::F_SETFL(flags))?;
        Ok(())
    }

    /// Copies into `out` what the file holds at `offset`, refilling the buffer with one
    /// aligned read when `offset` is outside it. 0 means end of file.
    fn read_at(&mut self, file: &File, out: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = self.start + self.len as u64;
        if offset < self.start || offset >= end {
            let aligned = offset - offset % DIRECT_ALIGN as u64;
            let area = &mut self.buf[self.pad..self.pad + DIRECT_READ_BYTES];
            self.len = file.read_at(area, aligned)?;
            self.start = aligned;
            if offset >= self.start + self.len as u64 {
                return Ok(0);
            }
        }
        let from = self.pad + (offset - self.start) as usize;
        let n = out.len().min(self.len - (offset - self.start) as usize);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        Ok(n)
    }
}

enum ReadError {
    Soft(String),
    Hard(Error),
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

/// Opens without following symlinks, without blocking on a FIFO swapped in after the
/// walk looked, and without updating atime (which would change ctime-free state users see).
pub(crate) fn open_for_backup(path: &Path) -> io::Result<File> {
    let base = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(base | libc::O_NOATIME)
        .open(path)
    {
        // O_NOATIME is refused for files we do not own without CAP_FOWNER.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(base)
            .open(path),
        r => r,
    }
}

/// Counts bytes actually read from disk.
struct TeeHasher<'a, R> {
    inner: &'a mut R,
    bytes: u64,
}

impl<R: Read> Read for TeeHasher<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads the data extents of a file back to back (holes skipped) while hashing the whole
/// logical content (holes as zeros) for the snapshot's plain BLAKE3.
struct ExtentReader<'a> {
    file: &'a File,
    size: u64,
    extents: Vec<(u64, u64)>,
    current: usize,
    pos_in_extent: u64,
    /// Logical offset up to which the hasher has been fed.
    hashed_to: u64,
    hasher: blake3::Hasher,
    /// Set when `file` has O_DIRECT on.
    direct: Option<DirectReads>,
}

impl<'a> ExtentReader<'a> {
    fn new(file: &'a File, size: u64, extents: Option<Vec<(u64, u64)>>) -> Self {
        ExtentReader {
            file,
            size,
            extents: extents.unwrap_or_else(|| vec![(0, size)]),
            current: 0,
            pos_in_extent: 0,
            hashed_to: 0,
            hasher: blake3::Hasher::new(),
            direct: None,
        }
    }

    /// Reads at `offset` through the O_DIRECT buffer if the file has one, else directly.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(direct) = &mut self.direct else {
            return self.file.read_at(buf, offset);
        };
        match direct.read_at(self.file, buf, offset) {
            // A filesystem or device that refuses O_DIRECT (or this alignment) on read.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("O_DIRECT read refused ({e}); reading through the page cache");
                self.direct = None;
                DirectReads::disable(self.file)?;
                self.file.read_at(buf, offset)
            }
            r => r,
        }
    }

    fn hash_zeros_to(&mut self, offset: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while self.hashed_to < offset {
            let n = (offset - self.hashed_to).min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            self.hashed_to += n as u64;
        }
    }

    fn finish_hash(mut self) -> [u8; 32] {
        self.hash_zeros_to(self.size);
        *self.hasher.finalize().as_bytes()
    }
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(start, len)) = self.extents.get(self.current) {
            let len = len.min(self.size.saturating_sub(start));
            if self.pos_in_extent >= len {
                self.current += 1;
                self.pos_in_extent = 0;
                continue;
            }
            let offset = start + self.pos_in_extent;
            self.hash_zeros_to(offset);
            let want = ((len - self.pos_in_extent) as usize).min(buf.len());
            let n = self.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                // Shrunk under us: stop here; the size check after reading notices.
                self.current = self.extents.len();
                break;
            }
            self.hasher.update(&buf[..n]);
            self.hashed_to = offset + n as u64;
            self.pos_in_extent += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Backup sources for Docker volumes, each with its definition from metadata.db. A volume
/// whose data is mounted elsewhere only while in use is skipped with the reason under
/// `--all` (`skipped` is given), and an error when it was named.
pub fn volume_sources(
    docker_root: &std::path::Path,
    names: &[String],
    mut skipped: Option<&mut Vec<String>>,
) -> Result<Vec<Source>> {
    let (defs, warnings) = crate::docker::volumes::read_volumes(docker_root);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut out = Vec::new();
    for name in names {
        match crate::docker::volume_source(docker_root, name, &defs)? {
            Ok(src) => out.push(Source {
                name: name.clone(),
                path: src.data,
                origin: None,
                docker_volume: Some(src.meta),
            }),
            Err(crate::docker::NotMounted(why)) => match skipped.as_deref_mut() {
                Some(list) => list.push(why),
                None => return Err(Error::Other(why)),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lent pack buffer comes back only once the store has dropped every reference to
    /// it, and is handed out again empty; one that grew far past a pack, or is smaller than
    /// one, is let go.
    #[test]
    fn pack_buffers_come_back_after_the_last_reference_only() {
        let buffers = PackBuffers::new(2, 1024);
        let mut buf = buffers.take();
        assert!(buf.capacity() >= 1024);
        buf.extend_from_slice(b"pack bytes");
        let at = buf.as_ptr();
        let lent = buffers.lend(buf);
        let retry_copy = lent.clone();
        drop(lent);
        assert!(
            buffers.spare.is_empty(),
            "returned while the store still held it"
        );
        assert_eq!(&retry_copy[..], b"pack bytes");
        drop(retry_copy);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), at, "not the same allocation");
        assert!(again.is_empty());

        drop(buffers.lend(vec![0u8; 4096]));
        let fresh = buffers.take();
        assert!(fresh.capacity() >= 1024 && fresh.capacity() < 4096);
        drop(buffers.lend(Vec::with_capacity(16)));
        assert!(
            buffers.take().capacity() >= 1024,
            "a small buffer was handed out"
        );
    }

    /// A large file read through O_DIRECT in odd-sized pieces, across buffer refills, a
    /// hole and an unaligned end, gives exactly the bytes a plain read gives.
    #[test]
    fn direct_reads_match_the_file_across_refills_holes_and_an_unaligned_end() {
        // /var/tmp, not /tmp: a disk filesystem where O_DIRECT really bypasses the cache.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("big");
        let size = 3 * DIRECT_READ_BYTES as u64 + 12_345;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut part = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        {
            let f = File::create(&path).unwrap();
            // Data, a 1 MiB hole, data up to the end.
            let hole = (DIRECT_READ_BYTES as u64 + 4096, 1 << 20);
            f.write_all_at(&part(hole.0 as usize), 0).unwrap();
            let tail_at = hole.0 + hole.1;
            f.write_all_at(&part((size - tail_at) as usize), tail_at)
                .unwrap();
            f.sync_all().unwrap();
        }
        let expected = std::fs::read(&path).unwrap();

        let file = open_for_backup(&path).unwrap();
        let meta = file.metadata().unwrap();
        assert!(
            DirectReads::enable(&file),
            "/var/tmp refuses O_DIRECT: the test needs a filesystem that has it"
        );
        let extents = fsmeta::data_extents(&file, &meta).unwrap();
        let mut reader = ExtentReader::new(&file, size, extents.clone());
        reader.direct = Some(DirectReads::new());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 100_003];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(reader.direct.is_some(), "fell back to buffered reads");
        // The reader yields data extents back to back; compare with the same from a plain read.
        let want: Vec<u8> = match &extents {
            Some(ext) => ext
                .iter()
                .flat_map(|&(at, len)| {
                    expected[at as usize..(at + len).min(size) as usize]
                        .iter()
                        .copied()
                })
                .collect(),
            None => expected.clone(),
        };
        assert_eq!(got.len(), want.len());
        assert!(got == want, "O_DIRECT read differs from the file");
        assert_eq!(
            reader.finish_hash(),
            *blake3::hash(&expected).as_bytes(),
            "whole-file hash with the hole as zeros"
        );
    }
}
