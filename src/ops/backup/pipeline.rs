//! The backup's pipeline behind the scanner: seal workers compress and encrypt new blobs,
//! the packer fills packs, uploaders store them and write index files. Its own file so the
//! threads and their hand-offs read apart from the walk that feeds them.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::error::Result;
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::index::{IndexFile, IndexedPack};
use crate::repo::format::pack::{self, BlobKind, PackBuilder, PackEntry};
use crate::repo::inflight::Inflight;

/// Packs uploaded between two index files: a crash loses at most this many packs' worth
/// of index, and those packs are recovered from their trailers by the next run anyway.
const INDEX_EVERY_PACKS: usize = 32;

/// Blobs queued between pipeline stages (each at most one chunk).
pub(super) const QUEUE_BLOBS: usize = 16;

/// A new blob on its way to a pack.
pub(super) struct RawBlob {
    pub(super) kind: BlobKind,
    pub(super) id: BlobId,
    pub(super) raw: Vec<u8>,
}

pub(super) struct SealedBlob {
    kind: BlobKind,
    id: BlobId,
    sealed: Vec<u8>,
    raw_length: u32,
}

pub(super) struct FinishedPack {
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

#[derive(Default)]
pub(super) struct Uploaded {
    pub(super) packs: Vec<IndexedPack>,
    pub(super) bytes: u64,
}

pub(super) fn seal_worker(repo: &Repository, rx: Receiver<RawBlob>, tx: Sender<SealedBlob>) {
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
pub(super) fn packer(
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

pub(super) fn finish_pack(repo: &Repository, b: PackBuilder) -> FinishedPack {
    let (id, bytes, entries) = b.finish(repo.keys());
    FinishedPack { id, bytes, entries }
}

/// Index state shared by the uploader threads.
#[derive(Default)]
pub(super) struct UploadState {
    pub(super) batch: Vec<IndexedPack>,
    pub(super) done: Uploaded,
}

/// Writes an index file for the packs in `batch` (all of them already durable).
pub(super) fn flush_index(
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
pub(super) fn uploader(
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
pub(super) fn upload_pack(
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
pub(super) struct PackBuffers {
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
    pub(super) fn new(spares: usize, room: usize) -> Self {
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
}
