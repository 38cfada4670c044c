//! `find`: which snapshots hold an entry matching a glob, a content BLAKE3, a size range or
//! an mtime range. Snapshots of one volume share most of their trees, so what a tree holds
//! is searched once and remembered by tree id: find over 100 nightly snapshots reads
//! little more than one snapshot's trees plus what changed between them. No file content
//! is read: trees keep each file's plain BLAKE3.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::NodeInfo;
use crate::error::{Error, Result};
use crate::ids::BlobId;
use crate::ops::restore::MAX_TREE_DEPTH;
use crate::repo::format::index::Index;
use crate::repo::format::tree::{Node, NodeKind, Tree};
use crate::repo::{Repository, SnapshotEntry, TREES_AT_ONCE};

/// What an entry must be to match: every criterion given (patterns: any of them).
#[derive(Debug, Default, Clone)]
pub struct Criteria {
    /// Globs: one with a `/` matches the path from the snapshot's root, one without the
    /// entry's name (as restic's find). `*` never crosses a `/`; `**` does.
    pub patterns: Vec<String>,
    /// Plain BLAKE3 of a regular file's whole content.
    pub blake3: Option<[u8; 32]>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// Modified at or after (unix nanoseconds).
    pub newer: Option<i128>,
    /// Modified at or before (unix nanoseconds).
    pub older: Option<i128>,
}

/// The compiled form of [`Criteria`].
struct Matcher {
    globs: crate::pathglob::PathGlobs,
    c: Criteria,
}

impl Matcher {
    fn new(c: &Criteria) -> Result<Matcher> {
        if c.patterns.is_empty()
            && c.blake3.is_none()
            && c.min_size.is_none()
            && c.max_size.is_none()
            && c.newer.is_none()
            && c.older.is_none()
        {
            return Err(Error::Usage(
                "find needs something to look for: a PATTERN, --blake3, --min-size/--max-size \
                 or --newer/--older"
                    .into(),
            ));
        }
        let mut globs = crate::pathglob::Builder::default();
        for p in &c.patterns {
            globs
                .add(p)
                .map_err(|e| Error::Usage(format!("pattern {p:?} is not a valid glob: {e}")))?;
        }
        Ok(Matcher {
            globs: globs
                .build()
                .map_err(|e| Error::Usage(format!("patterns: {e}")))?,
            c: c.clone(),
        })
    }

    fn matches(&self, path: &[u8], n: &Node) -> bool {
        let c = &self.c;
        if !self.globs.is_empty() && !self.globs.matches(path, &n.name) {
            return false;
        }
        let file = n.kind == NodeKind::File;
        if c.blake3.is_some() && (!file || n.file_hash != c.blake3) {
            return false;
        }
        if (c.min_size.is_some() || c.max_size.is_some())
            && (!file
                || c.min_size.is_some_and(|m| n.size < m)
                || c.max_size.is_some_and(|m| n.size > m))
        {
            return false;
        }
        let mtime = i128::from(n.mtime_sec) * 1_000_000_000 + i128::from(n.mtime_nsec);
        !(c.newer.is_some_and(|t| mtime < t) || c.older.is_some_and(|t| mtime > t))
    }
}

/// The entries of one snapshot that matched.
#[derive(Debug, Serialize)]
pub struct SnapshotHits {
    pub snapshot: String,
    pub short_id: String,
    pub time: String,
    pub host: String,
    pub volume: String,
    pub hits: usize,
    pub matches: Vec<NodeInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct FindReport {
    /// Snapshots holding at least one match, oldest first.
    pub snapshots: Vec<SnapshotHits>,
    /// Snapshots searched.
    pub searched: usize,
    /// Trees read from the repository, and trees whose result was reused (shared with a
    /// snapshot searched before, or twice in one).
    pub trees_read: u64,
    pub trees_reused: u64,
    /// Trees that could not be read; their entries are left out.
    pub problems: Vec<String>,
}

/// A match below a tree: its path relative to the tree, and its node (without the
/// chunk list, which can be large and is not shown).
type Hits = Arc<Vec<(Vec<u8>, Node)>>;

struct Search<'a> {
    repo: &'a Repository,
    index: &'a Index,
    m: Matcher,
    /// Results by tree id, and by the tree's path too when a pattern matches on paths
    /// (the same tree elsewhere then can match differently).
    memo: HashMap<(BlobId, Vec<u8>), Hits>,
    report: FindReport,
    snapshot: String,
}

/// Searches `snapshots` (oldest first) for entries matching `criteria`.
pub fn find(
    repo: &Repository,
    index: &Index,
    snapshots: &[SnapshotEntry],
    criteria: &Criteria,
) -> Result<FindReport> {
    let mut s = Search {
        repo,
        index,
        m: Matcher::new(criteria)?,
        memo: HashMap::new(),
        report: FindReport::default(),
        snapshot: String::new(),
    };
    for (id, snap) in snapshots {
        s.snapshot = id.short();
        s.report.searched += 1;
        let mut matches = Vec::new();
        if let Some(root) = snap.root.subtree {
            for (rel, node) in s.tree(root, None, &mut Vec::new()).iter() {
                matches.push(NodeInfo::new(rel, node));
            }
        }
        if !matches.is_empty() {
            s.report.snapshots.push(SnapshotHits {
                snapshot: id.to_hex(),
                short_id: id.short(),
                time: snap.time.clone(),
                host: snap.host.clone(),
                volume: snap.volume.clone(),
                hits: matches.len(),
                matches,
            });
        }
    }
    Ok(s.report)
}

