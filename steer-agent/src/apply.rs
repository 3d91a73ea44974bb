//! Where pool changes come together: the config file (with `--pool` flags)
//! and, in Kubernetes mode, discovered endpoints. Every change rebuilds the
//! effective settings once and applies them everywhere in order: pools,
//! prefix index, kernel pod tables (before anyone connects to a new pod, so
//! sock_ops measures its first connection), scraper.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::Settings;
use crate::datapath::Datapath;
use crate::discovery::{Discovered, EngineModels};
use crate::pool::{Pools, Scraper};
use crate::router::Router;

#[derive(Debug)]
pub struct Applier {
    pools: Arc<Pools>,
    router: Arc<Router>,
    scraper: Arc<Scraper>,
    datapath: Arc<Datapath>,
    engine_models: Arc<EngineModels>,
    sources: Mutex<Sources>,
}

#[derive(Debug)]
struct Sources {
    base: Settings,
    discovered: Option<Discovered>,
}

impl Applier {
    pub fn new(
        pools: Arc<Pools>,
        router: Arc<Router>,
        scraper: Arc<Scraper>,
        datapath: Arc<Datapath>,
        engine_models: Arc<EngineModels>,
        base: Settings,
    ) -> Arc<Self> {
        Arc::new(Self {
            pools,
            router,
            scraper,
            datapath,
            engine_models,
            sources: Mutex::new(Sources {
                base,
                discovered: None,
            }),
        })
    }

    /// A new config file (already validated).
    pub fn set_base(&self, base: Settings) {
        let mut sources = self.sources.lock();
        sources.base = base;
        self.apply(&sources);
    }

    /// Engines' model lists changed (`discover_models`).
    pub fn refresh(&self) {
        let sources = self.sources.lock();
        self.apply(&sources);
    }

    /// A new view of the cluster.
    pub fn set_discovered(&self, discovered: Discovered) {
        let mut sources = self.sources.lock();
        sources.discovered = Some(discovered);
        self.apply(&sources);
    }

    fn apply(&self, sources: &Sources) {
        let pools = &self.pools;
        let mut settings = effective(&sources.base, sources.discovered.as_ref());
        if settings.discover_models {
            add_engine_models(&mut settings, &self.engine_models.lists());
        }
        let removed = pools.update(settings);
        self.router.forget_pods(&removed);
        self.datapath.sync_pods_now(pools);
        self.scraper.reconcile();
        tracing::info!(generation = pools.load().generation, "pools updated");
    }
}

/// Discovered models take their endpoints from the cluster; their strategy
/// and VIP still come from the config file. Models only in the file keep
/// their static endpoints.
pub fn effective(base: &Settings, discovered: Option<&Discovered>) -> Settings {
    let mut settings = base.clone();
    let Some(discovered) = discovered else {
        return settings;
    };
    for (model, endpoints) in &discovered.models {
        let entry = settings.models.entry(model.clone()).or_default();
        entry.endpoints = endpoints.iter().map(|e| e.addr).collect();
        settings
            .node_local
            .extend(endpoints.iter().filter(|e| e.node_local).map(|e| e.addr));
    }
    settings
}

/// Every model an engine of the pools lists (LoRA adapters, aliases) is
/// routed to that engine; per-model options still come from the config.
pub fn add_engine_models(settings: &mut Settings, listed: &BTreeMap<SocketAddr, Vec<String>>) {
    let engines: BTreeSet<SocketAddr> = settings
        .models
        .values()
        .flat_map(|m| m.endpoints.iter().copied())
        .collect();
    for addr in engines {
        for model in listed.get(&addr).into_iter().flatten() {
            let entry = settings.models.entry(model.clone()).or_default();
            if !entry.endpoints.contains(&addr) {
                entry.endpoints.push(addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use crate::discovery::DiscoveredEndpoint;

    #[test]
    fn discovered_endpoints_replace_file_endpoints_and_keep_file_options() {
        let file: FileConfig = serde_yaml::from_str(
            "models:\n  qwen:\n    endpoints: [\"10.0.0.1:80\"]\n    strategy: prefix-cache\n    vip: \"10.96.0.1:80\"\n  static:\n    endpoints: [\"10.0.0.9:80\"]\n",
        )
        .unwrap();
        let base = Settings::resolve(Some(file), &[]).unwrap();
        let ep = |a: &str, node_local| DiscoveredEndpoint {
            addr: a.parse().unwrap(),
            node_local,
        };
        let discovered = Discovered {
            models: [
                (
                    "qwen".to_owned(),
                    vec![ep("10.1.0.1:8000", true), ep("10.1.0.2:8000", false)],
                ),
                ("llama".to_owned(), vec![ep("10.1.0.3:8000", false)]),
            ]
            .into(),
        };
        let s = effective(&base, Some(&discovered));
        let qwen = &s.models["qwen"];
        assert_eq!(qwen.endpoints.len(), 2);
        assert_eq!(qwen.strategy, base.models["qwen"].strategy);
        assert_eq!(qwen.vip, base.models["qwen"].vip);
        assert_eq!(
            s.models["llama"].endpoints,
            vec!["10.1.0.3:8000".parse().unwrap()]
        );
        assert_eq!(s.models["static"], base.models["static"]);
        assert!(s.node_local.contains(&"10.1.0.1:8000".parse().unwrap()));
        assert_eq!(s.node_local.len(), 1);
        assert_eq!(effective(&base, None), base);
    }

    #[test]
    fn engine_listed_models_join_their_engines() {
        let file: FileConfig = serde_yaml::from_str(
            "models:\n  llama:\n    endpoints: [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n  sql-lora:\n    endpoints: []\n    strategy: prefix-cache\n",
        )
        .unwrap();
        let mut s = Settings::resolve(Some(file), &[]).unwrap();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let stranger: SocketAddr = "10.9.9.9:80".parse().unwrap();
        let listed = [
            (
                a,
                vec![
                    "llama".to_owned(),
                    "sql-lora".to_owned(),
                    "chat-lora".to_owned(),
                ],
            ),
            (stranger, vec!["llama".to_owned()]),
        ]
        .into();
        add_engine_models(&mut s, &listed);
        assert_eq!(s.models["sql-lora"].endpoints, vec![a]);
        assert_eq!(
            s.models["sql-lora"].strategy,
            Some(crate::routing::Strategy::PrefixCache.into())
        );
        assert_eq!(s.models["chat-lora"].endpoints, vec![a]);
        assert_eq!(
            s.models["llama"].endpoints.len(),
            2,
            "no duplicates, no strangers"
        );
    }
}
