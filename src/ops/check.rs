//! `check`: prove the repository is whole, and when it is not, name exactly which objects,
//! snapshots and files are affected.
//!
//! Structure: every index entry points into a pack that exists, every snapshot's trees
//! decode and every chunk they name is indexed. With `--read-data`: every pack is read,
//! its trailer compared with the index, and every blob decrypted and re-hashed.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::backend::Kind;
use crate::error::Result;
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::index::{BlobLoc, Index};
use crate::repo::format::pack;
use crate::repo::format::tree::NodeKind;

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub packs: usize,
    pub blobs: usize,
    pub snapshots: usize,
    pub packs_read: usize,
    pub blobs_verified: usize,
    /// Problems that make data unrestorable or the repository inconsistent.
    pub errors: Vec<String>,
    /// Harmless findings (for example packs left by an interrupted backup).
    pub warnings: Vec<String>,
}

/// Checks the structure, and reads `read_percent` of the packs (0: none, 100: all; a
/// share is chosen at random each run, so repeated runs cover the repository over time).
pub fn run(
    repo: &Repository,
    read_percent: f64,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let (mut index, index_problems) = repo.load_index()?;
    report.errors.extend(index_problems);
    // Packs no readable index file lists are indexed here, in memory, from their own
    // trailers: a damaged or deleted index file must not make intact data look lost.
    let (marks, mark_problems) = crate::ops::prune::load_marks(repo)?;
    report.warnings.extend(mark_problems);
    let marked: HashSet<PackId> = marks
        .iter()
        .flat_map(|(_, m)| m.packs.iter().copied())
        .collect();
    let (recovered, unreadable) = repo.index_unlisted_packs(&mut index, &marked)?;
    for (id, why) in &unreadable {
        report.errors.push(format!(
            "packs/{id}: not in any index and its trailer is unreadable ({why}); whatever it \
             held is lost"
        ));
    }
    // Only blobs that nothing but an unindexed pack holds: a copy of a blob an index file
    // lists elsewhere (a repack killed after writing its new pack, before indexing it) is
    // readable through that index, and flagging its pack was a false error.
    let recovered_blobs: HashMap<BlobId, PackId> = recovered
        .iter()
        .flat_map(|p| p.blobs.iter().map(move |e| (e.id, p.id)))
        .filter(|(blob, pack)| index.get(blob).is_some_and(|(at, _)| at == *pack))
        .collect();
    let stored: HashMap<PackId, u64> = repo
        .block_on(repo.backend().list(Kind::Pack))?
        .into_iter()
        .filter_map(|o| PackId::from_hex(&o.name).map(|id| (id, o.size)))
        .collect();
    report.packs = stored.len();
    report.blobs = index.blob_count();

    let mut by_pack: HashMap<PackId, Vec<(BlobId, BlobLoc)>> = HashMap::new();
    for (blob, pack, loc) in index.iter() {
        by_pack.entry(pack).or_default().push((*blob, *loc));
    }
    let blobs_of = |p: &PackId| by_pack.get(p).map(Vec::as_slice).unwrap_or_default();
    let mut bad: HashSet<BlobId> = HashSet::new();
    for (id, size) in index.packs() {
        match stored.get(id) {
            None => {
                report.errors.push(format!(
                    "packs/{id}: listed in the index but missing from storage"
                ));
                bad.extend(blobs_of(id).iter().map(|(b, _)| *b));
            }
            Some(s) if s != size => {
                report.errors.push(format!(
                    "packs/{id}: {s} bytes stored, the index says {size} (truncated or replaced)"
                ));
                // When every pack is read, each blob is judged by its own bytes (the part
                // of a truncated pack that is left still restores); otherwise all are
                // suspect.
                if read_percent < 100.0 {
                    bad.extend(blobs_of(id).iter().map(|(b, _)| *b));
                }
            }
            Some(_) => {}
        }
    }
    for id in stored.keys() {
        if !index.has_pack(id) && !unreadable.contains_key(id) {
            report.warnings.push(if marked.contains(id) {
                format!("packs/{id}: marked for deletion and no longer indexed (a prune was interrupted; the next prune deletes it)")
            } else {
                format!("packs/{id}: not in any index (left by an interrupted backup; the next backup indexes it)")
            });
        }
    }

    if read_percent > 0.0 {
        let chosen: Vec<(&PackId, &u64)> = stored
            .iter()
            .filter(|_| read_percent >= 100.0 || rand::random::<f64>() * 100.0 < read_percent)
            .collect();
        if let Some(p) = progress {
            p.set_length(chosen.iter().map(|(_, s)| **s).sum());
        }
        for (id, size) in chosen {
            if index.has_pack(id) {
                read_pack(repo, &index, id, *size, blobs_of(id), &mut bad, &mut report);
            }
            if let Some(p) = progress {
                p.inc(*size);
            }
        }
    }

    let (snapshots, snap_problems) = repo.list_snapshots()?;
    report.errors.extend(snap_problems);
    report.snapshots = snapshots.len();
    let mut trees = TreeChecker::new(repo, &index, &bad).watching(&recovered_blobs);
    let listed: HashSet<_> = snapshots.iter().map(|(id, _)| *id).collect();
    for (sid, snap) in &snapshots {
        for p in trees.snapshot_problems(snap) {
            report.errors.push(format!(
                "snapshot {} ({} {}): {p}",
                sid.short(),
                snap.volume,
                snap.time,
            ));
        }
        // A parent that is gone was usually forgotten; a snapshot object deleted behind
        // volguard's back looks the same, so this is worth a line but not an error.
        if let Some(parent) = snap.parent.filter(|p| !listed.contains(p)) {
            report.warnings.push(format!(
                "snapshots/{parent}: parent of snapshot {} ({} {}) is not in the repository \
                 (forgotten, or deleted behind volguard's back)",
                sid.short(),
                snap.volume,
                snap.time
            ));
        }
    }
    let mut used: Vec<_> = trees.used_watched.iter().collect();
    used.sort();
    for id in used {
        report.errors.push(format!(
            "packs/{id}: holds snapshot data but no readable index file lists it (an index \
             file is damaged or was deleted); the data is intact: `volguard repair` rebuilds \
             the index"
        ));
    }
    for id in recovered.iter().map(|p| &p.id) {
        if !trees.used_watched.contains(id) && !marked.contains(id) {
            report.warnings.push(format!(
                "packs/{id}: not in any index (left by an interrupted backup; the next backup indexes it)"
            ));
        }
    }
    Ok(report)
}

