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
pub mod fanotify;
mod forensic;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::docker::{self, containers};
use crate::error::{Error, Result};
use alerts::{Delivery, EventLog, RateLimiter, WatchSettings};
use attribution::{ProcCache, ProcInfo, Verdict};
use fanotify::{FAN_ATTRIB, FAN_CREATE, FAN_DELETE, FAN_MODIFY, FAN_ONDIR, FAN_Q_OVERFLOW};

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

/// Magic numbers of filesystems worth naming in "not watched" reasons.
fn fs_type_name(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let magic = s.filesystem_type().0 as u64;
            match magic {
                0x6969 => "nfs".into(),
                0x0102_1994 => "tmpfs".into(),
                0xFF53_4D42 | 0xFE53_4D42 => "cifs/smb".into(),
                0x6573_5546 => "fuse".into(),
                0x794c_7630 => "overlay".into(),
                0xEF53 => "ext4".into(),
                0x5846_5342 => "xfs".into(),
                0x9123_683E => "btrfs".into(),
                0x2FC1_2FC1 => "zfs".into(),
                m => format!("type 0x{m:x}"),
            }
        }
        Err(_) => "unknown".into(),
    }
}

fn mark_error_reason(e: &std::io::Error, path: &Path) -> String {
    let fs = fs_type_name(path);
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "not permitted: fanotify filesystem marks need root (CAP_SYS_ADMIN)".into()
        }
        Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => format!(
            "{fs} filesystem cannot report file handles to fanotify (NFS, FUSE, CIFS and older tmpfs cannot); changes there are not seen"
        ),
        Some(libc::EXDEV) => format!(
            "{fs} filesystem: {} is a sub-volume with its own id; fanotify cannot mark it as a whole",
            path.display()
        ),
        _ => format!("{fs} filesystem: cannot mark it: {e}"),
    }
}

struct ContainerMounts {
    name: String,
    volumes: HashSet<String>,
}

/// Which volumes exist, which filesystems carry marks, which containers mount what.
struct Model {
    root: PathBuf,
    volumes_dir: PathBuf,
    volumes: BTreeMap<String, Option<u64>>,
    unwatched: BTreeMap<String, String>,
    marked_devs: HashSet<u64>,
    containers: HashMap<String, ContainerMounts>,
    /// Container ids looked up but not found, and when.
    missing: HashMap<String, Instant>,
    volumes_read: Instant,
    containers_read: Instant,
}

/// Mount fds by filesystem id, for `open_by_handle_at`.
type MountFds = HashMap<[i32; 2], OwnedFd>;

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

impl Model {
    fn new(root: &Path) -> Result<Model> {
        let volumes_dir = root.join("volumes");
        let volumes_dir = std::fs::canonicalize(&volumes_dir).map_err(|e| {
            Error::io(
                "cannot open the Docker volumes directory (is this a Docker host? set --docker-root)",
                &volumes_dir,
                e,
            )
        })?;
        let long_ago = Instant::now()
            .checked_sub(MODEL_MAX_AGE * 2)
            .unwrap_or_else(Instant::now);
        Ok(Model {
            root: root.to_path_buf(),
            volumes_dir,
            volumes: BTreeMap::new(),
            unwatched: BTreeMap::new(),
            marked_devs: HashSet::new(),
            containers: HashMap::new(),
            missing: HashMap::new(),
            volumes_read: long_ago,
            containers_read: long_ago,
        })
    }

    fn mark(
        &mut self,
        fan: &fanotify::Fanotify,
        mounts: &mut MountFds,
        path: &Path,
        status: &mut Status,
    ) -> std::io::Result<()> {
        let caps = fan.mark_filesystem(path)?;
        let fd = open_dir(path)?;
        let fsid = fanotify::fsid_of(&fd)?;
        mounts.entry(fsid).or_insert(fd);
        let dev = std::fs::metadata(path)?.dev();
        self.marked_devs.insert(dev);
        status.filesystems.push(path.display().to_string());
        status.close_write = caps.close_write;
        status.rename_events = caps.rename;
        Ok(())
    }

