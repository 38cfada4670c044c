//! The `epochs` retention mode: the repository is cut into time epochs, each a complete
//! store of its own under `epochs/<start date>/` (packs, index, snapshots, marks, pending),
//! sharing only the config and keys at the top. A backup writes into the epoch of its
//! time and deduplicates only against that epoch's index, so a snapshot references only
//! objects of its own epoch, all created during that epoch (the first backup of an epoch
//! uploads everything anew). A plain bucket lifecycle rule "expire objects under `epochs/`
//! after retention + epoch length (+1 day)" then never deletes an object a snapshot
//! younger than the retention needs: the oldest object such a snapshot needs was created
//! at its epoch's start, at most one epoch length before the snapshot.
//!
//! All of it sits in [`Epochs`], a `Backend` that routes each object to its epoch's store:
//! writes go to the epoch the command has entered ([`Epochs::enter`]); reads and listings
//! span every epoch until a command focuses on one (restoring a snapshot reads only its
//! own epoch's index, so it never follows an index entry into an epoch the lifecycle rule
//! is deleting).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{Backend, BackendError, BucketSettings, Kind, LifecycleRule, ObjectInfo};

/// Where the epochs live, under the repository prefix.
pub const EPOCHS_DIR: &str = "epochs";
const DAY: u64 = 86_400;

/// Days after which the lifecycle rule may expire an epoch's objects: retention plus one
/// epoch, plus one day for a backup that is still running when its epoch ends.
pub fn expiration_days(retain_secs: u64, epoch_secs: u64) -> u64 {
    (retain_secs + epoch_secs).div_ceil(DAY) + 1
}

/// The epoch a time falls in: its number (start / epoch length).
pub fn epoch_of(t: SystemTime, epoch_secs: u64) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        / epoch_secs.max(1)
}

/// The directory name of an epoch: its start date (UTC), so they sort and read as dates.
pub fn dir_name(epoch: u64, epoch_secs: u64) -> String {
    let start = (epoch * epoch_secs) as i64;
    time::OffsetDateTime::from_unix_timestamp(start)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour][minute]"
            ))
            .ok()
        })
        .unwrap_or_else(|| format!("e{epoch}"))
}

fn is_root_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Config | Kind::Key)
}

/// The epoch-routing backend (see the module comment).
pub struct Epochs {
    root: Arc<dyn Backend>,
    epoch_secs: u64,
    /// The epoch a command writes to (and reads from): set by `enter`.
    write: Mutex<Option<String>>,
    /// The epoch reads of a snapshot's data look at first: set by `focus_on`. Listings
    /// of snapshots still span every epoch (a command may look for a second snapshot).
    focus: Mutex<Option<String>>,
    subs: Mutex<HashMap<String, Arc<dyn Backend>>>,
    /// Which epoch directory each listed object was seen in.
    located: Mutex<HashMap<(Kind, String), String>>,
    /// Whether the write epoch's store has been created (directories, for a local one).
    created: Mutex<std::collections::HashSet<String>>,
}

impl Epochs {
    pub fn new(root: Arc<dyn Backend>, epoch_secs: u64) -> Epochs {
        Epochs {
            root,
            epoch_secs,
            write: Mutex::new(None),
            focus: Mutex::new(None),
            subs: Mutex::new(HashMap::new()),
            located: Mutex::new(HashMap::new()),
            created: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// From now on, writes and reads go to the epoch of `t` (a backup's time).
    pub fn enter(&self, t: SystemTime) -> String {
        let dir = dir_name(epoch_of(t, self.epoch_secs), self.epoch_secs);
        *self.write.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.clone());
        dir
    }

    /// From now on, reads go to the epoch where `kind/name` was listed (a snapshot being
    /// restored); unknown objects leave the scope as it is.
    pub fn focus_on(&self, kind: Kind, name: &str) {
        let dir = self
            .located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(kind, name.to_string()))
            .cloned();
        if let Some(d) = dir {
            *self.focus.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        }
    }

    fn write_epoch(&self) -> Option<String> {
        self.write.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The epoch reads look at first: the one written to, else the one in focus.
    fn scope(&self) -> Option<String> {
        self.write_epoch()
            .or_else(|| self.focus.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn sub(&self, dir: &str) -> Result<Arc<dyn Backend>, BackendError> {
        if let Some(b) = self.subs.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            return Ok(b.clone());
        }
        let b = self
            .root
            .sub(&format!("{EPOCHS_DIR}/{dir}"))
            .ok_or_else(|| {
                BackendError::Other(format!(
                    "{} cannot hold epochs (no sub-directories)",
                    self.root.location()
                ))
            })?;
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_string(), b.clone());
        Ok(b)
    }

    /// Every epoch directory, oldest first.
    pub async fn epochs(&self) -> Result<Vec<String>, BackendError> {
        self.root.list_dirs(EPOCHS_DIR).await
    }

    /// The stores a read of `kind/name` may find it in: where it was listed, else the
    /// scope and then every other epoch (newest first).
    async fn candidates(&self, kind: Kind, name: &str) -> Result<Vec<String>, BackendError> {
        if let Some(d) = self
            .located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(kind, name.to_string()))
        {
            return Ok(vec![d.clone()]);
        }
        // The scope first; then, newest first, every other epoch (an index loaded across
        // all epochs may name a pack of another epoch than the one in focus).
        let mut all = self.epochs().await?;
        all.reverse();
        if let Some(d) = self.scope() {
            all.retain(|e| *e != d);
            all.insert(0, d);
        }
        Ok(all)
    }

