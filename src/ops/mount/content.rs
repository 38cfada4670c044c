//! Where a byte of a mounted file comes from: the logical offsets of a file map to its
//! data extents (holes between them read as zeros and are never fetched), the extents'
//! bytes to the file's blobs, so a read fetches only the blobs that cover its range.

use std::sync::Arc;

use crate::error::Result;
use crate::ids::BlobId;
use crate::ops::restore::check_content;
use crate::repo::format::index::Index;
use crate::repo::format::tree::Node;

/// A file's extents and blobs with their offsets, made once when the file is opened.
#[derive(Debug)]
pub struct FileLayout {
    pub size: u64,
    /// (logical offset, length, offset in the concatenated data) of each data extent.
    extents: Vec<(u64, u64, u64)>,
    pub blobs: Vec<BlobId>,
    /// Offset of each blob in the concatenated data, and the total at the end.
    starts: Vec<u64>,
}

/// One piece of a read: `len` bytes at `out` in the caller's buffer come from the data
/// bytes `data..data+len` (blobs `first..=last`).
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    pub out: usize,
    pub data: u64,
    pub len: usize,
}

impl FileLayout {
    /// Checks the node's claims against the index (as restore does) and lays it out.
    pub fn new(index: &Index, node: &Node) -> Result<FileLayout> {
        check_content(index, node)?;
        let mut starts = Vec::with_capacity(node.content.len() + 1);
        let mut at = 0u64;
        for id in &node.content {
            starts.push(at);
            // check_content found every blob in the index.
            at += index.get(id).map_or(0, |(_, l)| u64::from(l.raw_length));
        }
        starts.push(at);
        let mut extents = Vec::new();
        let mut data = 0u64;
        for (offset, len) in node.extents.clone().unwrap_or_else(|| vec![(0, node.size)]) {
            extents.push((offset, len, data));
            data += len;
        }
        Ok(FileLayout {
            size: node.size,
            extents,
            blobs: node.content.clone(),
            starts,
        })
    }

    /// Bytes stored for the file (its extents): what `st_blocks` counts.
    pub fn stored(node: &Node) -> u64 {
        match &node.extents {
            Some(e) => e.iter().map(|&(_, l)| l).sum(),
            None => node.size,
        }
    }

    /// The data pieces of the logical range `offset..offset+len` (clipped to the size);
    /// what lies between them is hole. Returns the pieces and the clipped length.
    pub fn pieces(&self, offset: u64, len: u64) -> (Vec<Piece>, usize) {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return (Vec::new(), 0);
        }
        let first = self.extents.partition_point(|&(o, l, _)| o + l <= offset);
        let mut out = Vec::new();
        for &(o, l, d) in &self.extents[first..] {
            if o >= end {
                break;
            }
            let (a, b) = (o.max(offset), (o + l).min(end));
            if a < b {
                out.push(Piece {
                    out: (a - offset) as usize,
                    data: d + (a - o),
                    len: (b - a) as usize,
                });
            }
        }
        (out, (end - offset) as usize)
    }

    /// The blobs `first..last` (exclusive) holding the data bytes `data..data+len`.
    pub fn blob_span(&self, data: u64, len: usize) -> std::ops::Range<usize> {
        let n = self.blobs.len();
        let first = self.starts[..n]
            .partition_point(|&s| s <= data)
            .saturating_sub(1);
        let end = data + len as u64;
        let last = self.starts[..n].partition_point(|&s| s < end);
        first..last.max(first)
    }

    /// Where blob `i` starts in the data and how long it is.
    pub fn blob_range(&self, i: usize) -> (u64, u64) {
        (self.starts[i], self.starts[i + 1] - self.starts[i])
    }

    /// SEEK_DATA / SEEK_HOLE from `offset`: None past the end (ENXIO).
    pub fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let at = self
            .extents
            .iter()
            .find(|&&(o, l, _)| l > 0 && o + l > offset);
        Some(match (data, at) {
            (true, Some(&(o, _, _))) => o.max(offset),
            (true, None) => return None,
            (false, Some(&(o, l, _))) if o <= offset => {
                // The next hole is after this extent and any that follow it at once.
                let mut end = o + l;
                for &(o2, l2, _) in &self.extents {
                    if o2 == end {
                        end += l2;
                    }
                }
                end.min(self.size)
            }
            (false, _) => offset,
        })
    }
}

