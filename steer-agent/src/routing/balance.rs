//! Load-based and hash-based strategies. Each takes the ready pods (never
//! empty: the caller answers 503 before calling) and returns an index.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::PodView;

pub fn random(pods: &[PodView], rand: u64) -> usize {
    (rand % pods.len() as u64) as usize
}

pub fn round_robin(pods: &[PodView], tick: u64) -> usize {
    (tick % pods.len() as u64) as usize
}

/// Fewest requests in flight from this agent plus the engine's own queue;
/// among equally loaded pods the one the kernel measures closer wins.
pub fn least_request(pods: &[PodView], tie: u64) -> usize {
    min_by_key(pods, tie, |_, p| (p.load(), p.latency_us))
}

/// Lowest kernel-measured RTT. A pod not measured yet goes first (so it gets
/// measured); load breaks ties. Without the eBPF datapath every pod is
/// unmeasured and this is least-request.
pub fn least_latency(pods: &[PodView], tie: u64) -> usize {
    min_by_key(pods, tie, |_, p| (p.latency_us, p.load()))
}

/// Lowest KV-cache usage; load breaks ties so idle pods fill evenly.
pub fn least_kv_cache(pods: &[PodView], tie: u64) -> usize {
    min_by_key(pods, tie, |_, p| {
        // Quantize to 0.1% so scrape noise does not defeat the load tie-break.
        let kv = (p.kv_usage.clamp(0.0, 1.0) * 1000.0) as u64;
        (kv << 32) | u64::from(p.load())
    })
}

/// Rendezvous hashing of the session over the ready pods: a session keeps its
/// pod while that pod is ready, and only the sessions of a pod that leaves
/// move. Every agent replica computes the same answer.
pub fn session_affinity(pods: &[PodView], session_hash: u64) -> usize {
    pods.iter()
        .enumerate()
        .max_by_key(|(_, p)| {
            (
                xxh3_64_with_seed(&session_hash.to_le_bytes(), p.addr_hash),
                p.addr,
            )
        })
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Index of the minimum key; among equal minima, `tie` picks one so that
/// idle pods share traffic instead of the first one taking it all.
pub(super) fn min_by_key<K: Ord + Copy>(
    pods: &[PodView],
    tie: u64,
    key: impl Fn(usize, &PodView) -> K,
) -> usize {
    let keyed = || pods.iter().enumerate().map(|(i, p)| (i, key(i, p)));
    let Some(min) = keyed().map(|(_, k)| k).min() else {
        return 0;
    };
    let count = keyed().filter(|(_, k)| *k == min).count() as u64;
    let nth = (tie % count.max(1)) as usize;
    keyed()
        .filter(|(_, k)| *k == min)
        .nth(nth)
        .map(|(i, _)| i)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::test_support::pod;

    #[test]
    fn random_and_round_robin_cover_all_pods() {
        let pods = [pod(1, 0, 0, 0.0), pod(2, 0, 0, 0.0), pod(3, 0, 0, 0.0)];
        let rr: Vec<usize> = (0..6).map(|t| round_robin(&pods, t)).collect();
        assert_eq!(rr, [0, 1, 2, 0, 1, 2]);
        let mut seen = [false; 3];
        for r in 0..30 {
            seen[random(&pods, r * 7919)] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn least_request_counts_in_flight_and_engine_queue() {
        let pods = [pod(1, 5, 0, 0.0), pod(2, 1, 3, 0.0), pod(3, 2, 0, 0.0)];
        assert_eq!(least_request(&pods, 0), 2);
        assert_eq!(least_request(&pods, 99), 2);
    }

    #[test]
    fn ties_are_spread_by_the_tie_break() {
        let pods = [pod(1, 0, 0, 0.0), pod(2, 9, 0, 0.0), pod(3, 0, 0, 0.0)];
        assert_eq!(least_request(&pods, 0), 0);
        assert_eq!(least_request(&pods, 1), 2);
        assert_eq!(least_request(&pods, 2), 0);
    }

    #[test]
    fn least_latency_prefers_the_closest_pod_and_explores_unmeasured_ones() {
        let mut pods = [pod(1, 0, 0, 0.0), pod(2, 5, 0, 0.0), pod(3, 0, 0, 0.0)];
        pods[0].latency_us = 900;
        pods[1].latency_us = 40;
        pods[2].latency_us = 300;
        assert_eq!(least_latency(&pods, 0), 1, "closest wins despite load");
        pods[2].latency_us = 0;
        assert_eq!(least_latency(&pods, 0), 2, "unmeasured pod gets measured");
        // least-request uses latency only between equally loaded pods.
        let mut pods = [pod(1, 1, 0, 0.0), pod(2, 1, 0, 0.0), pod(3, 2, 0, 0.0)];
        pods[0].latency_us = 500;
        pods[1].latency_us = 50;
        pods[2].latency_us = 1;
        assert_eq!(least_request(&pods, 0), 1);
    }

    #[test]
    fn least_kv_cache_prefers_low_usage_then_low_load() {
        let pods = [pod(1, 0, 0, 0.9), pod(2, 4, 0, 0.2), pod(3, 1, 0, 0.2)];
        assert_eq!(least_kv_cache(&pods, 0), 2);
        let pods = [pod(1, 0, 0, 0.9), pod(2, 4, 0, 0.1)];
        assert_eq!(least_kv_cache(&pods, 0), 1);
    }

    #[test]
    fn session_affinity_sticks_and_only_moves_sessions_of_a_gone_pod() {
        let pods = [
            pod(1, 0, 0, 0.0),
            pod(2, 0, 0, 0.0),
            pod(3, 0, 0, 0.0),
            pod(4, 0, 0, 0.0),
        ];
        let mut moved = 0;
        let mut per_pod = [0; 4];
        for session in 0..400u64 {
            let first = session_affinity(&pods, session);
            // Load does not matter: the same session always lands on the same pod.
            let mut busy = pods;
            busy[first].in_flight = 100;
            assert_eq!(session_affinity(&busy, session), first);
            per_pod[first] += 1;
            // Drop pod 0: sessions elsewhere stay where they were.
            let rest = &pods[1..];
            let after = session_affinity(rest, session) + 1;
            if first != 0 {
                assert_eq!(after, first);
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, per_pod[0]);
        assert!(
            per_pod.iter().all(|&n| n > 50),
            "uneven spread: {per_pod:?}"
        );
    }
}
