//! Pack-ordered restore: the file contents of a restore are fetched pack by pack, not file
//! by file.
//!
//! Why: on S3 every read is a request, and reading per batch of files made a restore of
//! ~50,000 small files cost thousands of small ranged GETs, most of the time waiting on
//! round trips (README, "Benchmarks"). Here the walk hands every file to a `Planner`, which
//! gathers the blobs that a *window* of files needs (bounded in files and bytes, so memory
//! stays flat however large the snapshot), groups them by pack, and cuts each pack's needs
//! into a few large spans. Worker threads fetch one span with one read and, as its bytes
//! arrive, open (decrypt, decompress, verify) each blob in it once and write it with
//! `pwrite` to every file offset that holds it. A file is finished (size check,
//! `--verify`, metadata) by whoever writes its last blob, or removed and named when any of
//! its blobs could not be restored.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::ids::{BlobId, PackId};
use crate::ops::restore::{RestoreReport, verify_file};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::pack;
use crate::repo::format::tree::Node;

/// Blob bytes (uncompressed) planned at once; a window's plan costs about 100 bytes per
/// blob, so this bounds the plan to a few MiB.
const MAX_WINDOW_BYTES: u64 = 1024 * 1024 * 1024;
/// Files planned at once (each keeps its node in memory until it is finished).
const MAX_WINDOW_FILES: usize = 16 * 1024;
/// The first window is this many times smaller than the largest, and each next one twice
/// the last: the workers start while the walk is still reading trees, and later windows
/// are large enough that a pack is rarely split between two of them.
const FIRST_WINDOW_DIVISOR: u32 = 64;
/// Bytes between two needed blobs of a pack still fetched in the same read: skipping them
/// would cost a request, which takes about as long as transferring this much.
const MAX_GAP_BYTES: u64 = 1024 * 1024;
/// Windows handed to the workers and not yet restored, at most. The walk may run this far
/// ahead of them, so it goes on creating files while they restore what it planned; memory
/// stays bounded by this many windows' plans (a few MiB each).
const MAX_WINDOWS_IN_FLIGHT: usize = 3;

/// Descriptors of created files kept open for the workers, across all restores of this
/// process (see `FdBudget`).
static KEPT_FILES: AtomicUsize = AtomicUsize::new(0);

/// How many created files the walk may keep open for the workers: the descriptor it
/// created a file with then serves every write, the size check and the metadata, instead
/// of a second open by path per file (50k more `openat` calls in a restore of 50k small
/// files). The soft RLIMIT_NOFILE, raised to the hard limit, less `FDS_LEFT_FREE` for
/// sockets and pack files.
pub struct FdBudget(usize);

/// Descriptors the budget leaves to everything else a restore opens (a few dozen at most:
/// connections, pack files, trees being read).
const FDS_LEFT_FREE: u64 = 1024;

/// At most this many kept descriptors: about the files of all windows in flight.
const MAX_KEPT_FILES: u64 = (MAX_WINDOWS_IN_FLIGHT * MAX_WINDOW_FILES) as u64;

impl FdBudget {
    pub fn raise() -> FdBudget {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
                .map(|()| hard)
                .unwrap_or(soft),
            Ok((soft, _)) => soft,
            Err(_) => 1024,
        };
        let room = soft.saturating_sub(FDS_LEFT_FREE).max(soft / 2);
        FdBudget(room.min(MAX_KEPT_FILES) as usize)
    }

    /// `file` to keep, if the budget has room for it.
    pub fn keep(&self, file: File) -> Option<File> {
        let kept = KEPT_FILES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0).then_some(n + 1)
            })
            .is_ok();
        kept.then_some(file)
    }
}

/// One regular file being restored: created (empty) by the walk, filled by the workers.
pub struct FileTarget {
    pub path: PathBuf,
    pub display: String,
    pub node: Node,
    /// The descriptor the walk created the file with, if the budget let it keep it;
    /// otherwise each worker opens the file by path.
    file: Option<File>,
    /// Sparse files: the data offset at which each extent starts, to place a blob's bytes.
    extent_starts: Vec<u64>,
    /// Blob occurrences still to be written; whoever writes the last one finishes the file.
    remaining: AtomicUsize,
    /// The first failure by place in the file (data offset, error): spans finish in any
    /// order, and the message should not depend on which came first.
    failed: Mutex<Option<(u64, String)>>,
}

