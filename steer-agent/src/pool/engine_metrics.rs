//! Reads the few engine gauges routing needs, and the engine's own token
//! counters, from Prometheus text, under every name vLLM (old and new) and
//! SGLang have used: routers that read only one name broke when vLLM renamed
//! them.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineMetrics {
    pub waiting: Option<u32>,
    pub running: Option<u32>,
    /// KV-cache usage in 0..1.
    pub kv_usage: Option<f32>,
    /// Prompt tokens the engine has processed since it started.
    pub prompt_tokens: Option<u64>,
    /// Tokens the engine has generated since it started.
    pub generation_tokens: Option<u64>,
}

const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "trtllm_num_requests_waiting",
];
const RUNNING: &[&str] = &[
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "trtllm_num_requests_running",
];
const KV_USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "trtllm_kv_cache_utilization",
];
const PROMPT_TOKENS: &[&str] = &["vllm:prompt_tokens_total", "sglang:prompt_tokens_total"];
const GENERATION_TOKENS: &[&str] = &[
    "vllm:generation_tokens_total",
    "sglang:generation_tokens_total",
];

impl EngineMetrics {
    /// Sums a gauge over all its label sets (one engine may serve several
    /// models or LoRA adapters).
    pub fn parse(text: &str) -> Self {
        let mut parser = MetricsParser::default();
        parser.feed(text.as_bytes());
        parser.finish()
    }

    fn line(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let Some((name, value)) = sample(line) else {
            return;
        };
        if WAITING.contains(&name) {
            add(&mut self.waiting, value.max(0.0) as u32);
        } else if RUNNING.contains(&name) {
            add(&mut self.running, value.max(0.0) as u32);
        } else if KV_USAGE.contains(&name) {
            let v = value.clamp(0.0, 1.0) as f32;
            self.kv_usage = Some(self.kv_usage.map_or(v, |old| old.max(v)));
        } else if PROMPT_TOKENS.contains(&name) {
            add_u64(&mut self.prompt_tokens, value);
        } else if GENERATION_TOKENS.contains(&name) {
            add_u64(&mut self.generation_tokens, value);
        }
    }
}

/// [`EngineMetrics::parse`] over a body that arrives in chunks: only a
/// partial line is kept between chunks, never the whole answer.
#[derive(Debug, Default)]
pub struct MetricsParser {
    out: EngineMetrics,
    partial: Vec<u8>,
}

impl MetricsParser {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.partial.is_empty() {
            let Some(end) = chunk.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(chunk);
                return;
            };
            self.partial.extend_from_slice(&chunk[..end]);
            self.out.line(&std::mem::take(&mut self.partial));
            chunk = &chunk[end + 1..];
        }
        let mut lines = chunk.split(|&b| b == b'\n');
        let tail = lines.next_back().unwrap_or_default();
        lines.for_each(|line| self.out.line(line));
        self.partial.extend_from_slice(tail);
    }

    pub fn finish(mut self) -> EngineMetrics {
        let last = std::mem::take(&mut self.partial);
        self.out.line(&last);
        self.out
    }
}

fn add(slot: &mut Option<u32>, v: u32) {
    *slot = Some(slot.unwrap_or(0).saturating_add(v));
}

fn add_u64(slot: &mut Option<u64>, v: f64) {
    *slot = Some(slot.unwrap_or(0).saturating_add(v.max(0.0) as u64));
}

/// `name{labels} value [timestamp]` → (name, value).
fn sample(line: &str) -> Option<(&str, f64)> {
    let (name, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].rfind('}')? + open;
            (&line[..open], &line[close + 1..])
        }
        None => line.split_once(char::is_whitespace)?,
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    value.is_finite().then_some((name.trim(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_new_names() {
        let text = "# HELP x\n# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"q\"} 3.0\n\
            vllm:num_requests_running{model_name=\"q\"} 2\n\
            vllm:kv_cache_usage_perc{model_name=\"q\"} 0.25\n\
            vllm:prefix_cache_hits_total{model_name=\"q\"} 99\n";
        assert_eq!(
            EngineMetrics::parse(text),
            EngineMetrics {
                waiting: Some(3),
                running: Some(2),
                kv_usage: Some(0.25),
                ..EngineMetrics::default()
            }
        );
    }

    #[test]
    fn vllm_legacy_and_sglang_names() {
        let legacy = "vllm:gpu_cache_usage_perc{model_name=\"q\",x=\"}\"} 0.5 1700000000\n\
            vllm:num_requests_waiting{model_name=\"a\"} 1\nvllm:num_requests_waiting{model_name=\"b\"} 2\n";
        let m = EngineMetrics::parse(legacy);
        assert_eq!(m.kv_usage, Some(0.5));
        assert_eq!(m.waiting, Some(3));
        let sglang =
            "sglang:num_queue_reqs 4\nsglang:num_running_reqs 1\nsglang:token_usage 0.75\n";
        assert_eq!(
            EngineMetrics::parse(sglang),
            EngineMetrics {
                waiting: Some(4),
                running: Some(1),
                kv_usage: Some(0.75),
                ..EngineMetrics::default()
            }
        );
    }

    #[test]
    fn chunks_split_anywhere_parse_like_the_whole_text() {
        let text = "# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"a\"} 1\r\n\
            vllm:num_requests_waiting{model_name=\"b\"} 2\n\
            vllm:kv_cache_usage_perc{model_name=\"a\"} 0.5\n\
            vllm:num_requests_running 7";
        let whole = EngineMetrics::parse(text);
        assert_eq!(whole.waiting, Some(3));
        assert_eq!(whole.running, Some(7));
        for size in 1..text.len() {
            let mut parser = MetricsParser::default();
            text.as_bytes().chunks(size).for_each(|c| parser.feed(c));
            assert_eq!(parser.finish(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn token_counters_sum_over_models() {
        let text = "# TYPE vllm:prompt_tokens_total counter\n\
            vllm:prompt_tokens_total{model_name=\"a\"} 120.0\n\
            vllm:prompt_tokens_total{model_name=\"b\"} 30\n\
            vllm:generation_tokens_total{model_name=\"a\"} 16\n\
            vllm:request_prompt_tokens_sum{model_name=\"a\"} 999\n";
        let m = EngineMetrics::parse(text);
        assert_eq!(m.prompt_tokens, Some(150));
        assert_eq!(m.generation_tokens, Some(16));
        let sglang = "sglang:prompt_tokens_total{model_name=\"q\"} 7\n\
            sglang:generation_tokens_total{model_name=\"q\"} 3\n";
        let m = EngineMetrics::parse(sglang);
        assert_eq!((m.prompt_tokens, m.generation_tokens), (Some(7), Some(3)));
        assert_eq!(
            EngineMetrics::parse("vllm:num_requests_running 1").prompt_tokens,
            None
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let m = EngineMetrics::parse(
            "vllm:num_requests_waiting{ 3\nvllm:num_requests_running NaN\n{}\n\u{0}",
        );
        assert_eq!(m, EngineMetrics::default());
    }
}
