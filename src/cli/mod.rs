//! Command-line types (clap derive only); names and flags follow docs/design.md, Conventions.

mod bucket;
pub mod generate;
pub mod handlers;
pub mod watch;

use crate::fmt::parse_grace;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ops::forget::{KeepCount, KeepDuration};

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

#[derive(Debug, Args)]
pub struct BucketArgs {
    #[command(subcommand)]
    pub command: BucketCommand,
}

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Say whether any bucket rule can destroy data that kept snapshots need, and exactly
    /// what to change. Exit 1 when one can.
    Audit(BucketAuditArgs),
    /// Print the lifecycle configuration that is safe for this repository; --apply
    /// installs it (other rules of the bucket are kept).
    Policy(BucketPolicyArgs),
}

#[derive(Debug, Args)]
pub struct BucketAuditArgs {
    /// How long snapshots must be kept at least (default: the repository's retention, if
    /// its mode has one); lifecycle rules shorter than this are flagged.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub retain_days: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BucketPolicyArgs {
    /// Install the configuration (PutBucketLifecycleConfiguration).
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events at or after this time: RFC 3339, or a duration back from now (30m, 24h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events of this volume.
    #[arg(long)]
    pub volume: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: GenerateWhat,
}

#[derive(Debug, Subcommand)]
pub enum GenerateWhat {
    /// Man pages: volguard.1 and one volguard-COMMAND.1 per command.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The completion script of one shell, named as that shell looks for it.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Volume to drill (repeatable; default: every volume with a snapshot from this host).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Restore only this share of the files, chosen at random (percent, e.g. 10).
    #[arg(long, default_value_t = 100.0, value_parser = parse_percent)]
    pub sample: f64,
    /// Where to restore (default: the temporary directory); emptied afterwards.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{s:?} is not a percentage above 0 and at most 100")),
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive to import (or --from-dir DIR).
    #[arg(required_unless_present = "from_dir", conflicts_with = "from_dir")]
    pub archive: Option<PathBuf>,
    /// Import every archive in DIR (.tar, .tar.gz, .tgz, .tar.zst, .tzst), oldest first.
    #[arg(long, value_name = "DIR")]
    pub from_dir: Option<PathBuf>,
    /// The volume the snapshots are filed under.
    #[arg(long)]
    pub volume: String,
    /// Snapshot time (RFC 3339) instead of the date in the archive's name, or its mtime.
    #[arg(long, value_name = "RFC3339", conflicts_with = "from_dir")]
    pub time: Option<String>,
    /// Leading path components to drop, like tar's (offen/docker-volume-backup: 2).
    #[arg(long, default_value_t = 0)]
    pub strip_components: usize,
    /// Where archives are unpacked before the backup (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Tag to attach to the snapshots (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Say what would be marked, repacked and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Time between marking a pack and deleting it (s, m, h, d units: 30m, 24h, 7d). Must
    /// be longer than any backup runs: a backup that reuses marked data and runs past half
    /// of it is refused and must be run again.
    #[arg(long, default_value = "24h", value_parser = parse_grace)]
    pub grace: std::time::Duration,
    /// Rewrite packs with more than this percentage of unused data.
    #[arg(long, default_value_t = crate::ops::prune::DEFAULT_MAX_UNUSED_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_unused: u8,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// How the repository coexists with bucket retention: `none`, `object-lock` (every
    /// object under S3 Object Lock, extended by each backup), or `epochs` (objects grouped
    /// by time epoch so a bucket lifecycle rule can expire them); the last two need
    /// --retain-days. Fixed for the repository's life.
    #[arg(long, default_value = "none", value_parser = ["none", "object-lock", "epochs"])]
    pub retention_mode: String,
    /// epochs mode: length of one epoch in days (each epoch's first backup uploads
    /// everything anew; the lifecycle rule expires objects after retention + epoch + 1 day).
    #[arg(long, value_name = "N", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(1..=366))]
    pub epoch_days: u64,
    /// Days every snapshot is kept at least (object-lock: its objects cannot be deleted
    /// before its time plus this).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub retain_days: Option<u64>,
    /// The retention in seconds instead of days. For tests that watch a retention expire;
    /// not for production use.
    #[arg(long, value_name = "N", hide = true, conflicts_with = "retain_days",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_seconds: Option<u64>,
    /// Object Lock mode: compliance (nobody can shorten it) or governance (principals with
    /// s3:BypassGovernanceRetention can).
    #[arg(long, default_value = "compliance", value_parser = ["compliance", "governance"])]
    pub lock_mode: String,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Docker volumes to back up.
    pub volumes: Vec<String>,
    /// Back up every Docker volume.
    #[arg(long, conflicts_with_all = ["volumes", "path"])]
    pub all: bool,
    /// Back up a container's writable layer (name, id or id prefix; repeatable) as snapshot
    /// `container:<name>`, whiteouts and opaque directories included.
    #[arg(long = "container", value_name = "NAME", conflicts_with = "path")]
    pub containers: Vec<String>,
    /// Back up the writable layer of every container (as `container:<name>` snapshots).
    #[arg(long, conflicts_with = "path")]
    pub all_writable_layers: bool,
    /// Back up any directory instead of a volume (needs --name).
    #[arg(long, requires = "name", conflicts_with = "volumes")]
    pub path: Option<PathBuf>,
    /// Snapshot name for --path.
    #[arg(long, requires = "path")]
    pub name: Option<String>,
    /// Tag to attach to the snapshots (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Record this time (RFC 3339, e.g. 2024-05-01T12:00:00Z) as the snapshot's time instead
    /// of now. For imports of older backups and for tests; stored in UTC.
    #[arg(long, value_name = "RFC3339")]
    pub time: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[arg(long)]
    pub volume: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Volume (or --name) whose snapshot to restore.
    #[arg(required_unless_present = "all")]
    pub volume: Option<String>,
    /// Recreate every Docker volume this host (or --host) backed up, with its labels,
    /// driver and options, and restore and verify each one's latest snapshot (or --at).
    #[arg(long, conflicts_with_all = ["volume", "target", "into_volume", "to_tar", "include", "exclude", "dry_run"])]
    pub all: bool,
    /// With --all: the host whose volumes to restore (default: this host's name).
    #[arg(long)]
    pub host: Option<String>,
    /// With --all: restore each volume as it was at this time (RFC 3339): its newest
    /// snapshot not newer than it.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Restore into this directory (must not exist or be empty).
    #[arg(long, group = "dest")]
    pub target: Option<PathBuf>,
    /// Restore into this Docker volume (created if missing), replacing its content at once.
    #[arg(long, group = "dest")]
    pub into_volume: Option<String>,
    /// Write a tar stream to this file, or `-` for stdout.
    #[arg(long, group = "dest")]
    pub to_tar: Option<String>,
    /// Only paths matching this glob (repeatable; paths are relative to the volume).
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip paths matching this glob (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Re-read every restored file and compare it with the snapshot's BLAKE3.
    #[arg(long)]
    pub verify: bool,
    /// Show what would be restored, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the snapshot's character and block device nodes (needs root). Without it
    /// they are skipped with a warning: a device node opens that device on this host.
    #[arg(long)]
    pub devices: bool,
    /// Restore into a volume even while a running container mounts it; with --all, also
    /// replace the content of volumes that exist and hold data.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Volume (or --name) whose snapshot to write.
    pub volume: String,
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Compress the tar stream with zstd (`zstd -d | tar x`, or `tar --zstd -x`).
    #[arg(long)]
    pub zstd: bool,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Say what would be written and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read, decrypt and re-hash every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Read only this share of the packs, chosen at random (percent, e.g. 5).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, conflicts_with = "read_data")]
    pub read_data_subset: Option<f64>,
}

