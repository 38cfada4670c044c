//! `repair`: rebuild the index from the packs themselves, and mark the snapshots that can no
//! longer be restored whole, without touching the good ones.
//!
//! Index rebuild: every pack is read whole, its trailer decrypted, and every blob it lists
//! decrypted and re-hashed; only blobs that verify go into the fresh index files. A damaged
//! blob therefore drops out of the index, and the next backup of the same data uploads it
//! again, which makes every snapshot that needed it whole again. The old index files are
//! deleted only after all new ones are stored, so a crash leaves at worst duplicate
//! entries (harmless: the first entry wins, both point at the same verified bytes).
//!
//! Broken snapshots are not rewritten or deleted: their good files still restore. Repair
//! stores one sealed `repair/<keyed hash>` object listing them (id, volume, time, the
//! damaged paths), and `snapshots` shows the mark. Each repair run writes the list it found
//! and then deletes the older lists, so a snapshot that became whole again (its data
//! uploaded anew) loses its mark on the next run.
//!
//! Prune: packs named in `marks/` are left out of the rebuilt index, exactly as prune left
//! them out when it marked them, so the next prune can still delete them safely. Repair
//! and prune must not run at the same time (as two prunes must not).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::crypto::Purpose;
use crate::repo::format::index::{Index, IndexFile, IndexedPack};
use crate::repo::format::pack::{self, PackEntry};

/// Packs described by one rebuilt index file: small enough that a reader holds one file
/// at a time cheaply, large enough that a big repository gets few files.
pub const PACKS_PER_INDEX_FILE: usize = 4096;

/// A snapshot repair found unrestorable in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenSnapshot {
    /// Full hex id.
    pub id: String,
    pub volume: String,
    pub time: String,
    /// `/path: what` for every damaged file or directory.
    pub problems: Vec<String>,
}

/// One `repair/` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairMark {
    pub version: u32,
    /// RFC 3339, UTC.
    pub created: String,
    pub host: String,
    pub broken: Vec<BrokenSnapshot>,
}

impl RepairMark {
    fn seal(&self, keys: &crate::repo::format::crypto::Keys) -> (String, Vec<u8>) {
        let plain = serde_json::to_vec(self).expect("a repair mark serializes");
        (
            hex::encode(keys.id_of(&plain)),
            keys.seal(Purpose::Repair, &plain),
        )
    }

    pub fn open(
        keys: &crate::repo::format::crypto::Keys,
        name: &str,
        sealed: &[u8],
    ) -> Result<RepairMark> {
        let what = format!("repair/{name}");
        let plain = keys.open(Purpose::Repair, sealed, &what)?;
        if hex::encode(keys.id_of(&plain)) != name {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&what, format!("decode: {e}")))
    }
}

/// Every snapshot some `repair/` object marks broken, by full hex id; unreadable marks are
/// returned as problems (they mark nothing).
pub fn load_broken(repo: &Repository) -> Result<(HashMap<String, BrokenSnapshot>, Vec<String>)> {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for (_, mark) in load_marks(repo, &mut problems)? {
        for b in mark.broken {
            out.insert(b.id.clone(), b);
        }
    }
    Ok((out, problems))
}

