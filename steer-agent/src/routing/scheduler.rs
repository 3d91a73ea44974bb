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
        for (i, pod) in pods.iter().enumerate() {
            let rating = match scorer {
                Scorer::Queue => lower_is_better(pods, i, |p| f64::from(p.load())),
                Scorer::TokenLoad => lower_is_better(pods, i, |p| p.tokens_in_flight as f64),
                Scorer::KvCache => 1.0 - f64::from(pod.kv_usage.clamp(0.0, 1.0)),
                Scorer::Prefix => {
                    let depth = signals.depths.get(i).copied().unwrap_or(0) as f64;
                    (depth / signals.prompt_blocks.max(1) as f64).min(1.0)
                }
                Scorer::Latency => latency(pods, i),
                Scorer::Session => f64::from(u8::from(session_pod == Some(i))),
                Scorer::Lora => signals.lora.get(i).copied().unwrap_or(0.0),
            };
            out[i] += w * rating;
        }
    }
}

/// (max − v) / (max − min) of `value` over the pods; 1 when all are equal.
fn lower_is_better(pods: &[PodView], i: usize, value: impl Fn(&PodView) -> f64) -> f64 {
    let (min, max) = pods
        .iter()
        .map(&value)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= min {
        return 1.0;
    }
    (max - value(&pods[i])) / (max - min)
}

