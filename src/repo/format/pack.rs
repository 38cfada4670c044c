//! Packs: many sealed blobs in one object, followed by a sealed trailer listing them, so the
//! index can always be rebuilt from the packs alone.
//!
//! Layout: `blob* | sealed(trailer) | trailer_len: u32 LE | MAGIC`. Each blob is
//! `seal([0] + raw)` or `seal([1] + zstd(raw))`; the flag lives inside the ciphertext.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::format::crypto::{Keys, Purpose};

pub const MAGIC: &[u8; 4] = b"VGP1";
/// A pack is closed once it holds this much; packs of this size keep S3 request counts low
/// while bounding what a single upload holds in memory.
pub const TARGET_PACK_BYTES: usize = 16 * 1024 * 1024;
/// Largest blob accepted anywhere (chunks are far smaller; trees of huge directories are
/// the only big blobs). Protects readers from absurd sizes in crafted objects.
pub const MAX_BLOB_BYTES: u32 = 256 * 1024 * 1024;
/// Largest pack trailer accepted (about 4M entries).
pub const MAX_TRAILER_BYTES: u32 = 256 * 1024 * 1024;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    Data,
    Tree,
}

/// Where one blob sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub offset: u32,
    /// Sealed length in the pack.
    pub length: u32,
    /// Plaintext length after decompression.
    pub raw_length: u32,
}

/// Compresses (when it pays) and seals one blob. The compressor and its output buffer are
/// reused across blobs: creating a zstd context per chunk costs more than compressing a
/// small one, and a fresh buffer per chunk is zeroed and faulted in each time.
pub fn seal_blob(keys: &Keys, raw: &[u8], zstd: &mut BlobCompressor) -> Vec<u8> {
    let scratch = &mut zstd.scratch;
    scratch.clear();
    scratch.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    let compressed = zstd.cctx.compress_to_buffer(raw, scratch).is_ok();
    // Incompressible data (media, already-compressed files) is stored as is: decompressing
    // it would cost time on restore and save nothing.
    let (flag, body) = if compressed && scratch.len() < raw.len() {
        (FLAG_ZSTD, &scratch[..])
    } else {
        (FLAG_RAW, raw)
    };
    let mut buf = Vec::with_capacity(crate::repo::format::crypto::SEAL_OVERHEAD + 1 + body.len());
    buf.resize(crate::repo::format::crypto::SEAL_HEADER, 0);
    buf.push(flag);
    buf.extend_from_slice(body);
    keys.seal_vec(Purpose::Blob, buf)
}

/// A zstd context and the buffer it compresses into, one per sealing thread.
pub struct BlobCompressor {
    cctx: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl BlobCompressor {
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(BlobCompressor {
            cctx: zstd::bulk::Compressor::new(level)?,
            scratch: Vec::new(),
        })
    }
}

/// Opens one sealed blob and checks it really is the blob `id`.
pub fn open_blob(keys: &Keys, sealed: &[u8], id: &BlobId, raw_length: u32) -> Result<Vec<u8>> {
    let what = format!("blob {}", id.to_hex());
    let mut body = keys.open(Purpose::Blob, sealed, &what)?;
    let raw = match decode_flag(&body, &what)? {
        // Shifting the bytes down costs less than a fresh buffer to copy them into.
        FLAG_RAW => {
            body.drain(..1);
            body
        }
        _ => {
            let mut out = Vec::new();
            decompress_into(&body[1..], raw_length, &mut out, &what)?;
            out
        }
    };
    check_raw(keys, &raw, id, raw_length, &what)?;
    Ok(raw)
}

/// Where `open_blob_in_place` left a blob's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Stored raw: this range of `sealed`.
    InPlace(std::ops::Range<usize>),
    /// Stored compressed: decompressed to this range at the end of `out`.
    Out(std::ops::Range<usize>),
}

