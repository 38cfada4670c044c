//! Snapshot objects: writing one, listing all readable ones, and resolving `latest` or
//! an id prefix among a volume's snapshots.

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::{Repository, SnapshotEntry};

impl Repository {
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<(SnapshotId, u64)> {
        let (id, sealed) = snap.seal(&self.keys);
        let n = sealed.len() as u64;
        self.block_on(
            self.backend
                .put(Kind::Snapshot, &id.to_hex(), sealed.into()),
        )?;
        Ok((id, n))
    }

    /// All readable snapshots, oldest first; unreadable ones are returned as problems.
    pub fn list_snapshots(&self) -> Result<(Vec<SnapshotEntry>, Vec<String>)> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for obj in self.block_on(self.backend.list(Kind::Snapshot))? {
            let Some(id) = SnapshotId::from_hex(&obj.name) else {
                continue;
            };
            let bytes = match self.block_on(self.backend.get(Kind::Snapshot, &obj.name)) {
                Ok(b) => b,
                // Forgotten between listing and reading: it is simply no longer there.
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let open = |b: &[u8]| Snapshot::open(&self.keys, &obj.name, b);
            match self.again_if_corrupt(Kind::Snapshot, &obj.name, open(&bytes), open) {
                Ok(s) => out.push((id, s)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, problems))
    }

    /// Resolves `which` (see [`Which`]) among the snapshots of `volume`.
    pub fn find_snapshot(&self, volume: &str, which: &str) -> Result<SnapshotEntry> {
        let which = Which::parse(which, time::OffsetDateTime::now_utc())?;
        self.listed_again_if_missing(|all, problems| {
            self.pick_focused(all, problems, volume, &which)
        })
    }

    /// Runs `pick` on the snapshot listing; when it finds nothing, on a second listing. A
    /// listing damaged in transit (S3 listings carry no checksum) or taken just before the
    /// snapshot appeared can miss it, and "no such snapshot" must not be said of one that
    /// exists.
    fn listed_again_if_missing<T>(
        &self,
        pick: impl Fn(&[SnapshotEntry], &[String]) -> Result<T>,
    ) -> Result<T> {
        let (all, problems) = self.list_snapshots()?;
        match pick(&all, &problems) {
            Ok(found) => Ok(found),
            Err(Error::Usage(_) | Error::NotFound { .. }) => {
                let (all, problems) = self.list_snapshots()?;
                pick(&all, &problems)
            }
            Err(e) => Err(e),
        }
    }

    /// Resolves a `VOLUME[:SNAPSHOT]` spec; `flag` is the snapshot a flag (`--snapshot`)
    /// named, if one did: naming it both ways is a usage error. Neither means `latest`.
    pub fn find_spec(&self, spec: &str, flag: Option<&str>) -> Result<SnapshotEntry> {
        let now = time::OffsetDateTime::now_utc();
        let parsed = |all: &[SnapshotEntry]| {
            let (volume, which) = split_spec(spec, |v| all.iter().any(|(_, s)| s.volume == v));
            let which = match (which, flag) {
                (Some(w), Some(f)) => {
                    return Err(Error::Usage(format!(
                        "{spec:?} names snapshot {w:?} and --snapshot names {f:?}; give it once"
                    )));
                }
                (Some(w), None) | (None, Some(w)) => w,
                (None, None) => "latest",
            };
            Ok((volume, Which::parse(which, now)?))
        };
        self.listed_again_if_missing(|all, problems| {
            let (volume, which) = parsed(all)?;
            self.pick_focused(all, problems, volume, &which)
        })
    }

    /// The volume a `VOLUME[:SNAPSHOT]` spec names and its snapshot part; the snapshots are
    /// listed only when the spec holds a `:`.
    pub fn split_spec<'s>(&self, spec: &'s str) -> Result<(&'s str, Option<&'s str>)> {
        if !spec.contains(':') {
            return Ok((spec, None));
        }
        let (all, _) = self.list_snapshots()?;
        Ok(split_spec(spec, |v| all.iter().any(|(_, s)| s.volume == v)))
    }

