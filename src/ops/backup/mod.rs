//! `backup`: turn one directory into a snapshot.
//!
//! Threads, joined by bounded channels so memory stays flat whatever the volume size:
//! the scanner (this thread) walks, reads and chunks files and hashes chunks; workers
//! compress and seal new blobs; the packer fills packs; the uploader stores packs and
//! writes index files. The snapshot object is written only after all of that is durable.

pub mod batch;
pub mod exclude;
pub mod layers;
mod pipeline;
mod read;
mod readahead;
mod scan;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::bounded;

use self::pipeline::{
    FinishedPack, PackBuffers, QUEUE_BLOBS, RawBlob, SealedBlob, UploadState, finish_pack,
    flush_index, packer, seal_worker, upload_pack, uploader,
};
pub(crate) use self::read::open_for_backup;
use self::readahead::{READAHEAD_DIRS, readahead};
use self::scan::Scanner;
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::repo::Repository;
use crate::repo::format::index::Index;
use crate::repo::format::pack::PackBuilder;
use crate::repo::format::snapshot::{Snapshot, Summary};
use crate::repo::format::tree::Tree;
use crate::repo::inflight::Inflight;

/// What to back up.
#[derive(Debug, Clone)]
pub struct Source {
    /// Volume name (or the `--name` of a `--path` backup).
    pub name: String,
    pub path: PathBuf,
    /// What the snapshot names as its source when not `path` (an imported archive).
    pub origin: Option<String>,
    /// The Docker volume's definition, recorded in the snapshot for `restore --all`.
    pub docker_volume: Option<crate::repo::format::snapshot::VolumeMeta>,
    /// `volguard.exclude` label values: (where set, e.g. "container web", value).
    pub exclude_labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tags: Vec<String>,
    pub host: String,
    /// The snapshot's time when not now (`backup --time`, for imports and tests).
    pub time: Option<time::OffsetDateTime>,
    pub progress: Option<indicatif::ProgressBar>,
    /// Packs prune has marked, loaded before the index (see `prune`).
    pub marked: crate::ops::prune::MarkedPacks,
    /// How long to wait for blobs left to a concurrent backup once it falls silent.
    pub wait_for_others: std::time::Duration,
    /// Told once every file has been read (uploads may still run): the agent thaws frozen
    /// containers then, not when the upload ends.
    pub read_done: Option<crossbeam_channel::Sender<()>>,
    /// What to leave out, besides what the source's labels and ignore file say.
    pub exclude: exclude::Rules,
    /// Read and chunk as a backup would, to report what is new, but write nothing.
    pub dry_run: bool,
}

/// Result of one backup, as `backup --json` reports it.
#[derive(Debug, Clone)]
pub struct Report {
    pub volume: String,
    /// None in a dry run.
    pub snapshot_id: Option<SnapshotId>,
    pub parent: Option<SnapshotId>,
    pub summary: Summary,
    /// object-lock mode: what making the snapshot's objects retained long enough took.
    pub retention: Option<crate::repo::retention::ExtendReport>,
}

impl Report {
    /// The snapshot's short id, or what stands for it in a dry run.
    pub fn short_id(&self) -> String {
        self.snapshot_id
            .map_or_else(|| "(dry run)".into(), |id| id.short())
    }
}

