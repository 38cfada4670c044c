//! Command handlers: resolve settings, open the repository, run the library operation,
//! print the result (text or `--json`) and decide the exit code.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde_json::json;

use crate::backend::LockMode;
use crate::cli::{
    BackupArgs, CheckArgs, Cli, Command, DiffArgs, DrillArgs, ExportArgs, ForgetArgs, ImportArgs,
    InitArgs, InventoryArgs, LayerDiffArgs, PruneArgs, RepairArgs, RestoreArgs, SnapshotsArgs,
    VerifyArgs,
};
use crate::config::{self};
use crate::context::{Ctx, Globals};
use crate::docker::containers;
use crate::error::{Error, Result, exit};
use crate::ops::diff::{self, Listing};
use crate::ops::forget::{self, KeepPolicy};
use crate::ops::restore::{Filter, RestoreOptions};
use crate::repo::format::crypto::Secret;
use crate::repo::format::index::Index;
use crate::repo::retention::RetentionConfig;
use crate::repo::{self, Repository};
use crate::{
    docker, docker::inventory, docker::layer_diff, ops::backup, ops::backup::layers, ops::check,
    ops::drill, ops::import, ops::prune, ops::restore, ops::restore::host,
};

pub fn run(cli: Cli) -> Result<i32> {
    // Generating docs needs no config: it runs in package builds, where none exists.
    if let Command::Generate(a) = &cli.command {
        return crate::cli::generate::run(a);
    }
    let globals = Globals {
        config: cli.config.clone(),
        repo: cli.repo.clone(),
        key_file: cli.key_file.clone(),
        docker_root: cli.docker_root.clone(),
        json: cli.json,
        quiet: cli.quiet,
    };
    if let Command::Agent(_) = cli.command {
        return crate::agent::run(&globals);
    }
    if let Command::Status(_) = cli.command {
        return crate::agent::status_cmd(cli.json);
    }
    let ctx = Ctx::load(&globals)?;
    match cli.command {
        Command::Init(a) => init(&ctx, &a),
        Command::Backup(a) => backup_cmd(&ctx, &a),
        Command::Snapshots(a) => snapshots(&ctx, &a),
        Command::Restore(a) => restore_cmd(&ctx, &a),
        Command::Export(a) => export(&ctx, &a),
        Command::Import(a) => import_cmd(&ctx, &a),
        Command::Drill(a) => drill_cmd(&ctx, &a),
        Command::Check(a) => check_cmd(&ctx, &a),
        Command::Forget(a) => forget_cmd(&ctx, &a),
        Command::Inventory(a) => inventory_cmd(&ctx, &a),
        Command::Prune(a) => prune_cmd(&ctx, &a),
        Command::Repair(a) => repair_cmd(&ctx, &a),
        Command::LayerDiff(a) => layer_diff_cmd(&ctx, &a),
        Command::Diff(a) => diff_cmd(&ctx, &a),
        Command::Verify(a) => verify_cmd(&ctx, &a),
        Command::Agent(_) | Command::Status(_) | Command::Generate(_) => {
            unreachable!("dispatched above")
        }
        Command::Watch(a) => crate::cli::watch::watch(
            &ctx.docker_root,
            &ctx.file.watch,
            ctx.json,
            &a,
            globals.child_args(),
        ),
        Command::Events(a) => crate::cli::watch::events(&ctx.file.watch, ctx.json, &a),
        Command::Bucket(a) => crate::cli::bucket::bucket_cmd(&ctx, &a),
    }
}