fn read_pack(
    repo: &Repository,
    index: &Index,
    id: &PackId,
    size: u64,
    blobs: &[(BlobId, BlobLoc)],
    bad: &mut HashSet<BlobId>,
    report: &mut CheckReport,
) {
    let what = format!("packs/{id}");
    let bytes = match repo.block_on(repo.backend().get(Kind::Pack, &id.to_hex())) {
        Ok(b) => b,
        Err(e) => {
            report.errors.push(format!("{what}: cannot read: {e}"));
            bad.extend(blobs.iter().map(|(b, _)| *b));
            return;
        }
    };
    report.packs_read += 1;
    if bytes.len() as u64 != size {
        report.errors.push(format!(
            "{what}: read {} bytes, listed as {size}",
            bytes.len()
        ));
    }
    if *blake3::hash(&bytes).as_bytes() != id.0 {
        report.errors.push(format!(
            "{what}: content does not match its name (bit rot or tampering)"
        ));
    }
    match pack::parse_pack(repo.keys(), &bytes, &what) {
        Ok(entries) => {
            for e in &entries {
                match index.get(&e.id) {
                    Some((p, loc))
                        if p == *id && (loc.offset != e.offset || loc.length != e.length) =>
                    {
                        report.errors.push(format!(
                            "{what}: blob {} is at a different place than the index says",
                            e.id.short()
                        ));
                    }
                    _ => {}
                }
            }
        }
        Err(e) => report
            .errors
            .push(format!("{what}: trailer unreadable: {e}")),
    }
    // Verify each blob where the index says it is: that is what restores will read.
    for (blob, loc) in blobs {
        let start = loc.offset as usize;
        let end = start + loc.length as usize;
        let ok = end <= bytes.len()
            && pack::open_blob(repo.keys(), &bytes[start..end], blob, loc.raw_length).is_ok();
        if ok {
            report.blobs_verified += 1;
        } else {
            report.errors.push(format!(
                "{what}: blob {} fails decryption or its hash",
                blob.short()
            ));
            bad.insert(*blob);
        }
    }
}

