//! `volguard drill`: restore the latest snapshots into scratch space and verify them.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::parse_percent;
use super::render::{Render, emit_json, emit_text_now, ln};
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::drill::{self, Drill};

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Volume to drill (repeatable; default: every volume with a snapshot from this host).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Restore only this share of the files, chosen at random (percent, e.g. 10).
    #[arg(long, default_value_t = 100.0, value_parser = parse_percent)]
    pub sample: f64,
    /// Where to restore (default: the temporary directory); emptied afterwards.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
}

/// Every volume is drilled even when one fails; exit 1 if any did.
pub(super) fn run(ctx: &Ctx, a: &DrillArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let volumes = if a.volumes.is_empty() {
        drill::volumes_of_host(&repo, &ctx.host)?
    } else {
        a.volumes.clone()
    };
    if volumes.is_empty() {
        return Err(Error::Other(format!(
            "no snapshots from host {:?} in {}: nothing to drill; back up first, or name a \
             volume with --volume",
            ctx.host,
            repo.location()
        )));
    }
    let (index, problems) = repo.load_index()?;
    for p in problems {
        tracing::warn!("{p}");
    }
    let opts = drill::Options {
        sample_percent: a.sample,
        scratch_parent: a.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let log = crate::paths::state_dir().join("drills.jsonl");
    let mut drills = Vec::new();
    for v in &volumes {
        let d = drill::run(&repo, &index, v, &ctx.host, &opts)?;
        if let Err(e) = drill::record(&log, &d) {
            tracing::warn!("drill result not recorded: {e}");
        }
        emit_text_now(ctx.json, &One(&d));
        drills.push(d);
    }
    let ok = drills.iter().all(|d| d.ok);
    if ctx.json {
        emit_json(&Drills {
            drills,
            log: log.display().to_string(),
        });
    }
    Ok(if ok { exit::OK } else { exit::ERROR })
}

#[derive(Serialize)]
struct Drills {
    drills: Vec<Drill>,
    log: String,
}

#[derive(Serialize)]
struct One<'a>(&'a Drill);

impl Render for One<'_> {
    fn text(&self) -> String {
        let (d, mut t) = (self.0, String::new());
        ln!(
            t,
            "{}: snapshot {} of {} — {} of {} files restored ({}), {} verified, in {:.1}s; \
             {} live files compared: {}",
            d.volume,
            &d.snapshot_id[..8],
            d.snapshot_time,
            d.files_restored,
            d.files_in_snapshot,
            crate::fmt::human_bytes(d.bytes_restored),
            d.files_verified,
            d.seconds,
            d.live_compared,
            if d.ok { "OK" } else { "FAILED" }
        );
        for line in d.errors.iter().chain(&d.live_differs) {
            ln!(t, "  {line}");
        }
        t
    }
}
