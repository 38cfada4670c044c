//! `volguard layer-diff CONTAINER`: what a container changed in its writable layer, as
//! `docker diff` reports it, computed from the overlay directories on disk so it works with
//! dockerd stopped or untrusted.
//!
//! dockerd 20.10 on this kind of host computes `docker diff` with its "naive" differ: it
//! mounts the container's merged view and its parent's (init + image) merged view and
//! compares them (moby `pkg/archive.ChangesDirs`). This module reproduces that comparison
//! without mounting anything: the new view is the upper directory laid over the lower
//! ones (whiteouts hide, opaque directories cut the lower layers off, a `redirect` points
//! a renamed directory at its origin, a `metacopy` upper file only carries metadata), the
//! old view is the lower directories alone. Only paths under an upper directory can
//! differ, so only those are visited.
//!
//! The rules taken over from moby, because `docker diff` shows their effects:
//! - an entry in both views is `C` when mode (type and permission bits), owner, rdev or
//!   the `security.capability` xattr differ, or, for non-directories, size or mtime
//!   (seconds equal and either nanosecond part zero counts as equal);
//! - a changed entry's directory is listed as `C` before its content even when the
//!   directory itself is unchanged; `A` lists every entry of an added directory; `D` lists
//!   only the removed path, never what was under it;
//! - a path that is a file in one view and a directory in the other is `C`; the old
//!   directory's content is not listed as deleted.
//!
//! Order: dockerd walks Go maps, so its order changes from call to call; only the shape is
//! fixed (a directory's line first, then its entries each followed by their content, then
//! its deletions). volguard prints that shape with entries sorted by name bytes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::docker::containers::{self, Container};
use crate::docker::layers::{self, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    A,
    C,
    D,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: Kind,
    /// Absolute path inside the container; raw bytes in text output, lossy UTF-8 in JSON.
    #[serde(serialize_with = "lossy")]
    pub path: Vec<u8>,
    /// Type of the entry now (for `D`: of the entry that was removed).
    #[serde(rename = "type")]
    pub file_type: &'static str,
    /// The directory hides everything the image had under it (`trusted.overlay.opaque`).
    pub opaque: bool,
    /// Only metadata was copied up (`trusted.overlay.metacopy`); the content is the image's.
    pub metacopy: bool,
    /// A renamed directory: where its content came from (`trusted.overlay.redirect`).
    pub redirect: Option<String>,
}

fn lossy<S: serde::Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(p))
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub container: ContainerRef,
    pub storage: Storage,
    pub upper_dir: String,
    pub lower_dirs: Vec<String>,
    pub changes: Vec<Change>,
    /// Paths that could not be read (each named); the other changes are still listed.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
}

