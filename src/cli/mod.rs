//! The command line: the global flags, one file per command (its arguments, its handler
//! and its text rendering), and the dispatch from a parsed command to its handler. Names,
//! flags and exit codes follow docs/design.md, Conventions.

mod backup;
mod bucket;
mod check;
mod diff;
mod drill;
mod dump;
mod export;
mod find;
mod forget;
pub mod generate;
mod import;
mod init;
mod inventory;
mod layer_diff;
mod ls;
mod mount;
mod prune;
mod render;
mod repair;
mod restore;
mod snapshots;
mod status;
mod verify;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::context::{Ctx, Globals};
use crate::error::{Error, Result};

pub use backup::BackupArgs;
pub use bucket::{BucketArgs, BucketAuditArgs, BucketCommand, BucketPolicyArgs};
pub use check::CheckArgs;
pub use diff::DiffArgs;
pub use drill::DrillArgs;
pub use dump::DumpArgs;
pub use export::ExportArgs;
pub use find::FindArgs;
pub use forget::ForgetArgs;
pub use generate::{GenerateArgs, GenerateWhat};
pub use import::ImportArgs;
pub use init::InitArgs;
pub use inventory::InventoryArgs;
pub use layer_diff::LayerDiffArgs;
pub use ls::LsArgs;
pub use mount::MountArgs;
pub use prune::PruneArgs;
pub use repair::RepairArgs;
pub use restore::RestoreArgs;
pub use snapshots::SnapshotsArgs;
pub use status::{AgentArgs, StatusArgs};
pub use verify::VerifyArgs;
pub use watch::{EventsArgs, WatchArgs};

#[derive(Debug, Parser)]
#[command(
    name = "volguard",
    version,
    about = "Encrypted, deduplicated, incremental backups of Docker volumes"
)]
pub struct Cli {
    /// Configuration file; a missing file means defaults.
    #[arg(
        long,
        global = true,
        env = "VOLGUARD_CONFIG",
        default_value = "/etc/volguard/config.toml"
    )]
    pub config: PathBuf,
    /// Repository: a path, file:///path, or s3://bucket[/prefix]. Default: the embedded local
    /// repository /var/lib/volguard/repo.
    #[arg(long, global = true, env = "VOLGUARD_REPO")]
    pub repo: Option<String>,
    /// File holding the repository key (mode 0600). Passwords come from VOLGUARD_PASSWORD or
    /// VOLGUARD_PASSWORD_FILE, never from the command line.
    #[arg(long, global = true, env = "VOLGUARD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Docker's data root (default: data-root from /etc/docker/daemon.json, else /var/lib/docker).
    #[arg(long, global = true)]
    pub docker_root: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More diagnostics on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up volumes (or any directory) as snapshots.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot to a directory, into a Docker volume, or as a tar stream.
    Restore(RestoreArgs),
    /// Write a snapshot as a tar stream on stdout (`| docker run -i --rm -v VOL:/target
    /// busybox tar x -C /target` fills a volume with it).
    Export(ExportArgs),
    /// List the entries of a directory in a snapshot (`ls app:latest /etc --long`).
    Ls(LsArgs),
    /// Find which snapshots hold a file: by glob, content BLAKE3, size or mtime.
    Find(FindArgs),
    /// Write one file of a snapshot to stdout, or a directory as a tar stream.
    Dump(DumpArgs),
    /// Verify the repository's structure, and with --read-data every byte of it.
    Check(CheckArgs),
    /// Remove snapshots by keep rules (restic's --keep-* semantics), per host and volume.
    Forget(ForgetArgs),
    /// List Docker volumes and containers, and what mounts what (read from the data root).
    Inventory(InventoryArgs),
    /// A container's writable-layer changes against its image, as `docker diff` prints them
    /// (read from the overlay directories, without dockerd).
    LayerDiff(LayerDiffArgs),
    /// What changed in a volume: between two snapshots, or a snapshot and the live data.
    Diff(DiffArgs),
    /// Exit 1 when the live volume differs from its latest snapshot in a way its metadata
    /// cannot explain (content changed, size and mtime the same).
    Verify(VerifyArgs),
    /// Delete data no snapshot needs: mark it now, delete it in a later run after --grace.
    Prune(PruneArgs),
    /// Rebuild the index from the packs themselves and mark the snapshots that are damaged
    /// (good snapshots are left as they are; `snapshots` shows the mark).
    Repair(RepairArgs),
    /// Mount every snapshot as a read-only filesystem (FUSE): by-volume/VOLUME/TIME/,
    /// by-host/HOST/VOLUME/TIME/ and `latest` links; runs until unmounted.
    Mount(MountArgs),
    /// Turn tar archives (plain, .gz, .zst) made by other tools into snapshots of a volume.
    Import(ImportArgs),
    /// Restore test: restore the latest snapshots into a scratch directory and verify them.
    Drill(DrillArgs),
    /// Run as the agent (the systemd service): scheduled backups, maintenance, metrics.
    /// Reads the config file again on SIGHUP; SIGTERM stops it within agent.shutdown_timeout.
    Agent(AgentArgs),
    /// What the agent is doing: last and next run of every volume and job, and its health.
    Status(StatusArgs),
    /// Write the man pages or a shell's completion script (used by the package build).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// Watch volume data (foreground): every change with who made it; warn when neither
    /// Docker nor a container that mounts the volume did.
    Watch(WatchArgs),
    /// Show the watcher's event log (warnings, lost events), oldest first.
    Events(EventsArgs),
    /// The bucket's own rules (versioning, Object Lock, lifecycle) judged against this
    /// repository, and the lifecycle configuration that is safe for it.
    Bucket(BucketArgs),
}

