//! What a backup leaves out: globs from `--exclude` and `--exclude-file`, from the volume's
//! own `.volguardignore` and from `volguard.exclude` labels; files larger than
//! `--exclude-larger-than`; and, with `--exclude-caches`, directories tagged as caches by a
//! CACHEDIR.TAG file (<https://bford.info/cachedir/>).
//!
//! The run's own rules are checked before anything is read, and a bad one stops the run
//! (exit 2). A bad glob in a label or an ignore file belongs to whoever wrote the volume or
//! the container: it is a soft error of that volume's backup, and the other patterns apply.

use std::fs::Metadata;
use std::io::Read as _;
use std::path::Path;

use crate::docker::labels::EXCLUDE as EXCLUDE_LABEL;
use crate::error::{Error, Result};
use crate::pathglob::{Builder, PathGlobs};

/// The ignore file a volume may carry at its root, one glob per line.
pub const IGNORE_FILE: &str = ".volguardignore";
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
/// An ignore file larger than this is not a list of patterns anyone wrote by hand.
const MAX_IGNORE_FILE: u64 = 1 << 20;

/// The excludes one run applies to every source, as flags or config give them.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Globs (see `crate::pathglob`): `--exclude`, and the lines of `--exclude-file`.
    pub globs: Vec<String>,
    /// Regular files larger than this many bytes are left out.
    pub larger_than: Option<u64>,
    /// Directories holding a valid CACHEDIR.TAG are left out, tag included.
    pub caches: bool,
}

/// Fails on the first of `globs` that is not a glob, naming it and `flag` (where it came
/// from): a run's own excludes are checked before anything is read.
pub fn check_globs(globs: &[String], flag: &str) -> Result<()> {
    let mut b = Builder::default();
    for g in globs {
        add(&mut b, g)
            .map_err(|e| Error::Usage(format!("{flag} {g:?} is not a valid glob: {e}")))?;
    }
    Ok(())
}

/// Adds one exclude glob. A leading `!` would mean "include again" in gitignore; volguard
/// does not re-include, and silently excluding a file named `!x` instead would surprise.
fn add(b: &mut Builder, glob: &str) -> std::result::Result<(), String> {
    if glob.starts_with('!') {
        return Err("re-including with `!` is not supported; narrow the other patterns".into());
    }
    b.add(glob)
}

/// The patterns of an exclude or ignore file: one per line, blank lines and lines starting
/// with `#` skipped, surrounding white space trimmed.
pub fn patterns_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Reads `--exclude-file FILE`.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("cannot read the exclude file", path, e))?;
    Ok(patterns_of(&text))
}

