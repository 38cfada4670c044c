//! `volguard ls`: the entries of a directory in a snapshot, printed as they are read
//! (`--json`: one restic-shaped node per line, after one line for the snapshot).

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit_line, ln};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::browse::NodeInfo;
use crate::ops::browse::ls::{LsOptions, ls};
use crate::ops::prune::load_index_for_read;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// VOLUME[:SNAPSHOT]; the snapshot is an id, a unique prefix of one, `latest` (the
    /// default) or @TIME, the newest at or before it (@2026-12-01, @2026-12-01T10:00, @3d).
    pub spec: String,
    /// Directory (or file) inside the snapshot.
    #[arg(default_value = "/")]
    pub path: String,
    /// Type and mode, owner, size and mtime of each entry.
    #[arg(short, long)]
    pub long: bool,
    /// The whole subtree, not only the directory's own entries.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

pub(super) fn run(ctx: &Ctx, a: &LsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (id, snap) = repo.find_spec(&a.spec, None)?;
    let index = load_index_for_read(&repo)?;
    let opts = LsOptions {
        path: a.path.clone(),
        recursive: a.recursive,
    };
    let mut header = Some(SnapshotLine {
        time: snap.time.clone(),
        paths: vec![snap.source.clone()],
        hostname: snap.host.clone(),
        volume: snap.volume.clone(),
        id: id.to_hex(),
        short_id: id.short(),
        struct_type: "snapshot",
        message_type: "snapshot",
    });
    let problems = ls(&repo, &index, &snap, &id.short(), &opts, &mut |info| {
        // Printed once the path is known to exist, so a bad path prints nothing.
        if let Some(h) = header.take().filter(|_| ctx.json) {
            emit_line(true, &h);
        }
        emit_line(ctx.json, &Entry { info, long: a.long });
        Ok(())
    })?;
    for p in &problems {
        tracing::warn!("{p}");
    }
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// The first `--json` line, as restic's `ls --json` starts.
#[derive(Serialize)]
struct SnapshotLine {
    time: String,
    paths: Vec<String>,
    hostname: String,
    volume: String,
    id: String,
    short_id: String,
    struct_type: &'static str,
    message_type: &'static str,
}

impl Render for SnapshotLine {
    fn text(&self) -> String {
        String::new()
    }
}

#[derive(Serialize)]
struct Entry {
    #[serde(flatten)]
    info: NodeInfo,
    #[serde(skip)]
    long: bool,
}

impl Render for Entry {
    fn text(&self) -> String {
        let (i, mut t) = (&self.info, String::new());
        if !self.long {
            ln!(t, "{}", i.path);
            return t;
        }
        let target = i
            .link_target
            .as_ref()
            .map(|l| format!(" -> {l}"))
            .unwrap_or_default();
        ln!(
            t,
            "{} {:>6} {:>6} {:>10} {} {}{target}",
            i.permissions,
            i.uid,
            i.gid,
            if i.kind == "file" {
                i.size.to_string()
            } else {
                "-".into()
            },
            i.mtime.get(..19).unwrap_or(&i.mtime).replace('T', " "),
            i.path
        );
        t
    }
}
