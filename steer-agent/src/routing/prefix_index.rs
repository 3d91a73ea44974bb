//! Which pods recently served which prompt-prefix blocks.
//!
//! Sharded by hash so concurrent streams rarely meet on a lock, and bounded:
//! each shard forgets its least recently recorded blocks beyond capacity.
//! Lookups probe O(log n) blocks (galloping, then binary search) instead of
//! every block, relying on the chain property: a pod holding block i holds
//! the blocks before it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use super::PodView;

const SHARDS: usize = 64;
/// Pods remembered per block; more than this many replicas of one prefix is
/// already balanced enough.
const HOLDERS: usize = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Holder {
    pod: u32,
    tick: u32,
}

#[derive(Debug, Default)]
struct Shard {
    blocks: HashMap<u64, [Holder; HOLDERS]>,
    /// Insertion order for eviction; stale entries (re-recorded later) are
    /// skipped when popped.
    order: VecDeque<(u64, u32)>,
}

#[derive(Debug)]
pub struct PrefixIndex {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    tick: AtomicU32,
}

impl PrefixIndex {
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: (capacity_blocks / SHARDS).max(16),
            // Tick 0 means "empty holder slot".
            tick: AtomicU32::new(1),
        }
    }

    /// Fills `depths[i]` with the number of leading `hashes` pod `pods[i]` holds.
    pub fn match_depths(&self, hashes: &[u64], pods: &[PodView], depths: &mut [u32]) {
        depths.iter_mut().for_each(|d| *d = 0);
        if hashes.is_empty() {
            return;
        }
        let mut probe = |i: usize| -> bool {
            let holders = self.holders(hashes[i]);
            let mut any = false;
            for h in holders.iter().filter(|h| h.tick != 0) {
                if let Some(pos) = pods.iter().position(|p| p.id == h.pod) {
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
        let tick = self.tick.fetch_add(1, Ordering::Relaxed).max(1);
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
            let shard = &mut *shard;
            for &hash in blocks {
                let holders = shard.blocks.entry(hash).or_default();
                let slot = holders
                    .iter()
                    .position(|h| h.tick != 0 && h.pod == pod)
                    .or_else(|| holders.iter().position(|h| h.tick == 0))
                    .unwrap_or_else(|| {
                        let (oldest, _) = holders
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, h)| h.tick)
                            .unwrap_or((0, &holders[0]));
                        oldest
                    });
                holders[slot] = Holder { pod, tick };
                shard.order.push_back((hash, tick));
            }
            evict(shard, self.per_shard);
        }
    }

    /// Forgets a pod (it left every pool): its blocks must not attract traffic.
    pub fn forget_pod(&self, pod: u32) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.blocks.retain(|_, holders| {
                for h in holders.iter_mut().filter(|h| h.pod == pod) {
                    h.tick = 0;
                }
                holders.iter().any(|h| h.tick != 0)
            });
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().blocks.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn holders(&self, hash: u64) -> [Holder; HOLDERS] {
        self.shards[shard_of(hash)]
            .lock()
            .blocks
            .get(&hash)
            .copied()
            .unwrap_or_default()
    }
}

fn shard_of(hash: u64) -> usize {
    // The low bits pick the HashMap bucket; use high bits for the shard.
    (hash >> 58) as usize % SHARDS
}

fn evict(shard: &mut Shard, capacity: usize) {
    while shard.blocks.len() > capacity || shard.order.len() > capacity * 4 {
        let Some((hash, tick)) = shard.order.pop_front() else {
            break;
        };
        let Some(holders) = shard.blocks.get(&hash) else {
            continue;
        };
        let newest = holders.iter().map(|h| h.tick).max().unwrap_or(0);
        // Only the newest record of a block can evict it; older ones are stale.
        if newest == tick && shard.blocks.len() > capacity {
            shard.blocks.remove(&hash);
        }
    }
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
