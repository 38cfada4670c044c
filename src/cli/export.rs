//! `volguard export`: a snapshot as a tar stream on stdout, optionally zstd-compressed.

use std::io::Write;

use clap::Args;

use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::restore::{self, Filter};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// VOLUME[:SNAPSHOT]: the volume (or --name) whose snapshot to write, and which one (an
    /// id, a unique prefix, `latest`, or @TIME).
    pub volume: String,
    /// Snapshot id (or a unique prefix), `latest` (the default), or @TIME.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Compress the tar stream with zstd (`zstd -d | tar x`, or `tar --zstd -x`).
    #[arg(long)]
    pub zstd: bool,
}

/// zstd's own default level: fast enough not to slow the stream down.
const EXPORT_ZSTD_LEVEL: i32 = 3;

/// The stream is the output, so there is no report: errors go to stderr.
pub(super) fn run(ctx: &Ctx, a: &ExportArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (_, snap) = repo.find_spec(&a.volume, a.snapshot.as_deref())?;
    let index = crate::ops::prune::load_index_for_read(&repo)?;
    let stdout = std::io::stdout().lock();
    let report = if a.zstd {
        let broken = |e| Error::io("cannot write the zstd stream to", "stdout", e);
        let mut enc = zstd::Encoder::new(stdout, EXPORT_ZSTD_LEVEL).map_err(broken)?;
        let report = restore::to_tar(&repo, &index, &snap, &mut enc, &Filter::default())?;
        enc.finish().map_err(broken)?.flush().map_err(broken)?;
        report
    } else {
        restore::to_tar(&repo, &index, &snap, stdout, &Filter::default())?
    };
    Ok(tar_errors_exit(&report.errors))
}

/// Names the entries a tar stream on stdout had to leave out (stdout is the archive, so
/// they go to stderr) and gives the exit code: any of them fails the command.
pub(super) fn tar_errors_exit(errors: &[String]) -> i32 {
    for e in errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    }
}
