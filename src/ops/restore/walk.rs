//! Walking a snapshot's trees in pre-order, with the tree cache that loads subdirectories'
//! trees ahead (one round trip per group on S3) and keeps them for a second walk.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ids::BlobId;
use crate::repo::format::index::Index;
use crate::repo::format::tree::{Node, Tree};
use crate::repo::{Repository, TREES_AT_ONCE};

/// Visits every entry of a snapshot in pre-order (a directory before its contents, names
/// in order). The visitor returns whether to descend into a directory. Trees that cannot be
/// read are returned as `(path, error)` and their contents skipped.
pub fn walk(
    repo: &Repository,
    index: &Index,
    root: &Node,
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<Vec<(Vec<u8>, Error)>> {
    walk_with(repo, index, root, visit, &mut TreeCache::default())
}

/// `walk`, with trees kept in or taken from `cache`.
pub(super) fn walk_with(
    repo: &Repository,
    index: &Index,
    root: &Node,
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
    cache: &mut TreeCache,
) -> Result<Vec<(Vec<u8>, Error)>> {
    let mut problems = Vec::new();
    let mut path = Vec::new();
    if let Some(t) = root.subtree {
        let mut w = Walk {
            repo,
            index,
            visit,
            problems: &mut problems,
            cache,
        };
        w.tree(&t, None, &mut path)?;
    }
    Ok(problems)
}

/// Trees loaded before the walk needs them. On S3 each load is a round trip, so:
/// - a restore walks the snapshot twice, and the first walk keeps the trees it visited for
///   the second, up to a budget;
/// - whenever the walk loads trees, the trees of their subdirectories are loaded with them
///   (the walk asks for those next), up to a budget: a walk of 20 directories of 15
///   subdirectories each made 21 round trips one after the other, now 2.
#[derive(Default)]
pub(super) struct TreeCache {
    /// Whether the walk keeps the trees it has visited (the first) or takes them (the next).
    pub(super) keep: bool,
    kept: HashMap<BlobId, Tree>,
    /// Sizes of the trees kept so far (plaintext, from the index).
    kept_bytes: u64,
    /// Trees loaded ahead of the walk, with their sizes.
    ahead: HashMap<BlobId, (Tree, u64)>,
    ahead_bytes: u64,
}

/// Tree bytes (plaintext, before decoding) a `TreeCache` keeps for the next walk, at most.
const KEPT_TREE_BYTES: u64 = 16 * 1024 * 1024;
/// Tree bytes loaded ahead of the walk, at most.
const AHEAD_TREE_BYTES: u64 = 4 * 1024 * 1024;

impl TreeCache {
    pub(super) fn keeping() -> Self {
        TreeCache {
            keep: true,
            ..Default::default()
        }
    }

    fn size(index: &Index, id: &BlobId) -> u64 {
        index
            .get(id)
            .map_or(0, |(_, loc)| u64::from(loc.raw_length))
    }

    /// Called with each tree the walk has finished.
    fn put(&mut self, index: &Index, id: &BlobId, tree: Tree) {
        let size = Self::size(index, id);
        if self.keep && self.kept_bytes + size <= KEPT_TREE_BYTES {
            self.kept_bytes += size;
            self.kept.insert(*id, tree);
        }
    }

    fn take(&mut self, id: &BlobId) -> Option<Tree> {
        if let Some((tree, size)) = self.ahead.remove(id) {
            self.ahead_bytes -= size;
            return Some(tree);
        }
        self.kept.remove(id)
    }

    /// The trees of `ids`, in order: those at hand, and the others loaded together.
    fn load(&mut self, repo: &Repository, index: &Index, ids: &[BlobId]) -> Vec<Result<Tree>> {
        let mut got: Vec<Option<Result<Tree>>> =
            ids.iter().map(|id| self.take(id).map(Ok)).collect();
        let missing: Vec<BlobId> = ids
            .iter()
            .zip(&got)
            .filter(|(_, t)| t.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            let mut loaded = repo.load_trees(index, &missing).into_iter();
            for slot in got.iter_mut().filter(|t| t.is_none()) {
                *slot = loaded.next();
            }
        }
        let got: Vec<Result<Tree>> = got
            .into_iter()
            .map(|t| t.expect("load_trees returns one result per id"))
            .collect();
        self.load_ahead(repo, index, &got);
        got
    }

    /// Loads the subdirectories' trees of `trees` that are not at hand, within the budget.
    /// One that fails is left out: the walk loads it again when it gets there, and reports.
    fn load_ahead(&mut self, repo: &Repository, index: &Index, trees: &[Result<Tree>]) {
        let mut next: Vec<BlobId> = Vec::new();
        let mut sizes: Vec<u64> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = self.ahead_bytes;
        let subtrees = trees
            .iter()
            .flatten()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| n.subtree);
        for id in subtrees {
            let size = Self::size(index, &id);
            if bytes + size > AHEAD_TREE_BYTES {
                break;
            }
            if !self.ahead.contains_key(&id) && !self.kept.contains_key(&id) && seen.insert(id) {
                bytes += size;
                next.push(id);
                sizes.push(size);
            }
        }
        if next.is_empty() {
            return;
        }
        let loaded = repo.load_trees(index, &next);
        for ((id, tree), size) in next.into_iter().zip(loaded).zip(sizes) {
            if let Ok(tree) = tree {
                self.ahead_bytes += size;
                self.ahead.insert(id, (tree, size));
            }
        }
    }
}