fn load_marks(repo: &Repository, problems: &mut Vec<String>) -> Result<Vec<(String, RepairMark)>> {
    let mut marks = Vec::new();
    for obj in repo.block_on(repo.backend().list(Kind::Repair))? {
        match repo.block_on(repo.backend().get(Kind::Repair, &obj.name)) {
            Ok(bytes) => match RepairMark::open(repo.keys(), &obj.name, &bytes) {
                Ok(m) => marks.push((obj.name, m)),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(marks)
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub dry_run: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub packs_read: usize,
    pub packs_indexed: usize,
    /// Packs left out because prune marked them for deletion.
    pub packs_marked_by_prune: usize,
    pub blobs_indexed: usize,
    /// `packs/<id>: why` for packs whose trailer is unreadable: nothing in them is indexed.
    pub packs_unreadable: Vec<String>,
    /// `packs/<id>: blob <id>` for blobs that fail decryption or their hash: left out.
    pub blobs_damaged: Vec<String>,
    pub index_files_written: Vec<String>,
    pub index_files_deleted: Vec<String>,
    /// Old index files that could not be deleted (Object Lock retention): harmless, the
    /// new files cover every pack they list.
    pub index_files_kept: Vec<String>,
    pub snapshots_checked: usize,
    pub broken_snapshots: Vec<BrokenSnapshot>,
    /// Snapshot objects that do not open at all (damaged or truncated): named, not marked
    /// (nothing in them can be read), to be deleted by hand once looked at.
    pub unreadable_snapshots: Vec<String>,
    pub mark_written: Option<String>,
    pub marks_deleted: Vec<String>,
}

/// Rebuilds the index and marks broken snapshots (or, with `dry_run`, says what it would).
pub fn run(repo: &Repository, opts: &Options) -> Result<Report> {
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Report::default()
    };
    let (prune_marks, problems) = crate::ops::prune::load_marks(repo)?;
    for p in problems {
        tracing::warn!("{p}");
    }
    let skip: HashSet<PackId> = prune_marks
        .iter()
        .flat_map(|(_, m)| m.packs.iter().copied())
        .collect();
    // Listed before anything is written: only these are replaced. An index file a backup
    // writes meanwhile stays.
    let old_index: Vec<String> = repo
        .block_on(repo.backend().list(Kind::Index))?
        .into_iter()
        .map(|o| o.name)
        .collect();

    // What the old index files still say, for packs whose trailer is lost.
    let mut old_entries: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    repo.for_each_index_file(|_, f| {
        for p in f.packs {
            old_entries.entry(p.id).or_insert(p.blobs);
        }
    })?;
    let mut packs: Vec<IndexedPack> = Vec::new();
    for obj in repo.block_on(repo.backend().list(Kind::Pack))? {
        let Some(id) = PackId::from_hex(&obj.name) else {
            continue;
        };
        if skip.contains(&id) {
            report.packs_marked_by_prune += 1;
            continue;
        }
        let what = format!("packs/{id}");
        let _span = tracing::info_span!("repair pack", pack = %id.short()).entered();
        let bytes = match repo.block_on(repo.backend().get(Kind::Pack, &obj.name)) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        report.packs_read += 1;
        let entries = match pack::parse_pack(repo.keys(), &bytes, &what) {
            Ok(e) => e,
            Err(e) => {
                report.packs_unreadable.push(format!("{what}: {e}"));
                // The trailer is gone (a truncated pack), but the old index may still say
                // where its blobs were: those that are still whole are kept.
                match old_entries.remove(&id) {
                    Some(known) => known,
                    None => continue,
                }
            }
        };
        let good: Vec<PackEntry> = entries
            .into_iter()
            .filter(|e| {
                let span = e.offset as usize..e.offset as usize + e.length as usize;
                let ok = bytes
                    .get(span)
                    .is_some_and(|s| pack::open_blob(repo.keys(), s, &e.id, e.raw_length).is_ok());
                if !ok {
                    report
                        .blobs_damaged
                        .push(format!("{what}: blob {}", e.id.to_hex()));
                }
                ok
            })
            .collect();
        if good.is_empty() {
            continue;
        }
        report.packs_indexed += 1;
        report.blobs_indexed += good.len();
        packs.push(IndexedPack {
            id,
            size: bytes.len() as u64,
            blobs: good,
        });
    }
    // Same packs in the same order give the same index files, hence the same names.
    packs.sort_by_key(|p| p.id);

    let mut index = Index::default();
    let mut new_names = HashSet::new();
    for chunk in packs.chunks(PACKS_PER_INDEX_FILE) {
        let file = IndexFile {
            packs: chunk.to_vec(),
        };
        index.add_file(&file);
        let name = if opts.dry_run {
            file.seal(repo.keys()).0.to_hex()
        } else {
            repo.save_index(&file)?.0.to_hex()
        };
        new_names.insert(name.clone());
        report.index_files_written.push(name);
    }
    // Only now that every new file is stored do the old ones go.
    for name in old_index.iter().filter(|n| !new_names.contains(*n)) {
        if opts.dry_run {
            report.index_files_deleted.push(name.clone());
            continue;
        }
        match repo.block_on(repo.backend().delete(Kind::Index, name)) {
            Ok(()) => report.index_files_deleted.push(name.clone()),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!("index/{name}: not deleted ({e}); the new index covers it");
                report.index_files_kept.push(name.clone());
            }
        }
    }

    let (snapshots, problems) = repo.list_snapshots()?;
    report.unreadable_snapshots = problems;
    report.snapshots_checked = snapshots.len();
    let no_bad = HashSet::<BlobId>::new();
    let mut trees = crate::ops::check::TreeChecker::new(repo, &index, &no_bad);
    for (sid, snap) in &snapshots {
        let problems = trees.snapshot_problems(snap);
        if !problems.is_empty() {
            report.broken_snapshots.push(BrokenSnapshot {
                id: sid.to_hex(),
                volume: snap.volume.clone(),
                time: snap.time.clone(),
                problems,
            });
        }
    }

    let mut problems = Vec::new();
    let old_marks = load_marks(repo, &mut problems)?;
    for p in problems {
        tracing::warn!("{p}");
    }
    let mark = RepairMark {
        version: 1,
        created: Repository::now(),
        host: crate::repo::hostname(),
        broken: report.broken_snapshots.clone(),
    };
    let mut kept_mark = None;
    if !mark.broken.is_empty() {
        let (name, sealed) = mark.seal(repo.keys());
        if !opts.dry_run {
            repo.block_on(repo.backend().put(Kind::Repair, &name, sealed.into()))?;
        }
        report.mark_written = Some(name.clone());
        kept_mark = Some(name);
    }
    for (name, _) in old_marks {
        if kept_mark.as_ref() == Some(&name) {
            continue;
        }
        if !opts.dry_run {
            match repo.block_on(repo.backend().delete(Kind::Repair, &name)) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        report.marks_deleted.push(name);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_mark_round_trip_and_name_binding() {
        let keys = crate::repo::format::crypto::Keys::from_master(&[7u8; 32]);
        let m = RepairMark {
            version: 1,
            created: "2026-01-01T00:00:00Z".into(),
            host: "h".into(),
            broken: vec![BrokenSnapshot {
                id: "ab".repeat(32),
                volume: "v".into(),
                time: "t".into(),
                problems: vec!["/x: gone".into()],
            }],
        };
        let (name, sealed) = m.seal(&keys);
        assert_eq!(RepairMark::open(&keys, &name, &sealed).unwrap(), m);
        assert!(RepairMark::open(&keys, &"00".repeat(32), &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(RepairMark::open(&keys, &name, &flipped).is_err());
        assert!(RepairMark::open(&keys, &name, &sealed[..10]).is_err());
    }
}
