//! The mount's bounded cache of opened (decrypted, decompressed, verified) blobs: reads
//! of neighbouring ranges and files sharing chunks are served without a backend request,
//! and memory stays under a fixed number of bytes whatever is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::ids::BlobId;

/// Least recently used first out, by bytes held.
pub struct BlobCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    blobs: HashMap<BlobId, (Arc<Vec<u8>>, u64)>,
    /// Use tick → blob; the smallest tick is the least recently used.
    order: BTreeMap<u64, BlobId>,
    tick: u64,
    bytes: usize,
}

impl BlobCache {
    pub fn new(capacity: usize) -> Self {
        BlobCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (data, used) = inner.blobs.get_mut(id)?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, *id);
        Some(data.clone())
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.blobs.contains_key(id)
    }

    pub fn insert(&self, id: BlobId, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, used)) = inner.blobs.insert(id, (data.clone(), tick)) {
            inner.order.remove(&used);
            inner.bytes -= old.len();
        }
        inner.order.insert(tick, id);
        inner.bytes += data.len();
        while inner.bytes > self.capacity {
            let Some((_, victim)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.blobs.remove(&victim) {
                inner.bytes -= old.len();
            }
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn the_least_recently_used_goes_first_and_bytes_stay_bounded() {
        let c = BlobCache::new(300);
        c.insert(id(1), Arc::new(vec![0; 100]));
        c.insert(id(2), Arc::new(vec![0; 100]));
        c.insert(id(3), Arc::new(vec![0; 100]));
        assert!(c.get(&id(1)).is_some());
        c.insert(id(4), Arc::new(vec![0; 100]));
        assert!(c.contains(&id(1)) && c.contains(&id(3)) && c.contains(&id(4)));
        assert!(!c.contains(&id(2)));
        assert_eq!(c.bytes(), 300);
        c.insert(id(5), Arc::new(vec![0; 1000]));
        assert!(
            !c.contains(&id(5)),
            "a blob larger than the cache is not kept"
        );
        c.insert(id(3), Arc::new(vec![0; 50]));
        assert_eq!(c.bytes(), 250);
    }
}
