//! One shard of the prefix index: a fixed-size table of 16-byte slots.
//!
//! A block may sit in one of two buckets of [`WAYS`] slots (bucketized cuckoo
//! hashing): the first from the hash's low bits, the other derived from the
//! block's 32-bit tag, so a resident block's other bucket is known without its
//! full hash. A new block takes a free slot in the emptier bucket, else moves
//! one resident to its other bucket (only while the table is not nearly full),
//! else replaces the least recently recorded of the candidate slots. The table
//! never grows or rehashes, and it is allocated zeroed, so the kernel maps its
//! pages only as blocks arrive.

pub const WAYS: usize = 8;
/// Fields of a slot. A slot is empty when `POD_A` is 0 (pod ids start at 1).
const TAG: usize = 0;
const TICK: usize = 1;
/// The pod that recorded the block most recently, then the one before it.
const POD_A: usize = 2;
const POD_B: usize = 3;

type Slot = [u32; 4];

#[derive(Debug)]
pub struct Table {
    /// `[u32; 4]` so `vec!` allocates it zeroed.
    slots: Vec<Slot>,
    buckets: usize,
    len: usize,
}

/// Where a block hash may live.
#[derive(Clone, Copy)]
struct Place {
    tag: u32,
    first: usize,
    second: usize,
}

impl Table {
    /// A table of at least `capacity` slots, rounded up to whole buckets
    /// (at least two, so every block has a second bucket).
    pub fn new(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).max(2);
        Self {
            slots: vec![[0; 4]; buckets * WAYS],
            buckets,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The pods holding `hash`, most recent first; 0 is "nobody".
    pub fn holders(&self, hash: u64) -> [u32; 2] {
        match self.find(self.place(hash)) {
            Some(i) => [self.slots[i][POD_A], self.slots[i][POD_B]],
            None => [0, 0],
        }
    }

    /// Records that `pod` holds `hash` as of `tick`.
    pub fn record(&mut self, hash: u64, pod: u32, tick: u32) {
        let place = self.place(hash);
        let i = match self.find(place) {
            Some(i) => i,
            None => {
                let i = self
                    .free_slot(place)
                    .or_else(|| self.make_room(place))
                    .unwrap_or_else(|| self.least_recent(place, tick));
                if self.slots[i][POD_A] == 0 {
                    self.len += 1;
                }
                self.slots[i] = [place.tag, tick, 0, 0];
                i
            }
        };
        let slot = &mut self.slots[i];
        // Pod already second: the two swap. Pod absent: the older one drops.
        if slot[POD_A] != pod {
            slot[POD_B] = slot[POD_A];
            slot[POD_A] = pod;
        }
        slot[TICK] = tick;
    }

    /// Removes `pod` from every block; blocks nobody else holds are freed.
    pub fn forget_pod(&mut self, pod: u32) {
        for slot in self.slots.iter_mut().filter(|s| s[POD_A] != 0) {
            if slot[POD_B] == pod {
                slot[POD_B] = 0;
            }
            if slot[POD_A] == pod {
                slot[POD_A] = slot[POD_B];
                slot[POD_B] = 0;
            }
            if slot[POD_A] == 0 {
                *slot = [0; 4];
                self.len -= 1;
            }
        }
    }

    fn place(&self, hash: u64) -> Place {
        // Bits 0..26 pick the first bucket, 26..58 are the tag; the shard
        // index takes the top 6.
        let tag = (hash >> 26) as u32;
        let first = (hash & ((1 << 26) - 1)) as usize % self.buckets;
        Place {
            tag,
            first,
            second: self.other_bucket(first, tag),
        }
    }

    /// The two buckets of a tag sum to `tag mod buckets`, so either gives the other.
    fn other_bucket(&self, bucket: usize, tag: u32) -> usize {
        (tag as usize % self.buckets + self.buckets - bucket) % self.buckets
    }

    fn bucket(&self, b: usize) -> std::ops::Range<usize> {
        b * WAYS..(b + 1) * WAYS
    }

    fn find(&self, place: Place) -> Option<usize> {
        [place.first, place.second]
            .into_iter()
            .flat_map(|b| self.bucket(b))
            .find(|&i| self.slots[i][POD_A] != 0 && self.slots[i][TAG] == place.tag)
    }

    fn free_in(&self, b: usize) -> (usize, Option<usize>) {
        let mut free = self.bucket(b).filter(|&i| self.slots[i][POD_A] == 0);
        let first = free.next();
        (first.map_or(0, |_| 1 + free.count()), first)
    }

    /// A free slot in the emptier of the two buckets.
    fn free_slot(&self, place: Place) -> Option<usize> {
        let (n1, s1) = self.free_in(place.first);
        let (n2, s2) = self.free_in(place.second);
        if n2 > n1 { s2 } else { s1 }
    }

    /// Moves one resident of the two (full) buckets to its other bucket and
    /// returns the slot it left. Skipped when the table is nearly full: the
    /// search would almost always fail and costs 16 bucket scans.
    fn make_room(&mut self, place: Place) -> Option<usize> {
        if self.len >= self.capacity() - self.capacity() / 32 {
            return None;
        }
        for b in [place.first, place.second] {
            for i in self.bucket(b) {
                let other = self.other_bucket(b, self.slots[i][TAG]);
                if other == b {
                    continue;
                }
                if let (_, Some(free)) = self.free_in(other) {
                    self.slots[free] = self.slots[i];
                    self.slots[i] = [0; 4];
                    return Some(i);
                }
            }
        }
        None
    }

    /// The candidate slot recorded longest ago (ticks wrap; compared by age).
    fn least_recent(&self, place: Place, now: u32) -> usize {
        [place.first, place.second]
            .into_iter()
            .flat_map(|b| self.bucket(b))
            .max_by_key(|&i| now.wrapping_sub(self.slots[i][TICK]))
            .unwrap_or(place.first * WAYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(seed: u64, n: usize) -> Vec<u64> {
        (0..n as u64)
            .map(|i| xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), seed))
            .collect()
    }

    #[test]
    fn a_slot_is_sixteen_bytes_and_capacity_rounds_up_to_buckets() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(Table::new(16_384).capacity(), 16_384);
        assert_eq!(Table::new(16_385).capacity(), 16_384 + WAYS);
        assert_eq!(Table::new(1).capacity(), 2 * WAYS);
    }

