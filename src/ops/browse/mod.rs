//! `ls`, `find` and `dump`: looking inside snapshots and taking single files back without
//! restoring a volume. A path inside a snapshot is resolved tree by tree; entries are
//! described in the shape of restic's `ls --json` nodes, so scripts read both alike.

pub mod dump;
pub mod find;
pub mod ls;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::tree::{Node, NodeKind};

/// The components of a path inside a snapshot (`/a/b/`, `a/./b` and `a/b` are the same);
/// `..` is refused, a snapshot has no parent of its root.
pub fn components(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(Error::Usage(format!(
            "path {path:?} holds `..`; give a path from the snapshot's root, like /etc/app.conf"
        )));
    }
    Ok(parts)
}

/// The node at `path` inside the snapshot whose root is `root`, and the path as shown
/// (`/` for the root, else `/a/b`). A missing path is a usage error (exit 2) naming the
/// deepest directory that exists.
pub fn lookup(
    repo: &Repository,
    index: &Index,
    root: &Node,
    path: &str,
    snapshot: &str,
) -> Result<(Node, String)> {
    let mut node = root.clone();
    let mut shown = String::new();
    for part in components(path)? {
        let Some(sub) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
            return Err(Error::Usage(format!(
                "{path:?} is not in snapshot {snapshot}: {} is not a directory",
                display_path(&shown)
            )));
        };
        let tree = repo.load_tree(index, &sub)?;
        let found = tree
            .nodes
            .binary_search_by(|n| n.name.as_slice().cmp(part.as_bytes()))
            .ok();
        let Some(i) = found else {
            return Err(Error::Usage(format!(
                "{path:?} is not in snapshot {snapshot}: {} holds no {part:?}; `volguard ls` \
                 lists what it holds",
                display_path(&shown)
            )));
        };
        node = tree.nodes[i].clone();
        shown.push('/');
        shown.push_str(part);
    }
    Ok((node, display_path(&shown)))
}

fn display_path(p: &str) -> String {
    if p.is_empty() { "/".into() } else { p.into() }
}

/// One entry as restic's `ls --json` prints a node, plus what volguard knows beyond it
/// (`link_target`, `hardlink`, `blake3`). volguard keeps no atime: `atime` repeats mtime.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// From the snapshot's root, starting with `/`.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Go's `os.FileMode` bits, as restic writes them (type bits high, permissions low).
    pub mode: u32,
    /// `drwxr-xr-x`, as `ls -l` shows the mode.
    pub permissions: String,
    pub mtime: String,
    pub atime: String,
    pub ctime: String,
    pub inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    pub struct_type: &'static str,
    pub message_type: &'static str,
}

impl NodeInfo {
    /// `path` is the entry's path from the snapshot's root (bytes, no leading `/`).
    pub fn new(path: &[u8], node: &Node) -> NodeInfo {
        let time = |sec: i64, nsec: u32| {
            time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(sec) * 1_000_000_000 + i128::from(nsec),
            )
            .map(crate::fmt::format_time)
            .unwrap_or_default()
        };
        let mtime = time(node.mtime_sec, node.mtime_nsec);
        NodeInfo {
            name: String::from_utf8_lossy(&node.name).into_owned(),
            kind: kind_name(node.kind),
            path: format!("/{}", String::from_utf8_lossy(path)),
            uid: node.uid,
            gid: node.gid,
            size: node.size,
            mode: go_file_mode(node),
            permissions: permissions(node),
            atime: mtime.clone(),
            mtime,
            ctime: time(node.ctime_sec, node.ctime_nsec),
            inode: node.inode,
            link_target: (node.kind == NodeKind::Symlink)
                .then(|| String::from_utf8_lossy(&node.link_target).into_owned()),
            blake3: node.file_hash.map(hex::encode),
            struct_type: "node",
            message_type: "node",
        }
    }
}

/// restic's names for node types.
pub fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::CharDevice => "chardev",
        NodeKind::BlockDevice => "dev",
        NodeKind::Socket => "socket",
    }
}

/// The mode as Go's `os.FileMode` (what restic's JSON carries): permission bits, then
/// setuid, setgid and sticky and the type as flags in the high bits.
fn go_file_mode(n: &Node) -> u32 {
    let mut m = n.mode & 0o777;
    let flags = [
        (0o4000, 1 << 23), // ModeSetuid
        (0o2000, 1 << 22), // ModeSetgid
        (0o1000, 1 << 20), // ModeSticky
    ];
    for (unix, go) in flags {
        if n.mode & unix != 0 {
            m |= go;
        }
    }
    m | match n.kind {
        NodeKind::File => 0,
        NodeKind::Dir => 1 << 31,
        NodeKind::Symlink => 1 << 27,
        NodeKind::Fifo => 1 << 25,
        NodeKind::Socket => 1 << 24,
        NodeKind::BlockDevice => 1 << 26,
        NodeKind::CharDevice => (1 << 26) | (1 << 21),
    }
}

/// `-rwsr-xr-x`, as `ls -l` writes the type and mode.
pub fn permissions(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::BlockDevice => 'b',
        NodeKind::CharDevice => 'c',
    };
    let m = n.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, on: char, off: char| match (m & x != 0, m & s != 0) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_ls_and_restic_write_them() {
        let n = |kind, mode| Node {
            kind,
            mode,
            ..Node::default()
        };
        assert_eq!(permissions(&n(NodeKind::File, 0o4755)), "-rwsr-xr-x");
        assert_eq!(permissions(&n(NodeKind::Dir, 0o1777)), "drwxrwxrwt");
        assert_eq!(permissions(&n(NodeKind::File, 0o2640)), "-rw-r-S---");
        assert_eq!(permissions(&n(NodeKind::Symlink, 0o777)), "lrwxrwxrwx");
        // restic: a directory 0755 is 2147484141, a setuid file 0755 is 8389101.
        assert_eq!(go_file_mode(&n(NodeKind::Dir, 0o755)), 2_147_484_141);
        assert_eq!(go_file_mode(&n(NodeKind::File, 0o4755)), 8_389_101);
        assert!(components("/a/../b").is_err());
        assert_eq!(components("/a//./b/").unwrap(), ["a", "b"]);
    }
}
