//! Snapshot objects: the root of one backup of one volume, written last.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::repo::format::crypto::{Keys, Purpose};
use crate::repo::format::tree::Node;

/// Largest snapshot object accepted when reading.
pub const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339, UTC.
    pub time: String,
    pub host: String,
    /// Volume name, or the `--name` given with `--path`.
    pub volume: String,
    /// The directory that was read.
    pub source: String,
    pub tags: Vec<String>,
    pub parent: Option<SnapshotId>,
    /// The backed-up directory itself; its `subtree` is the root tree.
    pub root: Node,
    pub summary: Summary,
    pub program: String,
    /// What Docker knew about the volume when it was read, so `restore --all` can recreate
    /// it as it was. None for `--path` backups, imports, and snapshots of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_volume: Option<VolumeMeta>,
}

/// A Docker volume's definition: what `docker volume create` needs to make it again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// Driver options (`docker volume create -o`); for `local`: type, device, o, size.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    /// Logical bytes of all files in the snapshot.
    pub total_bytes: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub blobs_added: u64,
    pub duration_s: f64,
    pub errors: Vec<String>,
    /// Entries left out by an exclude (a directory counts once, with all below it).
    #[serde(default)]
    pub excluded: u64,
}

impl Snapshot {
    pub fn seal(&self, keys: &Keys) -> (SnapshotId, Vec<u8>) {
        let plain = serde_json::to_vec(self).expect("serializing a snapshot cannot fail");
        (
            SnapshotId(keys.id_of(&plain)),
            keys.seal(Purpose::Snapshot, &plain),
        )
    }

    pub fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<Snapshot> {
        let what = format!("snapshots/{name}");
        if sealed.len() > MAX_SNAPSHOT_BYTES {
            return Err(Error::corrupt(
                &what,
                "larger than any snapshot volguard writes",
            ));
        }
        let plain = keys.open(Purpose::Snapshot, sealed, &what)?;
        if SnapshotId::from_hex(name).map(|i| i.0) != Some(keys.id_of(&plain)) {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        Self::decode_plain(&plain, &what)
    }

    /// Decodes a decrypted snapshot (fuzzed directly).
    pub fn decode_plain(plain: &[u8], what: &str) -> Result<Snapshot> {
        let snap: Snapshot = serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt(what, format!("decode: {e}")))?;
        if snap.root.subtree.is_none() {
            return Err(Error::corrupt(what, "snapshot has no root tree"));
        }
        Ok(snap)
    }
}