/// `open_blob` where the sealed bytes lie (a restore's fetched span; they are
/// overwritten): a blob stored raw stays in `sealed`, decrypted, a compressed one is
/// decompressed onto the end of `out`. Says where.
pub fn open_blob_in_place(
    keys: &Keys,
    sealed: &mut [u8],
    id: &BlobId,
    raw_length: u32,
    out: &mut Vec<u8>,
) -> Result<Opened> {
    let what = format!("blob {}", id.to_hex());
    let body = keys.open_in_place(Purpose::Blob, sealed, &what)?;
    let opened = match decode_flag(body, &what)? {
        FLAG_RAW => {
            // The body starts after the seal header, and the raw bytes after its flag.
            let start = crate::repo::format::crypto::SEAL_HEADER + 1;
            Opened::InPlace(start..start + body.len() - 1)
        }
        _ => Opened::Out(decompress_append(&body[1..], raw_length, out, &what)?),
    };
    let raw = match &opened {
        Opened::InPlace(r) => &sealed[r.clone()],
        Opened::Out(r) => &out[r.clone()],
    };
    check_raw(keys, raw, id, raw_length, &what)?;
    Ok(opened)
}

/// The flag byte in front of a blob's body: FLAG_RAW or FLAG_ZSTD.
fn decode_flag(body: &[u8], what: &str) -> Result<u8> {
    match body.first() {
        None => Err(Error::corrupt(what, "empty blob body")),
        Some(&f) if f == FLAG_RAW || f == FLAG_ZSTD => Ok(f),
        Some(other) => Err(Error::corrupt(what, format!("unknown blob flag {other}"))),
    }
}

/// Decompresses into `out` (emptied first).
fn decompress_into(payload: &[u8], raw_length: u32, out: &mut Vec<u8>, what: &str) -> Result<()> {
    out.clear();
    decompress_append(payload, raw_length, out, what).map(|_| ())
}

/// Decompresses onto the end of `out`; returns where the blob landed. The output stops at
/// `out`'s capacity, which is the declared size or what earlier (legitimate) blobs needed,
/// so a decompression bomb stops there; a wrong size is then refused by `check_raw`.
/// Reserving does not touch the memory, so a hostile declared size costs address space,
/// not resident memory.
fn decompress_append(
    payload: &[u8],
    raw_length: u32,
    out: &mut Vec<u8>,
    what: &str,
) -> Result<std::ops::Range<usize>> {
    if raw_length > MAX_BLOB_BYTES {
        return Err(Error::corrupt(what, "declared size is absurd"));
    }
    // One decompression context per thread: creating one per blob cost a restore of small
    // chunks about 5% of its CPU time.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let start = out.len();
    out.reserve(raw_length as usize);
    DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        let dctx = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?,
            ),
        };
        // Writes into the spare capacity from `start` and sets the length.
        let mut tail = std::io::Cursor::new(&mut *out);
        tail.set_position(start as u64);
        dctx.decompress_to_buffer(payload, &mut tail)
            .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?;
        Ok(start..out.len())
    })
}

fn check_raw(keys: &Keys, raw: &[u8], id: &BlobId, raw_length: u32, what: &str) -> Result<()> {
    if raw.len() != raw_length as usize {
        return Err(Error::corrupt(
            what,
            format!(
                "{} bytes after decoding, index says {raw_length}",
                raw.len()
            ),
        ));
    }
    if keys.id_of(raw) != id.0 {
        return Err(Error::corrupt(what, "content does not match its id"));
    }
    Ok(())
}

