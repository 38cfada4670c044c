//! Backing up several sources in one run, as `volguard backup` does: what to back up
//! (volumes, every volume, container layers, a directory), each source on its own so one
//! failure does not stop the others, and the run's report.

use std::path::PathBuf;

use serde::Serialize;

use super::{Options, Report, Source, VolumeSources, layers, volume_sources};
use crate::error::{Error, Result};
use crate::ops::prune;
use crate::repo::Repository;

/// What one run backs up.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Docker volumes by name.
    pub volumes: Vec<String>,
    /// Every Docker volume.
    pub all: bool,
    /// Containers whose writable layer to back up (name, id or id prefix).
    pub containers: Vec<String>,
    /// The writable layer of every container.
    pub all_writable_layers: bool,
    /// A directory, filed under the given snapshot name, instead of volumes.
    pub path: Option<(PathBuf, String)>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.volumes.is_empty()
            && !self.all
            && self.containers.is_empty()
            && !self.all_writable_layers
            && self.path.is_none()
    }
}

/// One source that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub volume: String,
    pub error: String,
    /// The exit code the error stands for (11 when a concurrent prune got in the way).
    #[serde(skip)]
    pub exit_code: i32,
}

/// What a run did: a report per snapshot written, the sources that failed, and what was
/// skipped (volumes without data, containers without a layer), each with why.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub snapshots: Vec<Report>,
    pub failed: Vec<Failed>,
    pub skipped: Vec<String>,
    /// Volumes `--all` left out because they opted out (`volguard.backup=false`): wanted,
    /// so not a partial run.
    pub opted_out: Vec<String>,
    /// No source was selected (`--all` on a host without volumes).
    #[serde(skip)]
    pub nothing_found: bool,
}

impl BatchReport {
    /// Some files were skipped, or some sources could not be backed up at all.
    pub fn partial(&self) -> bool {
        self.snapshots.iter().any(|r| !r.summary.errors.is_empty()) || !self.skipped.is_empty()
    }
}

/// The sources a selection names, read from `docker_root`, and what it must skip.
#[derive(Debug, Clone)]
pub struct Selected {
    sources: Vec<Source>,
    /// Volumes without data found before the run; kept only if still so after it.
    without_data: Vec<String>,
    skipped: Vec<String>,
    opted_out: Vec<String>,
    vanishing_ok: bool,
}

