//! `volguard diff` and `volguard verify`: what changed in a volume between two snapshots, or
//! between a snapshot and the live `_data`, entry by entry (content by plain BLAKE3, mode,
//! owner, xattrs, type); and which live changes the metadata cannot explain: content that
//! differs while size and mtime are what the snapshot recorded, which ordinary writes
//! never produce (they move mtime), so someone changed the data and put the mtime back.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::fsmeta;
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind, Xattr};

/// What one side of a comparison knows about an entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub rdev: u64,
    pub xattrs: Vec<Xattr>,
    pub link_target: Vec<u8>,
    /// Plain BLAKE3 of a regular file's content; `None` for other kinds or when unknown.
    pub hash: Option<[u8; 32]>,
}

impl Entry {
    fn from_node(n: &Node) -> Entry {
        Entry {
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            mtime_sec: n.mtime_sec,
            mtime_nsec: n.mtime_nsec,
            rdev: n.rdev,
            xattrs: n.xattrs.clone(),
            link_target: n.link_target.clone(),
            hash: n.file_hash,
        }
    }
}

/// Every entry of one side, by path relative to the volume root (no leading `/`).
pub type Listing = BTreeMap<Vec<u8>, Entry>;

/// The entries of a snapshot, plus one line per tree that could not be read.
pub fn snapshot_listing(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
) -> Result<(Listing, Vec<String>)> {
    let mut out = Listing::new();
    let problems = crate::ops::restore::walk(repo, index, &snap.root, &mut |path, node| {
        out.insert(path.to_vec(), Entry::from_node(node));
        Ok(true)
    })?;
    let problems = problems
        .into_iter()
        .map(|(p, e)| {
            format!(
                "snapshot tree at {:?} cannot be read, its entries are left out: {e}",
                String::from_utf8_lossy(&p)
            )
        })
        .collect();
    Ok((out, problems))
}

/// The entries under a live directory, with every regular file hashed. Like a backup it
/// never follows symlinks, never opens FIFOs for reading and stays on one filesystem;
/// entries it cannot read are named in the returned warnings.
pub fn live_listing(root: &Path) -> Result<(Listing, Vec<String>)> {
    let meta = std::fs::symlink_metadata(root)
        .map_err(|e| crate::error::Error::io("cannot read", root, e))?;
    let mut out = Listing::new();
    let mut warnings = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                warnings.push(format!("{}: cannot list: {e}", dir.display()));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    warnings.push(format!("{}: cannot list: {e}", dir.display()));
                    continue;
                }
            };
            let path = ent.path();
            let name = ent.file_name().as_bytes().to_vec();
            let mut rel_path = rel.clone();
            if !rel_path.is_empty() {
                rel_path.push(b'/');
            }
            rel_path.extend_from_slice(&name);
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed since the listing: not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if m.dev() != meta.dev() {
                warnings.push(format!(
                    "{}: another filesystem is mounted here; not compared (backups do not cross it either)",
                    path.display()
                ));
                continue;
            }
            let node = match fsmeta::read_node(&path, &name, &m) {
                Ok(n) => n,
                Err(e) => {
                    warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let mut entry = Entry::from_node(&node);
            if node.kind == NodeKind::File {
                match hash_file(&path) {
                    Ok(h) => entry.hash = Some(h),
                    Err(e) => warnings.push(format!("{}: cannot read: {e}", path.display())),
                }
            }
            if node.kind == NodeKind::Dir {
                stack.push((path, rel_path.clone()));
            }
            out.insert(rel_path, entry);
        }
    }
    Ok((out, warnings))
}

/// Plain BLAKE3 of a file's logical content, read the way a backup reads it.
pub fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = crate::ops::backup::open_for_backup(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

/// One side of an entry in the report.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// Octal permission bits, e.g. "0644".
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub mtime: String,
    pub blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::CharDevice => "char_device",
        NodeKind::BlockDevice => "block_device",
        NodeKind::Socket => "socket",
    }
}

fn mtime_text(sec: i64, nsec: u32) -> String {
    time::OffsetDateTime::from_unix_timestamp(sec)
        .ok()
        .and_then(|t| t.replace_nanosecond(nsec).ok())
        .map(crate::fmt::format_time)
        .unwrap_or_else(|| format!("{sec}.{nsec:09}"))
}

