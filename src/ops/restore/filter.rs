//! Which entries a restore or an export takes: the `--include` / `--exclude` globs and a
//! drill's exact sample of paths, matched against paths inside the snapshot.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Which entries to restore: `--include` / `--exclude` globs over paths inside the snapshot.
#[derive(Debug, Default)]
pub struct Filter {
    pub(super) include: Option<GlobSet>,
    pub(super) exclude: Option<GlobSet>,
    /// Exact paths of the entries to restore (a drill's sample), on top of the globs.
    paths: Option<std::collections::HashSet<Vec<u8>>>,
}

fn globset(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_start_matches('/');
        b.add(
            Glob::new(p)
                .map_err(|e| Error::Usage(format!("{flag} {p:?} is not a valid glob: {e}")))?,
        );
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Usage(format!("{flag}: {e}")))
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter> {
        Ok(Filter {
            include: globset(include, "--include")?,
            exclude: globset(exclude, "--exclude")?,
            paths: None,
        })
    }

    /// Restores exactly these paths (and the directories leading to them).
    pub fn only(paths: std::collections::HashSet<Vec<u8>>) -> Filter {
        Filter {
            paths: Some(paths),
            ..Filter::default()
        }
    }

    pub(super) fn excluded(&self, path: &[u8]) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|g| g.is_match(Path::new(OsStr::from_bytes(path))))
    }

    pub(super) fn included(&self, path: &[u8]) -> bool {
        self.include
            .as_ref()
            .is_none_or(|g| g.is_match(Path::new(OsStr::from_bytes(path))))
            && self.paths.as_ref().is_none_or(|p| p.contains(path))
    }
}
