//! `volguard prune`: delete data no snapshot needs, in two steps (mark, then delete after
//! the grace time); its text form is shared with `forget --prune`.

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::fmt::{human_bytes, parse_grace};
use crate::ops::prune;

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

pub(super) fn run(ctx: &Ctx, a: &PruneArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let report = prune::run(
        &repo,
        &prune::Options {
            dry_run: a.dry_run,
            grace: a.grace,
            max_unused_percent: a.max_unused,
            host: ctx.host.clone(),
        },
    )?;
    for p in &report.problems {
        tracing::warn!("{p}");
    }
    emit(
        ctx.json,
        &Pruned {
            repository: repo.location(),
            dry_run: a.dry_run,
            report: &report,
        },
    );
    Ok(exit::OK)
}

/// A prune report with what the text needs besides it.
#[derive(Serialize)]
pub(super) struct Pruned<'a> {
    #[serde(skip)]
    pub(super) repository: String,
    pub(super) dry_run: bool,
    #[serde(flatten)]
    pub(super) report: &'a prune::Report,
}

impl Render for Pruned<'_> {
    fn text(&self) -> String {
        let (r, mut t) = (self.report, String::new());
        let would = if self.dry_run { "would be " } else { "" };
        ln!(
            t,
            "{}: {} snapshots, {} packs; {} packs {would}deleted ({}), {} kept alive by newer snapshots",
            self.repository,
            r.snapshots,
            r.packs,
            r.packs_deleted,
            human_bytes(r.bytes_deleted),
            r.packs_kept_alive
        );
        ln!(
            t,
            "{} packs {would}marked for deletion ({}), {} of them {would}repacked ({} blobs, {} copied)",
            r.packs_marked,
            human_bytes(r.bytes_marked),
            r.packs_repacked,
            r.blobs_copied,
            human_bytes(r.bytes_copied)
        );
        let at = |secs: u64| {
            crate::fmt::fmt_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        };
        if r.packs_locked > 0 {
            let (first, last) = r.locked_until.unwrap_or_default();
            ln!(
                t,
                "{} packs ({}) {would}not deleted: under Object Lock retention until {} (the last until {}); a prune after that deletes them",
                r.packs_locked,
                human_bytes(r.bytes_locked),
                at(first),
                at(last)
            );
        }
        for (packs, due) in &r.marks_pending {
            ln!(
                t,
                "{packs} marked packs become deletable at {} (a later prune deletes them)",
                at(*due)
            );
        }
        t
    }
}
