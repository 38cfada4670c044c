//! Restoring into Docker volumes: one volume (`restore --into-volume`) or every volume a
//! host had (`restore --all`), the day a host dies and a new one has only the bucket and
//! the key. Volumes are recreated with the driver, labels and options their snapshots
//! recorded, filled beside their data directory and swapped into place in one rename, and
//! every restored file is re-hashed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::docker::{self, api};
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::ops::restore::{self, RestoreOptions, RestoreReport};
use crate::repo::format::index::Index;
use crate::repo::format::snapshot::{Snapshot, VolumeMeta};
use crate::repo::{Repository, SnapshotEntry};

/// One volume `restore --all` brings back, and the snapshot it uses.
#[derive(Debug, Clone)]
pub struct Planned {
    pub volume: String,
    pub id: SnapshotId,
    pub snap: Snapshot,
}

/// What `restore --all` will do, decided from the snapshot list alone.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub volumes: Vec<Planned>,
    /// Names with snapshots from the host that are not restored, each with the reason.
    pub passed_over: Vec<String>,
}

/// True for snapshots of Docker volumes: those that recorded the volume's definition, and
/// those of older versions read from `<root>/volumes/<name>/_data`. `--path` backups and
/// imports are restored by name only: volguard cannot know they were volumes.
fn is_volume_snapshot(s: &Snapshot) -> bool {
    docker::valid_volume_name(&s.volume)
        && (s.docker_volume.is_some()
            || s.source.ends_with(&format!("/volumes/{}/_data", s.volume)))
}

/// For each volume of `host`, its newest snapshot no newer than `at` (an RFC 3339 time as
/// [`crate::fmt::format_time`] writes it; `None` = the newest). `all` is oldest first.
pub fn plan(all: &[SnapshotEntry], host: &str, at: Option<&str>) -> Plan {
    use std::collections::BTreeMap;
    let mut newest: BTreeMap<&str, &SnapshotEntry> = BTreeMap::new();
    let mut too_new: BTreeMap<&str, &str> = BTreeMap::new();
    let mut not_volumes: BTreeMap<&str, ()> = BTreeMap::new();
    for e in all.iter().filter(|(_, s)| s.host == host) {
        let s = &e.1;
        if !is_volume_snapshot(s) {
            not_volumes.insert(&s.volume, ());
        } else if at.is_some_and(|at| s.time.as_str() > at) {
            too_new.entry(&s.volume).or_insert(&s.time);
        } else {
            newest.insert(&s.volume, e);
        }
    }
    let mut plan = Plan::default();
    for (name, (id, snap)) in &newest {
        plan.volumes.push(Planned {
            volume: name.to_string(),
            id: *id,
            snap: snap.clone(),
        });
    }
    for (name, first) in too_new {
        if !newest.contains_key(name) {
            plan.passed_over.push(format!(
                "{name}: no snapshot at or before --at (the first is from {first})"
            ));
        }
    }
    for name in not_volumes.keys() {
        if !newest.contains_key(name) {
            plan.passed_over.push(format!(
                "{name}: snapshots of a directory or an imported archive, not of a Docker volume; restore it by name with `volguard restore {name} --into-volume {name}`"
            ));
        }
    }
    plan
}

/// Where a volume's files go, from its definition.
enum DataHome {
    /// The volume's own `_data`.
    Data(PathBuf),
    /// A local bind volume (`-o type=none -o o=bind -o device=DIR`): the files live in DIR.
    Bind(PathBuf),
    /// A mount the local driver makes only while the volume is used (nfs, cifs, tmpfs):
    /// its files are not on this host; the reason says so.
    Remote(String),
}

