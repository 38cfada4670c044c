//! The index files: loading them (with packs to leave out), recovering packs no index
//! lists from their own trailers, and writing new index files.

use std::collections::{HashMap, HashSet};

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::{IndexId, PackId};
use crate::repo::Repository;
use crate::repo::format::index::{Index, IndexFile, IndexedPack};
use crate::repo::format::pack;

impl Repository {
    /// Loads every index file. Unreadable index files are reported, not fatal: the packs
    /// they described are recovered from their own trailers by `recover_unindexed`.
    pub fn load_index(&self) -> Result<(Index, Vec<String>)> {
        self.load_index_except(&HashSet::new())
    }

    /// The index without the packs in `skip` (packs prune has marked: a backup must not
    /// reuse their blobs, though an unmarked duplicate elsewhere is fine).
    pub fn load_index_except(&self, skip: &HashSet<PackId>) -> Result<(Index, Vec<String>)> {
        let mut index = Index::default();
        let problems = self.for_each_index_file(|_, f| {
            for p in f.packs.iter().filter(|p| !skip.contains(&p.id)) {
                index.add_pack(p.id, p.size, &p.blobs);
            }
        })?;
        Ok((index, problems))
    }

    /// Reads every index file, one at a time, and returns the unreadable ones as problems.
    /// Prune replaces index files (new one written, then the old one deleted), so a listed
    /// file may be gone when read: then the listing is taken again, which holds its
    /// replacement, and the files not yet seen are read.
    pub fn for_each_index_file(&self, mut f: impl FnMut(&str, IndexFile)) -> Result<Vec<String>> {
        const LISTINGS: usize = 5;
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for _ in 0..LISTINGS {
            let mut vanished = false;
            for obj in self.block_on(self.backend.list(Kind::Index))? {
                if !seen.insert(obj.name.clone()) {
                    continue;
                }
                let bytes = match self.block_on(self.backend.get(Kind::Index, &obj.name)) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        vanished = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let open = |b: &[u8]| IndexFile::open(&self.keys, &obj.name, b);
                match self.again_if_corrupt(Kind::Index, &obj.name, open(&bytes), open) {
                    Ok(file) => {
                        if let Some(l) = &self.lock {
                            l.note_index(&obj.name, &file);
                        }
                        f(&obj.name, file)
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if !vanished {
                return Ok(problems);
            }
        }
        Err(Error::Locked {
            what: format!("the index of {}", self.location()),
            by: format!(
                "another operation that keeps replacing its files (a prune running in a \
                 loop?): they vanished while being read in {LISTINGS} listings in a row"
            ),
            hint: "nothing was changed; run the command again once that has finished".into(),
        })
    }

    /// Adds to `index`, in memory only, every stored pack it does not know, from the pack's
    /// own trailer: packs left by an interrupted backup, or listed only by a damaged or
    /// deleted index file, so intact data is never hidden from readers. Packs in `skip`
    /// (marked by prune) stay out. Returns the packs added and, for packs whose trailer is
    /// unreadable, why.
    pub fn index_unlisted_packs(
        &self,
        index: &mut Index,
        skip: &HashSet<PackId>,
    ) -> Result<(Vec<IndexedPack>, HashMap<PackId, String>)> {
        let mut recovered = Vec::new();
        let mut unreadable = HashMap::new();
        for obj in self.block_on(self.backend.list(Kind::Pack))? {
            let Some(id) = PackId::from_hex(&obj.name) else {
                continue;
            };
            if index.has_pack(&id) || skip.contains(&id) {
                continue;
            }
            match self.read_pack_trailer(&id, obj.size) {
                Ok(blobs) => {
                    index.add_pack(id, obj.size, &blobs);
                    recovered.push(IndexedPack {
                        id,
                        size: obj.size,
                        blobs,
                    });
                }
                Err(e) => {
                    unreadable.insert(id, e.to_string());
                }
            }
        }
        Ok((recovered, unreadable))
    }

    /// `index_unlisted_packs`, then an index file for the packs it found, so a backup
    /// reuses their blobs instead of uploading them again. Returns how many packs that was.
    pub fn recover_unindexed(&self, index: &mut Index, skip: &HashSet<PackId>) -> Result<usize> {
        let (recovered, unreadable) = self.index_unlisted_packs(index, skip)?;
        for (id, e) in &unreadable {
            tracing::warn!(pack = %id, "unindexed pack is unreadable, ignoring it: {e}");
        }
        let n = recovered.len();
        if n > 0 {
            self.save_index(&IndexFile { packs: recovered })?;
        }
        Ok(n)
    }

    pub fn read_pack_trailer(&self, id: &PackId, size: u64) -> Result<Vec<pack::PackEntry>> {
        let what = format!("packs/{id}");
        if size < pack::FOOTER_LEN {
            return Err(Error::corrupt(&what, "shorter than a pack footer"));
        }
        let name = id.to_hex();
        let footer = self.block_on(self.backend.get_range(
            Kind::Pack,
            &name,
            size - pack::FOOTER_LEN,
            pack::FOOTER_LEN,
        ))?;
        let tlen = pack::trailer_len(&footer, size, &what)? as u64;
        let start = size - pack::FOOTER_LEN - tlen;
        let sealed = self.block_on(self.backend.get_range(Kind::Pack, &name, start, tlen))?;
        pack::parse_trailer(&self.keys, &sealed, start, &what)
    }

    /// Writes one index file; returns its id and stored size.
    pub fn save_index(&self, file: &IndexFile) -> Result<(IndexId, u64)> {
        let (id, sealed) = file.seal(&self.keys);
        let n = sealed.len() as u64;
        self.block_on(self.backend.put(Kind::Index, &id.to_hex(), sealed.into()))?;
        if let Some(l) = &self.lock {
            l.note_index(&id.to_hex(), file);
        }
        Ok((id, n))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{Backend, BackendError, ObjectInfo};
    use crate::repo::DEFAULT_CHUNKER;
    use crate::repo::format::crypto::Secret;

    /// A local store in which, as while a prune keeps replacing index files, every listing
    /// of `index/` names one more file that is gone by the time it is read.
    struct Churning {
        inner: LocalBackend,
        listings: AtomicUsize,
    }

    #[async_trait]
    impl Backend for Churning {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError> {
            self.inner.exists(kind, name).await
        }
        async fn put(&self, kind: Kind, name: &str, data: Bytes) -> Result<(), BackendError> {
            self.inner.put(kind, name, data).await
        }
        async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError> {
            self.inner.get(kind, name).await
        }
        async fn get_range_into(
            &self,
            kind: Kind,
            name: &str,
            offset: u64,
            len: u64,
            buf: &mut Vec<u8>,
        ) -> Result<(), BackendError> {
            self.inner
                .get_range_into(kind, name, offset, len, buf)
                .await
        }
        async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
            let mut out = self.inner.list(kind).await?;
            if kind == Kind::Index {
                let n = self.listings.fetch_add(1, Ordering::Relaxed);
                out.push(ObjectInfo {
                    name: format!("replaced-{n}"),
                    size: 1,
                    modified: None,
                });
            }
            Ok(out)
        }
        async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
            self.inner.delete(kind, name).await
        }
        async fn create(&self) -> Result<(), BackendError> {
            self.inner.create().await
        }
    }

    /// Index files that keep vanishing under the reader end the command as `Locked`
    /// (exit 11: run it again later), not as damage.
    #[test]
    fn index_files_replaced_under_every_listing_are_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Churning {
            inner: LocalBackend::new(dir.path().join("repo")),
            listings: AtomicUsize::new(0),
        });
        let repo = Repository::init(
            store.clone(),
            &Secret::KeyFile(vec![7; 32]),
            DEFAULT_CHUNKER,
        )
        .unwrap();
        let err = repo.load_index().map(|_| ()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err:?}");
        assert_eq!(err.exit_code(), crate::error::exit::LOCKED);
        assert!(err.to_string().contains("run the command again"), "{err}");
        assert_eq!(store.listings.load(Ordering::Relaxed), 5);
    }
}
