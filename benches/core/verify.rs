//! Checking that a restore gave back exactly what was backed up.
//!
//! A fast backup tool that restores the wrong bytes is worthless, and a bench
//! that does not check would happily report it as a win. So every restore is
//! compared, path by path and content hash by content hash, to the source.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Compared per path: entry type, and for files length and BLAKE3 hash.
/// Timestamps, owners and modes are not compared: this checks data.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { len: u64, hash: blake3::Hash },
    Symlink(PathBuf),
}

/// Every entry under a root, keyed by path relative to it.
pub struct Manifest(BTreeMap<PathBuf, Entry>);

impl Manifest {
    pub fn of(root: &Path) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for item in walkdir::WalkDir::new(root).min_depth(1) {
            let item = item.with_context(|| format!("walking {}", root.display()))?;
            let rel = item
                .path()
                .strip_prefix(root)
                .context("walkdir yielded a path outside its root")?
                .to_path_buf();
            entries.insert(rel, entry_of(item.path(), item.file_type())?);
        }
        Ok(Self(entries))
    }

    pub fn files(&self) -> usize {
        self.0
            .values()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count()
    }

    /// Fails, listing up to ten differences, unless `restored` matches.
    pub fn check(&self, restored: &Manifest, what: &str) -> Result<()> {
        let mut problems = Vec::new();
        for (path, want) in &self.0 {
            match restored.0.get(path) {
                None => problems.push(format!("missing: {}", path.display())),
                Some(got) if got != want => {
                    problems.push(format!("differs: {} ({want:?} vs {got:?})", path.display()))
                }
                Some(_) => {}
            }
        }
        for path in restored.0.keys().filter(|p| !self.0.contains_key(*p)) {
            problems.push(format!("unexpected: {}", path.display()));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let total = problems.len();
        problems.truncate(10);
        bail!(
            "RESTORE MISMATCH for {what}: {total} differences, first ones:\n  {}",
            problems.join("\n  ")
        )
    }
}

fn entry_of(path: &Path, kind: std::fs::FileType) -> Result<Entry> {
    if kind.is_dir() {
        return Ok(Entry::Dir);
    }
    if kind.is_symlink() {
        let target =
            std::fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
        return Ok(Entry::Symlink(target));
    }
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(Entry::File {
        len,
        hash: hasher.finalize(),
    })
}