fn print_json(v: &serde_json::Value) {
    crate::outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn init(ctx: &Ctx, a: &InitArgs) -> Result<i32> {
    let retention = retention_from_args(a, &ctx.location)?;
    let backend = ctx.backend()?;
    let secret = match ctx.secret()? {
        Some(s) => s,
        None if ctx.embedded => {
            let p = config::default_key_file();
            if !p.exists() {
                crate::context::create_key_file(&p)?;
            }
            Secret::KeyFile(crate::secrets::read_secret_file(&p, "key file")?)
        }
        None => return Err(crate::context::no_secret(&backend.location())),
    };
    let repo = Repository::init_with_retention(backend, &secret, repo::DEFAULT_CHUNKER, retention)?;
    if ctx.json {
        print_json(
            &json!({"repository": repo.location(), "id": repo.config().id,
            "retention": repo.config().retention}),
        );
    } else {
        crate::outln!(
            "created repository {} (id {}); retention mode: {}",
            repo.location(),
            repo.config().id,
            repo.config().retention.describe()
        );
    }
    Ok(exit::OK)
}

/// The `--time` of `command`, parsed.
fn time_arg(command: &str, t: Option<&str>) -> Result<Option<time::OffsetDateTime>> {
    t.map(|t| {
        forget::parse_time(t).map_err(|e| {
            Error::Usage(format!(
                "{command} --time: {e}; write it like 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00"
            ))
        })
    })
    .transpose()
}

fn backup_cmd(ctx: &Ctx, a: &BackupArgs) -> Result<i32> {
    let time = time_arg("backup", a.time.as_deref())?;
    let mut skipped_volumes = Vec::new();
    let mut not_mounted = Vec::new();
    let sources: Vec<backup::Source> = if let Some(path) = &a.path {
        let name = a.name.clone().unwrap_or_default();
        vec![backup::Source {
            name,
            path: path.clone(),
            origin: None,
            docker_volume: None,
        }]
    } else if a.all {
        skipped_volumes = docker::volumes_without_data(&ctx.docker_root);
        let names = docker::list_volumes(&ctx.docker_root)?;
        backup::volume_sources(&ctx.docker_root, &names, Some(&mut not_mounted))?
    } else if a.volumes.is_empty() {
        if a.containers.is_empty() && !a.all_writable_layers {
            return Err(Error::Usage(
                "name volumes to back up, or use --all, --container NAME, --all-writable-layers or --path DIR --name NAME".into(),
            ));
        }
        Vec::new()
    } else {
        backup::volume_sources(&ctx.docker_root, &a.volumes, None)?
    };
    let mut sources = sources;
    let layers = layers::sources(&ctx.docker_root, &a.containers, a.all_writable_layers)
        .map_err(Error::Other)?;
    sources.extend(layers.sources);
    let repo = ctx.open()?;
    repo.enter_epoch(time.map_or_else(std::time::SystemTime::now, Into::into));
    let (mut index, marked) = prune::load_index_for_write(&repo)?;
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for src in &sources {
        let opts = backup::Options {
            tags: a.tags.clone(),
            host: ctx.host.clone(),
            time,
            progress: progress(ctx, None, &src.name),
            marked: marked.clone(),
            wait_for_others: crate::repo::inflight::DEFAULT_WAIT,
            read_done: None,
        };
        let span = tracing::info_span!("backup", volume = %src.name);
        let _g = span.enter();
        let result = backup::run(&repo, &mut index, src, &opts);
        if let Some(p) = &opts.progress {
            p.finish_and_clear();
        }
        match result {
            Ok(r) => reports.push(r),
            // `--all` races with `docker volume rm`: a volume that vanished was not lost.
            Err(Error::Io { source, .. })
                if (a.all || a.all_writable_layers)
                    && source.kind() == std::io::ErrorKind::NotFound =>
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
                failures.push((src.name.clone(), e.to_string()));
            }
        }
    }
    // A volume directory without _data cannot be backed up; say so and carry on. Only
    // those still without _data after the run count: dockerd creating or removing a volume
    // meanwhile passes through that state for a moment.
    if !skipped_volumes.is_empty() {
        let still = docker::volumes_without_data(&ctx.docker_root);
        skipped_volumes.retain(|w| still.contains(w));
    }
    skipped_volumes.extend(not_mounted);
    skipped_volumes.extend(layers.skipped);
    for w in &skipped_volumes {
        tracing::warn!("{w}");
    }
    let soft = reports.iter().any(|r| !r.summary.errors.is_empty()) || !skipped_volumes.is_empty();
    if ctx.json {
        let snaps: Vec<_> = reports.iter().map(report_json).collect();
        let failed: Vec<_> = failures
            .iter()
            .map(|(v, e)| json!({"volume": v, "error": e}))
            .collect();
        print_json(&json!({"snapshots": snaps, "failed": failed, "skipped": skipped_volumes}));
    } else {
        for r in &reports {
            crate::outln!("{}", report_line(r));
        }
        for (v, e) in &failures {
            crate::outln!("{v}: FAILED: {e}");
        }
        if sources.is_empty() {
            crate::outln!(
                "no Docker volumes found under {}/volumes",
                ctx.docker_root.display()
            );
        }
    }
    Ok(if !failures.is_empty() {
        exit::ERROR
    } else if soft {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

/// One backup's report as `backup --json` and `import --json` print it.
fn report_json(r: &backup::Report) -> serde_json::Value {
    let s = &r.summary;
    json!({
        "volume": r.volume,
        "snapshot_id": r.snapshot_id.to_hex(),
        "parent": r.parent.map(|p| p.to_hex()),
        "files": s.files,
        "files_new": s.files_new,
        "files_changed": s.files_changed,
        "files_unmodified": s.files_unmodified,
        "total_bytes": s.total_bytes,
        "bytes_read": s.bytes_read,
        "bytes_added": s.bytes_added,
        "duration_s": s.duration_s,
        "errors": s.errors,
        "retention": r.retention,
    })
}

/// One backup's report as one line for people.
fn report_line(r: &backup::Report) -> String {
    let s = &r.summary;
    format!(
        "{}: snapshot {} — {} files ({} new, {} changed, {} unmodified), {} read, {} added, {:.1}s{}",
        r.volume,
        r.snapshot_id.short(),
        s.files,
        s.files_new,
        s.files_changed,
        s.files_unmodified,
        crate::fmt::human_bytes(s.bytes_read),
        crate::fmt::human_bytes(s.bytes_added),
        s.duration_s,
        if s.errors.is_empty() {
            String::new()
        } else {
            format!(", {} errors (files skipped, listed above)", s.errors.len())
        }
    )
}

/// `import`: each archive is unpacked into a scratch directory and backed up from there
/// with the archive's time; the first failure stops the run (later archives would
/// otherwise be filed without the history before them).
fn import_cmd(ctx: &Ctx, a: &ImportArgs) -> Result<i32> {
    let explicit = time_arg("import", a.time.as_deref())?;
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
    // Epochs mode: imported snapshots keep their old times but their objects are created
    // now, so they belong to the current epoch.
    repo.enter_epoch(std::time::SystemTime::now());
    let (mut index, marked) = prune::load_index_for_write(&repo)?;
    let scratch_parent = a.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut done = Vec::new();
    for ar in &archives {
        let span = tracing::info_span!("import", archive = %ar.path.display());
        let _g = span.enter();
        let scratch = import::Scratch::new(&scratch_parent)?;
        let root = import::unpack(&ar.path, scratch.path(), a.strip_components)?;
        let source = backup::Source {
            name: a.volume.clone(),
            path: root,
            origin: Some(ar.path.display().to_string()),
            docker_volume: None,
        };
        let opts = backup::Options {
            tags: a.tags.clone(),
            host: ctx.host.clone(),
            time: Some(ar.time),
            progress: progress(ctx, None, &a.volume),
            marked: marked.clone(),
            wait_for_others: crate::repo::inflight::DEFAULT_WAIT,
            read_done: None,
        };
        let r = backup::run(&repo, &mut index, &source, &opts);
        if let Some(p) = &opts.progress {
            p.finish_and_clear();
        }
        let r = r.map_err(|e| {
            Error::Other(format!(
                "import of {} failed: {e}; {} archive(s) before it were imported",
                ar.path.display(),
                done.len()
            ))
        })?;
        if !ctx.json {
            crate::outln!(
                "{} ({} from its {}): {}",
                ar.path.display(),
                crate::fmt::format_time(ar.time),
                ar.time_from,
                report_line(&r)
            );
        }
        done.push((ar, r));
    }
    if ctx.json {
        let imported: Vec<_> = done
            .iter()
            .map(|(ar, r)| {
                let mut v = report_json(r);
                v["archive"] = json!(ar.path.display().to_string());
                v["time"] = json!(crate::fmt::format_time(ar.time));
                v["time_from"] = json!(ar.time_from);
                v
            })
            .collect();
        print_json(&json!({ "imported": imported }));
    }
    let soft = done.iter().any(|(_, r)| !r.summary.errors.is_empty());
    Ok(if soft { exit::PARTIAL } else { exit::OK })
}

/// `drill`: every volume is drilled even when one fails; exit 1 if any did.
fn drill_cmd(ctx: &Ctx, a: &DrillArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let volumes: Vec<String> = if a.volumes.is_empty() {
        let (snaps, _) = repo.list_snapshots()?;
        let mut v: Vec<String> = snaps
            .into_iter()
            .filter(|(_, s)| s.host == ctx.host)
            .map(|(_, s)| s.volume)
            .collect();
        v.sort();
        v.dedup();
        v
    } else {
        a.volumes.clone()
    };
    if volumes.is_empty() {
        return Err(Error::Other(format!(
            "no snapshots from host {:?} in {}: nothing to drill",
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
        if !ctx.json {
            crate::outln!(
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
                crate::outln!("  {line}");
            }
        }
        drills.push(d);
    }
    if ctx.json {
        print_json(&json!({ "drills": drills, "log": log.display().to_string() }));
    }
    Ok(if drills.iter().all(|d| d.ok) {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn snapshots(ctx: &Ctx, a: &SnapshotsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("{p}");
    }
    let (broken, mark_problems) = crate::ops::repair::load_broken(&repo)?;
    for p in &mark_problems {
        tracing::warn!("{p}");
    }
    let shown: Vec<_> = all
        .iter()
        .filter(|(_, s)| a.volume.as_ref().is_none_or(|v| &s.volume == v))
        .filter(|(_, s)| a.host.as_ref().is_none_or(|h| &s.host == h))
        .collect();
    if ctx.json {
        let v: Vec<_> = shown
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id.to_hex(), "time": s.time, "host": s.host, "volume": s.volume,
                    "source": s.source, "tags": s.tags, "parent": s.parent.map(|p| p.to_hex()),
                    "files": s.summary.files, "total_bytes": s.summary.total_bytes,
                    "bytes_added": s.summary.bytes_added, "errors": s.summary.errors.len(),
                    "broken": broken.get(&id.to_hex()).map(|b| &b.problems),
                })
            })
            .collect();
        print_json(&json!({ "snapshots": v }));
    } else {
        crate::outln!(
            "{:<10} {:<21} {:<16} {:<24} {:>8} {:>10}",
            "ID",
            "TIME",
            "HOST",
            "VOLUME",
            "FILES",
            "SIZE"
        );
        for (id, s) in &shown {
            crate::outln!(
                "{:<10} {:<21} {:<16} {:<24} {:>8} {:>10}{}",
                id.short(),
                s.time.get(..19).unwrap_or(&s.time),
                s.host,
                s.volume,
                s.summary.files,
                crate::fmt::human_bytes(s.summary.total_bytes),
                if broken.contains_key(&id.to_hex()) {
                    "  BROKEN (see `volguard check`)"
                } else {
                    ""
                }
            );
        }
        crate::outln!("{} snapshot(s)", shown.len());
    }
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn restore_cmd(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    if a.all {
        return restore_all_cmd(ctx, a);
    }
    if a.host.is_some() || a.at.is_some() {
        return Err(Error::Usage(
            "--host and --at choose what restore --all restores; for one volume pick a snapshot with --snapshot".into(),
        ));
    }
    let filter = Filter::new(&a.include, &a.exclude)?;
    if a.target.is_none() && a.into_volume.is_none() && a.to_tar.is_none() {
        return Err(Error::Usage(
            "say where to restore: --target DIR, --into-volume NAME or --to-tar FILE|-".into(),
        ));
    }
    let repo = ctx.open()?;
    // The snapshot first: in epochs mode finding it focuses reads on its epoch.
    let (sid, snap) = repo.find_snapshot(a.volume.as_deref().unwrap_or_default(), &a.snapshot)?;
    let index = prune::load_index_for_read(&repo)?;
    tracing::info!(
        "restoring snapshot {} of {} from {}",
        sid.short(),
        snap.volume,
        snap.time
    );
    if let Some(t) = &a.to_tar {
        let report = if t == "-" {
            restore::to_tar(&repo, &index, &snap, std::io::stdout().lock(), &filter)?
        } else {
            let f = std::fs::File::create(t).map_err(|e| Error::io("cannot create", t, e))?;
            restore::to_tar(&repo, &index, &snap, std::io::BufWriter::new(f), &filter)?
        };
        return finish_restore(ctx, &sid.to_hex(), t, report, t != "-");
    }
    let opts = RestoreOptions {
        filter,
        verify: a.verify,
        dry_run: a.dry_run,
        devices: a.devices,
        progress: None,
    };
    if let Some(target) = &a.target {
        let report = restore::to_dir(&repo, &index, &snap, target, &opts)?;
        return finish_restore(
            ctx,
            &sid.to_hex(),
            &target.display().to_string(),
            report,
            true,
        );
    }
    let volume = a.into_volume.as_deref().unwrap_or_default();
    let report = host::into_volume(
        &repo,
        &index,
        &snap,
        &ctx.docker_root,
        volume,
        &opts,
        a.force,
    )?;
    finish_restore(
        ctx,
        &sid.to_hex(),
        &format!("volume {volume}"),
        report,
        true,
    )
}

/// `restore --all`: every Docker volume of a host, recreated and restored, with a report.
fn restore_all_cmd(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    let host = a.host.clone().unwrap_or_else(|| ctx.host.clone());
    let at = time_arg("restore --at", a.at.as_deref())?.map(crate::fmt::format_time);
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("unreadable snapshot skipped: {p}");
    }
    let plan = host::plan(&all, &host, at.as_deref());
    if plan.volumes.is_empty() {
        let mut hosts: Vec<&str> = all.iter().map(|(_, s)| s.host.as_str()).collect();
        hosts.sort();
        hosts.dedup();
        return Err(Error::Other(format!(
            "no snapshot of a Docker volume from host {host:?}{} in {}; {}",
            at.as_deref()
                .map(|t| format!(" at or before {t}"))
                .unwrap_or_default(),
            repo.location(),
            if hosts.is_empty() {
                "the repository has no snapshots".to_string()
            } else {
                format!(
                    "hosts with snapshots: {} (choose one with --host)",
                    hosts.join(", ")
                )
            }
        )));
    }
    let index = prune::load_index_for_read(&repo)?;
    let total: u64 = plan
        .volumes
        .iter()
        .map(|p| p.snap.summary.total_bytes)
        .sum();
    let progress = progress(ctx, Some(total), "restore --all");
    let outcomes = host::restore_all(
        &repo,
        &index,
        &plan,
        &host::AllOptions {
            root: ctx.docker_root.clone(),
            force: a.force,
            progress: progress.clone(),
        },
    );
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if ctx.json {
        print_json(&json!({
            "host": host, "at": at, "docker_root": ctx.docker_root,
            "volumes": outcomes, "passed_over": plan.passed_over,
            "restored": outcomes.len() - failed, "failed": failed,
        }));
    } else {
        for o in &outcomes {
            let created = match o.created {
                Some(host::Created::Existing) => "existing volume",
                Some(host::Created::Dockerd) => "created by dockerd",
                Some(host::Created::Directory) => "created as a directory",
                None => "not created",
            };
            let what = match (&o.report, &o.error) {
                (_, Some(e)) => format!("FAILED: {e}"),
                (Some(r), None) => format!(
                    "{} files, {} dirs, {} restored and verified",
                    r.files,
                    r.dirs,
                    crate::fmt::human_bytes(r.bytes)
                ),
                (None, None) => "defined, no files written".to_string(),
            };
            crate::outln!(
                "{}: snapshot {} of {}, {created} ({} label(s), {} option(s)): {what} ({:.1}s)",
                o.volume,
                &o.snapshot_id[..8],
                o.snapshot_time,
                o.labels.len(),
                o.options.len(),
                o.seconds
            );
            for n in &o.notes {
                crate::outln!("  note: {n}");
            }
        }
        for p in &plan.passed_over {
            crate::outln!("not restored: {p}");
        }
        crate::outln!(
            "restore --all of host {host}: {} volume(s) restored, {failed} failed",
            outcomes.len() - failed
        );
    }
    Ok(if failed > 0 { exit::ERROR } else { exit::OK })
}

fn finish_restore(
    ctx: &Ctx,
    sid: &str,
    dest: &str,
    r: restore::RestoreReport,
    print_text: bool,
) -> Result<i32> {
    if ctx.json {
        print_json(&json!({
            "snapshot_id": sid, "destination": dest, "files": r.files, "dirs": r.dirs,
            "others": r.others, "hardlinks": r.hardlinks, "bytes": r.bytes,
            "verified_files": r.verified_files, "errors": r.errors, "planned": r.planned,
        }));
    } else {
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        for p in &r.planned {
            crate::outln!("would restore {p}");
        }
        if print_text {
            crate::outln!(
                "{}{} files, {} dirs, {} other entries, {} hard links, {} to {dest}{}",
                if r.planned.is_empty() {
                    "restored "
                } else {
                    "dry run: "
                },
                r.files,
                r.dirs,
                r.others,
                r.hardlinks,
                crate::fmt::human_bytes(r.bytes),
                if r.verified_files > 0 {
                    format!("; {} files verified", r.verified_files)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(if r.errors.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// zstd's own default level: fast enough not to slow the stream down.
const EXPORT_ZSTD_LEVEL: i32 = 3;

fn export(ctx: &Ctx, a: &ExportArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (_, snap) = repo.find_snapshot(&a.volume, &a.snapshot)?;
    let index = prune::load_index_for_read(&repo)?;
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
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(if report.errors.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn prune_cmd(ctx: &Ctx, a: &PruneArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let r = prune::run(
        &repo,
        &prune::Options {
            dry_run: a.dry_run,
            grace: a.grace,
            max_unused_percent: a.max_unused,
            host: ctx.host.clone(),
        },
    )?;
    if ctx.json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["dry_run"] = json!(a.dry_run);
        print_json(&v);
    } else {
        print_prune(&repo, &r, a.dry_run);
    }
    Ok(exit::OK)
}

fn print_prune(repo: &Repository, r: &prune::Report, dry_run: bool) {
    for p in &r.problems {
        tracing::warn!("{p}");
    }
    let would = if dry_run { "would be " } else { "" };
    crate::outln!(
        "{}: {} snapshots, {} packs; {} packs {would}deleted ({}), {} kept alive by newer snapshots",
        repo.location(),
        r.snapshots,
        r.packs,
        r.packs_deleted,
        crate::fmt::human_bytes(r.bytes_deleted),
        r.packs_kept_alive
    );
    crate::outln!(
        "{} packs {would}marked for deletion ({}), {} of them {would}repacked ({} blobs, {} copied)",
        r.packs_marked,
        crate::fmt::human_bytes(r.bytes_marked),
        r.packs_repacked,
        r.blobs_copied,
        crate::fmt::human_bytes(r.bytes_copied)
    );
    if r.packs_locked > 0 {
        let at = |t: u64| {
            crate::fmt::fmt_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        };
        let (first, last) = r.locked_until.unwrap_or_default();
        crate::outln!(
            "{} packs ({}) {}not deleted: under Object Lock retention until {} (the last until {}); a prune after that deletes them",
            r.packs_locked,
            crate::fmt::human_bytes(r.bytes_locked),
            if dry_run { "would be " } else { "" },
            at(first),
            at(last)
        );
    }
    for (packs, due) in &r.marks_pending {
        let due = time::OffsetDateTime::from_unix_timestamp(*due as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| due.to_string());
        crate::outln!(
            "{packs} marked packs become deletable at {due} (a later prune deletes them)"
        );
    }
}

fn repair_cmd(ctx: &Ctx, a: &RepairArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let r = crate::ops::repair::run(&repo, &crate::ops::repair::Options { dry_run: a.dry_run })?;
    if ctx.json {
        print_json(&serde_json::to_value(&r).unwrap_or_default());
    } else {
        let would = if r.dry_run { "would " } else { "" };
        for p in r.packs_unreadable.iter().chain(&r.blobs_damaged) {
            crate::outln!("damaged: {p}");
        }
        for s in &r.unreadable_snapshots {
            crate::outln!("unreadable snapshot object: {s}");
        }
        crate::outln!(
            "{}: {} packs read, {} indexed ({} blobs), {} left out (marked by prune); \
             {would}write {} index file(s), {would}delete {} old one(s)",
            repo.location(),
            r.packs_read,
            r.packs_indexed,
            r.blobs_indexed,
            r.packs_marked_by_prune,
            r.index_files_written.len(),
            r.index_files_deleted.len()
        );
        for b in &r.broken_snapshots {
            crate::outln!(
                "{would}mark broken: snapshot {} ({} {}): {} damaged path(s)",
                &b.id[..8],
                b.volume,
                b.time,
                b.problems.len()
            );
            for p in &b.problems {
                crate::outln!("  {p}");
            }
        }
        crate::outln!(
            "{} snapshot(s) checked, {} broken",
            r.snapshots_checked,
            r.broken_snapshots.len()
        );
    }
    let damaged = !r.packs_unreadable.is_empty()
        || !r.blobs_damaged.is_empty()
        || !r.broken_snapshots.is_empty()
        || !r.unreadable_snapshots.is_empty();
    Ok(if damaged { exit::PARTIAL } else { exit::OK })
}

fn check_cmd(ctx: &Ctx, a: &CheckArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let read_percent = match (a.read_data, a.read_data_subset) {
        (true, _) => 100.0,
        (false, Some(p)) => p,
        (false, None) => 0.0,
    };
    let pb = if read_percent > 0.0 {
        progress(ctx, Some(0), "reading")
    } else {
        None
    };
    let mut r = check::run(&repo, read_percent, pb.as_ref())?;
    if let Some(p) = pb {
        p.finish_and_clear();
    }
    // A versioned bucket can hide objects behind delete markers; say so.
    r.warnings
        .extend(crate::repo::retention::version_warnings(&repo)?);
    if ctx.json {
        print_json(&serde_json::to_value(&r).unwrap_or_default());
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        for e in &r.errors {
            crate::outln!("error: {e}");
        }
        crate::outln!(
            "{}: {} packs, {} blobs, {} snapshots{}; {} error(s)",
            repo.location(),
            r.packs,
            r.blobs,
            r.snapshots,
            if read_percent > 0.0 {
                format!(
                    ", {} packs read, {} blobs verified",
                    r.packs_read, r.blobs_verified
                )
            } else {
                String::new()
            },
            r.errors.len()
        );
    }
    Ok(if r.errors.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn forget_cmd(ctx: &Ctx, a: &ForgetArgs) -> Result<i32> {
    let policy = KeepPolicy {
        last: a.keep_last.unwrap_or_default(),
        hourly: a.keep_hourly.unwrap_or_default(),
        daily: a.keep_daily.unwrap_or_default(),
        weekly: a.keep_weekly.unwrap_or_default(),
        monthly: a.keep_monthly.unwrap_or_default(),
        yearly: a.keep_yearly.unwrap_or_default(),
        within: a.keep_within.unwrap_or_default(),
        tags: a
            .keep_tag
            .iter()
            .map(|t| forget::parse_tag_set(t))
            .collect(),
    };
    if policy.is_empty() {
        return Err(Error::Usage(
            "forget needs at least one keep rule: --keep-last, --keep-hourly, --keep-daily, \
             --keep-weekly, --keep-monthly, --keep-yearly (N, or -1 for all), --keep-within \
             DURATION or --keep-tag TAGS. A count or duration of 0 is no rule; nothing was \
             changed"
                .into(),
        ));
    }
    let repo = ctx.open()?;
    let (all, problems) = repo.list_snapshots()?;
    let mut partial = false;
    for p in &problems {
        tracing::warn!("{p}; that snapshot is left alone");
        partial = true;
    }
    let (candidates, unparsed) = forget::candidates(all, a.volume.as_deref(), a.host.as_deref());
    partial |= unparsed;
    let plan = forget::plan(&candidates, &policy, time::OffsetDateTime::now_utc());
    let emptied: Vec<String> = plan
        .emptied_groups()
        .iter()
        .map(|g| format!("volume {} of host {}", g.volume, g.host))
        .collect();
    let refuse = !emptied.is_empty();
    let (forgotten, failures) = if a.dry_run || refuse {
        (0, Vec::new())
    } else {
        forget::execute(&repo, &plan)
    };
    let pruned = if a.prune && !refuse {
        Some(prune::run(
            &repo,
            &prune::Options {
                dry_run: a.dry_run,
                grace: a.grace,
                max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
                host: ctx.host.clone(),
            },
        )?)
    } else {
        None
    };
    if ctx.json {
        let mut v = forget::plan_json(&plan, &policy, a.dry_run, forgotten, &failures);
        if let Some(r) = &pruned {
            v["prune"] = serde_json::to_value(r).unwrap_or_default();
        }
        print_json(&v);
    } else {
        crate::out!("{}", forget::plan_table(&plan, &policy));
        for f in &failures {
            if f.locked {
                crate::outln!("snapshot {}: kept for now: {}", f.id.short(), f.error);
            } else {
                crate::outln!("snapshot {}: NOT forgotten: {}", f.id.short(), f.error);
            }
        }
        let would = plan.to_remove().count();
        if a.dry_run {
            crate::outln!("dry run: would forget {would} snapshot(s); nothing was deleted");
        } else if !refuse {
            crate::outln!(
                "forgot {forgotten} snapshot(s); the data only they used stays in the repository until it is pruned"
            );
        }
        if let Some(r) = &pruned {
            print_prune(&repo, r, a.dry_run);
        }
    }
    if refuse {
        return Err(Error::Other(format!(
            "refusing to forget: the rules keep no snapshot of {}, so its whole history would go; \
             check the --keep-tag spelling, or add a rule such as --keep-last 1. Nothing was deleted",
            emptied.join(", ")
        )));
    }
    // Object-lock mode: a snapshot still under retention is not forgettable yet; that is
    // the mode working, not a failure (a daily forget would otherwise always fail).
    Ok(if failures.iter().any(|f| !f.locked) {
        exit::ERROR
    } else if partial {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

fn inventory_cmd(ctx: &Ctx, a: &InventoryArgs) -> Result<i32> {
    let root = &ctx.docker_root;
    if !root.join("volumes").is_dir() && !root.join("containers").is_dir() {
        return Err(Error::Other(format!(
            "{} has neither volumes/ nor containers/: not a Docker data root (set --docker-root)",
            root.display()
        )));
    }
    let inv = inventory::collect(root, &inventory::Options { sizes: a.sizes });
    for w in &inv.warnings {
        tracing::warn!("{w}");
    }
    if ctx.json {
        let v = serde_json::to_value(&inv)
            .map_err(|e| Error::Other(format!("cannot encode the inventory: {e}")))?;
        print_json(&v);
    } else {
        crate::out!("{}", inventory_table(&inv, a.sizes));
    }
    Ok(if inv.warnings.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn inventory_table(inv: &inventory::Inventory, sizes: bool) -> String {
    fn table(rows: &[Vec<String>]) -> String {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
    let yes = |b: bool| if b { "yes" } else { "-" }.to_string();
    let mut rows = vec![
        vec![
            "VOLUME",
            "DRIVER",
            "ANON",
            "DANGLING",
            "MOUNTPOINT",
            "SIZE",
            "FILES",
            "USED BY",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    ];
    for v in &inv.volumes {
        let used: Vec<String> = v
            .containers
            .iter()
            .map(|c| {
                format!(
                    "{}:{}{}{}",
                    c.name,
                    c.destination,
                    if c.rw { "" } else { ":ro" },
                    if c.running { " (running)" } else { "" }
                )
            })
            .collect();
        let mountpoint = match (&v.data_mount.mount_type, v.data_mount.mounted_now) {
            (Some(t), true) => format!("{t}, mounted"),
            (Some(t), false) => t.clone(),
            (None, true) => "mounted".to_string(),
            (None, false) => "-".to_string(),
        };
        rows.push(vec![
            v.name.clone(),
            v.driver.clone(),
            yes(v.anonymous),
            yes(v.dangling),
            mountpoint,
            v.size_bytes.map_or("-".into(), crate::fmt::human_bytes),
            v.file_count.map_or("-".into(), |n| n.to_string()),
            if used.is_empty() {
                "-".into()
            } else {
                used.join(", ")
            },
        ]);
    }
    if !sizes {
        for r in &mut rows {
            r.drain(5..7);
        }
    }
    let mut out = table(&rows);
    out.push('\n');
    let mut rows = vec![
        ["CONTAINER", "NAME", "IMAGE", "RUNNING", "MOUNTS"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for c in &inv.containers {
        let mounts: Vec<String> = c
            .mounts
            .iter()
            .map(|m| {
                let what = match m.kind {
                    containers::MountKind::Volume => m.name.clone().unwrap_or_default(),
                    containers::MountKind::Bind => format!("bind {}", m.source),
                    containers::MountKind::Tmpfs => "tmpfs".to_string(),
                    containers::MountKind::Other => "other".to_string(),
                };
                format!(
                    "{}={what}{}{}",
                    m.destination,
                    if m.rw { "" } else { " (ro)" },
                    if m.backed_up { "" } else { " [not backed up]" }
                )
            })
            .collect();
        rows.push(vec![
            c.id.chars().take(12).collect(),
            c.name.clone(),
            c.image.clone(),
            yes(c.running),
            if mounts.is_empty() {
                "-".into()
            } else {
                mounts.join(", ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn layer_diff_cmd(ctx: &Ctx, a: &LayerDiffArgs) -> Result<i32> {
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
        let v = serde_json::to_value(&report)
            .map_err(|e| Error::Other(format!("cannot encode the layer diff: {e}")))?;
        print_json(&v);
    } else {
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

/// One side of `diff`: its entries, how to name it, and what could not be read.
struct DiffSide {
    listing: Listing,
    label: serde_json::Value,
    text: String,
    warnings: Vec<String>,
}

/// Repository and index, opened once and only if a side is a snapshot.
type RepoAndIndex = Option<(Repository, Index)>;

fn diff_side(ctx: &Ctx, opened: &mut RepoAndIndex, volume: &str, which: &str) -> Result<DiffSide> {
    if which == "live" {
        let data = docker::volume_data(&ctx.docker_root, volume)?;
        let (listing, warnings) = diff::live_listing(&data)?;
        return Ok(DiffSide {
            listing,
            label: json!({"live": data.display().to_string()}),
            text: format!("live {}", data.display()),
            warnings,
        });
    }
    if opened.is_none() {
        let repo = ctx.open()?;
        let index = prune::load_index_for_read(&repo)?;
        *opened = Some((repo, index));
    }
    let (repo, index) = opened.as_ref().expect("opened above");
    let (id, snap) = repo.find_snapshot(volume, which)?;
    let (listing, warnings) = diff::snapshot_listing(repo, index, &snap)?;
    Ok(DiffSide {
        listing,
        label: json!({"snapshot": id.to_hex(), "time": snap.time}),
        text: format!("snapshot {} ({})", &id.to_hex()[..8], snap.time),
        warnings,
    })
}

fn short_hash(h: &Option<String>) -> String {
    h.as_deref()
        .map(|s| s[..16.min(s.len())].to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_comparison(c: &diff::Comparison, skip: &std::collections::HashSet<String>) {
    for a in &c.added {
        crate::outln!(
            "A  {}  {} {} B mode {} owner {}:{} blake3 {}",
            a.path,
            a.entry.kind,
            a.entry.size,
            a.entry.mode,
            a.entry.uid,
            a.entry.gid,
            short_hash(&a.entry.blake3)
        );
    }
    for r in &c.removed {
        crate::outln!(
            "D  {}  {} {} B blake3 {}",
            r.path,
            r.entry.kind,
            r.entry.size,
            short_hash(&r.entry.blake3)
        );
    }
    for m in &c.modified {
        if skip.contains(&m.path) {
            continue;
        }
        let details: Vec<String> = m
            .changes
            .iter()
            .map(|what| match *what {
                "content" => format!(
                    "content ({} B blake3 {} -> {} B blake3 {})",
                    m.from.size,
                    short_hash(&m.from.blake3),
                    m.to.size,
                    short_hash(&m.to.blake3)
                ),
                "mode" => format!("mode ({} -> {})", m.from.mode, m.to.mode),
                "owner" => format!(
                    "owner ({}:{} -> {}:{})",
                    m.from.uid, m.from.gid, m.to.uid, m.to.gid
                ),
                "mtime" => format!("mtime ({} -> {})", m.from.mtime, m.to.mtime),
                "type" => format!("type ({} -> {})", m.from.kind, m.to.kind),
                other => other.to_string(),
            })
            .collect();
        crate::outln!("M  {}  {}", m.path, details.join(", "));
    }
}

fn diff_cmd(ctx: &Ctx, a: &DiffArgs) -> Result<i32> {
    let mut opened = None;
    let from = diff_side(ctx, &mut opened, &a.volume, &a.from)?;
    let to = diff_side(ctx, &mut opened, &a.volume, &a.to)?;
    let c = diff::compare(&from.listing, &to.listing);
    let warnings: Vec<String> = from.warnings.iter().chain(&to.warnings).cloned().collect();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if ctx.json {
        print_json(&json!({
            "volume": a.volume,
            "from": from.label,
            "to": to.label,
            "added": c.added,
            "removed": c.removed,
            "modified": c.modified,
            "warnings": warnings,
        }));
    } else {
        crate::outln!("{}: {} -> {}", a.volume, from.text, to.text);
        print_comparison(&c, &Default::default());
        crate::outln!(
            "{} added, {} removed, {} modified",
            c.added.len(),
            c.removed.len(),
            c.modified.len()
        );
    }
    Ok(if warnings.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn verify_cmd(ctx: &Ctx, a: &VerifyArgs) -> Result<i32> {
    let mut opened = None;
    let snap = diff_side(ctx, &mut opened, &a.volume, "latest")?;
    let live = diff_side(ctx, &mut opened, &a.volume, "live")?;
    let tampered = diff::tampered(&snap.listing, &live.listing);
    let unverifiable = diff::unhashed(&snap.listing);
    let c = diff::compare(&snap.listing, &live.listing);
    let warnings: Vec<String> = snap
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
    let mark_cleared = tampered.is_empty()
        && warnings.is_empty()
        && crate::watch::alerts::clear_verify_mark(&crate::paths::state_dir(), &a.volume)
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot clear the verify-needed mark of {} in {}: {e}",
                    a.volume,
                    crate::paths::state_dir().display()
                );
                false
            });
    if ctx.json {
        print_json(&json!({
            "verify_mark_cleared": mark_cleared,
            "volume": a.volume,
            "snapshot": snap.label,
            "live": live.label,
            "tampered": tampered,
            "added": c.added,
            "removed": c.removed,
            "modified": c.modified,
            "unverifiable_files": unverifiable,
            "warnings": warnings,
        }));
    } else {
        for t in &tampered {
            crate::outln!(
                "TAMPERED {}: content differs from the snapshot (blake3 {} -> {}) while size ({} B) and mtime ({}) are unchanged",
                t.path,
                &t.snapshot_blake3[..16],
                &t.live_blake3[..16],
                t.size,
                t.mtime
            );
        }
        let skip = tampered.iter().map(|t| t.path.clone()).collect();
        print_comparison(&c, &skip);
        if unverifiable > 0 {
            crate::outln!(
                "{unverifiable} file(s) of the snapshot carry no content hash (older volguard): their content was compared by size only"
            );
        }
        if tampered.is_empty() {
            crate::outln!(
                "{}: no unexplained change against {} ({} added, {} removed, {} modified with their metadata)",
                a.volume,
                snap.text,
                c.added.len(),
                c.removed.len(),
                c.modified.len()
            );
            if mark_cleared {
                crate::outln!(
                    "{}: the watcher's verify-needed mark (events may have been lost) is cleared",
                    a.volume
                );
            }
        } else {
            crate::outln!(
                "{}: {} file(s) changed without a trace in their metadata since {}; restore them with `volguard restore {} --include PATH ...` and find out who wrote them",
                a.volume,
                tampered.len(),
                snap.text,
                a.volume
            );
        }
    }
    Ok(if !tampered.is_empty() {
        exit::ERROR
    } else if warnings.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// A progress bar on a terminal, never in --json, --quiet or a log.
fn progress(ctx: &Ctx, len: Option<u64>, what: &str) -> Option<indicatif::ProgressBar> {
    if ctx.quiet || ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    Some(pb)
}

/// The retention mode `init` asked for, checked against where the repository goes.
fn retention_from_args(a: &InitArgs, location: &crate::repo::Location) -> Result<RetentionConfig> {
    let retain = a
        .retain_seconds
        .or(a.retain_days.map(|d| d.saturating_mul(86_400)));
    let lock_mode = match a.lock_mode.as_str() {
        "governance" => LockMode::Governance,
        _ => LockMode::Compliance,
    };
    match a.retention_mode.as_str() {
        "none" => {
            if retain.is_some() {
                return Err(Error::Usage(
                    "--retain-days only means something with --retention-mode object-lock or \
                     epochs"
                        .into(),
                ));
            }
            Ok(RetentionConfig::None)
        }
        "object-lock" => {
            let Some(retain_secs) = retain else {
                return Err(Error::Usage(
                    "--retention-mode object-lock needs --retain-days N: how long every \
                     snapshot must be kept at least"
                        .into(),
                ));
            };
            if let crate::repo::Location::Local(p) = location {
                return Err(Error::Usage(format!(
                    "--retention-mode object-lock needs an S3 bucket with Object Lock enabled; \
                     {} is a local directory",
                    p.display()
                )));
            }
            Ok(RetentionConfig::ObjectLock {
                retain_secs,
                lock_mode,
            })
        }
        "epochs" => {
            let Some(retain_secs) = retain else {
                return Err(Error::Usage(
                    "--retention-mode epochs needs --retain-days N: how long every snapshot \
                     must be kept at least"
                        .into(),
                ));
            };
            Ok(RetentionConfig::Epochs {
                retain_secs,
                epoch_secs: a.epoch_days.saturating_mul(86_400),
            })
        }
        other => Err(Error::Usage(format!(
            "--retention-mode {other} is not known; use none, object-lock or epochs"
        ))),
    }
}
