//! The files a pack-ordered restore fills: each created by the walk and written by the
//! workers, finished (size check, `--verify`, metadata) after its last blob or removed,
//! with the budget of descriptors the walk may keep open for them.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Dest, MAX_WINDOW_FILES, MAX_WINDOWS_IN_FLIGHT};
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::ops::restore::{RestoreReport, verify_file};
use crate::repo::format::tree::Node;

/// Descriptors of created files kept open for the workers, across all restores of this
/// process (see `FdBudget`).
static KEPT_FILES: AtomicUsize = AtomicUsize::new(0);

/// How many created files the walk may keep open for the workers: the descriptor it
/// created a file with then serves every write, the size check and the metadata, instead
/// of a second open by path per file (50k more `openat` calls in a restore of 50k small
/// files). The soft RLIMIT_NOFILE, raised to the hard limit, less `FDS_LEFT_FREE` for
/// sockets and pack files.
pub struct FdBudget(usize);

/// Descriptors the budget leaves to everything else a restore opens (a few dozen at most:
/// connections, pack files, trees being read).
const FDS_LEFT_FREE: u64 = 1024;

/// At most this many kept descriptors: about the files of all windows in flight.
const MAX_KEPT_FILES: u64 = (MAX_WINDOWS_IN_FLIGHT * MAX_WINDOW_FILES) as u64;

impl FdBudget {
    pub fn raise() -> FdBudget {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
                .map(|()| hard)
                .unwrap_or(soft),
            Ok((soft, _)) => soft,
            Err(_) => 1024,
        };
        let room = soft.saturating_sub(FDS_LEFT_FREE).max(soft / 2);
        FdBudget(room.min(MAX_KEPT_FILES) as usize)
    }

    /// `file` to keep, if the budget has room for it.
    pub fn keep(&self, file: File) -> Option<File> {
        let kept = KEPT_FILES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0).then_some(n + 1)
            })
            .is_ok();
        kept.then_some(file)
    }
}

/// One regular file being restored: created (empty) by the walk, filled by the workers.
pub struct FileTarget {
    pub path: PathBuf,
    pub display: String,
    pub node: Node,
    /// The descriptor the walk created the file with, if the budget let it keep it;
    /// otherwise each worker opens the file by path.
    pub(super) file: Option<File>,
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
    pub fn new(path: PathBuf, display: String, node: Node, file: Option<File>) -> FileTarget {
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
            file,
        }
    }

    pub(super) fn open(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| Error::io("cannot open for writing", &self.path, e))
    }

    fn too_much(&self) -> Error {
        Error::corrupt(format!("file {}", self.display), "more data than its size")
    }

    /// Writes `parts`, which follow each other from `data_offset`, to a dense file.
    pub(super) fn write_dense(&self, file: &File, data_offset: u64, parts: &[&[u8]]) -> Result<()> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if data_offset + total > self.node.size {
            return Err(self.too_much());
        }
        write_all_vectored_at(file, parts, data_offset)
            .map_err(|e| Error::io("cannot write", &self.path, e))
    }

    /// Writes `data`, which starts at `data_offset` of a sparse file's content, spread over
    /// its extents.
    pub(super) fn place(&self, file: &File, data_offset: u64, data: &[u8]) -> Result<()> {
        let io_err = |e| Error::io("cannot write", &self.path, e);
        let too_much = || self.too_much();
        let Some(extents) = &self.node.extents else {
            return self.write_dense(file, data_offset, &[data]);
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

impl Drop for FileTarget {
    fn drop(&mut self) {
        if self.file.is_some() {
            KEPT_FILES.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Marks one blob occurrence of `t` done; finishes or discards the file after its last.
/// `file` is the file open for writing, if the caller has it.
pub(super) fn done(
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
        None => match file.or(t.file.as_ref()) {
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
    let now = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &t.path, e))?;
    let len = now.len();
    if len != t.node.size {
        return Err(Error::corrupt(
            format!("file {}", t.display),
            format!("restored {len} bytes, snapshot says {}", t.node.size),
        ));
    }
    if verify {
        verify_file(&t.path, &t.node)?;
    }
    fsmeta::apply_file_metadata(file, &t.node, &now)
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

/// `pwritev` until every byte of `parts` is written at `offset`.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match nix::sys::uio::pwritev(file, rest, offset as i64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = FileTarget::new(path.clone(), "f".into(), node, None);
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