/// Finds a container the way the docker CLI does: full id, then exact name, then a unique
/// id prefix. Warnings about unreadable container records are returned for the caller to
/// show: one of them may be the container asked for.
pub fn find_container(root: &Path, wanted: &str) -> Result<(Container, Vec<String>), String> {
    let (list, warnings) = containers::read_containers(root);
    let wanted_name = wanted.trim_start_matches('/');
    if let Some(c) = list.iter().find(|c| c.id == wanted) {
        return Ok((c.clone(), warnings));
    }
    if let Some(c) = list.iter().find(|c| c.name == wanted_name) {
        return Ok((c.clone(), warnings));
    }
    let by_prefix: Vec<&Container> = if wanted.is_empty() {
        Vec::new()
    } else {
        list.iter().filter(|c| c.id.starts_with(wanted)).collect()
    };
    match by_prefix.as_slice() {
        [one] => Ok(((*one).clone(), warnings)),
        [] => {
            // The container may be there with a record that cannot be read: name it.
            let damaged: Vec<&String> = warnings
                .iter()
                .filter(|w| !wanted.is_empty() && w.contains(&format!("/containers/{wanted}")))
                .collect();
            if let [one] = damaged.as_slice() {
                return Err(format!(
                    "container {wanted:?} cannot be read: {one}; its writable layer cannot be located without it (restore that file from a backup of the data root, or use `docker diff` while dockerd runs)"
                ));
            }
            let mut msg = format!(
                "no container named {wanted:?} or with an id starting with it under {}/containers; `volguard inventory` lists them",
                root.display()
            );
            if !warnings.is_empty() {
                msg.push_str(&format!(
                    " ({} container record(s) could not be read: {})",
                    warnings.len(),
                    warnings.join("; ")
                ));
            }
            Err(msg)
        }
        many => Err(format!(
            "{wanted:?} matches {} containers ({}); give more of the id or the name",
            many.len(),
            many.iter()
                .map(|c| format!("{} {}", layers::short(&c.id), c.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The changes of `container`'s writable layer against its image.
pub fn diff_container(root: &Path, c: &Container) -> Result<Report, String> {
    let (storage, layer) = layers::writable_layer(root, c)?;
    let mut d = Differ {
        lowers: layer.lowers.clone(),
        changes: Vec::new(),
        warnings: Vec::new(),
    };
    if !nix::unistd::geteuid().is_root() {
        d.warnings.push(
            "not running as root: trusted.overlay.* xattrs (opaque directories, redirects) cannot be read, so replaced directories may be missed; run as root".to_string(),
        );
    }
    let roots: Vec<PathBuf> = layer.lowers.clone();
    d.dir(b"", Some(&layer.upper), &roots, Some(&roots), true, false);
    Ok(Report {
        container: ContainerRef {
            id: c.id.clone(),
            name: c.name.clone(),
        },
        storage,
        upper_dir: layer.upper.display().to_string(),
        lower_dirs: layer
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        changes: d.changes,
        warnings: d.warnings,
    })
}

struct Differ {
    lowers: Vec<PathBuf>,
    changes: Vec<Change>,
    warnings: Vec<String>,
}

/// One entry of a merged view.
struct Entry {
    path: PathBuf,
    meta: Metadata,
}

fn overlay_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    // Rootless dockerd and `userxattr` mounts use the user.* namespace instead.
    for ns in ["trusted.overlay.", "user.overlay."] {
        if let Ok(Some(v)) = xattr::get(path, format!("{ns}{name}")) {
            return Some(v);
        }
    }
    None
}

/// A whiteout: a 0/0 character device, or (kernel 6.7+ "xwhiteout") an empty regular file
/// marked with the `overlay.whiteout` xattr.
fn is_whiteout(path: &Path, meta: &Metadata) -> bool {
    let ft = meta.file_type();
    (ft.is_char_device() && meta.rdev() == 0)
        || (ft.is_file() && meta.len() == 0 && overlay_xattr(path, "whiteout").is_some())
}

fn is_opaque(path: &Path) -> bool {
    overlay_xattr(path, "opaque").as_deref() == Some(b"y")
}

fn type_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char_device"
    } else {
        "block_device"
    }
}

/// moby's `sameFsTimeSpec`: filesystems without nanoseconds report them as zero.
fn same_time(a: &Metadata, b: &Metadata) -> bool {
    a.mtime() == b.mtime()
        && (a.mtime_nsec() == b.mtime_nsec() || a.mtime_nsec() == 0 || b.mtime_nsec() == 0)
}

/// moby's `statDifferent`; directories' size and mtime are not a measure of change.
fn stat_different(old: &Metadata, new: &Metadata) -> bool {
    old.mode() != new.mode()
        || old.uid() != new.uid()
        || old.gid() != new.gid()
        || old.rdev() != new.rdev()
        || (!old.is_dir() && (!same_time(old, new) || old.len() != new.len()))
}

fn capability(path: &Path) -> Option<Vec<u8>> {
    xattr::get(path, "security.capability").ok().flatten()
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl Differ {
    fn lstat(&mut self, path: &Path) -> Option<Metadata> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.warnings.push(format!("{}: {e}", path.display()));
                None
            }
        }
    }

    /// The lower directories that make up directory `name` of a merged directory made of
    /// `sources` (nearest first): empty when the merged entry is absent or not a directory.
    fn step(&mut self, sources: &[PathBuf], name: &[u8]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for s in sources {
            let p = s.join(OsStr::from_bytes(name));
            let Some(m) = self.lstat(&p) else { continue };
            if !m.is_dir() {
                // A whiteout or a non-directory hides the layers below.
                break;
            }
            let opaque = is_opaque(&p);
            out.push(p);
            if opaque {
                break;
            }
        }
        out
    }

    /// The lower directories of an absolute path (for redirects), from the layer roots.
    fn sources_of(&mut self, abs: &[u8]) -> Vec<PathBuf> {
        let mut sources = self.lowers.clone();
        for comp in abs.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if comp == b".." || comp == b"." {
                return Vec::new();
            }
            sources = self.step(&sources, comp);
            if sources.is_empty() {
                break;
            }
        }
        sources
    }

    /// Entry `name` of the merged directory made of `sources`.
    fn lower_entry(&mut self, sources: &[PathBuf], name: &[u8]) -> Option<Entry> {
        for s in sources {
            let p = s.join(OsStr::from_bytes(name));
            let Some(meta) = self.lstat(&p) else { continue };
            if is_whiteout(&p, &meta) {
                return None;
            }
            return Some(Entry { path: p, meta });
        }
        None
    }

    /// Names present in the merged directory made of `sources`.
    fn lower_names(&mut self, sources: &[PathBuf]) -> Vec<Vec<u8>> {
        let mut seen: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for s in sources {
            for (name, path, meta) in self.read_dir(s) {
                seen.entry(name)
                    .or_insert_with(|| !is_whiteout(&path, &meta));
            }
        }
        seen.into_iter()
            .filter(|(_, v)| *v)
            .map(|(k, _)| k)
            .collect()
    }

    fn read_dir(&mut self, dir: &Path) -> Vec<(Vec<u8>, PathBuf, Metadata)> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                self.warnings.push(format!("{}: {e}", dir.display()));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for ent in rd {
            match ent {
                Ok(ent) => {
                    let path = ent.path();
                    if let Some(meta) = self.lstat(&path) {
                        out.push((ent.file_name().as_bytes().to_vec(), path, meta));
                    }
                }
                Err(e) => self.warnings.push(format!("{}: {e}", dir.display())),
            }
        }
        out
    }

    /// Compares directory `rel` of the new view (the `upper` directory, when the writable
    /// layer has one, over `new_lower`) with the old view's directory (`old`, `None` when
    /// the old view has no directory there). `lower_is_old`: `new_lower` is exactly the old
    /// directory, so entries the upper layer does not touch are unchanged. `reported`: this
    /// directory already has its own line. Returns whether any line was added.
    fn dir(
        &mut self,
        rel: &[u8],
        upper: Option<&Path>,
        new_lower: &[PathBuf],
        old: Option<&[PathBuf]>,
        lower_is_old: bool,
        reported: bool,
    ) -> bool {
        if upper.is_none() && lower_is_old {
            return false;
        }
        let start = self.changes.len();
        // name -> (upper path, metadata) for real entries; whiteouts recorded as None.
        let mut in_upper: BTreeMap<Vec<u8>, Option<(PathBuf, Metadata)>> = BTreeMap::new();
        if let Some(u) = upper {
            for (name, path, meta) in self.read_dir(u) {
                let entry = (!is_whiteout(&path, &meta)).then_some((path, meta));
                in_upper.insert(name, entry);
            }
        }
        let mut names: Vec<Vec<u8>> = in_upper
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if !lower_is_old || upper.is_none() {
            for n in self.lower_names(new_lower) {
                if !in_upper.contains_key(&n) {
                    names.push(n);
                }
            }
        }
        names.sort();
        for name in &names {
            let path = join(rel, name);
            let upper_entry = in_upper.get(name).and_then(|e| e.as_ref());
            let (new, from_upper) = match upper_entry {
                Some((p, m)) => (
                    Entry {
                        path: p.clone(),
                        meta: m.clone(),
                    },
                    true,
                ),
                None => match self.lower_entry(new_lower, name) {
                    Some(e) => (e, false),
                    None => continue,
                },
            };
            let old_entry = match old {
                Some(o) => self.lower_entry(o, name),
                None => None,
            };
            let opaque = from_upper && new.meta.is_dir() && is_opaque(&new.path);
            let redirect = (from_upper && new.meta.is_dir())
                .then(|| overlay_xattr(&new.path, "redirect"))
                .flatten();
            let metacopy =
                from_upper && new.meta.is_file() && overlay_xattr(&new.path, "metacopy").is_some();
            let kind = match &old_entry {
                None => Some(Kind::A),
                Some(o) => (stat_different(&o.meta, &new.meta)
                    || capability(&o.path) != capability(&new.path))
                .then_some(Kind::C),
            };
            if let Some(kind) = kind {
                self.changes.push(Change {
                    kind,
                    path: path.clone(),
                    file_type: type_name(&new.meta),
                    opaque,
                    metacopy,
                    redirect: redirect
                        .as_ref()
                        .map(|r| String::from_utf8_lossy(r).into_owned()),
                });
            }
            if !new.meta.is_dir() {
                continue;
            }
            // The old directory at this path, if the old view has one; an entry that was a
            // file before has no old content to compare with.
            let old_sub: Option<Vec<PathBuf>> = match &old_entry {
                Some(o) if o.meta.is_dir() => Some(self.step(old.unwrap_or(&[]), name)),
                _ => None,
            };
            let (sub_upper, sub_lower, sub_is_old) = if from_upper {
                let lower = if opaque {
                    Vec::new()
                } else if let Some(r) = &redirect {
                    // Absolute redirects are from the layer root; relative ones name a
                    // sibling in the same directory.
                    if r.starts_with(b"/") {
                        self.sources_of(r)
                    } else {
                        self.step(new_lower, r)
                    }
                } else {
                    self.step(new_lower, name)
                };
                let is_old = lower_is_old && !opaque && redirect.is_none() && old_sub.is_some();
                (Some(new.path.clone()), lower, is_old)
            } else {
                let lower = self.step(new_lower, name);
                (None, lower, lower_is_old && old_sub.is_some())
            };
            self.dir(
                &path,
                sub_upper.as_deref(),
                &sub_lower,
                old_sub.as_deref(),
                sub_is_old,
                kind.is_some(),
            );
        }
        // Deletions: in the old view, not in the new one.
        if let Some(o) = old {
            let mut deleted = Vec::new();
            for name in self.lower_names(o) {
                if names.binary_search(&name).is_ok() {
                    continue;
                }
                let now_hidden = if lower_is_old {
                    // Only the upper layer can hide an old entry.
                    matches!(in_upper.get(&name), Some(None))
                } else {
                    true
                };
                if now_hidden && let Some(e) = self.lower_entry(o, &name) {
                    deleted.push((name, type_name(&e.meta)));
                }
            }
            for (name, file_type) in deleted {
                self.changes.push(Change {
                    kind: Kind::D,
                    path: join(rel, &name),
                    file_type,
                    opaque: false,
                    metacopy: false,
                    redirect: None,
                });
            }
        }
        let added = self.changes.len() > start;
        if added && !reported && !rel.is_empty() {
            self.changes.insert(
                start,
                Change {
                    kind: Kind::C,
                    path: rel.to_vec(),
                    file_type: "dir",
                    opaque: upper.is_some_and(is_opaque),
                    metacopy: false,
                    redirect: None,
                },
            );
        }
        added
    }
}