impl Search<'_> {
    fn key(&self, id: BlobId, path: &[u8]) -> (BlobId, Vec<u8>) {
        let path = if self.m.globs.has_path_patterns() {
            path.to_vec()
        } else {
            Vec::new()
        };
        (id, path)
    }

    /// The matches below tree `id` at `path`, relative to it.
    fn tree(&mut self, id: BlobId, loaded: Option<Result<Tree>>, path: &mut Vec<u8>) -> Hits {
        let key = self.key(id, path);
        if let Some(h) = self.memo.get(&key) {
            self.report.trees_reused += 1;
            return h.clone();
        }
        let depth = path.iter().filter(|&&b| b == b'/').count() + usize::from(!path.is_empty());
        let loaded = match loaded {
            _ if depth >= MAX_TREE_DEPTH => Err(Error::corrupt(
                format!("tree {id}"),
                format!("nested deeper than {MAX_TREE_DEPTH} directories"),
            )),
            Some(t) => t,
            None => self.repo.load_tree(self.index, &id),
        };
        let tree = match loaded {
            Ok(t) => t,
            Err(e) => {
                // Not remembered, so a search that meets it again tries again.
                self.report.problems.push(format!(
                    "snapshot {}: /{}: directory cannot be read, its entries are left out: {e}",
                    self.snapshot,
                    String::from_utf8_lossy(path)
                ));
                return Arc::new(Vec::new());
            }
        };
        self.report.trees_read += 1;
        // Subdirectories whose result is not known yet are loaded a group at a time, in one
        // go (one round trip per group on S3).
        let mut ahead: HashMap<BlobId, Result<Tree>> = HashMap::new();
        let mut hits = Vec::new();
        for (i, node) in tree.nodes.iter().enumerate() {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            if self.m.matches(path, node) {
                hits.push((node.name.clone(), slim(node)));
            }
            if let Some(sub) = node.subtree {
                if !ahead.contains_key(&sub) && !self.memo.contains_key(&self.key(sub, path)) {
                    self.load_group(&tree.nodes[i..], path, len, &mut ahead);
                }
                let below = self.tree(sub, ahead.remove(&sub), path);
                for (rel, n) in below.iter() {
                    let mut p = node.name.clone();
                    p.push(b'/');
                    p.extend_from_slice(rel);
                    hits.push((p, n.clone()));
                }
            }
            path.truncate(len);
        }
        let hits = Arc::new(hits);
        self.memo.insert(key, hits.clone());
        hits
    }

    /// Loads the trees of the next directories among `nodes` (the first is the one the
    /// search is at) that are neither known nor loaded, up to a group.
    fn load_group(
        &self,
        nodes: &[Node],
        path: &[u8],
        parent_len: usize,
        ahead: &mut HashMap<BlobId, Result<Tree>>,
    ) {
        let parent = &path[..parent_len];
        let mut ids = Vec::new();
        for n in nodes {
            let Some(sub) = n.subtree else { continue };
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&n.name);
            if !ahead.contains_key(&sub)
                && !self.memo.contains_key(&self.key(sub, &p))
                && !ids.contains(&sub)
            {
                ids.push(sub);
                if ids.len() == TREES_AT_ONCE {
                    break;
                }
            }
        }
        for (id, t) in ids.iter().zip(self.repo.load_trees(self.index, &ids)) {
            ahead.insert(*id, t);
        }
    }
}

fn slim(n: &Node) -> Node {
    Node {
        content: Vec::new(),
        xattrs: Vec::new(),
        extents: None,
        ..n.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kind: NodeKind, size: u64, mtime: i64) -> Node {
        Node {
            name: name.into(),
            kind,
            size,
            mtime_sec: mtime,
            file_hash: (kind == NodeKind::File).then_some([size as u8; 32]),
            ..Node::default()
        }
    }

    #[test]
    fn criteria_combine_and_patterns_pick_name_or_path() {
        let m = |c: Criteria| Matcher::new(&c).unwrap();
        let f = node("app.log", NodeKind::File, 10, 100);
        let pat = |p: &[&str]| Criteria {
            patterns: p.iter().map(|s| s.to_string()).collect(),
            ..Criteria::default()
        };
        assert!(m(pat(&["*.log"])).matches(b"var/log/app.log", &f));
        assert!(!m(pat(&["var/*.log"])).matches(b"var/log/app.log", &f));
        assert!(m(pat(&["var/**/*.log"])).matches(b"var/log/app.log", &f));
        assert!(m(pat(&["/var/log/app.log"])).matches(b"var/log/app.log", &f));
        assert!(!m(pat(&["log"])).matches(b"var/log/app.log", &f));
        let hash = Criteria {
            blake3: Some([10; 32]),
            ..Criteria::default()
        };
        assert!(m(hash.clone()).matches(b"x", &f));
        assert!(!m(hash).matches(b"x", &node("d", NodeKind::Dir, 10, 100)));
        let sized = Criteria {
            min_size: Some(5),
            max_size: Some(10),
            newer: Some(100_000_000_000),
            ..pat(&["*.log"])
        };
        assert!(m(sized.clone()).matches(b"a.log", &f));
        assert!(!m(sized.clone()).matches(b"a.log", &node("a.log", NodeKind::File, 11, 100)));
        assert!(!m(sized).matches(b"a.log", &node("a.log", NodeKind::File, 10, 99)));
        assert!(Matcher::new(&Criteria::default()).is_err());
        assert!(Matcher::new(&pat(&["a[b"])).is_err());
    }
}
