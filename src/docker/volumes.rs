//! Docker's volume records: `volumes/metadata.db` (bucket `volumes`: name → JSON `{Name,
//! Driver, Labels, Options}`), completed by the volume directories on disk and each volume's
//! `opts.json`, which says whether `_data` is a mountpoint.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bolt;

/// Label dockerd (23+) puts on volumes it creates for `-v /path` and image VOLUMEs.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// Where a volume record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A record in metadata.db.
    MetadataDb,
    /// Only a directory under `volumes/` (metadata.db unreadable, or the record is missing).
    Directory,
}

#[derive(Debug, Clone)]
pub struct VolumeRecord {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub origin: Origin,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DbVolume {
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

/// Reads every volume: metadata.db records first, then directories it does not list.
/// Problems (unreadable db, malformed record) become warnings; the rest is still returned.
pub fn read_volumes(root: &Path) -> (Vec<VolumeRecord>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out: BTreeMap<String, VolumeRecord> = BTreeMap::new();
    let db_path = root.join("volumes").join("metadata.db");
    match bolt::Db::open(&db_path) {
        Ok(db) => records_from_db(&db, &db_path, &mut out, &mut warnings),
        Err(bolt::BoltError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => warnings.push(db_warning(&db_path, &err)),
    }
    if let Ok(rd) = std::fs::read_dir(root.join("volumes")) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if out.contains_key(&name)
                || !super::valid_volume_name(&name)
                || !ent.path().join("_data").is_dir()
            {
                continue;
            }
            out.insert(
                name.clone(),
                VolumeRecord {
                    name,
                    driver: "local".to_string(),
                    labels: BTreeMap::new(),
                    options: BTreeMap::new(),
                    origin: Origin::Directory,
                },
            );
        }
    }
    (out.into_values().collect(), warnings)
}

fn db_warning(db_path: &Path, err: &bolt::BoltError) -> String {
    format!(
        "{}: {err}; volumes are listed from their directories only (driver, labels and options unknown)",
        db_path.display()
    )
}

/// The volume records of a metadata.db already read into memory (`db_path` only names it
/// in warnings). The fuzz target `bolt_reader` drives the reader through this.
pub fn volumes_from_db_bytes(data: Vec<u8>, db_path: &Path) -> (Vec<VolumeRecord>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut warnings = Vec::new();
    match bolt::Db::parse(data) {
        Ok(db) => records_from_db(&db, db_path, &mut out, &mut warnings),
        Err(err) => warnings.push(db_warning(db_path, &err)),
    }
    (out.into_values().collect(), warnings)
}

/// Bucket `volumes`: name → JSON `{Name, Driver, Labels, Options}`. A malformed record is a
/// warning; the others are kept.
fn records_from_db(
    db: &bolt::Db,
    db_path: &Path,
    out: &mut BTreeMap<String, VolumeRecord>,
    warnings: &mut Vec<String>,
) {
    let entries = match db.bucket(b"volumes") {
        Ok(Some(entries)) => entries,
        Ok(None) => return,
        Err(err) => {
            warnings.push(db_warning(db_path, &err));
            return;
        }
    };
    for e in entries {
        let key = String::from_utf8_lossy(&e.key).into_owned();
        if e.bucket {
            warnings.push(format!(
                "{}: volume {key:?} is a bucket, not a record; skipped",
                db_path.display()
            ));
            continue;
        }
        match serde_json::from_slice::<DbVolume>(&e.value) {
            Ok(v) => {
                let name = if v.name.is_empty() {
                    key.clone()
                } else {
                    v.name
                };
                out.insert(
                    name.clone(),
                    VolumeRecord {
                        name,
                        driver: v.driver,
                        labels: v.labels.unwrap_or_default(),
                        options: v.options.unwrap_or_default(),
                        origin: Origin::MetadataDb,
                    },
                );
            }
            Err(err) => warnings.push(format!(
                "{}: volume {key:?} has a malformed record ({err}); skipped",
                db_path.display()
            )),
        }
    }
}

/// What `volumes/<name>/opts.json` and the filesystem say about `_data` being a mountpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DataMount {
    /// opts.json asks for a mount (type or device set): `_data` is mounted while in use.
    pub configured: bool,
    /// `_data` is on another device than the volume directory right now.
    pub mounted_now: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl DataMount {
    pub fn is_mountpoint(&self) -> bool {
        self.configured || self.mounted_now
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct OptsJson {
    #[serde(default)]
    mount_type: String,
    #[serde(default)]
    mount_device: String,
}

/// Inspects `_data` of a local volume; a malformed opts.json is a warning.
pub fn data_mount(root: &Path, name: &str, warnings: &mut Vec<String>) -> DataMount {
    let dir = super::volume_dir(root, name);
    let mut m = DataMount::default();
    let opts = dir.join("opts.json");
    match std::fs::read(&opts) {
        Ok(bytes) => match serde_json::from_slice::<OptsJson>(&bytes) {
            Ok(o) => {
                m.configured = !o.mount_type.is_empty() || !o.mount_device.is_empty();
                m.mount_type = Some(o.mount_type).filter(|s| !s.is_empty());
                m.device = Some(o.mount_device).filter(|s| !s.is_empty());
            }
            Err(e) => warnings.push(format!("{}: malformed ({e})", opts.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warnings.push(format!("{}: {e}", opts.display())),
    }
    if let (Ok(d), Ok(data)) = (
        std::fs::symlink_metadata(&dir),
        std::fs::symlink_metadata(dir.join("_data")),
    ) {
        m.mounted_now = d.dev() != data.dev();
    }
    m
}

/// Size in bytes (regular files, by length) and number of entries below `dir`, staying on
/// its filesystem and never following symlinks. Unreadable entries are counted as warnings.
pub fn tree_size(dir: &PathBuf, warnings: &mut Vec<String>) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    for ent in walkdir::WalkDir::new(dir)
        .same_file_system(true)
        .min_depth(1)
    {
        match ent {
            Ok(e) => {
                files += 1;
                if let Ok(md) = e.metadata()
                    && md.is_file()
                {
                    bytes += md.len();
                }
            }
            Err(e) => warnings.push(format!("{}: {e}", dir.display())),
        }
    }
    (bytes, files)
}
