//! Docker's rule for volume names, its default data root and where a volume lives under
//! it: the helpers the record parsers need, in a file of their own so the fuzz crate
//! (tests/fuzz) can compile the parsers without the rest of volguard.

use std::path::{Path, PathBuf};

/// Docker's data root when nothing else is configured.
pub const DEFAULT_ROOT: &str = "/var/lib/docker";

/// Docker's own rule for volume names; also guarantees a name is one safe path component.
pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn volume_dir(root: &Path, name: &str) -> PathBuf {
    root.join("volumes").join(name)
}
