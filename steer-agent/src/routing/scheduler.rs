//! Weighted scoring, AIBrix's `routing-strategy: prefix-cache:2,least-request:1`:
//! each scorer rates every ready pod in [0, 1], the weighted mean ranks them
//! and a picker chooses. Pure functions over [`PodView`]s.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{PodView, session_affinity};

/// What a scorer rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scorer {
    /// Fewest requests in flight plus queued in the engine.
    Queue,
    /// Fewest prompt + expected completion tokens in flight from this agent
    /// (AIBrix's throughput router).
    TokenLoad,
    /// Lowest KV-cache usage.
    KvCache,
    /// The largest share of the prompt's blocks the pod is believed to hold.
    Prefix,
    /// Lowest kernel-measured RTT.
    Latency,
    /// The session's rendezvous pod.
    Session,
    /// The pod already running the request's LoRA adapter (then one
    /// queueing it, then one with a free adapter slot).
    Lora,
}

impl Scorer {
    /// The names a weighted header may use: the strategy each scorer
    /// generalises, and its short name.
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "least-request" | "queue" => Self::Queue,
            "token-load" | "throughput" => Self::TokenLoad,
            "least-kv-cache" | "least-gpu-cache" | "kv-cache" => Self::KvCache,
            "prefix-cache" | "prefix" => Self::Prefix,
            "least-latency" | "latency" => Self::Latency,
            "session-affinity" | "session" => Self::Session,
            "lora-affinity" | "lora" => Self::Lora,
            _ => return None,
        })
    }
}

/// How the ranked pods become one choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picker {
    /// The best score; equal scores are broken by a hash of the request's
    /// key with each pod's address, so the same request picks the same pod.
    MaxScore,
    /// A pod with probability proportional to its score (uniform when all
    /// score 0).
    WeightedRandom,
    /// The better of two pods drawn at random.
    PowerOfTwo,
}

impl Picker {
    pub const NAMES: [&'static str; 3] = ["max-score", "weighted-random", "power-of-two"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "max-score" => Self::MaxScore,
            "weighted-random" => Self::WeightedRandom,
            "power-of-two" => Self::PowerOfTwo,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub scorers: Vec<(Scorer, u32)>,
    pub picker: Picker,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("a profile needs at least one scorer")]
    NoScorer,
    #[error(
        "`{0}` is not a scorer (known: least-request, token-load, least-kv-cache, prefix-cache, least-latency, session-affinity, lora-affinity)"
    )]
    UnknownScorer(String),
    #[error("weight `{0}` must be a whole number from 1 to 1000")]
    BadWeight(String),
    #[error("`{0}` is weighted twice")]
    Duplicate(String),
}

/// Largest weight: keeps sums exact in f64 and typos visible.
const MAX_WEIGHT: u32 = 1000;

impl Profile {
    /// `name:weight` pairs separated by commas; a name without `:weight`
    /// weighs 1. Picker: max-score.
    pub fn parse_weighted(text: &str) -> Result<Self, ProfileError> {
        let items = text.split(',').map(|item| match item.split_once(':') {
            Some((name, weight)) => (name, Some(weight)),
            None => (item, None),
        });
        Self::from_items(items, Picker::MaxScore)
    }

    /// `(scorer name, weight text)` pairs; a missing weight is 1.
    pub fn from_items<'s>(
        items: impl IntoIterator<Item = (&'s str, Option<&'s str>)>,
        picker: Picker,
    ) -> Result<Self, ProfileError> {
        let mut scorers: Vec<(Scorer, u32)> = Vec::new();
        for (name, weight) in items {
            let name = name.trim().to_ascii_lowercase();
            let excerpt = || crate::excerpt::excerpt(&name);
            let scorer =
                Scorer::parse(&name).ok_or_else(|| ProfileError::UnknownScorer(excerpt()))?;
            let weight = match weight.map(str::trim) {
                None => 1,
                Some(w) => w
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| ProfileError::BadWeight(crate::excerpt::excerpt(w)))?,
            };
            if scorers.iter().any(|(s, _)| *s == scorer) {
                return Err(ProfileError::Duplicate(excerpt()));
            }
            scorers.push((scorer, weight));
        }
        if scorers.is_empty() {
            return Err(ProfileError::NoScorer);
        }
        Ok(Self { scorers, picker })
    }

    pub fn reads_prompt(&self) -> bool {
        self.uses(Scorer::Prefix)
    }

    pub fn uses(&self, scorer: Scorer) -> bool {
        self.scorers.iter().any(|(s, _)| *s == scorer)
    }
}

