//! Globs over paths inside a volume or snapshot, one rule for every command that takes them
//! (`find`, `backup --exclude`): a pattern with a `/` matches the whole path from the root,
//! one without matches an entry's name at any depth. `*` never crosses a `/`; `**` does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Patterns added one at a time, so a caller can say which one is bad and keep the rest.
pub struct Builder {
    names: GlobSetBuilder,
    paths: GlobSetBuilder,
    any_name: bool,
    any_path: bool,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            names: GlobSetBuilder::new(),
            paths: GlobSetBuilder::new(),
            any_name: false,
            any_path: false,
        }
    }
}

impl Builder {
    /// Adds one pattern; the error says why it is not a glob.
    pub fn add(&mut self, pattern: &str) -> Result<(), String> {
        let glob = GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| e.kind().to_string())?;
        if pattern.contains('/') {
            self.paths.add(glob);
            self.any_path = true;
        } else {
            self.names.add(glob);
            self.any_name = true;
        }
        Ok(())
    }

    pub fn build(self) -> Result<PathGlobs, String> {
        let build = |b: GlobSetBuilder, any: bool| {
            any.then(|| b.build())
                .transpose()
                .map_err(|e| e.to_string())
        };
        Ok(PathGlobs {
            names: build(self.names, self.any_name)?,
            paths: build(self.paths, self.any_path)?,
        })
    }
}

/// Compiled patterns; empty matches nothing.
#[derive(Debug, Default, Clone)]
pub struct PathGlobs {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
}

impl PathGlobs {
    pub fn is_empty(&self) -> bool {
        self.names.is_none() && self.paths.is_none()
    }

    /// Whether a match may depend on more than an entry's own name (results of a subtree
    /// then depend on where it sits).
    pub fn has_path_patterns(&self) -> bool {
        self.paths.is_some()
    }

    /// `path` is relative to the root, without a leading `/`; `name` is its last component.
    pub fn matches(&self, path: &[u8], name: &[u8]) -> bool {
        let m = |g: &Option<GlobSet>, s: &[u8]| {
            g.as_ref()
                .is_some_and(|g| g.is_match(Path::new(OsStr::from_bytes(s))))
        };
        m(&self.names, name) || m(&self.paths, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(p: &[&str]) -> PathGlobs {
        let mut b = Builder::default();
        for p in p {
            b.add(p).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_root() {
        let g = globs(&["*.log", "/cache/tmp", "data/**/x"]);
        assert!(g.matches(b"a/b/c.log", b"c.log"));
        assert!(g.matches(b"cache/tmp", b"tmp"));
        assert!(!g.matches(b"other/cache/tmp", b"tmp"));
        assert!(g.matches(b"data/1/2/x", b"x"));
        assert!(!g.matches(b"a/b.txt", b"b.txt"));
        assert!(!globs(&["cache/*"]).matches(b"cache/a/b", b"b"));
        assert!(PathGlobs::default().is_empty());
        assert!(!PathGlobs::default().matches(b"a", b"a"));
    }

    #[test]
    fn a_bad_pattern_says_why() {
        let err = Builder::default().add("a[").unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }
}