    fn pick_focused(
        &self,
        all: &[SnapshotEntry],
        problems: &[String],
        volume: &str,
        which: &Which,
    ) -> Result<SnapshotEntry> {
        let found = pick(all, volume, which).map_err(|e| {
            if problems.is_empty() {
                return Error::Usage(format!("{e} in {}", self.location()));
            }
            // A snapshot object that did not open (tampered, damaged) may be the one asked
            // for: that is damage to the repository, not a mistyped name, so it is named
            // and ends the command as a failure rather than as bad usage.
            Error::NotFound {
                what: e,
                location: self.location(),
                hint: format!(
                    "{} snapshot object(s) were rejected: {}",
                    problems.len(),
                    problems.join("; ")
                ),
            }
        })?;
        // Epochs mode: what follows reads the snapshot's own epoch only.
        if let Some(e) = &self.epochs {
            e.focus_on(Kind::Snapshot, &found.0.to_hex());
        }
        Ok(found.clone())
    }
}

/// Which snapshot of a volume a spec names: `latest`, an id or a unique prefix of one, or
/// `@WHEN`, the newest taken at or before a time (`crate::fmt::parse_when`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Latest,
    Prefix(String),
    AtOrBefore(time::OffsetDateTime),
}

impl Which {
    pub fn parse(s: &str, now: time::OffsetDateTime) -> Result<Which> {
        if s == "latest" {
            return Ok(Which::Latest);
        }
        if let Some(when) = s.strip_prefix('@') {
            let (_, end) = crate::fmt::parse_when(when, now).map_err(Error::Usage)?;
            return Ok(Which::AtOrBefore(end));
        }
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "{s:?} names no snapshot: give `latest`, a snapshot id or a unique prefix of one (hex), or @TIME (@2026-12-01, @2026-12-01T10:00, @3d)"
            )));
        }
        Ok(Which::Prefix(s.to_ascii_lowercase()))
    }
}

/// Splits `VOLUME[:SNAPSHOT]`. Names may hold a `:` themselves (`container:web`), so the
/// whole spec is a volume if `known` says so, else it is cut at the first `:` whose left
/// part is known, else at the first `:`.
pub fn split_spec(spec: &str, known: impl Fn(&str) -> bool) -> (&str, Option<&str>) {
    if known(spec) {
        return (spec, None);
    }
    let cuts = spec.match_indices(':').map(|(i, _)| i);
    let cut = cuts
        .clone()
        .find(|&i| known(&spec[..i]))
        .or_else(|| cuts.clone().next());
    match cut {
        Some(i) => (&spec[..i], Some(&spec[i + 1..])),
        None => (spec, None),
    }
}

