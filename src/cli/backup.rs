//! `volguard backup`: back up volumes, container layers or a directory as snapshots.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln, progress};
use super::time_arg;
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::backup::{self, batch};

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

pub(super) fn run(ctx: &Ctx, a: &BackupArgs) -> Result<i32> {
    let time = time_arg("backup --time", a.time.as_deref())?;
    let selection = batch::Selection {
        volumes: a.volumes.clone(),
        all: a.all,
        containers: a.containers.clone(),
        all_writable_layers: a.all_writable_layers,
        path: a
            .path
            .clone()
            .map(|p| (p, a.name.clone().unwrap_or_default())),
    };
    let selected = batch::select(&ctx.docker_root, &selection)?;
    let repo = ctx.open()?;
    let opts = backup::Options {
        tags: a.tags.clone(),
        host: ctx.host.clone(),
        time,
        wait_for_others: crate::repo::inflight::DEFAULT_WAIT,
        ..Default::default()
    };
    let report = batch::run(&repo, &ctx.docker_root, selected, &opts, &|name| {
        progress(ctx, None, name)
    })?;
    let code = if let Some(first) = report.failed.first() {
        // One kind of failure keeps its own code (11: run again after the prune).
        if report.failed.iter().all(|f| f.exit_code == first.exit_code) {
            first.exit_code
        } else {
            exit::ERROR
        }
    } else if report.partial() {
        exit::PARTIAL
    } else {
        exit::OK
    };
    emit(
        ctx.json,
        &BackedUp {
            docker_root: &ctx.docker_root,
            report: &report,
        },
    );
    Ok(code)
}

#[derive(Serialize)]
struct BackedUp<'a> {
    #[serde(skip)]
    docker_root: &'a std::path::Path,
    #[serde(flatten)]
    report: &'a batch::BatchReport,
}

impl Render for BackedUp<'_> {
    fn text(&self) -> String {
        let (r, mut t) = (self.report, String::new());
        for s in &r.snapshots {
            ln!(t, "{}", report_line(s));
        }
        for f in &r.failed {
            ln!(t, "{}: FAILED: {}", f.volume, f.error);
        }
        if r.nothing_found {
            ln!(
                t,
                "no Docker volumes found under {}/volumes",
                self.docker_root.display()
            );
        }
        t
    }
}

/// One backup's report as one line for people.
pub(super) fn report_line(r: &backup::Report) -> String {
    let s = &r.summary;
    format!(
        "{}: snapshot {} — {} files ({} new, {} changed, {} unmodified), {} read, {} added, {:.1}s{}",
        r.volume,
        r.snapshot_id.short(),
        s.files,
        s.files_new,
        s.files_changed,
        s.files_unmodified,
        crate::fmt::human_bytes(s.bytes_read),
        crate::fmt::human_bytes(s.bytes_added),
        s.duration_s,
        if s.errors.is_empty() {
            String::new()
        } else {
            format!(", {} errors (files skipped, listed above)", s.errors.len())
        }
    )
}