/// Runs the parsed command line; returns the exit code (see `error::exit`).
pub fn run(cli: Cli) -> Result<i32> {
    // Generating docs needs no config: it runs in package builds, where none exists.
    if let Command::Generate(a) = &cli.command {
        return generate::run(a);
    }
    let globals = Globals {
        config: cli.config.clone(),
        repo: cli.repo.clone(),
        key_file: cli.key_file.clone(),
        docker_root: cli.docker_root.clone(),
        json: cli.json,
        quiet: cli.quiet,
    };
    match &cli.command {
        Command::Agent(_) => return crate::agent::run(&globals),
        Command::Status(_) => return status::run(cli.json),
        _ => {}
    }
    let ctx = Ctx::load(&globals)?;
    match cli.command {
        Command::Init(a) => init::run(&ctx, &a),
        Command::Backup(a) => backup::run(&ctx, &a),
        Command::Snapshots(a) => snapshots::run(&ctx, &a),
        Command::Restore(a) => restore::run(&ctx, &a),
        Command::Export(a) => export::run(&ctx, &a),
        Command::Ls(a) => ls::run(&ctx, &a),
        Command::Find(a) => find::run(&ctx, &a),
        Command::Dump(a) => dump::run(&ctx, &a),
        Command::Import(a) => import::run(&ctx, &a),
        Command::Mount(a) => mount::run(&ctx, &a),
        Command::Drill(a) => drill::run(&ctx, &a),
        Command::Check(a) => check::run(&ctx, &a),
        Command::Forget(a) => forget::run(&ctx, &a),
        Command::Inventory(a) => inventory::run(&ctx, &a),
        Command::Prune(a) => prune::run(&ctx, &a),
        Command::Repair(a) => repair::run(&ctx, &a),
        Command::LayerDiff(a) => layer_diff::run(&ctx, &a),
        Command::Diff(a) => diff::run(&ctx, &a),
        Command::Verify(a) => verify::run(&ctx, &a),
        Command::Watch(a) => watch::watch(
            &ctx.docker_root,
            &ctx.file.watch,
            ctx.json,
            &a,
            globals.child_args(),
        ),
        Command::Events(a) => watch::events(&ctx.file.watch, ctx.json, &a),
        Command::Bucket(a) => bucket::run(&ctx, &a),
        Command::Agent(_) | Command::Status(_) | Command::Generate(_) => {
            unreachable!("dispatched above")
        }
    }
}

/// The `--time` (or `--at`) of `command`, parsed.
fn time_arg(command: &str, t: Option<&str>) -> Result<Option<time::OffsetDateTime>> {
    t.map(|t| {
        crate::fmt::parse_time(t).map_err(|e| {
            Error::Usage(format!(
                "{command}: {e}; write it like 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00"
            ))
        })
    })
    .transpose()
}

/// A percentage above 0 and at most 100 (`10` or `10%`).
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{s:?} is not a percentage above 0 and at most 100")),
    }
}

/// `10`, `4K`, `1.5M`, `2G`, `1T` (also `KiB`, `MB`...: powers of 1024 all).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 64K, 1.5M or 2G"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1.5M"), Ok(1_572_864));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1 mb"), Ok(1 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
    }
}
