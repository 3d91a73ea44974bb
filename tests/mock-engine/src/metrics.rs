//! Live engine counters and their Prometheus text rendering (vLLM / SGLang names).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Which engine's metric names `/metrics` imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Flavor {
    /// vLLM v1 names (`vllm:kv_cache_usage_perc`, `vllm:prefix_cache_*`).
    Vllm,
    /// vLLM v0 names (`vllm:gpu_cache_usage_perc`, `vllm:gpu_prefix_cache_*`).
    VllmLegacy,
    /// SGLang names (`sglang:num_running_reqs`, ...).
    Sglang,
}

/// vLLM's TTFT bucket bounds, in seconds.
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Seconds of generation history kept for `sglang:gen_throughput`.
const WINDOW_SECS: u64 = 5;
const WINDOW_SLOTS: usize = 8;

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) running: AtomicU64,
    pub(crate) waiting: AtomicU64,
    pub(crate) kv_blocks_held: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) prefix_queries: AtomicU64,
    pub(crate) prefix_hits: AtomicU64,
    generation_tokens: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_us: AtomicU64,
    window: Mutex<Window>,
}

/// Per-second generated-token counts, as a ring indexed by second.
#[derive(Default)]
struct Window {
    start: Option<Instant>,
    slots: [(u64, u64); WINDOW_SLOTS],
}

impl Window {
    fn now_sec(&mut self) -> u64 {
        self.start
            .get_or_insert_with(Instant::now)
            .elapsed()
            .as_secs()
    }

    fn add(&mut self, n: u64) {
        let sec = self.now_sec();
        let slot = &mut self.slots[(sec % WINDOW_SLOTS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += n;
    }

    /// Tokens per second over the last complete seconds.
    fn rate(&mut self) -> f64 {
        let sec = self.now_sec();
        let lo = sec.saturating_sub(WINDOW_SECS);
        let total: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s >= lo && *s < sec)
            .map(|(_, n)| n)
            .sum();
        total as f64 / WINDOW_SECS as f64
    }
}

impl Metrics {
    pub(crate) fn add_generated(&self, n: u64) {
        self.generation_tokens.fetch_add(n, Relaxed);
        self.window.lock().add(n);
    }

    pub(crate) fn observe_ttft(&self, ttft: Duration) {
        let secs = ttft.as_secs_f64();
        if let Some(i) = TTFT_BUCKETS.iter().position(|b| secs <= *b) {
            self.ttft_buckets[i].fetch_add(1, Relaxed);
        }
        self.ttft_count.fetch_add(1, Relaxed);
        let us = u64::try_from(ttft.as_micros()).unwrap_or(u64::MAX);
        self.ttft_sum_us.fetch_add(us, Relaxed);
    }

    fn kv_usage(&self, kv_blocks_total: u64) -> f64 {
        let held = self.kv_blocks_held.load(Relaxed) as f64;
        (held / kv_blocks_total.max(1) as f64).min(1.0)
    }

