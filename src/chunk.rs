//! Content-defined chunking of file data: FastCDC 2020 with the repository's secret seed,
//! so chunk boundaries (and therefore sizes) reveal nothing to someone without the key.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::repo::ChunkerParams;

/// Splits a byte stream into chunks; each item is the chunk's bytes.
pub fn chunks<R: Read>(
    reader: R,
    params: ChunkerParams,
    seed: u64,
) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    StreamCDC::with_level_and_seed(
        reader,
        params.min,
        params.avg,
        params.max,
        Normalization::Level1,
        seed,
    )
    .map(|r| {
        r.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_input_and_seed_moves_boundaries() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = crate::repo::DEFAULT_CHUNKER;
        let a: Vec<Vec<u8>> = chunks(&data[..], p, 1).map(|c| c.unwrap()).collect();
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= p.max as usize));
        assert!(
            a.len() > 10,
            "random data must be cut at content-defined points"
        );
        let b: Vec<usize> = chunks(&data[..], p, 2).map(|c| c.unwrap().len()).collect();
        assert_ne!(a.iter().map(|c| c.len()).collect::<Vec<_>>(), b);
    }
}
