//! Who made a change: pid → process details → verdict (`container`, `docker` or
//! `foreign`). The pid in an fanotify event may be gone by the time the event is handled,
//! so process details are cached per (pid, start time), filled as early as possible: for
//! every process on the host when the watcher starts, for each new process when the
//! kernel's process connector announces its fork or exec, and at event read time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Executables that are Docker itself: their writes into volumes (copying image content
/// into a new volume, `docker cp`) are Docker's own.
const DOCKER_EXES: &[&str] = &[
    "dockerd",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v1",
    "containerd-shim-runc-v2",
    "runc",
    "docker-proxy",
    "docker-init",
];

/// How many ancestors the parent chain lists.
const MAX_PARENTS: usize = 8;
/// Cache bound; beyond it, entries of processes that have exited are dropped first.
const MAX_CACHED: usize = 32_768;
/// How long details of an exited process stay cached for events still in flight.
const EXITED_KEEP_SECS: u64 = 30;

/// What is known about one process, captured while it was alive.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcInfo {
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/<pid>/stat field 22): with the pid, it
    /// names one process even after the pid is reused.
    #[serde(skip)]
    pub start_time: u64,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub uid: Option<u32>,
    pub ppid: Option<i32>,
    /// Ancestors, nearest first, as `comm(pid)`.
    pub parents: Vec<String>,
    /// The systemd unit (`*.service` / `*.scope`) of its cgroup, if any.
    pub unit: Option<String>,
    /// The Docker container whose cgroup holds it, if any.
    pub container: Option<String>,
    /// Nothing could be learnt: the process ended before the watcher saw it.
    pub unknown: bool,
}

