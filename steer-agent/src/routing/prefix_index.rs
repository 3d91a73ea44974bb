//! Which pods recently served which prompt-prefix blocks.
//!
//! Sharded by hash so concurrent streams rarely meet on a lock, and fixed in
//! size: 16 bytes a block, allocated once ([`Table`]); a full shard replaces
//! its least recently recorded blocks. Each block remembers the two pods that
//! recorded it last. Lookups probe O(log n) blocks (galloping, then binary
//! search) instead of every block, relying on the chain property: a pod
//! holding block i holds the blocks before it.

use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use super::PodView;
use super::prefix_table::Table;

const SHARDS: usize = 64;

#[derive(Debug)]
pub struct PrefixIndex {
    shards: Box<[Mutex<Table>]>,
    tick: AtomicU32,
}

impl PrefixIndex {
    pub fn new(capacity_blocks: usize) -> Self {
        let per_shard = capacity_blocks.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Table::new(per_shard)))
                .collect(),
            tick: AtomicU32::new(0),
        }
    }

    /// Fills `depths[i]` with the number of leading `hashes` pod `pods[i]` holds.
    pub fn match_depths(&self, hashes: &[u64], pods: &[PodView], depths: &mut [u32]) {
        depths.iter_mut().for_each(|d| *d = 0);
        if hashes.is_empty() {
            return;
        }
        let mut probe = |i: usize| -> bool {
            let holders = self.shards[shard_of(hashes[i])].lock().holders(hashes[i]);
            let mut any = false;
            for &holder in holders.iter().filter(|&&h| h != 0) {
                if let Some(pos) = pods.iter().position(|p| p.id == holder) {
                    depths[pos] = depths[pos].max(i as u32 + 1);
                    any = true;
                }
            }
            any
        };
        // Gallop: 0, 1, 3, 7, ... until a miss or the end.
        let (mut lo, mut hi) = (None::<usize>, hashes.len());
        let mut i = 0;
        while i < hashes.len() {
            if probe(i) {
                lo = Some(i);
                i = i * 2 + 1;
            } else {
                hi = i;
                break;
            }
        }
        let Some(mut lo) = lo else { return };
        // Binary search the frontier in (lo, hi).
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if probe(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }

    /// Records that `pod` now holds every block of `hashes`, taking each
    /// shard's lock once (blocks grouped by shard first).
    pub fn record(&self, hashes: &[u64], pod: u32) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        // Counting sort by shard: `starts[s]..starts[s + 1]` of `grouped`.
        let mut starts = [0usize; SHARDS + 1];
        for &hash in hashes {
            starts[shard_of(hash) + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut next = starts;
        let mut grouped = vec![0u64; hashes.len()];
        for &hash in hashes {
            let s = shard_of(hash);
            grouped[next[s]] = hash;
            next[s] += 1;
        }
        for s in 0..SHARDS {
            let blocks = &grouped[starts[s]..starts[s + 1]];
            if blocks.is_empty() {
                continue;
            }
            let mut shard = self.shards[s].lock();
            for &hash in blocks {
                shard.record(hash, pod, tick);
            }
        }
    }

    /// Forgets a pod (it left every pool): its blocks must not attract traffic.
    pub fn forget_pod(&self, pod: u32) {
        for shard in self.shards.iter() {
            shard.lock().forget_pod(pod);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

fn shard_of(hash: u64) -> usize {
    // The table uses the low 58 bits; the top 6 pick the shard.
    (hash >> 58) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::test_support::pod;

    fn chain(seed: u64, n: usize) -> Vec<u64> {
        (0..n as u64)
            .map(|i| xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), seed))
            .collect()
    }

    #[test]
    fn depth_is_the_shared_prefix_length_per_pod() {
        let index = PrefixIndex::new(100_000);
        let pods = [pod(1, 0, 0, 0.0), pod(2, 0, 0, 0.0), pod(3, 0, 0, 0.0)];
        let a = chain(1, 200);
        index.record(&a[..150], 1);
        index.record(&a[..40], 2);
        let mut depths = [0; 3];
        index.match_depths(&a, &pods, &mut depths);
        assert_eq!(depths[0], 150);
        assert_eq!(depths[2], 0);
        // Pod 2's depth is found by the probes it answered: a lower bound, > 0.
        assert!(depths[1] > 0 && depths[1] <= 40, "{depths:?}");
        // A different prompt matches nothing.
        index.match_depths(&chain(9, 50), &pods, &mut depths);
        assert_eq!(depths, [0, 0, 0]);
    }

    #[test]
    fn pods_outside_the_candidate_set_are_ignored() {
        let index = PrefixIndex::new(10_000);
        let a = chain(3, 10);
        index.record(&a, 7);
        let pods = [pod(1, 0, 0, 0.0)];
        let mut depths = [0; 1];
        index.match_depths(&a, &pods, &mut depths);
        assert_eq!(depths, [0]);
    }

    #[test]
    fn capacity_is_bounded_and_recent_blocks_survive() {
        let index = PrefixIndex::new(SHARDS * 16);
        for seed in 0..100 {
            index.record(&chain(seed, 50), 1);
        }
        assert!(index.len() <= SHARDS * 16, "{}", index.len());
        let pods = [pod(1, 0, 0, 0.0)];
        let mut depths = [0; 1];
        let recent = chain(99, 50);
        index.match_depths(&recent[..5], &pods, &mut depths);
        assert!(depths[0] > 0);
    }

    #[test]
    fn forget_pod_removes_its_blocks() {
        let index = PrefixIndex::new(10_000);
        let a = chain(5, 20);
        index.record(&a, 1);
        index.record(&a, 2);
        index.forget_pod(1);
        let pods = [pod(1, 0, 0, 0.0), pod(2, 0, 0, 0.0)];
        let mut depths = [0; 2];
        index.match_depths(&a, &pods, &mut depths);
        assert_eq!(depths, [0, 20]);
    }
}
