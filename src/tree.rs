//! The snapshot's directory model: one `Tree` blob per directory, holding a `Node` per entry.
//!
//! A tree is serialized with postcard, stored as a blob like file content, and named by the
//! keyed hash of its bytes, so an unchanged directory costs nothing in the next snapshot.

use serde::{Deserialize, Serialize};

use crate::ids::BlobId;

/// What kind of filesystem object a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// One directory entry with everything needed to recreate it bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
