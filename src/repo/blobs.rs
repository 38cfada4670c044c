//! Reading blobs and trees out of packs: verified fetches (read once more before an object
//! is called damaged), neighbouring blobs in one ranged read, trees loaded in parallel.

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::index::{BlobLoc, Index};
use crate::repo::format::pack::{self, BlobKind};
use crate::repo::format::tree::Tree;

impl Repository {
    /// Reads, decrypts and verifies one blob.
    pub fn read_blob(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        let (pack_id, loc) = index.get(id).ok_or_else(|| {
            Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
        })?;
        self.fetch_verified(
            Kind::Pack,
            &pack_id.to_hex(),
            Some((loc.offset as u64, loc.length as u64)),
            |sealed| pack::open_blob(&self.keys, sealed, id, loc.raw_length),
        )
    }

    /// Fetches an object (or a range of it) and opens it with `open`; when the bytes fail
    /// to authenticate they are fetched once more before the object is called damaged, so
    /// a bit flipped on the way (a faulty proxy, NIC or cable) costs a second read, not a
    /// restore.
    pub fn fetch_verified<T>(
        &self,
        kind: Kind,
        name: &str,
        range: Option<(u64, u64)>,
        open: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let fetch = || match range {
            Some((offset, len)) => self.block_on(self.backend.get_range(kind, name, offset, len)),
            None => self.block_on(self.backend.get(kind, name)),
        };
        match open(&fetch()?) {
            Err(Error::Corrupt { object, reason }) => {
                tracing::debug!("{object} did not verify ({reason}); reading it again");
                open(&fetch()?)
            }
            other => other,
        }
    }

    /// `first` is what opening a whole object gave; if it did not verify, the object is
    /// read and opened once more (see `fetch_verified`), and the first error stands when
    /// the second read fails.
    pub(super) fn again_if_corrupt<T>(
        &self,
        kind: Kind,
        name: &str,
        first: Result<T>,
        open: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        match first {
            Err(e @ Error::Corrupt { .. }) => match self.block_on(self.backend.get(kind, name)) {
                Ok(bytes) => open(&bytes),
                Err(_) => Err(e),
            },
            other => other,
        }
    }

