//! One restore worker's writes: opened blobs are gathered into batches for consecutive
//! places of one file and written with one `pwritev`, or spread over a sparse file's extents.

use std::fs::File;
use std::sync::Arc;

use super::{Dest, FileTarget, Need, done};
use crate::error::{Error, Result};
use crate::ids::BlobId;
use crate::ops::restore::RestoreReport;
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::pack;

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
    pub(super) open: Option<(Arc<FileTarget>, File)>,
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
    pub(super) fn restore_blob(
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
    pub(super) fn reread_blob(
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
    pub(super) fn span_bytes_from(&self) -> Option<usize> {
        self.batch
            .iter()
            .filter_map(|(_, h)| match h {
                Held::Span(r) => Some(r.start),
                Held::Out(_) => None,
            })
            .min()
    }

    /// The span's buffer lost its first `n` bytes: the batch's places in it move down.
    pub(super) fn span_bytes_moved(&mut self, n: usize) {
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
    pub(super) fn flush(&mut self, buf: &[u8], report: &mut RestoreReport) {
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

/// The same error again for the next file that holds the blob.
fn clone_err(e: &Error) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::corrupt(object.clone(), reason.clone()),
        other => Error::Other(other.to_string()),
    }
}