impl Selected {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// Resolves `selection` against Docker's on-disk state (before the repository is opened,
/// so a typo in a volume name is the first thing said).
pub fn select(docker_root: &std::path::Path, selection: &Selection) -> Result<Selected> {
    if selection.is_empty() {
        return Err(Error::Usage(
            "name volumes to back up, or use --all, --container NAME, --all-writable-layers or --path DIR --name NAME".into(),
        ));
    }
    let mut without_data = Vec::new();
    let mut volumes = if let Some((path, name)) = &selection.path {
        VolumeSources {
            sources: vec![Source {
                name: name.clone(),
                path: path.clone(),
                origin: None,
                docker_volume: None,
                exclude_labels: Vec::new(),
            }],
            ..VolumeSources::default()
        }
    } else if selection.all {
        without_data = crate::docker::volumes_without_data(docker_root);
        let names = crate::docker::list_volumes(docker_root)?;
        volume_sources(docker_root, &names, true)?
    } else if selection.volumes.is_empty() {
        VolumeSources::default()
    } else {
        volume_sources(docker_root, &selection.volumes, false)?
    };
    let layers = layers::sources(
        docker_root,
        &selection.containers,
        selection.all_writable_layers,
    )
    .map_err(Error::Other)?;
    volumes.sources.extend(layers.sources);
    volumes.skipped.extend(layers.skipped);
    Ok(Selected {
        sources: volumes.sources,
        without_data,
        skipped: volumes.skipped,
        opted_out: volumes.opted_out,
        // `--all` races with `docker volume rm`: a source that vanished was not lost.
        vanishing_ok: selection.all || selection.all_writable_layers,
    })
}

/// Backs up every selected source into `repo`, one after the other; a failure is
/// reported and the next source goes on. `opts` is the template of every source's
/// options (its progress bar is made per source by `progress`).
pub fn run(
    repo: &Repository,
    docker_root: &std::path::Path,
    selected: Selected,
    opts: &Options,
    progress: &dyn Fn(&str) -> Option<indicatif::ProgressBar>,
) -> Result<BatchReport> {
    let Selected {
        sources,
        without_data,
        skipped,
        opted_out,
        vanishing_ok,
    } = selected;
    repo.enter_epoch(
        opts.time
            .map_or_else(std::time::SystemTime::now, Into::into),
    );
    // A dry run must not write, and the write path indexes packs an interrupted run left.
    let (mut index, marked) = if opts.dry_run {
        (
            prune::load_index_for_read(repo)?,
            prune::MarkedPacks::default(),
        )
    } else {
        prune::load_index_for_write(repo)?
    };
    let mut report = BatchReport {
        snapshots: Vec::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
        nothing_found: sources.is_empty() && opted_out.is_empty(),
        opted_out,
    };
    for src in &sources {
        let opts = Options {
            progress: progress(&src.name),
            marked: marked.clone(),
            ..opts.clone()
        };
        let span = tracing::info_span!("backup", volume = %src.name);
        let _g = span.enter();
        let result = super::run(repo, &mut index, src, &opts);
        if let Some(p) = &opts.progress {
            p.finish_and_clear();
        }
        match result {
            Ok(r) => report.snapshots.push(r),
            Err(Error::Io { source, .. })
                if vanishing_ok && source.kind() == std::io::ErrorKind::NotFound =>
            {
                let what = if src.name.starts_with(layers::SNAPSHOT_PREFIX) {
                    "container"
                } else {
                    "volume"
                };
                tracing::warn!(
                    "{what} {} was removed while it was backed up; skipped",
                    src.name.trim_start_matches(layers::SNAPSHOT_PREFIX)
                );
            }
            Err(e) => {
                tracing::error!("backup of {} failed: {e}", src.name);
                report.failed.push(Failed {
                    volume: src.name.clone(),
                    error: e.to_string(),
                    exit_code: e.exit_code(),
                });
            }
        }
    }
    // A volume directory without _data cannot be backed up; say so and carry on. Only
    // those still without _data after the run count: dockerd creating or removing a volume
    // meanwhile passes through that state for a moment.
    let mut still_without = without_data;
    if !still_without.is_empty() {
        let still = crate::docker::volumes_without_data(docker_root);
        still_without.retain(|w| still.contains(w));
    }
    still_without.extend(skipped);
    for w in &still_without {
        tracing::warn!("{w}");
    }
    report.skipped = still_without;
    Ok(report)
}

/// One backup as `backup --json` and `import --json` show it: the summary's counts at
/// the top level, ids in hex.
impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            volume: &'a str,
            snapshot_id: Option<String>,
            parent: Option<String>,
            files: u64,
            files_new: u64,
            files_changed: u64,
            files_unmodified: u64,
            total_bytes: u64,
            bytes_read: u64,
            bytes_added: u64,
            duration_s: f64,
            excluded: u64,
            errors: &'a [String],
            retention: &'a Option<crate::repo::retention::ExtendReport>,
        }
        let m = &self.summary;
        View {
            volume: &self.volume,
            snapshot_id: self.snapshot_id.map(|id| id.to_hex()),
            parent: self.parent.map(|p| p.to_hex()),
            files: m.files,
            files_new: m.files_new,
            files_changed: m.files_changed,
            files_unmodified: m.files_unmodified,
            total_bytes: m.total_bytes,
            bytes_read: m.bytes_read,
            bytes_added: m.bytes_added,
            duration_s: m.duration_s,
            excluded: m.excluded,
            errors: &m.errors,
            retention: &self.retention,
        }
        .serialize(s)
    }
}
