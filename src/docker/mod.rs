//! The read-only view of Docker's on-disk state (docs/design.md, Reading Docker state):
//! where the data root is, which volumes exist ([`volumes`], from `metadata.db` through
//! [`bolt`]), which containers exist and what they mount ([`containers`]). Nothing here
//! talks to dockerd except [`api`], which only ever creates volumes, and nothing takes a
//! lock.

pub mod api;
pub mod bolt;
pub mod containers;
pub mod inventory;
pub mod labels;
pub mod layer_diff;
pub mod layers;
mod names;
pub mod volumes;

pub use names::{DEFAULT_ROOT, valid_volume_name, volume_dir};

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// `--docker-root`, else `data-root` from daemon.json, else the default.
pub fn data_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    #[derive(Deserialize)]
    struct Daemon {
        #[serde(rename = "data-root")]
        data_root: Option<PathBuf>,
    }
    std::fs::read(DAEMON_JSON)
        .ok()
        .and_then(|b| serde_json::from_slice::<Daemon>(&b).ok())
        .and_then(|d| d.data_root)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// Volumes that have a `_data` directory, sorted by name.
pub fn list_volumes(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("volumes");
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        Error::io(
            "cannot list Docker volumes in (is this a Docker host? set --docker-root)",
            &dir,
            e,
        )
    })?;
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if valid_volume_name(&name) && ent.path().join("_data").is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Directories under `<root>/volumes` that look like volumes but have no `_data`, each as a
/// warning that says what it means and what to do. `backup --all` and `inventory` show them
/// instead of silently passing over a volume whose data is gone.
pub fn volumes_without_data(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join("volumes")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| valid_volume_name(&e.file_name().to_string_lossy()))
        .filter(|e| std::fs::symlink_metadata(e.path().join("_data")).is_err())
        .map(|e| missing_data_message(&e.path(), &e.file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

fn missing_data_message(dir: &Path, name: &str) -> String {
    format!(
        "{}: volume directory without _data; its data is gone (or dockerd is creating or removing it right now). Nothing to back up: check with `docker volume inspect {name}`, then remove the directory or recreate the volume",
        dir.display()
    )
}

/// A volume's `_data` directory, or a clear error naming the volumes that do exist.
pub fn volume_data(root: &Path, name: &str) -> Result<PathBuf> {
    if !valid_volume_name(name) {
        return Err(Error::Usage(format!(
            "{name:?} is not a valid Docker volume name"
        )));
    }
    let dir = volume_dir(root, name);
    let data = dir.join("_data");
    if data.is_dir() {
        return Ok(data);
    }
    if dir.is_dir() {
        return Err(Error::Other(missing_data_message(&dir, name)));
    }
    let known = list_volumes(root).unwrap_or_default();
    Err(Error::NotFound {
        what: format!("no Docker volume {name:?}"),
        location: format!(
            "{}/volumes ({})",
            root.display(),
            if known.is_empty() {
                "there are none".to_string()
            } else {
                format!("found: {}", known.join(", "))
            }
        ),
        hint: "`docker volume ls` lists them".into(),
    })
}

/// Where a backup reads a volume from, and the definition to record with it.
#[derive(Debug, Clone)]
pub struct VolumeSource {
    /// The directory holding the volume's files right now.
    pub data: PathBuf,
    pub meta: crate::repo::format::snapshot::VolumeMeta,
}

/// Why a volume's files cannot be read on this host right now: `_data` is an empty
/// mountpoint that the local driver mounts (nfs, cifs, tmpfs, a device) only while a
/// container uses the volume. Backing up the empty directory would record a volume
/// without its data, so such a volume is skipped with this reason.
#[derive(Debug, Clone)]
pub struct NotMounted(pub String);

/// Resolves where `name`'s data is: `_data`, or for a local bind volume (`-o type=none -o
/// o=bind -o device=DIR`) that no container mounts now, DIR itself, which is what a
/// container would see. `defs` is [`volumes::read_volumes`]'s answer, read once per run.
pub fn volume_source(
    root: &Path,
    name: &str,
    defs: &[volumes::VolumeRecord],
) -> Result<std::result::Result<VolumeSource, NotMounted>> {
    let data = volume_data(root, name)?;
    let meta = defs
        .iter()
        .find(|d| d.name == name)
        .map(|d| crate::repo::format::snapshot::VolumeMeta {
            driver: d.driver.clone(),
            labels: d.labels.clone(),
            options: d.options.clone(),
        })
        .unwrap_or_else(|| crate::repo::format::snapshot::VolumeMeta {
            driver: "local".into(),
            ..Default::default()
        });
    let mut warnings = Vec::new();
    let mount = volumes::data_mount(root, name, &mut warnings);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if !mount.configured || mount.mounted_now {
        return Ok(Ok(VolumeSource { data, meta }));
    }
    let is_bind = meta
        .options
        .get("o")
        .is_some_and(|o| o.split(',').any(|t| t == "bind" || t == "rbind"));
    if let Some(device) = mount.device.as_deref().filter(|_| is_bind)
        && Path::new(device).is_absolute()
        && Path::new(device).is_dir()
    {
        return Ok(Ok(VolumeSource {
            data: PathBuf::from(device),
            meta,
        }));
    }
    Ok(Err(NotMounted(format!(
        "volume {name:?}: its data lives on {} {} and is mounted at {} only while a container uses the volume; \
         not backed up (an empty directory is not its data). Back it up while a container mounts it, or back up the device where it lives",
        mount.mount_type.as_deref().unwrap_or("a mount of type"),
        mount.device.as_deref().unwrap_or("(no device)"),
        data.display()
    ))))
}

/// Names of running containers that mount `volume`. config.v2.json can be stale (dockerd
/// killed), so "running" is confirmed by the container's pid still existing.
pub fn running_mounters(root: &Path, volume: &str) -> Vec<String> {
    let (list, warnings) = containers::read_containers(root);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut out: Vec<String> = list
        .into_iter()
        .filter(|c| {
            c.running
                && c.mounts.iter().any(|m| {
                    m.kind == containers::MountKind::Volume && m.name.as_deref() == Some(volume)
                })
        })
        .map(|c| c.name)
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_cannot_escape() {
        assert!(valid_volume_name("db_data-1.x"));
        for bad in ["", "..", "../etc", "a/b", ".hidden", "-x", "a b"] {
            assert!(!valid_volume_name(bad), "{bad}");
        }
    }
}
