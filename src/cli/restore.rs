//! `volguard restore`: one snapshot to a directory, a Docker volume or a tar stream, or
//! with `--all` every volume of a host, recreated.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln, progress};
use super::time_arg;
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::fmt::human_bytes;
use crate::ops::prune::load_index_for_read;
use crate::ops::restore::{self, Filter, RestoreOptions, RestoreReport, host};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// VOLUME[:SNAPSHOT]: the volume (or --name) whose snapshot to restore, and which one
    /// (an id, a unique prefix, `latest`, or @TIME: @2026-12-01, @2026-12-01T10:00, @3d).
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
    /// Snapshot id (or a unique prefix), `latest` (the default), or @TIME; the same as
    /// VOLUME:SNAPSHOT.
    #[arg(long)]
    pub snapshot: Option<String>,
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

pub(super) fn run(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    if a.all {
        return restore_all(ctx, a);
    }
    if a.host.is_some() || a.at.is_some() {
        return Err(Error::Usage(
            "--host and --at choose what restore --all restores; for one volume pick a snapshot with --snapshot".into(),
        ));
    }
    let filter = Filter::new(&a.include, &a.exclude)?;
    if a.target.is_none() && a.into_volume.is_none() && a.to_tar.is_none() {
        return Err(Error::Usage(
            "say where to restore: --target DIR, --into-volume NAME or --to-tar FILE|-".into(),
        ));
    }
    let repo = ctx.open()?;
    // The snapshot first: in epochs mode finding it focuses reads on its epoch.
    let spec = a.volume.as_deref().unwrap_or_default();
    let (sid, snap) = repo.find_spec(spec, a.snapshot.as_deref())?;
    let index = load_index_for_read(&repo)?;
    tracing::info!(
        "restoring snapshot {} of {} from {}",
        sid.short(),
        snap.volume,
        snap.time
    );
    let (destination, report) = if let Some(t) = &a.to_tar {
        let report = if t == "-" {
            restore::to_tar(&repo, &index, &snap, std::io::stdout().lock(), &filter)?
        } else {
            let f = std::fs::File::create(t).map_err(|e| Error::io("cannot create", t, e))?;
            restore::to_tar(&repo, &index, &snap, std::io::BufWriter::new(f), &filter)?
        };
        (t.clone(), report)
    } else {
        let opts = RestoreOptions {
            filter,
            verify: a.verify,
            dry_run: a.dry_run,
            devices: a.devices,
            progress: None,
        };
        if let Some(target) = &a.target {
            let report = restore::to_dir(&repo, &index, &snap, target, &opts)?;
            (target.display().to_string(), report)
        } else {
            let volume = a.into_volume.as_deref().unwrap_or_default();
            let report = host::into_volume(
                &repo,
                &index,
                &snap,
                &ctx.docker_root,
                volume,
                &opts,
                a.force,
            )?;
            (format!("volume {volume}"), report)
        }
    };
    if !ctx.json {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
    }
    let clean = report.errors.is_empty();
    let restored = Restored {
        snapshot_id: sid.to_hex(),
        // A tar stream on stdout is the output; nothing may be written after it.
        summary: a.to_tar.as_deref() != Some("-"),
        destination,
        report,
    };
    emit(ctx.json, &restored);
    Ok(if clean { exit::OK } else { exit::ERROR })
}

#[derive(Serialize)]
struct Restored {
    snapshot_id: String,
    destination: String,
    #[serde(skip)]
    summary: bool,
    #[serde(flatten)]
    report: RestoreReport,
}

impl Render for Restored {
    fn text(&self) -> String {
        let (r, mut t) = (&self.report, String::new());
        for p in &r.planned {
            ln!(t, "would restore {p}");
        }
        if self.summary {
            ln!(
                t,
                "{}{} files, {} dirs, {} other entries, {} hard links, {} to {}{}",
                if r.planned.is_empty() {
                    "restored "
                } else {
                    "dry run: "
                },
                r.files,
                r.dirs,
                r.others,
                r.hardlinks,
                human_bytes(r.bytes),
                self.destination,
                if r.verified_files > 0 {
                    format!("; {} files verified", r.verified_files)
                } else {
                    String::new()
                }
            );
        }
        t
    }
}

/// `restore --all`: every Docker volume of a host, recreated and restored, with a report.
fn restore_all(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    let host = a.host.clone().unwrap_or_else(|| ctx.host.clone());
    let at = time_arg("restore --at", a.at.as_deref())?.map(crate::fmt::format_time);
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("unreadable snapshot skipped: {p}");
    }
    let plan = host::plan(&all, &host, at.as_deref());
    if plan.volumes.is_empty() {
        return Err(host::nothing_to_restore(
            &all,
            &host,
            at.as_deref(),
            &repo.location(),
        ));
    }
    let index = load_index_for_read(&repo)?;
    let total: u64 = plan
        .volumes
        .iter()
        .map(|p| p.snap.summary.total_bytes)
        .sum();
    let progress = progress(ctx, Some(total), "restore --all");
    let volumes = host::restore_all(
        &repo,
        &index,
        &plan,
        &host::AllOptions {
            root: ctx.docker_root.clone(),
            force: a.force,
            progress: progress.clone(),
        },
    );
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let failed = volumes.iter().filter(|o| o.error.is_some()).count();
    emit(
        ctx.json,
        &RestoredAll {
            restored: volumes.len() - failed,
            failed,
            host,
            at,
            docker_root: ctx.docker_root.clone(),
            volumes,
            passed_over: plan.passed_over,
        },
    );
    Ok(if failed > 0 { exit::ERROR } else { exit::OK })
}

#[derive(Serialize)]
struct RestoredAll {
    host: String,
    at: Option<String>,
    docker_root: PathBuf,
    volumes: Vec<host::Outcome>,
    passed_over: Vec<String>,
    restored: usize,
    failed: usize,
}

impl Render for RestoredAll {
    fn text(&self) -> String {
        let mut t = String::new();
        for o in &self.volumes {
            let created = match o.created {
                Some(host::Created::Existing) => "existing volume",
                Some(host::Created::Dockerd) => "created by dockerd",
                Some(host::Created::Directory) => "created as a directory",
                None => "not created",
            };
            let what = match (&o.report, &o.error) {
                (_, Some(e)) => format!("FAILED: {e}"),
                (Some(r), None) => format!(
                    "{} files, {} dirs, {} restored and verified",
                    r.files,
                    r.dirs,
                    human_bytes(r.bytes)
                ),
                (None, None) => "defined, no files written".to_string(),
            };
            ln!(
                t,
                "{}: snapshot {} of {}, {created} ({} label(s), {} option(s)): {what} ({:.1}s)",
                o.volume,
                &o.snapshot_id[..8],
                o.snapshot_time,
                o.labels.len(),
                o.options.len(),
                o.seconds
            );
            for n in &o.notes {
                ln!(t, "  note: {n}");
            }
        }
        for p in &self.passed_over {
            ln!(t, "not restored: {p}");
        }
        ln!(
            t,
            "restore --all of host {}: {} volume(s) restored, {} failed",
            self.host,
            self.restored,
            self.failed
        );
        t
    }
}