/// What the scorers read besides the pods.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals<'a> {
    /// Leading prompt blocks each pod is believed to hold (prefix scorer).
    pub depths: &'a [u32],
    /// Blocks the prompt has.
    pub prompt_blocks: usize,
    pub session: Option<u64>,
    /// Each pod's LoRA affinity for the requested model, in [0, 1].
    pub lora: &'a [f64],
}

/// The weighted mean of every scorer's [0, 1] rating, per pod.
pub fn score(profile: &Profile, pods: &[PodView], signals: &Signals<'_>, out: &mut Vec<f64>) {
    out.clear();
    out.resize(pods.len(), 0.0);
    let total: u32 = profile.scorers.iter().map(|(_, w)| w).sum();
    let session_pod = signals.session.map(|h| session_affinity(pods, h));
    for &(scorer, weight) in &profile.scorers {
        let w = f64::from(weight) / f64::from(total.max(1));
        // Each scorer's range over the pods, once (not once per pod).
        let value = |p: &PodView| match scorer {
            Scorer::Queue => Some(f64::from(p.load())),
            Scorer::TokenLoad => Some(p.tokens_in_flight as f64),
            // A pod not measured yet (0) rates 1, so it gets traffic and a
            // measurement.
            Scorer::Latency => (p.latency_us > 0).then_some(f64::from(p.latency_us)),
            _ => None,
        };
        let range = span(pods.iter().filter_map(value));
        for (i, pod) in pods.iter().enumerate() {
            let rating = match scorer {
                Scorer::Queue | Scorer::TokenLoad | Scorer::Latency => {
                    value(pod).map_or(1.0, |v| lower_is_better(v, range))
                }
                Scorer::KvCache => 1.0 - f64::from(pod.kv_usage.clamp(0.0, 1.0)),
                Scorer::Prefix => {
                    let depth = signals.depths.get(i).copied().unwrap_or(0) as f64;
                    (depth / signals.prompt_blocks.max(1) as f64).min(1.0)
                }
                Scorer::Session => f64::from(u8::from(session_pod == Some(i))),
                Scorer::Lora => signals.lora.get(i).copied().unwrap_or(0.0),
            };
            out[i] += w * rating;
        }
    }
}

/// (min, max) of `values`.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// (max − v) / (max − min); 1 when all are equal.
fn lower_is_better(v: f64, (min, max): (f64, f64)) -> f64 {
    if max <= min {
        return 1.0;
    }
    (max - v) / (max - min)
}

/// The pod `picker` chooses from `scores`; `key` identifies the request
/// (prompt, session or a random number) for tie-breaks, `rand` is random.
pub fn pick(picker: Picker, pods: &[PodView], scores: &[f64], key: u64, rand: u64) -> usize {
    let better = |a: usize, b: usize| {
        scores[a]
            .total_cmp(&scores[b])
            .then_with(|| tie(key, &pods[a]).cmp(&tie(key, &pods[b])))
    };
    let n = pods.len();
    match picker {
        Picker::MaxScore => (0..n).max_by(|&a, &b| better(a, b)).unwrap_or(0),
        Picker::WeightedRandom => {
            let total: f64 = scores.iter().map(|s| s.max(0.0)).sum();
            if total <= 0.0 {
                return (rand % n as u64) as usize;
            }
            // 53 random bits: a point in [0, total).
            let mut at = (rand >> 11) as f64 / (1u64 << 53) as f64 * total;
            for (i, s) in scores.iter().enumerate() {
                at -= s.max(0.0);
                if at < 0.0 && *s > 0.0 {
                    return i;
                }
            }
            scores.iter().rposition(|s| *s > 0.0).unwrap_or(n - 1)
        }
        Picker::PowerOfTwo => {
            if n < 2 {
                return 0;
            }
            let a = (rand % n as u64) as usize;
            // A second, distinct pod from the high bits.
            let b = (a + 1 + ((rand >> 32) % (n as u64 - 1)) as usize) % n;
            if better(a, b).is_ge() { a } else { b }
        }
    }
}

fn tie(key: u64, pod: &PodView) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), pod.addr_hash)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
