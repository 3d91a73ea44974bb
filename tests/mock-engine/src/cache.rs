//! Simulated prefix (KV block) cache: a chain of block hashes plus an O(1) LRU.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

/// Bytes per token in the mock tokenizer (a rough English average).
pub(crate) const BYTES_PER_TOKEN: usize = 4;

/// Token count of a prompt: ceil(bytes / 4), at least 1.
pub(crate) fn token_count(text: &str) -> u64 {
    (text.len().div_ceil(BYTES_PER_TOKEN).max(1)) as u64
}

/// Hashes of the prompt's full blocks. Each hash covers the previous one, so
/// it identifies the whole prefix up to and including its block (like vLLM).
pub(crate) fn block_hashes(text: &str, block_tokens: u64) -> Vec<u64> {
    let block_bytes = usize::try_from(block_tokens)
        .unwrap_or(usize::MAX)
        .saturating_mul(BYTES_PER_TOKEN)
        .max(1);
    let mut hashes = Vec::with_capacity(text.len() / block_bytes);
    let mut buf = Vec::with_capacity(8 + block_bytes);
    let mut prev = 0u64;
    for block in text.as_bytes().chunks_exact(block_bytes) {
        buf.clear();
        buf.extend_from_slice(&prev.to_le_bytes());
        buf.extend_from_slice(block);
        prev = xxh3_64(&buf);
        hashes.push(prev);
    }
    hashes
}

const NIL: usize = usize::MAX;

struct Node {
    hash: u64,
    prev: usize,
    next: usize,
}

/// LRU set of block hashes: a slab-backed doubly linked list (head = most
/// recent) indexed by a hash map, so every operation is O(1).
pub(crate) struct PrefixCache {
    capacity: usize,
    index: HashMap<u64, usize>,
    nodes: Vec<Node>,
    head: usize,
    tail: usize,
}

impl PrefixCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            index: HashMap::with_capacity(capacity.min(1 << 20)),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    /// Number of leading hashes present (a chain breaks at the first miss).
    pub(crate) fn leading_hits(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.index.contains_key(h))
            .count()
    }

    /// Inserts or touches every block. Walks the chain backwards so the first
    /// block ends up most recent: eviction then trims prefixes from the tail
    /// instead of breaking them at the root (vLLM frees blocks in that order).
    pub(crate) fn insert_all(&mut self, hashes: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        for &hash in hashes.iter().rev() {
            self.touch_or_insert(hash);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn touch_or_insert(&mut self, hash: u64) {
        if let Some(&slot) = self.index.get(&hash) {
            self.unlink(slot);
            self.push_front(slot);
            return;
        }
        let slot = if self.index.len() >= self.capacity {
            // Reuse the least recently used slot.
            let slot = self.tail;
            self.unlink(slot);
            self.index.remove(&self.nodes[slot].hash);
            self.nodes[slot].hash = hash;
            slot
        } else {
            self.nodes.push(Node {
                hash,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        };
        self.index.insert(hash, slot);
        self.push_front(slot);
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = NIL;
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].next = self.head;
        self.nodes[slot].prev = NIL;
        if self.head != NIL {
            self.nodes[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(blocks: &[char], block_tokens: usize) -> String {
        blocks
            .iter()
            .map(|c| c.to_string().repeat(block_tokens * BYTES_PER_TOKEN))
            .collect()
    }

    #[test]
    fn token_count_rounds_up_with_min_one() {
        assert_eq!(token_count(""), 1);
        assert_eq!(token_count("abc"), 1);
        assert_eq!(token_count("abcd"), 1);
        assert_eq!(token_count("abcde"), 2);
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        assert_eq!(block_hashes(&"x".repeat(63), 16).len(), 0);
        assert_eq!(block_hashes(&"x".repeat(64), 16).len(), 1);
        assert_eq!(block_hashes(&"x".repeat(200), 16).len(), 3);
    }

    #[test]
    fn chain_identifies_the_whole_prefix() {
        // Same block content at position 1 after different roots hashes differently.
        let a = block_hashes(&text(&['a', 'c'], 4), 4);
        let b = block_hashes(&text(&['b', 'c'], 4), 4);
        assert_ne!(a[1], b[1]);
        let mut cache = PrefixCache::new(100);
        cache.insert_all(&a);
        assert_eq!(cache.leading_hits(&b), 0);
    }

    #[test]
    fn shared_prefix_different_tail_hits_shared_blocks() {
        let mut cache = PrefixCache::new(100);
        let first = block_hashes(&text(&['s', 's', 'x', 'y'], 4), 4);
        assert_eq!(cache.leading_hits(&first), 0);
        cache.insert_all(&first);
        assert_eq!(cache.leading_hits(&first), 4);
        let second = block_hashes(&text(&['s', 's', 'z', 'y'], 4), 4);
        assert_eq!(cache.leading_hits(&second), 2);
    }

    #[test]
    fn lru_evicts_least_recent_and_keeps_capacity() {
        let mut cache = PrefixCache::new(4);
        let a = block_hashes(&text(&['a', 'a'], 4), 4);
        let b = block_hashes(&text(&['b', 'b'], 4), 4);
        let c = block_hashes(&text(&['c', 'c'], 4), 4);
        cache.insert_all(&a);
        cache.insert_all(&b);
        cache.insert_all(&a); // touch a: b is now least recent
        cache.insert_all(&c);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.leading_hits(&a), 2);
        assert_eq!(cache.leading_hits(&b), 0);
        assert_eq!(cache.leading_hits(&c), 2);
    }

    #[test]
    fn eviction_trims_chain_tails_first() {
        let mut cache = PrefixCache::new(3);
        let long = block_hashes(&text(&['a', 'b', 'c'], 4), 4);
        cache.insert_all(&long);
        let other = block_hashes(&text(&['z'], 4), 4);
        cache.insert_all(&other);
        // The last block of the chain went first; the prefix still hits.
        assert_eq!(cache.leading_hits(&long), 2);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = PrefixCache::new(0);
        let h = block_hashes(&text(&['a'], 4), 4);
        cache.insert_all(&h);
        assert_eq!(cache.leading_hits(&h), 0);
    }
}
