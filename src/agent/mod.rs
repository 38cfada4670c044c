//! `volguard agent`: the long-running service. It backs up every selected volume on its
//! schedule (one job at a time, so never two backups of one volume), keeps volumes that
//! running containers use consistent while reading them, runs the periodic check, restore
//! drill and retention, serves metrics, writes its status file, and speaks systemd's notify
//! protocol (READY, STATUS, WATCHDOG). SIGHUP reloads the config (a bad one is refused and
//! the running one kept); SIGTERM lets a running job finish for `shutdown_timeout`, then
//! abandons it, which is safe because a snapshot is written last.
//!
//! This file starts the agent (config, priority, panic hook, metrics, watcher) and hands
//! over to the run loop. The parts: `scheduler` (the loop: what is due, one job at a
//! time, what a finished job changes), `volumes` (which volumes, with which schedule and
//! consistency mode), `jobs` (a scheduled backup, check and drill), `retention` (the
//! forget and prune step), `signals` (SIGHUP reload, SIGTERM shutdown), `watcher`,
//! `status` (the status file and `volguard status`), `host` (host and process facts
//! through sysinfo), `metrics`, `notify`, `consistency`.

pub mod consistency;
pub mod host;
mod jobs;
pub mod metrics;
pub mod notify;
mod retention;
mod scheduler;
mod signals;
pub mod status;
mod volumes;
mod watcher;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use self::status::{StatusReport, report as status_report};

use self::metrics::Metrics;
use self::notify::Notifier;
use self::scheduler::{Agent, Event};
use self::signals::forward_signals;
use self::watcher::start_watcher;
use crate::config::agent::AgentSettings;
use crate::context::{Ctx, Globals};
use crate::error::{Error, Result};
use crate::repo::Repository;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Everything that changes on SIGHUP.
struct Loaded {
    ctx: Arc<Ctx>,
    settings: AgentSettings,
    repo: Arc<Repository>,
}

fn load(g: &Globals) -> Result<Loaded> {
    // FileConfig::load has validated the [agent] table, naming file, line and key.
    let ctx = Ctx::load(g)?;
    let settings = ctx.file.agent.clone();
    let repo = Arc::new(ctx.open()?);
    Ok(Loaded {
        ctx: Arc::new(ctx),
        settings,
        repo,
    })
}

/// Lowers the agent's CPU and I/O priority; threads started later inherit both.
fn be_nice(nice: i32, io_idle: bool) {
    // SAFETY: setpriority and the ioprio_set syscall only change this thread's scheduling
    // attributes; no memory is passed.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            tracing::warn!("cannot lower the CPU priority to nice {nice}");
        }
        // IOPRIO_WHO_PROCESS = 1, IOPRIO_CLASS_IDLE = 3 in the top bits (linux/ioprio.h).
        if io_idle && libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13) != 0 {
            tracing::warn!("cannot set the idle I/O class");
        }
    }
}

/// `volguard agent`. Exits 0 after SIGTERM, 1 when it cannot start (bad config, no
/// repository), saying why.
pub(crate) fn run(g: &Globals) -> Result<i32> {
    let notifier = Notifier::from_env();
    let mut loaded = load(g).map_err(|e| Error::Other(format!("{e}; the agent does not start")))?;
    be_nice(loaded.settings.nice, loaded.settings.io_idle);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A panic aborts the process (systemd restarts it): containers must not stay
        // frozen or stopped behind it.
        consistency::thaw_all();
        consistency::restart_all_stopped();
        previous_hook(info);
    }));

    let (tx, rx) = crossbeam_channel::unbounded::<Event>();
    forward_signals(tx.clone())?;
    let metrics = Arc::new(Mutex::new(Metrics {
        started: now(),
        ..Default::default()
    }));
    let metrics_addr = if loaded.settings.metrics_listen.is_empty() {
        None
    } else {
        let addr =
            metrics::serve(&loaded.settings.metrics_listen, Arc::clone(&metrics)).map_err(|e| {
                Error::Other(format!(
                    "agent.metrics_listen {}: {e}; the agent does not start",
                    loaded.settings.metrics_listen
                ))
            })?;
        tracing::info!("metrics on http://{addr}/metrics");
        Some(addr.to_string())
    };

    let watcher = start_watcher(g, &loaded, Arc::clone(&metrics));
    let mut agent = Agent {
        g: g.clone(),
        started: now(),
        volumes: BTreeMap::new(),
        jobs: BTreeMap::new(),
        metrics,
        metrics_addr,
        status_path: status::path(),
        notifier,
        tx,
        running: None,
    };
    agent.restore_history(&loaded);
    agent.refresh_volumes(&loaded);
    agent.write_status(&loaded, "idle");
    agent.notifier.ready(&format!(
        "watching {} volume(s), repository {}",
        agent.volumes.len(),
        loaded.repo.location()
    ));
    tracing::info!(
        "agent started: {} volume(s), repository {}",
        agent.volumes.len(),
        loaded.repo.location()
    );
    let code = agent.main_loop(&mut loaded, &rx);
    if let Some((stop, thread)) = watcher {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = thread.join();
    }
    code
}
