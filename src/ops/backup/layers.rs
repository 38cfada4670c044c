//! `backup --container NAME` and `backup --all-writable-layers`: which directories hold the
//! containers' writable layers, as backup sources named `container:<name>`.
//!
//! The writable layer is the overlayfs upper directory, backed up as it is on disk: files
//! the container added or changed, whiteouts (character devices 0/0) for what it deleted,
//! opaque directories (xattr `trusted.overlay.opaque=y`) for directories it replaced, and
//! redirect/metacopy xattrs. The backup pipeline already keeps device numbers and every
//! xattr root may read, so a restore to a directory or a tar gives that upper directory
//! back, ready to be compared (`volguard layer-diff` reads the same format) or laid over
//! the image again.

use std::path::Path;

use crate::docker::containers::{self, Container};
use crate::docker::layer_diff;
use crate::docker::layers;
use crate::ops::backup::Source;

/// Snapshot names of writable layers start with this; a volume name cannot contain ':'.
pub const SNAPSHOT_PREFIX: &str = "container:";

/// What was asked for, resolved: the sources to back up and, for `--all-writable-layers`,
/// one line per container whose layer cannot be backed up (the run then exits 3).
#[derive(Debug, Default)]
pub struct LayerSources {
    pub sources: Vec<Source>,
    pub skipped: Vec<String>,
}

/// The snapshot name of a container's writable layer.
pub fn snapshot_name(c: &Container) -> String {
    format!("{SNAPSHOT_PREFIX}{}", c.name)
}

/// The writable layer of one container as a backup source, or why there is none.
pub fn source_for(root: &Path, c: &Container) -> Result<Source, String> {
    let (_, layer) = layers::writable_layer(root, c)
        .map_err(|e| format!("container {} ({}): {e}", c.name, layers::short(&c.id)))?;
    Ok(Source {
        name: snapshot_name(c),
        origin: Some(format!(
            "writable layer of container {} ({}): {}",
            c.name,
            c.id,
            layer.upper.display()
        )),
        path: layer.upper,
        docker_volume: None,
        exclude_labels: Vec::new(),
    })
}

/// Resolves `--container NAME...` (each as `docker` resolves names: id, name, id prefix) and
/// `--all-writable-layers`. A named container that cannot be found or read is an error; with
/// `--all-writable-layers` an unreadable one is skipped with a line saying why.
pub fn sources(root: &Path, named: &[String], all: bool) -> Result<LayerSources, String> {
    let mut out = LayerSources::default();
    let mut seen = std::collections::HashSet::new();
    for wanted in named {
        let (c, warnings) = layer_diff::find_container(root, wanted)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let src = source_for(root, &c)?;
        if seen.insert(c.id.clone()) {
            out.sources.push(src);
        }
    }
    if all {
        let (list, warnings) = containers::read_containers(root);
        out.skipped.extend(
            warnings
                .into_iter()
                .map(|w| format!("{w}; its writable layer is not backed up")),
        );
        for c in list {
            if seen.contains(&c.id) {
                continue;
            }
            match source_for(root, &c) {
                Ok(src) => {
                    seen.insert(c.id.clone());
                    out.sources.push(src);
                }
                Err(e) => out.skipped.push(e),
            }
        }
    }
    // Two containers may not share a name, but a stale record could: keep snapshot names
    // unique so one layer's snapshot never becomes the other's parent.
    let mut names = std::collections::HashMap::new();
    for s in &out.sources {
        *names.entry(s.name.clone()).or_insert(0) += 1;
    }
    if let Some((dup, _)) = names.iter().find(|(_, n)| **n > 1) {
        return Err(format!(
            "two container records are named {:?}; back them up one at a time by id with --container",
            dup.trim_start_matches(SNAPSHOT_PREFIX)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_container(root: &Path, id: &str, name: &str, driver: &str) {
        let dir = root.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            format!(r#"{{"ID":"{id}","Name":"/{name}","Driver":"{driver}"}}"#),
        )
        .unwrap();
    }

    fn write_layer(root: &Path, id: &str, mount_id: &str) {
        let mounts = root.join("image/overlay2/layerdb/mounts").join(id);
        std::fs::create_dir_all(&mounts).unwrap();
        std::fs::write(mounts.join("mount-id"), mount_id).unwrap();
        std::fs::create_dir_all(root.join("overlay2").join(mount_id).join("diff")).unwrap();
    }

    #[test]
    fn named_and_all_layers_resolve_and_unreadable_ones_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_container(r, "aaaa1111", "web", "overlay2");
        write_layer(r, "aaaa1111", "m1");
        write_container(r, "bbbb2222", "snap", "overlayfs");
        write_container(r, "cccc3333", "nolayer", "overlay2");
        std::fs::create_dir_all(r.join("containers/dddd4444")).unwrap();
        std::fs::write(r.join("containers/dddd4444/config.v2.json"), "{").unwrap();

        let one = sources(r, &["web".into(), "aaaa".into()], false).unwrap();
        assert_eq!(one.sources.len(), 1, "the same container named twice");
        assert_eq!(one.sources[0].name, "container:web");
        assert_eq!(one.sources[0].path, r.join("overlay2/m1/diff"));
        assert!(one.skipped.is_empty());

        let all = sources(r, &[], true).unwrap();
        let names: Vec<&str> = all.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["container:web"]);
        assert_eq!(all.skipped.len(), 3, "{:?}", all.skipped);
        let text = all.skipped.join("\n");
        for want in ["containerd snapshotter", "mount-id", "dddd4444"] {
            assert!(text.contains(want), "{want} in {text}");
        }

        let err = sources(r, &["snap".into()], false).unwrap_err();
        assert!(err.contains("containerd snapshotter"), "{err}");
        let err = sources(r, &["nosuch".into()], false).unwrap_err();
        assert!(err.contains("no container named"), "{err}");
    }
}
