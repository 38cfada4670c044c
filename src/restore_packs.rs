//! Pack-ordered restore: the file contents of a restore are fetched pack by pack, not file
//! by file.
//!
//! Why: on S3 every read is a request, and reading per batch of files made a restore of
//! ~50,000 small files cost thousands of small ranged GETs, most of the time waiting on
//! round trips (README, "Benchmarks"). Here the walk hands every file to a `Planner`, which
//! gathers the blobs that a *window* of files needs (bounded in files and bytes, so memory
//! stays flat however large the snapshot), groups them by pack, and cuts each pack's needs
//! into a few large spans. Worker threads fetch one span with one read, open (decrypt,
//! decompress, verify) each blob in it once, and write it with `pwrite` to every file
//! offset that holds it. A file is finished (size check, `--verify`, metadata) by whoever
//! writes its last blob, or removed and named when any of its blobs could not be restored.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::ids::{BlobId, PackId};
use crate::index::Index;
use crate::pack;
use crate::repo::Repository;
use crate::restore::{RestoreReport, verify_file};
use crate::tree::Node;

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
/// Largest single read; each worker holds one span in memory while it writes it out.
const MAX_SPAN_BYTES: u64 = 8 * 1024 * 1024;

/// One regular file being restored: created (empty) by the walk, filled by the workers.
pub struct FileTarget {
    pub path: PathBuf,
    pub display: String,
    pub node: Node,
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
    pub fn new(path: PathBuf, display: String, node: Node) -> FileTarget {
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
        }
    }

    fn open(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| Error::io("cannot open for writing", &self.path, e))
    }

    /// Writes `data`, which starts at `data_offset` of the file's content, where it belongs:
    /// at the same offset for a dense file, spread over the extents for a sparse one.
    fn place(&self, file: &File, data_offset: u64, data: &[u8]) -> Result<()> {
        let io_err = |e| Error::io("cannot write", &self.path, e);
        let too_much =
            || Error::corrupt(format!("file {}", self.display), "more data than its size");
        let Some(extents) = &self.node.extents else {
            if data_offset + data.len() as u64 > self.node.size {
                return Err(too_much());
            }
            return file.write_all_at(data, data_offset).map_err(io_err);
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
        None => match file {
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
    let len = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &t.path, e))?
        .len();
    if len != t.node.size {
        return Err(Error::corrupt(
            format!("file {}", t.display),
            format!("restored {len} bytes, snapshot says {}", t.node.size),
        ));
    }
    if verify {
        verify_file(&t.path, &t.node)?;
    }
    fsmeta::apply_file_metadata(file, &t.node)
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
    /// How much smaller than the largest the current window is (see FIRST_WINDOW_DIVISOR).
    divisor: u32,
}

impl<'a> Planner<'a> {
    pub fn new(index: &'a Index, tx: Sender<Span>, verify: bool) -> Self {
        Planner {
            verify,
            index,
            tx,
            needs: Vec::new(),
            by_blob: HashMap::new(),
            files: 0,
            bytes: 0,
            divisor: FIRST_WINDOW_DIVISOR,
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
        self.divisor = (self.divisor / 2).max(1);
        self.by_blob.clear();
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
            for span in cut_spans(pack, needs) {
                self.tx
                    .send(span)
                    .map_err(|_| Error::Other("restore workers stopped".into()))?;
            }
        }
        Ok(())
    }
}

/// Cuts one pack's needs (sorted by offset) into spans: neighbours closer than
/// `MAX_GAP_BYTES` share a read, no read passes `MAX_SPAN_BYTES` (one larger blob alone
/// may).
fn cut_spans(pack: PackId, needs: Vec<Need>) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for need in needs {
        let end = need.offset + need.length;
        if let Some(s) = spans.last_mut()
            && need.offset >= s.end
            && need.offset - s.end <= MAX_GAP_BYTES
            && end - s.start <= MAX_SPAN_BYTES
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
        });
    }
    spans
}

