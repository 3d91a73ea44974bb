//! Routing strategies: pure functions over a view of the ready pods.
//!
//! The router reads each pod's live counters once into a [`PodView`]; the
//! strategies below only look at those plain values (plus a random tie-break
//! and, for prefix-cache, the match depths from the [`PrefixIndex`]), so each
//! one is unit-testable without I/O.

mod balance;
mod prefix;
mod prefix_index;
mod prefix_table;
mod rendezvous;
mod scheduler;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

pub use balance::{
    least_kv_cache, least_latency, least_request, random, round_robin, session_affinity,
};
pub use prefix::{BlockHasher, PrefixParams, prefix_cache};
pub use prefix_index::PrefixIndex;
pub use rendezvous::prefix_rendezvous;
pub use scheduler::{Picker, Profile, ProfileError, Scorer, Signals, pick, score};

/// What a strategy sees of one ready pod at decision time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodView {
    /// Process-local id, stable while the pod stays in any pool.
    pub id: u32,
    pub addr: SocketAddr,
    /// Hash of the address text: identical on every agent replica, so
    /// hash-based choices agree across a DaemonSet.
    pub addr_hash: u64,
    /// Requests this agent has sent to the pod and not yet seen finish.
    pub in_flight: u32,
    /// Their prompt + expected completion tokens (the agent's estimate).
    pub tokens_in_flight: u64,
    /// The engine's own queue (`num_requests_waiting`), from the last scrape.
    pub waiting: u32,
    /// Requests the engine runs (`num_requests_running`), from the last scrape.
    pub running: u32,
    /// KV-cache usage 0..1 from the last scrape.
    pub kv_usage: f32,
    /// Kernel-measured smoothed RTT to the pod in µs; 0 = not measured yet.
    pub latency_us: u32,
}

impl PodView {
    pub fn load(&self) -> u32 {
        self.in_flight.saturating_add(self.waiting)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    Random,
    RoundRobin,
    LeastRequest,
    LeastKvCache,
    PrefixCache,
    SessionAffinity,
    LeastLatency,
    /// Prefix affinity every agent replica agrees on: see [`prefix_rendezvous`].
    PrefixRendezvous,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown routing strategy `{0}` (known: {known})", known = Strategy::NAMES.join(", "))]
pub struct UnknownStrategy(pub String);

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Self::Random,
        Self::RoundRobin,
        Self::LeastRequest,
        Self::LeastKvCache,
        Self::PrefixCache,
        Self::SessionAffinity,
        Self::LeastLatency,
        Self::PrefixRendezvous,
    ];
    pub const NAMES: [&'static str; 8] = [
        "random",
        "round-robin",
        "least-request",
        "least-kv-cache",
        "prefix-cache",
        "session-affinity",
        "least-latency",
        "prefix-rendezvous",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Dense index, for per-strategy counters in arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether routing reads the prompt text (else the body parse skips it).
    pub fn reads_prompt(self) -> bool {
        matches!(self, Self::PrefixCache | Self::PrefixRendezvous)
    }
}

/// What routes a model's requests by default: a strategy, or a scheduler
/// profile from the config (its index in `Settings::profiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Strategy(Strategy),
    Profile(usize),
}

impl From<Strategy> for Policy {
    fn from(s: Strategy) -> Self {
        Self::Strategy(s)
    }
}

/// A scheduler profile from the config, under its name.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedProfile {
    pub name: std::sync::Arc<str>,
    pub profile: Profile,
}

/// What made a decision: one strategy, a weighted header
/// (`routing-strategy: prefix-cache:2,least-request:1`), or a named profile
/// (its index in `Settings::profiles`, and its name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    Strategy(Strategy),
    Weighted,
    Profile(usize, std::sync::Arc<str>),
}

impl DecidedBy {
    /// The decisions counted in [`DecidedBy::slot`]s (profiles are counted
    /// per profile).
    pub const FIXED: [DecidedBy; Strategy::ALL.len() + 1] = [
        Self::Strategy(Strategy::Random),
        Self::Strategy(Strategy::RoundRobin),
        Self::Strategy(Strategy::LeastRequest),
        Self::Strategy(Strategy::LeastKvCache),
        Self::Strategy(Strategy::PrefixCache),
        Self::Strategy(Strategy::SessionAffinity),
        Self::Strategy(Strategy::LeastLatency),
        Self::Strategy(Strategy::PrefixRendezvous),
        Self::Weighted,
    ];

    /// The `strategy` label of metrics and of the `steer` metadata.
    pub fn name(&self) -> &str {
        match self {
            Self::Strategy(s) => s.name(),
            Self::Weighted => "weighted",
            Self::Profile(_, name) => name,
        }
    }

    /// Index among [`DecidedBy::FIXED`], for per-member counters in arrays.
    pub fn slot(&self) -> Option<usize> {
        match self {
            Self::Strategy(s) => Some(s.index()),
            Self::Weighted => Some(Strategy::ALL.len()),
            Self::Profile(..) => None,
        }
    }
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        // AIBrix spellings are accepted as aliases.
        let canonical = match name {
            "least-gpu-cache" => "least-kv-cache",
            "session" | "session-affinity" => "session-affinity",
            other => other,
        };
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(canonical))
            .map(|i| Self::ALL[i])
            .ok_or_else(|| UnknownStrategy(crate::excerpt::excerpt(name)))
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::PodView;

    pub fn pod(id: u32, in_flight: u32, waiting: u32, kv_usage: f32) -> PodView {
        let addr = format!("10.0.0.{id}:8000");
        PodView {
            id,
            addr: addr.parse().unwrap(),
            addr_hash: xxhash_rust::xxh3::xxh3_64(addr.as_bytes()),
            in_flight,
            tokens_in_flight: 0,
            waiting,
            running: 0,
            kv_usage,
            latency_us: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert_eq!("least-gpu-cache".parse(), Ok(Strategy::LeastKvCache));
        assert_eq!(" Prefix-Cache ".parse(), Ok(Strategy::PrefixCache));
        let err = "fastest".parse::<Strategy>().unwrap_err();
        assert!(err.to_string().contains("`fastest`"));
        assert!(err.to_string().contains("least-request"));
    }
}

#[cfg(test)]
mod decided_by_tests {
    use super::*;

    #[test]
    fn fixed_slots_follow_strategy_order() {
        for (slot, by) in DecidedBy::FIXED.iter().enumerate() {
            assert_eq!(by.slot(), Some(slot), "{by:?}");
        }
        assert_eq!(DecidedBy::Profile(0, "p".into()).slot(), None);
    }
}