/// Deepest directory nesting a walk follows. A backup reads paths whole, so PATH_MAX
/// (4096 bytes, at least two per level) bounds what it can store to about 2048 levels; a
/// deeper chain of trees can only be crafted, and following it would exhaust the stack.
pub const MAX_TREE_DEPTH: usize = 4096;

/// One walk's state.
struct Walk<'a, 'v> {
    repo: &'a Repository,
    index: &'a Index,
    visit: &'v mut dyn FnMut(&[u8], &Node) -> Result<bool>,
    problems: &'a mut Vec<(Vec<u8>, Error)>,
    cache: &'a mut TreeCache,
}

impl Walk<'_, '_> {
    fn tree(
        &mut self,
        tree: &BlobId,
        loaded: Option<Result<Tree>>,
        path: &mut Vec<u8>,
    ) -> Result<()> {
        let depth = path.iter().filter(|&&b| b == b'/').count() + usize::from(!path.is_empty());
        if depth >= MAX_TREE_DEPTH {
            self.problems.push((
                path.clone(),
                Error::corrupt(
                    format!("tree {tree}"),
                    format!(
                        "nested deeper than {MAX_TREE_DEPTH} directories, which no backup writes"
                    ),
                ),
            ));
            return Ok(());
        }
        let loaded = loaded.unwrap_or_else(|| {
            let mut one = self
                .cache
                .load(self.repo, self.index, std::slice::from_ref(tree));
            one.pop().expect("one result for one tree")
        });
        let t = match loaded {
            Ok(t) => t,
            Err(e) => {
                self.problems.push((path.clone(), e));
                return Ok(());
            }
        };
        // The subdirectories' trees are loaded a group at a time, together: on S3 each is a
        // request, and loading them one by one made the walk of a few hundred directories
        // wait seconds on round trips while the restore workers had nothing to do.
        let subtrees: Vec<BlobId> = t.nodes.iter().filter_map(|n| n.subtree).collect();
        let mut next_sub = 0;
        let mut ahead: std::collections::VecDeque<Result<Tree>> = Default::default();
        for node in &t.nodes {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            let descend = (self.visit)(path, node)?;
            if let Some(sub) = &node.subtree {
                if ahead.is_empty() {
                    let group = &subtrees[next_sub..subtrees.len().min(next_sub + TREES_AT_ONCE)];
                    ahead.extend(self.cache.load(self.repo, self.index, group));
                }
                next_sub += 1;
                let loaded = ahead.pop_front();
                if descend {
                    self.tree(sub, loaded, path)?;
                }
            }
            path.truncate(len);
        }
        self.cache.put(self.index, tree, t);
        Ok(())
    }
}
