//! `volguard check`: verify the repository's structure, and with --read-data its bytes.

use clap::Args;
use serde::Serialize;

use super::parse_percent;
use super::render::{Render, emit, ln, progress};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::check;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read, decrypt and re-hash every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Read only this share of the packs, chosen at random (percent, e.g. 5).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, conflicts_with = "read_data")]
    pub read_data_subset: Option<f64>,
}

pub(super) fn run(ctx: &Ctx, a: &CheckArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let read_percent = match (a.read_data, a.read_data_subset) {
        (true, _) => 100.0,
        (false, Some(p)) => p,
        (false, None) => 0.0,
    };
    let pb = if read_percent > 0.0 {
        progress(ctx, Some(0), "reading")
    } else {
        None
    };
    let mut report = check::run(&repo, read_percent, pb.as_ref())?;
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    // A versioned bucket can hide objects behind delete markers; say so.
    report
        .warnings
        .extend(crate::repo::retention::version_warnings(&repo)?);
    if !ctx.json {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    let clean = report.errors.is_empty();
    emit(
        ctx.json,
        &Checked {
            repository: repo.location(),
            read_data: read_percent > 0.0,
            report,
        },
    );
    Ok(if clean { exit::OK } else { exit::ERROR })
}

#[derive(Serialize)]
struct Checked {
    #[serde(skip)]
    repository: String,
    #[serde(skip)]
    read_data: bool,
    #[serde(flatten)]
    report: check::CheckReport,
}

impl Render for Checked {
    fn text(&self) -> String {
        let (r, mut t) = (&self.report, String::new());
        for e in &r.errors {
            ln!(t, "error: {e}");
        }
        ln!(
            t,
            "{}: {} packs, {} blobs, {} snapshots{}; {} error(s)",
            self.repository,
            r.packs,
            r.blobs,
            r.snapshots,
            if self.read_data {
                format!(
                    ", {} packs read, {} blobs verified",
                    r.packs_read, r.blobs_verified
                )
            } else {
                String::new()
            },
            r.errors.len()
        );
        t
    }
}
