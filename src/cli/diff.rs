//! `volguard diff`: what changed in a volume between two snapshots, or a snapshot and the
//! live data; its sides and change lines are shared with `verify`.

use std::collections::HashSet;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::docker;
use crate::error::{Error, Result, exit};
use crate::ops::diff::{self, Listing};
use crate::ops::prune::load_index_for_read;
use crate::repo::Repository;
use crate::repo::format::index::Index;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Docker volume (or the --name of a --path backup, compared with FROM/TO snapshots
    /// only); VOLUME:SNAPSHOT names FROM too, and the next argument is then TO.
    pub volume: String,
    /// Snapshot id (or unique prefix), `latest` (the default), @TIME (the newest at or
    /// before it: @2026-12-01, @3d), or `live` (the volume's _data now).
    pub from: Option<String>,
    /// Like FROM; default `live`.
    pub to: Option<String>,
}

pub(super) fn run(ctx: &Ctx, a: &DiffArgs) -> Result<i32> {
    let mut opened = None;
    let (volume, from, to) = sides(ctx, &mut opened, a)?;
    let from = diff_side(ctx, &mut opened, volume, &from)?;
    let to = diff_side(ctx, &mut opened, volume, &to)?;
    let c = diff::compare(&from.listing, &to.listing);
    let warnings: Vec<String> = from.warnings.iter().chain(&to.warnings).cloned().collect();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let clean = warnings.is_empty();
    emit(
        ctx.json,
        &Diffed {
            volume,
            from: &from,
            to: &to,
            comparison: c,
            warnings,
        },
    );
    Ok(if clean { exit::OK } else { exit::PARTIAL })
}

#[derive(Serialize)]
struct Diffed<'a> {
    volume: &'a str,
    #[serde(serialize_with = "label")]
    from: &'a DiffSide,
    #[serde(serialize_with = "label")]
    to: &'a DiffSide,
    #[serde(flatten)]
    comparison: diff::Comparison,
    warnings: Vec<String>,
}

/// The volume and the FROM and TO sides: `diff VOL[:FROM] [FROM|TO] [TO]`; a side may
/// also be spelled `VOL:SNAPSHOT` with the same volume.
fn sides<'a>(
    ctx: &Ctx,
    opened: &mut RepoAndIndex,
    a: &'a DiffArgs,
) -> Result<(&'a str, String, String)> {
    let (volume, named) = if a.volume.contains(':') {
        open(ctx, opened)?.0.split_spec(&a.volume)?
    } else {
        (a.volume.as_str(), None)
    };
    let (from, to) = match named {
        Some(_) if a.to.is_some() => {
            return Err(Error::Usage(format!(
                "{:?} names FROM already; give at most one more snapshot (TO)",
                a.volume
            )));
        }
        Some(f) => (f, a.from.as_deref().unwrap_or("live")),
        None => (
            a.from.as_deref().unwrap_or("latest"),
            a.to.as_deref().unwrap_or("live"),
        ),
    };
    let side = |s: &str| -> Result<String> {
        match s.strip_prefix(volume).and_then(|r| r.strip_prefix(':')) {
            Some(rest) => Ok(rest.to_string()),
            None if s.contains(':') => Err(Error::Usage(format!(
                "{s:?} is not a snapshot of {volume:?}: diff compares two states of one volume"
            ))),
            None => Ok(s.to_string()),
        }
    };
    Ok((volume, side(from)?, side(to)?))
}

/// A side as JSON names it: `{"live": PATH}` or `{"snapshot": ID, "time": T}`.
pub(super) fn label<S: serde::Serializer>(
    side: &&DiffSide,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    side.label.serialize(s)
}

impl Render for Diffed<'_> {
    fn text(&self) -> String {
        let (c, mut t) = (&self.comparison, String::new());
        ln!(t, "{}: {} -> {}", self.volume, self.from.text, self.to.text);
        comparison_text(&mut t, c, &HashSet::new());
        ln!(
            t,
            "{} added, {} removed, {} modified",
            c.added.len(),
            c.removed.len(),
            c.modified.len()
        );
        t
    }
}

/// One side of `diff`: its entries, how to name it, and what could not be read.
pub(super) struct DiffSide {
    pub(super) listing: Listing,
    pub(super) label: serde_json::Value,
    pub(super) text: String,
    pub(super) warnings: Vec<String>,
}

/// Repository and index, opened once and only if a side is a snapshot.
pub(super) type RepoAndIndex = Option<(Repository, Index)>;

pub(super) fn diff_side(
    ctx: &Ctx,
    opened: &mut RepoAndIndex,
    volume: &str,
    which: &str,
) -> Result<DiffSide> {
    if which == "live" {
        let data = docker::volume_data(&ctx.docker_root, volume)?;
        let (listing, warnings) = diff::live_listing(&data)?;
        return Ok(DiffSide {
            listing,
            label: json!({"live": data.display().to_string()}),
            text: format!("live {}", data.display()),
            warnings,
        });
    }
    let (repo, index) = open(ctx, opened)?;
    let (id, snap) = repo.find_snapshot(volume, which)?;
    let (listing, warnings) = diff::snapshot_listing(repo, index, &snap)?;
    Ok(DiffSide {
        listing,
        label: json!({"snapshot": id.to_hex(), "time": snap.time}),
        text: format!("snapshot {} ({})", &id.to_hex()[..8], snap.time),
        warnings,
    })
}

/// The repository and its index, opened on first use.
fn open<'o>(ctx: &Ctx, opened: &'o mut RepoAndIndex) -> Result<&'o (Repository, Index)> {
    if opened.is_none() {
        let repo = ctx.open()?;
        let index = load_index_for_read(&repo)?;
        *opened = Some((repo, index));
    }
    Ok(opened.as_ref().expect("opened above"))
}

fn short_hash(h: &Option<String>) -> String {
    h.as_deref()
        .map(|s| s[..16.min(s.len())].to_string())
        .unwrap_or_else(|| "-".into())
}

pub(super) fn comparison_text(t: &mut String, c: &diff::Comparison, skip: &HashSet<String>) {
    for a in &c.added {
        ln!(
            t,
            "A  {}  {} {} B mode {} owner {}:{} blake3 {}",
            a.path,
            a.entry.kind,
            a.entry.size,
            a.entry.mode,
            a.entry.uid,
            a.entry.gid,
            short_hash(&a.entry.blake3)
        );
    }
    for r in &c.removed {
        ln!(
            t,
            "D  {}  {} {} B blake3 {}",
            r.path,
            r.entry.kind,
            r.entry.size,
            short_hash(&r.entry.blake3)
        );
    }
    for m in &c.modified {
        if skip.contains(&m.path) {
            continue;
        }
        let details: Vec<String> = m
            .changes
            .iter()
            .map(|what| match *what {
                "content" => format!(
                    "content ({} B blake3 {} -> {} B blake3 {})",
                    m.from.size,
                    short_hash(&m.from.blake3),
                    m.to.size,
                    short_hash(&m.to.blake3)
                ),
                "mode" => format!("mode ({} -> {})", m.from.mode, m.to.mode),
                "owner" => format!(
                    "owner ({}:{} -> {}:{})",
                    m.from.uid, m.from.gid, m.to.uid, m.to.gid
                ),
                "mtime" => format!("mtime ({} -> {})", m.from.mtime, m.to.mtime),
                "type" => format!("type ({} -> {})", m.from.kind, m.to.kind),
                other => other.to_string(),
            })
            .collect();
        ln!(t, "M  {}  {}", m.path, details.join(", "));
    }
}
