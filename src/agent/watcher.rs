//! The file watcher as a thread of the agent, its foreign writes and lost events
//! counted in the agent's metrics.

use std::sync::{Arc, Mutex};

use super::Loaded;
use super::metrics::Metrics;
use crate::context::Globals;

/// The watcher on a thread of its own, with the `[watch]` settings the agent started
/// with (a reload does not restart it). Foreign writes and lost events are counted in the
/// metrics; the watcher itself logs and sends its warnings. A watcher that cannot run (not
/// root, an old kernel) is a warning: backups go on without it.
pub(super) fn start_watcher(
    g: &Globals,
    loaded: &Loaded,
    metrics: Arc<Mutex<Metrics>>,
) -> Option<(
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
)> {
    if !loaded.settings.watch {
        return None;
    }
    let opts = crate::watch::WatchOptions {
        docker_root: loaded.ctx.docker_root.clone(),
        state_dir: crate::paths::state_dir(),
        settings: loaded.ctx.file.watch.clone(),
        volguard_args: g.child_args(),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut sink = |n: crate::watch::Notice| {
                let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                match n {
                    crate::watch::Notice::Event(e) if e.warning || e.rate_limited => {
                        m.volumes
                            .entry(e.volume.clone())
                            .or_default()
                            .foreign_writes += 1;
                    }
                    crate::watch::Notice::Lost { .. } => m.events_lost += 1,
                    _ => {}
                }
            };
            if let Err(e) = crate::watch::run(&opts, &flag, &mut sink) {
                tracing::warn!("the watcher is not running: {e}");
            }
        })
        .map_err(|e| tracing::warn!("cannot start the watcher: {e}"))
        .ok()?;
    Some((stop, thread))
}
