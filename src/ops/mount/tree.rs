//! The mount's inode table: the directories of the layout (rebuilt when snapshots come
//! and go, with stable inode numbers) and the snapshots' own entries, loaded one tree at
//! a time when a directory is first looked into. Files of one hard-link group share one
//! inode, whose link count is the group's size in that snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::ids::SnapshotId;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind};

use super::layout::Entry;

pub const ROOT: u64 = 1;

/// Child names and inodes of a loaded directory, sorted by name.
pub type Children = Arc<Vec<(Vec<u8>, u64)>>;

pub enum What {
    /// A directory of the layout (`by-volume/db`), named by its path.
    Layout { path: String, names: Vec<String> },
    /// A `latest` link.
    Latest { target: String },
    /// An entry of a snapshot; `root` is the inode of its snapshot's root directory.
    Node {
        root: u64,
        node: Arc<Node>,
        children: Option<Children>,
    },
}

pub struct Inode {
    pub parent: u64,
    pub name: Vec<u8>,
    pub what: What,
}

/// Every inode handed to the kernel so far. Inodes live as long as the mount: snapshot
/// content does not change, so an inode stays valid even when its snapshot is forgotten.
pub struct Table {
    inodes: Vec<Inode>,
    layout_ino: HashMap<String, u64>,
    /// (snapshot root inode, hard-link group) → the group's inode.
    links: HashMap<(u64, u64), u64>,
    /// Per snapshot root inode: the size of each hard-link group.
    pub link_counts: HashMap<u64, Arc<HashMap<u64, u32>>>,
    /// Newest snapshot time (seconds), the time the layout directories show.
    pub newest: i64,
}

impl Table {
    pub fn new() -> Table {
        Table {
            // Inode 0 does not exist; inode 1 is the root, filled by the first `apply`.
            inodes: Vec::new(),
            layout_ino: HashMap::new(),
            links: HashMap::new(),
            link_counts: HashMap::new(),
            newest: 0,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        ino.checked_sub(1).and_then(|i| self.inodes.get(i as usize))
    }

    fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        ino.checked_sub(1)
            .and_then(|i| self.inodes.get_mut(i as usize))
    }

    fn push(&mut self, inode: Inode) -> u64 {
        self.inodes.push(inode);
        self.inodes.len() as u64
    }

    /// Makes the layout directories what `layout` says; paths seen before keep their inode.
    pub fn apply(
        &mut self,
        layout: &BTreeMap<String, Entry>,
        snaps: &HashMap<SnapshotId, Snapshot>,
    ) {
        self.newest = snaps
            .values()
            .filter_map(|s| crate::fmt::parse_time(&s.time).ok())
            .map(|t| t.unix_timestamp())
            .max()
            .unwrap_or(0);
        // Parents before children: BTreeMap order puts "a" before "a/b".
        for (path, entry) in layout {
            let (parent_path, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None if path.is_empty() => (String::new(), String::new()),
                None => (String::new(), path.clone()),
            };
            let parent = if path.is_empty() {
                ROOT
            } else {
                self.layout_ino.get(&parent_path).copied().unwrap_or(ROOT)
            };
            let what = match entry {
                Entry::Dir(names) => What::Layout {
                    path: path.clone(),
                    names: names.clone(),
                },
                Entry::Latest(target) => What::Latest {
                    target: target.clone(),
                },
                Entry::Snapshot(id) => match self.layout_ino.get(path) {
                    // A snapshot's directory never changes: keep its loaded entries.
                    Some(_) => continue,
                    None => {
                        let Some(s) = snaps.get(id) else { continue };
                        What::Node {
                            root: 0,
                            node: Arc::new(s.root.clone()),
                            children: None,
                        }
                    }
                },
            };
            match self.layout_ino.get(path).copied() {
                Some(ino) => {
                    if let Some(i) = self.get_mut(ino) {
                        i.what = what;
                    }
                }
                None => {
                    let ino = self.push(Inode {
                        parent,
                        name: name.into_bytes(),
                        what,
                    });
                    if let Some(Inode {
                        what: What::Node { root, .. },
                        ..
                    }) = self.get_mut(ino)
                    {
                        *root = ino;
                    }
                    self.layout_ino.insert(path.clone(), ino);
                }
            }
        }
        // Layout directories that are gone list nothing.
        for (path, &ino) in &self.layout_ino {
            if !layout.contains_key(path)
                && let Some(Inode {
                    what: What::Layout { names, .. },
                    ..
                }) = self.inodes.get_mut(ino as usize - 1)
            {
                names.clear();
            }
        }
    }

    /// The inode of a layout path.
    pub fn layout_inode(&self, path: &str) -> Option<u64> {
        self.layout_ino.get(path).copied()
    }

    /// Gives the entries of a directory tree their inodes (hard-link groups one each).
    pub fn add_children(&mut self, dir: u64, root: u64, nodes: Vec<Node>) -> Children {
        if let Some(Inode {
            what: What::Node {
                children: Some(c), ..
            },
            ..
        }) = self.get(dir)
        {
            return c.clone();
        }
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            let name = node.name.clone();
            let group = node.hardlink.filter(|_| node.kind != NodeKind::Dir);
            if let Some(g) = group
                && let Some(&ino) = self.links.get(&(root, g))
            {
                out.push((name, ino));
                continue;
            }
            let ino = self.push(Inode {
                parent: dir,
                name: name.clone(),
                what: What::Node {
                    root,
                    node: Arc::new(node),
                    children: None,
                },
            });
            if let Some(g) = group {
                self.links.insert((root, g), ino);
            }
            out.push((name, ino));
        }
        let children: Children = Arc::new(out);
        if let Some(Inode {
            what: What::Node { children: c, .. },
            ..
        }) = self.get_mut(dir)
        {
            *c = Some(children.clone());
        }
        children
    }

    /// The path of an inode below the mountpoint, for messages.
    pub fn path_of(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(i) = self.get(ino) else { break };
            parts.push(String::from_utf8_lossy(&i.name).into_owned());
            ino = i.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}