/// Backs up `source`, deduplicating against `index`, which is extended with what was added.
pub fn run(
    repo: &Repository,
    index: &mut Index,
    source: &Source,
    opts: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let root_meta = std::fs::symlink_metadata(&source.path)
        .map_err(|e| Error::io("cannot read the directory to back up", &source.path, e))?;
    if !root_meta.is_dir() {
        return Err(Error::Other(format!(
            "{} is not a directory",
            source.path.display()
        )));
    }
    let parent = find_parent(repo, &source.name, &opts.host)?;
    let parent_root = match &parent {
        Some((_, snap)) => snap
            .root
            .subtree
            .and_then(|t| usable_parent_tree(repo.load_tree(index, &t))),
        None => None,
    };

    let (exclude, exclude_problems) =
        exclude::Exclude::for_source(&opts.exclude, &source.path, &source.exclude_labels);
    if opts.dry_run {
        let mut summary = dry_run(
            repo,
            index,
            &exclude,
            exclude_problems,
            source,
            &root_meta,
            parent_root,
        )?;
        summary.duration_s = started.elapsed().as_secs_f64();
        return Ok(Report {
            volume: source.name.clone(),
            snapshot_id: None,
            parent: parent.map(|(id, _)| id),
            summary,
            retention: None,
        });
    }
    let inflight = Inflight::start(repo, &opts.host, &opts.marked.packs, opts.wait_for_others)?;
    let inflight = &inflight;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (raw_tx, raw_rx) = bounded::<RawBlob>(QUEUE_BLOBS);
    let (sealed_tx, sealed_rx) = bounded::<SealedBlob>(QUEUE_BLOBS);
    let (pack_tx, pack_rx) = bounded::<FinishedPack>(1);
    let upload_state = Mutex::new(UploadState::default());
    // A pack ends with the blob that takes it past the pack size (at most a chunk, or a
    // directory listing, which may be larger and then grows the buffer), then its trailer.
    let room = repo.config().pack_bytes as usize + repo.config().chunker.max as usize + (1 << 20);
    // Two packs being filled, one queued, one per uploader.
    let buffers = &PackBuffers::new(repo.backend().upload_concurrency() + 3, room);

    let (scan_result, uploaded) = std::thread::scope(|s| {
        for i in 0..workers {
            let rx = raw_rx.clone();
            let tx = sealed_tx.clone();
            std::thread::Builder::new()
                .name(format!("seal-{i}"))
                .spawn_scoped(s, move || seal_worker(repo, rx, tx))
                .expect("spawning a thread");
        }
        drop(raw_rx);
        drop(sealed_tx);
        std::thread::Builder::new()
            .name("packer".into())
            .spawn_scoped(s, || packer(repo, sealed_rx, pack_tx, buffers))
            .expect("spawning a thread");
        let uploaders: Vec<_> = (0..repo.backend().upload_concurrency())
            .map(|i| {
                let rx = pack_rx.clone();
                let state = &upload_state;
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn_scoped(s, move || uploader(repo, rx, state, inflight, buffers))
                    .expect("spawning a thread")
            })
            .collect();
        drop(pack_rx);
        let (ra_tx, ra_rx) = bounded(READAHEAD_DIRS);
        std::thread::Builder::new()
            .name("readahead".into())
            .spawn_scoped(s, move || readahead(ra_rx))
            .expect("spawning a thread");

        let mut scanner = Scanner::new(
            repo,
            index,
            &exclude,
            raw_tx,
            exclude_problems,
            &source.path,
        );
        scanner.progress = opts.progress.clone();
        scanner.readahead = Some(ra_tx);
        let scan_result = scanner.walk(&source.path, &root_meta, parent_root);
        if let Some(tx) = &opts.read_done {
            let _ = tx.send(());
        }
        let summary = std::mem::take(&mut scanner.summary);
        let reused_packs = std::mem::take(&mut scanner.reused_packs);
        let error_count = scanner.error_count;
        drop(scanner); // closes the channel so the pipeline drains and ends
        let mut uploaded: Result<()> = Ok(());
        for u in uploaders {
            let r = u
                .join()
                .unwrap_or_else(|_| Err(Error::Other("uploader thread panicked".into())));
            if uploaded.is_ok() {
                uploaded = r;
            }
        }
        (
            scan_result.map(|root| (root, summary, error_count, reused_packs)),
            uploaded,
        )
    });
    // An upload failure explains a scan that stopped early, so it is reported first.
    uploaded?;
    // Index what landed before waiting for concurrent backups: they may be waiting for it.
    let rest = std::mem::take(&mut upload_state.lock().unwrap_or_else(|p| p.into_inner()).batch);
    flush_index(repo, rest, &upload_state, inflight)?;
    // Blobs left to concurrent backups: wait for them, upload what never arrived.
    let resolved = inflight.resolve()?;
    let mut fallback = PackBuilder::default();
    for d in &resolved.missing {
        let sealed = inflight.spooled(d)?;
        fallback.add(d.entry.kind, d.entry.id, &sealed, d.entry.raw_length);
        if fallback.len() >= repo.config().pack_bytes as usize {
            upload_pack(
                repo,
                finish_pack(repo, std::mem::take(&mut fallback)),
                &upload_state,
                inflight,
                buffers,
            )?;
        }
    }
    if !fallback.is_empty() {
        let last = finish_pack(repo, fallback);
        upload_pack(repo, last, &upload_state, inflight, buffers)?;
    }
    let rest = std::mem::take(&mut upload_state.lock().unwrap_or_else(|p| p.into_inner()).batch);
    flush_index(repo, rest, &upload_state, inflight)?;
    let uploaded = upload_state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .done;
    let (root, mut summary, error_count, mut reused_packs) = scan_result?;
    for p in uploaded.packs.iter().chain(&resolved.others_packs) {
        index.add_pack(p.id, p.size, &p.blobs);
    }
    reused_packs.extend(&resolved.used_packs);
    summary.blobs_added = uploaded.packs.iter().map(|p| p.blobs.len() as u64).sum();
    more_errors(&mut summary, error_count);
    summary.duration_s = started.elapsed().as_secs_f64();
    let mut snap = Snapshot {
        version: 1,
        time: match opts.time {
            Some(t) => crate::fmt::format_time(t),
            None => Repository::now(),
        },
        host: opts.host.clone(),
        volume: source.name.clone(),
        source: source
            .origin
            .clone()
            .unwrap_or_else(|| source.path.display().to_string()),
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|(id, _)| *id),
        root,
        summary,
        program: format!("volguard {}", env!("CARGO_PKG_VERSION")),
        docker_volume: source.docker_volume.clone(),
    };
    // bytes_added must include the snapshot object itself; its size barely depends on
    // the number written into it, so estimate with the current figures, then correct.
    snap.summary.bytes_added = uploaded.bytes;
    let estimate = snap.seal(repo.keys()).1.len() as u64;
    snap.summary.bytes_added = uploaded.bytes + estimate;
    // Every pack the snapshot needs, its own uploads included: a run slower than prune's
    // grace period may find the packs it wrote early marked as garbage by now.
    let mut needed = reused_packs;
    needed.extend(uploaded.packs.iter().map(|p| p.id));
    needed.extend(resolved.others_packs.iter().map(|p| p.id));
    opts.marked.check_needed(repo, &needed)?;
    // Object-lock mode: everything the snapshot needs is retained long enough first.
    let mut retention = None;
    if repo.object_lock().is_some() {
        let at = opts
            .time
            .map_or_else(std::time::SystemTime::now, Into::into);
        retention = crate::repo::retention::protect_snapshot(repo, &needed, at)?;
    }
    let (id, _) = repo.save_snapshot(&snap)?;
    Ok(Report {
        volume: source.name.clone(),
        snapshot_id: Some(id),
        parent: snap.parent,
        summary: snap.summary,
        retention,
    })
}

