//! Reading key and password files: a secret file that others can read, or that another
//! user can replace, is refused before its bytes are used.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Reads a secret file, refusing one that others can read: a key readable by a group is
/// a key that has already leaked.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read", path, e))?;
    if let Some(why) = crate::secrets::secret_file_problem(&meta) {
        return Err(Error::Other(format!("{what} {} {why}", path.display())));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let trimmed = bytes.trim_ascii_end().to_vec();
    if trimmed.is_empty() {
        return Err(Error::Other(format!("{what} {} is empty", path.display())));
    }
    Ok(trimmed)
}

/// Why a secret file must not be used, or None. Readable by group or others means it may
/// already have leaked; owned by another user (not root) means that user can swap it.
pub fn secret_file_problem(meta: &std::fs::Metadata) -> Option<String> {
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() {
        return Some("is not a regular file".into());
    }
    if mode & 0o077 != 0 {
        return Some(format!(
            "is readable by group or others (mode {mode:o}); run `chmod 600` on it"
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "is owned by uid {}, neither root nor this user ({me}), who could replace it; \
             run `chown {me}` on it",
            meta.uid()
        ));
    }
    None
}
