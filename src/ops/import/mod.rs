//! `import`: turn tar archives made by other tools (`docker run ... tar czf`, offen/
//! docker-volume-backup, a cron job) into snapshots, so a user's backup history moves into
//! the repository and deduplicates there. `archive` finds, dates and unpacks archives
//! (a parser of untrusted bytes, also built by the fuzz crate); this file backs them up.

mod archive;

pub use archive::*;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ops::backup;
use crate::repo::Repository;

/// How `import` files the archives.
#[derive(Debug, Clone)]
pub struct Options {
    /// The volume the snapshots are filed under.
    pub volume: String,
    /// Leading path components to drop, like tar's.
    pub strip_components: usize,
    /// Where archives are unpacked before the backup.
    pub scratch_parent: PathBuf,
    pub tags: Vec<String>,
    pub host: String,
}

/// One archive imported.
#[derive(Debug, Clone)]
pub struct Imported {
    pub archive: Archive,
    pub report: backup::Report,
}

/// Imports `archives` in order: each is unpacked into a scratch directory and backed up
/// from there with the archive's time. The first failure stops the run (later archives
/// would otherwise be filed without the history before them); `done` hears of each
/// archive as it is imported.
pub fn run(
    repo: &Repository,
    archives: &[Archive],
    opts: &Options,
    progress: &dyn Fn(&str) -> Option<indicatif::ProgressBar>,
    done: &mut dyn FnMut(&Imported),
) -> Result<Vec<Imported>> {
    // Epochs mode: imported snapshots keep their old times but their objects are created
    // now, so they belong to the current epoch.
    repo.enter_epoch(std::time::SystemTime::now());
    let (mut index, marked) = crate::ops::prune::load_index_for_write(repo)?;
    let mut imported = Vec::new();
    for ar in archives {
        let span = tracing::info_span!("import", archive = %ar.path.display());
        let _g = span.enter();
        let scratch = Scratch::new(&opts.scratch_parent)?;
        let root = unpack(&ar.path, scratch.path(), opts.strip_components)?;
        let source = backup::Source {
            name: opts.volume.clone(),
            path: root,
            origin: Some(ar.path.display().to_string()),
            docker_volume: None,
            exclude_labels: Vec::new(),
        };
        let backup_opts = backup::Options {
            tags: opts.tags.clone(),
            host: opts.host.clone(),
            time: Some(ar.time),
            progress: progress(&opts.volume),
            marked: marked.clone(),
            wait_for_others: crate::repo::inflight::DEFAULT_WAIT,
            read_done: None,
            exclude: backup::exclude::Rules::default(),
            dry_run: false,
        };
        let r = backup::run(repo, &mut index, &source, &backup_opts);
        if let Some(p) = &backup_opts.progress {
            p.finish_and_clear();
        }
        let report = r.map_err(|e| {
            Error::Other(format!(
                "import of {} failed: {e}; {} archive(s) before it were imported",
                ar.path.display(),
                imported.len()
            ))
        })?;
        let one = Imported {
            archive: ar.clone(),
            report,
        };
        done(&one);
        imported.push(one);
    }
    Ok(imported)
}
