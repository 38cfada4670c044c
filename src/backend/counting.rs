//! A `Backend` that counts what is read through it, so a command can say (and a test can
//! check) how many bytes a piece of work really fetched: `mount` reports it at unmount.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Backend, BackendError, BucketSettings, Kind, LifecycleRule, LockMode, ObjectInfo, Retention,
    VersionSummary,
};

/// Bytes and requests read through a [`Counting`] backend (and the stores `sub` gives).
#[derive(Debug, Default)]
pub struct ReadCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    pack_requests: AtomicU64,
    pack_bytes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadCount {
    /// Reads (whole objects and ranges) of every kind, and their bytes.
    pub requests: u64,
    pub bytes: u64,
    /// Of those, the reads of packs (file content and trees), and their bytes.
    pub pack_requests: u64,
    pub pack_bytes: u64,
}

impl ReadCounters {
    fn add(&self, kind: Kind, n: usize) {
        let n = n as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if kind == Kind::Pack {
            self.pack_requests.fetch_add(1, Ordering::Relaxed);
            self.pack_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> ReadCount {
        ReadCount {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            pack_requests: self.pack_requests.load(Ordering::Relaxed),
            pack_bytes: self.pack_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Passes every call to `inner` and counts the bytes of every read.
pub struct Counting {
    inner: Arc<dyn Backend>,
    counters: Arc<ReadCounters>,
}

impl Counting {
    pub fn wrap(inner: Arc<dyn Backend>, counters: Arc<ReadCounters>) -> Arc<dyn Backend> {
        Arc::new(Counting { inner, counters })
    }
}

#[async_trait]
impl Backend for Counting {
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
        let b = self.inner.get(kind, name).await?;
        self.counters.add(kind, b.len());
        Ok(b)
    }
    async fn get_range(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let b = self.inner.get_range(kind, name, offset, len).await?;
        self.counters.add(kind, b.len());
        Ok(b)
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
            .await?;
        self.counters.add(kind, buf.len());
        Ok(())
    }
    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> Result<(), BackendError> {
        let mut n = 0usize;
        let r = self
            .inner
            .get_range_streamed(kind, name, offset, len, &mut |p: &[u8]| {
                n += p.len();
                sink(p)
            })
            .await;
        self.counters.add(kind, n);
        r
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(kind).await
    }
    async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        self.inner.delete(kind, name).await
    }
    async fn create(&self) -> Result<(), BackendError> {
        self.inner.create().await
    }
    async fn check_reachable(&self) -> Result<(), BackendError> {
        self.inner.check_reachable().await
    }
    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }
    fn read_concurrency(&self) -> usize {
        self.inner.read_concurrency()
    }
    async fn put_locked(
        &self,
        kind: Kind,
        name: &str,
        data: Bytes,
        lock: Retention,
    ) -> Result<(), BackendError> {
        self.inner.put_locked(kind, name, data, lock).await
    }
    async fn retention(&self, kind: Kind, name: &str) -> Result<Option<Retention>, BackendError> {
        self.inner.retention(kind, name).await
    }
    async fn extend_retention(
        &self,
        kind: Kind,
        name: &str,
        lock: Retention,
    ) -> Result<(), BackendError> {
        self.inner.extend_retention(kind, name, lock).await
    }
    async fn delete_all_versions(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        self.inner.delete_all_versions(kind, name).await
    }
    async fn verify_object_lock(&self, mode: LockMode) -> Result<(), BackendError> {
        self.inner.verify_object_lock(mode).await
    }
    async fn bucket_settings(&self) -> Result<BucketSettings, BackendError> {
        self.inner.bucket_settings().await
    }
    async fn put_lifecycle(&self, rules: &[LifecycleRule]) -> Result<(), BackendError> {
        self.inner.put_lifecycle(rules).await
    }
    async fn version_summary(&self) -> Result<Option<VersionSummary>, BackendError> {
        self.inner.version_summary().await
    }
    fn sub(&self, dir: &str) -> Option<Arc<dyn Backend>> {
        self.inner
            .sub(dir)
            .map(|b| Counting::wrap(b, self.counters.clone()))
    }
    async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list_dirs(dir).await
    }
    fn no_object_lock(&self) -> BackendError {
        self.inner.no_object_lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_by_kind_and_writes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(ReadCounters::default());
        let b = Counting::wrap(
            Arc::new(crate::backend::local::LocalBackend::new(dir.path())),
            counters.clone(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            b.create().await.unwrap();
            b.put(Kind::Pack, "abcd", Bytes::from(vec![7u8; 1000]))
                .await
                .unwrap();
            b.put(Kind::Index, "ef01", Bytes::from(vec![1u8; 10]))
                .await
                .unwrap();
            assert_eq!(counters.get(), ReadCount::default());
            assert_eq!(
                b.get_range(Kind::Pack, "abcd", 100, 50)
                    .await
                    .unwrap()
                    .len(),
                50
            );
            b.get(Kind::Index, "ef01").await.unwrap();
        });
        let c = counters.get();
        assert_eq!((c.requests, c.bytes), (2, 60));
        assert_eq!((c.pack_requests, c.pack_bytes), (1, 50));
    }
}