fn data_home(root: &Path, name: &str, meta: &VolumeMeta) -> DataHome {
    let data = docker::volume_dir(root, name).join("_data");
    let o = meta.options.get("o").map(String::as_str).unwrap_or("");
    let device = meta.options.get("device").filter(|d| !d.is_empty());
    let kind = meta.options.get("type").filter(|t| !t.is_empty());
    if o.split(',').any(|t| t == "bind" || t == "rbind")
        && let Some(d) = device
        && Path::new(d).is_absolute()
    {
        return DataHome::Bind(PathBuf::from(d));
    }
    if kind.is_some() || device.is_some() {
        return DataHome::Remote(format!(
            "its data lives on {} {}, which the volume mounts while in use; the volume is defined again, its files are not written (restore them there with --target)",
            kind.map(String::as_str).unwrap_or("a mount"),
            device.map(String::as_str).unwrap_or("")
        ));
    }
    DataHome::Data(data)
}

/// How a volume came to exist on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Created {
    /// It existed before the restore.
    Existing,
    /// dockerd created it, with the recorded driver, labels and options.
    Dockerd,
    /// dockerd was not running: volguard made its directory (and `opts.json`) itself.
    Directory,
}

/// Makes volume `name` exist: through dockerd when it answers, else as a directory under
/// `<root>/volumes` that dockerd picks up at its next start. Returns how, and notes for
/// the user (what could not be recreated).
fn ensure_volume(
    root: &Path,
    name: &str,
    meta: &VolumeMeta,
    dockerd: bool,
) -> Result<(Created, Vec<String>)> {
    let vdir = docker::volume_dir(root, name);
    if vdir.is_dir() {
        return Ok((Created::Existing, Vec::new()));
    }
    if dockerd {
        api::create_volume(name, meta)?;
        if !vdir.is_dir() {
            return Err(Error::Other(format!(
                "dockerd created volume {name:?}, but not under {}: dockerd uses another data root; pass it with --docker-root",
                root.join("volumes").display()
            )));
        }
        return Ok((Created::Dockerd, Vec::new()));
    }
    let mut notes = Vec::new();
    if !meta.driver.is_empty() && meta.driver != "local" {
        return Err(Error::Other(format!(
            "volume {name:?} uses the volume plugin {:?}, and dockerd is not running to create it; start dockerd (with the plugin) and run restore --all again",
            meta.driver
        )));
    }
    // The modes dockerd gives them: the volume directory traversable only.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o701)
        .create(&vdir)
        .and_then(|()| {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(vdir.join("_data"))
        })
        .map_err(|e| Error::io("cannot create the volume directory", &vdir, e))?;
    if !meta.options.is_empty() {
        // The local driver's own record of its options; read by dockerd when it starts.
        let opt = |k: &str| meta.options.get(k).cloned().unwrap_or_default();
        let opts = serde_json::json!({
            "MountType": opt("type"), "MountOpts": opt("o"), "MountDevice": opt("device"),
            "Quota": {"Size": 0},
        });
        let path = vdir.join("opts.json");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(opts.to_string().as_bytes()))
            .map_err(|e| Error::io("cannot write the volume's options to", &path, e))?;
    }
    notes.push(format!(
        "dockerd is not running: created {} directly; dockerd lists the volume from its next start",
        vdir.display()
    ));
    if !meta.labels.is_empty() {
        let labels: Vec<String> = meta
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        notes.push(format!(
            "labels not restored ({}): only dockerd writes them, into its metadata.db; to have them, remove the volume and run restore --all again while dockerd runs",
            labels.join(", ")
        ));
    }
    Ok((Created::Directory, notes))
}

