//! volguard: encrypted, deduplicated, incremental backups of Docker volumes.

pub mod fsmeta;
pub mod ids;
pub mod tree;
