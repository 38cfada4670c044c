//! `volguard find`: every snapshot holding an entry that matches (glob on the name or the
//! path, content BLAKE3, size, mtime), without reading any file content.

use std::collections::BTreeSet;

use clap::Args;

use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::browse::find::{Criteria, FindReport, find};
use crate::ops::prune::load_index_for_read;
use crate::repo::{SnapshotEntry, Which, pick, split_spec};

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Globs: one holding a `/` matches the path from the snapshot's root (`/etc/*.conf`,
    /// `**/*.log`), one without matches the entry's name (`*.conf`). Any one may match.
    pub patterns: Vec<String>,
    /// Only snapshots of this volume (or --name).
    #[arg(long)]
    pub volume: Option<String>,
    /// Only snapshots taken on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this snapshot (repeatable): VOLUME:SNAPSHOT, an id or unique prefix, or with
    /// --volume also `latest` or @TIME.
    #[arg(long, value_name = "SPEC")]
    pub snapshot: Vec<String>,
    /// Only entries modified at or after TIME (2026-12-01, 2026-12-01T10:00, RFC 3339, or
    /// an age: 3d, 12h).
    #[arg(long, value_name = "TIME")]
    pub newer: Option<String>,
    /// Only entries modified at or before TIME (a bare date includes that day).
    #[arg(long, value_name = "TIME")]
    pub older: Option<String>,
    /// Only regular files whose whole content has this BLAKE3 (`b3sum`'s 64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub blake3: Option<String>,
    /// Only regular files of at least SIZE bytes (suffixes K, M, G, T: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub min_size: Option<u64>,
    /// Only regular files of at most SIZE bytes.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub max_size: Option<u64>,
}

pub(super) fn run(ctx: &Ctx, a: &FindArgs) -> Result<i32> {
    let now = time::OffsetDateTime::now_utc();
    let when = |flag: &str, t: &Option<String>, end: bool| {
        t.as_deref()
            .map(|t| {
                crate::fmt::parse_when(t, now)
                    .map(|(from, to)| if end { to } else { from }.unix_timestamp_nanos())
                    .map_err(|e| Error::Usage(format!("{flag}: {e}")))
            })
            .transpose()
    };
    let blake3 = a
        .blake3
        .as_deref()
        .map(|h| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out).map(|()| out).map_err(|_| {
                Error::Usage(format!(
                    "--blake3 {h:?} is not a BLAKE3 hash: give the 64 hex digits `b3sum FILE` prints"
                ))
            })
        })
        .transpose()?;
    let criteria = Criteria {
        patterns: a.patterns.clone(),
        blake3,
        min_size: a.min_size,
        max_size: a.max_size,
        newer: when("--newer", &a.newer, false)?,
        older: when("--older", &a.older, true)?,
    };
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("unreadable snapshot skipped: {p}");
    }
    let chosen = choose(&all, a, now, &repo.location())?;
    let index = load_index_for_read(&repo)?;
    let report = find(&repo, &index, &chosen, &criteria)?;
    for p in &report.problems {
        tracing::warn!("{p}");
    }
    let clean = report.problems.is_empty() && problems.is_empty();
    emit(ctx.json, &Found(report));
    Ok(if clean { exit::OK } else { exit::PARTIAL })
}

/// The snapshots to search, oldest first: --volume, --host and --snapshot applied.
fn choose(
    all: &[SnapshotEntry],
    a: &FindArgs,
    now: time::OffsetDateTime,
    location: &str,
) -> Result<Vec<SnapshotEntry>> {
    let wanted = |(_, s): &&SnapshotEntry| {
        a.volume.as_ref().is_none_or(|v| &s.volume == v)
            && a.host.as_ref().is_none_or(|h| &s.host == h)
    };
    if a.snapshot.is_empty() {
        return Ok(all.iter().filter(wanted).cloned().collect());
    }
    let usage = |e: String| Error::Usage(format!("--snapshot: {e} in {location}"));
    let mut ids = BTreeSet::new();
    for spec in &a.snapshot {
        let known = |v: &str| all.iter().any(|(_, s)| s.volume == v);
        let found = match (split_spec(spec, known), &a.volume) {
            ((volume, Some(which)), _) => pick(all, volume, &Which::parse(which, now)?),
            ((_, None), Some(volume)) => pick(all, volume, &Which::parse(spec, now)?),
            ((_, None), None) => match Which::parse(spec, now)? {
                Which::Prefix(p) => {
                    let m: Vec<&SnapshotEntry> = all
                        .iter()
                        .filter(|(id, _)| id.to_hex().starts_with(&p))
                        .collect();
                    match m.as_slice() {
                        [one] => Ok(*one),
                        [] => Err(format!("no snapshot has an id starting with {p:?}")),
                        many => Err(format!(
                            "{} snapshots have ids starting with {p:?}: {}; give more characters",
                            many.len(),
                            many.iter()
                                .map(|(id, s)| format!(
                                    "{} ({} {})",
                                    &id.to_hex()[..16],
                                    s.volume,
                                    s.time
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    }
                }
                _ => Err(format!(
                    "{spec:?} needs a volume: write VOLUME:{spec} or add --volume"
                )),
            },
        }
        .map_err(usage)?;
        ids.insert(found.0);
    }
    Ok(all
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .filter(wanted)
        .cloned()
        .collect())
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Found(FindReport);

impl Render for Found {
    fn text(&self) -> String {
        let (r, mut t) = (&self.0, String::new());
        for s in &r.snapshots {
            ln!(
                t,
                "snapshot {} of {} on {} at {}: {} match(es)",
                s.short_id,
                s.volume,
                s.host,
                s.time.get(..19).unwrap_or(&s.time),
                s.hits
            );
            for m in &s.matches {
                let size = if m.kind == "file" {
                    m.size.to_string()
                } else {
                    "-".into()
                };
                ln!(
                    t,
                    "  {} {:>6} {:>6} {:>10} {} {}",
                    m.permissions,
                    m.uid,
                    m.gid,
                    size,
                    m.mtime.get(..19).unwrap_or(&m.mtime).replace('T', " "),
                    m.path
                );
            }
        }
        ln!(
            t,
            "{} of {} snapshot(s) searched hold a match ({} tree(s) read, {} reused)",
            r.snapshots.len(),
            r.searched,
            r.trees_read,
            r.trees_reused
        );
        t
    }
}