/// Restores `snap` into `dir` (created if missing) without ever showing it half done:
/// the snapshot is restored into a sibling directory, the two are swapped with one
/// `renameat2(RENAME_EXCHANGE)`, and the previous content is removed. A restore with
/// errors leaves `dir` untouched.
fn swap_restore(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    dir: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    if opts.dry_run {
        return restore::to_dir(repo, index, snap, dir, opts);
    }
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else {
        return Err(Error::Other(format!(
            "cannot restore into {}: not a directory below another",
            dir.display()
        )));
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io("cannot create", dir, e))?;
    let staging = parent.join(format!(
        "{}.volguard-restore-{}",
        base.to_string_lossy(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    let report = match restore::to_dir(repo, index, snap, &staging, opts) {
        Ok(r) if r.errors.is_empty() => r,
        Ok(r) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::Other(format!(
                "restore into {} aborted, it is unchanged: {} error(s), first: {}",
                dir.display(),
                r.errors.len(),
                r.errors[0]
            )));
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &staging,
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| Error::io("cannot swap the restored data into place at", dir, e.into()))?;
    // `staging` now holds the previous content.
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!(
            "restored, but the previous content at {} could not be removed: {e}",
            staging.display()
        );
    }
    Ok(report)
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut rd| rd.next().is_none())
}

/// Refuses to write under a running container unless forced: it would see its files
/// change (or vanish) under it.
fn check_not_in_use(root: &Path, volume: &str, force: bool) -> Result<()> {
    let users = docker::running_mounters(root, volume);
    if !users.is_empty() && !force {
        return Err(Error::Other(format!(
            "volume {volume:?} is mounted by running container(s) {}; stop them first, or pass --force",
            users.join(", ")
        )));
    }
    Ok(())
}

/// `restore VOLUME --into-volume NAME`: creates NAME when missing (with the snapshot's
/// recorded definition), then replaces its content at once.
pub fn into_volume(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    root: &Path,
    volume: &str,
    opts: &RestoreOptions,
    force: bool,
) -> Result<RestoreReport> {
    if !docker::valid_volume_name(volume) {
        return Err(Error::Usage(format!(
            "{volume:?} is not a valid Docker volume name"
        )));
    }
    let meta = snap.docker_volume.clone().unwrap_or_default();
    let data = docker::volume_dir(root, volume).join("_data");
    if !data.is_dir() && !opts.dry_run {
        if !api::answers() {
            return Err(Error::Other(format!(
                "volume {volume:?} does not exist and dockerd does not answer at {} to create it; start dockerd, or use restore --all, which creates volumes without it",
                api::socket_path().display()
            )));
        }
        ensure_volume(root, volume, &meta, true)?;
        if !data.is_dir() {
            return Err(Error::Other(format!(
                "dockerd created volume {volume:?} but {} does not exist: is --docker-root right?",
                data.display()
            )));
        }
    }
    check_not_in_use(root, volume, force)?;
    swap_restore(repo, index, snap, &data, opts)
}

/// What happened to one volume in `restore --all`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub volume: String,
    pub snapshot_id: String,
    pub snapshot_time: String,
    pub created: Option<Created>,
    pub driver: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub options: std::collections::BTreeMap<String, String>,
    /// Where the files were written; None when they were not (a remote mount, a failure).
    pub data_path: Option<PathBuf>,
    pub report: Option<RestoreReport>,
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub seconds: f64,
}

pub struct AllOptions {
    pub root: PathBuf,
    /// Replace the content of volumes that exist and hold data, even while in use.
    pub force: bool,
    pub progress: Option<indicatif::ProgressBar>,
}

/// Runs `plan`: each volume is created if missing and filled from its snapshot, every
/// file re-hashed. One volume's failure does not stop the others.
pub fn restore_all(
    repo: &Repository,
    index: &Index,
    plan: &Plan,
    opts: &AllOptions,
) -> Vec<Outcome> {
    let dockerd = api::answers();
    if !dockerd {
        tracing::warn!(
            "dockerd does not answer at {}: volumes are created directly under {}",
            api::socket_path().display(),
            opts.root.join("volumes").display()
        );
    }
    plan.volumes
        .iter()
        .map(|p| {
            let started = Instant::now();
            let meta = p.snap.docker_volume.clone().unwrap_or_else(|| VolumeMeta {
                driver: "local".into(),
                ..Default::default()
            });
            let mut out = Outcome {
                volume: p.volume.clone(),
                snapshot_id: p.id.to_hex(),
                snapshot_time: p.snap.time.clone(),
                created: None,
                driver: meta.driver.clone(),
                labels: meta.labels.clone(),
                options: meta.options.clone(),
                data_path: None,
                report: None,
                notes: Vec::new(),
                error: None,
                seconds: 0.0,
            };
            if p.snap.docker_volume.is_none() {
                out.notes.push(
                    "the snapshot predates recorded volume definitions: recreated as a local volume without labels or options".into(),
                );
            }
            if let Err(e) = restore_one(repo, index, p, &meta, dockerd, opts, &mut out) {
                out.error = Some(e.to_string());
            }
            out.seconds = started.elapsed().as_secs_f64();
            out
        })
        .collect()
}