    pub(crate) fn render(&self, flavor: Flavor, model: &str, kv_blocks_total: u64) -> String {
        let label = format!("model_name=\"{}\"", escape_label(model));
        let mut out = String::with_capacity(4096);
        let running = self.running.load(Relaxed) as f64;
        let waiting = self.waiting.load(Relaxed) as f64;
        let kv = self.kv_usage(kv_blocks_total);
        let queries = self.prefix_queries.load(Relaxed) as f64;
        let hits = self.prefix_hits.load(Relaxed) as f64;
        let mut put = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{label}}} {value}");
        };
        if flavor == Flavor::Sglang {
            put(
                "sglang:num_running_reqs",
                "gauge",
                "The number of running requests.",
                running,
            );
            put(
                "sglang:num_queue_reqs",
                "gauge",
                "The number of requests in the waiting queue.",
                waiting,
            );
            put("sglang:token_usage", "gauge", "The token usage.", kv);
            let rate = if queries > 0.0 { hits / queries } else { 0.0 };
            put(
                "sglang:cache_hit_rate",
                "gauge",
                "The prefix cache hit rate.",
                rate,
            );
            let tput = self.window.lock().rate();
            put(
                "sglang:gen_throughput",
                "gauge",
                "The generation throughput (token/s).",
                tput,
            );
            return out;
        }
        let legacy = flavor == Flavor::VllmLegacy;
        let (usage, q_name, h_name) = if legacy {
            (
                "vllm:gpu_cache_usage_perc",
                "vllm:gpu_prefix_cache_queries_total",
                "vllm:gpu_prefix_cache_hits_total",
            )
        } else {
            (
                "vllm:kv_cache_usage_perc",
                "vllm:prefix_cache_queries_total",
                "vllm:prefix_cache_hits_total",
            )
        };
        put(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            running,
        );
        put(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            waiting,
        );
        put(
            usage,
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            kv,
        );
        put(
            q_name,
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            queries,
        );
        put(
            h_name,
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            hits,
        );
        let prompt = self.prompt_tokens.load(Relaxed) as f64;
        put(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            prompt,
        );
        let generated = self.generation_tokens.load(Relaxed) as f64;
        put(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            generated,
        );
        self.render_ttft(&mut out, &label);
        out
    }

    fn render_ttft(&self, out: &mut String, label: &str) {
        let name = "vllm:time_to_first_token_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Histogram of time to first token in seconds."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\",{label}}} {cumulative}");
        }
        let total = self.ttft_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",{label}}} {total}");
        let _ = writeln!(out, "{name}_count{{{label}}} {total}");
        let sum = self.ttft_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
    }
}

/// Prometheus label-value escaping.
/// vLLM's `vllm:lora_requests_info`: a gauge whose labels carry the adapter
/// lists and whose value is the time they were taken.
pub(crate) fn render_lora(out: &mut String, max_lora: u32, running: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(
        out,
        "# HELP vllm:lora_requests_info Running stats on lora requests."
    );
    let _ = writeln!(out, "# TYPE vllm:lora_requests_info gauge");
    let _ = writeln!(
        out,
        "vllm:lora_requests_info{{max_lora=\"{max_lora}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"\"}} {now}",
        escape_label(running)
    );
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn vllm_names_and_values() {
        let m = Metrics::default();
        m.running.store(3, Relaxed);
        m.kv_blocks_held.store(50, Relaxed);
        m.observe_ttft(Duration::from_millis(30));
        let text = m.render(Flavor::Vllm, "m", 100);
        let n = names(&text);
        for want in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:time_to_first_token_seconds_count",
            "vllm:time_to_first_token_seconds_sum",
        ] {
            assert!(n.iter().any(|x| x == want), "missing {want}");
        }
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\"} 3\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n"));
        assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
        assert!(text.contains("_bucket{le=\"0.02\",model_name=\"m\"} 0\n"));
        assert!(text.contains("_bucket{le=\"0.04\",model_name=\"m\"} 1\n"));
        assert!(text.contains("_bucket{le=\"+Inf\",model_name=\"m\"} 1\n"));
        assert!(!text.contains("gpu_"));
    }

    #[test]
    fn legacy_names() {
        let m = Metrics::default();
        m.kv_blocks_held.store(500, Relaxed);
        let text = m.render(Flavor::VllmLegacy, "m", 100);
        let n = names(&text);
        assert!(n.contains(&"vllm:gpu_cache_usage_perc".to_owned()));
        assert!(n.contains(&"vllm:gpu_prefix_cache_queries_total".to_owned()));
        assert!(n.contains(&"vllm:gpu_prefix_cache_hits_total".to_owned()));
        assert!(!n.contains(&"vllm:kv_cache_usage_perc".to_owned()));
        // Capped at 1 even when more blocks are held than exist.
        assert!(text.contains("vllm:gpu_cache_usage_perc{model_name=\"m\"} 1\n"));
    }

    #[test]
    fn sglang_names() {
        let m = Metrics::default();
        m.prefix_queries.store(100, Relaxed);
        m.prefix_hits.store(25, Relaxed);
        let text = m.render(Flavor::Sglang, "a\"b", 100);
        let n = names(&text);
        for want in [
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
            "sglang:cache_hit_rate",
            "sglang:gen_throughput",
        ] {
            assert!(n.iter().any(|x| x == want), "missing {want}");
        }
        assert!(text.contains("sglang:cache_hit_rate{model_name=\"a\\\"b\"} 0.25\n"));
        assert!(!text.contains("vllm:"));
    }
}