/// The globs of one label value: comma-separated, except inside `{...}` alternatives.
pub fn label_patterns(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in value.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The compiled excludes of one source.
#[derive(Debug, Default)]
pub(super) struct Exclude {
    globs: PathGlobs,
    larger_than: Option<u64>,
    caches: bool,
}

impl Exclude {
    /// The run's rules plus the source's own: `labels` as (where it was set, value), and
    /// the ignore file at `root`. Returns the problems to report as soft errors.
    pub(super) fn for_source(
        rules: &Rules,
        root: &Path,
        labels: &[(String, String)],
    ) -> (Exclude, Vec<String>) {
        let mut problems = Vec::new();
        let mut b = Builder::default();
        let mut take = |g: &str, origin: &dyn Fn() -> String| {
            if let Err(e) = add(&mut b, g) {
                problems.push(format!(
                    "{}: {g:?} is not a valid glob ({e}); that pattern is ignored, the \
                     others apply: fix it there",
                    origin()
                ));
            }
        };
        for g in &rules.globs {
            take(g, &|| "--exclude".into());
        }
        for (origin, value) in labels {
            for g in label_patterns(value) {
                take(&g, &|| format!("{origin} label {EXCLUDE_LABEL}"));
            }
        }
        let ignore = root.join(IGNORE_FILE);
        match read_ignore_file(&ignore) {
            Ok(Some(text)) => {
                for g in patterns_of(&text) {
                    take(&g, &|| ignore.display().to_string());
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!(
                "{}: cannot read ({e}); no pattern of it applies: fix or remove it",
                ignore.display()
            )),
        }
        let globs = b.build().unwrap_or_else(|e| {
            problems.push(format!("excludes: {e}; no glob applies"));
            PathGlobs::default()
        });
        let exclude = Exclude {
            globs,
            larger_than: rules.larger_than,
            caches: rules.caches,
        };
        (exclude, problems)
    }

    /// Whether the entry at `path` (`rel` below the source's root, `name` its last part)
    /// is left out. A directory that is left out is left out with everything below it.
    pub(super) fn excludes(&self, rel: &[u8], name: &[u8], path: &Path, meta: &Metadata) -> bool {
        self.globs.matches(rel, name)
            || (meta.is_file() && self.larger_than.is_some_and(|max| meta.len() > max))
            || (self.caches && meta.is_dir() && is_cache_dir(path))
    }
}

/// The ignore file's text, if there is a regular file there. A symlink is not followed: a
/// volume's content must not make the backup read files outside it.
fn read_ignore_file(path: &Path) -> std::io::Result<Option<String>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_IGNORE_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_IGNORE_FILE} bytes"
        )));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{e} (it must be UTF-8 text)")))
}

/// A directory is a cache when it holds a regular file CACHEDIR.TAG starting with the
/// signature the specification fixes (any other CACHEDIR.TAG is an ordinary file).
fn is_cache_dir(dir: &Path) -> bool {
    let tag = dir.join(CACHEDIR_TAG);
    if !std::fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    std::fs::File::open(&tag)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_split_on_commas_outside_braces() {
        assert_eq!(label_patterns("*.tmp, cache/**"), ["*.tmp", "cache/**"]);
        assert_eq!(label_patterns("*.{log,tmp},x,"), ["*.{log,tmp}", "x"]);
        assert!(label_patterns(" , ").is_empty());
    }

    #[test]
    fn pattern_files_skip_comments_and_blank_lines() {
        assert_eq!(
            patterns_of("# cache\n\n  *.tmp  \nlogs/**\n"),
            ["*.tmp", "logs/**"]
        );
    }

    #[test]
    fn bad_run_globs_are_usage_errors_naming_the_flag() {
        let e = check_globs(&["ok".into(), "a[".into()], "--exclude").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert!(e.to_string().contains("--exclude \"a[\""), "{e}");
        assert!(check_globs(&["!keep".into()], "--exclude").is_err());
    }

    #[test]
    fn a_bad_label_glob_is_a_problem_and_the_rest_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "*.bak\nb[\n").unwrap();
        let labels = vec![("volume v".to_string(), "*.tmp,x[".to_string())];
        let (ex, problems) = Exclude::for_source(&Rules::default(), dir.path(), &labels);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("volume v label volguard.exclude"),
            "{problems:?}"
        );
        assert!(problems[1].contains(IGNORE_FILE), "{problems:?}");
        let meta = std::fs::metadata(dir.path()).unwrap();
        for (rel, hit) in [("a.tmp", true), ("d/a.bak", true), ("a.txt", false)] {
            let name = rel.rsplit('/').next().unwrap();
            let got = ex.excludes(rel.as_bytes(), name.as_bytes(), dir.path(), &meta);
            assert_eq!(got, hit, "{rel}");
        }
    }

    #[test]
    fn only_a_signed_cachedir_tag_marks_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let tag = dir.path().join(CACHEDIR_TAG);
        std::fs::write(&tag, b"not a signature, just a file named like one").unwrap();
        assert!(!is_cache_dir(dir.path()));
        std::fs::write(&tag, [CACHEDIR_SIGNATURE, b"\n# made by a tool\n"].concat()).unwrap();
        assert!(is_cache_dir(dir.path()));
    }
}
