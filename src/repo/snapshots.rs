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

    /// Resolves `latest` or an id prefix among the snapshots of `volume`.
    pub fn find_snapshot(&self, volume: &str, which: &str) -> Result<(SnapshotId, Snapshot)> {
        let (all, problems) = self.list_snapshots()?;
        // A snapshot object that did not open (tampered, damaged) is why the one asked
        // for may be missing: name it rather than only saying "no snapshot".
        let rejected = if problems.is_empty() {
            String::new()
        } else {
            format!(
                "; {} snapshot object(s) were rejected: {}",
                problems.len(),
                problems.join("; ")
            )
        };
        let mut of_volume: Vec<_> = all
            .into_iter()
            .filter(|(_, s)| s.volume == volume)
            .collect();
        if of_volume.is_empty() {
            return Err(Error::NotFound {
                what: format!("no snapshot of {volume:?}"),
                location: self.location(),
                hint: format!("`volguard snapshots` lists what there is{rejected}"),
            });
        }
        // Epochs mode: what follows reads the snapshot's own epoch only.
        let focus = |found: (SnapshotId, Snapshot)| {
            if let Some(e) = &self.epochs {
                e.focus_on(Kind::Snapshot, &found.0.to_hex());
            }
            found
        };
        if which == "latest" {
            return Ok(focus(of_volume.pop().expect("non-empty")));
        }
        let matches: Vec<_> = of_volume
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&which.to_ascii_lowercase()))
            .collect();
        match matches.len() {
            1 => Ok(focus(matches.into_iter().next().expect("one"))),
            0 => Err(Error::NotFound {
                what: format!("no snapshot of {volume:?} has an id starting with {which:?}"),
                location: self.location(),
                hint: format!(
                    "`volguard snapshots --volume {volume}` lists its snapshots{rejected}"
                ),
            }),
            n => Err(Error::Other(format!(
                "{n} snapshots of {volume:?} start with {which:?}; give more characters"
            ))),
        }
    }
}
