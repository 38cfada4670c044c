//! Backups that run at the same time (several hosts, or several volumes of one host) store
//! the data they share once, without a lock.
//!
//! Every backup is a session. Right before a pack is uploaded, its blob ids are announced
//! in a small `pending/` object whose name starts with the time, and the other sessions'
//! announcements are read. A blob that an announcement with an earlier name also carries
//! is taken out of the pack and set aside in a local spool: the earlier session uploads
//! it. The session with the earliest announcement of a blob never gives it up to a later
//! one, so some session always keeps every blob; two sessions that miss each other's
//! announcements (they cross on the wire) both upload it: stored twice, never lost.
//! Before its snapshot is written, a session waits until every blob it left to others is
//! in an index file; whatever does not arrive while its announcer stays silent (it died)
//! is uploaded from the spool. Blobs in index files other sessions wrote during this run
//! are not uploaded again either.
//!
//! Announcements live an hour at most: older ones are ignored after half an hour, and any
//! session deletes those over an hour old when it sees them. A session deletes its own
//! when it ends. Announcements of a dead process on this host are ignored at once.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::format::crypto::Purpose;
use crate::repo::format::index::{IndexFile, IndexedPack};
use crate::repo::format::pack::PackEntry;

/// Announcements older than this are ignored: no pack upload takes that long.
const FRESH: Duration = Duration::from_secs(30 * 60);
/// Announcements older than this are deleted by whoever sees them (left by a crash).
const STALE: Duration = Duration::from_secs(60 * 60);
/// While another session is active, how long an announcement is given to reach the
/// store before the others' are read, so two sessions announcing the same blobs a few
/// milliseconds apart still see each other (the later one gives its copy up).
const SETTLE: Duration = Duration::from_millis(250);
/// How long a session waits for blobs it left to others after they last showed a sign of
/// life (an announcement or an index file), before uploading them itself.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// Between two looks at the store while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The body of a `pending/` object.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// The object's own name, so an announcement cannot be replayed under another name.
    name: String,
    host: String,
    pid: u32,
    blobs: Vec<BlobId>,
}

/// A blob taken out of one of this session's packs, kept in the spool.
#[derive(Debug, Clone)]
pub struct Deferred {
    pub entry: PackEntry,
    spool_offset: u64,
}

/// What `resolve` found: the other sessions' packs this session's snapshot may use, and
/// the blobs nobody uploaded, which the caller must upload itself.
pub struct Resolved {
    pub others_packs: Vec<IndexedPack>,
    pub used_packs: HashSet<PackId>,
    pub missing: Vec<Deferred>,
}

#[derive(Default)]
struct State {
    /// This session's announcement names, deleted when it ends.
    mine: Vec<String>,
    /// Announcements already read or deliberately ignored.
    seen: HashSet<String>,
    /// Names of the other sessions' announcements, and for each announced blob the
    /// earliest of them (an index into `names`).
    names: Vec<String>,
    earliest: HashMap<BlobId, u32>,
    /// Another session announced something fresh since this one started.
    concurrent: bool,
    /// Index files known (at start, or read since).
    index_seen: HashSet<String>,
    /// Blobs in index files other sessions wrote since this one started.
    indexed: HashMap<BlobId, PackId>,
    others_packs: Vec<IndexedPack>,
    /// When another session last showed a sign of life (ms since the epoch).
    last_activity_ms: u64,
}

#[derive(Default)]
struct Spool {
    file: Option<File>,
    deferred: Vec<Deferred>,
}

/// One backup's session. Dropping it deletes its announcements.
pub struct Inflight<'a> {
    repo: &'a Repository,
    host: String,
    session: String,
    /// Packs prune has marked: never relied on.
    skip: &'a HashSet<PackId>,
    wait: Duration,
    seq: AtomicU32,
    state: Mutex<State>,
    spool: Mutex<Spool>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time an announcement name starts with (`<13-digit ms>-<session>-<seq>`).
fn name_time(name: &str) -> Option<u64> {
    let (ms, rest) = name.split_once('-')?;
    (ms.len() == 13 && rest.contains('-'))
        .then(|| ms.parse().ok())
        .flatten()
}

/// Whether a volguard process with this pid runs on this machine.
fn volguard_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "volguard")
        .unwrap_or(false)
}