    /// Reads several blobs, in order, with one ranged read per run of blobs that sit next
    /// to each other in the same pack (a file's chunks usually do): on S3 each read is a
    /// request, and one per chunk makes restores wait on round trips.
    pub fn read_blobs(&self, index: &Index, ids: &[BlobId]) -> Result<Vec<Vec<u8>>> {
        let locs = ids
            .iter()
            .map(|id| {
                index.get(id).ok_or_else(|| {
                    Error::corrupt(format!("blob {id}"), "not in any index (missing pack?)")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for run in neighbour_runs(&locs) {
            out.extend(self.read_run(&ids[run.clone()], &locs[run])?);
        }
        Ok(out)
    }

    /// Reads blobs that `neighbour_runs` put together, with one ranged read.
    fn read_run(&self, ids: &[BlobId], locs: &[(PackId, BlobLoc)]) -> Result<Vec<Vec<u8>>> {
        let (Some((pack_id, first)), Some((_, last))) = (locs.first(), locs.last()) else {
            return Ok(Vec::new());
        };
        let start = u64::from(first.offset);
        let end = u64::from(last.offset) + u64::from(last.length);
        self.fetch_verified(
            Kind::Pack,
            &pack_id.to_hex(),
            Some((start, end - start)),
            |span| {
                ids.iter()
                    .zip(locs)
                    .map(|(id, (_, loc))| {
                        let at = (u64::from(loc.offset) - start) as usize;
                        let sealed = span.get(at..at + loc.length as usize).ok_or_else(|| {
                            Error::corrupt(
                                format!("packs/{pack_id}"),
                                "shorter than the index says",
                            )
                        })?;
                        pack::open_blob(&self.keys, sealed, id, loc.raw_length)
                    })
                    .collect::<Result<Vec<_>>>()
            },
        )
    }

    pub fn load_tree(&self, index: &Index, id: &BlobId) -> Result<Tree> {
        check_is_tree(index, id)?;
        let bytes = self.read_blob(index, id)?;
        Tree::decode(&bytes, &format!("tree {id}"))
    }

    /// Loads trees; results in order. On S3 each read is a request: walks (restore, and a
    /// backup's parent snapshot) load the subdirectories of a directory together. Trees
    /// written one after the other (siblings usually are) are read with one ranged read,
    /// and the reads run as many at once as the backend serves. A read that fails is
    /// retried tree by tree, so a damaged tree fails only itself.
    pub fn load_trees(&self, index: &Index, ids: &[BlobId]) -> Vec<Result<Tree>> {
        let mut out: Vec<Option<Result<Tree>>> = ids.iter().map(|_| None).collect();
        // Trees the index lists as trees, in pack order, so that neighbours form runs; any
        // other id gets `load_tree`'s error at once.
        let mut known: Vec<(usize, (PackId, BlobLoc))> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match index.get(id) {
                Some(loc) if loc.1.kind == BlobKind::Tree => known.push((i, loc)),
                _ => out[i] = Some(self.load_tree(index, id)),
            }
        }
        known.sort_by_key(|&(_, (pack, loc))| (pack, loc.offset));
        let locs: Vec<(PackId, BlobLoc)> = known.iter().map(|&(_, l)| l).collect();
        let runs = neighbour_runs(&locs);
        let load_run = |run: &std::ops::Range<usize>| -> Vec<(usize, Result<Tree>)> {
            let at = &known[run.clone()];
            let run_ids: Vec<BlobId> = at.iter().map(|&(i, _)| ids[i]).collect();
            let read = (run.len() > 1)
                .then(|| self.read_run(&run_ids, &locs[run.clone()]).ok())
                .flatten();
            match read {
                Some(blobs) => at
                    .iter()
                    .zip(blobs)
                    .map(|(&(i, _), b)| (i, Tree::decode(&b, &format!("tree {}", ids[i]))))
                    .collect(),
                None => at
                    .iter()
                    .map(|&(i, _)| (i, self.load_tree(index, &ids[i])))
                    .collect(),
            }
        };
        let threads = self.backend().read_concurrency().min(runs.len()).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let (runs, load_run) = (&runs, &load_run);
                    s.spawn(move || {
                        runs.iter()
                            .skip(k)
                            .step_by(threads)
                            .flat_map(load_run)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (i, t) in h.join().unwrap_or_default() {
                    out[i] = Some(t);
                }
            }
        });
        ids.iter()
            .zip(out)
            .map(|(id, t)| {
                t.unwrap_or_else(|| Err(Error::Other(format!("loading tree {id} stopped"))))
            })
            .collect()
    }
}

/// Splits blob locations (in the order they will be read) into runs that one ranged read
/// serves: the same pack, ascending, gaps of at most MAX_GAP and at most MAX_SPAN in all.
fn neighbour_runs(locs: &[(PackId, BlobLoc)]) -> Vec<std::ops::Range<usize>> {
    /// Bytes between two blobs still fetched in one read rather than split in two.
    const MAX_GAP: u64 = 256 * 1024;
    /// Largest single read.
    const MAX_SPAN: u64 = 32 * 1024 * 1024;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < locs.len() {
        let (pack_id, first) = locs[i];
        let start = u64::from(first.offset);
        let mut end = start + u64::from(first.length);
        let mut j = i + 1;
        while let Some((p, l)) = locs.get(j) {
            let (o, e) = (
                u64::from(l.offset),
                u64::from(l.offset) + u64::from(l.length),
            );
            if *p != pack_id || o < end || o - end > MAX_GAP || e - start > MAX_SPAN {
                break;
            }
            end = e;
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

/// A tree id the index lists as file data is refused before anything is read.
fn check_is_tree(index: &Index, id: &BlobId) -> Result<()> {
    match index.get(id) {
        Some((_, loc)) if loc.kind != BlobKind::Tree => Err(Error::corrupt(
            format!("tree {id}"),
            "the index lists it as file data",
        )),
        _ => Ok(()),
    }
}