impl FileTarget {
    /// `node` must have passed `restore::check_content` (sizes and extents consistent).
    pub fn new(path: PathBuf, display: String, node: Node, file: Option<File>) -> FileTarget {
        let extent_starts = node
            .extents
            .as_ref()
            .map(|ext| {
                let mut at = 0u64;
                ext.iter()
                    .map(|&(_, len)| {
                        let start = at;
                        at += len;
                        start
                    })
                    .collect()
            })
            .unwrap_or_default();
        FileTarget {
            remaining: AtomicUsize::new(node.content.len()),
            path,
            display,
            node,
            extent_starts,
            failed: Mutex::new(None),
            file,
        }
    }

    fn open(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| Error::io("cannot open for writing", &self.path, e))
    }

    fn too_much(&self) -> Error {
        Error::corrupt(format!("file {}", self.display), "more data than its size")
    }

    /// Writes `parts`, which follow each other from `data_offset`, to a dense file.
    fn write_dense(&self, file: &File, data_offset: u64, parts: &[&[u8]]) -> Result<()> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if data_offset + total > self.node.size {
            return Err(self.too_much());
        }
        write_all_vectored_at(file, parts, data_offset)
            .map_err(|e| Error::io("cannot write", &self.path, e))
    }

    /// Writes `data`, which starts at `data_offset` of a sparse file's content, spread over
    /// its extents.
    fn place(&self, file: &File, data_offset: u64, data: &[u8]) -> Result<()> {
        let io_err = |e| Error::io("cannot write", &self.path, e);
        let too_much = || self.too_much();
        let Some(extents) = &self.node.extents else {
            return self.write_dense(file, data_offset, &[data]);
        };
        // The extent holding `data_offset`: the last one starting at or before it.
        let mut i = self
            .extent_starts
            .partition_point(|&s| s <= data_offset)
            .checked_sub(1)
            .ok_or_else(too_much)?;
        let (mut data_offset, mut rest) = (data_offset, data);
        while !rest.is_empty() {
            let (start, len) = *extents.get(i).ok_or_else(too_much)?;
            let into = data_offset - self.extent_starts[i];
            i += 1;
            if into >= len {
                continue;
            }
            let n = ((len - into) as usize).min(rest.len());
            file.write_all_at(&rest[..n], start + into)
                .map_err(io_err)?;
            rest = &rest[n..];
            data_offset += n as u64;
        }
        Ok(())
    }
}

impl Drop for FileTarget {
    fn drop(&mut self) {
        if self.file.is_some() {
            KEPT_FILES.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Marks one blob occurrence of `t` done; finishes or discards the file after its last.
/// `file` is the file open for writing, if the caller has it.
fn done(
    d: &Dest,
    result: Result<u64>,
    verify: bool,
    report: &mut RestoreReport,
    file: Option<&File>,
) {
    let t = &*d.target;
    match result {
        Ok(n) => report.bytes += n,
        Err(e) => {
            let mut f = t.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.as_ref().is_none_or(|(at, _)| d.data_offset < *at) {
                *f = Some((d.data_offset, e.to_string()));
            }
        }
    }
    if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish(t, verify, report, file);
    }
}

/// After the file's last blob (or at once for a file without content): size check,
/// optional re-hash, then metadata (last, so the mtime set is the one that stays); a file
/// that failed anywhere is removed and named in the report. Through `file`, the file open
/// for writing, when the caller has it.
pub fn finish(t: &FileTarget, verify: bool, report: &mut RestoreReport, file: Option<&File>) {
    let failed = t.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    let result = match failed {
        Some((_, e)) => Err(Error::Other(e)),
        None => match file.or(t.file.as_ref()) {
            Some(file) => finish_file(t, verify, file),
            // Whoever finishes a file has just written it, so this is not reached today.
            None => t.open().and_then(|file| finish_file(t, verify, &file)),
        },
    };
    match result {
        Ok(()) => report.verified_files += verify as u64,
        Err(e) => {
            report.discarded += 1;
            report.errors.push(discard_file(t, e));
        }
    }
}

/// Through `file`, open for writing: no path lookup per call.
fn finish_file(t: &FileTarget, verify: bool, file: &File) -> Result<()> {
    let now = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &t.path, e))?;
    let len = now.len();
    if len != t.node.size {
        return Err(Error::corrupt(
            format!("file {}", t.display),
            format!("restored {len} bytes, snapshot says {}", t.node.size),
        ));
    }
    if verify {
        verify_file(&t.path, &t.node)?;
    }
    fsmeta::apply_file_metadata(file, &t.node, &now)
        .map_err(|e| Error::io("cannot set metadata of", &t.path, e))
}

