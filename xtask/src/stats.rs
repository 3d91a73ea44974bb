//! Summaries of measured durations.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::workload::Outcome;

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn summarize(samples: impl IntoIterator<Item = Duration>) -> Summary {
    let mut us: Vec<f64> = samples.into_iter().map(|d| d.as_secs_f64() * 1e6).collect();
    if us.is_empty() {
        return Summary::default();
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1];
    Summary {
        count: us.len(),
        mean_us: us.iter().sum::<f64>() / us.len() as f64,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

/// Requests per engine, in engine order.
pub fn per_engine(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for o in outcomes {
        *map.entry(o.engine.clone()).or_default() += 1;
    }
    map
}

/// Cached prompt tokens / prompt tokens, as the engines reported them.
pub fn hit_rate(outcomes: &[Outcome]) -> f64 {
    let prompt: u64 = outcomes.iter().map(|o| o.prompt_tokens).sum();
    let cached: u64 = outcomes.iter().map(|o| o.cached_tokens).sum();
    if prompt == 0 {
        0.0
    } else {
        cached as f64 / prompt as f64
    }
}

pub fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}
