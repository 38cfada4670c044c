//! `volguard import`: turn tar archives made by other tools into snapshots of a volume.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::backup::report_line;
use super::render::{Render, emit_json, emit_text_now, progress};
use super::time_arg;
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::import::{self, Imported};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive to import (or --from-dir DIR).
    #[arg(required_unless_present = "from_dir", conflicts_with = "from_dir")]
    pub archive: Option<PathBuf>,
    /// Import every archive in DIR (.tar, .tar.gz, .tgz, .tar.zst, .tzst), oldest first.
    #[arg(long, value_name = "DIR")]
    pub from_dir: Option<PathBuf>,
    /// The volume the snapshots are filed under.
    #[arg(long)]
    pub volume: String,
    /// Snapshot time (RFC 3339) instead of the date in the archive's name, or its mtime.
    #[arg(long, value_name = "RFC3339", conflicts_with = "from_dir")]
    pub time: Option<String>,
    /// Leading path components to drop, like tar's (offen/docker-volume-backup: 2).
    #[arg(long, default_value_t = 0)]
    pub strip_components: usize,
    /// Where archives are unpacked before the backup (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Tag to attach to the snapshots (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

pub(super) fn run(ctx: &Ctx, a: &ImportArgs) -> Result<i32> {
    let explicit = time_arg("import --time", a.time.as_deref())?;
    let archives = match (&a.archive, &a.from_dir) {
        (Some(path), _) => vec![import::archive_time(path, explicit)?],
        (None, Some(dir)) => import::archives_in(dir)?,
        (None, None) => return Err(Error::Usage("name an archive or --from-dir DIR".into())),
    };
    if archives.is_empty() {
        return Err(Error::Usage(format!(
            "no archives (.tar, .tar.gz, .tgz, .tar.zst, .tzst) in {}",
            a.from_dir.as_deref().unwrap_or(Path::new("")).display()
        )));
    }
    let repo = ctx.open()?;
    let opts = import::Options {
        volume: a.volume.clone(),
        strip_components: a.strip_components,
        scratch_parent: a.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
        tags: a.tags.clone(),
        host: ctx.host.clone(),
    };
    let imported = import::run(
        &repo,
        &archives,
        &opts,
        &|name| progress(ctx, None, name),
        &mut |one| emit_text_now(ctx.json, &Archive(one)),
    )?;
    let soft = imported.iter().any(|i| !i.report.summary.errors.is_empty());
    if ctx.json {
        let imported: Vec<Archive> = imported.iter().map(Archive).collect();
        emit_json(&Listing { imported });
    }
    Ok(if soft { exit::PARTIAL } else { exit::OK })
}

#[derive(Serialize)]
struct Listing<'a> {
    imported: Vec<Archive<'a>>,
}

/// One imported archive: its backup report with where it came from and its time.
struct Archive<'a>(&'a Imported);

impl Serialize for Archive<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            archive: String,
            time: String,
            time_from: &'a str,
            #[serde(flatten)]
            report: &'a crate::ops::backup::Report,
        }
        let ar = &self.0.archive;
        View {
            archive: ar.path.display().to_string(),
            time: crate::fmt::format_time(ar.time),
            time_from: ar.time_from,
            report: &self.0.report,
        }
        .serialize(s)
    }
}

impl Render for Archive<'_> {
    fn text(&self) -> String {
        let ar = &self.0.archive;
        format!(
            "{} ({} from its {}): {}\n",
            ar.path.display(),
            crate::fmt::format_time(ar.time),
            ar.time_from,
            report_line(&self.0.report)
        )
    }
}
