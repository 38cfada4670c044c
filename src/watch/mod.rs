//! `volguard watch` (docs/design.md, Watcher): every change to Docker volume data, who made it, and a
//! warning when that was neither Docker nor a container that mounts the volume.
//!
//! fanotify events ([`fanotify`]) are read in batches. Right after a read, each event's
//! directory handle is turned into a path (cached per handle), events outside
//! `<docker-root>/volumes/*/_data` are dropped, and each remaining pid is looked up
//! ([`attribution`]) — before anything slow happens, so short-lived writers are still
//! alive or at least cached. Then each change gets its verdict, is coalesced (below),
//! and goes to the caller's sink; foreign ones also to the warning sinks ([`alerts`]).
//!
//! Coalescing: one operation makes a burst of events (`cp` = create, modify...,
//! close-write). The first event of a (process, volume, path) is reported at once; later
//! events of the same process on the same path that the first one implies (modify and
//! attrib after a create, further modifies after a modify) are folded into it while they
//! keep coming less than [`COALESCE_QUIET`] apart. Close-write alone is never reported:
//! closing a file changes nothing (a truncating open shows up as modify).
//!
//! [`run`] is the library entry point, for the CLI and the agent alike.

pub mod alerts;
pub mod attribution;
mod events;
pub mod fanotify;
mod forensic;
mod model;
mod processes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use alerts::{Delivery, EventLog, RateLimiter, WatchSettings};
use attribution::{ProcCache, ProcInfo, Verdict};
use events::{Staged, Watcher};
use fanotify::{FAN_ATTRIB, FAN_CREATE, FAN_DELETE, FAN_MODIFY, FAN_ONDIR, FAN_Q_OVERFLOW};
use model::{Model, MountFds, mark_error_reason};
use processes::{kernel_release, start_connector, start_exec_watch};

/// Events of one process on one path closer together than this are one operation.
pub const COALESCE_QUIET: Duration = Duration::from_secs(2);
/// How often the Docker model is re-read at most when an event names something unknown,
/// and how often it is re-read anyway (new volumes on other filesystems need a mark).
const MODEL_MIN_INTERVAL: Duration = Duration::from_secs(1);
const MODEL_MAX_AGE: Duration = Duration::from_secs(30);
/// Directory handles remembered; the cache is emptied when it grows past this.
const MAX_DIR_CACHE: usize = 65_536;
/// One read returns as many queued events as fit.
const READ_BUFFER_BYTES: usize = 256 * 1024;
const POLL_MS: i32 = 200;
/// After a read that found only a few events, wait this long before the next one, so a
/// steady trickle (a container appending 1,000 times a second) is read in batches: one
/// wake-up and one /proc look-up per process per batch instead of per event. It adds at
/// most this much to a warning's latency; a busy queue (a large read) is read at once.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Test hook: wait this long before each read of the event queue, so tests can make
/// processes exit before their events are read, and fill the queue until it overflows.
/// Not for production use.
pub const READ_DELAY_ENV: &str = "VOLGUARD_WATCH_TEST_READ_DELAY_MS";

/// What the watcher needs to know.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub docker_root: PathBuf,
    /// Event log and verify marks live here (`$VOLGUARD_STATE_DIR`).
    pub state_dir: PathBuf,
    pub settings: WatchSettings,
    /// Global flags for another volguard process on the same configuration, repository,
    /// key and Docker root (forensic snapshots run one).
    pub volguard_args: Vec<std::ffi::OsString>,
}

impl WatchOptions {
    pub fn event_log(&self) -> EventLog {
        EventLog::new(
            self.state_dir.join("events.jsonl"),
            self.settings
                .event_log_max_bytes
                .unwrap_or(alerts::DEFAULT_LOG_MAX_BYTES),
            self.settings
                .event_log_keep
                .unwrap_or(alerts::DEFAULT_LOG_KEEP),
        )
    }
}

/// Kind of change, in the order of precedence when the kernel merged several into one
/// event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Delete,
    Rename,
    Modify,
    Attrib,
}

