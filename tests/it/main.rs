//! The integration tests as ONE test binary (`cargo test --test it`), so the helpers in
//! `common` are compiled once and the suite links one executable instead of one per file.
//! Each module is one former tests/<name>.rs, unchanged but for `crate::common` paths; run
//! one with `cargo test --release --test it -- <name>::`. Its tests run on parallel threads
//! of this one process, so they only use uniquely named Docker objects, buckets and free
//! ports, and `common` serialises what must not overlap (`common::garage3_node_may_go_down`).
//! secrets.rs and watch.rs stay test binaries of their own (Cargo.toml says why).

mod common;

mod agent;
mod backup_policy;
mod bad_input;
mod browse;
mod bucket_audit;
mod cli_signals;
mod config_errors;
mod containerd_snapshotter;
mod core_crash;
mod core_docker;
mod core_errors;
mod core_incremental;
mod core_metadata;
mod corruption;
mod crash_campaign;
mod daemon_stopped;
mod drill;
mod env_smoke;
mod epochs;
mod exit_codes;
mod export;
mod forget;
mod hostile_repo;
mod hostile_volume;
mod import;
mod inventory;
mod layer_backup;
mod layer_diff;
mod metadata_read_loop;
mod mount;
mod object_lock;
mod packaging;
mod prune;
mod restore_all;
mod restore_layout;
mod s3_backend;
mod s3_fault_campaign;
mod s3_faults;
mod s3_multihost;
mod s3_servers;
mod treecmp_selftest;
mod volume_diff;