/// The snapshot of `volume` that `which` names among `all` (oldest first), or why none is:
/// the message lists the candidates when a prefix is ambiguous.
pub fn pick<'a>(
    all: &'a [SnapshotEntry],
    volume: &str,
    which: &Which,
) -> std::result::Result<&'a SnapshotEntry, String> {
    let of_volume: Vec<&SnapshotEntry> = all.iter().filter(|(_, s)| s.volume == volume).collect();
    let list = format!("`volguard snapshots --volume {volume}` lists its snapshots");
    if of_volume.is_empty() {
        return Err(format!(
            "no snapshot of {volume:?}; `volguard snapshots` lists the volumes there are"
        ));
    }
    match which {
        Which::Latest => Ok(of_volume[of_volume.len() - 1]),
        Which::AtOrBefore(t) => {
            let at = crate::fmt::format_time(*t);
            of_volume
                .iter()
                .rev()
                .find(|(_, s)| crate::fmt::parse_time(&s.time).is_ok_and(|st| st <= *t))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "no snapshot of {volume:?} was taken at or before {at} (the oldest is \
                         from {}); {list}",
                        of_volume[0].1.time
                    )
                })
        }
        Which::Prefix(p) => {
            let matches: Vec<&SnapshotEntry> = of_volume
                .into_iter()
                .filter(|(id, _)| id.to_hex().starts_with(p.as_str()))
                .collect();
            match matches.as_slice() {
                [one] => Ok(one),
                [] => Err(format!(
                    "no snapshot of {volume:?} has an id starting with {p:?}; {list}"
                )),
                many => Err(format!(
                    "{} snapshots of {volume:?} have ids starting with {p:?}: {}; give more \
                     characters",
                    many.len(),
                    many.iter()
                        .map(|(id, s)| format!("{} ({})", &id.to_hex()[..16], s.time))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::snapshot::Summary;
    use crate::repo::format::tree::Node;

    fn snap(volume: &str, time: &str, id: u8) -> SnapshotEntry {
        let mut raw = [0u8; 32];
        raw[0] = id;
        (
            SnapshotId(raw),
            Snapshot {
                version: 1,
                time: time.into(),
                host: "h".into(),
                volume: volume.into(),
                source: String::new(),
                tags: vec![],
                parent: None,
                root: Node::default(),
                summary: Summary::default(),
                program: String::new(),
                docker_volume: None,
            },
        )
    }

    #[test]
    fn specs_pick_by_latest_prefix_and_time() {
        let now = crate::fmt::parse_time("2026-12-07T12:00:00Z").unwrap();
        let all = vec![
            snap("app", "2026-11-30T10:00:00.000000000Z", 0xa1),
            snap("app", "2026-12-01T10:00:00.000000000Z", 0xa2),
            snap("db", "2026-12-01T11:00:00.000000000Z", 0xb1),
            snap("app", "2026-12-05T10:00:00.000000000Z", 0xc3),
        ];
        let get =
            |v: &str, w: &str| pick(&all, v, &Which::parse(w, now).unwrap()).map(|(id, _)| id.0[0]);
        assert_eq!(get("app", "latest"), Ok(0xc3));
        assert_eq!(get("app", "C3"), Ok(0xc3));
        assert_eq!(get("app", "@2026-12-01"), Ok(0xa2));
        assert_eq!(get("app", "@2026-12-01T09:59"), Ok(0xa1));
        assert_eq!(get("app", "@3d"), Ok(0xa2));
        assert_eq!(get("app", "@1d"), Ok(0xc3));
        assert_eq!(get("db", "latest"), Ok(0xb1));
        let e = get("app", "a").unwrap_err();
        assert!(
            e.contains("2 snapshots") && e.contains("a100") && e.contains("a200"),
            "{e}"
        );
        assert!(
            get("app", "ff")
                .unwrap_err()
                .contains("starting with \"ff\"")
        );
        assert!(
            get("app", "@2026-11-01")
                .unwrap_err()
                .contains("at or before")
        );
        assert!(
            get("nope", "latest")
                .unwrap_err()
                .contains("no snapshot of \"nope\"")
        );
        for bad in ["", "xyz", "@soon", "latest2"] {
            assert!(Which::parse(bad, now).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn specs_split_where_the_volume_ends() {
        let known = |v: &str| ["app", "container:web"].contains(&v);
        assert_eq!(split_spec("app", known), ("app", None));
        assert_eq!(split_spec("app:latest", known), ("app", Some("latest")));
        assert_eq!(
            split_spec("app:@2026-12-01T10:00", known),
            ("app", Some("@2026-12-01T10:00"))
        );
        assert_eq!(split_spec("container:web", known), ("container:web", None));
        assert_eq!(
            split_spec("container:web:ab12", known),
            ("container:web", Some("ab12"))
        );
        assert_eq!(split_spec("other:ab", known), ("other", Some("ab")));
    }
}
