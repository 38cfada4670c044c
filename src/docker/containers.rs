//! Docker's container records: `containers/<id>/config.v2.json` (name, image, state, mount
//! points) and `hostconfig.json` (`Tmpfs`, `Binds`). A malformed record is a warning; the
//! other containers are still read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
    Other,
}

#[derive(Debug, Clone)]
pub struct Mount {
    pub kind: MountKind,
    /// Volume name (volume mounts only).
    pub name: Option<String>,
    /// Host path: a bind's source, a volume's `_data`; empty for tmpfs.
    pub source: String,
    pub destination: String,
    pub rw: bool,
    /// For volumes: the mount names no volume (`-v /path`, image VOLUME), so the volume is
    /// anonymous.
    pub anonymous_spec: bool,
    /// tmpfs options, for tmpfs mounts declared in hostconfig `Tmpfs`.
    pub options: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Running according to config.v2.json and its pid still exists.
    pub running: bool,
    pub pid: i64,
    /// `overlay2` (graphdriver) or `overlayfs` (containerd snapshotter), as recorded.
    pub driver: String,
    pub mounts: Vec<Mount>,
    /// The config.v2.json this was read from, for messages.
    pub config_path: std::path::PathBuf,
}

/// The containers among `all` that mount volume `name`, running or not: a stopped one still
/// owns the data, and its labels still speak for the volume.
pub fn mounting<'a>(all: &'a [Container], name: &'a str) -> impl Iterator<Item = &'a Container> {
    all.iter().filter(move |c| {
        c.mounts
            .iter()
            .any(|m| m.kind == MountKind::Volume && m.name.as_deref() == Some(name))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigV2 {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: Option<Config>,
    #[serde(default)]
    state: State,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    mount_points: Option<HashMap<String, MountPoint>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Config {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct State {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    pid: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MountPoint {
    #[serde(default, rename = "Type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
    #[serde(default, rename = "RW")]
    rw: bool,
    #[serde(default)]
    spec: Option<Spec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Spec {
    #[serde(default)]
    source: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HostConfig {
    #[serde(default)]
    tmpfs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    binds: Option<Vec<String>>,
}

/// True when `pid` names a live process (config.v2.json can be stale after a crash).
pub fn pid_alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads one container directory.
/// Returns the container and, when hostconfig.json could not be used, a warning.
pub fn read_container(root: &Path, dir: &Path) -> Result<(Container, Option<String>), String> {
    let cfg_path = dir.join("config.v2.json");
    let bytes = std::fs::read(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let dir_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // hostconfig.json is optional; `--tmpfs` mounts only appear there.
    let hc_path = dir.join("hostconfig.json");
    let (hostconfig, read_warning) = match std::fs::read(&hc_path) {
        Ok(b) => (Some(b), None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        Err(e) => (None, Some(format!("{}: {e}", hc_path.display()))),
    };
    let (c, warning) = parse_container(
        root,
        &dir_id,
        &cfg_path,
        &bytes,
        hostconfig.as_deref().map(|b| (hc_path.as_path(), b)),
    )?;
    let warning = warning.or(read_warning.map(|w| format!("{w}; {HOSTCONFIG_UNUSED}")));
    Ok((c, warning))
}

const HOSTCONFIG_UNUSED: &str = "tmpfs mounts declared there are not listed";

/// One container from the bytes of its config.v2.json and, when there is one, its
/// hostconfig.json (with the paths they came from, for messages). Garbage is an error
/// (config) or a warning (hostconfig), never a panic; the fuzz target `container_config`
/// checks that.
pub fn parse_container(
    root: &Path,
    dir_id: &str,
    cfg_path: &Path,
    config_json: &[u8],
    hostconfig: Option<(&Path, &[u8])>,
) -> Result<(Container, Option<String>), String> {
    let cfg: ConfigV2 = serde_json::from_slice(config_json)
        .map_err(|e| format!("{}: malformed ({e})", cfg_path.display()))?;
    let id = if cfg.id.is_empty() {
        dir_id.to_string()
    } else {
        cfg.id
    };
    let config = cfg.config.unwrap_or_default();
    let mut mounts: Vec<Mount> = cfg
        .mount_points
        .unwrap_or_default()
        .into_values()
        .map(|m| {
            let kind = match m.kind.as_str() {
                "volume" => MountKind::Volume,
                "bind" => MountKind::Bind,
                "tmpfs" => MountKind::Tmpfs,
                // Records from before `Type` existed: a name means a volume.
                "" if !m.name.is_empty() => MountKind::Volume,
                "" => MountKind::Bind,
                _ => MountKind::Other,
            };
            let mut source = m.source;
            if kind == MountKind::Volume && source.is_empty() && super::valid_volume_name(&m.name) {
                // Empty until first start for image VOLUMEs and `-v /path`.
                source = super::volume_dir(root, &m.name)
                    .join("_data")
                    .display()
                    .to_string();
            }
            Mount {
                kind,
                anonymous_spec: kind == MountKind::Volume
                    && m.spec.as_ref().is_none_or(|s| s.source.is_empty()),
                name: (kind == MountKind::Volume).then_some(m.name),
                source,
                destination: m.destination,
                rw: m.rw,
                options: None,
            }
        })
        .collect();
    let mut warning = None;
    if let Some((hc_path, b)) = hostconfig {
        match serde_json::from_slice::<HostConfig>(b) {
            Ok(hc) => {
                for (dest, opts) in hc.tmpfs.unwrap_or_default() {
                    if mounts.iter().all(|m| m.destination != dest) {
                        let rw = !opts.split(',').any(|o| o == "ro");
                        mounts.push(Mount {
                            kind: MountKind::Tmpfs,
                            name: None,
                            source: String::new(),
                            destination: dest,
                            rw,
                            anonymous_spec: false,
                            options: Some(opts),
                        });
                    }
                }
                for bind in hc.binds.unwrap_or_default() {
                    if let Some(m) = parse_bind(&bind)
                        && mounts.iter().all(|x| x.destination != m.destination)
                    {
                        mounts.push(m);
                    }
                }
            }
            Err(e) => {
                warning = Some(format!(
                    "{}: malformed ({e}); {HOSTCONFIG_UNUSED}",
                    hc_path.display()
                ))
            }
        }
    }
    mounts.sort_by(|a, b| a.destination.cmp(&b.destination));
    let c = Container {
        id,
        name: cfg.name.trim_start_matches('/').to_string(),
        image: config.image,
        labels: config.labels.unwrap_or_default(),
        running: cfg.state.running && pid_alive(cfg.state.pid),
        pid: cfg.state.pid,
        driver: cfg.driver,
        mounts,
        config_path: cfg_path.to_path_buf(),
    };
    Ok((c, warning))
}

/// A `Binds` entry `src:dst[:opts]` whose source is a host path (volume binds are already
/// in MountPoints).
fn parse_bind(s: &str) -> Option<Mount> {
    let mut parts = s.split(':');
    let src = parts.next()?;
    let dst = parts.next()?;
    if !src.starts_with('/') || !dst.starts_with('/') {
        return None;
    }
    let ro = parts
        .next()
        .is_some_and(|o| o.split(',').any(|x| x == "ro"));
    Some(Mount {
        kind: MountKind::Bind,
        name: None,
        source: src.to_string(),
        destination: dst.to_string(),
        rw: !ro,
        anonymous_spec: false,
        options: None,
    })
}

/// Every container under `<root>/containers`, sorted by name, plus one warning per
/// container that could not be read.
pub fn read_containers(root: &Path) -> (Vec<Container>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let dir = root.join("containers");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, warnings),
        Err(e) => {
            warnings.push(format!("{}: {e}", dir.display()));
            return (out, warnings);
        }
    };
    for ent in rd.flatten() {
        if !ent.path().is_dir() {
            continue;
        }
        match read_container(root, &ent.path()) {
            Ok((c, w)) => {
                warnings.extend(w);
                out.push(c);
            }
            Err(w) => warnings.push(format!("container skipped: {w}")),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_host_paths_only() {
        let m = parse_bind("/srv/www:/var/www:ro,rprivate").unwrap();
        assert_eq!(
            (m.source.as_str(), m.destination.as_str(), m.rw),
            ("/srv/www", "/var/www", false)
        );
        assert!(parse_bind("named:/data").is_none());
        assert!(parse_bind("/x").is_none());
    }

    #[test]
    fn sparse_records_read_and_bad_hostconfig_is_a_warning() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("containers").join("abc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/x","Config":null,"MountPoints":{"/d":{"Name":"v1","Destination":"/d","RW":true,"Spec":{}}}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("hostconfig.json"), "[").unwrap();
        let (c, warning) = read_container(root.path(), &dir).unwrap();
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.running),
            ("abc", "x", false)
        );
        let m = &c.mounts[0];
        assert_eq!(m.kind, MountKind::Volume);
        assert!(m.anonymous_spec);
        assert!(m.source.ends_with("volumes/v1/_data"), "{}", m.source);
        assert!(warning.unwrap().contains("hostconfig.json"));

        std::fs::write(dir.join("config.v2.json"), "{\"State\": 5}").unwrap();
        let (list, warnings) = read_containers(root.path());
        assert!(list.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("config.v2.json"), "{warnings:?}");
    }
}