impl From<&Entry> for EntryInfo {
    fn from(e: &Entry) -> EntryInfo {
        EntryInfo {
            kind: kind_name(e.kind),
            size: e.size,
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            mtime: mtime_text(e.mtime_sec, e.mtime_nsec),
            blake3: e.hash.map(hex::encode),
            link_target: (e.kind == NodeKind::Symlink)
                .then(|| String::from_utf8_lossy(&e.link_target).into_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Added {
    pub path: String,
    #[serde(flatten)]
    pub entry: EntryInfo,
}

#[derive(Debug, Serialize)]
pub struct Modified {
    pub path: String,
    /// Which aspects differ: type, content, mode, owner, xattrs, link_target, rdev, mtime.
    pub changes: Vec<&'static str>,
    pub from: EntryInfo,
    pub to: EntryInfo,
}

#[derive(Debug, Default, Serialize)]
pub struct Comparison {
    pub added: Vec<Added>,
    pub removed: Vec<Added>,
    pub modified: Vec<Modified>,
}

fn path_text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// What differs between two entries of the same path. A directory's mtime is left out: it
/// moves with every entry added or removed inside, which the report already lists.
pub fn entry_changes(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push("type");
        return out;
    }
    let content_differs = match (a.hash, b.hash) {
        (Some(x), Some(y)) => x != y,
        _ => a.size != b.size,
    };
    if a.kind == NodeKind::File && content_differs {
        out.push("content");
    }
    if a.mode != b.mode {
        out.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        out.push("owner");
    }
    if a.xattrs != b.xattrs {
        out.push("xattrs");
    }
    if a.link_target != b.link_target {
        out.push("link_target");
    }
    if a.rdev != b.rdev {
        out.push("rdev");
    }
    if a.kind != NodeKind::Dir && (a.mtime_sec, a.mtime_nsec) != (b.mtime_sec, b.mtime_nsec) {
        out.push("mtime");
    }
    out
}

pub fn compare(from: &Listing, to: &Listing) -> Comparison {
    let mut c = Comparison::default();
    for (p, a) in from {
        match to.get(p) {
            None => c.removed.push(Added {
                path: path_text(p),
                entry: a.into(),
            }),
            Some(b) => {
                let changes = entry_changes(a, b);
                if !changes.is_empty() {
                    c.modified.push(Modified {
                        path: path_text(p),
                        changes,
                        from: a.into(),
                        to: b.into(),
                    });
                }
            }
        }
    }
    for (p, b) in to {
        if !from.contains_key(p) {
            c.added.push(Added {
                path: path_text(p),
                entry: b.into(),
            });
        }
    }
    c
}

/// A live file whose content differs from the snapshot while its size and mtime are
/// exactly the snapshot's.
#[derive(Debug, Serialize)]
pub struct Tampered {
    pub path: String,
    pub size: u64,
    pub mtime: String,
    pub snapshot_blake3: String,
    pub live_blake3: String,
}

pub fn tampered(snapshot: &Listing, live: &Listing) -> Vec<Tampered> {
    let mut out = Vec::new();
    for (p, s) in snapshot {
        let Some(l) = live.get(p) else { continue };
        if s.kind != NodeKind::File || l.kind != NodeKind::File {
            continue;
        }
        if (s.size, s.mtime_sec, s.mtime_nsec) != (l.size, l.mtime_sec, l.mtime_nsec) {
            continue;
        }
        if let (Some(a), Some(b)) = (s.hash, l.hash)
            && a != b
        {
            out.push(Tampered {
                path: path_text(p),
                size: l.size,
                mtime: mtime_text(l.mtime_sec, l.mtime_nsec),
                snapshot_blake3: hex::encode(a),
                live_blake3: hex::encode(b),
            });
        }
    }
    out
}

/// Files the snapshot has no content hash for (written by an older volguard): their
/// content cannot be verified.
pub fn unhashed(snapshot: &Listing) -> usize {
    snapshot
        .values()
        .filter(|e| e.kind == NodeKind::File && e.hash.is_none())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64, hash: u8) -> Entry {
        Entry {
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_sec: mtime,
            mtime_nsec: 5,
            rdev: 0,
            xattrs: vec![],
            link_target: vec![],
            hash: Some([hash; 32]),
        }
    }

    #[test]
    fn only_unexplained_content_changes_are_tampering() {
        let mut snap = Listing::new();
        let mut live = Listing::new();
        snap.insert(b"same".to_vec(), file(3, 10, 1));
        live.insert(b"same".to_vec(), file(3, 10, 1));
        snap.insert(b"edited".to_vec(), file(3, 10, 1));
        live.insert(b"edited".to_vec(), file(3, 11, 2));
        snap.insert(b"resized".to_vec(), file(3, 10, 1));
        live.insert(b"resized".to_vec(), file(4, 10, 2));
        snap.insert(b"forged".to_vec(), file(3, 10, 1));
        live.insert(b"forged".to_vec(), file(3, 10, 2));
        let mut chmod = file(3, 10, 1);
        chmod.mode = 0o600;
        snap.insert(b"chmod".to_vec(), file(3, 10, 1));
        live.insert(b"chmod".to_vec(), chmod);
        let t = tampered(&snap, &live);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].path, "forged");
        let c = compare(&snap, &live);
        let got: Vec<(String, Vec<&str>)> = c
            .modified
            .iter()
            .map(|m| (m.path.clone(), m.changes.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("chmod".to_string(), vec!["mode"]),
                ("edited".to_string(), vec!["content", "mtime"]),
                ("forged".to_string(), vec!["content"]),
                ("resized".to_string(), vec!["content"]),
            ]
        );
    }
}
