//! `volguard repair`: rebuild the index from the packs and mark damaged snapshots.

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::repair;

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Say what would be written and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(ctx: &Ctx, a: &RepairArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let report = repair::run(&repo, &repair::Options { dry_run: a.dry_run })?;
    let damaged = !report.packs_unreadable.is_empty()
        || !report.blobs_damaged.is_empty()
        || !report.broken_snapshots.is_empty()
        || !report.unreadable_snapshots.is_empty();
    emit(
        ctx.json,
        &Repaired {
            repository: repo.location(),
            report,
        },
    );
    Ok(if damaged { exit::PARTIAL } else { exit::OK })
}

#[derive(Serialize)]
struct Repaired {
    #[serde(skip)]
    repository: String,
    #[serde(flatten)]
    report: repair::Report,
}

impl Render for Repaired {
    fn text(&self) -> String {
        let (r, mut t) = (&self.report, String::new());
        let would = if r.dry_run { "would " } else { "" };
        for p in r.packs_unreadable.iter().chain(&r.blobs_damaged) {
            ln!(t, "damaged: {p}");
        }
        for s in &r.unreadable_snapshots {
            ln!(t, "unreadable snapshot object: {s}");
        }
        ln!(
            t,
            "{}: {} packs read, {} indexed ({} blobs), {} left out (marked by prune); \
             {would}write {} index file(s), {would}delete {} old one(s)",
            self.repository,
            r.packs_read,
            r.packs_indexed,
            r.blobs_indexed,
            r.packs_marked_by_prune,
            r.index_files_written.len(),
            r.index_files_deleted.len()
        );
        for b in &r.broken_snapshots {
            ln!(
                t,
                "{would}mark broken: snapshot {} ({} {}): {} damaged path(s)",
                &b.id[..8],
                b.volume,
                b.time,
                b.problems.len()
            );
            for p in &b.problems {
                ln!(t, "  {p}");
            }
        }
        ln!(
            t,
            "{} snapshot(s) checked, {} broken",
            r.snapshots_checked,
            r.broken_snapshots.len()
        );
        t
    }
}
