//! `volguard verify`: exit 1 when live volume data differs from its latest snapshot in a
//! way its metadata cannot explain.

use std::collections::HashSet;

use clap::Args;
use serde::Serialize;

use super::diff::{DiffSide, comparison_text, diff_side, label};
use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::diff;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Docker volume whose live data is checked against its latest snapshot.
    pub volume: String,
}

pub(super) fn run(ctx: &Ctx, a: &VerifyArgs) -> Result<i32> {
    let mut opened = None;
    let snapshot = diff_side(ctx, &mut opened, &a.volume, "latest")?;
    let live = diff_side(ctx, &mut opened, &a.volume, "live")?;
    let tampered = diff::tampered(&snapshot.listing, &live.listing);
    let unverifiable_files = diff::unhashed(&snapshot.listing);
    let comparison = diff::compare(&snapshot.listing, &live.listing);
    let warnings: Vec<String> = snapshot
        .warnings
        .iter()
        .chain(&live.warnings)
        .cloned()
        .collect();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // The watcher marks volumes whose events it may have lost; a clean, complete verify
    // answers that question, so the mark goes.
    let state = crate::paths::state_dir();
    let verify_mark_cleared = tampered.is_empty()
        && warnings.is_empty()
        && crate::watch::alerts::clear_verify_mark(&state, &a.volume).unwrap_or_else(|e| {
            tracing::warn!(
                "cannot clear the verify-needed mark of {} in {}: {e}",
                a.volume,
                state.display()
            );
            false
        });
    let code = if !tampered.is_empty() {
        exit::ERROR
    } else if warnings.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    };
    emit(
        ctx.json,
        &Verified {
            verify_mark_cleared,
            volume: &a.volume,
            snapshot: &snapshot,
            live: &live,
            tampered,
            comparison,
            unverifiable_files,
            warnings,
        },
    );
    Ok(code)
}

#[derive(Serialize)]
struct Verified<'a> {
    verify_mark_cleared: bool,
    volume: &'a str,
    #[serde(serialize_with = "label")]
    snapshot: &'a DiffSide,
    #[serde(serialize_with = "label")]
    live: &'a DiffSide,
    tampered: Vec<diff::Tampered>,
    #[serde(flatten)]
    comparison: diff::Comparison,
    unverifiable_files: usize,
    warnings: Vec<String>,
}

impl Render for Verified<'_> {
    fn text(&self) -> String {
        let (c, mut t) = (&self.comparison, String::new());
        for x in &self.tampered {
            ln!(
                t,
                "TAMPERED {}: content differs from the snapshot (blake3 {} -> {}) while size ({} B) and mtime ({}) are unchanged",
                x.path,
                &x.snapshot_blake3[..16],
                &x.live_blake3[..16],
                x.size,
                x.mtime
            );
        }
        let skip: HashSet<String> = self.tampered.iter().map(|x| x.path.clone()).collect();
        comparison_text(&mut t, c, &skip);
        if self.unverifiable_files > 0 {
            ln!(
                t,
                "{} file(s) of the snapshot carry no content hash (older volguard): their content was compared by size only",
                self.unverifiable_files
            );
        }
        if self.tampered.is_empty() {
            ln!(
                t,
                "{}: no unexplained change against {} ({} added, {} removed, {} modified with their metadata)",
                self.volume,
                self.snapshot.text,
                c.added.len(),
                c.removed.len(),
                c.modified.len()
            );
            if self.verify_mark_cleared {
                ln!(
                    t,
                    "{}: the watcher's verify-needed mark (events may have been lost) is cleared",
                    self.volume
                );
            }
        } else {
            ln!(
                t,
                "{}: {} file(s) changed without a trace in their metadata since {}; restore them with `volguard restore {} --include PATH ...` and find out who wrote them",
                self.volume,
                self.tampered.len(),
                self.snapshot.text,
                self.volume
            );
        }
        t
    }
}