/// A file that could not be restored whole is emptied and removed, so no wrong or missing
/// byte is left looking like restored data (its hard links made meanwhile are left empty,
/// never with partial content). Returns the error line for the report.
fn discard_file(t: &FileTarget, e: Error) -> String {
    let gone = t
        .open()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|f| f.set_len(0))
        .and_then(|()| std::fs::remove_file(&t.path));
    match gone {
        Ok(()) => format!("{}: not restored (removed): {e}", t.display),
        Err(rm) => format!("{}: {e} (and it could not be removed: {rm})", t.display),
    }
}

/// Where one blob goes: a file and the offset in its content (before holes are placed).
struct Dest {
    target: Arc<FileTarget>,
    data_offset: u64,
}

/// One blob a window needs, with every place it is written to.
struct Need {
    id: BlobId,
    pack: PackId,
    offset: u64,
    length: u64,
    raw_length: u32,
    dests: Vec<Dest>,
}

/// A run of one pack fetched with one read, and the blobs in it.
pub struct Span {
    pack: PackId,
    start: u64,
    end: u64,
    needs: Vec<Need>,
    /// Shared by the spans of one window: the last one done frees the window's place.
    _window: Arc<WindowSlot>,
}

/// One window in flight: holds a place in the planner's bounded channel of windows, and
/// frees it when dropped (after the window's last span).
struct WindowSlot(Receiver<()>);

impl Drop for WindowSlot {
    fn drop(&mut self) {
        let _ = self.0.try_recv();
    }
}

/// Gathers the blobs of a window of files and hands them to the workers as spans.
pub struct Planner<'a> {
    index: &'a Index,
    tx: Sender<Span>,
    needs: Vec<Need>,
    by_blob: HashMap<BlobId, usize>,
    files: usize,
    bytes: u64,
    /// `--verify`: files finished by the walk itself (those without content) need it too.
    pub verify: bool,
    /// Created files the walk may keep open for the workers.
    pub fds: FdBudget,
    /// How much smaller than the largest the current window is (see FIRST_WINDOW_DIVISOR).
    divisor: u32,
    /// One message per window in flight (see MAX_WINDOWS_IN_FLIGHT): sending blocks the
    /// walk while that many are.
    windows: (Sender<()>, Receiver<()>),
}

impl<'a> Planner<'a> {
    pub fn new(index: &'a Index, tx: Sender<Span>, verify: bool) -> Self {
        Planner {
            verify,
            fds: FdBudget::raise(),
            index,
            tx,
            needs: Vec::new(),
            by_blob: HashMap::new(),
            files: 0,
            bytes: 0,
            divisor: FIRST_WINDOW_DIVISOR,
            windows: bounded(MAX_WINDOWS_IN_FLIGHT),
        }
    }