/// Reads `/proc/<pid>` now. `None` when the process is gone.
pub fn snapshot(pid: i32) -> Option<ProcInfo> {
    let base = format!("/proc/{pid}");
    // exe and cmdline first: they vanish the moment the process exits, while stat, comm,
    // status and cgroup stay readable until it is reaped.
    let exe = std::fs::read_link(format!("{base}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(format!("{base}/cmdline")).ok().map(|b| {
        let s: Vec<String> = b
            .split(|&c| c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        s.join(" ")
    });
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    let (comm_stat, ppid, start_time) = parse_stat(&stat)?;
    let comm = std::fs::read_to_string(format!("{base}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .or(Some(comm_stat));
    let uid = std::fs::read_to_string(format!("{base}/status"))
        .ok()
        .and_then(|s| parse_uid(&s));
    let cgroup = std::fs::read_to_string(format!("{base}/cgroup")).unwrap_or_default();
    Some(ProcInfo {
        pid,
        start_time,
        comm,
        exe,
        cmdline: cmdline.filter(|c| !c.is_empty()),
        uid,
        ppid: Some(ppid),
        parents: Vec::new(),
        unit: systemd_unit(&cgroup),
        container: container_of_cgroup(&cgroup),
        unknown: false,
    })
}

/// Start time of a live pid, to tell a cached process from a new one with the same pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, _, t)| t)
}

/// `pid (comm) state ppid ... starttime(22) ...`; comm may hold spaces and parentheses, so
/// the fields are counted from the last `)`.
pub fn parse_stat(s: &str) -> Option<(String, i32, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3), so field N is rest[N - 3].
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// The container id in a /proc/<pid>/cgroup text: `/docker/<64 hex>` (cgroupfs driver) or
/// `docker-<64 hex>.scope` (systemd driver), at any depth (nested cgroup managers). The
/// deepest match wins.
pub fn container_of_cgroup(cgroup: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for comp in path.split('/') {
            let id = comp
                .strip_prefix("docker-")
                .and_then(|c| c.strip_suffix(".scope"));
            if let Some(id) = id.filter(|i| is_container_id(i)) {
                found = Some(id.to_string());
            }
        }
        let comps: Vec<&str> = path.split('/').collect();
        for w in comps.windows(2) {
            if w[0] == "docker" && is_container_id(w[1]) {
                found = Some(w[1].to_string());
            }
        }
    }
    found
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The deepest `*.service` or `*.scope` in the systemd (v1 `name=systemd`) or unified
/// (v2 `0::`) hierarchy.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    let line = cgroup
        .lines()
        .find(|l| l.contains(":name=systemd:"))
        .or_else(|| cgroup.lines().find(|l| l.starts_with("0::")))?;
    let path = line.splitn(3, ':').nth(2)?;
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

/// True when `exe` is one of Docker's own programs, installed where only root can change
/// it: the name alone is not enough (anyone can call a binary `dockerd`), so the file and
/// its directory must belong to root and not be writable by group or others.
pub fn is_docker_exe(exe: &str) -> bool {
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
    let path = Path::new(exe);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if !DOCKER_EXES.contains(&name) {
        return false;
    }
    root_only(path) && path.parent().is_some_and(root_only)
}

fn root_only(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
}

/// Shared cache of process details, keyed by pid; each entry says when its process was
/// last seen alive.
#[derive(Clone, Default)]
pub struct ProcCache {
    inner: Arc<Mutex<HashMap<i32, Entry>>>,
    /// The latest program each pid exec'd, from exec events (kept EXITED_KEEP_SECS).
    execs: Arc<Mutex<HashMap<i32, (String, Instant)>>>,
}

/// ELF interpreters are opened for exec too, right after the program itself.
fn is_interpreter(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || name.starts_with("ld.so") || name.starts_with("ld-musl")
}

struct Entry {
    info: Arc<ProcInfo>,
    exited: Option<Instant>,
}

impl ProcCache {
    pub fn new() -> ProcCache {
        ProcCache::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        // A panic elsewhere while holding the lock leaves plain data; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Caches every process alive now, so one that exits before its event is read is
    /// still known.
    pub fn prefill(&self) {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for ent in rd.flatten() {
            if let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                self.refresh(pid);
            }
        }
    }

    /// Re-reads a process (after exec, or when first seen) and stores it. A process read
    /// while it exits (its exe already unreadable, or reaped halfway through the read, so
    /// no status) may have left its cgroup: what was captured earlier for it (at fork or
    /// exec) is kept, or else its parent's cgroup is taken. Storing the half-read details
    /// instead made a container's short-lived `mkdir` look like a host process.
    pub fn refresh(&self, pid: i32) -> Option<Arc<ProcInfo>> {
        let mut info = snapshot(pid)?;
        info.parents = self.parents_of(info.ppid);
        let exiting = read_while_exiting(&info);
        let info = if exiting {
            let cached = self
                .lock()
                .get(&pid)
                .map(|e| e.info.clone())
                .filter(|c| c.start_time == info.start_time || c.start_time == 0);
            match cached {
                Some(c) => Arc::new(merge_exiting(&c, &info)),
                None => self.inherit_cgroup(Arc::new(info)),
            }
        } else {
            Arc::new(info)
        };
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            Self::sweep_locked(&mut map, true);
        }
        map.insert(
            pid,
            Entry {
                info: info.clone(),
                exited: exiting.then(Instant::now),
            },
        );
        Some(info)
    }

    /// A forked child starts as a copy of its parent (same exe, comm, cgroup); cheaper
    /// than reading /proc, and right until it execs (which is announced separately).
    pub fn forked(&self, parent: i32, child: i32) {
        let parent_info = self.lock().get(&parent).map(|e| e.info.clone());
        let Some(p) = parent_info else {
            self.refresh(child);
            return;
        };
        // Already gone: keep the parent's identity for it anyway (start time unknown), which
        // is right for a child that did not exec and close for one that did.
        let start = start_time(child).unwrap_or(0);
        let mut info = (*p).clone();
        info.pid = child;
        info.start_time = start;
        info.ppid = Some(parent);
        let mut parents = vec![format!("{}({parent})", p.comm.as_deref().unwrap_or("?"))];
        parents.extend(p.parents.iter().take(MAX_PARENTS - 1).cloned());
        info.parents = parents;
        self.lock().insert(
            child,
            Entry {
                info: Arc::new(info),
                exited: None,
            },
        );
    }

    pub fn exited(&self, pid: i32) {
        if let Some(e) = self.lock().get_mut(&pid) {
            e.exited.get_or_insert_with(Instant::now);
        }
    }

    fn parents_of(&self, mut ppid: Option<i32>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(p) = ppid.filter(|&p| p > 0) {
            if out.len() >= MAX_PARENTS {
                break;
            }
            let cached = self.lock().get(&p).map(|e| e.info.clone());
            let (comm, next) = match cached {
                Some(i) => (i.comm.clone(), i.ppid),
                None => match std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                {
                    Some((c, pp, _)) => (Some(c), Some(pp)),
                    None => (None, None),
                },
            };
            out.push(format!("{}({p})", comm.as_deref().unwrap_or("?")));
            ppid = next;
        }
        out
    }

    /// Records that `pid` exec'd `exe` (from the exec watch).
    pub fn exec_seen(&self, pid: i32, exe: &Path) {
        let exe = exe.display().to_string();
        if is_interpreter(&exe) {
            return;
        }
        let mut m = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_CACHED {
            m.retain(|_, (_, t)| t.elapsed().as_secs() < EXITED_KEEP_SECS);
        }
        m.insert(pid, (exe, Instant::now()));
    }

    /// Completes details of a process that was not caught alive after its last exec: the
    /// exec watch knows the program even when /proc no longer does.
    fn with_exec(&self, pid: i32, info: Arc<ProcInfo>) -> Arc<ProcInfo> {
        let exe = self
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .map(|(e, _)| e.clone());
        let Some(exe) = exe else { return info };
        if info.exe.as_deref() == Some(exe.as_str()) {
            return info;
        }
        let mut i = (*info).clone();
        // A cached exe that differs is the parent's, copied at fork: comm and cmdline are
        // stale too. The zombie's comm is right if it can still be read.
        if i.exe.is_some() || i.comm.is_none() {
            i.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|s| s.trim_end_matches('\n').to_string())
                .or_else(|| exe.rsplit('/').next().map(|n| n.chars().take(15).collect()));
            i.cmdline = None;
        }
        i.exe = Some(exe);
        i.unknown = false;
        Arc::new(i)
    }

    /// The process behind an event, looked up when the event is read. A live process is
    /// checked against the cache (same start time, same comm and exe: else it exec'd or
    /// the pid was reused, and it is read again); a gone one is taken from the cache.
    pub fn lookup(&self, pid: i32) -> (Arc<ProcInfo>, bool) {
        let (info, gone) = self.lookup_proc(pid);
        if gone || info.exe.is_none() {
            (self.with_exec(pid, info), gone)
        } else {
            (info, gone)
        }
    }

    fn lookup_proc(&self, pid: i32) -> (Arc<ProcInfo>, bool) {
        let (cached, exited) = match self.lock().get(&pid) {
            Some(e) => (Some(e.info.clone()), e.exited.is_some()),
            None => (None, false),
        };
        match start_time(pid) {
            Some(start) => {
                if let Some(c) = &cached
                    && c.start_time == start
                    && current_matches(pid, c)
                {
                    return (c.clone(), exited);
                }
                match self.refresh(pid) {
                    Some(i) => {
                        let exiting = read_while_exiting(&i);
                        (i, exiting)
                    }
                    None => self.gone(pid, cached),
                }
            }
            None => self.gone(pid, cached),
        }
    }

    /// An exiting process caught by nothing earlier may have left its cgroup already; a
    /// forked child is in its parent's cgroup (unless moved), so take the parent's.
    fn inherit_cgroup(&self, info: Arc<ProcInfo>) -> Arc<ProcInfo> {
        if info.container.is_some() {
            return info;
        }
        let Some(ppid) = info.ppid.filter(|&p| p > 0) else {
            return info;
        };
        let parent = self
            .lock()
            .get(&ppid)
            .map(|e| e.info.clone())
            .or_else(|| snapshot(ppid).map(Arc::new));
        match parent {
            Some(p) if p.container.is_some() || p.unit.is_some() => {
                let mut i = (*info).clone();
                i.container = p.container.clone();
                i.unit = i.unit.or_else(|| p.unit.clone());
                Arc::new(i)
            }
            _ => info,
        }
    }

    fn gone(&self, pid: i32, cached: Option<Arc<ProcInfo>>) -> (Arc<ProcInfo>, bool) {
        match cached {
            Some(c) => (c, true),
            None => (
                Arc::new(ProcInfo {
                    pid,
                    unknown: true,
                    ..ProcInfo::default()
                }),
                true,
            ),
        }
    }

    /// Drops processes that exited more than EXITED_KEEP_SECS ago (all exited ones when
    /// `all_exited`).
    pub fn sweep(&self) {
        Self::sweep_locked(&mut self.lock(), false);
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, t)| t.elapsed().as_secs() < EXITED_KEEP_SECS);
    }

    fn sweep_locked(map: &mut HashMap<i32, Entry>, all_exited: bool) {
        map.retain(|_, e| match e.exited {
            None => true,
            Some(t) => !all_exited && t.elapsed().as_secs() < EXITED_KEEP_SECS,
        });
        if map.len() >= MAX_CACHED {
            map.clear();
        }
    }
}

