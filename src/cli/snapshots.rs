//! `volguard snapshots`: list the repository's snapshots, with the ones `repair` marked broken.

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ids::SnapshotId;
use crate::repo::format::snapshot::Snapshot;

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[arg(long)]
    pub volume: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
}

pub(super) fn run(ctx: &Ctx, a: &SnapshotsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("{p}");
    }
    let (broken, mark_problems) = crate::ops::repair::load_broken(&repo)?;
    for p in &mark_problems {
        tracing::warn!("{p}");
    }
    let snapshots: Vec<Row> = all
        .iter()
        .filter(|(_, s)| a.volume.as_ref().is_none_or(|v| &s.volume == v))
        .filter(|(_, s)| a.host.as_ref().is_none_or(|h| &s.host == h))
        .map(|(id, s)| Row {
            id: *id,
            snap: s,
            broken: broken.get(&id.to_hex()).map(|b| b.problems.clone()),
        })
        .collect();
    emit(ctx.json, &Listing { snapshots });
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

#[derive(Serialize)]
struct Listing<'a> {
    snapshots: Vec<Row<'a>>,
}

/// One snapshot as `snapshots --json` shows it.
struct Row<'a> {
    id: SnapshotId,
    snap: &'a Snapshot,
    broken: Option<Vec<String>>,
}

impl Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            id: String,
            time: &'a str,
            host: &'a str,
            volume: &'a str,
            source: &'a str,
            tags: &'a [String],
            parent: Option<String>,
            files: u64,
            total_bytes: u64,
            bytes_added: u64,
            errors: usize,
            broken: &'a Option<Vec<String>>,
        }
        let snap = self.snap;
        View {
            id: self.id.to_hex(),
            time: &snap.time,
            host: &snap.host,
            volume: &snap.volume,
            source: &snap.source,
            tags: &snap.tags,
            parent: snap.parent.map(|p| p.to_hex()),
            files: snap.summary.files,
            total_bytes: snap.summary.total_bytes,
            bytes_added: snap.summary.bytes_added,
            errors: snap.summary.errors.len(),
            broken: &self.broken,
        }
        .serialize(s)
    }
}

impl Render for Listing<'_> {
    fn text(&self) -> String {
        let mut t = String::new();
        ln!(
            t,
            "{:<10} {:<21} {:<16} {:<24} {:>8} {:>10}",
            "ID",
            "TIME",
            "HOST",
            "VOLUME",
            "FILES",
            "SIZE"
        );
        for r in &self.snapshots {
            let s = r.snap;
            ln!(
                t,
                "{:<10} {:<21} {:<16} {:<24} {:>8} {:>10}{}",
                r.id.short(),
                s.time.get(..19).unwrap_or(&s.time),
                s.host,
                s.volume,
                s.summary.files,
                crate::fmt::human_bytes(s.summary.total_bytes),
                if r.broken.is_some() {
                    "  BROKEN (see `volguard check`)"
                } else {
                    ""
                }
            );
        }
        ln!(t, "{} snapshot(s)", self.snapshots.len());
        t
    }
}
