//! The parsers under fuzz, compiled from volguard's own source files (see src/docker/mod.rs
//! here), so the fuzz build needs only their few dependencies.

pub mod docker;
