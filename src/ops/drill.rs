//! `drill`: a restore test done for the user, so "can we restore?" is answered before the
//! day it matters.
//!
//! For each volume, the latest snapshot of this host is restored (all of it, or a random
//! sample of its files) into a scratch directory and every restored file is re-hashed
//! against the snapshot. Where the live data still has a file's size and mtime, the live
//! bytes are hashed too: a difference there is data that changed behind its metadata's
//! back. Each result is appended to `<state dir>/drills.jsonl` with the time it took.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ops::import::Scratch;
use crate::ops::restore::{self, Filter, RestoreOptions};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::NodeKind;

#[derive(Debug, Clone)]
pub struct Options {
    /// Share of the files restored, in percent (0 < p <= 100).
    pub sample_percent: f64,
    pub scratch_parent: PathBuf,
}

/// One volume's drill, as printed and logged.
#[derive(Debug, Clone, Serialize)]
pub struct Drill {
    pub time: String,
    pub host: String,
    pub volume: String,
    pub snapshot_id: String,
    pub snapshot_time: String,
    pub sample_percent: f64,
    pub files_in_snapshot: u64,
    pub files_restored: u64,
    pub files_verified: u64,
    pub bytes_restored: u64,
    pub seconds: f64,
    /// Restored files whose live copy has the snapshot's size and mtime and was compared.
    pub live_compared: u64,
    /// Live files whose bytes differ from the snapshot although size and mtime match.
    pub live_differs: Vec<String>,
    /// Files (or trees) that could not be restored or did not verify.
    pub errors: Vec<String>,
    pub ok: bool,
}

/// The volumes `host` has snapshots of, sorted: what a drill of "everything" covers.
pub fn volumes_of_host(repo: &Repository, host: &str) -> Result<Vec<String>> {
    let (snaps, _) = repo.list_snapshots()?;
    let mut volumes: Vec<String> = snaps
        .into_iter()
        .filter(|(_, s)| s.host == host)
        .map(|(_, s)| s.volume)
        .collect();
    volumes.sort();
    volumes.dedup();
    Ok(volumes)
}

/// Drills the latest snapshot of `volume` by `host`.
pub fn run(
    repo: &Repository,
    index: &Index,
    volume: &str,
    host: &str,
    opts: &Options,
) -> Result<Drill> {
    let (snaps, _) = repo.list_snapshots()?;
    let (id, snap) = snaps
        .into_iter()
        .rev()
        .find(|(_, s)| s.volume == volume && s.host == host)
        .ok_or_else(|| {
            Error::Other(format!(
                "no snapshot of {volume:?} from host {host:?} in {}; `volguard snapshots` lists \
                 what there is",
                repo.location()
            ))
        })?;
    let started = Instant::now();
    let (files, tree_errors) = snapshot_files(repo, index, &snap)?;
    let sample: HashSet<Vec<u8>> = files
        .iter()
        .filter(|_| {
            opts.sample_percent >= 100.0 || rand::random::<f64>() * 100.0 < opts.sample_percent
        })
        .map(|(p, _, _)| p.clone())
        .collect();
    let scratch = Scratch::new(&opts.scratch_parent)?;
    let target = scratch.path().join("restore");
    let report = restore::to_dir(
        repo,
        index,
        &snap,
        &target,
        &RestoreOptions {
            filter: Filter::only(sample.clone()),
            verify: true,
            ..Default::default()
        },
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let (live_compared, live_differs) = compare_live(&snap, &files, &sample);
    // The restore counts every file it starts; each failure is one error line.
    let files_restored = report.files.saturating_sub(report.errors.len() as u64);
    let mut errors: Vec<String> = tree_errors;
    errors.extend(report.errors);
    let ok = errors.is_empty() && live_differs.is_empty();
    Ok(Drill {
        time: Repository::now(),
        host: host.to_string(),
        volume: volume.to_string(),
        snapshot_id: id.to_hex(),
        snapshot_time: snap.time.clone(),
        sample_percent: opts.sample_percent,
        files_in_snapshot: files.len() as u64,
        files_restored,
        files_verified: report.verified_files,
        bytes_restored: report.bytes,
        seconds,
        live_compared,
        live_differs,
        errors,
        ok,
    })
}

/// Every regular file of the snapshot: (path, size, mtime seconds and nanoseconds, hash).
type SnapFile = (Vec<u8>, (u64, i64, u32), Option<[u8; 32]>);

fn snapshot_files(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
) -> Result<(Vec<SnapFile>, Vec<String>)> {
    let mut files = Vec::new();
    let problems = restore::walk(repo, index, &snap.root, &mut |rel, node| {
        if node.kind == NodeKind::File {
            files.push((
                rel.to_vec(),
                (node.size, node.mtime_sec, node.mtime_nsec),
                node.file_hash,
            ));
        }
        Ok(true)
    })?;
    let errors = problems
        .into_iter()
        .map(|(p, e)| {
            format!(
                "directory {:?} cannot be read from the snapshot: {e}",
                String::from_utf8_lossy(&p)
            )
        })
        .collect();
    Ok((files, errors))
}

/// Hashes the live copy of each sampled file whose size and mtime still match the snapshot
/// (anything else changed legitimately since, as far as metadata tells).
fn compare_live(
    snap: &Snapshot,
    files: &[SnapFile],
    sample: &HashSet<Vec<u8>>,
) -> (u64, Vec<String>) {
    let live_root = Path::new(&snap.source);
    if !live_root.is_dir() {
        return (0, Vec::new()); // an imported archive, or a volume that is gone
    }
    let mut compared = 0;
    let mut differs = Vec::new();
    for (rel, (size, sec, nsec), hash) in files.iter().filter(|f| sample.contains(&f.0)) {
        let Some(hash) = hash else { continue };
        let path = live_root.join(std::ffi::OsStr::from_bytes(rel));
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file()
            || meta.len() != *size
            || meta.mtime() != *sec
            || meta.mtime_nsec() != i64::from(*nsec)
        {
            continue;
        }
        match restore::blake3_of_file(&path) {
            Ok(h) => {
                compared += 1;
                if h != *hash {
                    differs.push(format!(
                        "{}: live content differs from the snapshot although size and mtime are \
                         the same (changed behind its metadata's back?)",
                        path.display()
                    ));
                }
            }
            Err(e) => tracing::warn!("cannot read live {}: {e}", path.display()),
        }
    }
    (compared, differs)
}

/// Appends a drill to the log, one JSON object per line.
pub fn record(log: &Path, d: &Drill) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("cannot open the drill log", log, e))?;
    let line = serde_json::to_string(d).expect("a drill serializes");
    writeln!(f, "{line}").map_err(|e| Error::io("cannot write the drill log", log, e))
}