/// Keep rules follow restic's `forget`; a snapshot matching any rule is kept. Counts take
/// a number, or -1 / `unlimited` for all.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_last: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest hours that have one (UTC).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_hourly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest days that have one (UTC).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_daily: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest ISO weeks (Monday to Sunday, UTC).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_weekly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest months that have one (UTC).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_monthly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest years that have one (UTC).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub keep_yearly: Option<KeepCount>,
    /// Keep every snapshot newer than the group's newest snapshot minus this duration
    /// (years, months, days, hours: e.g. 1y2m3d4h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<KeepDuration>,
    /// Keep snapshots carrying all of these comma-separated tags (repeatable: any set).
    #[arg(long, value_name = "TAG[,TAG...]")]
    pub keep_tag: Vec<String>,
    /// Only consider snapshots of this volume (or --name).
    #[arg(long)]
    pub volume: Option<String>,
    /// Only consider snapshots from this host.
    #[arg(long)]
    pub host: Option<String>,
    /// List every snapshot as kept or forgotten, with the rules that keep it; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Then run `prune` (with its defaults and --grace) on the repository.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: time between marking data and deleting it (see `prune --grace`).
    #[arg(long, default_value = "24h", value_parser = parse_grace, requires = "prune")]
    pub grace: std::time::Duration,
}

fn parse_count(s: &str) -> Result<KeepCount, String> {
    KeepCount::parse(s)
}

fn parse_duration(s: &str) -> Result<KeepDuration, String> {
    KeepDuration::parse(s)
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Also compute each volume's size and file count (walks every volume).
    #[arg(long)]
    pub sizes: bool,
}

#[derive(Debug, Args)]
pub struct LayerDiffArgs {
    /// Container name, full id, or a unique id prefix.
    pub container: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Docker volume (or the --name of a --path backup, compared with FROM/TO snapshots only).
    pub volume: String,
    /// Snapshot id (or unique prefix), `latest`, or `live` (the volume's _data now).
    #[arg(default_value = "latest")]
    pub from: String,
    /// Snapshot id (or unique prefix), `latest`, or `live`.
    #[arg(default_value = "live")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Docker volume whose live data is checked against its latest snapshot.
    pub volume: String,
}
