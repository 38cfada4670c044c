//! The snapshot's directory model: one `Tree` blob per directory, holding a `Node` per entry.
//!
//! A tree is serialized with postcard, stored as a blob like file content, and named by the
//! keyed hash of its bytes, so an unchanged directory costs nothing in the next snapshot.

use serde::{Deserialize, Serialize};

use crate::ids::BlobId;

/// What kind of filesystem object a node is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// One directory entry with everything needed to recreate it bit for bit. `Default` is an
/// empty regular file with mode 0 and no name (for code that builds nodes by hand).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The raw name bytes (not necessarily UTF-8), never containing `/` or NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Full `st_mode` permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// ctime and inode are not restored; they only decide whether the next backup may
    /// reuse this node's content without reading the file.
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub inode: u64,
    /// Logical size in bytes for files (including holes); 0 otherwise.
    pub size: u64,
    /// `rdev` for character and block devices.
    pub rdev: u64,
    /// Extended attributes (name, value), sorted by name. POSIX ACLs live here as
    /// `system.posix_acl_access` / `system.posix_acl_default`.
    pub xattrs: Vec<Xattr>,
    /// Symlink target bytes.
    #[serde(with = "serde_bytes")]
    pub link_target: Vec<u8>,
    /// Set when the file has more than one link: files in one snapshot sharing this value
    /// (the source inode) are restored as hard links of each other.
    pub hardlink: Option<u64>,
    /// Content chunks of a file, in order. For a sparse file they cover only the data
    /// extents, concatenated.
    pub content: Vec<BlobId>,
    /// Data extents `(offset, length)` of a sparse file; `None` for a dense file.
    pub extents: Option<Vec<(u64, u64)>>,
    /// Unkeyed BLAKE3 of the whole logical file content (holes read as zeros), so `b3sum`
    /// on a live file can be compared with the snapshot.
    pub file_hash: Option<[u8; 32]>,
    /// Subtree blob for directories.
    pub subtree: Option<BlobId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Largest number of entries accepted in one tree (a crafted tree cannot exhaust memory
/// beyond what its blob size already bounds, but this keeps the limit explicit).
pub const MAX_TREE_ENTRIES: usize = 16 * 1024 * 1024;

/// One directory's entries, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing a tree cannot fail")
    }

    /// Decodes and validates a tree from untrusted bytes: every name must be a plain
    /// single path component and names must be strictly increasing, so a restore can
    /// never be steered outside its target or onto an entry it created itself.
    pub fn decode(bytes: &[u8], what: &str) -> crate::error::Result<Tree> {
        let tree: Tree = postcard::from_bytes(bytes).map_err(|e| {
            crate::error::Error::corrupt(what, format!("tree does not decode: {e}"))
        })?;
        if tree.nodes.len() > MAX_TREE_ENTRIES {
            return Err(crate::error::Error::corrupt(what, "too many entries"));
        }
        let mut prev: Option<&[u8]> = None;
        for n in &tree.nodes {
            if let Err(why) = check_name(&n.name) {
                return Err(crate::error::Error::corrupt(
                    what,
                    format!("entry {:?}: {why}", String::from_utf8_lossy(&n.name)),
                ));
            }
            if prev.is_some_and(|p| p >= n.name.as_slice()) {
                return Err(crate::error::Error::corrupt(
                    what,
                    "entries are not strictly sorted (duplicate name?)",
                ));
            }
            if (n.kind == NodeKind::Dir) != n.subtree.is_some() {
                return Err(crate::error::Error::corrupt(
                    what,
                    "subtree present on a non-directory or missing on a directory",
                ));
            }
            prev = Some(&n.name);
        }
        Ok(tree)
    }
}

/// Why `name` cannot be a single path component, if it cannot.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("'.' or '..' as a name");
    }
    if name.contains(&b'/') {
        return Err("name contains '/'");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node {
            name: name.to_vec(),
            mode: 0o644,
            ..Node::default()
        }
    }

    #[test]
    fn hostile_names_and_order_are_refused() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0b", b"/etc"] {
            let t = Tree {
                nodes: vec![node(bad)],
            };
            assert!(Tree::decode(&t.encode(), "t").is_err(), "{bad:?} accepted");
        }
        let dup = Tree {
            nodes: vec![node(b"a"), node(b"a")],
        };
        assert!(Tree::decode(&dup.encode(), "t").is_err());
        let ok = Tree {
            nodes: vec![node(b"a"), node(b"b\xff")],
        };
        assert_eq!(Tree::decode(&ok.encode(), "t").unwrap(), ok);
        assert!(Tree::decode(&[0xff, 0xff, 0xff], "t").is_err());
    }
}