impl Op {
    fn from_mask(mask: u64) -> Option<Op> {
        use fanotify::{FAN_MOVED_FROM, FAN_MOVED_TO, FAN_RENAME};
        if mask & FAN_CREATE != 0 {
            Some(Op::Create)
        } else if mask & FAN_DELETE != 0 {
            Some(Op::Delete)
        } else if mask & (FAN_RENAME | FAN_MOVED_FROM | FAN_MOVED_TO) != 0 {
            Some(Op::Rename)
        } else if mask & FAN_MODIFY != 0 {
            Some(Op::Modify)
        } else if mask & FAN_ATTRIB != 0 {
            Some(Op::Attrib)
        } else {
            None
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Kinds a reported op already covers for the same process and path.
    fn implies(self) -> u8 {
        match self {
            Op::Create => Op::Create.bit() | Op::Modify.bit() | Op::Attrib.bit(),
            other => other.bit(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Delete => "delete",
            Op::Rename => "rename",
            Op::Modify => "modify",
            Op::Attrib => "attrib",
        }
    }
}

/// One change to volume data, as printed by `watch --json` and logged for warnings.
#[derive(Debug, Clone, Serialize)]
pub struct WatchEvent {
    pub time: String,
    pub volume: String,
    /// Inside the volume, relative to `_data` (`.` is `_data` itself).
    pub path: String,
    pub op: Op,
    pub verdict: Verdict,
    pub pid: i32,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    /// Id of the container whose cgroup holds the process, or null.
    pub container: Option<String>,
    pub container_name: Option<String>,
    pub cmdline: Option<String>,
    pub ppid: Option<i32>,
    pub parents: Vec<String>,
    pub unit: Option<String>,
    /// Rename: the path before (in `from_volume` when that is another volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_volume: Option<String>,
    /// Why a verdict is what it is, when that is not obvious.
    pub reason: Option<String>,
    /// The allow rule that turned a foreign change into a non-warning.
    pub allowed_by: Option<String>,
    /// The process had exited when its event was read; details come from the cache.
    pub process_gone: bool,
    /// Sent to the warning sinks (foreign, not allowed, within the rate limit).
    pub warning: bool,
    /// Foreign, not allowed, but over the rate limit: printed, not sent to the sinks.
    pub rate_limited: bool,
    /// Warnings for this (process, volume) dropped by the rate limit before this one.
    pub suppressed_before: u64,
}

/// A volume whose changes are not seen, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unwatched {
    pub volume: String,
    pub reason: String,
}

/// What the watcher covers, reported once at start.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// Paths whose filesystems carry a mark.
    pub filesystems: Vec<String>,
    pub watched: Vec<String>,
    pub unwatched: Vec<Unwatched>,
    /// The kernel reports close-write and single rename events in FID mode.
    pub close_write: bool,
    pub rename_events: bool,
    /// Why short-lived processes may go unnamed, when the process connector is unavailable.
    pub process_connector_error: Option<String>,
    pub event_log: String,
}

/// What the watcher tells its caller.
#[derive(Debug)]
pub enum Notice<'a> {
    /// Marks are in place; events from now on are seen.
    Ready(&'a Status),
    Event(&'a WatchEvent),
    /// Events were lost; these volumes are marked for `volguard verify`.
    Lost {
        volumes: &'a [String],
        reason: &'a str,
    },
    /// A volume appeared that cannot be watched.
    Unwatched(&'a Unwatched),
}

fn now() -> String {
    crate::fmt::format_time(time::OffsetDateTime::now_utc())
}

/// Runs the watcher until `stop` is set. Every change to volume data goes to `sink`;
/// foreign ones also go to the warning sinks configured in `opts.settings`. Errors only
/// when nothing can be watched at all (not root, no fanotify FID support, no Docker).
pub fn run(opts: &WatchOptions, stop: &AtomicBool, sink: &mut dyn FnMut(Notice)) -> Result<()> {
    opts.settings.validate().map_err(Error::Usage)?;
    let mut model = Model::new(&opts.docker_root)?;
    let fan = fanotify::Fanotify::new().map_err(|e| {
        Error::Other(match e.raw_os_error() {
            Some(libc::EPERM) => "volguard watch needs root: fanotify filesystem marks need CAP_SYS_ADMIN; no volume is watched".to_string(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) => format!("this kernel cannot report file names through fanotify (FAN_REPORT_DFID_NAME needs Linux 5.9 or newer; running {}); no volume is watched", kernel_release()),
            _ => format!("cannot start fanotify: {e}; no volume is watched"),
        })
    })?;
    let mut mounts: MountFds = HashMap::new();
    let log = opts.event_log();
    let mut status = Status {
        event_log: log.path().display().to_string(),
        ..Status::default()
    };
    let vd = model.volumes_dir.clone();
    model
        .mark(&fan, &mut mounts, &vd, &mut status)
        .map_err(|e| {
            Error::Other(format!(
                "cannot watch {}: {}; no volume is watched",
                vd.display(),
                mark_error_reason(&e, &vd)
            ))
        })?;
    model.refresh_volumes(&fan, &mut mounts, &mut status);
    model.refresh_containers();

    let cache = ProcCache::new();
    let execs = start_exec_watch(&model.volumes_dir);
    if let Err(e) = &execs {
        status.process_connector_error = Some(e.clone());
    }
    cache.prefill();
    let connector_stop = Arc::new(AtomicBool::new(false));
    let connector = start_connector(cache.clone(), connector_stop.clone());
    if let Err(e) = &connector {
        status.process_connector_error = Some(e.clone());
    }
    let mut exec_buf = vec![0u8; 64 * 1024];

    status.watched = model
        .volumes
        .keys()
        .filter(|v| !model.unwatched.contains_key(*v))
        .cloned()
        .collect();
    status.unwatched = model
        .unwatched
        .iter()
        .map(|(v, r)| Unwatched {
            volume: v.clone(),
            reason: r.clone(),
        })
        .collect();

    let mut w = Watcher {
        opts,
        limiter: RateLimiter::new(
            opts.settings
                .rate_limit
                .unwrap_or(alerts::DEFAULT_RATE_LIMIT),
            Duration::from_secs(
                opts.settings
                    .rate_window_secs
                    .unwrap_or(alerts::DEFAULT_RATE_WINDOW_SECS),
            ),
        ),
        delivery: Delivery::start(opts.settings.webhook.clone(), opts.settings.command.clone()),
        forensic: forensic::Forensic::new(opts, log.clone()),
        log,
        coalesce: HashMap::new(),
    };
    w.note_restart(&model, sink);
    let _ = w.log.append(&serde_json::json!({
        "time": now(), "op": "watch_start", "pid": std::process::id(),
        "watched": status.watched, "unwatched": status.unwatched,
    }));
    sink(Notice::Ready(&status));

    let mut dircache: HashMap<fanotify::FileId, Option<PathBuf>> = HashMap::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut last_sweep = Instant::now();
    let mut last_stats = Instant::now();
    let (mut n_read, mut n_volume) = (0u64, 0u64);
    let me = std::process::id() as i32;
    let read_delay = std::env::var(READ_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut trickle = false;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(d) = read_delay {
            std::thread::sleep(d);
        }
        if last_stats.elapsed() >= Duration::from_secs(5) {
            last_stats = Instant::now();
            tracing::debug!(
                "watch stats: {n_read} events read, {n_volume} on volume data, {} processes cached",
                cache.len()
            );
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            cache.sweep();
            w.coalesce.retain(|_, (_, t)| t.elapsed() < COALESCE_QUIET);
            if model.volumes_read.elapsed() >= MODEL_MAX_AGE {
                for u in model.refresh_volumes(&fan, &mut mounts, &mut status) {
                    sink(Notice::Unwatched(&u));
                }
                model.refresh_containers();
            }
        }
        if trickle {
            std::thread::sleep(BATCH_WINDOW);
        }
        let n = match fan.read(&mut buf, POLL_MS) {
            Ok(n) => n,
            Err(e) => break Err(Error::Other(format!("reading fanotify events failed: {e}"))),
        };
        trickle = n > 0 && n < buf.len() / 4;
        if n == 0 {
            continue;
        }
        let events = match fanotify::parse_events(&buf[..n]) {
            Ok(ev) => ev,
            Err(e) => {
                let all: Vec<String> = model.volumes.keys().cloned().collect();
                w.lost(
                    &all,
                    &format!("unreadable event record from the kernel ({e})"),
                    sink,
                );
                continue;
            }
        };
        n_read += events.len() as u64;
        // Stage 1, at read time: where, and who (while the process may still exist).
        let mut staged = Vec::new();
        let mut overflow = false;
        let mut clear_dircache = false;
        let mut unknown_volume = false;
        for ev in &events {
            if ev.mask & FAN_Q_OVERFLOW != 0 {
                overflow = true;
                continue;
            }
            if ev.pid == me {
                continue;
            }
            let Some(op) = Op::from_mask(ev.mask) else {
                continue;
            };
            let mut locate = |e: &Option<fanotify::DirEntry>| -> Option<(String, String)> {
                let e = e.as_ref()?;
                if dircache.len() >= MAX_DIR_CACHE {
                    dircache.clear();
                }
                let dir = dircache
                    .entry(e.dir.clone())
                    .or_insert_with(|| {
                        let fd = mounts.get(&e.dir.fsid)?;
                        fanotify::resolve(fd, &e.dir)
                            .ok()
                            .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"))
                    })
                    .as_ref()?;
                model.locate(dir, e.name.as_deref())
            };
            let new = locate(&ev.entry);
            let old = locate(&ev.old_entry);
            if ev.mask & FAN_ONDIR != 0 && op == Op::Rename {
                // A moved directory changes the path of everything below it.
                clear_dircache = true;
            }
            let (volume, path, from) = match (new, old) {
                (Some((v, p)), old) => (v, p, old),
                (None, Some((v, p))) => (v, p, None),
                (None, None) => continue,
            };
            if !model.volumes.contains_key(&volume) {
                unknown_volume = true;
            }
            staged.push(Staged {
                op,
                pid: ev.pid,
                volume,
                path,
                from,
            });
        }
        if clear_dircache {
            dircache.clear();
        }
        n_volume += staged.len() as u64;
        if !staged.is_empty()
            && let Ok(x) = &execs
        {
            // Every exec of these writers was queued before their writes: taking the exec
            // queue now means the program of each is known, even if it has exited.
            for (pid, exe) in x.drain(&mut exec_buf) {
                cache.exec_seen(pid, &exe);
            }
        }
        let mut procs: HashMap<i32, (Arc<ProcInfo>, bool)> = HashMap::new();
        for s in &staged {
            procs.entry(s.pid).or_insert_with(|| cache.lookup(s.pid));
        }
        // Stage 2: verdicts, coalescing, sinks.
        if overflow {
            let all: Vec<String> = model.volumes.keys().cloned().collect();
            w.lost(
                &all,
                "the kernel's fanotify queue overflowed (events arrived faster than they were read)",
                sink,
            );
        }
        if unknown_volume && model.volumes_read.elapsed() >= MODEL_MIN_INTERVAL {
            for u in model.refresh_volumes(&fan, &mut mounts, &mut status) {
                sink(Notice::Unwatched(&u));
            }
        }
        for s in staged {
            let Some((info, gone)) = procs.get(&s.pid).cloned() else {
                continue;
            };
            w.handle(&mut model, s, &info, gone, sink);
        }
    };
    connector_stop.store(true, Ordering::Relaxed);
    if let Ok(h) = connector {
        let _ = h.join();
    }
    let _ = w
        .log
        .append(&serde_json::json!({"time": now(), "op": "watch_stop", "pid": std::process::id()}));
    w.delivery.finish();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_by_precedence() {
        assert_eq!(
            Op::from_mask(FAN_MODIFY | FAN_CREATE | FAN_ATTRIB),
            Some(Op::Create)
        );
        assert_eq!(Op::from_mask(fanotify::FAN_CLOSE_WRITE), None);
        assert_eq!(
            Op::from_mask(FAN_MODIFY | fanotify::FAN_CLOSE_WRITE),
            Some(Op::Modify)
        );
        assert!(Op::Create.implies() & Op::Modify.bit() != 0);
        assert!(Op::Modify.implies() & Op::Attrib.bit() == 0);
    }
}