/// A backup that writes nothing: the scanner runs as in a backup, and what it would send
/// to the pipeline is counted and dropped. `blobs_added` and `bytes_added` say what would
/// be new (bytes before compression and encryption).
fn dry_run(
    repo: &Repository,
    index: &Index,
    exclude: &exclude::Exclude,
    problems: Vec<String>,
    source: &Source,
    root_meta: &std::fs::Metadata,
    parent_root: Option<Tree>,
) -> Result<Summary> {
    let (tx, rx) = bounded::<RawBlob>(QUEUE_BLOBS);
    std::thread::scope(|s| {
        let counter = s.spawn(move || {
            rx.iter().fold((0u64, 0u64), |(n, b), blob| {
                (n + 1, b + blob.raw.len() as u64)
            })
        });
        let mut scanner = Scanner::new(repo, index, exclude, tx, problems, &source.path);
        let walked = scanner.walk(&source.path, root_meta, parent_root);
        let mut summary = std::mem::take(&mut scanner.summary);
        let error_count = scanner.error_count;
        drop(scanner);
        let (blobs, bytes) = counter.join().expect("the dry-run counter does not panic");
        walked?;
        summary.blobs_added = blobs;
        summary.bytes_added = bytes;
        more_errors(&mut summary, error_count);
        Ok(summary)
    })
}

