//! `prune`: delete the packs no snapshot needs and repack the mostly-garbage ones, safely
//! while other hosts keep backing up into the same repository, without any lock.
//!
//! Deletion takes two runs. A run first *marks* what is garbage now (a sealed `marks/`
//! object naming the packs, its creation time and its grace period), and only a later run,
//! once the grace period has passed, *deletes* them, after reading every snapshot again:
//! a marked pack that a snapshot written in the meantime needs is kept alive. Backups take
//! part (see `MarkedPacks`): from the moment a mark exists, a backup does not reuse data
//! from marked packs (it uploads such data anew), and a backup that started before a mark
//! naming packs its snapshot needs (reused ones, or its own early uploads on a run longer
//! than the grace period) refuses to write its snapshot once half the grace period has
//! passed, so every snapshot that needs a marked pack is visible before the pack can go.
//!
//! Packs younger than the grace period are never marked: they may belong to a backup that
//! is still running and has not written its snapshot yet.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::crypto::{Keys, Purpose};
use crate::repo::format::index::{Index, IndexFile, IndexedPack};
use crate::repo::format::pack::{self, BlobKind, PackBuilder};

/// Default time between marking a pack and deleting it. It must exceed the longest backup:
/// a backup running longer than half of it while prune marks data it reuses must restart.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// A pack whose unused share exceeds this (percent) is rewritten without the garbage.
pub const DEFAULT_MAX_UNUSED_PERCENT: u8 = 10;

/// One `marks/` object: packs to delete once `created + grace` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub grace_secs: u64,
    pub host: String,
    pub packs: Vec<PackId>,
}

impl Mark {
    fn seal(&self, keys: &Keys) -> (String, Vec<u8>) {
        let plain = serde_json::to_vec(self).expect("a mark serializes");
        (
            hex::encode(keys.id_of(&plain)),
            keys.seal(Purpose::Mark, &plain),
        )
    }

    fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<Mark> {
        let what = format!("marks/{name}");
        let plain = keys.open(Purpose::Mark, sealed, &what)?;
        if hex::encode(keys.id_of(&plain)) != name {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&what, format!("decode: {e}")))
    }

    /// When the packs may be deleted.
    pub fn due(&self) -> u64 {
        self.created.saturating_add(self.grace_secs)
    }

    /// Until when a backup that reuses these packs may still write its snapshot.
    fn reuse_deadline(&self) -> u64 {
        self.created.saturating_add(self.grace_secs / 2)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Marks with their object names.
pub type NamedMarks = Vec<(String, Mark)>;

/// Every readable mark with its object name. An unreadable mark is reported and skipped:
/// prune cannot delete what it names either, so ignoring it endangers nothing.
pub fn load_marks(repo: &Repository) -> Result<(NamedMarks, Vec<String>)> {
    let mut marks = Vec::new();
    let mut problems = Vec::new();
    for obj in repo.block_on(repo.backend().list(Kind::Mark))? {
        let bytes = match repo.block_on(repo.backend().get(Kind::Mark, &obj.name)) {
            Ok(b) => b,
            // Deleted by a prune that finished in between.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match Mark::open(repo.keys(), &obj.name, &bytes) {
            Ok(m) => marks.push((obj.name, m)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((marks, problems))
}

/// What a backup knows about marks: the packs it must not reuse, and the marks it saw
/// when it started (marks that appear later are checked before its snapshot is written).
#[derive(Debug, Default, Clone)]
pub struct MarkedPacks {
    pub packs: HashSet<PackId>,
    seen: HashSet<String>,
}

impl MarkedPacks {
    pub fn load(repo: &Repository) -> Result<MarkedPacks> {
        let (marks, problems) = load_marks(repo)?;
        for p in problems {
            tracing::warn!("{p}");
        }
        Ok(MarkedPacks {
            packs: marks
                .iter()
                .flat_map(|(_, m)| m.packs.iter().copied())
                .collect(),
            seen: marks.into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// Called right before a snapshot is written: fails if a mark made since this backup
    /// started names a pack the snapshot needs (reused or written by this run) and the mark
    /// is too old for the snapshot to be certain of being seen by the prune that will
    /// delete it.
    pub fn check_needed(&self, repo: &Repository, needed: &HashSet<PackId>) -> Result<()> {
        if needed.is_empty() {
            return Ok(());
        }
        let (marks, _) = load_marks(repo)?;
        let now = unix_now();
        for (name, mark) in marks {
            if self.seen.contains(&name) || now < mark.reuse_deadline() {
                continue;
            }
            if let Some(p) = mark.packs.iter().find(|p| needed.contains(p)) {
                return Err(Error::Locked {
                    what: format!("pack {}, which this snapshot needs,", p.short()),
                    by: format!(
                        "a prune on {} that marked it for deletion while this backup was \
                         running (marks/{name})",
                        mark.host
                    ),
                    hint: "the snapshot was not written so that it cannot end up pointing at \
                           deleted data. Run the backup again: it will upload that data anew"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub grace: Duration,
    pub max_unused_percent: u8,
    pub host: String,
}

/// What a prune run did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub snapshots: usize,
    pub packs: usize,
    /// Packs marked by this run (unused ones plus those rewritten).
    pub packs_marked: usize,
    pub bytes_marked: u64,
    pub packs_repacked: usize,
    pub blobs_copied: usize,
    pub bytes_copied: u64,
    /// Marked packs deleted by this run, after their grace period.
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Marked packs that a snapshot written after the mark needs: not deleted.
    pub packs_kept_alive: usize,
    pub index_files_rewritten: usize,
    /// Object-lock mode: marked packs not deleted because they (or an index file listing
    /// them) are still under retention, their bytes, and when the first and the last of
    /// them become deletable (unix seconds).
    pub packs_locked: usize,
    pub bytes_locked: u64,
    pub locked_until: Option<(u64, u64)>,
    /// Marks still waiting for their grace period: (packs, unix time they are due).
    pub marks_pending: Vec<(usize, u64)>,
    pub problems: Vec<String>,
}

/// Every blob the given snapshots need: the trees, and the chunks of every file in them.
fn used_blobs(
    repo: &Repository,
    index: &Index,
    snaps: &[crate::repo::SnapshotEntry],
) -> Result<HashSet<BlobId>> {
    let mut used = HashSet::new();
    let mut stack: Vec<BlobId> = Vec::new();
    for (_, snap) in snaps {
        if let Some(t) = snap.root.subtree {
            stack.push(t);
        }
        while let Some(tree_id) = stack.pop() {
            if !used.insert(tree_id) {
                continue;
            }
            let tree = repo.load_tree(index, &tree_id).map_err(|e| {
                Error::Other(format!(
                    "prune stopped before changing anything: snapshot of {} from {} needs tree {} \
                     which cannot be read ({e}); run `volguard check`",
                    snap.volume,
                    snap.time,
                    tree_id.short()
                ))
            })?;
            for node in tree.nodes {
                used.extend(node.content.iter().copied());
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
            }
        }
    }
    Ok(used)
}

pub fn run(repo: &Repository, opts: &Options) -> Result<Report> {
    if repo.epochs().is_some() {
        return Err(Error::Other(
            "this repository is in epochs mode: the bucket's lifecycle rule deletes whole \
             epochs once no kept snapshot can need them (`volguard bucket policy --apply` \
             installs it), so prune does not run here"
                .into(),
        ));
    }
    if !opts.dry_run {
        repo.verify_retention()?;
    }
    let mut report = Report::default();
    let now = unix_now();
    let (marks, problems) = load_marks(repo)?;
    report.problems.extend(problems);
    // Listing order matters. Snapshots are read after `now`, so one that needs a pack of a
    // mark due now was written (before the mark's reuse deadline) and is seen. Index files
    // come after snapshots, since a backup writes its index before its snapshot: every
    // tree a listed snapshot needs is indexed. Packs come last, so every indexed pack that
    // exists is listed.
    let (snaps, problems) = repo.list_snapshots()?;
    if let Some(p) = problems.first() {
        // A snapshot we cannot read may need anything: deleting blind would be data loss.
        return Err(Error::Other(format!(
            "prune stopped before changing anything: a snapshot cannot be read ({p}); \
             run `volguard check` and remove or repair it first"
        )));
    }
    report.snapshots = snaps.len();
    let mut files = Vec::new();
    let problems = repo.for_each_index_file(|name, f| files.push((name.to_string(), f)))?;
    if let Some(p) = problems.first() {
        return Err(Error::Other(format!(
            "prune stopped before changing anything: {p}; run `volguard check`"
        )));
    }
    let stored: HashMap<PackId, (u64, Option<SystemTime>)> = repo
        .block_on(repo.backend().list(Kind::Pack))?
        .into_iter()
        .filter_map(|o| PackId::from_hex(&o.name).map(|id| (id, (o.size, o.modified))))
        .collect();
    report.packs = stored.len();
    // Memory: `files` already holds every blob entry once, and `entries` points into it.
    // The hash-map index is needed only to read trees, so it holds the tree blobs alone: a
    // second map of every data blob would more than double prune's memory on a large
    // repository (about 120 MB per million blobs) for nothing.
    let mut index = Index::default();
    let mut entries: HashMap<PackId, &IndexedPack> = HashMap::new();
    let mut trees = Vec::new();
    for (_, f) in &files {
        for p in &f.packs {
            trees.clear();
            trees.extend(p.blobs.iter().filter(|b| b.kind == BlobKind::Tree).copied());
            if !trees.is_empty() {
                index.add_pack(p.id, p.size, &trees);
            }
            entries.entry(p.id).or_insert(p);
        }
    }
    let used = used_blobs(repo, &index, &snaps)?;

    // Phase 2: delete what was marked long enough ago, unless it holds a needed blob that
    // no pack staying behind has (a snapshot written after the mark needs it).
    let mut still_marked: HashSet<PackId> = HashSet::new();
    let mut due: Vec<PackId> = Vec::new();
    let mut done_marks = Vec::new();
    for (name, mark) in &marks {
        if now < mark.due() {
            report.marks_pending.push((mark.packs.len(), mark.due()));
            still_marked.extend(mark.packs.iter().copied());
        } else {
            due.extend(mark.packs.iter().copied());
            done_marks.push(name.clone());
        }
    }
    due.sort();
    due.dedup();
    let mut available: HashSet<BlobId> = HashSet::new();
    for (id, p) in &entries {
        if stored.contains_key(id) && due.binary_search(id).is_err() {
            available.extend(p.blobs.iter().map(|b| b.id).filter(|b| used.contains(b)));
        }
    }
    let mut deleted: HashSet<PackId> = HashSet::new();
    for id in &due {
        let blobs = entries
            .get(id)
            .map(|p| p.blobs.as_slice())
            .unwrap_or_default();
        if blobs
            .iter()
            .any(|b| used.contains(&b.id) && !available.contains(&b.id))
        {
            report.packs_kept_alive += 1;
            available.extend(blobs.iter().map(|b| b.id));
            continue;
        }
        deleted.insert(*id);
        if let Some((size, _)) = stored.get(id) {
            report.packs_deleted += 1;
            report.bytes_deleted += size;
        }
    }
    // Object-lock mode: a pack under retention, or listed by an index file under retention
    // (which would have to be rewritten without it), is not deleted yet; its mark stays, so
    // a later run deletes it once the retention has passed.
    let held = crate::repo::retention::hold_locked(repo, &mut deleted, &files)?;
    for id in &held.packs {
        if let Some((size, _)) = stored.get(id) {
            report.packs_deleted -= 1;
            report.bytes_deleted -= size;
        }
    }
    report.packs_locked = held.packs.len();
    report.bytes_locked = held
        .packs
        .iter()
        .map(|id| stored.get(id).map_or(0, |s| s.0))
        .sum();
    report.locked_until = held.earliest.zip(held.latest);
    done_marks.retain(|name| {
        marks
            .iter()
            .find(|(n, _)| n == name)
            .is_none_or(|(_, m)| !m.packs.iter().any(|p| held.packs.contains(p)))
    });
    still_marked.extend(held.packs.iter().copied());
    if !opts.dry_run {
        // Index entries first, packs second, the mark last: a crash in between leaves packs
        // no index lists (the mark keeps backups from re-indexing them, and the next run
        // deletes them), never an index entry that points at nothing, which a restore
        // might follow when the blob also lives in another pack.
        for (name, f) in &files {
            if !f.packs.iter().any(|p| deleted.contains(&p.id)) {
                continue;
            }
            let rest = IndexFile {
                packs: f
                    .packs
                    .iter()
                    .filter(|p| !deleted.contains(&p.id))
                    .cloned()
                    .collect(),
            };
            if !rest.packs.is_empty() {
                repo.save_index(&rest)?;
            }
            delete_ignoring_missing(repo, Kind::Index, name)?;
            report.index_files_rewritten += 1;
        }
        for id in &deleted {
            if stored.contains_key(id) {
                delete_ignoring_missing(repo, Kind::Pack, &id.to_hex())?;
            }
        }
        for name in &done_marks {
            delete_ignoring_missing(repo, Kind::Mark, name)?;
        }
    }

    // Phase 1: mark what is garbage now. Each needed blob counts in one pack only, so a
    // pack that merely duplicates another (two hosts uploading the same data at once)
    // becomes garbage too.
    let young = |modified: &Option<SystemTime>| {
        modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < opts.grace)
    };
    let mut candidates: Vec<PackId> = stored
        .iter()
        .filter(|(id, (_, modified))| {
            !deleted.contains(id) && !still_marked.contains(id) && !young(modified)
        })
        .map(|(id, _)| *id)
        .collect();
    candidates.sort();
    // Blobs in packs that stay as they are (young ones) are owned there first; packs under
    // a pending mark own nothing, they are on their way out.
    let mut owner: HashMap<BlobId, PackId> = HashMap::new();
    for (id, p) in &entries {
        if deleted.contains(id) || still_marked.contains(id) || candidates.binary_search(id).is_ok()
        {
            continue;
        }
        if stored.contains_key(id) {
            for b in &p.blobs {
                if used.contains(&b.id) {
                    owner.entry(b.id).or_insert(*id);
                }
            }
        }
    }
    let mut to_mark = Vec::new();
    let mut to_repack = Vec::new();
    for id in &candidates {
        let size = stored.get(id).map_or(0, |s| s.0);
        let Some(p) = entries.get(id) else {
            // In no index file and older than the grace period: left by a backup that
            // died long ago (a running one would have been young).
            to_mark.push(*id);
            report.bytes_marked += size;
            continue;
        };
        let mut kept = 0u64;
        for b in &p.blobs {
            if used.contains(&b.id) && *owner.entry(b.id).or_insert(*id) == *id {
                kept += u64::from(b.length);
            }
        }
        if kept == 0 {
            to_mark.push(*id);
            report.bytes_marked += size;
        } else if (size - kept.min(size)) * 100 > size * u64::from(opts.max_unused_percent) {
            to_repack.push(*id);
        }
    }
    if !to_repack.is_empty() {
        let copied = repack(repo, &to_repack, &entries, &owner, opts.dry_run)?;
        report.packs_repacked = to_repack.len();
        report.blobs_copied = copied.0;
        report.bytes_copied = copied.1;
        for id in &to_repack {
            report.bytes_marked += stored.get(id).map_or(0, |s| s.0);
        }
        to_mark.extend(to_repack);
    }
    report.packs_marked = to_mark.len();
    if !to_mark.is_empty() && !opts.dry_run {
        to_mark.sort();
        let mark = Mark {
            version: 1,
            created: unix_now(),
            grace_secs: opts.grace.as_secs(),
            host: opts.host.clone(),
            packs: to_mark,
        };
        let (name, sealed) = mark.seal(repo.keys());
        repo.block_on(repo.backend().put(Kind::Mark, &name, sealed.into()))?;
        report.marks_pending.push((mark.packs.len(), mark.due()));
    }
    Ok(report)
}

fn delete_ignoring_missing(repo: &Repository, kind: Kind, name: &str) -> Result<()> {
    match repo.block_on(repo.backend().delete(kind, name)) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies the blobs each pack owns into new packs (sealed bytes as they are, after
/// checking each against its id), indexes the new packs, and returns (blobs, bytes) copied.
fn repack(
    repo: &Repository,
    packs: &[PackId],
    entries: &HashMap<PackId, &IndexedPack>,
    owner: &HashMap<BlobId, PackId>,
    dry_run: bool,
) -> Result<(usize, u64)> {
    let mut copied = (0usize, 0u64);
    let mut builder = PackBuilder::default();
    let mut written = Vec::new();
    let flush = |builder: PackBuilder, written: &mut Vec<IndexedPack>| -> Result<()> {
        if builder.is_empty() {
            return Ok(());
        }
        let (id, bytes, blobs) = builder.finish(repo.keys());
        let size = bytes.len() as u64;
        repo.block_on(repo.backend().put(Kind::Pack, &id.to_hex(), bytes.into()))?;
        written.push(IndexedPack { id, size, blobs });
        Ok(())
    };
    for id in packs {
        let Some(p) = entries.get(id) else { continue };
        let keep: Vec<_> = p
            .blobs
            .iter()
            .filter(|b| owner.get(&b.id) == Some(id))
            .collect();
        copied.0 += keep.len();
        copied.1 += keep.iter().map(|b| u64::from(b.length)).sum::<u64>();
        if dry_run || keep.is_empty() {
            continue;
        }
        let data = repo.block_on(repo.backend().get(Kind::Pack, &id.to_hex()))?;
        for b in keep {
            let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
            let sealed = data.get(start..end).ok_or_else(|| {
                Error::corrupt(format!("packs/{id}"), "shorter than its index says")
            })?;
            // Copying a damaged blob would hide the damage behind a fresh pack.
            pack::open_blob(repo.keys(), sealed, &b.id, b.raw_length)?;
            builder.add(b.kind, b.id, sealed, b.raw_length);
            if builder.len() >= pack::TARGET_PACK_BYTES {
                flush(std::mem::take(&mut builder), &mut written)?;
            }
        }
    }
    flush(builder, &mut written)?;
    if !written.is_empty() {
        repo.save_index(&IndexFile { packs: written })?;
    }
    Ok(copied)
}

/// Loads the index a backup deduplicates against: without the packs prune has marked
/// (the marks are read first, see `prune`), and with the packs an interrupted run left
/// behind, so they are reused.
pub fn load_index_for_write(repo: &Repository) -> Result<(Index, MarkedPacks)> {
    repo.verify_retention()?;
    let marked = MarkedPacks::load(repo)?;
    let (mut index, problems) = repo.load_index_except(&marked.packs)?;
    for p in problems {
        tracing::warn!("{p}");
    }
    let recovered = repo.recover_unindexed(&mut index, &marked.packs)?;
    if recovered > 0 {
        tracing::info!(
            "indexed {recovered} pack(s) left by an interrupted backup; their data is reused"
        );
    }
    Ok((index, marked))
}

/// Loads the index a read (restore, diff, verify) uses; packs no readable index file lists
/// are read from their own trailers.
pub fn load_index_for_read(repo: &Repository) -> Result<Index> {
    let (mut index, problems) = repo.load_index()?;
    for p in problems {
        tracing::warn!("{p}");
    }
    // Packs no readable index file lists (a damaged index file) are still read.
    let marked = MarkedPacks::load(repo)?;
    let (recovered, _) = repo.index_unlisted_packs(&mut index, &marked.packs)?;
    if !recovered.is_empty() {
        tracing::info!(
            "{} pack(s) are in no readable index file; read from their own trailers \
             (`volguard repair` rebuilds the index)",
            recovered.len()
        );
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_round_trip_and_name_binding() {
        let keys = Keys::from_master(&[7u8; 32]);
        let m = Mark {
            version: 1,
            created: 1_000,
            grace_secs: 100,
            host: "h".into(),
            packs: vec![PackId([1; 32])],
        };
        let (name, sealed) = m.seal(&keys);
        assert_eq!(Mark::open(&keys, &name, &sealed).unwrap(), m);
        assert!(Mark::open(&keys, &"00".repeat(32), &sealed).is_err());
        assert!(Mark::open(&keys, &name, &sealed[1..]).is_err());
        assert_eq!(m.due(), 1_100);
        assert_eq!(m.reuse_deadline(), 1_050);
    }
}
