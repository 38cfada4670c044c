//! The synthetic volume the end-to-end bench backs up, and the change made to
//! it between the no-change backup and the incremental one.
//!
//! At scale 1.0 it holds what a typical stateful container's volume holds:
//! one 1 GiB database segment of 8 KiB pages (~2.7x compressible), ~50k small
//! text files (0.5–8 KiB) in a few hundred directories, and 8 x 100 MiB of
//! incompressible media. The change is the everyday one: 1 % of database
//! pages rewritten in place, 1 % of small files edited, one new media file.

use crate::common::{MIB, db, media};
use crate::text::{self, Kind};
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

const DB_FILE: &str = "pgdata/base/16384/16397";
const SMALL_FILES_SEED: u64 = 10;
const SMALL_EDITS_SEED: u64 = 11;
/// Media file `i` is generated from seed `MEDIA_SEED_BASE + i`.
const MEDIA_SEED_BASE: u64 = 20;
/// Share of small files edited by the change.
const EDIT_FRACTION: f64 = 0.01;
const SMALL_FILE_BYTES: std::ops::RangeInclusive<usize> = 512..=8192;
/// Files per directory at full scale: 50k files over ~300 directories.
const FILES_PER_DIR: usize = 160;
/// Leaf directories per top-level application directory.
const DIRS_PER_APP: usize = 16;

/// Sizes of the volume at a given scale.
pub struct Spec {
    pub db_pages: usize,
    pub small_files: usize,
    pub dirs: usize,
    pub media_files: usize,
    pub media_file_bytes: usize,
}

/// What the change did, for the report.
pub struct Change {
    pub pages_rewritten: usize,
    pub files_edited: usize,
    pub media_added_bytes: usize,
}

impl Spec {
    pub fn at_scale(scale: f64) -> Self {
        let small_files = ((50_000.0 * scale).round() as usize).max(10);
        Self {
            db_pages: db::pages_at_scale(scale),
            small_files,
            dirs: (small_files / FILES_PER_DIR).max(3),
            media_files: 8,
            media_file_bytes: ((100.0 * MIB * scale) as usize).max(4096),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{:.0} MiB database file ({} x 8 KiB pages), {} small text files \
             (0.5-8 KiB) in {} directories, {} x {:.0} MiB random media files",
            (self.db_pages * db::PAGE_SIZE) as f64 / MIB,
            self.db_pages,
            self.small_files,
            self.dirs,
            self.media_files,
            self.media_file_bytes as f64 / MIB,
        )
    }
}

/// Writes the whole volume under `root`, which must not exist yet.
pub fn generate(root: &Path, spec: &Spec) -> Result<()> {
    write_db(root, spec)?;
    write_small_files(root, spec)?;
    for index in 0..spec.media_files {
        write_media(root, index, spec)?;
    }
    Ok(())
}

/// Applies the change; deterministic, like the generation.
pub fn mutate(root: &Path, spec: &Spec) -> Result<Change> {
    let pages_rewritten = rewrite_db_pages(root, spec)?;
    let files_edited = edit_small_files(root, spec)?;
    // The new file takes the next free index, after the original media.
    write_media(root, spec.media_files, spec)?;
    Ok(Change {
        pages_rewritten,
        files_edited,
        media_added_bytes: spec.media_file_bytes,
    })
}

fn write_db(root: &Path, spec: &Spec) -> Result<()> {
    let path = root.join(DB_FILE);
    let bytes = db::generate(spec.db_pages, db::GENERATION_SEED);
    write_new(&path, &bytes)
}

/// Rewrites scattered pages in place, as a database engine does: same file,
/// same size, new bytes at page offsets.
fn rewrite_db_pages(root: &Path, spec: &Spec) -> Result<usize> {
    let path = root.join(DB_FILE);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let rewrites = db::scattered_rewrites(spec.db_pages, db::UPDATE_FRACTION, db::UPDATE_SEED);
    for rw in &rewrites {
        let offset = (rw.page_no * db::PAGE_SIZE) as u64;
        file.write_all_at(&rw.bytes, offset)
            .with_context(|| format!("rewriting page {} of {}", rw.page_no, path.display()))?;
    }
    Ok(rewrites.len())
}

fn write_small_files(root: &Path, spec: &Spec) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(SMALL_FILES_SEED);
    for index in 0..spec.small_files {
        let (path, kind) = small_file(root, spec, index);
        let len = rng.gen_range(SMALL_FILE_BYTES);
        write_new(&path, &text::body(kind, len, &mut rng))?;
    }
    Ok(())
}

fn edit_small_files(root: &Path, spec: &Spec) -> Result<usize> {
    let mut rng = StdRng::seed_from_u64(SMALL_EDITS_SEED);
    let wanted = ((spec.small_files as f64 * EDIT_FRACTION).round() as usize).max(1);
    let picked = rand::seq::index::sample(&mut rng, spec.small_files, wanted);
    for index in picked.iter() {
        let (path, kind) = small_file(root, spec, index);
        let old = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let new = text::edit(kind, &old, &mut rng);
        fs::write(&path, new).with_context(|| format!("editing {}", path.display()))?;
    }
    Ok(wanted)
}

/// Path and kind of small file `index`: files are dealt round-robin over
/// the leaf directories, which are grouped under application directories.
fn small_file(root: &Path, spec: &Spec, index: usize) -> (PathBuf, Kind) {
    let dir = index % spec.dirs;
    let kind = Kind::for_dir(dir);
    let path = root
        .join(format!("app-{:02}", dir / DIRS_PER_APP))
        .join(format!("{}-{dir:03}", kind.dir_prefix()))
        .join(format!(
            "{}-{index:06}.{}",
            kind.dir_prefix(),
            kind.extension()
        ));
    (path, kind)
}

/// Streams one media file to disk block by block (no 100 MiB buffer).
fn write_media(root: &Path, index: usize, spec: &Spec) -> Result<()> {
    let path = root.join("media").join(format!("clip-{index:02}.mp4"));
    let mut stream = media::MediaStream::new(MEDIA_SEED_BASE + index as u64);
    let mut file = create_new(&path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut left = spec.media_file_bytes;
    while left > 0 {
        let n = left.min(block.len());
        stream.fill(&mut block[..n]);
        file.write_all(&block[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n;
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    create_new(path)?
        .write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates a file and its parent directories; refuses to overwrite, so a
/// generation bug cannot silently make two "files" share one path.
fn create_new(path: &Path) -> Result<fs::File> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}
