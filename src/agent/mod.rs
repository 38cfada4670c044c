//! `volguard agent`: the long-running service. It backs up every selected volume on its
//! schedule (one job at a time, so never two backups of one volume), keeps volumes that
//! running containers use consistent while reading them, runs the periodic check, restore
//! drill and retention, serves metrics, writes its status file, and speaks systemd's notify
//! protocol (READY, STATUS, WATCHDOG). SIGHUP reloads the config (a bad one is refused and
//! the running one kept); SIGTERM lets a running job finish for `shutdown_timeout`, then
//! abandons it, which is safe because a snapshot is written last.

pub mod consistency;
pub mod metrics;
pub mod notify;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use self::consistency::{Freeze, Stopped};
use self::metrics::Metrics;
use self::notify::Notifier;
use self::status::{AgentStatus, JobStatus, VolumeStatus};
use crate::config::agent::{AgentSettings, Consistency};
use crate::config::schedule::{SCHEDULE_LABEL, Schedule};
use crate::context::{Ctx, Globals};
use crate::docker::{self, containers};
use crate::error::{Error, Result, exit};
use crate::repo::Repository;
use crate::{ops::backup, ops::check, ops::drill, ops::forget, ops::prune};

/// The label (on a volume or a container mounting it) that picks the consistency mode.
pub const CONSISTENCY_LABEL: &str = "volguard.consistency";
/// `volguard.stop=true` on a container: stop it while its volumes are read.
pub const STOP_LABEL: &str = "volguard.stop";

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Periodic jobs besides backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Maintenance {
    Check,
    Drill,
    Retention,
}

impl Maintenance {
    const ALL: [Maintenance; 3] = [
        Maintenance::Retention,
        Maintenance::Check,
        Maintenance::Drill,
    ];

    fn name(self) -> &'static str {
        match self {
            Maintenance::Check => "check",
            Maintenance::Drill => "drill",
            Maintenance::Retention => "retention",
        }
    }

    fn schedule(self, s: &AgentSettings) -> Schedule {
        match self {
            Maintenance::Check => s.check_every,
            Maintenance::Drill => s.drill_every,
            Maintenance::Retention => s.retention.as_ref().map_or(Schedule::Off, |r| r.every),
        }
    }
}

#[derive(Debug)]
enum Job {
    Backup(String),
    Maintenance(Maintenance),
}

enum Event {
    Signal(i32),
    Done {
        job: Job,
        // Boxed: a backup report is large, and signals are sent far more often.
        result: Box<std::result::Result<Option<backup::Report>, String>>,
        seconds: f64,
    },
}

