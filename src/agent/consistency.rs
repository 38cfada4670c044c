//! Keeping a volume consistent while the agent reads it: freezing the cgroups of the
//! running containers that mount it (thawed when the read ends, and after `freeze_timeout`
//! whatever happens), or stopping and restarting them through dockerd; and the pre/post
//! hook commands around a backup.
//!
//! A frozen container must never stay frozen: every freeze is registered in [`FROZEN`], and
//! the agent thaws whatever is there on SIGTERM, on abandoning a backup, and in its panic
//! hook.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::docker::{api, containers};
use crate::error::{Error, Result};

/// How long the kernel may take to freeze or thaw a cgroup before we call it failed.
const FREEZE_SETTLE: Duration = Duration::from_secs(5);

/// A running container that mounts the volume being read.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub pid: i64,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Running containers (confirmed by their pid) that mount `volume`.
pub fn users_of(root: &Path, volume: &str) -> Vec<User> {
    let (list, _) = containers::read_containers(root);
    list.into_iter()
        .filter(|c| {
            c.running
                && c.mounts.iter().any(|m| {
                    m.kind == containers::MountKind::Volume && m.name.as_deref() == Some(volume)
                })
        })
        .map(|c| User {
            id: c.id,
            name: c.name,
            pid: c.pid,
            labels: c.labels,
        })
        .collect()
}

/// One cgroup's freezer control file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freezer {
    /// cgroup v1: `freezer.state` (FROZEN / THAWED).
    V1(PathBuf),
    /// cgroup v2: `cgroup.freeze` (1 / 0), state in `cgroup.events`.
    V2(PathBuf),
}

