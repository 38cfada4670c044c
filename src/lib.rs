//! volguard: encrypted, deduplicated, incremental backups of Docker volumes, read straight
//! from Docker's on-disk state. docs/design.md describes the layers; each module imports
//! only from the layers below it.

// Front ends.
pub mod agent;
pub mod cli;
// Resolved settings and the configuration file.
pub mod config;
pub mod context;
// Operations on a repository and the volume watcher.
pub mod ops;
pub mod watch;
// The Docker host and file metadata.
pub mod docker;
pub mod fsmeta;
// The repository and its storage.
pub mod backend;
pub mod repo;
// Shared leaves.
pub mod error;
pub mod fmt;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod output;
pub mod pathglob;
pub mod paths;
pub mod secrets;
