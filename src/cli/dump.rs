//! `volguard dump`: one file of a snapshot on stdout, or a directory as a tar stream, to
//! take a file back without restoring the volume (`volguard dump app:latest /etc/x > x`).

use std::io::Write;

use clap::Args;

use crate::context::Ctx;
use crate::error::{Result, exit};
use crate::ops::browse::dump::{Dumped, dump};
use crate::ops::browse::lookup;
use crate::ops::prune::load_index_for_read;

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// VOLUME[:SNAPSHOT] (id, unique prefix, `latest` by default, or @TIME).
    pub spec: String,
    /// File, or directory (written as tar, entries named relative to it), in the snapshot.
    pub path: String,
}

/// The bytes are the output, so there is no report: errors go to stderr. A content that
/// does not verify stops the output short of the file's end and exits 1.
pub(super) fn run(ctx: &Ctx, a: &DumpArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (id, snap) = repo.find_spec(&a.spec, None)?;
    let index = load_index_for_read(&repo)?;
    let (node, shown) = lookup(&repo, &index, &snap.root, &a.path, &id.short())?;
    let mut out = Watched {
        inner: std::io::stdout().lock(),
        broken: false,
    };
    match dump(&repo, &index, &snap, &node, &shown, &mut out) {
        Ok(Dumped::File { .. }) => Ok(exit::OK),
        Ok(Dumped::Tar(report)) => Ok(super::export::tar_errors_exit(&report.errors)),
        // The reader went away (`dump ... | head -c 100`): quietly, as other output does.
        Err(_) if out.broken => Ok(exit::BROKEN_PIPE),
        Err(e) => Err(e),
    }
}

/// Stdout, remembering whether a write found the pipe closed (the tar writer's errors do
/// not keep the I/O error's kind).
struct Watched<W> {
    inner: W,
    broken: bool,
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

impl<W> Watched<W> {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.broken = true;
        }
        r
    }
}
