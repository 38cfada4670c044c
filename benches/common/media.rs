//! Incompressible "media" bytes (photos, videos, already-compressed archives).
//!
//! Random bytes are the honest model: real media is compressed already, so a
//! backup tool can neither shrink nor (within one file) deduplicate it. What
//! matters for such data is raw throughput.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// A deterministic stream of random bytes; `fill` may be called repeatedly to
/// produce a file block by block without holding it all in memory.
pub struct MediaStream {
    rng: StdRng,
}

impl MediaStream {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }
}