    /// Re-lists volumes; marks the filesystem of any `_data` not on a marked one. Returns
    /// volumes that newly cannot be watched.
    fn refresh_volumes(
        &mut self,
        fan: &fanotify::Fanotify,
        mounts: &mut MountFds,
        status: &mut Status,
    ) -> Vec<Unwatched> {
        self.volumes_read = Instant::now();
        let mut new_unwatched = Vec::new();
        let names = docker::list_volumes(&self.root).unwrap_or_default();
        let mut seen = BTreeSet::new();
        for name in names {
            seen.insert(name.clone());
            let data = self.volumes_dir.join(&name).join("_data");
            let dev = std::fs::metadata(&data).ok().map(|m| m.dev());
            let known = self.volumes.insert(name.clone(), dev);
            if known == Some(dev) && !self.unwatched.contains_key(&name) {
                continue;
            }
            let Some(d) = dev else { continue };
            if self.marked_devs.contains(&d) {
                self.unwatched.remove(&name);
                continue;
            }
            match self.mark(fan, mounts, &data, status) {
                Ok(()) => {
                    self.unwatched.remove(&name);
                }
                Err(e) => {
                    let reason = mark_error_reason(&e, &data);
                    if self.unwatched.get(&name) != Some(&reason) {
                        self.unwatched.insert(name.clone(), reason.clone());
                        new_unwatched.push(Unwatched {
                            volume: name,
                            reason,
                        });
                    }
                }
            }
        }
        self.volumes.retain(|n, _| seen.contains(n));
        self.unwatched.retain(|n, _| seen.contains(n));
        new_unwatched
    }

    fn refresh_containers(&mut self) {
        self.containers_read = Instant::now();
        let (list, _warnings) = containers::read_containers(&self.root);
        self.containers = list
            .into_iter()
            .map(|c| {
                let volumes = c
                    .mounts
                    .iter()
                    .filter(|m| m.kind == containers::MountKind::Volume)
                    .filter_map(|m| m.name.clone())
                    .collect();
                (
                    c.id,
                    ContainerMounts {
                        name: c.name,
                        volumes,
                    },
                )
            })
            .collect();
    }

    /// A container by id, re-reading the containers when it is not known yet (a container
    /// created since the last read), at most once per id and second.
    fn container(&mut self, id: &str) -> Option<&ContainerMounts> {
        if !self.containers.contains_key(id) {
            let due = self
                .missing
                .get(id)
                .is_none_or(|t| t.elapsed() >= MODEL_MIN_INTERVAL);
            if due {
                if self.missing.len() > 1024 {
                    self.missing.clear();
                }
                self.missing.insert(id.to_string(), Instant::now());
                self.refresh_containers();
            }
        }
        self.containers.get(id)
    }

    /// (volume, path inside it) of `dir`/`name`, if that is volume data.
    fn locate(&self, dir: &Path, name: Option<&[u8]>) -> Option<(String, String)> {
        let rest = dir.strip_prefix(&self.volumes_dir).ok()?;
        let mut comps = rest.components();
        let vol = comps.next()?.as_os_str().to_str()?.to_string();
        if !docker::valid_volume_name(&vol) {
            return None;
        }
        match comps.next() {
            None if name == Some(b"_data") => Some((vol, ".".to_string())),
            Some(c) if c.as_os_str() == "_data" => {
                let mut rel = comps.as_path().to_path_buf();
                if let Some(n) = name {
                    rel.push(OsStr::from_bytes(n));
                }
                let rel = rel.to_string_lossy().into_owned();
                Some((vol, if rel.is_empty() { ".".into() } else { rel }))
            }
            _ => None,
        }
    }
}

