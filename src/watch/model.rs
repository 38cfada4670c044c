//! The watcher's model of the Docker host: which volumes exist, which filesystems carry a
//! fanotify mark, which containers mount which volumes, and where a path lies in a volume.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{MODEL_MAX_AGE, MODEL_MIN_INTERVAL, Status, Unwatched, fanotify};
use crate::docker::{self, containers};
use crate::error::{Error, Result};

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

pub(super) fn mark_error_reason(e: &std::io::Error, path: &Path) -> String {
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

pub(super) struct ContainerMounts {
    pub(super) name: String,
    pub(super) volumes: HashSet<String>,
}

/// Which volumes exist, which filesystems carry marks, which containers mount what.
pub(super) struct Model {
    pub(super) root: PathBuf,
    pub(super) volumes_dir: PathBuf,
    pub(super) volumes: BTreeMap<String, Option<u64>>,
    pub(super) unwatched: BTreeMap<String, String>,
    pub(super) marked_devs: HashSet<u64>,
    pub(super) containers: HashMap<String, ContainerMounts>,
    /// Container ids looked up but not found, and when.
    pub(super) missing: HashMap<String, Instant>,
    pub(super) volumes_read: Instant,
    pub(super) containers_read: Instant,
}

/// Mount fds by filesystem id, for `open_by_handle_at`.
pub(super) type MountFds = HashMap<[i32; 2], OwnedFd>;

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

impl Model {
    pub(super) fn new(root: &Path) -> Result<Model> {
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

    pub(super) fn mark(
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
    pub(super) fn refresh_volumes(
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

    pub(super) fn refresh_containers(&mut self) {
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
    pub(super) fn container(&mut self, id: &str) -> Option<&ContainerMounts> {
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
    pub(super) fn locate(&self, dir: &Path, name: Option<&[u8]>) -> Option<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
