//! Prefix affinity that every agent replica computes alike, without talking
//! to the others: the prompt's leading blocks are hashed with each ready
//! pod's address (rendezvous hashing) and the pods are tried in that order;
//! the first one whose *scraped* load (the engine's own queue and running
//! requests, which every replica reads the same way) is not out of bounds
//! wins. A replica's private in-flight count never enters the choice, so
//! replicas that scraped the same numbers pick the same pod, and a pod that
//! leaves moves only its own prefixes.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{PodView, PrefixParams, least_request};

/// Leading blocks that name a prefix: prompts that share this much share a
/// pod (a deeper key would split a shared system prompt across pods).
pub const KEY_BLOCKS: usize = 4;

/// `blocks` are the prompt's chained block hashes; without any (a prompt
/// shorter than one block) this is least-request.
pub fn prefix_rendezvous(
    pods: &[PodView],
    blocks: &[u64],
    tie: u64,
    params: &PrefixParams,
) -> usize {
    let Some(&key) = blocks.get(blocks.len().min(KEY_BLOCKS).wrapping_sub(1)) else {
        return least_request(pods, tie);
    };
    let scraped = |p: &PodView| p.waiting.saturating_add(p.running);
    let min = pods.iter().map(scraped).min().unwrap_or(0);
    let overloaded = |p: &PodView| {
        let load = scraped(p);
        load > min.saturating_add(params.imbalance_abs)
            && load as f32 > min as f32 * params.imbalance_rel
    };
    let mut order: Vec<(u64, usize)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (xxh3_64_with_seed(&key.to_le_bytes(), p.addr_hash), i))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order
        .iter()
        .map(|&(_, i)| i)
        .find(|&i| !overloaded(&pods[i]))
        // Some pod always has the minimum load, so this is unreachable.
        .unwrap_or(order[0].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::test_support::pod;

    fn params() -> PrefixParams {
        PrefixParams {
            imbalance_abs: 4,
            imbalance_rel: 1.5,
        }
    }

    #[test]
    fn replicas_with_different_private_load_agree() {
        let a = [pod(1, 0, 0, 0.0), pod(2, 0, 0, 0.0), pod(3, 0, 0, 0.0)];
        // Another replica: the same scraped numbers, its own in-flight counts.
        let mut b = a;
        b[0].in_flight = 30;
        b[2].in_flight = 7;
        for prompt in 0..200u64 {
            let blocks = [prompt, prompt ^ 1, prompt ^ 2, prompt ^ 3, prompt ^ 4];
            let (x, y) = (
                prefix_rendezvous(&a, &blocks, 1, &params()),
                prefix_rendezvous(&b, &blocks, 2, &params()),
            );
            assert_eq!(x, y, "prompt {prompt}");
        }
    }

    #[test]
    fn prefixes_spread_and_share_their_leading_blocks() {
        let pods = [
            pod(1, 0, 0, 0.0),
            pod(2, 0, 0, 0.0),
            pod(3, 0, 0, 0.0),
            pod(4, 0, 0, 0.0),
        ];
        let mut per_pod = [0; 4];
        for prompt in 0..400u64 {
            // Chained hashes: each block's covers the prefix up to it.
            let blocks = [prompt, prompt + 1000, prompt + 2000, prompt + 3000];
            per_pod[prefix_rendezvous(&pods, &blocks, 0, &params())] += 1;
        }
        assert!(per_pod.iter().all(|&n| n > 60), "{per_pod:?}");
        // Only the first KEY_BLOCKS blocks name the prefix.
        let x = prefix_rendezvous(&pods, &[1, 2, 3, 4, 5], 0, &params());
        let y = prefix_rendezvous(&pods, &[1, 2, 3, 4, 99], 0, &params());
        assert_eq!(x, y);
    }

    #[test]
    fn an_overloaded_pod_yields_to_the_next_in_order_and_a_leaving_pod_moves_only_its_own() {
        let pods = [pod(1, 0, 0, 0.0), pod(2, 0, 0, 0.0), pod(3, 0, 0, 0.0)];
        let blocks = [42, 43, 44, 45];
        let home = prefix_rendezvous(&pods, &blocks, 0, &params());
        let mut busy = pods;
        busy[home].waiting = 20;
        let next = prefix_rendezvous(&busy, &blocks, 0, &params());
        assert_ne!(next, home);
        // The same next pod on every replica, and again when the load drops.
        assert_eq!(prefix_rendezvous(&busy, &blocks, 9, &params()), next);
        assert_eq!(prefix_rendezvous(&pods, &blocks, 0, &params()), home);
        // Removing a pod that is not the home keeps the prefix where it is.
        let other = (0..3).find(|&i| i != home).unwrap();
        let rest: Vec<PodView> = (0..3).filter(|&i| i != other).map(|i| pods[i]).collect();
        let moved = prefix_rendezvous(&rest, &blocks, 0, &params());
        assert_eq!(rest[moved].addr, pods[home].addr);
        // Without a full block: least-request.
        let mut loads = pods;
        loads[0].in_flight = 3;
        loads[1].in_flight = 1;
        loads[2].in_flight = 2;
        assert_eq!(prefix_rendezvous(&loads, &[], 0, &params()), 1);
    }
}
