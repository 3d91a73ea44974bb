//! The process harness shared by the end-to-end tests, `cargo xtask demo`
//! and `cargo xtask bench`: starts mock engines, the agent and a real Envoy
//! (from the shipped bootstraps) on loopback, and a small HTTP client that
//! measures time to first byte.

pub mod client;
pub mod envoy;
pub mod extproc_client;
pub mod netlab;
pub mod procs;
pub mod transport;

pub use client::{Client, Reply};
pub use envoy::{DEFAULT_ENVOY, ENVOY_VERSIONS, Envoy, EnvoyConfig};
pub use procs::{
    Proc, Stack, StackOptions, binary_dir, ensure_built, standalone_agent_args, write_config,
};
pub use transport::{ExtProcTransport, TestCerts};

/// An OpenAI chat request body.
pub fn chat_body(model: &str, prompt: &str, stream: bool, max_tokens: u32) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": prompt},
        ],
        "stream": stream,
        "max_tokens": max_tokens,
    });
    // OpenAI (and sglang-router) refuse stream_options without streaming.
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// mock-engine timing flags: µs per uncached prompt token, µs per output
/// token, and how many requests run at once (the rest queue).
pub fn engine_args(prefill_us: u32, decode_us: u32, max_running: u32) -> Vec<String> {
    [
        "--prefill-us-per-token".to_owned(),
        prefill_us.to_string(),
        "--decode-us-per-token".to_owned(),
        decode_us.to_string(),
        "--max-running".to_owned(),
        max_running.to_string(),
    ]
    .into()
}

/// Engines with no artificial delay: tests about routing, not latency.
pub fn fast_engine() -> Vec<String> {
    engine_args(0, 0, 16)
}

/// The sum of every sample of `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads one sample (`name{labels} value`) from Prometheus text; the labels
/// given must all appear on the line.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
}