struct Problem {
    path: String,
    what: String,
}

/// Walks trees once each (memoized), collecting problems with paths relative to the tree.
/// `repair` uses it too, to find the snapshots it marks broken.
pub(crate) struct TreeChecker<'a> {
    repo: &'a Repository,
    index: &'a Index,
    bad: &'a HashSet<BlobId>,
    memo: HashMap<BlobId, Rc<Vec<Problem>>>,
    /// Blobs whose pack should be noted when a snapshot uses them.
    watched: Option<&'a HashMap<BlobId, PackId>>,
    /// The packs of watched blobs that some snapshot uses.
    pub(crate) used_watched: HashSet<PackId>,
}

impl<'a> TreeChecker<'a> {
    pub(crate) fn new(repo: &'a Repository, index: &'a Index, bad: &'a HashSet<BlobId>) -> Self {
        TreeChecker {
            repo,
            index,
            bad,
            memo: HashMap::new(),
            watched: None,
            used_watched: HashSet::new(),
        }
    }

    fn watching(mut self, watched: &'a HashMap<BlobId, PackId>) -> Self {
        self.watched = Some(watched);
        self
    }

    fn touch(&mut self, id: &BlobId) {
        if let Some(p) = self.watched.and_then(|w| w.get(id)) {
            self.used_watched.insert(*p);
        }
    }

    /// Every problem of one snapshot as `/path: what` (empty when it restores whole).
    pub(crate) fn snapshot_problems(
        &mut self,
        snap: &crate::repo::format::snapshot::Snapshot,
    ) -> Vec<String> {
        let Some(root) = snap.root.subtree else {
            return Vec::new();
        };
        self.check(&root)
            .iter()
            .map(|p| format!("/{}: {}", p.path, p.what))
            .collect()
    }

    fn check(&mut self, id: &BlobId) -> Rc<Vec<Problem>> {
        if let Some(p) = self.memo.get(id) {
            return p.clone();
        }
        self.touch(id);
        let mut problems = Vec::new();
        let tree = if self.bad.contains(id) {
            Err(format!(
                "directory listing (tree {}) is damaged",
                id.short()
            ))
        } else {
            self.repo
                .load_tree(self.index, id)
                .map_err(|e| format!("directory listing unreadable: {e}"))
        };
        match tree {
            Err(what) => problems.push(Problem {
                path: String::new(),
                what,
            }),
            Ok(tree) => {
                for node in &tree.nodes {
                    let name = String::from_utf8_lossy(&node.name).into_owned();
                    if node.kind == NodeKind::Dir {
                        if let Some(sub) = &node.subtree {
                            for p in self.check(sub).iter() {
                                let path = if p.path.is_empty() {
                                    name.clone()
                                } else {
                                    format!("{name}/{}", p.path)
                                };
                                problems.push(Problem {
                                    path,
                                    what: p.what.clone(),
                                });
                            }
                        }
                        continue;
                    }
                    for c in &node.content {
                        self.touch(c);
                    }
                    let missing = node
                        .content
                        .iter()
                        .filter(|c| !self.index.contains(c))
                        .count();
                    let damaged = node.content.iter().filter(|c| self.bad.contains(c)).count();
                    if missing > 0 || damaged > 0 {
                        problems.push(Problem {
                            path: name,
                            what: format!(
                                "file content incomplete: {missing} chunk(s) missing, {damaged} damaged of {}",
                                node.content.len()
                            ),
                        });
                    }
                }
            }
        }
        let rc = Rc::new(problems);
        self.memo.insert(*id, rc.clone());
        rc
    }
}
