//! Discovery counters (atomics bumped by the watch loop), exported at scrape
//! time by `telemetry`'s discovery collector.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

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
