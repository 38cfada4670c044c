//! `volguard inventory`: what Docker has on this host — volumes (with who mounts them) and
//! containers (with what they mount, and which of those mounts a volume backup covers) —
//! read from the data root without asking dockerd.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::docker::containers::{self, Container, MountKind};
use crate::docker::layers;
use crate::docker::volumes::{self, DataMount, Origin};

#[derive(Debug, Serialize)]
pub struct Inventory {
    pub docker_root: String,
    pub volumes: Vec<VolumeInfo>,
    pub containers: Vec<ContainerInfo>,
    /// One line per item that could not be read; everything else is still listed.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    /// Label `com.docker.volume.anonymous`, or (older dockerd) a container mounts it without
    /// naming it.
    pub anonymous: bool,
    /// No container, running or not, mounts it.
    pub dangling: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub containers: Vec<VolumeUser>,
    /// `_data` is (or becomes, while in use) a mountpoint: its content is not on the
    /// data root's filesystem.
    pub data_mountpoint: bool,
    pub data_mount: DataMount,
    pub data_path: String,
    /// metadata.db or directory.
    pub source: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_count: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct VolumeUser {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub destination: String,
    pub rw: bool,
}

#[derive(Debug, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub running: bool,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// Bytes in the container's writable layer; only computed with `--sizes` (overlay2).
    pub writable_layer_bytes: Option<u64>,
    pub mounts: Vec<MountInfo>,
}

#[derive(Debug, Serialize)]
pub struct MountInfo {
    #[serde(rename = "type")]
    pub kind: MountKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: String,
    pub destination: String,
    pub rw: bool,
    /// Whether `volguard backup --all` covers this mount's data.
    pub backed_up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub struct Options {
    /// Walk every volume (and writable layer) to report sizes and file counts.
    pub sizes: bool,
}

pub fn collect(root: &Path, opts: &Options) -> Inventory {
    let (records, mut warnings) = volumes::read_volumes(root);
    warnings.extend(crate::docker::volumes_without_data(root));
    let (ctrs, cw) = containers::read_containers(root);
    warnings.extend(cw);

    let mut volumes: Vec<VolumeInfo> = records
        .into_iter()
        .map(|r| {
            let users: Vec<VolumeUser> = ctrs
                .iter()
                .flat_map(|c| {
                    c.mounts
                        .iter()
                        .filter(|m| {
                            m.kind == MountKind::Volume && m.name.as_deref() == Some(&r.name)
                        })
                        .map(|m| VolumeUser {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            running: c.running,
                            destination: m.destination.clone(),
                            rw: m.rw,
                        })
                })
                .collect();
            let anonymous = r.labels.contains_key(volumes::ANONYMOUS_LABEL)
                || ctrs.iter().flat_map(|c| &c.mounts).any(|m| {
                    m.kind == MountKind::Volume
                        && m.anonymous_spec
                        && m.name.as_deref() == Some(&r.name)
                });
            // Names come from files: only a valid one may become a path under the root.
            let safe = crate::docker::valid_volume_name(&r.name);
            if !safe {
                warnings.push(format!(
                    "volume {:?}: not a valid volume name; its directory is not inspected",
                    r.name
                ));
            }
            let data_mount = if safe && r.driver == "local" {
                volumes::data_mount(root, &r.name, &mut warnings)
            } else {
                DataMount::default()
            };
            let data = crate::docker::volume_dir(root, &r.name).join("_data");
            let (size_bytes, file_count) = if safe && opts.sizes && data.is_dir() {
                let (b, n) = volumes::tree_size(&data, &mut warnings);
                (Some(b), Some(n))
            } else {
                (None, None)
            };
            VolumeInfo {
                dangling: users.is_empty(),
                anonymous,
                data_mountpoint: data_mount.is_mountpoint(),
                data_mount,
                data_path: data.display().to_string(),
                name: r.name,
                driver: r.driver,
                labels: r.labels,
                options: r.options,
                containers: users,
                source: r.origin,
                size_bytes,
                file_count,
            }
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));

    let containers = ctrs
        .into_iter()
        .map(|c| {
            let writable_layer_bytes = if opts.sizes {
                writable_layer_bytes(root, &c, &mut warnings)
            } else {
                None
            };
            ContainerInfo {
                mounts: c.mounts.into_iter().map(mount_info).collect(),
                id: c.id,
                name: c.name,
                image: c.image,
                running: c.running,
                driver: c.driver,
                labels: c.labels,
                writable_layer_bytes,
            }
        })
        .collect();
    Inventory {
        docker_root: root.display().to_string(),
        volumes,
        containers,
        warnings,
    }
}

fn mount_info(m: containers::Mount) -> MountInfo {
    let reason = match m.kind {
        MountKind::Volume => None,
        MountKind::Bind => Some(format!(
            "bind mount of a host directory; back it up with `volguard backup --path {} --name NAME`",
            m.source
        )),
        MountKind::Tmpfs => Some("tmpfs: memory only, gone when the container stops".to_string()),
        MountKind::Other => Some("not a volume".to_string()),
    };
    MountInfo {
        backed_up: reason.is_none(),
        reason,
        kind: m.kind,
        name: m.name,
        source: m.source,
        destination: m.destination,
        rw: m.rw,
    }
}

/// Bytes in the container's writable layer (overlay upper directory), either layout. A layer
/// that cannot be located stays unknown (null) without a warning: containers being created
/// or removed pass through that state, and layer-diff names the reason when asked.
fn writable_layer_bytes(root: &Path, c: &Container, warnings: &mut Vec<String>) -> Option<u64> {
    let (_, layer) = layers::writable_layer(root, c).ok()?;
    Some(volumes::tree_size(&layer.upper, warnings).0)
}
