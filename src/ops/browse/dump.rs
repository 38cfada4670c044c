//! `dump`: one file's bytes, or a directory as a tar stream, written to the caller's
//! writer as they are read, in bounded memory.
//!
//! Integrity is restore's: every chunk is verified by its keyed hash before any of its
//! bytes is written, and the whole content against the file's BLAKE3 before its last bytes
//! are (see `FileReader`). On a mismatch the output stops short of the file's end (a tar
//! stream without its end), and the error names the file.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::ops::restore::{self, FileReader, Filter, RestoreReport, check_content};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind};

/// Bytes read and written at a time.
const DUMP_BUFFER_BYTES: usize = 1024 * 1024;

/// What `dump` wrote.
#[derive(Debug, serde::Serialize)]
pub enum Dumped {
    /// A regular file's bytes.
    File { bytes: u64 },
    /// A directory's subtree as tar, entries named relative to the directory.
    Tar(RestoreReport),
}

/// Writes the entry `node` (found at `shown` in `snap`) to `out`: a regular file's bytes,
/// or a directory as tar. Anything else is a usage error: it has no bytes to give.
pub fn dump<W: Write>(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    node: &Node,
    shown: &str,
    out: W,
) -> Result<Dumped> {
    match node.kind {
        NodeKind::File => {
            dump_file(repo, index, node, shown, out).map(|bytes| Dumped::File { bytes })
        }
        NodeKind::Dir => {
            let sub = Snapshot {
                root: node.clone(),
                ..snap.clone()
            };
            restore::to_tar(repo, index, &sub, out, &Filter::default()).map(Dumped::Tar)
        }
        NodeKind::Symlink => Err(Error::Usage(format!(
            "{shown} is a symlink to {:?}; dump its target instead",
            String::from_utf8_lossy(&node.link_target)
        ))),
        other => Err(Error::Usage(format!(
            "{shown} is a {} and has no content to dump; dump its directory to get it in a tar \
             stream",
            super::kind_name(other)
        ))),
    }
}

fn dump_file<W: Write>(
    repo: &Repository,
    index: &Index,
    node: &Node,
    shown: &str,
    mut out: W,
) -> Result<u64> {
    check_content(index, node).map_err(|e| Error::Other(format!("{shown}: {e}")))?;
    let mut reader = FileReader::new(repo, index, node);
    let mut buf = vec![0u8; DUMP_BUFFER_BYTES];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Other(format!(
                    "{shown}: {e}; the {written} bytes written before are not the whole file: \
                     discard them"
                )));
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("cannot write the file's bytes to", "stdout", e))?;
        written += n as u64;
    }
    out.flush()
        .map_err(|e| Error::io("cannot write the file's bytes to", "stdout", e))?;
    Ok(written)
}
