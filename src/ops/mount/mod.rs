//! `mount`: every snapshot of the repository as a read-only FUSE filesystem, laid out as
//! restic's mount is (`by-volume/`, `by-host/`, `latest` links). Directory trees are read
//! when first looked into, file bytes when read, through a bounded blob cache; new
//! snapshots appear without remounting. Ends when the mount is unmounted (`fusermount3
//! -u`, `umount`) or on SIGINT, SIGTERM or SIGHUP, which unmount it.

mod cache;
mod content;
mod fs;
mod layout;
mod tree;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::backend::Kind;
use crate::backend::counting::{ReadCount, ReadCounters};
use crate::error::{Error, Result};
use crate::repo::Repository;

pub use self::fs::REFRESH_AFTER;

/// Bytes of opened blobs the mount keeps for reads to come.
pub const CACHE_BYTES: usize = 128 * 1024 * 1024;
/// FUSE request threads: a slow fetch from S3 does not hold up every other request.
const FUSE_THREADS: usize = 4;
/// Where FUSE lives on Linux.
pub const FUSE_DEVICE: &str = "/dev/fuse";

pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Only the snapshots of this volume / host.
    pub volume: Option<String>,
    pub host: Option<String>,
    /// The counters of the backend the repository was opened on, for the report.
    pub backend_reads: Option<Arc<ReadCounters>>,
}

/// What a mount did, said when it ends.
#[derive(Debug, Serialize)]
pub struct MountReport {
    pub mountpoint: PathBuf,
    /// Snapshots shown when it was mounted.
    pub snapshots: usize,
    /// File reads the kernel asked for, and the bytes they returned.
    pub reads: u64,
    pub bytes_served: u64,
    /// Reads and listings answered with EIO (each logged with its path).
    pub io_errors: u64,
    /// Times the snapshot list changed while mounted.
    pub refreshes: u64,
    /// What was read from the repository's store (None when not counted).
    pub backend: Option<ReadCount>,
    /// Which signal ended it, if one did.
    pub signal: Option<String>,
}

/// Refuses what cannot be mounted before the repository is opened: the mountpoint must
/// be an empty directory, and FUSE must be there (the device, and fusermount3).
pub fn preflight(mountpoint: &Path) -> Result<()> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "mountpoint {shown} does not exist; create an empty directory for it (mkdir -p {shown})"
            )));
        }
        Err(e) => {
            return Err(Error::Usage(format!(
                "cannot use {shown} as mountpoint: {e}"
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::Usage(format!(
                "mountpoint {shown} is not a directory; give an empty directory"
            )));
        }
        Ok(_) => {}
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .map_err(|e| Error::Usage(format!("cannot read the mountpoint {shown}: {e}")))?;
    if entries.next().is_some() {
        return Err(Error::Usage(format!(
            "mountpoint {shown} is not empty (or something is mounted there already); give an \
             empty directory"
        )));
    }
    if !Path::new(FUSE_DEVICE).exists() {
        return Err(Error::Usage(format!(
            "no FUSE on this machine: {FUSE_DEVICE} is missing; load the kernel module \
             (modprobe fuse) and install the fuse3 package (Debian: apt-get install fuse3); \
             in a container, run it with --device /dev/fuse --cap-add SYS_ADMIN"
        )));
    }
    if fusermount().is_none() {
        return Err(Error::Usage(
            "no FUSE helper: fusermount3 is not on PATH; install the fuse3 package (Debian: \
             apt-get install fuse3)"
                .into(),
        ));
    }
    Ok(())
}

/// The fusermount program fuser will run (it honours FUSERMOUNT_PATH as well).
fn fusermount() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("fusermount3"), d.join("fusermount")])
        .find(|p| p.is_file())
}

/// Mounts the repository at `opts.mountpoint` and serves it until it is unmounted.
pub fn run(repo: Repository, opts: &MountOptions) -> Result<MountReport> {
    preflight(&opts.mountpoint)?;
    let index = crate::ops::prune::load_index_for_read(&repo)?;
    let names: HashSet<String> = repo
        .block_on(repo.backend().list(Kind::Snapshot))?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let (snaps, problems) = repo.list_snapshots()?;
    for p in problems {
        tracing::warn!("{p}");
    }
    let shown = snaps
        .iter()
        .filter(|(_, s)| opts.volume.as_ref().is_none_or(|v| &s.volume == v))
        .filter(|(_, s)| opts.host.as_ref().is_none_or(|h| &s.host == h))
        .count();
    if let Some(v) = &opts.volume
        && shown == 0
    {
        tracing::warn!("no snapshot of volume {v:?} yet; its directory appears with the first");
    }
    let fs = fs::MountFs::new(
        repo,
        index,
        snaps,
        names,
        CACHE_BYTES,
        opts.volume.clone(),
        opts.host.clone(),
    );
    let counters = fs.counters.clone();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("volguard".into()),
        fuser::MountOption::Subtype("volguard".into()),
        // The kernel checks modes and ACLs as on any filesystem; a snapshot's setuid
        // binaries and device nodes are shown, never honoured.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    config.n_threads = Some(FUSE_THREADS);
    let mut session = fuser::Session::new(fs, &opts.mountpoint, &config).map_err(|e| {
        Error::Other(format!(
            "cannot mount FUSE at {}: {e}; is FUSE usable here (fuse3 installed, /dev/fuse \
             readable, and in a container CAP_SYS_ADMIN)?",
            opts.mountpoint.display()
        ))
    })?;
    tracing::info!(
        "mounted {} snapshot(s) at {}",
        shown,
        opts.mountpoint.display()
    );
    let signal = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut signals = {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Error::Other(format!("cannot install the signal handlers: {e}")))?
    };
    let signals_handle = signals.handle();
    let waiter = {
        let mut unmounter = session.unmount_callable();
        let mountpoint = opts.mountpoint.clone();
        let signal = signal.clone();
        std::thread::Builder::new()
            .name("volguard-mount-signals".into())
            .spawn(move || {
                if let Some(s) = signals.forever().next() {
                    let name = signal_hook::low_level::signal_name(s).unwrap_or("signal");
                    tracing::info!("{name}: unmounting {}", mountpoint.display());
                    *signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
                    if let Err(e) = unmounter.unmount() {
                        // Busy (a shell inside it): detach it now, it goes when released.
                        tracing::warn!(
                            "cannot unmount {} ({e}); detaching it lazily",
                            mountpoint.display()
                        );
                        lazy_unmount(&mountpoint);
                    }
                }
            })
            .map_err(|e| Error::Other(format!("cannot start the signal thread: {e}")))?
    };
    let served = session.run();
    signals_handle.close();
    let _ = waiter.join();
    served.map_err(|e| {
        Error::Other(format!(
            "the FUSE session at {} ended with an error: {e}",
            opts.mountpoint.display()
        ))
    })?;
    let signal = signal.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(MountReport {
        mountpoint: opts.mountpoint.clone(),
        snapshots: shown,
        reads: counters.reads.load(Ordering::Relaxed),
        bytes_served: counters.bytes_served.load(Ordering::Relaxed),
        io_errors: counters.io_errors.load(Ordering::Relaxed),
        refreshes: counters.refreshes.load(Ordering::Relaxed),
        backend: opts.backend_reads.as_ref().map(|c| c.get()),
        signal,
    })
}

fn lazy_unmount(mountpoint: &Path) {
    if nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return;
    }
    if let Some(fm) = fusermount() {
        let _ = std::process::Command::new(fm)
            .args(["-u", "-z"])
            .arg(mountpoint)
            .status();
    }
}