/// An event that passed the read-time stage: located in a volume, process captured.
struct Staged {
    op: Op,
    pid: i32,
    volume: String,
    path: String,
    from: Option<(String, String)>,
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The exec watch on the filesystems programs are run from (the root, PATH directories,
/// the Docker root): host processes, whose exe is what attribution needs. Programs inside
/// containers run from overlay filesystems and are not covered; containers are recognised
/// by their cgroup instead.
fn start_exec_watch(volumes_dir: &Path) -> std::result::Result<fanotify::ExecWatch, String> {
    let x = fanotify::ExecWatch::new().map_err(|e| {
        format!("exec watch unavailable ({e}); the program of a process that exits before its event is read may be unknown")
    })?;
    let mut dirs: Vec<PathBuf> = [
        "/",
        "/usr",
        "/usr/local",
        "/opt",
        "/home",
        "/root",
        "/tmp",
        "/var",
        "/srv",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push(volumes_dir.to_path_buf());
    let mut devs = HashSet::new();
    for d in dirs {
        let Ok(m) = std::fs::metadata(&d) else {
            continue;
        };
        if devs.insert(m.dev())
            && let Err(e) = x.mark_filesystem(&d)
        {
            tracing::debug!("exec watch: cannot mark {}: {e}", d.display());
        }
    }
    Ok(x)
}

/// Feeds the process cache from the kernel's process connector in a thread of its own.
fn start_connector(
    cache: ProcCache,
    stop: Arc<AtomicBool>,
) -> std::result::Result<std::thread::JoinHandle<()>, String> {
    let conn = fanotify::ProcConnector::new(Duration::from_millis(250)).map_err(|e| {
        format!("process connector unavailable ({e}); processes that exit before their event is read are reported without details")
    })?;
    std::thread::Builder::new()
        .name("watch-proc".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut lost = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match conn.recv(&mut buf) {
                    Ok(evs) => {
                        for e in evs {
                            match e {
                                fanotify::ProcEvent::Fork { parent, child } => {
                                    cache.forked(parent, child)
                                }
                                fanotify::ProcEvent::Exec { pid }
                                | fanotify::ProcEvent::Comm { pid } => {
                                    cache.refresh(pid);
                                }
                                fanotify::ProcEvent::Exit { pid } => cache.exited(pid),
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        lost += 1;
                        if lost.is_power_of_two() {
                            tracing::info!("process connector fell behind {lost} time(s); some short-lived processes may be reported without details");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("process connector failed ({e}); processes that exit before their event is read are reported without details");
                        break;
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the process connector thread: {e}"))
}

/// Stage 2 state: coalescing, rate limit, sinks.
struct Watcher<'a> {
    opts: &'a WatchOptions,
    log: EventLog,
    limiter: RateLimiter,
    delivery: Delivery,
    forensic: Option<forensic::Forensic>,
    /// (pid, start time, volume, path) → (ops already reported or implied, last event).
    coalesce: HashMap<(i32, u64, String, String), (u8, Instant)>,
}

impl Watcher<'_> {
    fn handle(
        &mut self,
        model: &mut Model,
        s: Staged,
        info: &ProcInfo,
        gone: bool,
        sink: &mut dyn FnMut(Notice),
    ) {
        let now_i = Instant::now();
        let key = (s.pid, info.start_time, s.volume.clone(), s.path.clone());
        let entry = self.coalesce.entry(key).or_insert((0, now_i));
        let fresh = entry.0 == 0 || now_i.duration_since(entry.1) >= COALESCE_QUIET;
        if fresh {
            entry.0 = 0;
        }
        entry.1 = now_i;
        if entry.0 & s.op.bit() != 0 {
            return;
        }
        entry.0 = match s.op {
            // After a delete, a re-created file is a new operation.
            Op::Delete => s.op.implies(),
            _ => entry.0 | s.op.implies(),
        };

        let container_name = info
            .container
            .as_deref()
            .and_then(|c| model.container(c).map(|m| m.name.clone()));
        let (verdict, reason) = attribution::verdict(info, &s.volume, &|c: &str, v: &str| {
            model
                .containers
                .get(c)
                .is_some_and(|m| m.volumes.contains(v))
        });
        let allowed_by = (verdict == Verdict::Foreign)
            .then(|| {
                self.opts
                    .settings
                    .allow
                    .iter()
                    .find(|r| r.matches(info, &s.volume))
                    .map(|r| r.describe())
            })
            .flatten();
        let (from_volume, from) = match s.from {
            Some((v, p)) if v != s.volume => (Some(v), Some(p)),
            Some((_, p)) => (None, Some(p)),
            None => (None, None),
        };
        let mut ev = WatchEvent {
            time: now(),
            volume: s.volume,
            path: s.path,
            op: s.op,
            verdict,
            pid: s.pid,
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            uid: info.uid,
            container: info.container.clone(),
            container_name,
            cmdline: info.cmdline.clone(),
            ppid: info.ppid,
            parents: info.parents.clone(),
            unit: info.unit.clone(),
            from,
            from_volume,
            reason,
            allowed_by,
            process_gone: gone,
            warning: false,
            rate_limited: false,
            suppressed_before: 0,
        };
        if ev.verdict == Verdict::Foreign && ev.allowed_by.is_none() {
            let key = format!("{}:{}:{}", ev.pid, info.start_time, ev.volume);
            match self.limiter.admit(&key, now_i) {
                Some(suppressed) => {
                    ev.warning = true;
                    ev.suppressed_before = suppressed;
                    self.warn(&ev);
                }
                None => ev.rate_limited = true,
            }
        }
        sink(Notice::Event(&ev));
    }

    fn warn(&mut self, ev: &WatchEvent) {
        tracing::warn!(
            volume = %ev.volume,
            path = %ev.path,
            op = ev.op.as_str(),
            pid = ev.pid,
            comm = ev.comm.as_deref().unwrap_or("?"),
            exe = ev.exe.as_deref().unwrap_or("?"),
            uid = ev.uid.map(i64::from).unwrap_or(-1),
            container = ev.container.as_deref().unwrap_or("-"),
            "foreign change to volume {}: {} {} by pid {} ({}){}",
            ev.volume,
            ev.op.as_str(),
            ev.path,
            ev.pid,
            ev.exe.as_deref().or(ev.comm.as_deref()).unwrap_or("unknown process"),
            ev.reason.as_deref().map(|r| format!("; {r}")).unwrap_or_default(),
        );
        let value = match serde_json::to_value(ev) {
            Ok(v) => v,
            Err(_) => return,
        };
        if let Err(e) = self.log.append(&value) {
            tracing::error!(
                "cannot write the event log {}: {e}; the warning above is not recorded there",
                self.log.path().display()
            );
        }
        self.delivery.send(value.to_string().into_bytes());
        if let Some(f) = &mut self.forensic {
            f.on_warning(&ev.volume, Instant::now());
        }
    }

    fn lost(&mut self, volumes: &[String], reason: &str, sink: &mut dyn FnMut(Notice)) {
        let time = now();
        // Recorded before it is said: whoever reads the warning finds the marks in place.
        alerts::mark_for_verify(&self.opts.state_dir, volumes, reason, &time);
        let line = serde_json::json!({
            "time": time, "op": "events_lost", "reason": reason, "volumes": volumes,
            "warning": true,
        });
        let _ = self.log.append(&line);
        tracing::warn!(
            "events may have been lost: {reason}; volumes marked for `volguard verify`: {}",
            if volumes.is_empty() {
                "none known".to_string()
            } else {
                volumes.join(", ")
            }
        );
        self.delivery.send(line.to_string().into_bytes());
        sink(Notice::Lost { volumes, reason });
    }

    /// A previous run left `watch_start` in the log: whatever happened between its last
    /// line and now was not seen.
    fn note_restart(&mut self, model: &Model, sink: &mut dyn FnMut(Notice)) {
        let (lines, _) = self.log.read_all();
        if !lines.iter().any(|l| l["op"] == "watch_start") {
            return;
        }
        let last = lines
            .last()
            .and_then(|l| l["time"].as_str())
            .unwrap_or("?")
            .to_string();
        let all: Vec<String> = model.volumes.keys().cloned().collect();
        self.lost(
            &all,
            &format!("the watcher was not running between {last} and now"),
            sink,
        );
    }
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

    #[test]
    fn paths_map_to_volumes() {
        let m = Model {
            root: PathBuf::from("/d"),
            volumes_dir: PathBuf::from("/d/volumes"),
            volumes: BTreeMap::new(),
            unwatched: BTreeMap::new(),
            marked_devs: HashSet::new(),
            containers: HashMap::new(),
            missing: HashMap::new(),
            volumes_read: Instant::now(),
            containers_read: Instant::now(),
        };
        let p = Path::new;
        assert_eq!(
            m.locate(p("/d/volumes/v1/_data/a"), Some(b"f")),
            Some(("v1".into(), "a/f".into()))
        );
        assert_eq!(
            m.locate(p("/d/volumes/v1/_data"), None),
            Some(("v1".into(), ".".into()))
        );
        assert_eq!(
            m.locate(p("/d/volumes/v1"), Some(b"_data")),
            Some(("v1".into(), ".".into()))
        );
        assert_eq!(m.locate(p("/d/volumes/v1"), Some(b"opts.json")), None);
        assert_eq!(m.locate(p("/d/volumes"), Some(b"metadata.db")), None);
        assert_eq!(m.locate(p("/d/overlay2/x"), Some(b"f")), None);
        assert_eq!(m.locate(p("/d/volumes/.bad/_data"), Some(b"f")), None);
    }
}