/// `docker diff`'s text form: `K /path` per line, path bytes as they are.
pub fn write_text<W: io::Write>(out: &mut W, changes: &[Change]) -> io::Result<()> {
    for c in changes {
        let k = match c.kind {
            Kind::A => b'A',
            Kind::C => b'C',
            Kind::D => b'D',
        };
        out.write_all(&[k, b' '])?;
        out.write_all(&c.path)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lines(d: &Differ) -> Vec<String> {
        d.changes
            .iter()
            .map(|c| format!("{:?} {}", c.kind, String::from_utf8_lossy(&c.path)))
            .collect()
    }

    fn whiteout(p: &Path) {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    /// Layout built by hand (needs root for whiteouts and trusted xattrs, as volguard
    /// itself does): a redirected directory lists its origin's content as added.
    #[test]
    fn redirect_and_metacopy_are_followed() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the tests as root (mknod, trusted.* xattrs), as tests/run.sh does"
        );
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        std::fs::create_dir_all(lower.join("old/sub")).unwrap();
        std::fs::write(lower.join("old/sub/f"), "x").unwrap();
        std::fs::write(lower.join("big"), "content").unwrap();
        std::fs::create_dir_all(upper.join("new")).unwrap();
        xattr::set(upper.join("new"), "trusted.overlay.redirect", b"/old").unwrap();
        whiteout(&upper.join("old"));
        // A chmod with metacopy: the upper file has the same size, no data of its own.
        let f = std::fs::File::create(upper.join("big")).unwrap();
        f.set_len(7).unwrap();
        let mut perm = f.metadata().unwrap().permissions();
        perm.set_mode(0o600);
        f.set_permissions(perm).unwrap();
        xattr::set(upper.join("big"), "trusted.overlay.metacopy", b"").unwrap();
        let mut d = Differ {
            lowers: vec![lower.clone()],
            changes: Vec::new(),
            warnings: Vec::new(),
        };
        let roots = vec![lower];
        d.dir(b"", Some(&upper), &roots, Some(&roots), true, false);
        assert_eq!(
            lines(&d),
            ["C /big", "A /new", "A /new/sub", "A /new/sub/f", "D /old"],
            "{:?}",
            d.warnings
        );
        assert!(d.changes[0].metacopy);
        assert_eq!(d.changes[1].redirect.as_deref(), Some("/old"));
    }
}
