//! volguard: encrypted, deduplicated, incremental backups of Docker volumes, read straight
//! from Docker's on-disk state. See DESIGN.md for the data flow; each module names what it owns.

pub mod backend;
pub mod backup;
pub mod bucket;
pub mod check;
pub mod chunk;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod crypto;
pub mod docker;
pub mod drill;
pub mod epochs;
pub mod error;
pub mod forget;
pub mod fsmeta;
pub mod ids;
pub mod import;
pub mod index;
pub mod inflight;
pub mod inventory;
pub mod layer_diff;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod tree;
pub mod volume_diff;
