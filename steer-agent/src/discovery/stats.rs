//! Discovery counters (atomics bumped by the watch loop) and their
//! Prometheus export, read at scrape time like `PoolCollector`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use super::Discovered;

#[derive(Debug, Default)]
pub struct DiscoveryStats {
    /// Object events received (list items, added, modified, deleted).
    pub events: AtomicU64,
    /// Watch errors: failed lists and watches, ERROR events (410 included),
    /// broken streams. A clean server-side close of a watch (every few
    /// minutes) is resumed by kube without an error and is not counted.
    pub restarts: AtomicU64,
    /// Full lists, the first one included.
    pub relists: AtomicU64,
    /// Times an object was ignored as malformed (once per bad version).
    pub ignored: AtomicU64,
    /// The first list of pods has completed.
    pub synced: AtomicBool,
    last_error: Mutex<Option<String>>,
    endpoints: Mutex<BTreeMap<String, usize>>,
}

impl DiscoveryStats {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The most recent watch error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Endpoints per model in the last published view.
    pub fn endpoints(&self) -> BTreeMap<String, usize> {
        self.endpoints.lock().clone()
    }

    pub(crate) fn error(&self, error: String) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }

    pub(crate) fn published(&self, view: &Discovered) {
        *self.endpoints.lock() = view
            .models
            .iter()
            .map(|(m, eps)| (m.clone(), eps.len()))
            .collect();
    }
}

/// Prometheus collector over a [`DiscoveryStats`].
#[derive(Debug)]
pub struct DiscoveryCollector {
    stats: Arc<DiscoveryStats>,
    descs: Vec<Desc>,
}

struct Families {
    events: IntCounter,
    restarts: IntCounter,
    relists: IntCounter,
    ignored: IntCounter,
    synced: IntGauge,
    endpoints: IntGaugeVec,
}

impl Families {
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

    fn collectors(&self) -> [&dyn Collector; 6] {
        [
            &self.events,
            &self.restarts,
            &self.relists,
            &self.ignored,
            &self.synced,
            &self.endpoints,
        ]
    }
}

impl DiscoveryCollector {
    pub fn new(stats: Arc<DiscoveryStats>) -> Self {
        let descs = Families::new()
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self { stats, descs }
    }
}

impl Collector for DiscoveryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = Families::new();
        let s = &self.stats;
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
        f.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::DiscoveredEndpoint;

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
