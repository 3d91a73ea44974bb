//! The models each engine lists at `/v1/models` (LoRA adapters, aliases): a
//! discovery source beside the config file and Kubernetes. The scraper feeds
//! it (when `discover_models` is on); the applier merges it into the pools
//! and is woken when a list changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct EngineModels {
    known: Mutex<BTreeMap<SocketAddr, Vec<String>>>,
    changed: Notify,
}

impl EngineModels {
    /// Records what `engine` serves; wakes [`EngineModels::changed`] when that differs.
    pub fn set(&self, engine: SocketAddr, mut models: Vec<String>) {
        models.sort();
        models.dedup();
        let mut known = self.known.lock();
        if known.get(&engine) != Some(&models) {
            known.insert(engine, models);
            self.changed.notify_one();
        }
    }

    /// An engine left the pools.
    pub fn forget(&self, engine: SocketAddr) {
        self.known.lock().remove(&engine);
    }

    pub fn lists(&self) -> BTreeMap<SocketAddr, Vec<String>> {
        self.known.lock().clone()
    }

    /// Resolves when a list changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_list_wakes_the_applier_once() {
        let models = EngineModels::default();
        let engine: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        models.set(engine, vec!["b".into(), "a".into(), "a".into()]);
        tokio::time::timeout(std::time::Duration::from_secs(1), models.changed())
            .await
            .unwrap();
        assert_eq!(models.lists()[&engine], ["a", "b"]);
        // The same list again: no wake-up.
        models.set(engine, vec!["a".into(), "b".into()]);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), models.changed())
                .await
                .is_err()
        );
        models.forget(engine);
        assert!(models.lists().is_empty());
    }
}
