//! Reads the few engine gauges routing needs, and the engine's own token
//! counters, from Prometheus text, under every name vLLM (old and new) and
//! SGLang have used: routers that read only one name broke when vLLM renamed
//! them.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineMetrics {
    pub waiting: Option<u32>,
    pub running: Option<u32>,
    /// KV-cache usage in 0..1.
    pub kv_usage: Option<f32>,
    /// The engine's own token counters since it started, per model it
    /// serves (its `model_name` label), in the order first seen.
    pub tokens: Vec<ModelTokens>,
    /// vLLM's `vllm:lora_requests_info`, the newest sample.
    pub lora: Option<LoraInfo>,
}

/// The LoRA adapters an engine runs and queues, and its adapter slots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraInfo {
    pub running: Vec<Box<str>>,
    pub waiting: Vec<Box<str>>,
    pub max_lora: u32,
    /// The sample's value: when vLLM took it (seconds).
    pub taken_at: f64,
}

impl LoraInfo {
    /// How well a pod suits a request for `adapter`: running it 1, queueing
    /// it 0.75, a free slot 0.5, none 0 (llm-d's LoRA affinity order).
    pub fn affinity(&self, adapter: &str) -> f64 {
        if self.running.iter().any(|a| &**a == adapter) {
            1.0
        } else if self.waiting.iter().any(|a| &**a == adapter) {
            0.75
        } else if self.loaded() < self.max_lora as usize {
            0.5
        } else {
            0.0
        }
    }

    /// Distinct adapters running or queued.
    fn loaded(&self) -> usize {
        let mut all: Vec<&str> = self
            .running
            .iter()
            .chain(&self.waiting)
            .map(|a| &**a)
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// Tokens one engine has processed and generated for one of its models.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelTokens {
    pub model: Box<str>,
    pub prompt: u64,
    pub generation: u64,
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
        let Some((name, labels, value)) = sample(line) else {
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
            let slot = self.model_tokens(label(labels, "model_name"));
            slot.prompt = slot.prompt.saturating_add(value.max(0.0) as u64);
        } else if name == "vllm:lora_requests_info" {
            if self.lora.as_ref().is_none_or(|l| value >= l.taken_at) {
                let list = |key| {
                    label(labels, key)
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(Into::into)
                        .collect()
                };
                self.lora = Some(LoraInfo {
                    running: list("running_lora_adapters"),
                    waiting: list("waiting_lora_adapters"),
                    max_lora: label(labels, "max_lora").parse().unwrap_or(0),
                    taken_at: value,
                });
            }
        } else if GENERATION_TOKENS.contains(&name) {
            let slot = self.model_tokens(label(labels, "model_name"));
            slot.generation = slot.generation.saturating_add(value.max(0.0) as u64);
        }
    }

    fn model_tokens(&mut self, model: &str) -> &mut ModelTokens {
        let at = match self.tokens.iter().position(|t| &*t.model == model) {
            Some(at) => at,
            None => {
                self.tokens.push(ModelTokens {
                    model: model.into(),
                    ..ModelTokens::default()
                });
                self.tokens.len() - 1
            }
        };
        &mut self.tokens[at]
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

/// `name{labels} value [timestamp]` → (name, labels, value).
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].rfind('}')? + open;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, "", rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    value.is_finite().then_some((name.trim(), labels, value))
}

/// The value of `key="..."` in a label set ("" if absent). Engines' model
/// names carry no escaped quotes in practice; an escaped one ends the value.
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let mut rest = labels;
    while let Some(at) = rest.find(key) {
        let after = &rest[at + key.len()..];
        let boundary = at == 0 || matches!(rest.as_bytes()[at - 1], b',' | b' ' | b'{');
        if let (true, Some(value)) = (boundary, after.trim_start().strip_prefix('='))
            && let Some(value) = value.trim_start().strip_prefix('"')
        {
            return value.split('"').next().unwrap_or_default();
        }
        rest = after;
    }
    ""
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

    fn tokens(model: &str, prompt: u64, generation: u64) -> ModelTokens {
        ModelTokens {
            model: model.into(),
            prompt,
            generation,
        }
    }

    #[test]
    fn token_counters_per_model() {
        let text = "# TYPE vllm:prompt_tokens_total counter\n\
            vllm:prompt_tokens_total{engine=\"0\",model_name=\"a\"} 120.0\n\
            vllm:prompt_tokens_total{model_name=\"b\"} 30\n\
            vllm:prompt_tokens_total{engine=\"1\",model_name=\"a\"} 5\n\
            vllm:generation_tokens_total{model_name=\"a\"} 16\n\
            vllm:request_prompt_tokens_sum{model_name=\"a\"} 999\n";
        let m = EngineMetrics::parse(text);
        assert_eq!(m.tokens, vec![tokens("a", 125, 16), tokens("b", 30, 0)]);
        let sglang = "sglang:prompt_tokens_total{model_name=\"q\", tp_rank=\"0\"} 7\n\
            sglang:generation_tokens_total{model_name=\"q\",tp_rank=\"0\"} 3\n\
            sglang:generation_tokens_total 4\n\
            sglang:generation_tokens_total{served_model_name=\"z\"} 1\n";
        let m = EngineMetrics::parse(sglang);
        assert_eq!(m.tokens, vec![tokens("q", 7, 3), tokens("", 0, 5)]);
        assert!(
            EngineMetrics::parse("vllm:num_requests_running 1")
                .tokens
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let m = EngineMetrics::parse(
            "vllm:num_requests_waiting{ 3\nvllm:num_requests_running NaN\n{}\n\u{0}",
        );
        assert_eq!(m, EngineMetrics::default());
    }

    #[test]
    fn lora_info_newest_sample_and_affinity() {
        let text = "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 100.0\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql, chat\",waiting_lora_adapters=\"math\"} 200.5\n";
        let lora = EngineMetrics::parse(text).lora.unwrap();
        assert_eq!(lora.running, ["sql".into(), "chat".into()] as [Box<str>; 2]);
        assert_eq!(lora.waiting, ["math".into()] as [Box<str>; 1]);
        assert_eq!(lora.max_lora, 2);
        assert_eq!(lora.affinity("sql"), 1.0);
        assert_eq!(lora.affinity("math"), 0.75);
        assert_eq!(lora.affinity("other"), 0.0, "three adapters fill two slots");
        let free = LoraInfo {
            running: vec!["sql".into()],
            max_lora: 2,
            ..LoraInfo::default()
        };
        assert_eq!(free.affinity("other"), 0.5);
        assert_eq!(
            EngineMetrics::parse("vllm:num_requests_waiting 1\n").lora,
            None
        );
    }
}
