//! `ls`: the entries of a directory in a snapshot (or its whole subtree), handed to the
//! caller one at a time, so a listing of a million files is printed as it is read.

use super::{NodeInfo, lookup};
use crate::error::Result;
use crate::ops::restore::walk;
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::NodeKind;

#[derive(Debug, Default, Clone)]
pub struct LsOptions {
    /// Inside the snapshot; empty or `/` for its root.
    pub path: String,
    /// The whole subtree, not only the directory's own entries.
    pub recursive: bool,
}

/// Calls `each` with every entry `opts` selects: a directory's entries in name order
/// (with `recursive`, pre-order through the subtree), or the one entry a file path
/// names. Returns one line per tree that could not be read (its entries are left out).
pub fn ls(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    snapshot_name: &str,
    opts: &LsOptions,
    each: &mut dyn FnMut(NodeInfo) -> Result<()>,
) -> Result<Vec<String>> {
    let (node, shown) = lookup(repo, index, &snap.root, &opts.path, snapshot_name)?;
    let base = shown.trim_start_matches('/').as_bytes().to_vec();
    if node.kind != NodeKind::Dir {
        each(NodeInfo::new(&base, &node))?;
        return Ok(Vec::new());
    }
    let join = |rel: &[u8]| {
        let mut p = base.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(rel);
        p
    };
    if !opts.recursive {
        // Only this tree: a walk would load the subdirectories' trees too.
        if let Some(sub) = &node.subtree {
            for n in repo.load_tree(index, sub)?.nodes {
                each(NodeInfo::new(&join(&n.name), &n))?;
            }
        }
        return Ok(Vec::new());
    }
    let problems = walk(repo, index, &node, &mut |rel, n| {
        each(NodeInfo::new(&join(rel), n))?;
        Ok(true)
    })?;
    Ok(problems
        .into_iter()
        .map(|(rel, e)| {
            format!(
                "/{}: directory cannot be read, its entries are left out: {e}",
                String::from_utf8_lossy(&join(&rel))
            )
        })
        .collect())
}
