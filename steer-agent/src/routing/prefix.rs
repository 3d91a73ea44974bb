//! Approximate prefix-cache routing: the prompt is cut into fixed-size blocks
//! whose hashes chain (each block's hash covers the whole prefix up to it),
//! and the pod that most recently served the longest matching chain wins,
//! unless that would overload it.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::PodView;
use super::balance::{least_request, min_by_key};

/// Load-imbalance bound: prefix affinity yields to the least-loaded pod when
/// the warm pod's load exceeds the minimum by more than `abs` requests AND by
/// more than the factor `rel`. This keeps cache-aware routing from collapsing
/// onto one pod (sglang #32983, vllm-project/router #179).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixParams {
    pub imbalance_abs: u32,
    pub imbalance_rel: f32,
}

impl Default for PrefixParams {
    fn default() -> Self {
        Self {
            imbalance_abs: 8,
            imbalance_rel: 1.5,
        }
    }
}

/// `depths[i]` is how many leading blocks of the prompt pod `pods[i]` is
/// believed to hold.
pub fn prefix_cache(pods: &[PodView], depths: &[u32], tie: u64, params: &PrefixParams) -> usize {
    let best = min_by_key(pods, tie, |i, p| {
        (u32::MAX - depths.get(i).copied().unwrap_or(0), p.load())
    });
    if depths.get(best).copied().unwrap_or(0) == 0 {
        return least_request(pods, tie);
    }
    let min_load = pods.iter().map(PodView::load).min().unwrap_or(0);
    let load = pods[best].load();
    let overloaded = load > min_load.saturating_add(params.imbalance_abs)
        && load as f32 > min_load as f32 * params.imbalance_rel;
    if overloaded {
        least_request(pods, tie)
    } else {
        best
    }
}

// === impl BlockHasher ===

/// Cuts prompt text into `block_bytes` blocks and chains their hashes.
/// Reused across pieces so a block may span several message parts.
#[derive(Debug)]
pub struct BlockHasher {
    block_bytes: usize,
    max_blocks: usize,
    partial: Vec<u8>,
    prev: u64,
    hashes: Vec<u64>,
}

impl BlockHasher {
    /// `seed` separates models: the same text sent to two models never matches.
    pub fn new(seed: u64, block_bytes: usize, max_blocks: usize) -> Self {
        Self {
            block_bytes: block_bytes.max(1),
            max_blocks,
            partial: Vec::new(),
            prev: seed,
            hashes: Vec::new(),
        }
    }

    pub fn push(&mut self, mut text: &[u8]) {
        while !text.is_empty() && self.hashes.len() < self.max_blocks {
            if self.partial.is_empty() && text.len() >= self.block_bytes {
                let (block, rest) = text.split_at(self.block_bytes);
                self.emit(block);
                text = rest;
                continue;
            }
            let take = (self.block_bytes - self.partial.len()).min(text.len());
            self.partial.extend_from_slice(&text[..take]);
            text = &text[take..];
            if self.partial.len() == self.block_bytes {
                let block = std::mem::take(&mut self.partial);
                self.emit(&block);
                self.partial = block;
                self.partial.clear();
            }
        }
    }

    /// Hashes of the full blocks; a trailing partial block is not cacheable.
    pub fn finish(self) -> Vec<u64> {
        self.hashes
    }

    fn emit(&mut self, block: &[u8]) {
        self.prev = xxh3_64_with_seed(block, self.prev);
        self.hashes.push(self.prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::test_support::pod;

    fn hashes(pieces: &[&str], block: usize) -> Vec<u64> {
        let mut h = BlockHasher::new(7, block, 1000);
        for p in pieces {
            h.push(p.as_bytes());
        }
        h.finish()
    }

    #[test]
    fn chain_is_independent_of_piece_boundaries() {
        let whole = hashes(&["abcdefghijklmnop"], 4);
        assert_eq!(whole.len(), 4);
        assert_eq!(hashes(&["ab", "cdefg", "hijklmnop", "xy"], 4), whole);
        assert_eq!(hashes(&["abcdefghijklmn"], 4), whole[..3]);
    }

    #[test]
    fn chain_hash_covers_the_whole_prefix() {
        let a = hashes(&["XXXXbbbb"], 4);
        let b = hashes(&["YYYYbbbb"], 4);
        assert_ne!(
            a[1], b[1],
            "same block after different prefixes must differ"
        );
        let other_model = BlockHasher::new(8, 4, 10);
        let mut other_model = other_model;
        other_model.push(b"XXXXbbbb");
        assert_ne!(other_model.finish(), a);
    }

    #[test]
    fn max_blocks_bounds_work() {
        assert_eq!(hashes(&[&"z".repeat(10_000)], 4).len(), 1000);
    }

    #[test]
    fn prefers_longest_match_then_least_load() {
        let params = PrefixParams::default();
        let pods = [pod(1, 0, 0, 0.0), pod(2, 2, 0, 0.0), pod(3, 0, 0, 0.0)];
        assert_eq!(prefix_cache(&pods, &[1, 5, 0], 0, &params), 1);
        assert_eq!(prefix_cache(&pods, &[5, 5, 0], 0, &params), 0);
        // No match anywhere: least loaded, ties spread.
        assert_eq!(prefix_cache(&pods, &[0, 0, 0], 0, &params), 0);
        assert_eq!(prefix_cache(&pods, &[0, 0, 0], 1, &params), 2);
    }

    #[test]
    fn imbalance_bound_overrides_affinity() {
        let params = PrefixParams {
            imbalance_abs: 4,
            imbalance_rel: 1.5,
        };
        // Warm pod at load 4 vs min 0: within abs bound, stays.
        let pods = [pod(1, 4, 0, 0.0), pod(2, 0, 0, 0.0)];
        assert_eq!(prefix_cache(&pods, &[9, 0], 0, &params), 0);
        // Warm pod at load 5 (engine queue counts too): overloaded, moves.
        let pods = [pod(1, 3, 2, 0.0), pod(2, 0, 0, 0.0)];
        assert_eq!(prefix_cache(&pods, &[9, 0], 0, &params), 1);
        // Both busy: 12 vs 10 is within the relative factor, stays warm.
        let pods = [pod(1, 15, 0, 0.0), pod(2, 10, 0, 0.0)];
        assert_eq!(prefix_cache(&pods, &[9, 0], 0, &params), 0);
    }
}