fn restore_one(
    repo: &Repository,
    index: &Index,
    p: &Planned,
    meta: &VolumeMeta,
    dockerd: bool,
    opts: &AllOptions,
    out: &mut Outcome,
) -> Result<()> {
    let span = tracing::info_span!("restore", volume = %p.volume);
    let _g = span.enter();
    let home = data_home(&opts.root, &p.volume, meta);
    let existed = docker::volume_dir(&opts.root, &p.volume).is_dir();
    let dir = match &home {
        DataHome::Data(d) | DataHome::Bind(d) => Some(d.clone()),
        DataHome::Remote(_) => None,
    };
    // Refuse before creating anything: an existing volume with data is only replaced
    // when asked.
    if let Some(d) = &dir
        && existed
        && !opts.force
        && !is_empty_dir(d)
    {
        return Err(Error::Other(format!(
            "volume {:?} exists and holds data at {}; it was left as it is (pass --force to replace its content with the snapshot)",
            p.volume,
            d.display()
        )));
    }
    let (created, notes) = ensure_volume(&opts.root, &p.volume, meta, dockerd)?;
    out.created = Some(created);
    out.notes.extend(notes);
    let Some(dir) = dir else {
        if let DataHome::Remote(why) = home {
            out.notes.push(why);
        }
        return Ok(());
    };
    if matches!(home, DataHome::Bind(_)) && !is_empty_dir(&dir) && !opts.force {
        return Err(Error::Other(format!(
            "volume {:?} binds {}, which holds data; it was left as it is (pass --force to replace it with the snapshot)",
            p.volume,
            dir.display()
        )));
    }
    check_not_in_use(&opts.root, &p.volume, opts.force)?;
    let ropts = RestoreOptions {
        verify: true,
        progress: opts.progress.clone(),
        ..Default::default()
    };
    let report = swap_restore(repo, index, &p.snap, &dir, &ropts)?;
    out.data_path = Some(dir);
    out.report = Some(report);
    Ok(())
}

