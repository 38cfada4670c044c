//! The archives `import` reads: finding them, dating them and unpacking them safely.
//!
//! An archive (plain, gzip or zstd, told apart by its first bytes) is unpacked into a
//! private scratch directory with the tar crate's path checks (no entry lands outside
//! it), then backed up like any directory with the archive's time as the snapshot's time.
//! Unpacking first costs scratch space the size of the archive's content, and buys the
//! exact metadata handling of a normal backup (owners, modes, xattrs, hard links).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::error::{Error, Result};

/// One archive to import and the time its snapshot gets.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: PathBuf,
    pub time: OffsetDateTime,
    /// Where the time came from, for the report: "name", "mtime" or "--time".
    pub time_from: &'static str,
}

/// The archive's time: `explicit` if given, else a date in its file name, else its mtime.
pub fn archive_time(path: &Path, explicit: Option<OffsetDateTime>) -> Result<Archive> {
    let archive = |time, time_from| Archive {
        path: path.to_path_buf(),
        time,
        time_from,
    };
    if let Some(t) = explicit {
        return Ok(archive(t, "--time"));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if let Some(t) = name.as_deref().and_then(time_in_name) {
        return Ok(archive(t, "name"));
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read", path, e))?;
    let mtime = meta
        .modified()
        .map_err(|e| Error::io("cannot read the mtime of", path, e))?;
    Ok(archive(OffsetDateTime::from(mtime), "mtime"))
}

/// A UTC date or date-time written in a file name: `2024-01-15T02-00-00` (offen's default),
/// `2024-01-15_020000`, `20240115T020000`, `2024-01-15`, `20240115`, ... The first run of
/// digits (joined across single separators) that reads as a valid time wins.
pub fn time_in_name(name: &str) -> Option<OffsetDateTime> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // Gather digits from here, hopping over single separators between digit runs.
        let mut digits = String::new();
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                digits.push(b[j] as char);
                j += 1;
            } else if matches!(b[j], b'-' | b'_' | b'.' | b':' | b'T' | b' ')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
                && digits.len() < 14
            {
                j += 1;
            } else {
                break;
            }
        }
        if let Some(t) = digits_to_time(&digits) {
            return Some(t);
        }
        i += 1; // a later digit run may still start a date (`v2-20231231`)
    }
    None
}

fn digits_to_time(d: &str) -> Option<OffsetDateTime> {
    let num = |r: std::ops::Range<usize>| d.get(r)?.parse::<u32>().ok();
    if d.len() < 8 {
        return None;
    }
    let year = num(0..4)? as i32;
    if !(1970..=2200).contains(&year) {
        return None;
    }
    let month = time::Month::try_from(num(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(6..8)? as u8).ok()?;
    let (h, m, s) = match d.len() {
        8..=11 => (0, 0, 0),
        12 | 13 => (num(8..10)?, num(10..12)?, 0),
        _ => (num(8..10)?, num(10..12)?, num(12..14)?),
    };
    let t = time::Time::from_hms(h as u8, m as u8, s as u8).ok()?;
    Some(date.with_time(t).assume_utc())
}

/// A scratch directory removed when dropped, private to root (0700): unpacked archives
/// may hold setuid files and other people's data.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A new directory under `parent`.
    pub fn new(parent: &Path) -> Result<Scratch> {
        let dir = parent.join(format!(
            "volguard-import-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(false)
            .create(&dir)
            .map_err(|e| Error::io("cannot create the scratch directory", &dir, e))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// The archive's bytes, decompressed when its first bytes say gzip or zstd.
fn open_decoded(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| Error::io("cannot read", path, e))?;
    let f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let r = BufReader::with_capacity(1 << 20, f);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| Error::io("cannot start zstd on", path, e))?,
        ),
        _ => Box::new(r),
    })
}

/// Unpacks `archive` into `dest` with owners, modes, mtimes and xattrs, and returns the
/// directory to back up: `dest` with `strip` leading path components removed, which must
/// each be the only entry at their level (e.g. offen's `backup/<volume>/`).
pub fn unpack(archive: &Path, dest: &Path, strip: usize) -> Result<PathBuf> {
    let mut ar = tar::Archive::new(open_decoded(archive)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let unreadable = |e: std::io::Error| {
        Error::Other(format!(
            "{} is not a readable tar archive (plain, gzip or zstd): {e}; nothing was imported",
            archive.display()
        ))
    };
    // Directory mtimes are set last, deepest first: unpacking their entries changes them.
    let mut dirs = Vec::new();
    for entry in ar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.into_owned();
        let is_dir = entry.header().entry_type().is_dir();
        let mtime = entry.header().mtime().unwrap_or(0);
        // unpack_in refuses (returns false for) entries that would land outside `dest`.
        if !entry.unpack_in(dest).map_err(unreadable)? {
            tracing::warn!(
                "{}: entry {} points outside the archive's root; left out",
                archive.display(),
                path.display()
            );
            continue;
        }
        if is_dir {
            let rel: PathBuf = path
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            dirs.push((dest.join(rel), mtime));
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dir, mtime) in dirs {
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::io("cannot set the mtime of", &dir, e.into()))?;
    }
    let mut root = dest.to_path_buf();
    for level in 0..strip {
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map_err(|e| Error::io("cannot read", &root, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("cannot read", &root, e))?;
        match entries.as_slice() {
            [only] if only.file_type().is_ok_and(|t| t.is_dir()) => root = only.path(),
            _ => {
                return Err(Error::Usage(format!(
                    "--strip-components {strip}: {} has {} entries at level {} instead of one \
                     directory; list it with `tar tf` and choose a smaller number",
                    archive.display(),
                    entries.len(),
                    level + 1
                )));
            }
        }
    }
    Ok(root)
}

/// The archives of `dir` (names ending in .tar, .tar.gz, .tgz, .tar.zst, .tzst) with their
/// times, oldest first, so each import deduplicates against the one before.
pub fn archives_in(dir: &Path) -> Result<Vec<Archive>> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(|e| Error::io("cannot read", dir, e))? {
        let ent = ent.map_err(|e| Error::io("cannot read", dir, e))?;
        let name = ent.file_name().to_string_lossy().to_lowercase();
        let is_archive = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if is_archive && ent.file_type().is_ok_and(|t| t.is_file()) {
            out.push(archive_time(&ent.path(), None)?);
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_in_names() {
        let cases = [
            (
                "backup-2024-01-15T02-00-00.tar.gz",
                Some(datetime!(2024-01-15 02:00:00 UTC)),
            ),
            (
                "db_20240115_020304.tar.zst",
                Some(datetime!(2024-01-15 02:03:04 UTC)),
            ),
            (
                "pg-2024-01-15.tgz",
                Some(datetime!(2024-01-15 00:00:00 UTC)),
            ),
            ("v2-20231231.tar", Some(datetime!(2023-12-31 00:00:00 UTC))),
            ("x-2024-02-30.tar", None),
            ("volume.tar.gz", None),
            ("1234567.tar", None),
        ];
        for (name, want) in cases {
            assert_eq!(time_in_name(name), want, "{name}");
        }
    }
}
