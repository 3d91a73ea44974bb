//! Any `/metrics` bytes: the engine-metrics parser never panics, KV usage
//! stays a fraction, and feeding the body in chunks (sizes taken from the
//! input's first byte) gives the same answer as parsing it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_agent::pool::{EngineMetrics, MetricsParser};

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let mut whole = MetricsParser::default();
    whole.feed(body);
    let whole = whole.finish();
    if let Some(kv) = whole.kv_usage {
        assert!((0.0..=1.0).contains(&kv), "{kv}");
    }
    let mut chunked = MetricsParser::default();
    body.chunks(usize::from(step).max(1))
        .for_each(|c| chunked.feed(c));
    assert_eq!(chunked.finish(), whole);
    if let Ok(text) = std::str::from_utf8(body) {
        assert_eq!(EngineMetrics::parse(text), whole);
    }
});
