//! Scorers and pickers of [`super`], without I/O.

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
        running: 0,
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
