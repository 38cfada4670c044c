//! The repository's object formats: the crypto that seals every object, packs of blobs,
//! index files, trees and snapshots. Parsers here take untrusted bytes.

pub mod crypto;
pub mod index;
pub mod pack;
pub mod snapshot;
pub mod tree;