    /// Plans every blob of `t` (whose content `check_content` has validated). A file may be
    /// split over two windows; it is finished once all of its blobs are written.
    pub fn add(&mut self, t: &Arc<FileTarget>) -> Result<()> {
        let mut data_offset = 0u64;
        for id in &t.node.content {
            let (pack, loc) = self.index.get(id).ok_or_else(|| {
                Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
            })?;
            let dest = Dest {
                target: t.clone(),
                data_offset,
            };
            match self.by_blob.get(id) {
                Some(&i) => self.needs[i].dests.push(dest),
                None => {
                    self.by_blob.insert(*id, self.needs.len());
                    self.needs.push(Need {
                        id: *id,
                        pack,
                        offset: u64::from(loc.offset),
                        length: u64::from(loc.length),
                        raw_length: loc.raw_length,
                        dests: vec![dest],
                    });
                }
            }
            data_offset += u64::from(loc.raw_length);
            self.bytes += u64::from(loc.raw_length);
            if self.bytes >= MAX_WINDOW_BYTES / u64::from(self.divisor) {
                self.flush()?;
            }
        }
        self.files += 1;
        if self.files >= MAX_WINDOW_FILES / self.divisor as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the window's spans, packs in the order the window first needed them (the
    /// walk's order, so files finish early and steadily).
    pub fn flush(&mut self) -> Result<()> {
        self.files = 0;
        self.bytes = 0;
        self.by_blob.clear();
        if self.needs.is_empty() {
            return Ok(());
        }
        self.divisor = (self.divisor / 2).max(1);
        let stopped = || Error::Other("restore workers stopped".into());
        self.windows.0.send(()).map_err(|_| stopped())?;
        let window = Arc::new(WindowSlot(self.windows.1.clone()));
        let mut order: Vec<PackId> = Vec::new();
        let mut per_pack: HashMap<PackId, Vec<Need>> = HashMap::new();
        for need in std::mem::take(&mut self.needs) {
            per_pack
                .entry(need.pack)
                .or_insert_with(|| {
                    order.push(need.pack);
                    Vec::new()
                })
                .push(need);
        }
        for pack in order {
            let Some(mut needs) = per_pack.remove(&pack) else {
                continue;
            };
            needs.sort_by_key(|n| n.offset);
            for span in cut_spans(pack, needs, &window) {
                self.tx.send(span).map_err(|_| stopped())?;
            }
        }
        Ok(())
    }
}

/// Cuts one pack's needs (sorted by offset) into spans: neighbours closer than
/// `MAX_GAP_BYTES` share a read. A span may be a whole pack: it is restored as it streams
/// in, and a read that spans several of the server's chunks costs it less than one per
/// chunk (SeaweedFS reads a whole 4 MiB chunk for any part of it).
fn cut_spans(pack: PackId, needs: Vec<Need>, window: &Arc<WindowSlot>) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for need in needs {
        let end = need.offset + need.length;
        if let Some(s) = spans.last_mut()
            && need.offset >= s.end
            && need.offset - s.end <= MAX_GAP_BYTES
        {
            s.end = end;
            s.needs.push(need);
            continue;
        }
        spans.push(Span {
            pack,
            start: need.offset,
            end,
            needs: vec![need],
            _window: window.clone(),
        });
    }
    spans
}

/// Fetches one span and restores its blobs as their bytes arrive: each blob is opened
/// (decrypted, decompressed, verified) once and written to all its places. `buf`, the
/// worker's reused buffer, keeps only the bytes not written out yet, so a worker holds
/// about one batch however large the span. A blob that does not verify is read again on
/// its own (a bit flipped on the way costs a read, not the files); so is every blob the
/// read did not reach (a truncated pack, a server gone). What still fails fails exactly the
/// files that hold it.
pub fn restore_span(
    repo: &Repository,
    index: &Index,
    span: Span,
    writer: &mut SpanWriter,
    report: &mut RestoreReport,
    buf: &mut Vec<u8>,
) {
    let name = span.pack.to_hex();
    let mut needs = span.needs.into_iter().peekable();
    let mut again = Vec::new();
    // `buf` holds the span's bytes from this pack offset on.
    let mut base = span.start;
    buf.clear();
    let read = repo.block_on(repo.backend().get_range_streamed(
        Kind::Pack,
        &name,
        span.start,
        span.end - span.start,
        &mut |piece| {
            buf.extend_from_slice(piece);
            let have = base + buf.len() as u64;
            while let Some(need) = needs.next_if(|n| n.offset + n.length <= have) {
                let at = (need.offset - base) as usize;
                again.extend(writer.restore_blob(repo.keys(), need, buf, at, report));
            }
            // What neither the batch nor a blob to come needs is dropped once it is the
            // larger part of the buffer: each byte is moved about once at most.
            let next = needs
                .peek()
                .map_or(buf.len(), |n| ((n.offset - base) as usize).min(buf.len()));
            let keep_from = writer.span_bytes_from().unwrap_or(next).min(next);
            if keep_from >= buf.len() - keep_from {
                buf.drain(..keep_from);
                base += keep_from as u64;
                writer.span_bytes_moved(keep_from);
            }
        },
    ));
    if let Err(e) = read {
        tracing::debug!("{e}; reading the rest of the span's blobs one by one");
    }
    for need in again.into_iter().chain(needs) {
        writer.reread_blob(repo, index, need, buf, report);
    }
    writer.flush(buf, report);
    writer.open = None;
}

