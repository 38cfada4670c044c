//! Synthetic volume data and small helpers shared by the benches.
//!
//! Both `core.rs` (end-to-end tool comparison) and `chunksize.rs` (chunker
//! parameter sweep) must look at *the same* database-like bytes, otherwise the
//! chunk size chosen by the sweep would be tuned to data the end-to-end bench
//! never sees. Everything here is deterministic: same seed, same bytes.

pub mod db;
pub mod media;

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Bytes in a mebibyte, for human-readable sizes in tables.
pub const MIB: f64 = 1024.0 * 1024.0;

/// The cargo target directory this bench binary was built into.
///
/// Bench binaries live in `<target>/release/deps/`, so walking up from our
/// own executable finds the right directory whether it came from
/// `CARGO_TARGET_DIR`, `--target-dir` or the default `./target`.
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .with_context(|| format!("{} is not inside <target>/<profile>/deps", exe.display()))
}