impl<'a> Inflight<'a> {
    /// Starts a session: notes the index files that exist now, announces the session
    /// (an empty announcement, so other sessions know to take care) and reads the others'.
    pub fn start(
        repo: &'a Repository,
        host: &str,
        skip: &'a HashSet<PackId>,
        wait: Duration,
    ) -> Result<Inflight<'a>> {
        let index_seen = repo
            .block_on(repo.backend().list(Kind::Index))?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let me = Inflight {
            repo,
            host: host.to_string(),
            session: hex::encode(rand::random::<[u8; 8]>()),
            skip,
            wait,
            seq: AtomicU32::new(0),
            state: Mutex::new(State {
                index_seen,
                ..State::default()
            }),
            spool: Mutex::new(Spool::default()),
        };
        me.announce(Vec::new())?;
        me.refresh()?;
        Ok(me)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn announce(&self, blobs: Vec<BlobId>) -> Result<String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{:013}-{}-{seq:06}", unix_ms(), self.session);
        let a = Announcement {
            name: name.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            blobs,
        };
        let plain = postcard::to_stdvec(&a).expect("an announcement serializes");
        let sealed = self.repo.keys().seal(Purpose::Pending, &plain);
        self.repo
            .block_on(self.repo.backend().put(Kind::Pending, &name, sealed.into()))?;
        let mut st = self.state();
        st.mine.push(name.clone());
        st.seen.insert(name.clone());
        Ok(name)
    }

    /// Reads announcements not seen yet and, once another session is known to run, index
    /// files written since this session started.
    fn refresh(&self) -> Result<()> {
        let repo = self.repo;
        let now = unix_ms();
        let listed = repo.block_on(repo.backend().list(Kind::Pending))?;
        let new: Vec<String> = {
            let st = self.state();
            listed
                .into_iter()
                .map(|o| o.name)
                .filter(|n| !st.seen.contains(n))
                .collect()
        };
        for name in new {
            let Some(age) = name_time(&name).map(|t| now.saturating_sub(t)) else {
                self.state().seen.insert(name); // not ours: leave it alone
                continue;
            };
            if age > STALE.as_millis() as u64 {
                // Left by a crash; failing to delete it only means someone else will.
                let _ = repo.block_on(repo.backend().delete(Kind::Pending, &name));
            }
            if age > FRESH.as_millis() as u64 {
                self.state().seen.insert(name);
                continue;
            }
            let bytes = match repo.block_on(repo.backend().get(Kind::Pending, &name)) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => {
                    self.state().seen.insert(name); // its session ended meanwhile
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let a = match open_announcement(repo, &name, &bytes) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("ignoring an unreadable announcement: {e}");
                    self.state().seen.insert(name);
                    continue;
                }
            };
            let dead = a.host == self.host && !volguard_alive(a.pid);
            let mut st = self.state();
            st.seen.insert(name.clone());
            if dead {
                continue;
            }
            st.concurrent = true;
            st.last_activity_ms = st.last_activity_ms.max(name_time(&name).unwrap_or(0));
            let State {
                names, earliest, ..
            } = &mut *st;
            let ix = names.len() as u32;
            names.push(name);
            for b in a.blobs {
                let slot = earliest.entry(b).or_insert(ix);
                if names[ix as usize] < names[*slot as usize] {
                    *slot = ix;
                }
            }
        }
        if self.state().concurrent {
            self.read_new_index_files()?;
        }
        Ok(())
    }

    fn read_new_index_files(&self) -> Result<()> {
        let repo = self.repo;
        let listed = repo.block_on(repo.backend().list(Kind::Index))?;
        for obj in listed {
            if self.state().index_seen.contains(&obj.name) {
                continue;
            }
            let bytes = match repo.block_on(repo.backend().get(Kind::Index, &obj.name)) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue, // replaced by prune: relisted later
                Err(e) => return Err(e.into()),
            };
            let file = IndexFile::open(repo.keys(), &obj.name, &bytes);
            let mut st = self.state();
            st.index_seen.insert(obj.name);
            st.last_activity_ms = unix_ms();
            let Ok(file) = file else { continue }; // load_index reports it
            for p in file.packs {
                if self.skip.contains(&p.id) {
                    continue;
                }
                for b in &p.blobs {
                    st.indexed.insert(b.id, p.id);
                }
                st.others_packs.push(p);
            }
        }
        Ok(())
    }

    /// Notes an index file this session wrote, so it is not read back as another's.
    pub fn own_index(&self, name: String) {
        self.state().index_seen.insert(name);
    }

    /// Called right before a pack of this session is uploaded: announces its blobs, then
    /// returns the entries to keep. The others are spooled; `resolve` accounts for them.
    /// `bytes` is the pack the entries' offsets point into.
    pub fn before_upload(&self, entries: &[PackEntry], bytes: &[u8]) -> Result<Vec<PackEntry>> {
        let name = self.announce(entries.iter().map(|e| e.id).collect())?;
        if self.state().concurrent {
            std::thread::sleep(SETTLE);
        }
        self.refresh()?;
        let (keep, drop): (Vec<&PackEntry>, Vec<&PackEntry>) = {
            let st = self.state();
            entries.iter().partition(|e| {
                let announced_earlier = st
                    .earliest
                    .get(&e.id)
                    .is_some_and(|&ix| st.names[ix as usize] < name);
                !(announced_earlier || st.indexed.contains_key(&e.id))
            })
        };
        if !drop.is_empty() {
            self.spool_blobs(&drop, bytes)?;
            tracing::debug!(
                left_to_others = drop.len(),
                kept = keep.len(),
                "blobs another backup is uploading"
            );
        }
        Ok(keep.into_iter().copied().collect())
    }

    fn spool_blobs(&self, entries: &[&PackEntry], pack: &[u8]) -> Result<()> {
        let mut sp = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        if sp.file.is_none() {
            sp.file = Some(tempfile::tempfile().map_err(|e| {
                Error::io("cannot create a spool file in", std::env::temp_dir(), e)
            })?);
        }
        let mut at = 0;
        if let Some(f) = sp.file.as_mut() {
            at = f.seek(SeekFrom::End(0)).map_err(|e| {
                Error::io("cannot write the spool file in", std::env::temp_dir(), e)
            })?;
            for e in entries {
                let sealed = pack
                    .get(e.offset as usize..e.offset as usize + e.length as usize)
                    .ok_or_else(|| Error::Other(format!("blob {} lies outside its pack", e.id)))?;
                f.write_all(sealed).map_err(|err| {
                    Error::io("cannot write the spool file in", std::env::temp_dir(), err)
                })?;
            }
        }
        for e in entries {
            sp.deferred.push(Deferred {
                entry: **e,
                spool_offset: at,
            });
            at += e.length as u64;
        }
        Ok(())
    }

    /// Reads a spooled blob's sealed bytes back.
    pub fn spooled(&self, d: &Deferred) -> Result<Vec<u8>> {
        let sp = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0u8; d.entry.length as usize];
        let f = sp
            .file
            .as_ref()
            .ok_or_else(|| Error::Other("the spool file is gone".into()))?;
        f.read_exact_at(&mut buf, d.spool_offset)
            .map_err(|e| Error::io("cannot read the spool file in", std::env::temp_dir(), e))?;
        Ok(buf)
    }

    /// Waits until every blob this session left to others is in an index file, or until
    /// the others have been silent for the wait time; returns the packs to rely on and
    /// the blobs still missing.
    pub fn resolve(&self) -> Result<Resolved> {
        let deferred = std::mem::take(
            &mut self
                .spool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deferred,
        );
        let mut waited = false;
        loop {
            if !deferred.is_empty() {
                self.refresh()?;
            }
            let st = self.state();
            let missing = deferred
                .iter()
                .filter(|d| !st.indexed.contains_key(&d.entry.id))
                .count();
            let silent =
                unix_ms().saturating_sub(st.last_activity_ms) >= self.wait.as_millis() as u64;
            if missing == 0 || silent {
                if missing > 0 {
                    tracing::warn!(
                        "{missing} blobs another backup announced did not arrive; uploading them \
                         from this backup"
                    );
                } else if waited {
                    tracing::info!("the blobs left to another backup have arrived");
                }
                let used_packs = deferred
                    .iter()
                    .filter_map(|d| st.indexed.get(&d.entry.id).copied())
                    .collect();
                let missing = deferred
                    .into_iter()
                    .filter(|d| !st.indexed.contains_key(&d.entry.id))
                    .collect();
                return Ok(Resolved {
                    others_packs: st.others_packs.clone(),
                    used_packs,
                    missing,
                });
            }
            drop(st);
            waited = true;
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mine = std::mem::take(&mut self.state().mine);
        for name in mine {
            if let Err(e) = self
                .repo
                .block_on(self.repo.backend().delete(Kind::Pending, &name))
            {
                tracing::debug!("could not delete announcement {name}: {e}");
            }
        }
    }
}