/// Bytes of neighbouring blobs of one file written with one `pwritev`. Buffered writes of
/// chunk-sized pieces at unaligned offsets cost the kernel about twice what writes of
/// about 1 MiB do (0.62 s against 0.29 s of system time per GiB on this machine's ext4);
/// writes of 4 MiB were much slower again.
const MAX_BATCH_BYTES: u64 = 1024 * 1024;
/// Pieces of one `pwritev`, well below IOV_MAX (1024).
const MAX_BATCH_PARTS: usize = 64;

/// Where an opened blob's bytes are until they are written.
#[derive(Clone)]
enum Held {
    /// Decrypted where it was fetched: this range of the span's buffer.
    Span(std::ops::Range<usize>),
    /// Decompressed (or read again on its own): this range of the writer's `out`.
    Out(std::ops::Range<usize>),
}

impl Held {
    fn len(&self) -> u64 {
        match self {
            Held::Span(r) | Held::Out(r) => r.len() as u64,
        }
    }
}

/// One worker's writing state: the file it has open, and the batch of blobs it is
/// gathering for consecutive places of one dense file.
pub struct SpanWriter<'a> {
    verify: bool,
    progress: Option<&'a indicatif::ProgressBar>,
    /// The file written last, kept open: a pack's neighbouring blobs mostly belong to the
    /// same file (one handle at a time per worker, so open files stay few).
    open: Option<(Arc<FileTarget>, File)>,
    /// Places and bytes of the batch, in file order and touching each other.
    batch: Vec<(Dest, Held)>,
    batch_bytes: u64,
    /// The batch's blobs that are not in the span's buffer (decompressed ones).
    out: Vec<u8>,
}

impl<'a> SpanWriter<'a> {
    pub fn new(verify: bool, progress: Option<&'a indicatif::ProgressBar>) -> Self {
        SpanWriter {
            verify,
            progress,
            open: None,
            batch: Vec::new(),
            batch_bytes: 0,
            out: Vec::new(),
        }
    }

    fn bytes<'b>(&'b self, buf: &'b [u8], held: &Held) -> &'b [u8] {
        match held {
            Held::Span(r) => &buf[r.clone()],
            Held::Out(r) => &self.out[r.clone()],
        }
    }

    /// Reads one blob on its own onto the end of `out`.
    fn reread(&mut self, repo: &Repository, index: &Index, id: &BlobId) -> Result<Held> {
        let data = repo.read_blob(index, id)?;
        let start = self.out.len();
        self.out.extend_from_slice(&data);
        Ok(Held::Out(start..self.out.len()))
    }

    /// Whether `len` bytes for `d` would join the batch: the same dense file, right after
    /// the batch's last bytes, and room left.
    fn continues(&self, d: &Dest, len: u64) -> bool {
        let Some((last, held)) = self.batch.last() else {
            return true;
        };
        Arc::ptr_eq(&last.target, &d.target)
            && last.data_offset + held.len() == d.data_offset
            && self.batch_bytes + len <= MAX_BATCH_BYTES
            && self.batch.len() < MAX_BATCH_PARTS
    }

    /// Opens `t` unless the walk kept it open or it is the file this worker has open.
    fn ensure_open(&mut self, t: &Arc<FileTarget>) -> Result<()> {
        if t.file.is_none() && !self.open.as_ref().is_some_and(|(o, _)| Arc::ptr_eq(o, t)) {
            self.open = Some((t.clone(), t.open()?));
        }
        Ok(())
    }

    /// `t` open for writing, if the walk kept it or this worker has it open.
    fn open_for<'b>(&'b self, t: &'b Arc<FileTarget>) -> Option<&'b File> {
        t.file.as_ref().or_else(|| {
            self.open
                .as_ref()
                .filter(|(o, _)| Arc::ptr_eq(o, t))
                .map(|(_, f)| f)
        })
    }

