//! The parsers under fuzz, compiled from volguard's own source files (see src/docker/mod.rs
//! here), so the fuzz build needs only their few dependencies: the Docker state readers,
//! the repository object formats (pack, index, tree, snapshot, with the crypto that seals
//! them), the fanotify record parser and the tar import.

pub mod docker;

#[path = "../../../src/repo/format/crypto.rs"]
pub mod crypto;
#[path = "../../../src/error.rs"]
pub mod error;
#[path = "../../../src/ids.rs"]
pub mod ids;
#[path = "../../../src/ops/import/archive.rs"]
pub mod import;
#[path = "../../../src/repo/format/index.rs"]
pub mod index;
#[path = "../../../src/repo/format/pack.rs"]
pub mod pack;
#[path = "../../../src/repo/format/snapshot.rs"]
pub mod snapshot;
#[path = "../../../src/repo/format/tree.rs"]
pub mod tree;

// Declared here rather than inside `mod watch { }`: a path attribute there is taken
// relative to a src/watch/ directory that this crate does not have.
#[path = "../../../src/watch/fanotify.rs"]
pub mod fanotify;
pub mod watch {
    pub use super::fanotify;
}

/// The module paths the compiled files name each other by (`crate::repo::format::pack`).
pub mod repo {
    pub mod format {
        pub use crate::{crypto, index, pack, snapshot, tree};
    }
}

/// The fixed key the targets seal their inputs with, so the parsers behind decryption are
/// reached: what an attacker holding the key (or a bug on the writing side) can feed them.
pub fn test_keys() -> crypto::Keys {
    crypto::Keys::from_master(&[0x5a; 32])
}
