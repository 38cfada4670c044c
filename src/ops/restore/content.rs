//! A file's content as the repository holds it: read back run by run or as a plain
//! stream (holes as zeros), checked against what its node claims, and verified on disk.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::tree::Node;

/// Yields a file's data as runs `(logical offset, bytes)`, fetching and verifying one
/// chunk at a time; holes between extents are simply absent.
pub struct DataRuns<'a> {
    repo: &'a Repository,
    index: &'a Index,
    node: &'a Node,
    extents: Vec<(u64, u64)>,
    next_chunk: usize,
    /// Chunks read ahead in one go (see `Repository::read_blobs`), next one last.
    ahead: Vec<Vec<u8>>,
    chunk: Vec<u8>,
    chunk_pos: usize,
    extent: usize,
    extent_used: u64,
}

impl<'a> DataRuns<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, node: &'a Node) -> Self {
        DataRuns {
            repo,
            index,
            node,
            extents: node.extents.clone().unwrap_or_else(|| vec![(0, node.size)]),
            next_chunk: 0,
            ahead: Vec::new(),
            chunk: Vec::new(),
            chunk_pos: 0,
            extent: 0,
            extent_used: 0,
        }
    }

    pub fn next_run(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.chunk_pos >= self.chunk.len() {
            if self.ahead.is_empty() {
                /// Chunks fetched per batch: a few MiB, so memory stays small.
                const READ_AHEAD_CHUNKS: usize = 64;
                let content = &self.node.content;
                let end = content.len().min(self.next_chunk + READ_AHEAD_CHUNKS);
                if self.next_chunk >= end {
                    return Ok(None);
                }
                self.ahead = self
                    .repo
                    .read_blobs(self.index, &content[self.next_chunk..end])?;
                self.ahead.reverse();
            }
            let Some(chunk) = self.ahead.pop() else {
                return Ok(None);
            };
            self.chunk = chunk;
            self.chunk_pos = 0;
            self.next_chunk += 1;
            if self.chunk.is_empty() {
                return self.next_run();
            }
        }
        loop {
            let Some(&(start, len)) = self.extents.get(self.extent) else {
                return Err(Error::corrupt(
                    "file content",
                    "more data than the file's extents hold",
                ));
            };
            if self.extent_used >= len {
                self.extent += 1;
                self.extent_used = 0;
                continue;
            }
            let n = ((len - self.extent_used) as usize).min(self.chunk.len() - self.chunk_pos);
            let offset = start + self.extent_used;
            if offset + n as u64 > self.node.size {
                return Err(Error::corrupt(
                    "file content",
                    "data beyond the file's size",
                ));
            }
            let run = self.chunk[self.chunk_pos..self.chunk_pos + n].to_vec();
            self.chunk_pos += n;
            self.extent_used += n as u64;
            return Ok(Some((offset, run)));
        }
    }
}

/// The logical content of a file (holes read as zeros), for tar export, `dump` and
/// verification. Each chunk is verified by its keyed hash when fetched; on top, the whole
/// content is hashed as it is read and checked against the node's plain BLAKE3 before the
/// last bytes are handed out, so a reader never receives the whole of a file whose
/// content is not the one the snapshot recorded: the read that would end it fails instead.
pub struct FileReader<'a> {
    runs: DataRuns<'a>,
    size: u64,
    pos: u64,
    current: Option<(u64, Vec<u8>)>,
    hasher: blake3::Hasher,
    expected: Option<[u8; 32]>,
}

impl<'a> FileReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, node: &'a Node) -> Self {
        FileReader {
            runs: DataRuns::new(repo, index, node),
            size: node.size,
            pos: 0,
            current: None,
            hasher: blake3::Hasher::new(),
            expected: node.file_hash,
        }
    }

    /// Hashes the `n` bytes about to be handed out; when they end the file, fails if the
    /// content is not what the snapshot's BLAKE3 says.
    fn hand_out(&mut self, out: &[u8], n: usize) -> io::Result<usize> {
        self.hasher.update(&out[..n]);
        self.pos += n as u64;
        if self.pos >= self.size
            && let Some(expected) = self.expected
            && *self.hasher.finalize().as_bytes() != expected
        {
            return Err(io::Error::other(
                "the content read back does not match the BLAKE3 the snapshot recorded for \
                 this file; run `volguard check --read-data`",
            ));
        }
        Ok(n)
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.size || out.is_empty() {
                return Ok(0);
            }
            let current_end = self.current.as_ref().map(|(o, d)| o + d.len() as u64);
            if current_end.is_none_or(|end| end <= self.pos) {
                self.current = self
                    .runs
                    .next_run()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if self.current.is_none() {
                    // Trailing hole.
                    let n = ((self.size - self.pos) as usize).min(out.len());
                    out[..n].fill(0);
                    return self.hand_out(out, n);
                }
                continue;
            }
            let (off, data) = self.current.as_ref().expect("checked above");
            if self.pos < *off {
                let n = ((off - self.pos) as usize).min(out.len());
                out[..n].fill(0);
                return self.hand_out(out, n);
            }
            let start = (self.pos - off) as usize;
            let n = (data.len() - start).min(out.len());
            out[..n].copy_from_slice(&data[start..start + n]);
            return self.hand_out(out, n);
        }
    }
}

/// Checks what a file node claims against what its content holds, before anything is
/// created: the data the index knows for its chunks must be exactly its size (dense) or
/// its extents (sparse, which must be ordered, apart and inside the size). So a crafted
/// node cannot make a restore or an export allocate, write or zero-fill by a claimed size
/// (a "2^60-byte file" with one chunk), and missing data is never padded with zeros.
pub fn check_content(index: &Index, node: &Node) -> Result<()> {
    let mut data = 0u64;
    for id in &node.content {
        let (_, loc) = index.get(id).ok_or_else(|| {
            Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
        })?;
        data += u64::from(loc.raw_length);
    }
    let bad = |why: String| Err(Error::corrupt("file node", why));
    match &node.extents {
        None if data != node.size => bad(format!(
            "claims {} bytes but its chunks hold {data}",
            node.size
        )),
        None => Ok(()),
        Some(extents) => {
            let (mut end, mut sum) = (0u64, 0u64);
            for &(offset, len) in extents {
                let Some(stop) = offset.checked_add(len).filter(|&s| s <= node.size) else {
                    return bad(format!(
                        "extent ({offset}, {len}) passes its size {}",
                        node.size
                    ));
                };
                if offset < end {
                    return bad("extents overlap or are out of order".into());
                }
                (end, sum) = (stop, sum + len);
            }
            if sum != data {
                return bad(format!(
                    "extents hold {sum} bytes but its chunks hold {data}"
                ));
            }
            Ok(())
        }
    }
}

/// Re-reads a restored file and compares its plain BLAKE3 with the snapshot's.
pub(crate) fn verify_file(path: &Path, node: &Node) -> Result<()> {
    let Some(expected) = node.file_hash else {
        return Ok(());
    };
    let got =
        blake3_of_file(path).map_err(|e| Error::io("cannot re-read for --verify", path, e))?;
    if got != expected {
        return Err(Error::Other(format!(
            "{}: content on disk does not match the snapshot's BLAKE3 after restore",
            path.display()
        )));
    }
    Ok(())
}

/// The plain BLAKE3 of a file's content (what the snapshot keeps as `file_hash`).
pub fn blake3_of_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}