    /// Opens one blob, sealed at `buf[at..]`, and writes it to all its places. Gives the
    /// blob back when it does not verify, to be read again on its own once the span's
    /// read is over (that read runs inside this one's `block_on`, which cannot nest).
    fn restore_blob(
        &mut self,
        keys: &crate::repo::format::crypto::Keys,
        need: Need,
        buf: &mut [u8],
        at: usize,
        report: &mut RestoreReport,
    ) -> Option<Need> {
        self.flush_unless_continued(&need, buf, report);
        let opened = buf
            .get_mut(at..at + need.length as usize)
            .ok_or_else(|| {
                Error::corrupt(
                    format!("packs/{}", need.pack),
                    "shorter than the index says",
                )
            })
            .and_then(|sealed| {
                pack::open_blob_in_place(keys, sealed, &need.id, need.raw_length, &mut self.out)
            });
        match opened {
            Ok(pack::Opened::InPlace(r)) => {
                self.write_blob(buf, need, Ok(Held::Span(at + r.start..at + r.end)), report)
            }
            Ok(pack::Opened::Out(r)) => self.write_blob(buf, need, Ok(Held::Out(r)), report),
            Err(Error::Corrupt { object, reason }) => {
                tracing::debug!("{object} did not verify ({reason}); reading it again");
                return Some(need);
            }
            Err(e) => self.write_blob(buf, need, Err(e), report),
        }
        None
    }

    /// Reads one blob on its own (one the span's read did not reach, or that did not
    /// verify in it) and writes it to all its places.
    fn reread_blob(
        &mut self,
        repo: &Repository,
        index: &Index,
        need: Need,
        buf: &[u8],
        report: &mut RestoreReport,
    ) {
        self.flush_unless_continued(&need, buf, report);
        let held = self.reread(repo, index, &need.id);
        self.write_blob(buf, need, held, report);
    }

    /// Writes the batch out first when `need`'s blob cannot join it, so `out` holds only
    /// what the batch writes when the blob is opened onto its end.
    fn flush_unless_continued(&mut self, need: &Need, buf: &[u8], report: &mut RestoreReport) {
        if let Some(d) = need.dests.first()
            && !self.continues(d, u64::from(need.raw_length))
        {
            self.flush(buf, report);
        }
    }

    /// Writes an opened blob to every place of `need`, or fails them all.
    fn write_blob(
        &mut self,
        buf: &[u8],
        need: Need,
        opened: Result<Held>,
        report: &mut RestoreReport,
    ) {
        match opened {
            Ok(mut held) => {
                for d in need.dests {
                    held = self.add(buf, d, held, report);
                }
            }
            Err(e) => {
                for d in need.dests {
                    done(&d, Err(clone_err(&e)), self.verify, report, None);
                }
            }
        }
    }

    /// Where the first span bytes the batch still has to write are in the span's buffer.
    fn span_bytes_from(&self) -> Option<usize> {
        self.batch
            .iter()
            .filter_map(|(_, h)| match h {
                Held::Span(r) => Some(r.start),
                Held::Out(_) => None,
            })
            .min()
    }

    /// The span's buffer lost its first `n` bytes: the batch's places in it move down.
    fn span_bytes_moved(&mut self, n: usize) {
        for (_, held) in &mut self.batch {
            if let Held::Span(r) = held {
                *r = r.start - n..r.end - n;
            }
        }
    }

    /// Writes `held` to `d`: joins the batch when it continues it, otherwise writes the
    /// batch out first. Returns where `held` is now: writing the batch out moves a blob
    /// that is still to be written elsewhere (a blob held twice in a window) to the front
    /// of `out`.
    fn add(&mut self, buf: &[u8], d: Dest, held: Held, report: &mut RestoreReport) -> Held {
        let len = held.len();
        if d.target.node.extents.is_some() {
            // Sparse: the bytes are spread over extents, and written at once.
            let written = self.ensure_open(&d.target).and_then(|()| {
                let file = self.open_for(&d.target).expect("opened above");
                d.target.place(file, d.data_offset, self.bytes(buf, &held))
            });
            self.done(&d, written.map(|()| len), report);
            return held;
        }
        let held = match held {
            held if self.continues(&d, len) => held,
            Held::Out(r) => {
                let bytes = self.out[r].to_vec();
                self.flush(buf, report);
                self.out.extend_from_slice(&bytes);
                Held::Out(0..bytes.len())
            }
            span => {
                self.flush(buf, report);
                span
            }
        };
        self.batch_bytes += len;
        self.batch.push((d, held.clone()));
        held
    }

