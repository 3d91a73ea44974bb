//! Exports per-pod state straight from the current snapshot at scrape time,
//! so the request path only bumps atomics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use super::collector::{Families, ScrapeCollector};
use crate::pool::Pools;
use crate::routing::DecidedBy;

pub type PoolCollector = ScrapeCollector<Arc<Pools>, PoolFamilies>;

pub struct PoolFamilies {
    in_flight: IntGaugeVec,
    tokens_in_flight: IntGaugeVec,
    ready: IntGaugeVec,
    engine_waiting: IntGaugeVec,
    engine_running: IntGaugeVec,
    kv_usage: GaugeVec,
    engine_prompt_tokens: IntCounterVec,
    engine_generation_tokens: IntCounterVec,
    decisions: IntCounterVec,
    prompt_tokens: IntCounterVec,
    completion_tokens: IntCounterVec,
}

impl Families<Arc<Pools>> for PoolFamilies {
    fn new() -> Self {
        let pod = &["pod"];
        let model_pod = &["model", "pod"];
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static options are valid")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static options are valid")
        };
        Self {
            in_flight: gauge(
                "steer_pod_in_flight",
                "Requests this agent sent to the pod that have not finished.",
                pod,
            ),
            tokens_in_flight: gauge(
                "steer_pod_tokens_in_flight",
                "Prompt + expected completion tokens of the requests in flight, per pod (estimated: body bytes / 4 + the request's max tokens, 256 when unset).",
                pod,
            ),
            ready: gauge(
                "steer_pod_ready",
                "1 if the pod is in rotation: metric scrapes succeed and no response failed since the last one.",
                pod,
            ),
            engine_waiting: gauge(
                "steer_pod_engine_waiting",
                "The engine's own queue length, last scrape.",
                pod,
            ),
            engine_running: gauge(
                "steer_pod_engine_running",
                "Requests running in the engine, last scrape.",
                pod,
            ),
            kv_usage: GaugeVec::new(
                Opts::new(
                    "steer_pod_kv_cache_usage",
                    "Engine KV-cache usage 0..1, last scrape.",
                ),
                pod,
            )
            .expect("static options are valid"),
            engine_prompt_tokens: counter(
                "steer_pod_engine_prompt_tokens_total",
                "Prompt tokens the engine reports it has processed, per pod and the engine's model_name (its own counter, last scrape).",
                model_pod,
            ),
            engine_generation_tokens: counter(
                "steer_pod_engine_generation_tokens_total",
                "Tokens the engine reports it has generated, per pod and the engine's model_name (its own counter, last scrape).",
                model_pod,
            ),
            decisions: counter(
                "steer_decisions_total",
                "Routing decisions by model, pod and strategy.",
                &["model", "pod", "strategy"],
            ),
            prompt_tokens: counter(
                "steer_prompt_tokens_total",
                "Prompt tokens reported by responses, as seen by the usage observer (off in the shipped Envoy config).",
                model_pod,
            ),
            completion_tokens: counter(
                "steer_completion_tokens_total",
                "Completion tokens reported by responses, as seen by the usage observer (off in the shipped Envoy config).",
                model_pod,
            ),
        }
    }

    fn collectors(&self) -> Vec<&dyn Collector> {
        vec![
            &self.in_flight,
            &self.tokens_in_flight,
            &self.ready,
            &self.engine_waiting,
            &self.engine_running,
            &self.kv_usage,
            &self.engine_prompt_tokens,
            &self.engine_generation_tokens,
            &self.decisions,
            &self.prompt_tokens,
            &self.completion_tokens,
        ]
    }

    fn fill(&self, pools: &Arc<Pools>) {
        let f = self;
        let snapshot = pools.snapshot();
        for ep in &snapshot.endpoints {
            let pod = [&*ep.addr_text];
            f.in_flight
                .with_label_values(&pod)
                .set(i64::from(ep.in_flight()));
            f.tokens_in_flight
                .with_label_values(&pod)
                .set(i64::try_from(ep.tokens_in_flight()).unwrap_or(i64::MAX));
            f.ready
                .with_label_values(&pod)
                .set(i64::from(ep.is_ready()));
            f.engine_waiting
                .with_label_values(&pod)
                .set(i64::from(ep.engine_waiting()));
            f.engine_running
                .with_label_values(&pod)
                .set(i64::from(ep.engine_running()));
            f.kv_usage
                .with_label_values(&pod)
                .set(f64::from(ep.kv_usage()));
            for t in ep.engine_tokens().iter() {
                let labels = [&*t.model, pod[0]];
                f.engine_prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(t.prompt);
                f.engine_generation_tokens
                    .with_label_values(&labels)
                    .inc_by(t.generation);
            }
        }
        for pool in snapshot.models.values() {
            for member in &pool.members {
                let labels = [&*pool.name, &*member.endpoint.addr_text];
                let c = &member.counters;
                let fixed = DecidedBy::FIXED
                    .iter()
                    .enumerate()
                    .map(|(slot, by)| (by.name(), c.decisions[slot].load(Ordering::Relaxed)));
                let profiles = snapshot
                    .settings
                    .profiles
                    .iter()
                    .zip(&*member.profile_decisions);
                let profiles = profiles.map(|(p, n)| (&*p.name, n.load(Ordering::Relaxed)));
                for (name, n) in fixed.chain(profiles).filter(|(_, n)| *n > 0) {
                    f.decisions
                        .with_label_values(&[labels[0], labels[1], name])
                        .inc_by(n);
                }
                f.prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(c.prompt_tokens.load(Ordering::Relaxed));
                f.completion_tokens
                    .with_label_values(&labels)
                    .inc_by(c.completion_tokens.load(Ordering::Relaxed));
            }
        }
    }
}
