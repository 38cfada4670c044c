//! The agent's run loop: it waits for a signal, a finished job or the next due time,
//! starts the most overdue job (backups first, then maintenance) on a thread of its own,
//! one at a time, and records what a finished job changed in the metrics and the status
//! file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::jobs::{backup_volume, maintenance};
use super::metrics::Metrics;
use super::notify::Notifier;
use super::status::{self, AgentStatus, JobStatus, VolumeStatus};
use super::{Loaded, now};
use crate::config::agent::{AgentSettings, Consistency};
use crate::config::schedule::Schedule;
use crate::context::Globals;
use crate::error::Result;
use crate::ops::backup;

/// Periodic jobs besides backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Maintenance {
    Check,
    Drill,
    Retention,
}

impl Maintenance {
    pub(super) const ALL: [Maintenance; 3] = [
        Maintenance::Retention,
        Maintenance::Check,
        Maintenance::Drill,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Maintenance::Check => "check",
            Maintenance::Drill => "drill",
            Maintenance::Retention => "retention",
        }
    }

    pub(super) fn schedule(self, s: &AgentSettings) -> Schedule {
        match self {
            Maintenance::Check => s.check_every,
            Maintenance::Drill => s.drill_every,
            Maintenance::Retention => s.retention.as_ref().map_or(Schedule::Off, |r| r.every),
        }
    }
}

#[derive(Debug)]
pub(super) enum Job {
    Backup(String),
    Maintenance(Maintenance),
}

pub(super) enum Event {
    Signal(i32),
    Done {
        job: Job,
        // Boxed: a backup report is large, and signals are sent far more often.
        result: Box<std::result::Result<Option<backup::Report>, String>>,
        seconds: f64,
    },
}

/// What the agent knows of one volume between runs.
pub(super) struct VolState {
    pub(super) schedule: Schedule,
    pub(super) consistency: Consistency,
    pub(super) last_success: Option<f64>,
    pub(super) last_failure: Option<f64>,
    pub(super) last_error: Option<String>,
    pub(super) jitter: Duration,
}

/// The running agent's state between events.
pub(super) struct Agent {
    pub(super) g: Globals,
    pub(super) started: f64,
    pub(super) volumes: BTreeMap<String, VolState>,
    pub(super) jobs: BTreeMap<Maintenance, JobStatus>,
    pub(super) metrics: Arc<Mutex<Metrics>>,
    pub(super) metrics_addr: Option<String>,
    pub(super) status_path: std::path::PathBuf,
    pub(super) notifier: Notifier,
    pub(super) tx: Sender<Event>,
    /// The job in progress and when it started.
    pub(super) running: Option<(String, Instant)>,
}

impl Agent {
    pub(super) fn main_loop(&mut self, loaded: &mut Loaded, rx: &Receiver<Event>) -> Result<i32> {
        let mut last_refresh = Instant::now();
        loop {
            let mut wait = loaded.settings.tick;
            if let Some(w) = self.notifier.watchdog_every {
                wait = wait.min(w);
            }
            if self.running.is_none()
                && let Some(due) = self.next_due(&loaded.settings)
            {
                wait = wait.min(Duration::from_secs_f64((due - now()).clamp(0.0, 3600.0)));
            }
            let event = select! {
                recv(rx) -> e => e.ok(),
                default(wait) => None,
            };
            self.notifier.watchdog();
            match event {
                Some(Event::Signal(s)) if s == signal_hook::consts::SIGHUP => self.reload(loaded),
                Some(Event::Signal(_)) => return Ok(self.shutdown(loaded, rx)),
                Some(Event::Done {
                    job,
                    result,
                    seconds,
                }) => self.finished(loaded, job, *result, seconds),
                None => {}
            }
            if last_refresh.elapsed() >= loaded.settings.tick {
                self.refresh_volumes(loaded);
                last_refresh = Instant::now();
            }
            if self.running.is_none() {
                self.start_due(loaded);
            }
        }
    }

