//! Content-defined chunking of file data: FastCDC 2020 with the repository's secret seed,
//! so chunk boundaries (and therefore sizes) reveal nothing to someone without the key.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

use crate::repo::ChunkerParams;

/// Splits a byte stream into chunks; each item is the chunk's bytes.
///
/// Streams up to `max` bytes long (most files in a volume) are read into one buffer of
/// their own size and cut in memory: the streaming chunker allocates and zeroes a `max`-sized
/// buffer per stream, which dominated the cost of backing up many small files.
pub fn chunks<'a, R: Read + 'a>(
    mut reader: R,
    size_hint: u64,
    params: ChunkerParams,
    seed: u64,
) -> Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + 'a> {
    if size_hint <= params.max as u64 {
        let mut buf = Vec::with_capacity(size_hint as usize);
        if let Err(e) = reader.read_to_end(&mut buf) {
            return Box::new(std::iter::once(Err(e)));
        }
        if buf.len() <= params.max as usize {
            return Box::new(cut_in_memory(buf, params, seed).into_iter().map(Ok));
        }
        // The file grew past the hint: chunk what was read, then the rest, as one stream.
        let stream = std::io::Cursor::new(buf).chain(reader);
        return Box::new(stream_chunks(stream, params, seed));
    }
    Box::new(stream_chunks(reader, params, seed))
}

fn cut_in_memory(buf: Vec<u8>, params: ChunkerParams, seed: u64) -> Vec<Vec<u8>> {
    if buf.len() <= params.min as usize {
        return if buf.is_empty() {
            Vec::new()
        } else {
            vec![buf]
        };
    }
    let cutter = FastCDC::with_level_and_seed(
        &buf,
        params.min,
        params.avg,
        params.max,
        Normalization::Level1,
        seed,
    );
    let spans: Vec<(usize, usize)> = cutter.map(|c| (c.offset, c.length)).collect();
    if spans.len() == 1 {
        return vec![buf];
    }
    spans
        .into_iter()
        .map(|(o, l)| buf[o..o + l].to_vec())
        .collect()
}

fn stream_chunks<R: Read>(
    reader: R,
    params: ChunkerParams,
    seed: u64,
) -> impl Iterator<Item = std::io::Result<Vec<u8>>> + use<R> {
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
        let a: Vec<Vec<u8>> = chunks(std::io::Cursor::new(data.clone()), data.len() as u64, p, 1)
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= p.max as usize));
        assert!(
            a.len() > 10,
            "random data must be cut at content-defined points"
        );
        let b: Vec<usize> = chunks(std::io::Cursor::new(data.clone()), data.len() as u64, p, 2)
            .map(|c| c.unwrap().len())
            .collect();
        assert_ne!(a.iter().map(|c| c.len()).collect::<Vec<_>>(), b);
        // The in-memory path cuts exactly where the streaming path does.
        let small = data[..p.max as usize].to_vec();
        let mem: Vec<Vec<u8>> = chunks(
            std::io::Cursor::new(small.clone()),
            small.len() as u64,
            p,
            1,
        )
        .map(|c| c.unwrap())
        .collect();
        let streamed: Vec<Vec<u8>> = stream_chunks(std::io::Cursor::new(small.clone()), p, 1)
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(mem, streamed);
        // A stream that outgrows its size hint still comes out whole.
        let grown: Vec<Vec<u8>> = chunks(std::io::Cursor::new(data.clone()), 1000, p, 1)
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(grown.concat(), data);
    }
}
