//! Any `/metrics` text: the engine-metrics parser never panics and KV usage
//! stays a fraction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_agent::pool::EngineMetrics;

fuzz_target!(|text: &str| {
    let m = EngineMetrics::parse(text);
    if let Some(kv) = m.kv_usage {
        assert!((0.0..=1.0).contains(&kv), "{kv}");
    }
});