impl Freezer {
    /// The freezer of the cgroup `pid` lives in.
    fn of_pid(pid: i64) -> Result<Freezer> {
        let path = format!("/proc/{pid}/cgroup");
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, cg) = (parts.next(), parts.next(), parts.next());
            if let (Some(c), Some(cg)) = (controllers, cg)
                && c.split(',').any(|c| c == "freezer")
            {
                return Ok(Freezer::V1(
                    Path::new("/sys/fs/cgroup/freezer")
                        .join(cg.trim_start_matches('/'))
                        .join("freezer.state"),
                ));
            }
        }
        // No v1 freezer: the unified hierarchy's entry (`0::/path`).
        if let Some(cg) = text.lines().find_map(|l| l.strip_prefix("0::")) {
            let file = Path::new("/sys/fs/cgroup")
                .join(cg.trim_start_matches('/'))
                .join("cgroup.freeze");
            if file.exists() {
                return Ok(Freezer::V2(file));
            }
        }
        Err(Error::Other(format!(
            "process {pid}: no cgroup freezer found in {path}; use consistency = \"stop\" or \"none\""
        )))
    }

    fn set(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Freezer::V1(f) => std::fs::write(f, if frozen { "FROZEN" } else { "THAWED" }),
            Freezer::V2(f) => std::fs::write(f, if frozen { "1" } else { "0" }),
        }
    }

    fn is(&self, frozen: bool) -> bool {
        match self {
            Freezer::V1(f) => std::fs::read_to_string(f)
                .is_ok_and(|s| s.trim() == if frozen { "FROZEN" } else { "THAWED" }),
            Freezer::V2(f) => {
                std::fs::read_to_string(f.with_file_name("cgroup.events")).is_ok_and(|s| {
                    s.lines()
                        .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" })
                })
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            Freezer::V1(p) | Freezer::V2(p) => p,
        }
    }

    /// Sets the state and waits until the kernel reports it.
    fn settle(&self, frozen: bool) -> Result<()> {
        self.set(frozen)
            .map_err(|e| Error::io("cannot write the cgroup freezer", self.path(), e))?;
        let until = Instant::now() + FREEZE_SETTLE;
        while !self.is(frozen) {
            if Instant::now() > until {
                return Err(Error::Other(format!(
                    "{} did not become {} within {FREEZE_SETTLE:?}",
                    self.path().display(),
                    if frozen { "frozen" } else { "thawed" }
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Every cgroup the agent has frozen and not yet thawed.
static FROZEN: Mutex<Vec<Freezer>> = Mutex::new(Vec::new());

/// Thaws everything still frozen; for shutdown, abandonment and the panic hook. Never
/// panics and takes the lock even if a panicking thread held it.
pub fn thaw_all() {
    let mut frozen = FROZEN.lock().unwrap_or_else(|p| p.into_inner());
    for f in frozen.drain(..) {
        if let Err(e) = f.set(false) {
            eprintln!("volguard: cannot thaw {}: {e}", f.path().display());
        }
    }
}

fn thaw(list: &[Freezer]) {
    let mut frozen = FROZEN.lock().unwrap_or_else(|p| p.into_inner());
    for f in list {
        if let Some(i) = frozen.iter().position(|x| x == f) {
            frozen.swap_remove(i);
            if let Err(e) = f.settle(false) {
                tracing::error!("cannot thaw a container: {e}");
            }
        }
    }
}

/// Containers frozen for one read. Dropping it (or [`Freeze::thaw`]) thaws them; a timer
/// thaws them after the timeout even if the read goes on.
pub struct Freeze {
    freezers: Vec<Freezer>,
    names: Vec<String>,
    disarm: Arc<(Mutex<bool>, Condvar)>,
}

impl Freeze {
    pub fn start(users: &[User], timeout: Duration) -> Result<Freeze> {
        let mut freezers = Vec::new();
        for u in users {
            let f = Freezer::of_pid(u.pid)?;
            if !freezers.contains(&f) {
                freezers.push(f);
            }
        }
        let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
        for f in &freezers {
            FROZEN
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(f.clone());
            if let Err(e) = f.settle(true) {
                thaw(&freezers);
                return Err(e);
            }
        }
        tracing::info!("froze {} while reading", names.join(", "));
        let disarm = Arc::new((Mutex::new(false), Condvar::new()));
        let timer = (Arc::clone(&disarm), freezers.clone(), names.clone());
        std::thread::Builder::new()
            .name("freeze-timeout".into())
            .spawn(move || {
                let (lock, cv) = &*timer.0;
                let done = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (done, _) = cv
                    .wait_timeout_while(done, timeout, |d| !*d)
                    .unwrap_or_else(|p| p.into_inner());
                if !*done {
                    tracing::warn!(
                        "thawed {} after freeze_timeout ({timeout:?}) while the volume was still being read: the rest of this snapshot is not consistent",
                        timer.2.join(", ")
                    );
                    thaw(&timer.1);
                }
            })
            .map_err(|e| Error::Other(format!("cannot start the freeze timer: {e}")))?;
        Ok(Freeze {
            freezers,
            names,
            disarm,
        })
    }

    pub fn thaw(self) {}
}

impl Drop for Freeze {
    fn drop(&mut self) {
        let (lock, cv) = &*self.disarm;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        thaw(&self.freezers);
        tracing::info!("thawed {}", self.names.join(", "));
    }
}

/// Containers the agent has stopped and not yet started again: (id, name).
static STOPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn start_again(ids: &[(String, String)]) {
    let mut stopped = STOPPED.lock().unwrap_or_else(|p| p.into_inner());
    for (id, name) in ids {
        if let Some(i) = stopped.iter().position(|(x, _)| x == id) {
            stopped.swap_remove(i);
            if let Err(e) = api::start_container(id) {
                tracing::error!(
                    "container {name} was stopped for a backup and does not start again: {e}"
                );
            }
        }
    }
}

/// Starts every container still stopped by the agent; for shutdown and the panic hook.
pub fn restart_all_stopped() {
    let all = STOPPED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    start_again(&all);
}

/// Containers stopped for one read; dropping it starts them again.
pub struct Stopped {
    ids: Vec<(String, String)>,
}

impl Stopped {
    pub fn start(users: &[User], grace: Duration) -> Result<Stopped> {
        let mut stopped = Stopped { ids: Vec::new() };
        for u in users {
            let entry = (u.id.clone(), u.name.clone());
            STOPPED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
            stopped.ids.push(entry);
            // On failure `stopped` is dropped, starting again those already stopped.
            api::stop_container(&u.id, grace)?;
        }
        tracing::info!(
            "stopped {} while reading",
            stopped
                .ids
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        start_again(&self.ids);
    }
}