/// Like [`lower_is_better`] over the measured pods; a pod not measured yet
/// (0) rates 1, so it gets traffic and a measurement.
fn latency(pods: &[PodView], i: usize) -> f64 {
    if pods[i].latency_us == 0 {
        return 1.0;
    }
    let measured = pods
        .iter()
        .filter(|p| p.latency_us > 0)
        .map(|p| f64::from(p.latency_us));
    let (min, max) = measured.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= min {
        return 1.0;
    }
    (max - f64::from(pods[i].latency_us)) / (max - min)
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
mod tests {
    use super::*;

    fn pod(n: u8, in_flight: u32, kv: f32, latency_us: u32) -> PodView {
        let addr = std::net::SocketAddr::from(([10, 0, 0, n], 8000));
        PodView {
            id: u32::from(n),
            addr,
            addr_hash: xxhash_rust::xxh3::xxh3_64(addr.to_string().as_bytes()),
            in_flight,
            tokens_in_flight: u64::from(in_flight) * 100,
            waiting: 0,
            kv_usage: kv,
            latency_us,
        }
    }

    fn scores(profile: &str, pods: &[PodView], signals: Signals<'_>) -> Vec<f64> {
        let mut out = Vec::new();
        score(
            &Profile::parse_weighted(profile).unwrap(),
            pods,
            &signals,
            &mut out,
        );
        out
    }

    #[test]
    fn weighted_form_parses_and_rejects_with_the_culprit_named() {
        let p = Profile::parse_weighted("prefix-cache:2, least-request:1,least-kv-cache").unwrap();
        assert_eq!(
            p.scorers,
            [
                (Scorer::Prefix, 2),
                (Scorer::Queue, 1),
                (Scorer::KvCache, 1)
            ]
        );
        assert!(p.reads_prompt());
        assert!(!Profile::parse_weighted("queue:1").unwrap().reads_prompt());
        let err = |s| Profile::parse_weighted(s).unwrap_err().to_string();
        assert!(err("prefix-cache:2,random:1").contains("`random`"));
        assert!(err("prefix-cache:x").contains("`x`"));
        assert!(err("prefix-cache:0").contains("`0`"));
        assert!(err("prefix-cache:1001").contains("1000"));
        assert!(err("queue:1,least-request:2").contains("twice"));
        assert!(err("queue:1,").contains("``"));
    }

    #[test]
    fn each_scorer_rates_in_zero_to_one_and_weights_mix_them() {
        let pods = [pod(1, 0, 0.9, 0), pod(2, 4, 0.1, 0), pod(3, 8, 0.5, 0)];
        let queue = scores("queue", &pods, Signals::default());
        assert_eq!(queue, [1.0, 0.5, 0.0]);
        let kv = scores("kv-cache", &pods, Signals::default());
        assert!((kv[0] - 0.1).abs() < 1e-6 && (kv[1] - 0.9).abs() < 1e-6);
        let depths = [0, 3, 6];
        let signals = Signals {
            depths: &depths,
            prompt_blocks: 6,
            ..Default::default()
        };
        assert_eq!(scores("prefix-cache", &pods, signals), [0.0, 0.5, 1.0]);
        // 2 × prefix + 1 × queue, divided by 3.
        let mixed = scores("prefix-cache:2,least-request:1", &pods, signals);
        assert_eq!(mixed, [1.0 / 3.0, 1.5 / 3.0, 2.0 / 3.0]);
        let all_equal = [pod(1, 2, 0.0, 0), pod(2, 2, 0.0, 0)];
        assert_eq!(scores("queue", &all_equal, Signals::default()), [1.0, 1.0]);
    }

    #[test]
    fn token_load_rates_the_tokens_in_flight() {
        let mut pods = [pod(1, 1, 0.0, 0), pod(2, 1, 0.0, 0), pod(3, 1, 0.0, 0)];
        pods[0].tokens_in_flight = 9000;
        pods[1].tokens_in_flight = 1000;
        pods[2].tokens_in_flight = 5000;
        assert_eq!(
            scores("token-load", &pods, Signals::default()),
            [0.0, 1.0, 0.5]
        );
        assert_eq!(scores("queue", &pods, Signals::default()), [1.0; 3]);
    }

    #[test]
    fn lora_rates_the_affinity_it_is_given() {
        let pods = [pod(1, 0, 0.0, 0), pod(2, 0, 0.0, 0)];
        let signals = Signals {
            lora: &[0.5, 1.0],
            ..Default::default()
        };
        assert_eq!(scores("lora-affinity", &pods, signals), [0.5, 1.0]);
        let mut out = Vec::new();
        let profile = Profile::parse_weighted("lora:1").unwrap();
        score(&profile, &pods, &signals, &mut out);
        assert_eq!(pick(Picker::MaxScore, &pods, &out, 0, 0), 1);
        assert!(profile.uses(Scorer::Lora) && !profile.reads_prompt());
    }

    #[test]
    fn latency_favours_the_closest_and_unmeasured_pods() {
        let pods = [pod(1, 0, 0.0, 100), pod(2, 0, 0.0, 300), pod(3, 0, 0.0, 0)];
        assert_eq!(
            scores("latency", &pods, Signals::default()),
            [1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn session_scores_its_rendezvous_pod_only() {
        let pods = [pod(1, 0, 0.0, 0), pod(2, 0, 0.0, 0), pod(3, 0, 0.0, 0)];
        let signals = Signals {
            session: Some(42),
            ..Default::default()
        };
        let s = scores("session", &pods, signals);
        assert_eq!(s.iter().filter(|&&v| v == 1.0).count(), 1);
        assert_eq!(
            s.iter().position(|&v| v == 1.0),
            Some(session_affinity(&pods, 42))
        );
        assert_eq!(scores("session", &pods, Signals::default()), [0.0; 3]);
    }

    #[test]
    fn max_score_picks_the_best_and_breaks_ties_by_request_key() {
        let pods = [pod(1, 0, 0.0, 0), pod(2, 0, 0.0, 0), pod(3, 0, 0.0, 0)];
        assert_eq!(pick(Picker::MaxScore, &pods, &[0.2, 0.9, 0.5], 7, 0), 1);
        // All tied: the same key always picks the same pod; keys spread.
        let tied = [0.5; 3];
        let picks: Vec<usize> = (0..300)
            .map(|k| pick(Picker::MaxScore, &pods, &tied, k, 0))
            .collect();
        assert_eq!(pick(Picker::MaxScore, &pods, &tied, 11, 99), picks[11]);
        for i in 0..3 {
            let n = picks.iter().filter(|&&p| p == i).count();
            assert!(n > 60, "pod {i} got {n} of 300 ties");
        }
    }

    fn spread(picker: Picker, scores: &[f64]) -> Vec<u32> {
        let pods: Vec<PodView> = (0..scores.len() as u8).map(|n| pod(n, 0, 0.0, 0)).collect();
        let mut hits = vec![0; scores.len()];
        let mut rand = 0x1234_5678_9abc_def0_u64;
        for _ in 0..4000 {
            rand = xxhash_rust::xxh3::xxh3_64(&rand.to_le_bytes());
            hits[pick(picker, &pods, scores, 0, rand)] += 1;
        }
        hits
    }

    #[test]
    fn weighted_random_follows_the_scores() {
        let hits = spread(Picker::WeightedRandom, &[0.0, 1.0, 3.0]);
        assert_eq!(hits[0], 0, "a pod scoring 0 is never picked");
        let share = f64::from(hits[2]) / 4000.0;
        assert!((0.70..0.80).contains(&share), "{hits:?}");
        let uniform = spread(Picker::WeightedRandom, &[0.0, 0.0]);
        assert!(uniform.iter().all(|&n| n > 1500), "{uniform:?}");
    }

    #[test]
    fn power_of_two_never_picks_the_worst_of_three() {
        let hits = spread(Picker::PowerOfTwo, &[0.1, 0.5, 0.9]);
        assert_eq!(hits[0], 0, "{hits:?}");
        assert!(hits[2] > hits[1], "{hits:?}");
        assert_eq!(spread(Picker::PowerOfTwo, &[0.3]), [4000]);
    }

    #[test]
    fn pickers_by_name() {
        for name in Picker::NAMES {
            assert!(Picker::parse(name).is_some(), "{name}");
        }
        assert_eq!(Picker::parse("best"), None);
        assert_eq!(
            Profile::from_items([], Picker::MaxScore).unwrap_err(),
            ProfileError::NoScorer
        );
    }
}