/// Copies the data bytes `data..data+out.len()` out of blobs `span` (given in order).
pub fn copy_from_blobs(
    layout: &FileLayout,
    span: std::ops::Range<usize>,
    blobs: &[Arc<Vec<u8>>],
    data: u64,
    out: &mut [u8],
) {
    let end = data + out.len() as u64;
    for (i, blob) in span.zip(blobs) {
        let (start, len) = layout.blob_range(i);
        let (a, b) = (start.max(data), (start + len).min(end));
        if a >= b {
            continue;
        }
        let src = &blob[(a - start) as usize..(b - start) as usize];
        out[(a - data) as usize..(b - data) as usize].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PackId;
    use crate::repo::format::pack::BlobKind;
    use crate::repo::format::pack::PackEntry;

    fn layout(sizes: &[u32], extents: Option<Vec<(u64, u64)>>, size: u64) -> FileLayout {
        let mut index = Index::default();
        let ids: Vec<BlobId> = (0..sizes.len())
            .map(|i| BlobId([i as u8 + 1; 32]))
            .collect();
        let entries: Vec<PackEntry> = ids
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(i, (id, &n))| PackEntry {
                id: *id,
                kind: BlobKind::Data,
                offset: i as u32 * 1000,
                length: n + 40,
                raw_length: n,
            })
            .collect();
        index.add_pack(PackId([9; 32]), 1 << 20, &entries);
        let node = Node {
            size,
            content: ids,
            extents,
            ..Node::default()
        };
        FileLayout::new(&index, &node).unwrap()
    }

    #[test]
    fn a_range_maps_to_the_blobs_that_cover_it_only() {
        let l = layout(&[100, 100, 100], None, 300);
        let (p, n) = l.pieces(150, 100);
        assert_eq!(n, 100);
        assert_eq!(
            p,
            vec![Piece {
                out: 0,
                data: 150,
                len: 100
            }]
        );
        assert_eq!(l.blob_span(150, 100), 1..3);
        assert_eq!(l.blob_span(0, 100), 0..1);
        assert_eq!(l.blob_span(299, 1), 2..3);
        assert_eq!(l.pieces(290, 100).1, 10, "clipped at the size");
        assert_eq!(l.pieces(300, 10).1, 0);
    }

    #[test]
    fn holes_are_not_pieces_and_seek_finds_data_and_holes() {
        // Data at 1000..1150 and 5000..5150 of a 8000-byte file.
        let l = layout(&[100, 200], Some(vec![(1000, 150), (5000, 150)]), 8000);
        let (p, n) = l.pieces(0, 8000);
        assert_eq!(n, 8000);
        assert_eq!(
            p,
            vec![
                Piece {
                    out: 1000,
                    data: 0,
                    len: 150
                },
                Piece {
                    out: 5000,
                    data: 150,
                    len: 150
                }
            ]
        );
        assert_eq!(l.blob_span(150, 150), 1..2);
        assert_eq!(l.blob_span(0, 150), 0..2);
        assert_eq!(l.seek(0, true), Some(1000));
        assert_eq!(l.seek(1100, true), Some(1100));
        assert_eq!(l.seek(1100, false), Some(1150));
        assert_eq!(l.seek(2000, false), Some(2000));
        assert_eq!(l.seek(5200, true), None);
        assert_eq!(l.seek(9000, false), None);
    }

    #[test]
    fn a_node_claiming_more_than_its_blobs_hold_is_refused() {
        let mut index = Index::default();
        index.add_pack(PackId([9; 32]), 1 << 20, &[]);
        let node = Node {
            size: 1 << 40,
            content: vec![BlobId([1; 32])],
            ..Node::default()
        };
        assert!(FileLayout::new(&index, &node).is_err());
    }
}
