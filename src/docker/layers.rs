//! Where a container's writable layer and its image layers are on disk, per storage layout
//! (DESIGN §4): the overlay2 graphdriver (`overlay2/<mount-id>/diff` plus `lower` links) or
//! the containerd snapshotter, which is detected and named but not read yet.

use std::path::{Path, PathBuf};

use super::containers::Container;

/// How dockerd stores a container's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// The classic graphdriver: `<root>/overlay2`, layer ids in `image/overlay2/layerdb`.
    Overlay2,
    /// Docker Engine 29's default: layers are containerd snapshots.
    ContainerdSnapshotter,
}

/// A container's writable layer on the overlay2 graphdriver.
#[derive(Debug, Clone)]
pub struct Overlay2Layer {
    /// `overlay2/<mount-id>/diff`: the overlayfs upper directory.
    pub upper: PathBuf,
    /// The lower directories, nearest first (the container's init layer, then the image
    /// layers from the top down).
    pub lowers: Vec<PathBuf>,
}

/// Longest `lower` file accepted: 128 layers of `l/` + 26 characters, with room to spare.
const MAX_LOWER_FILE_BYTES: u64 = 64 * 1024;

/// Which layout holds this container's filesystem, from the driver recorded in its
/// config.v2.json; an unknown driver is an error that names it.
pub fn storage_of(c: &Container) -> Result<Storage, String> {
    match c.driver.as_str() {
        "overlay2" => Ok(Storage::Overlay2),
        "overlayfs" => Ok(Storage::ContainerdSnapshotter),
        "" => Err(format!(
            "container {} ({}): {} records no storage driver (\"Driver\"); volguard reads overlay2 layers only",
            c.name,
            short(&c.id),
            c.config_path.display()
        )),
        other => Err(format!(
            "container {} ({}): {} names storage driver {other:?}, which volguard cannot read; it reads overlay2 (graphdriver) layers and recognises the containerd snapshotter (\"overlayfs\"). Use `docker diff` while dockerd runs",
            c.name,
            short(&c.id),
            c.config_path.display()
        )),
    }
}

pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Layer ids and `l/` link names are hex or base32 file names: nothing else may become a
/// path under the data root.
fn plain_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Finds the overlay2 upper and lower directories of container `id` under `root`.
pub fn overlay2_layer(root: &Path, id: &str) -> Result<Overlay2Layer, String> {
    if !plain_component(id) {
        return Err(format!("container id {id:?} is not a plain name"));
    }
    let mid_path = root
        .join("image/overlay2/layerdb/mounts")
        .join(id)
        .join("mount-id");
    let mount_id = std::fs::read_to_string(&mid_path).map_err(|e| {
        format!(
            "{}: {e}; the container's writable layer is not registered (was the data root copied completely?)",
            mid_path.display()
        )
    })?;
    let mount_id = mount_id.trim();
    if !plain_component(mount_id) {
        return Err(format!(
            "{}: unexpected content {:?}; expected a layer id",
            mid_path.display(),
            mount_id.chars().take(80).collect::<String>()
        ));
    }
    let layer_dir = root.join("overlay2").join(mount_id);
    let upper = layer_dir.join("diff");
    if !upper.is_dir() {
        return Err(format!(
            "{}: missing; the writable layer named by {} is gone",
            upper.display(),
            mid_path.display()
        ));
    }
    let lower_path = layer_dir.join("lower");
    let lowers = match std::fs::metadata(&lower_path) {
        // A container of an image with no layers (FROM scratch, nothing added) has none.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", lower_path.display())),
        Ok(m) if m.len() > MAX_LOWER_FILE_BYTES => {
            return Err(format!(
                "{}: {} bytes, larger than any layer list",
                lower_path.display(),
                m.len()
            ));
        }
        Ok(_) => {
            let text = std::fs::read_to_string(&lower_path)
                .map_err(|e| format!("{}: {e}", lower_path.display()))?;
            parse_lower(root, text.trim())
                .map_err(|why| format!("{}: {why}", lower_path.display()))?
        }
    };
    Ok(Overlay2Layer { upper, lowers })
}

/// `l/ABC:l/DEF` → the `diff` directories the links point at. A link is
/// `../<layer-id>/diff`; it is resolved by hand so that a copied data root
/// (`--docker-root`) stays self-contained and a crafted link cannot leave it.
fn parse_lower(root: &Path, text: &str) -> Result<Vec<PathBuf>, String> {
    let overlay = root.join("overlay2");
    let mut out = Vec::new();
    for part in text.split(':') {
        let link = part
            .strip_prefix("l/")
            .filter(|s| plain_component(s))
            .ok_or_else(|| format!("entry {part:?} is not of the form l/<id>"))?;
        let link_path = overlay.join("l").join(link);
        let target = std::fs::read_link(&link_path)
            .map_err(|e| format!("link {}: {e}", link_path.display()))?;
        let target = target.to_string_lossy();
        let layer = target
            .strip_prefix("../")
            .and_then(|t| t.strip_suffix("/diff"))
            .filter(|s| plain_component(s))
            .ok_or_else(|| {
                format!(
                    "link {} points to {target:?}, not ../<layer-id>/diff",
                    link_path.display()
                )
            })?;
        out.push(overlay.join(layer).join("diff"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_links_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let l = root.path().join("overlay2/l");
        std::fs::create_dir_all(&l).unwrap();
        std::os::unix::fs::symlink("../abc/diff", l.join("AAA")).unwrap();
        std::os::unix::fs::symlink("/etc", l.join("BAD")).unwrap();
        std::os::unix::fs::symlink("../../x/diff", l.join("UP")).unwrap();
        let got = parse_lower(root.path(), "l/AAA").unwrap();
        assert_eq!(got, vec![root.path().join("overlay2/abc/diff")]);
        for bad in ["l/BAD", "l/UP", "l/../x", "AAA", "l/AAA:", "l/MISSING"] {
            assert!(parse_lower(root.path(), bad).is_err(), "{bad}");
        }
    }
}
