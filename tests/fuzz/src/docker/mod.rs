//! volguard's `src/docker` parsers, included by path: the same files the agent runs, with
//! the two helpers they take from their parent module (`names.rs`). The rest of
//! `src/docker/mod.rs` reads files and talks to dockerd, which fuzzing does not need.

#[path = "../../../../src/docker/bolt.rs"]
pub mod bolt;
#[path = "../../../../src/docker/containers.rs"]
pub mod containers;
#[path = "../../../../src/docker/layers.rs"]
pub mod layers;
#[path = "../../../../src/docker/names.rs"]
mod names;
#[path = "../../../../src/docker/volumes.rs"]
pub mod volumes;

pub use names::{DEFAULT_ROOT, valid_volume_name, volume_dir};
