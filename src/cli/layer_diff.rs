//! `volguard layer-diff`: a container's writable-layer changes, as `docker diff` prints them.

use std::io::Write;

use clap::Args;

use super::render::emit_json;
use crate::context::Ctx;
use crate::docker::layer_diff;
use crate::error::{Error, Result, exit};

#[derive(Debug, Args)]
pub struct LayerDiffArgs {
    /// Container name, full id, or a unique id prefix.
    pub container: String,
}

pub(super) fn run(ctx: &Ctx, a: &LayerDiffArgs) -> Result<i32> {
    let root = &ctx.docker_root;
    let (c, record_warnings) =
        layer_diff::find_container(root, &a.container).map_err(Error::Other)?;
    // Other containers' damaged records do not make this container's diff partial.
    for w in &record_warnings {
        tracing::warn!("{w}");
    }
    let report = layer_diff::diff_container(root, &c).map_err(Error::Other)?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if ctx.json {
        emit_json(&report);
    } else {
        // Streamed: a layer can have millions of changes.
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        layer_diff::write_text(&mut out, &report.changes)
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("cannot write the layer diff to", "stdout", e))?;
    }
    Ok(if report.warnings.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
