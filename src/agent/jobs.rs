//! What one job of the agent does on its thread: a scheduled backup of one volume (hooks,
//! consistency, the backup) and the periodic check and restore drill. Retention is in
//! `retention.rs`.

use super::consistency::{self, Freeze, Stopped};
use super::retention::retention;
use super::scheduler::Maintenance;
use crate::config::agent::{AgentSettings, Consistency};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::{ops::backup, ops::check, ops::drill, ops::prune};

/// One scheduled backup: pre hook, consistency (freeze or stop the running containers that
/// mount it, only while it is read), the backup, post hook.
pub(super) fn backup_volume(
    ctx: &Ctx,
    repo: &Repository,
    settings: &AgentSettings,
    volume: &str,
    mode: Consistency,
) -> Result<backup::Report> {
    let sources = backup::volume_sources(&ctx.docker_root, &[volume.to_string()], false)?;
    let source = sources
        .sources
        .into_iter()
        .next()
        .ok_or_else(|| Error::Other(format!("volume {volume:?} has nothing to back up")))?;
    let hooks = settings.volume(volume);
    if let Some(h) = hooks {
        crate::hooks::run_hook(
            &h.pre,
            "pre",
            volume,
            &source.path,
            None,
            settings.hook_timeout,
        )?;
    }
    let result = read_consistently(ctx, repo, settings, &source, mode);
    if let Some(h) = hooks {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        if let Err(e) = crate::hooks::run_hook(
            &h.post,
            "post",
            volume,
            &source.path,
            Some(outcome),
            settings.hook_timeout,
        ) {
            tracing::error!("{e}");
            if result.is_ok() {
                return Err(e);
            }
        }
    }
    result
}

fn read_consistently(
    ctx: &Ctx,
    repo: &Repository,
    settings: &AgentSettings,
    source: &backup::Source,
    mode: Consistency,
) -> Result<backup::Report> {
    let users = consistency::users_of(&ctx.docker_root, &source.name);
    // Held until every file is read (or the backup ends): then containers run again.
    let guard: Option<Box<dyn Send>> = match mode {
        _ if users.is_empty() => None,
        Consistency::None => None,
        Consistency::Freeze => Some(Box::new(Freeze::start(&users, settings.freeze_timeout)?)),
        Consistency::Stop => Some(Box::new(Stopped::start(&users, settings.stop_timeout)?)),
    };
    let (read_tx, read_rx) = crossbeam_channel::bounded::<()>(1);
    let releaser = std::thread::Builder::new()
        .name("release".into())
        .spawn(move || {
            // Ends when the read is done or the backup is over (the sender is dropped).
            let _ = read_rx.recv();
            drop(guard);
        })
        .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
    let (mut index, marked) = prune::load_index_for_write(repo)?;
    let opts = backup::Options {
        tags: Vec::new(),
        host: ctx.host.clone(),
        time: None,
        progress: None,
        marked,
        wait_for_others: crate::repo::inflight::DEFAULT_WAIT,
        read_done: Some(read_tx),
        // The volume's labels and ignore file still apply (they come with the source).
        exclude: backup::exclude::Rules::default(),
        dry_run: false,
    };
    let result = backup::run(repo, &mut index, source, &opts);
    drop(opts);
    let _ = releaser.join();
    result
}

/// One periodic job.
pub(super) fn maintenance(
    ctx: &Ctx,
    repo: &Repository,
    settings: &AgentSettings,
    m: Maintenance,
) -> Result<()> {
    match m {
        Maintenance::Check => {
            let r = check::run(repo, settings.check_read_percent, None)?;
            for w in &r.warnings {
                tracing::warn!("check: {w}");
            }
            if r.errors.is_empty() {
                tracing::info!(
                    "check: {} packs, {} snapshots, {} packs read: no errors",
                    r.packs,
                    r.snapshots,
                    r.packs_read
                );
                Ok(())
            } else {
                for e in &r.errors {
                    tracing::error!("check: {e}");
                }
                Err(Error::Other(format!(
                    "check found {} error(s), first: {}; run `volguard check --read-data`",
                    r.errors.len(),
                    r.errors[0]
                )))
            }
        }
        Maintenance::Drill => {
            let (index, _) = repo.load_index()?;
            let volumes = drill::volumes_of_host(repo, &ctx.host)?;
            let opts = drill::Options {
                sample_percent: settings.drill_sample_percent,
                scratch_parent: crate::paths::state_dir().join("drill-scratch"),
            };
            std::fs::create_dir_all(&opts.scratch_parent)
                .map_err(|e| Error::io("cannot create", &opts.scratch_parent, e))?;
            let log = crate::paths::state_dir().join("drills.jsonl");
            let mut failed = Vec::new();
            for v in &volumes {
                let d = drill::run(repo, &index, v, &ctx.host, &opts)?;
                if let Err(e) = drill::record(&log, &d) {
                    tracing::warn!("drill result not recorded: {e}");
                }
                if !d.ok {
                    failed.push(v.clone());
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Error::Other(format!(
                    "restore drill failed for {}; see {}",
                    failed.join(", "),
                    log.display()
                )))
            }
        }
        Maintenance::Retention => retention(ctx, repo, settings),
    }
}