/// A read of /proc that lost the race with exit: the exe link goes first, status (uid)
/// goes when the process is reaped. Kernel threads (kthreadd, pid 2, and its children)
/// never have an exe.
fn read_while_exiting(i: &ProcInfo) -> bool {
    let kernel_thread = i.pid == 2 || i.ppid == Some(2);
    (i.exe.is_none() && !kernel_thread) || i.uid.is_none()
}

/// Details of an exiting process: its comm as it is now (it may have exec'd since `cached`
/// was taken), everything /proc no longer shows from `cached`. The exe is kept only when
/// the comm did not change (else it belonged to the program before the exec).
fn merge_exiting(cached: &ProcInfo, now: &ProcInfo) -> ProcInfo {
    let same_program = now.comm.is_none() || now.comm == cached.comm;
    ProcInfo {
        pid: now.pid,
        start_time: now.start_time,
        comm: now.comm.clone().or_else(|| cached.comm.clone()),
        exe: if same_program {
            cached.exe.clone()
        } else {
            None
        },
        cmdline: if same_program {
            cached.cmdline.clone()
        } else {
            None
        },
        uid: now.uid.or(cached.uid),
        ppid: now.ppid.or(cached.ppid),
        parents: if now.parents.is_empty() {
            cached.parents.clone()
        } else {
            now.parents.clone()
        },
        unit: now.unit.clone().or_else(|| cached.unit.clone()),
        container: now.container.clone().or_else(|| cached.container.clone()),
        unknown: false,
    }
}

