//! The index: which pack holds each blob. Kept in memory as a hash map while a command runs,
//! persisted as immutable `index/` files (one per batch of packs), each sealed and named by
//! the keyed hash of its plaintext.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{BlobId, IndexId, PackId};
use crate::repo::format::crypto::{Keys, Purpose};
use crate::repo::format::pack::{BlobKind, PackEntry};

/// Largest index file accepted when reading (compressed, sealed).
pub const MAX_INDEX_FILE_BYTES: usize = 512 * 1024 * 1024;
/// Largest decompressed index file accepted.
pub const MAX_INDEX_PLAIN_BYTES: usize = 4 * MAX_INDEX_FILE_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLoc {
    pack: u32,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// Serialized form of one index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexedPack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedPack {
    pub id: PackId,
    pub size: u64,
    pub blobs: Vec<PackEntry>,
}

impl IndexFile {
    /// Returns (name, sealed bytes).
    pub fn seal(&self, keys: &Keys) -> (IndexId, Vec<u8>) {
        let plain = postcard::to_stdvec(self).expect("serializing an index cannot fail");
        let id = IndexId(keys.id_of(&plain));
        let compressed =
            zstd::bulk::compress(&plain, 3).expect("zstd of an in-memory buffer cannot fail");
        (id, keys.seal(Purpose::Index, &compressed))
    }

    pub fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<IndexFile> {
        let what = format!("index/{name}");
        if sealed.len() > MAX_INDEX_FILE_BYTES {
            return Err(Error::corrupt(
                &what,
                "larger than any index volguard writes",
            ));
        }
        let compressed = keys.open(Purpose::Index, sealed, &what)?;
        let plain = Self::decompress(&compressed, &what)?;
        if IndexId::from_hex(name).map(|id| id.0) != Some(keys.id_of(&plain)) {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        Self::decode_plain(&plain, &what)
    }

    /// Decompresses a decrypted index file, refusing more than `MAX_INDEX_PLAIN_BYTES`.
    /// Streamed, so the buffer grows with the real content: `zstd::bulk::decompress` would
    /// reserve the whole 2 GiB limit up front for every file, which libFuzzer's malloc
    /// limit (and any `ulimit -v`) turns into an abort.
    pub fn decompress(compressed: &[u8], what: &str) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut plain = Vec::new();
        let dec = zstd::stream::read::Decoder::new(compressed)
            .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?;
        dec.take(MAX_INDEX_PLAIN_BYTES as u64 + 1)
            .read_to_end(&mut plain)
            .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?;
        if plain.len() > MAX_INDEX_PLAIN_BYTES {
            return Err(Error::corrupt(
                what,
                "decompresses to more than any index volguard writes",
            ));
        }
        Ok(plain)
    }

    /// Decodes a decrypted, decompressed index file (fuzzed directly).
    pub fn decode_plain(plain: &[u8], what: &str) -> Result<IndexFile> {
        postcard::from_bytes(plain).map_err(|e| Error::corrupt(what, format!("decode: {e}")))
    }
}

/// In-memory blob → location map over every loaded index file.
#[derive(Default)]
pub struct Index {
    packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, BlobLoc>,
}

impl Index {
    pub fn add_pack(&mut self, id: PackId, size: u64, entries: &[PackEntry]) {
        let pos = *self.pack_pos.entry(id).or_insert_with(|| {
            self.packs.push((id, size));
            (self.packs.len() - 1) as u32
        });
        self.blobs.reserve(entries.len());
        for e in entries {
            self.blobs.entry(e.id).or_insert(BlobLoc {
                pack: pos,
                kind: e.kind,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
    }

    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            self.add_pack(p.id, p.size, &p.blobs);
        }
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &BlobId) -> Option<(PackId, BlobLoc)> {
        self.blobs
            .get(id)
            .map(|l| (self.packs[l.pack as usize].0, *l))
    }

    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &(PackId, u64)> {
        self.packs.iter()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Every blob with its location, for checks that walk the whole index.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, PackId, &BlobLoc)> {
        self.blobs
            .iter()
            .map(|(id, l)| (id, self.packs[l.pack as usize].0, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_round_trip_and_name_binding() {
        let keys = Keys::from_master(&[3u8; 32]);
        let f = IndexFile {
            packs: vec![IndexedPack {
                id: PackId([9; 32]),
                size: 100,
                blobs: vec![PackEntry {
                    kind: BlobKind::Data,
                    id: BlobId([5; 32]),
                    offset: 0,
                    length: 50,
                    raw_length: 40,
                }],
            }],
        };
        let (id, sealed) = f.seal(&keys);
        assert_eq!(IndexFile::open(&keys, &id.to_hex(), &sealed).unwrap(), f);
        let other = IndexId([0; 32]).to_hex();
        assert!(IndexFile::open(&keys, &other, &sealed).is_err());
        assert!(IndexFile::open(&keys, &id.to_hex(), &sealed[..sealed.len() - 1]).is_err());
        let mut idx = Index::default();
        idx.add_file(&f);
        assert_eq!(idx.get(&BlobId([5; 32])).unwrap().0, PackId([9; 32]));
    }
}
