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

mod target;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded};

use self::target::done;
pub use self::target::{FdBudget, FileTarget, finish};
pub use self::writer::SpanWriter;
use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::ops::restore::RestoreReport;
use crate::repo::Repository;
use crate::repo::format::index::Index;

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
}