/// What the agent knows of one volume between runs.
struct VolState {
    schedule: Schedule,
    consistency: Consistency,
    last_success: Option<f64>,
    last_failure: Option<f64>,
    last_error: Option<String>,
    jitter: Duration,
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

/// The watcher on a thread of its own, with the `[watch]` settings the agent started
/// with (a reload does not restart it). Foreign writes and lost events are counted in the
/// metrics; the watcher itself logs and sends its warnings. A watcher that cannot run (not
/// root, an old kernel) is a warning: backups go on without it.
fn start_watcher(
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

fn forward_signals(tx: Sender<Event>) -> Result<()> {
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

struct Agent {
    g: Globals,
    started: f64,
    volumes: BTreeMap<String, VolState>,
    jobs: BTreeMap<Maintenance, JobStatus>,
    metrics: Arc<Mutex<Metrics>>,
    metrics_addr: Option<String>,
    status_path: std::path::PathBuf,
    notifier: Notifier,
    tx: Sender<Event>,
    /// The job in progress and when it started.
    running: Option<(String, Instant)>,
}

impl Agent {
    fn main_loop(&mut self, loaded: &mut Loaded, rx: &Receiver<Event>) -> Result<i32> {
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
    fn restore_history(&mut self, loaded: &Loaded) {
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

    fn volume_entry(&mut self, name: &str, settings: &AgentSettings) -> &mut VolState {
        self.volumes
            .entry(name.to_string())
            .or_insert_with(|| VolState {
                schedule: settings.schedule,
                consistency: settings.consistency,
                last_success: None,
                last_failure: None,
                last_error: None,
                jitter: draw_jitter(settings.jitter),
            })
    }

    /// Lists the volumes again (new ones are picked up, removed ones dropped) and resolves
    /// each one's schedule and consistency from config and labels.
    fn refresh_volumes(&mut self, loaded: &Loaded) {
        let root = &loaded.ctx.docker_root;
        let names = match docker::list_volumes(root) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        let (defs, _) = docker::volumes::read_volumes(root);
        let (ctrs, _) = containers::read_containers(root);
        let selected: Vec<String> = names
            .into_iter()
            .filter(|n| loaded.settings.selects(n))
            .collect();
        self.volumes.retain(|n, _| selected.contains(n));
        for name in selected {
            let labels = defs
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.labels.clone())
                .unwrap_or_default();
            let mounters: Vec<&containers::Container> = ctrs
                .iter()
                .filter(|c| {
                    c.mounts.iter().any(|m| {
                        m.kind == containers::MountKind::Volume
                            && m.name.as_deref() == Some(name.as_str())
                    })
                })
                .collect();
            let (schedule, consistency) = resolve(&loaded.settings, &name, &labels, &mounters);
            let v = self.volume_entry(&name, &loaded.settings);
            v.schedule = schedule;
            v.consistency = consistency;
        }
    }

    fn volume_due(&self, v: &VolState) -> Option<f64> {
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

    fn finished(
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
                            r.snapshot_id.short(),
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

    /// SIGHUP: a valid new config replaces the running one; an invalid one is refused with
    /// the reason, and the agent goes on as it was.
    fn reload(&mut self, loaded: &mut Loaded) {
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

    /// SIGTERM/SIGINT: let a running job finish within `shutdown_timeout`, else abandon it.
    /// Frozen containers are thawed and stopped ones started either way.
    fn shutdown(&mut self, loaded: &Loaded, rx: &Receiver<Event>) -> i32 {
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

    fn write_status(&self, loaded: &Loaded, activity: &str) {
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

fn draw_jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rand::random::<f64>() * max.as_secs_f64())
}

/// A volume's schedule and consistency: its `[[agent.volume]]` entry, else a label on the
/// volume, else a label on a container that mounts it, else the agent's defaults. A label
/// that does not parse is a warning, and the next source decides.
fn resolve(
    settings: &AgentSettings,
    name: &str,
    volume_labels: &BTreeMap<String, String>,
    mounters: &[&containers::Container],
) -> (Schedule, Consistency) {
    let over = settings.volume(name);
    let label_schedule = std::iter::once(volume_labels)
        .chain(mounters.iter().map(|c| &c.labels))
        .filter_map(|l| l.get(SCHEDULE_LABEL))
        .find_map(|s| {
            Schedule::parse(s)
                .map_err(|e| tracing::warn!("volume {name}: label {SCHEDULE_LABEL}: {e}"))
                .ok()
        });
    let schedule = over
        .and_then(|o| o.schedule)
        .or(label_schedule)
        .unwrap_or(settings.schedule);
    let parse_mode = |s: &String| match s.as_str() {
        "freeze" => Some(Consistency::Freeze),
        "stop" => Some(Consistency::Stop),
        "none" => Some(Consistency::None),
        other => {
            tracing::warn!(
                "volume {name}: label {CONSISTENCY_LABEL}={other:?} is not freeze, stop or none"
            );
            None
        }
    };
    let label_mode = volume_labels
        .get(CONSISTENCY_LABEL)
        .and_then(parse_mode)
        .or_else(|| {
            mounters
                .iter()
                .any(|c| c.labels.get(STOP_LABEL).is_some_and(|v| v == "true"))
                .then_some(Consistency::Stop)
        })
        .or_else(|| {
            mounters
                .iter()
                .find_map(|c| c.labels.get(CONSISTENCY_LABEL).and_then(parse_mode))
        });
    let consistency = over
        .and_then(|o| o.consistency)
        .or(label_mode)
        .unwrap_or(settings.consistency);
    (schedule, consistency)
}

/// One scheduled backup: pre hook, consistency (freeze or stop the running containers that
/// mount it, only while it is read), the backup, post hook.
fn backup_volume(
    ctx: &Ctx,
    repo: &Repository,
    settings: &AgentSettings,
    volume: &str,
    mode: Consistency,
) -> Result<backup::Report> {
    let sources = backup::volume_sources(&ctx.docker_root, &[volume.to_string()], None)?;
    let source = sources
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
    };
    let result = backup::run(repo, &mut index, source, &opts);
    drop(opts);
    let _ = releaser.join();
    result
}

/// One periodic job.
fn maintenance(
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
        Maintenance::Retention => {
            let Some(r) = &settings.retention else {
                return Ok(());
            };
            let report = forget::run(
                repo,
                &forget::ForgetOptions {
                    keep: r.policy().map_err(Error::Other)?,
                    volume: None,
                    host: Some(ctx.host.clone()),
                    dry_run: false,
                    prune: r.prune.then(|| prune::Options {
                        dry_run: false,
                        grace: r.prune_grace,
                        max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
                        host: ctx.host.clone(),
                    }),
                },
            )?;
            if let Some(e) = report.refusal() {
                return Err(e);
            }
            tracing::info!("retention: {} snapshot(s) forgotten", report.forgotten);
            if let Some(p) = &report.prune {
                tracing::info!("retention: prune: {p:?}");
            }
            let failed: Vec<_> = report.real_failures().collect();
            if let Some(f) = failed.first() {
                return Err(Error::Other(format!(
                    "retention: {} snapshot(s) could not be forgotten, first: snapshot {}: {}",
                    failed.len(),
                    f.id.short(),
                    f.error
                )));
            }
            Ok(())
        }
    }
}

/// `volguard status`: what the agent's status file says, with its health. Exits 0 when the
/// agent runs and nothing is failing, 3 when it runs with failures, 1 when it does not run.
pub fn status_cmd(json: bool) -> Result<i32> {
    let path = status::path();
    let st = status::read(&path).map_err(Error::Other)?;
    let Some(st) = st else {
        return Err(Error::Other(format!(
            "no agent status at {}: the agent has never run on this host (systemctl start volguard)",
            path.display()
        )));
    };
    let running = st.activity != "stopped" && containers::pid_alive(st.pid as i64);
    let failing = st.failing();
    let health = match (running, failing.is_empty()) {
        (false, _) => "not running",
        (true, true) => "ok",
        (true, false) => "failing",
    };
    if json {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        v["running"] = running.into();
        v["health"] = health.into();
        v["failing"] = failing.clone().into();
        crate::outln!("{v}");
    } else {
        crate::outln!(
            "agent: {} (pid {}, since {}), {}; repository {}, host {}",
            if running { "running" } else { "NOT RUNNING" },
            st.pid,
            status::when(Some(st.started)),
            st.activity,
            st.repository,
            st.host
        );
        if let Some(a) = &st.metrics_addr {
            crate::outln!("metrics: http://{a}/metrics");
        }
        crate::outln!(
            "{:<30} {:<10} {:<9} {:<21} {:<21} last error",
            "volume",
            "schedule",
            "mode",
            "last success",
            "next run"
        );
        for (n, v) in &st.volumes {
            crate::outln!(
                "{:<30} {:<10} {:<9} {:<21} {:<21} {}",
                n,
                v.schedule,
                v.consistency,
                status::when(v.last_success),
                status::when(v.next_run),
                v.last_error.as_deref().unwrap_or("")
            );
        }
        for (n, j) in &st.jobs {
            crate::outln!(
                "{:<30} {:<10} {:<9} {:<21} {:<21} {}",
                format!("[{n}]"),
                j.schedule,
                "",
                status::when(j.figures.last_success_time),
                status::when(j.next_run),
                j.last_error.as_deref().unwrap_or("")
            );
        }
        crate::outln!("health: {health}");
        for f in &failing {
            crate::outln!("  failing: {f}");
        }
    }
    Ok(match health {
        "ok" => exit::OK,
        "failing" => exit::PARTIAL,
        _ => exit::ERROR,
    })
}