    #[test]
    fn the_two_most_recent_pods_are_kept_newest_first() {
        let mut t = Table::new(64);
        let h = hashes(1, 1)[0];
        t.record(h, 1, 1);
        t.record(h, 2, 2);
        assert_eq!(t.holders(h), [2, 1]);
        t.record(h, 1, 3);
        assert_eq!(t.holders(h), [1, 2]);
        t.record(h, 3, 4);
        assert_eq!(t.holders(h), [3, 1]);
        t.record(h, 3, 5);
        assert_eq!(t.holders(h), [3, 1]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn filling_to_95_percent_loses_almost_nothing() {
        let mut t = Table::new(16_384);
        let all = hashes(2, 15_565);
        for (n, &h) in all.iter().enumerate() {
            t.record(h, 1 + (n % 7) as u32, 1 + n as u32);
        }
        let kept = all.iter().filter(|&&h| t.holders(h)[0] != 0).count();
        assert_eq!(kept, t.len());
        // One bucket alone would drop ~12% here, two without moves ~2%.
        assert!(
            all.len() - kept <= 16,
            "lost {} of {}",
            all.len() - kept,
            all.len()
        );
    }

    #[test]
    fn a_full_table_keeps_its_size_and_replaces_the_least_recent() {
        let mut t = Table::new(1024);
        for round in 0..10u32 {
            for &h in &hashes(u64::from(round), 1024) {
                t.record(h, 1, round + 1);
            }
        }
        assert!(t.len() <= t.capacity(), "{}", t.len());
        assert!(t.len() > t.capacity() * 9 / 10, "{}", t.len());
        let newest = hashes(9, 1024);
        let kept = newest.iter().filter(|&&h| t.holders(h)[0] == 1).count();
        let oldest = hashes(0, 1024);
        let stale = oldest.iter().filter(|&&h| t.holders(h)[0] != 0).count();
        assert!(kept > 900, "kept {kept} of the newest 1024");
        assert_eq!(
            stale, 0,
            "blocks of the first round survived nine newer rounds"
        );
    }

    #[test]
    fn forgetting_a_pod_frees_blocks_only_it_held() {
        let mut t = Table::new(64);
        let [a, b] = [hashes(3, 2)[0], hashes(3, 2)[1]];
        t.record(a, 1, 1);
        t.record(b, 1, 1);
        t.record(b, 2, 2);
        t.forget_pod(1);
        assert_eq!(t.holders(a), [0, 0]);
        assert_eq!(t.holders(b), [2, 0]);
        assert_eq!(t.len(), 1);
        t.forget_pod(2);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn ticks_that_wrapped_still_order_by_age() {
        // Two buckets of 8. Odd tags give every block both buckets, and the
        // first bucket alternates, so sixteen blocks fill the table.
        let mut t = Table::new(16);
        let all: Vec<u64> = (0..17u64).map(|i| ((2 * i + 1) << 26) | (i % 2)).collect();
        for (n, &h) in all[..16].iter().enumerate() {
            // Block 0 is the oldest, recorded 21 ticks before the wrap.
            t.record(h, 1, u32::MAX - 20 + n as u32);
        }
        assert_eq!(t.len(), 16);
        t.record(all[16], 2, 5);
        assert_eq!(t.holders(all[0]), [0, 0], "the oldest block is replaced");
        assert_eq!(t.holders(all[16]), [2, 0]);
        assert!(all[1..16].iter().all(|&h| t.holders(h) == [1, 0]));
    }
}
