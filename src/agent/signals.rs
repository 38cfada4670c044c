//! Signals: a thread turns SIGTERM, SIGINT and SIGHUP into events of the run loop;
//! SIGHUP reloads the config (a bad one is refused), SIGTERM and SIGINT stop the agent
//! within `shutdown_timeout`, thawing and restarting containers either way.

use crossbeam_channel::{Receiver, Sender};
use std::time::Instant;

use super::scheduler::{Agent, Event};
use super::{Loaded, consistency, load};
use crate::error::{Error, Result, exit};

pub(super) fn forward_signals(tx: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::Other(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

impl Agent {
    /// SIGHUP: a valid new config replaces the running one; an invalid one is refused with
    /// the reason, and the agent goes on as it was.
    pub(super) fn reload(&mut self, loaded: &mut Loaded) {
        self.notifier.reloading();
        match load(&self.g) {
            Ok(new) => {
                tracing::info!("config reloaded from {}", self.g.config.display());
                *loaded = new;
                self.refresh_volumes(loaded);
            }
            Err(e) => {
                self.metrics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .config_reloads_failed += 1;
                tracing::error!("config reload refused, the running config stays in force: {e}");
            }
        }
        self.notifier.ready("config reloaded");
        let activity = self
            .running
            .as_ref()
            .map_or("idle".to_string(), |r| r.0.clone());
        self.write_status(loaded, &activity);
    }

    /// Frozen containers are thawed and stopped ones started either way.
    pub(super) fn shutdown(&mut self, loaded: &Loaded, rx: &Receiver<Event>) -> i32 {
        let bound = loaded.settings.shutdown_timeout;
        if let Some((what, _)) = self.running.clone() {
            self.notifier
                .stopping(&format!("stopping: waiting up to {bound:?} for {what}"));
            tracing::info!("stopping: waiting up to {bound:?} for {what} to finish");
            let until = Instant::now() + bound;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Event::Done {
                        job,
                        result,
                        seconds,
                    }) => {
                        self.finished(loaded, job, *result, seconds);
                        break;
                    }
                    Ok(Event::Signal(_)) => continue,
                    Err(_) => {
                        tracing::warn!(
                            "stopping: abandoned {what} after {bound:?}; nothing half-done stays in the repository (its snapshot was not written), the next run resumes"
                        );
                        break;
                    }
                }
            }
        } else {
            self.notifier.stopping("stopping");
        }
        consistency::thaw_all();
        consistency::restart_all_stopped();
        self.write_status(loaded, "stopped");
        tracing::info!("agent stopped");
        exit::OK
    }
}