/// The error for a host with nothing to restore: names the hosts that do have snapshots,
/// so a mistyped or renamed host is found at once.
pub fn nothing_to_restore(
    all: &[SnapshotEntry],
    host: &str,
    at: Option<&str>,
    location: &str,
) -> Error {
    let mut hosts: Vec<&str> = all.iter().map(|(_, s)| s.host.as_str()).collect();
    hosts.sort();
    hosts.dedup();
    Error::Other(format!(
        "no snapshot of a Docker volume from host {host:?}{} in {location}; {}",
        at.map(|t| format!(" at or before {t}")).unwrap_or_default(),
        if hosts.is_empty() {
            "the repository has no snapshots".to_string()
        } else {
            format!(
                "hosts with snapshots: {} (choose one with --host)",
                hosts.join(", ")
            )
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::snapshot::Summary;
    use crate::repo::format::tree::{Node, NodeKind};

    fn snap(volume: &str, host: &str, time: &str, source: &str, meta: bool) -> SnapshotEntry {
        let s = Snapshot {
            version: 1,
            time: time.into(),
            host: host.into(),
            volume: volume.into(),
            source: source.into(),
            tags: vec![],
            parent: None,
            root: Node {
                kind: NodeKind::Dir,
                mode: 0o755,
                ..Node::default()
            },
            summary: Summary::default(),
            program: String::new(),
            docker_volume: meta.then(VolumeMeta::default),
        };
        let mut id = [0u8; 32];
        id[..time.len().min(32)].copy_from_slice(&time.as_bytes()[..time.len().min(32)]);
        id[0] ^= volume.len() as u8;
        (SnapshotId(id), s)
    }

    fn history() -> Vec<SnapshotEntry> {
        vec![
            snap("db", "a", "2024-01-01T00:00:00.000000000Z", "/x", true),
            snap("db", "b", "2024-01-01T12:00:00.000000000Z", "/x", true),
            snap("web", "a", "2024-01-02T00:00:00.000000000Z", "/x", true),
            snap("db", "a", "2024-01-03T00:00:00.000000000Z", "/x", true),
            snap(
                "old",
                "a",
                "2024-01-03T00:00:00.000000000Z",
                "/var/lib/docker/volumes/old/_data",
                false,
            ),
            snap(
                "www",
                "a",
                "2024-01-03T00:00:00.000000000Z",
                "/srv/www",
                false,
            ),
            snap("late", "a", "2024-02-01T00:00:00.000000000Z", "/x", true),
        ]
    }

    #[test]
    fn newest_snapshot_of_each_volume_of_the_host() {
        let p = plan(&history(), "a", None);
        let got: Vec<(&str, &str)> = p
            .volumes
            .iter()
            .map(|v| (v.volume.as_str(), v.snap.time.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("db", "2024-01-03T00:00:00.000000000Z"),
                ("late", "2024-02-01T00:00:00.000000000Z"),
                ("old", "2024-01-03T00:00:00.000000000Z"),
                ("web", "2024-01-02T00:00:00.000000000Z"),
            ]
        );
        assert_eq!(p.passed_over.len(), 1, "{:?}", p.passed_over);
        assert!(p.passed_over[0].starts_with("www: snapshots of a directory"));
        assert!(p.volumes.iter().all(|v| v.snap.host == "a"));
    }

    #[test]
    fn at_picks_the_newest_snapshot_not_after_it() {
        let p = plan(&history(), "a", Some("2024-01-02T06:00:00.000000000Z"));
        let got: Vec<(&str, &str)> = p
            .volumes
            .iter()
            .map(|v| (v.volume.as_str(), v.snap.time.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("db", "2024-01-01T00:00:00.000000000Z"),
                ("web", "2024-01-02T00:00:00.000000000Z"),
            ]
        );
        assert!(
            p.passed_over
                .iter()
                .any(|w| w.starts_with("late: no snapshot at or before --at")),
            "{:?}",
            p.passed_over
        );
        assert!(
            p.passed_over
                .iter()
                .any(|w| w.starts_with("old: no snapshot"))
        );
    }

    #[test]
    fn another_host_or_none_gives_an_empty_plan() {
        assert_eq!(plan(&history(), "b", None).volumes.len(), 1);
        assert!(plan(&history(), "nobody", None).volumes.is_empty());
    }

    #[test]
    fn bind_volumes_restore_into_their_device_and_mounts_only_get_defined() {
        let root = Path::new("/r");
        let mut m = VolumeMeta::default();
        assert!(
            matches!(data_home(root, "v", &m), DataHome::Data(p) if p == Path::new("/r/volumes/v/_data"))
        );
        m.options = [("type", "none"), ("o", "bind"), ("device", "/srv/v")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(matches!(data_home(root, "v", &m), DataHome::Bind(p) if p == Path::new("/srv/v")));
        m.options = [("type", "nfs"), ("o", "addr=10.0.0.1"), ("device", ":/exp")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(matches!(data_home(root, "v", &m), DataHome::Remote(w) if w.contains("nfs :/exp")));
    }
}