fn current_matches(pid: i32, c: &ProcInfo) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string());
    if comm.is_some() && comm != c.comm {
        return false;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    exe.is_none() || exe == c.exe
}

/// The verdict on one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A process in the cgroup of a container that mounts this volume.
    Container,
    /// Docker itself (dockerd, containerd, the shim, runc, docker-proxy).
    Docker,
    /// Anything else, including a container writing into a volume it does not mount.
    Foreign,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Container => "container",
            Verdict::Docker => "docker",
            Verdict::Foreign => "foreign",
        }
    }
}

/// Decides the verdict. `mounts(container_id, volume)` says whether that container mounts
/// the volume. Container membership is decided first, so a program inside a container that
/// merely calls itself `runc` is judged as that container.
pub fn verdict(
    info: &ProcInfo,
    volume: &str,
    mounts: &dyn Fn(&str, &str) -> bool,
) -> (Verdict, Option<String>) {
    if let Some(c) = &info.container {
        return if mounts(c, volume) {
            (Verdict::Container, None)
        } else {
            (
                Verdict::Foreign,
                Some(format!(
                    "container {} does not mount volume {volume}",
                    &c[..12.min(c.len())]
                )),
            )
        };
    }
    if info.exe.as_deref().is_some_and(is_docker_exe) {
        return (Verdict::Docker, None);
    }
    if info.unknown {
        return (
            Verdict::Foreign,
            Some("the process ended before it could be identified".to_string()),
        );
    }
    (Verdict::Foreign, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c8b640247d5fce36832ca4eff57edac77e2541aa33cb3fd80adc2dd4386aa982";

    #[test]
    fn container_ids_from_cgroup_paths() {
        let v1 = format!("9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n0::/\n");
        assert_eq!(container_of_cgroup(&v1).as_deref(), Some(ID));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_of_cgroup(&v2).as_deref(), Some(ID));
        let nested = format!("0::/kubepods/burst/pod1/docker/{ID}/init\n");
        assert_eq!(container_of_cgroup(&nested).as_deref(), Some(ID));
        let host = "4:memory:/process_api/c2b308e5da0f38fd37e4e6650c9ba0f8\n0::/\n";
        assert_eq!(container_of_cgroup(host), None);
        // Not 64 hex: not a container.
        assert_eq!(container_of_cgroup("0::/docker/abc\n"), None);
        assert_eq!(container_of_cgroup("0::/docker-XYZ.scope\n"), None);
        assert_eq!(
            systemd_unit("0::/system.slice/cron.service\n").as_deref(),
            Some("cron.service")
        );
        assert_eq!(systemd_unit("0::/\n"), None);
    }

    #[test]
    fn an_exiting_process_keeps_what_was_captured_before() {
        let forked = ProcInfo {
            pid: 7,
            start_time: 5,
            comm: Some("sh".into()),
            exe: Some("/bin/busybox".into()),
            uid: Some(0),
            container: Some(ID.into()),
            ..ProcInfo::default()
        };
        let exiting = ProcInfo {
            pid: 7,
            start_time: 5,
            comm: Some("mkdir".into()),
            ..ProcInfo::default()
        };
        let m = merge_exiting(&forked, &exiting);
        assert_eq!(m.comm.as_deref(), Some("mkdir"));
        assert_eq!(m.exe, None);
        assert_eq!(m.container.as_deref(), Some(ID));
        assert_eq!(m.uid, Some(0));
    }

    /// The exec event of a process that exits at once is read after the exit: the re-read
    /// finds no exe and must not replace the container captured at fork with "none".
    #[test]
    fn a_refresh_while_exiting_keeps_the_container_captured_at_fork() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not yet waited for: a zombie, whose exe link is gone but whose stat remains.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/exe")).is_ok() {
            assert!(Instant::now() < deadline, "child {pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let cache = ProcCache::new();
        let forked = ProcInfo {
            pid,
            start_time: start_time(pid).unwrap(),
            comm: Some("sh".into()),
            exe: Some("/bin/busybox".into()),
            uid: Some(0),
            container: Some(ID.into()),
            ..ProcInfo::default()
        };
        cache.lock().insert(
            pid,
            Entry {
                info: Arc::new(forked),
                exited: None,
            },
        );
        let info = cache.refresh(pid).unwrap();
        assert_eq!(info.container.as_deref(), Some(ID));
        assert_eq!(info.comm.as_deref(), Some("true"));
        assert_eq!(info.exe, None, "the exe captured at fork was the parent's");
        let (looked_up, gone) = cache.lookup(pid);
        assert!(gone);
        assert_eq!(looked_up.container.as_deref(), Some(ID));
        child.wait().unwrap();
    }

    /// Kernel threads have no exe but are alive: they are not taken for exiting.
    #[test]
    fn a_kernel_thread_is_not_taken_for_an_exiting_process() {
        let cache = ProcCache::new();
        let kthreadd = cache.refresh(2).expect("kthreadd");
        assert_eq!(kthreadd.exe, None);
        let (_, gone) = cache.lookup(2);
        assert!(!gone, "kthreadd is alive");
    }

    #[test]
    fn stat_fields_survive_odd_comms() {
        let s = "123 (a b) c)) S 45 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        assert_eq!(parse_stat(s), Some(("a b) c)".to_string(), 45, 98765)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x"), None);
        assert_eq!(parse_stat(")("), None);
    }

    #[test]
    fn docker_is_judged_by_a_root_owned_exe_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("dockerd");
        std::fs::write(&fake, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!is_docker_exe(fake.to_str().unwrap()));
        assert!(!is_docker_exe("/usr/bin/sh"));
        let info = ProcInfo {
            exe: Some(fake.display().to_string()),
            ..ProcInfo::default()
        };
        assert_eq!(verdict(&info, "v", &|_, _| true).0, Verdict::Foreign);
        let in_ctr = ProcInfo {
            container: Some(ID.to_string()),
            ..ProcInfo::default()
        };
        assert_eq!(verdict(&in_ctr, "v", &|_, _| true).0, Verdict::Container);
        assert_eq!(verdict(&in_ctr, "v", &|_, _| false).0, Verdict::Foreign);
    }
}