fn open_announcement(repo: &Repository, name: &str, sealed: &[u8]) -> Result<Announcement> {
    let what = format!("pending/{name}");
    let plain = repo.keys().open(Purpose::Pending, sealed, &what)?;
    let a: Announcement =
        postcard::from_bytes(&plain).map_err(|e| Error::corrupt(&what, format!("decode: {e}")))?;
    if a.name != name {
        return Err(Error::corrupt(&what, "content does not match its name"));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::repo::format::crypto::Secret;
    use crate::repo::format::pack::{BlobKind, PackBuilder};
    use std::sync::Arc;

    fn repo(dir: &std::path::Path) -> Repository {
        Repository::init(
            Arc::new(LocalBackend::new(dir)),
            &Secret::KeyFile(vec![9; 32]),
            crate::repo::DEFAULT_CHUNKER,
        )
        .unwrap()
    }

    /// A pack of the given blob contents, as the packer makes it.
    fn pack(repo: &Repository, contents: &[&[u8]]) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let mut b = PackBuilder::default();
        for c in contents {
            let id = BlobId(repo.keys().id_of(c));
            let sealed = repo.keys().seal(Purpose::Blob, c);
            b.add(BlobKind::Data, id, &sealed, c.len() as u32);
        }
        b.finish(repo.keys())
    }

    #[test]
    fn the_later_announcer_leaves_shared_blobs_and_gets_them_once_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let skip = HashSet::new();
        let a = Inflight::start(&repo, "host-a", &skip, Duration::from_secs(30)).unwrap();
        let b = Inflight::start(&repo, "host-b", &skip, Duration::from_secs(30)).unwrap();
        let (pa, bytes_a, entries_a) = pack(&repo, &[b"shared", b"only a"]);
        let (_, bytes_b, entries_b) = pack(&repo, &[b"only b", b"shared"]);
        // A announces first: it keeps everything; B, later, gives the shared blob up.
        assert_eq!(a.before_upload(&entries_a, &bytes_a).unwrap(), entries_a);
        // Names are ordered by the millisecond first: make B's certainly later.
        std::thread::sleep(Duration::from_millis(5));
        let kept_b = b.before_upload(&entries_b, &bytes_b).unwrap();
        assert_eq!(kept_b, vec![entries_b[0]]);
        // A's pack lands and is indexed: B relies on it, uploads nothing more.
        repo.block_on(
            repo.backend()
                .put(Kind::Pack, &pa.to_hex(), bytes_a.clone().into()),
        )
        .unwrap();
        let file = IndexFile {
            packs: vec![IndexedPack {
                id: pa,
                size: bytes_a.len() as u64,
                blobs: entries_a.clone(),
            }],
        };
        let (ix, _) = repo.save_index(&file).unwrap();
        a.own_index(ix.to_hex());
        let r = b.resolve().unwrap();
        assert!(r.missing.is_empty());
        assert_eq!(r.used_packs, HashSet::from([pa]));
        assert_eq!(r.others_packs.len(), 1);
        // Ending a session deletes its announcements.
        drop(a);
        drop(b);
        assert!(
            repo.block_on(repo.backend().list(Kind::Pending))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn blobs_left_to_a_session_that_dies_come_back_from_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let skip = HashSet::new();
        let a = Inflight::start(&repo, "host-a", &skip, Duration::from_secs(30)).unwrap();
        let b = Inflight::start(&repo, "host-b", &skip, Duration::from_millis(300)).unwrap();
        let (_, bytes_a, entries_a) = pack(&repo, &[b"shared"]);
        let (_, bytes_b, entries_b) = pack(&repo, &[b"shared", b"only b"]);
        a.before_upload(&entries_a, &bytes_a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.before_upload(&entries_b, &bytes_b).unwrap().len(), 1);
        // A vanishes without uploading (its announcements go, like a crash's would age).
        drop(a);
        let r = b.resolve().unwrap();
        assert_eq!(r.missing.len(), 1);
        let d = &r.missing[0];
        assert_eq!(d.entry.id, entries_b[0].id);
        let e = &entries_b[0];
        assert_eq!(
            b.spooled(d).unwrap(),
            bytes_b[e.offset as usize..][..e.length as usize]
        );
        assert!(r.used_packs.is_empty());
    }

    #[test]
    fn a_dead_process_on_this_host_and_garbage_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let skip = HashSet::new();
        // An announcement by a volguard pid that does not exist on this host.
        let name = format!("{:013}-deadbeefdeadbeef-000000", unix_ms());
        let (_, bytes, entries) = pack(&repo, &[b"x"]);
        let a = Announcement {
            name: name.clone(),
            host: "host-b".into(),
            pid: u32::MAX,
            blobs: entries.iter().map(|e| e.id).collect(),
        };
        let sealed = repo
            .keys()
            .seal(Purpose::Pending, &postcard::to_stdvec(&a).unwrap());
        repo.block_on(repo.backend().put(Kind::Pending, &name, sealed.into()))
            .unwrap();
        let junk = format!("{:013}-0000000000000000-000001", unix_ms());
        repo.block_on(repo.backend().put(
            Kind::Pending,
            &junk,
            bytes::Bytes::from_static(b"garbage"),
        ))
        .unwrap();
        let b = Inflight::start(&repo, "host-b", &skip, Duration::from_secs(30)).unwrap();
        assert_eq!(b.before_upload(&entries, &bytes).unwrap(), entries);
        assert!(!b.state().concurrent);
        // The same announcement under another name is refused.
        let renamed = format!("{:013}-feedfeedfeedfeed-000000", unix_ms());
        let raw = repo
            .block_on(repo.backend().get(Kind::Pending, &name))
            .unwrap();
        assert!(open_announcement(&repo, &renamed, &raw).is_err());
    }
}
