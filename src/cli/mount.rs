//! `volguard mount`: every snapshot as a read-only FUSE filesystem, until unmounted.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::render::{Render, emit};
use crate::backend::counting::{Counting, ReadCounters};
use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::fmt::human_bytes;
use crate::ops::mount::{self, MountOptions, MountReport};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An empty directory to mount the repository on.
    pub mountpoint: PathBuf,
    /// Show only the snapshots of this volume (or --name).
    #[arg(long)]
    pub volume: Option<String>,
    /// Show only the snapshots made on this host.
    #[arg(long)]
    pub host: Option<String>,
}

/// Runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`, SIGINT, SIGTERM);
/// the report says what was read, also from the repository's store.
pub(super) fn run(ctx: &Ctx, a: &MountArgs) -> Result<i32> {
    // A bad mountpoint or a machine without FUSE is said before any key is asked for.
    mount::preflight(&a.mountpoint)?;
    let counters = Arc::new(ReadCounters::default());
    let repo = ctx.open_with(|b| Counting::wrap(b, counters.clone()))?;
    let opts = MountOptions {
        mountpoint: a.mountpoint.clone(),
        volume: a.volume.clone(),
        host: a.host.clone(),
        backend_reads: Some(counters),
    };
    let report = mount::run(repo, &opts)?;
    emit(ctx.json, &report);
    Ok(exit::OK)
}

impl Render for MountReport {
    fn text(&self) -> String {
        let mut s = format!(
            "unmounted {}: {} read(s), {} served",
            self.mountpoint.display(),
            self.reads,
            human_bytes(self.bytes_served)
        );
        if let Some(b) = &self.backend {
            s += &format!(
                ", {} read from the repository in {} request(s)",
                human_bytes(b.bytes),
                b.requests
            );
        }
        if self.io_errors > 0 {
            s += &format!("; {} read(s) failed with EIO (see the log)", self.io_errors);
        }
        s + "\n"
    }
}
