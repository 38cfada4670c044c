//! Where a container's writable layer and its image layers are on disk, per storage layout
//! (docs/design.md, Reading Docker state): the overlay2 graphdriver
//! (`overlay2/<mount-id>/diff` plus `lower` links) or the containerd snapshotter (Docker
//! Engine 29's default: `snapshots/<id>/fs` directories of containerd's overlayfs
//! snapshotter, found through its own bbolt `metadata.db`). Both are overlayfs upper and
//! lower directories in the end, read the same way.

use std::collections::HashMap;
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

/// A container's writable layer: overlayfs upper and lower directories, in either layout.
#[derive(Debug, Clone)]
pub struct Overlay2Layer {
    /// The overlayfs upper directory: `overlay2/<mount-id>/diff` (graphdriver) or
    /// `snapshots/<id>/fs` (containerd snapshotter).
    pub upper: PathBuf,
    /// The lower directories, nearest first (the container's init layer, then the image
    /// layers from the top down).
    pub lowers: Vec<PathBuf>,
}

/// The container's writable layer in whichever layout its record names.
pub fn writable_layer(root: &Path, c: &Container) -> Result<(Storage, Overlay2Layer), String> {
    let storage = storage_of(c)?;
    let layer = match storage {
        Storage::Overlay2 => overlay2_layer(root, &c.id)?,
        Storage::ContainerdSnapshotter => containerd_layer(root, &c.id)?,
    };
    Ok((storage, layer))
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
            "container {} ({}): {} names storage driver {other:?}, which volguard cannot read; it reads overlay2 (graphdriver) layers and the containerd snapshotter's (\"overlayfs\"). Use `docker diff` while dockerd runs",
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

/// containerd's overlayfs snapshotter directory: the containerd dockerd runs itself keeps it
/// under the data root; a system containerd (packaged Docker Engine) under /var/lib/containerd,
/// which is only looked at for the default data root: a copied data root (`--docker-root`)
/// must not be paired with this host's containerd.
pub fn snapshotter_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("containerd/daemon/io.containerd.snapshotter.v1.overlayfs")];
    if root == Path::new(super::DEFAULT_ROOT) {
        dirs.push(PathBuf::from(
            "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
        ));
    }
    dirs
}

/// Longest parent chain followed (images have at most 127 layers, plus the init layer).
const MAX_SNAPSHOT_CHAIN: usize = 256;

/// One snapshot of the snapshotter's `metadata.db` (bucket `v1/snapshots/<key>`).
#[derive(Debug, Clone)]
struct SnapshotRecord {
    id: u64,
    parent: Option<String>,
}

/// Go's `binary.Uvarint`; None for an empty, unterminated or overlong number.
fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return None;
        }
        x |= part << (7 * i);
        if byte < 0x80 {
            return Some(x);
        }
    }
    None
}

/// Every snapshot in the snapshotter's metadata.db, by key (`<namespace>/<n>/<name>`).
fn read_snapshots(db_path: &Path) -> Result<HashMap<String, SnapshotRecord>, String> {
    let db = super::bolt::Db::open(db_path).map_err(|e| format!("{}: {e}", db_path.display()))?;
    let entries = db
        .bucket_path(&[b"v1", b"snapshots"])
        .map_err(|e| format!("{}: {e}", db_path.display()))?
        .ok_or_else(|| {
            format!(
                "{}: no bucket v1/snapshots; not a containerd snapshotter database",
                db_path.display()
            )
        })?;
    let mut out = HashMap::new();
    for e in entries {
        let key = String::from_utf8_lossy(&e.key).into_owned();
        let fields = db
            .sub_bucket(&e)
            .map_err(|err| format!("{}: snapshot {key:?}: {err}", db_path.display()))?;
        let field = |name: &[u8]| fields.iter().find(|f| f.key == name && !f.bucket);
        let Some(id) = field(b"id").and_then(|f| uvarint(&f.value)) else {
            return Err(format!(
                "{}: snapshot {key:?} has no readable id",
                db_path.display()
            ));
        };
        let parent = field(b"parent").map(|f| String::from_utf8_lossy(&f.value).into_owned());
        out.insert(key, SnapshotRecord { id, parent });
    }
    Ok(out)
}

/// Finds container `id`'s snapshot (key `<namespace>/<n>/<id>`, namespace `moby` preferred)
/// and its parents in the containerd snapshotter, and returns their `fs` directories.
pub fn containerd_layer(root: &Path, id: &str) -> Result<Overlay2Layer, String> {
    if !plain_component(id) {
        return Err(format!("container id {id:?} is not a plain name"));
    }
    let candidates = snapshotter_dirs(root);
    let Some(dir) = candidates
        .iter()
        .find(|d| d.join("metadata.db").is_file())
        .cloned()
    else {
        return Err(format!(
            "container {} uses the containerd snapshotter, but no snapshotter database was found (looked for {}); was the data root copied completely?",
            short(id),
            candidates
                .iter()
                .map(|d| d.join("metadata.db").display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    };
    let db_path = dir.join("metadata.db");
    let snaps = read_snapshots(&db_path)?;
    let name_of = |key: &str| key.splitn(3, '/').nth(2).map(str::to_string);
    let mut mine: Vec<&String> = snaps
        .keys()
        .filter(|k| name_of(k).as_deref() == Some(id))
        .collect();
    mine.sort_by_key(|k| !k.starts_with("moby/"));
    let key = match mine.as_slice() {
        [] => {
            return Err(format!(
                "{}: no snapshot for container {}; its writable layer is not registered",
                db_path.display(),
                short(id)
            ));
        }
        [one, ..] => (*one).clone(),
    };
    let fs_of = |snap_id: u64| dir.join("snapshots").join(snap_id.to_string()).join("fs");
    let upper = fs_of(snaps[&key].id);
    if !upper.is_dir() {
        return Err(format!(
            "{}: missing; the writable layer named by {} is gone",
            upper.display(),
            db_path.display()
        ));
    }
    let mut lowers = Vec::new();
    let mut seen = std::collections::HashSet::from([key.clone()]);
    let mut next = snaps[&key].parent.clone();
    while let Some(p) = next.filter(|p| !p.is_empty()) {
        if !seen.insert(p.clone()) || lowers.len() >= MAX_SNAPSHOT_CHAIN {
            return Err(format!(
                "{}: the parents of {key:?} loop or run longer than {MAX_SNAPSHOT_CHAIN}",
                db_path.display()
            ));
        }
        let rec = snaps.get(&p).ok_or_else(|| {
            format!(
                "{}: snapshot {p:?}, a parent of {key:?}, is missing",
                db_path.display()
            )
        })?;
        lowers.push(fs_of(rec.id));
        next = rec.parent.clone();
    }
    Ok(Overlay2Layer { upper, lowers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarints_decode_like_go() {
        assert_eq!(uvarint(&[0x05]), Some(5));
        assert_eq!(uvarint(&[0xac, 0x02]), Some(300));
        assert_eq!(
            uvarint(&[0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()),
            Some(u64::MAX)
        );
        assert_eq!(uvarint(&[]), None);
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[0xff; 10]), None);
    }

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