    fn no_epoch(&self) -> BackendError {
        BackendError::Other(format!(
            "{}: a write in epochs mode needs an epoch, and this command chose none (a bug: \
             please report it)",
            self.root.location()
        ))
    }
}

#[async_trait]
impl Backend for Epochs {
    fn location(&self) -> String {
        self.root.location()
    }

    async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError> {
        if is_root_kind(kind) {
            return self.root.exists(kind, name).await;
        }
        for d in self.candidates(kind, name).await? {
            if self.sub(&d).await?.exists(kind, name).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn put(&self, kind: Kind, name: &str, data: Bytes) -> Result<(), BackendError> {
        if is_root_kind(kind) {
            return self.root.put(kind, name, data).await;
        }
        let dir = self.write_epoch().ok_or_else(|| self.no_epoch())?;
        let sub = self.sub(&dir).await?;
        // Created on the first write only: reads never change anything.
        let fresh = !self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&dir);
        if fresh {
            sub.create().await?;
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(dir.clone());
        }
        sub.put(kind, name, data).await?;
        self.located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((kind, name.to_string()), dir);
        Ok(())
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError> {
        if is_root_kind(kind) {
            return self.root.get(kind, name).await;
        }
        let mut last = None;
        for d in self.candidates(kind, name).await? {
            match self.sub(&d).await?.get(kind, name).await {
                Err(e) if e.is_not_found() => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| BackendError::NotFound {
            kind,
            name: name.to_string(),
            location: self.location(),
        }))
    }

    async fn get_range_into(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        if is_root_kind(kind) {
            return self.root.get_range_into(kind, name, offset, len, buf).await;
        }
        let mut last = None;
        for d in self.candidates(kind, name).await? {
            match self
                .sub(&d)
                .await?
                .get_range_into(kind, name, offset, len, buf)
                .await
            {
                Err(e) if e.is_not_found() => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| BackendError::NotFound {
            kind,
            name: name.to_string(),
            location: self.location(),
        }))
    }

    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> Result<(), BackendError> {
        if is_root_kind(kind) {
            return self
                .root
                .get_range_streamed(kind, name, offset, len, sink)
                .await;
        }
        let mut last = None;
        // A store without the object says so before any byte reaches `sink`.
        for d in self.candidates(kind, name).await? {
            match self
                .sub(&d)
                .await?
                .get_range_streamed(kind, name, offset, len, sink)
                .await
            {
                Err(e) if e.is_not_found() => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| BackendError::NotFound {
            kind,
            name: name.to_string(),
            location: self.location(),
        }))
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
        if is_root_kind(kind) {
            return self.root.list(kind).await;
        }
        // Across epochs, newest first: where a blob is stored in several epochs, the index
        // (first entry wins) then points at the copy that expires last.
        let scoped = match kind {
            Kind::Snapshot => self.write_epoch(),
            _ => self.scope(),
        };
        let dirs = match scoped {
            Some(d) => vec![d],
            None => self.epochs().await?.into_iter().rev().collect(),
        };
        let mut out = Vec::new();
        for d in dirs {
            let objs = self.sub(&d).await?.list(kind).await?;
            let mut located = self.located.lock().unwrap_or_else(|p| p.into_inner());
            for o in &objs {
                located.insert((kind, o.name.clone()), d.clone());
            }
            out.extend(objs);
        }
        Ok(out)
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        if is_root_kind(kind) {
            return self.root.delete(kind, name).await;
        }
        for d in self.candidates(kind, name).await? {
            match self.sub(&d).await?.delete(kind, name).await {
                Err(e) if e.is_not_found() => continue,
                other => return other,
            }
        }
        Ok(())
    }

    async fn create(&self) -> Result<(), BackendError> {
        self.root.create().await
    }

    async fn check_reachable(&self) -> Result<(), BackendError> {
        self.root.check_reachable().await
    }

    fn upload_concurrency(&self) -> usize {
        self.root.upload_concurrency()
    }

    fn read_concurrency(&self) -> usize {
        self.root.read_concurrency()
    }

    async fn version_summary(
        &self,
    ) -> Result<Option<crate::backend::VersionSummary>, BackendError> {
        self.root.version_summary().await
    }

    async fn bucket_settings(&self) -> Result<BucketSettings, BackendError> {
        self.root.bucket_settings().await
    }

    async fn put_lifecycle(&self, rules: &[LifecycleRule]) -> Result<(), BackendError> {
        self.root.put_lifecycle(rules).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epochs_are_named_by_their_start_and_the_rule_covers_retention_plus_one_epoch() {
        let week = 7 * DAY;
        // 2024-05-01T12:00Z is in the week-long epoch that starts Thursday 2024-04-25.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        let e = epoch_of(t, week);
        assert_eq!(dir_name(e, week), "2024-04-25T0000");
        assert_eq!(
            epoch_of(SystemTime::UNIX_EPOCH + Duration::from_secs(e * week), week),
            e
        );
        assert_eq!(expiration_days(30 * DAY, week), 38);
        assert_eq!(expiration_days(30 * DAY + 1, week), 39);
    }
}
