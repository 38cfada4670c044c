//! What keeps the process cache current between a write and the moment its event is read:
//! the exec watch on the host's program filesystems and the kernel's process connector.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::attribution::ProcCache;
use super::fanotify;

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The exec watch on the filesystems programs are run from (the root, PATH directories,
/// the Docker root): host processes, whose exe is what attribution needs. Programs inside
/// containers run from overlay filesystems and are not covered; containers are recognised
/// by their cgroup instead.
pub(super) fn start_exec_watch(
    volumes_dir: &Path,
) -> std::result::Result<fanotify::ExecWatch, String> {
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
pub(super) fn start_connector(
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
