//! Exports Kubernetes discovery's counters and per-model endpoint counts
//! from its [`DiscoveryStats`] at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use super::collector::{Families, ScrapeCollector};
use crate::discovery::DiscoveryStats;

pub type DiscoveryCollector = ScrapeCollector<Arc<DiscoveryStats>, DiscoveryFamilies>;

pub struct DiscoveryFamilies {
    events: IntCounter,
    restarts: IntCounter,
    relists: IntCounter,
    ignored: IntCounter,
    synced: IntGauge,
    endpoints: IntGaugeVec,
}

impl Families<Arc<DiscoveryStats>> for DiscoveryFamilies {
    fn new() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help)).expect("static options are valid")
        };
        Self {
            events: counter(
                "steer_discovery_events_total",
                "Kubernetes object events received (list items, added, modified, deleted).",
            ),
            restarts: counter(
                "steer_discovery_watch_restarts_total",
                "Kubernetes list/watch errors, each followed by a backoff and a resumed watch or relist.",
            ),
            relists: counter(
                "steer_discovery_relists_total",
                "Full lists of pods or InferencePools, the initial ones included.",
            ),
            ignored: counter(
                "steer_discovery_ignored_objects_total",
                "Malformed pods or InferencePools ignored (bad port label, wrong field types, missing fields).",
            ),
            synced: IntGauge::with_opts(Opts::new(
                "steer_discovery_synced",
                "1 once the first list of pods has completed.",
            ))
            .expect("static options are valid"),
            endpoints: IntGaugeVec::new(
                Opts::new(
                    "steer_discovery_endpoints",
                    "Endpoints per model in the current discovered view.",
                ),
                &["model"],
            )
            .expect("static options are valid"),
        }
    }

    fn collectors(&self) -> Vec<&dyn Collector> {
        vec![
            &self.events,
            &self.restarts,
            &self.relists,
            &self.ignored,
            &self.synced,
            &self.endpoints,
        ]
    }

    fn fill(&self, s: &Arc<DiscoveryStats>) {
        let f = self;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        f.events.inc_by(load(&s.events));
        f.restarts.inc_by(load(&s.restarts));
        f.relists.inc_by(load(&s.relists));
        f.ignored.inc_by(load(&s.ignored));
        f.synced.set(i64::from(s.synced.load(Ordering::Relaxed)));
        for (model, n) in s.endpoints() {
            f.endpoints
                .with_label_values(&[model.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Discovered, DiscoveredEndpoint};

    #[test]
    fn exports_counters_and_per_model_gauge() {
        let stats = DiscoveryStats::new();
        stats.events.fetch_add(5, Ordering::Relaxed);
        stats.ignored.fetch_add(2, Ordering::Relaxed);
        stats.error("boom".into());
        let ep = DiscoveredEndpoint {
            addr: "10.0.0.1:8000".parse().unwrap(),
            node_local: false,
        };
        let mut view = Discovered::default();
        view.models.insert("qwen".into(), vec![ep, ep]);
        stats.published(&view);

        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(DiscoveryCollector::new(stats.clone())))
            .unwrap();
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        for line in [
            "steer_discovery_events_total 5",
            "steer_discovery_watch_restarts_total 1",
            "steer_discovery_ignored_objects_total 2",
            "steer_discovery_relists_total 0",
            "steer_discovery_synced 0",
            "steer_discovery_endpoints{model=\"qwen\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(stats.last_error().as_deref(), Some("boom"));

        stats.published(&Discovered::default());
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(!text.contains("steer_discovery_endpoints{"), "{text}");
    }
}