    /// Counts one written (or failed) place, with the progress bar.
    fn done(&self, d: &Dest, written: Result<u64>, report: &mut RestoreReport) {
        if let (Ok(n), Some(p)) = (&written, self.progress) {
            p.inc(*n);
        }
        done(d, written, self.verify, report, self.open_for(&d.target));
    }

    /// Writes the batch with one `pwritev`, marks its places done and empties `out`.
    fn flush(&mut self, buf: &[u8], report: &mut RestoreReport) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if let Some((first, _)) = batch.first() {
            let target = first.target.clone();
            let written = self.ensure_open(&target).and_then(|()| {
                let parts: Vec<&[u8]> = batch.iter().map(|(_, h)| self.bytes(buf, h)).collect();
                let file = self.open_for(&target).expect("opened above");
                target.write_dense(file, first.data_offset, &parts)
            });
            for (d, h) in &batch {
                self.done(
                    d,
                    written.as_ref().map(|()| h.len()).map_err(clone_err),
                    report,
                );
            }
        }
        self.out.clear();
        // A buffer that grew for a huge blob is not kept for the rest of the restore.
        if self.out.capacity() as u64 > 2 * MAX_BATCH_BYTES {
            self.out = Vec::new();
        }
    }
}

/// `pwritev` until every byte of `parts` is written at `offset`.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match nix::sys::uio::pwritev(file, rest, offset as i64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The same error again for the next file that holds the blob.
fn clone_err(e: &Error) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::corrupt(object.clone(), reason.clone()),
        other => Error::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(offset: u64, length: u64) -> Need {
        Need {
            id: BlobId([offset as u8; 32]),
            pack: PackId([1; 32]),
            offset,
            length,
            raw_length: length as u32,
            dests: Vec::new(),
        }
    }

    #[test]
    fn spans_join_near_blobs_of_any_size_and_stop_at_gaps() {
        const MIB: u64 = 1024 * 1024;
        const G: u64 = MAX_GAP_BYTES;
        let (_full, free) = bounded(1);
        let window = Arc::new(WindowSlot(free));
        let big_end = 400 + 2 * G + 20 * MIB;
        let spans = cut_spans(
            PackId([1; 32]),
            vec![
                need(0, 100),
                need(100 + G, 100),          // gap exactly the limit: same read
                need(300 + 2 * G, 100),      // gap past it: a new read
                need(400 + 2 * G, 20 * MIB), // right after: joins, however large
                need(big_end + G + 1, 100),  // gap past the limit again
            ],
            &window,
        );
        let got: Vec<(u64, u64, usize)> = spans
            .iter()
            .map(|s| (s.start, s.end, s.needs.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 200 + G, 2),
                (300 + 2 * G, big_end, 2),
                (big_end + G + 1, big_end + G + 101, 1),
            ]
        );
    }

    #[test]
    fn sparse_data_lands_on_the_extents_across_blob_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(40).unwrap();
        let node = Node {
            size: 40,
            // Data 0..4 at 2, 4..10 at 20, then a zero-length extent, 10..12 at 38.
            extents: Some(vec![(2, 4), (20, 6), (30, 0), (38, 2)]),
            ..Node::default()
        };
        let t = FileTarget::new(path.clone(), "f".into(), node, None);
        // Blobs of 3, 5 and 4 bytes: each straddles an extent boundary.
        t.place(&file, 0, b"abc").unwrap();
        t.place(&file, 3, b"defgh").unwrap();
        t.place(&file, 8, b"ijkl").unwrap();
        assert!(t.place(&file, 12, b"m").is_err(), "past the data must fail");
        let mut want = vec![0u8; 40];
        want[2..6].copy_from_slice(b"abcd");
        want[20..26].copy_from_slice(b"efghij");
        want[38..40].copy_from_slice(b"kl");
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