    /// Reads the newest snapshot time of every volume of this host, and the last
    /// maintenance times from the previous status file, so a restart does not redo work.
    pub(super) fn restore_history(&mut self, loaded: &Loaded) {
        let previous = status::read(&self.status_path).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        });
        for m in Maintenance::ALL {
            let mut st = previous
                .as_ref()
                .and_then(|p| p.jobs.get(m.name()).cloned())
                .unwrap_or_default();
            // Never ran: the first run is one interval after the agent's first start.
            if st.figures.last_success_time.is_none() {
                st.figures.last_success_time = Some(self.started);
            }
            self.jobs.insert(m, st);
        }
        match loaded.repo.list_snapshots() {
            Ok((snaps, _)) => {
                let host = &loaded.ctx.host;
                for (_, s) in snaps.iter().filter(|(_, s)| &s.host == host) {
                    if let Ok(t) = crate::fmt::parse_time(&s.time) {
                        let t = t.unix_timestamp() as f64;
                        let v = self.volume_entry(&s.volume, &loaded.settings);
                        v.last_success = Some(v.last_success.map_or(t, |x| x.max(t)));
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot list snapshots, every volume counts as never backed up: {e}")
            }
        }
        // Figures of earlier runs carry over to the metrics.
        if let Some(p) = previous {
            let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            for (name, v) in p.volumes {
                m.volumes.insert(name, v.figures);
            }
        }
    }

    pub(super) fn volume_due(&self, v: &VolState) -> Option<f64> {
        crate::config::schedule::next_run(
            v.schedule,
            v.last_success,
            v.last_failure,
            v.jitter,
            self.started,
        )
    }

    fn job_due(&self, m: Maintenance, settings: &AgentSettings) -> Option<f64> {
        let st = self.jobs.get(&m)?;
        crate::config::schedule::next_run(
            m.schedule(settings),
            st.figures.last_success_time,
            st.last_failure,
            Duration::ZERO,
            self.started,
        )
    }

    fn next_due(&self, settings: &AgentSettings) -> Option<f64> {
        let vols = self.volumes.values().filter_map(|v| self.volume_due(v));
        let jobs = Maintenance::ALL
            .iter()
            .filter_map(|m| self.job_due(*m, settings));
        vols.chain(jobs).min_by(f64::total_cmp)
    }

    /// Starts the most overdue job, if any is due: backups first, then maintenance.
    fn start_due(&mut self, loaded: &Loaded) {
        let t = now();
        let volume = self
            .volumes
            .iter()
            .filter_map(|(n, v)| self.volume_due(v).filter(|d| *d <= t).map(|d| (d, n)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n.clone());
        let job = match volume {
            Some(v) => Job::Backup(v),
            None => match Maintenance::ALL
                .into_iter()
                .find(|m| self.job_due(*m, &loaded.settings).is_some_and(|d| d <= t))
            {
                Some(m) => Job::Maintenance(m),
                None => return,
            },
        };
        let label = match &job {
            Job::Backup(v) => format!("backing up {v}"),
            Job::Maintenance(m) => format!("running {}", m.name()),
        };
        tracing::info!("{label}");
        self.notifier.status(&label);
        self.running = Some((label.clone(), Instant::now()));
        self.write_status(loaded, &label);
        let tx = self.tx.clone();
        let ctx = Arc::clone(&loaded.ctx);
        let repo = Arc::clone(&loaded.repo);
        let settings = loaded.settings.clone();
        let consistency = match &job {
            Job::Backup(v) => self
                .volumes
                .get(v)
                .map_or(Consistency::None, |s| s.consistency),
            Job::Maintenance(_) => Consistency::None,
        };
        let spawned = std::thread::Builder::new()
            .name("job".into())
            .spawn(move || {
                let started = Instant::now();
                let result = match &job {
                    Job::Backup(v) => backup_volume(&ctx, &repo, &settings, v, consistency)
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    Job::Maintenance(m) => maintenance(&ctx, &repo, &settings, *m)
                        .map(|()| None)
                        .map_err(|e| e.to_string()),
                };
                let _ = tx.send(Event::Done {
                    job,
                    result: Box::new(result),
                    seconds: started.elapsed().as_secs_f64(),
                });
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a job thread: {e}");
            self.running = None;
        }
    }

    pub(super) fn finished(
        &mut self,
        loaded: &Loaded,
        job: Job,
        result: std::result::Result<Option<backup::Report>, String>,
        seconds: f64,
    ) {
        self.running = None;
        let t = now();
        let mut failure = None;
        {
            let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            match (&job, &result) {
                (Job::Backup(v), Ok(report)) => {
                    let f = m.volumes.entry(v.clone()).or_default();
                    f.backups_ok += 1;
                    f.last_success_time = Some(t);
                    f.last_duration_s = seconds;
                    if let Some(r) = report {
                        f.bytes_read += r.summary.bytes_read;
                        f.bytes_added += r.summary.bytes_added;
                        tracing::info!(
                            "backup of {v} done in {seconds:.1}s: snapshot {}, {} read, {} added{}",
                            r.short_id(),
                            crate::fmt::human_bytes(r.summary.bytes_read),
                            crate::fmt::human_bytes(r.summary.bytes_added),
                            if r.summary.errors.is_empty() {
                                String::new()
                            } else {
                                format!(", {} files skipped", r.summary.errors.len())
                            }
                        );
                    }
                }
                (Job::Backup(v), Err(e)) => {
                    let f = m.volumes.entry(v.clone()).or_default();
                    f.backups_failed += 1;
                    f.last_duration_s = seconds;
                    failure = Some(format!("backup of volume {v} failed: {e}"));
                }
                (Job::Maintenance(j), Ok(_)) => {
                    let f = m.jobs.entry(j.name()).or_default();
                    f.ok += 1;
                    f.last_success_time = Some(t);
                    f.last_duration_s = seconds;
                }
                (Job::Maintenance(j), Err(e)) => {
                    let f = m.jobs.entry(j.name()).or_default();
                    f.failed += 1;
                    f.last_duration_s = seconds;
                    failure = Some(format!("{} failed: {e}", j.name()));
                }
            }
            let figures = m.jobs.clone();
            drop(m);
            for (name, f) in figures {
                if let Some(st) = Maintenance::ALL
                    .iter()
                    .find(|x| x.name() == name)
                    .and_then(|x| self.jobs.get_mut(x))
                {
                    st.figures = f;
                }
            }
        }
        match &job {
            Job::Backup(v) => {
                let jitter = loaded.settings.jitter;
                if let Some(st) = self.volumes.get_mut(v) {
                    match &result {
                        Ok(_) => {
                            st.last_success = Some(t);
                            st.last_error = None;
                        }
                        Err(e) => {
                            st.last_failure = Some(t);
                            st.last_error = Some(e.clone());
                        }
                    }
                    st.jitter = draw_jitter(jitter);
                }
            }
            Job::Maintenance(m) => {
                if let Some(st) = self.jobs.get_mut(m) {
                    match &result {
                        Ok(_) => st.last_error = None,
                        Err(e) => {
                            st.last_failure = Some(t);
                            st.last_error = Some(e.clone());
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            tracing::error!("{f}");
            if let Some(url) = &loaded.settings.webhook {
                let body = serde_json::json!({
                    "event": "job_failed", "host": loaded.ctx.host,
                    "time": crate::repo::Repository::now(), "message": f,
                });
                if let Err(e) = crate::http::post_json(url, &body) {
                    tracing::warn!("{e}");
                }
            }
        }
        self.notifier.status("idle");
        self.write_status(loaded, "idle");
    }

    pub(super) fn write_status(&self, loaded: &Loaded, activity: &str) {
        let m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let volumes = self
            .volumes
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    VolumeStatus {
                        schedule: v.schedule.to_string(),
                        consistency: format!("{:?}", v.consistency).to_lowercase(),
                        last_success: v.last_success,
                        last_failure: v.last_failure,
                        last_error: v.last_error.clone(),
                        next_run: self.volume_due(v),
                        figures: m.volumes.get(n).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        let jobs = Maintenance::ALL
            .iter()
            .filter_map(|j| {
                let mut st = self.jobs.get(j)?.clone();
                st.schedule = j.schedule(&loaded.settings).to_string();
                st.next_run = self.job_due(*j, &loaded.settings);
                Some((j.name().to_string(), st))
            })
            .collect();
        let st = AgentStatus {
            pid: std::process::id(),
            started: self.started,
            updated: now(),
            repository: loaded.repo.location(),
            host: loaded.ctx.host.clone(),
            activity: activity.to_string(),
            metrics_addr: self.metrics_addr.clone(),
            volumes,
            jobs,
        };
        drop(m);
        if let Err(e) = status::write(&self.status_path, &st) {
            tracing::warn!("cannot write {}: {e}", self.status_path.display());
        }
    }
}

pub(super) fn draw_jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rand::random::<f64>() * max.as_secs_f64())
}