/// Accumulates sealed blobs into one pack in memory.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// A builder that fills `buf` (emptied first), which should hold a whole pack.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackBuilder {
            buf,
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, kind: BlobKind, id: BlobId, sealed: &[u8], raw_length: u32) {
        self.entries.push(PackEntry {
            kind,
            id,
            offset: self.buf.len() as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Appends the trailer and returns the finished pack bytes, its id and entries.
    pub fn finish(mut self, keys: &Keys) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let plain =
            postcard::to_stdvec(&self.entries).expect("serializing pack entries cannot fail");
        let sealed = keys.seal(Purpose::PackTrailer, &plain);
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(MAGIC);
        let id = PackId(*blake3::hash(&self.buf).as_bytes());
        (id, self.buf, self.entries)
    }
}

/// Bytes at the end of a pack that hold the trailer length and magic.
pub const FOOTER_LEN: u64 = 8;

/// Parses the footer (last 8 bytes) and returns the sealed trailer's length.
pub fn trailer_len(footer: &[u8], pack_size: u64, what: &str) -> Result<u32> {
    if footer.len() != FOOTER_LEN as usize || &footer[4..] != MAGIC {
        return Err(Error::corrupt(
            what,
            "no pack footer (truncated or not a pack)",
        ));
    }
    let len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    if len > MAX_TRAILER_BYTES || len as u64 + FOOTER_LEN > pack_size {
        return Err(Error::corrupt(
            what,
            format!("trailer length {len} does not fit the pack"),
        ));
    }
    Ok(len)
}

/// Decrypts and validates a pack trailer: every entry must lie inside the blob area.
pub fn parse_trailer(
    keys: &Keys,
    sealed: &[u8],
    blob_area: u64,
    what: &str,
) -> Result<Vec<PackEntry>> {
    let plain = keys.open(Purpose::PackTrailer, sealed, what)?;
    parse_trailer_plain(&plain, blob_area, what)
}

/// Decodes and validates a decrypted trailer (split out so it can be fuzzed directly: a
/// key holder, or a bug, can hand it any bytes).
pub fn parse_trailer_plain(plain: &[u8], blob_area: u64, what: &str) -> Result<Vec<PackEntry>> {
    let entries: Vec<PackEntry> =
        postcard::from_bytes(plain).map_err(|e| Error::corrupt(what, format!("trailer: {e}")))?;
    for e in &entries {
        if e.offset as u64 + e.length as u64 > blob_area
            || e.raw_length > MAX_BLOB_BYTES
            || e.length > MAX_BLOB_BYTES
        {
            return Err(Error::corrupt(
                what,
                format!("trailer entry for {} lies outside the pack", e.id.short()),
            ));
        }
    }
    Ok(entries)
}

/// Parses a whole pack held in memory (used by `check --read-data` and repair).
pub fn parse_pack(keys: &Keys, pack: &[u8], what: &str) -> Result<Vec<PackEntry>> {
    if (pack.len() as u64) < FOOTER_LEN {
        return Err(Error::corrupt(what, "shorter than a pack footer"));
    }
    let footer_at = pack.len() - FOOTER_LEN as usize;
    let tlen = trailer_len(&pack[footer_at..], pack.len() as u64, what)? as usize;
    let tstart = footer_at - tlen;
    parse_trailer(keys, &pack[tstart..footer_at], tstart as u64, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_garbage_is_refused() {
        let keys = Keys::from_master(&[1u8; 32]);
        let mut b = PackBuilder::default();
        let mut z = BlobCompressor::new(3).unwrap();
        let raws: Vec<Vec<u8>> = vec![
            vec![0u8; 10000],
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ];
        for r in &raws {
            let id = BlobId(keys.id_of(r));
            b.add(
                BlobKind::Data,
                id,
                &seal_blob(&keys, r, &mut z),
                r.len() as u32,
            );
        }
        let (id, bytes, entries) = b.finish(&keys);
        assert_eq!(id.0, *blake3::hash(&bytes).as_bytes());
        let parsed = parse_pack(&keys, &bytes, "p").unwrap();
        assert_eq!(parsed, entries);
        for (e, r) in parsed.iter().zip(&raws) {
            let s = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&keys, s, &e.id, e.raw_length).unwrap(), r);
        }
        // Compression happened for the zeros.
        assert!(parsed[0].length < 200);
        // Garbage and truncation are errors, not panics.
        for cut in [0, 3, 8, bytes.len() / 2, bytes.len() - 1] {
            assert!(parse_pack(&keys, &bytes[..cut], "p").is_err());
        }
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 20] ^= 1;
        assert!(parse_pack(&keys, &flipped, "p").is_err());
    }
}
