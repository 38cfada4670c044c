//! `export`: a snapshot as a tar stream, with PAX records for nanosecond times, xattrs,
//! POSIX ACLs and long or non-UTF-8 names.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{FileReader, Filter, RestoreReport, check_content, subtree_skipped, walk};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::{Node, NodeKind};

/// Writes the snapshot as a tar stream (PAX headers carry nanosecond times, xattrs and
/// long or non-UTF-8 names; hard links become link entries).
pub fn to_tar<W: Write>(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    out: W,
    filter: &Filter,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
    let problems = walk(repo, index, &snap.root, &mut |rel, node| {
        if filter.excluded(rel) {
            return Ok(false);
        }
        if node.kind != NodeKind::Dir && !filter.included(rel) {
            return Ok(false);
        }
        append_tar_entry(
            repo,
            index,
            &mut builder,
            rel,
            node,
            &mut links,
            &mut report,
        )
        .map_err(|e| Error::Other(format!("{}: {e}", String::from_utf8_lossy(rel))))?;
        Ok(true)
    })?;
    for (p, e) in problems {
        report.errors.push(subtree_skipped(&p, &e));
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::Other(format!("cannot finish the tar stream: {e}")))?;
    Ok(report)
}

fn append_tar_entry<W: Write>(
    repo: &Repository,
    index: &Index,
    b: &mut tar::Builder<W>,
    rel: &[u8],
    node: &Node,
    links: &mut HashMap<u64, Vec<u8>>,
    report: &mut RestoreReport,
) -> io::Result<()> {
    // Checked before any header (the PAX one included): a tar entry cannot be taken back
    // once begun, and a file left out must not leave its header to the next entry.
    let linked = node.hardlink.is_some_and(|g| links.contains_key(&g));
    if node.kind == NodeKind::File
        && !linked
        && let Err(e) = check_content(index, node)
    {
        report
            .errors
            .push(format!("{}: skipped: {e}", String::from_utf8_lossy(rel)));
        return Ok(());
    }
    let mut pax: Vec<(String, Vec<u8>)> = vec![(
        "mtime".into(),
        format!("{}.{:09}", node.mtime_sec, node.mtime_nsec).into_bytes(),
    )];
    for x in &node.xattrs {
        // GNU tar and star carry POSIX ACLs as text records, not as raw xattrs.
        let acl_key = match x.name.as_slice() {
            b"system.posix_acl_access" => Some("SCHILY.acl.access"),
            b"system.posix_acl_default" => Some("SCHILY.acl.default"),
            _ => None,
        };
        match acl_key.map(|k| (k, acl_to_text(&x.value))) {
            Some((k, Some(text))) => pax.push((k.to_string(), text.into_bytes())),
            _ => pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(&x.name)),
                x.value.clone(),
            )),
        }
    }
    append_pax(b, &pax, node.mtime_sec.max(0) as u64)?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(node.mode & 0o7777);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    h.set_mtime(node.mtime_sec.max(0) as u64);
    h.set_size(0);
    let path = Path::new(OsStr::from_bytes(rel));
    match node.kind {
        NodeKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            report.dirs += 1;
            b.append_data(&mut h, path, io::empty())
        }
        NodeKind::File => {
            if let Some(g) = node.hardlink {
                if let Some(first) = links.get(&g) {
                    h.set_entry_type(tar::EntryType::Link);
                    report.hardlinks += 1;
                    return b.append_link(&mut h, path, Path::new(OsStr::from_bytes(first)));
                }
                links.insert(g, rel.to_vec());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(node.size);
            report.files += 1;
            report.bytes += node.size;
            b.append_data(&mut h, path, FileReader::new(repo, index, node))
        }
        NodeKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            report.others += 1;
            b.append_link(
                &mut h,
                path,
                Path::new(OsStr::from_bytes(&node.link_target)),
            )
        }
        NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
            h.set_entry_type(match node.kind {
                NodeKind::Fifo => tar::EntryType::Fifo,
                NodeKind::CharDevice => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            if node.kind != NodeKind::Fifo {
                h.set_device_major(nix::sys::stat::major(node.rdev) as u32)?;
                h.set_device_minor(nix::sys::stat::minor(node.rdev) as u32)?;
            }
            report.others += 1;
            b.append_data(&mut h, path, io::empty())
        }
        // tar has no socket type; a socket is only meaningful to the process that bound it.
        NodeKind::Socket => Ok(()),
    }
}

/// Writes a POSIX.1-2001 extended header (`x`) with `records`. The tar crate's own writes
/// one with an empty name and mode 0, which busybox tar refuses ("invalid tar magic"), and
/// the export must unpack with `docker run -i busybox tar x`; GNU tar names these
/// `./PaxHeaders/<file>`, and readers ignore the name.
fn append_pax<W: Write>(
    b: &mut tar::Builder<W>,
    records: &[(String, Vec<u8>)],
    mtime: u64,
) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in records {
        // "LEN key=value\n", where LEN counts the whole record, its own digits included.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeaders/volguard")?;
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data.as_slice())
}

/// Converts a kernel `system.posix_acl_*` value (version 2: a u32 header, then entries of
/// u16 tag, u16 permissions, u32 id) to the text form `acl_from_text` reads. `None` when
/// the bytes are not a valid ACL, in which case the raw xattr is exported instead.
fn acl_to_text(value: &[u8]) -> Option<String> {
    const VERSION: u32 = 2;
    let header = value.get(..4)?;
    if u32::from_le_bytes(header.try_into().ok()?) != VERSION
        || !(value.len() - 4).is_multiple_of(8)
    {
        return None;
    }
    let mut out = Vec::new();
    for e in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(bit, c)| if perm & bit != 0 { c } else { '-' })
            .collect();
        out.push(match tag {
            0x01 => format!("user::{rwx}"),
            0x02 => format!("user:{id}:{rwx}"),
            0x04 => format!("group::{rwx}"),
            0x08 => format!("group:{id}:{rwx}"),
            0x10 => format!("mask::{rwx}"),
            0x20 => format!("other::{rwx}"),
            _ => return None,
        });
    }
    Some(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_xattr_becomes_text_and_garbage_does_not() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 7, 1234),
            (4, 4, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(
            acl_to_text(&v).unwrap(),
            "user::rw-,user:1234:rwx,group::r--,mask::rwx,other::r--"
        );
        assert_eq!(acl_to_text(&v[..7]), None);
        assert_eq!(acl_to_text(b"garbage!"), None);
    }

    #[test]
    fn pax_records_count_their_own_length_and_read_back() {
        let records: Vec<(String, Vec<u8>)> = vec![
            ("mtime".into(), b"1.000000000".to_vec()),
            // 9 + 3 + 1 digit: the length crosses from one digit to two.
            ("ab".into(), b"abcd".to_vec()),
            ("SCHILY.xattr.user.k".into(), vec![0u8, 1, 255]),
        ];
        let mut b = tar::Builder::new(Vec::new());
        append_pax(&mut b, &records, 7).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "f", io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();
        // Named, so busybox tar does not take it for the end of the archive.
        assert_eq!(&bytes[..19], b"PaxHeaders/volguard");
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut entry = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap(), Path::new("f"));
        let got: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(got, records);
    }
}
