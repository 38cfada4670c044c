//! `volguard backup`: back up volumes, container layers or a directory as snapshots.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln, progress};
use super::time_arg;
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::backup::{self, batch, exclude};

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
    /// Leave out entries matching GLOB (repeatable). Without a `/` it matches a name at any
    /// depth, with one the path from the volume's root; `*` does not cross a `/`, `**` does.
    /// A directory that matches is left out with everything below it.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Read more exclude globs from FILE, one per line; blank lines and `#` lines are skipped
    /// (repeatable).
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out regular files larger than SIZE (4096, 64K, 1.5M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Leave out directories that hold a CACHEDIR.TAG file with the standard signature.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Read and chunk as a backup would and report what would be new and what is excluded,
    /// writing nothing to the repository.
    #[arg(long)]
    pub dry_run: bool,
    /// Record this time (RFC 3339, e.g. 2024-05-01T12:00:00Z) as the snapshot's time instead
    /// of now. For imports of older backups and for tests; stored in UTC.
    #[arg(long, value_name = "RFC3339")]
    pub time: Option<String>,
}

pub(super) fn run(ctx: &Ctx, a: &BackupArgs) -> Result<i32> {
    let time = time_arg("backup --time", a.time.as_deref())?;
    let exclude = exclude_rules(a)?;
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
        exclude,
        dry_run: a.dry_run,
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

/// The run's excludes from the flags, every glob checked before anything is read.
fn exclude_rules(a: &BackupArgs) -> Result<exclude::Rules> {
    exclude::check_globs(&a.excludes, "--exclude")?;
    let mut globs = a.excludes.clone();
    for f in &a.exclude_files {
        let more = exclude::read_exclude_file(f)?;
        exclude::check_globs(&more, &format!("--exclude-file {}:", f.display()))?;
        globs.extend(more);
    }
    Ok(exclude::Rules {
        globs,
        larger_than: a.exclude_larger_than,
        caches: a.exclude_caches,
    })
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
        for o in &r.opted_out {
            ln!(t, "{o}: not backed up, as its label asks");
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
    let files = format!(
        "{} files ({} new, {} changed, {} unmodified)",
        s.files, s.files_new, s.files_changed, s.files_unmodified
    );
    let (read, added) = (
        crate::fmt::human_bytes(s.bytes_read),
        crate::fmt::human_bytes(s.bytes_added),
    );
    let excluded = match s.excluded {
        0 => String::new(),
        n => format!(", {n} excluded"),
    };
    let errors = match s.errors.len() {
        0 => String::new(),
        n => format!(", {n} errors (files skipped, listed above)"),
    };
    match r.snapshot_id {
        None => format!(
            "{}: dry run — {files}, {read} to read, {added} new before compression{excluded}; \
             nothing written{errors}",
            r.volume
        ),
        Some(id) => format!(
            "{}: snapshot {} — {files}, {read} read, {added} added, {:.1}s{excluded}{errors}",
            r.volume,
            id.short(),
            s.duration_s
        ),
    }
}