/// Says how many soft errors there were beyond those kept verbatim.
fn more_errors(summary: &mut Summary, error_count: u64) {
    if error_count > summary.errors.len() as u64 {
        summary.errors.push(format!(
            "... and {} more errors",
            error_count - summary.errors.len() as u64
        ));
    }
}

/// The latest snapshot of the same volume from the same host.
fn find_parent(
    repo: &Repository,
    volume: &str,
    host: &str,
) -> Result<Option<(SnapshotId, Snapshot)>> {
    let (snaps, _) = repo.list_snapshots()?;
    Ok(snaps
        .into_iter()
        .rev()
        .find(|(_, s)| s.volume == volume && s.host == host))
}

/// A parent tree that cannot be read only costs the incremental shortcut, never the backup.
fn usable_parent_tree(loaded: Result<Tree>) -> Option<Tree> {
    match loaded {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("parent snapshot tree unreadable, reading files again: {e}");
            None
        }
    }
}

/// Volume sources of one run, and the volumes `--all` leaves out, each with why.
#[derive(Debug, Default)]
pub struct VolumeSources {
    pub sources: Vec<Source>,
    /// Data mounted from elsewhere only while in use: nothing to read now.
    pub skipped: Vec<String>,
    /// `volguard.backup=false` on the volume or a container that mounts it.
    pub opted_out: Vec<String>,
}

/// Backup sources for Docker volumes, each with its definition from metadata.db and the
/// `volguard.exclude` labels of the volume and of the containers that mount it. With `all`
/// (`backup --all`), a volume whose data is mounted elsewhere only while in use is skipped
/// with the reason, and one that opted out is left out; a volume named explicitly is backed
/// up whatever its labels say, and one without data is an error. Every unknown `volguard.*`
/// label on these volumes and their containers is named as a warning.
pub fn volume_sources(
    docker_root: &std::path::Path,
    names: &[String],
    all: bool,
) -> Result<VolumeSources> {
    use crate::docker::{containers, labels};
    let (defs, warnings) = crate::docker::volumes::read_volumes(docker_root);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let (ctrs, _) = containers::read_containers(docker_root);
    let mut out = VolumeSources::default();
    for name in names {
        let src = match crate::docker::volume_source(docker_root, name, &defs)? {
            Ok(src) => src,
            Err(crate::docker::NotMounted(why)) if all => {
                out.skipped.push(why);
                continue;
            }
            Err(crate::docker::NotMounted(why)) => return Err(Error::Other(why)),
        };
        let owners = labels::owners(name, &src.meta.labels, &ctrs);
        let (opted_out_by, problems) = labels::opt_out(&owners);
        let unknown = owners
            .iter()
            .flat_map(|(owner, l)| labels::unknown(owner, l));
        for w in problems.into_iter().chain(unknown) {
            tracing::warn!("{w}");
        }
        if let (true, Some(by)) = (all, &opted_out_by) {
            out.opted_out
                .push(format!("{name}: {}=false on {by}", labels::BACKUP));
            continue;
        }
        out.sources.push(Source {
            name: name.clone(),
            path: src.data,
            origin: None,
            exclude_labels: owners
                .iter()
                .filter_map(|(owner, l)| Some((owner.clone(), l.get(labels::EXCLUDE)?.clone())))
                .collect(),
            docker_volume: Some(src.meta),
        });
    }
    Ok(out)
}