/// Fetches one span (into `buf`, the worker's reused read buffer), opens each blob once
/// and writes it to all its places. A blob that
/// does not verify is read again on its own (a bit flipped on the way costs a read, not
/// the files); what still fails fails exactly the files that hold it.
pub fn restore_span(
    repo: &Repository,
    index: &Index,
    span: Span,
    verify: bool,
    progress: Option<&indicatif::ProgressBar>,
    report: &mut RestoreReport,
    buf: &mut Vec<u8>,
) {
    let name = span.pack.to_hex();
    let fetched = repo.block_on(repo.backend().get_range_into(
        Kind::Pack,
        &name,
        span.start,
        span.end - span.start,
        buf,
    ));
    // A span that cannot be read whole (a truncated or missing pack, a range the server
    // refuses) may still hold blobs that can be: each is then read on its own, so only the
    // files that hold a lost blob fail.
    let fetched = fetched
        .inspect_err(|e| tracing::debug!("{e}; reading the span's blobs one by one"))
        .is_ok();
    // The file written last, kept open: a pack's neighbouring blobs mostly belong to the
    // same file (one handle at a time per worker, so open files stay few).
    let mut open: Option<(*const FileTarget, File)> = None;
    // Decompressed blobs; those stored raw are written straight from `buf`.
    let mut out = Vec::new();
    for need in span.needs {
        if !fetched {
            let data = repo.read_blob(index, &need.id);
            write_need(need, data.as_deref(), &mut open, verify, progress, report);
            continue;
        }
        let at = (need.offset - span.start) as usize;
        let opened = buf
            .get_mut(at..at + need.length as usize)
            .ok_or_else(|| {
                Error::corrupt(
                    format!("packs/{}", span.pack),
                    "shorter than the index says",
                )
            })
            .and_then(|sealed| {
                pack::open_blob_in_place(repo.keys(), sealed, &need.id, need.raw_length, &mut out)
            });
        match opened {
            Err(Error::Corrupt { object, reason }) => {
                tracing::debug!("{object} did not verify ({reason}); reading it again");
                let data = repo.read_blob(index, &need.id);
                write_need(need, data.as_deref(), &mut open, verify, progress, report);
            }
            other => write_need(need, other.as_deref(), &mut open, verify, progress, report),
        }
    }
}

/// Writes one opened blob (or its error) to every place that holds it.
fn write_need(
    need: Need,
    data: std::result::Result<&[u8], &Error>,
    open: &mut Option<(*const FileTarget, File)>,
    verify: bool,
    progress: Option<&indicatif::ProgressBar>,
    report: &mut RestoreReport,
) {
    for d in need.dests {
        let t = &*d.target;
        let written = data.map_err(clone_err).and_then(|data| {
            let file = match &open {
                Some((p, f)) if std::ptr::eq(*p, t) => f,
                _ => &open.insert((t as *const _, t.open()?)).1,
            };
            t.place(file, d.data_offset, data)?;
            Ok(data.len() as u64)
        });
        if let (Ok(n), Some(p)) = (&written, progress) {
            p.inc(*n);
        }
        let file = open.as_ref().filter(|(p, _)| std::ptr::eq(*p, t));
        done(&d, written, verify, report, file.map(|(_, f)| f));
    }
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
    fn spans_join_near_blobs_and_stop_at_gaps_and_size() {
        const MIB: u64 = 1024 * 1024;
        const G: u64 = MAX_GAP_BYTES;
        let spans = cut_spans(
            PackId([1; 32]),
            vec![
                need(0, 100),
                need(100 + G, 100),           // gap exactly the limit: same read
                need(300 + 2 * G, 100),       // gap past it: a new read
                need(2 * MIB + 500, 8 * MIB), // near, but the read would pass MAX_SPAN_BYTES
                need(20 * MIB, 10 * MIB),     // larger than a span: alone
            ],
        );
        let got: Vec<(u64, u64, usize)> = spans
            .iter()
            .map(|s| (s.start, s.end, s.needs.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 200 + G, 2),
                (300 + 2 * G, 400 + 2 * G, 1),
                (2 * MIB + 500, 10 * MIB + 500, 1),
                (20 * MIB, 30 * MIB, 1),
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
        let t = FileTarget::new(path.clone(), "f".into(), node);
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
