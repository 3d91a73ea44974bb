//! The immutable routing snapshot and its atomic replacement.
//!
//! Readers (every ext_proc stream) load the current snapshot with one
//! lock-free `ArcSwap::load`; a config change builds a whole new snapshot and
//! swaps it in, so no request ever sees a half-updated pool. Pod state
//! (`EndpointState`) is shared across snapshots by address, so in-flight
//! counts and scraped metrics survive reloads.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::{EndpointState, Member, MemberCounters};
use crate::config::Settings;
use crate::routing::Policy;

#[derive(Debug)]
pub struct ModelPool {
    pub name: Arc<str>,
    /// Seeds prefix hashes so two models never share cache entries.
    pub seed: u64,
    pub strategy: Option<Policy>,
    pub members: Vec<Member>,
    pub round_robin: AtomicU64,
    /// Kernel-steered virtual address of this model, if configured.
    pub vip: Option<SocketAddrV4>,
    /// Endpoint id of the last decision, for the VIP's kernel table.
    pub vip_choice: AtomicU32,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub settings: Settings,
    pub models: HashMap<String, Arc<ModelPool>>,
    /// Every distinct pod, once.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// The default strategy or some model's reads the prompt: without a
    /// `routing-strategy` header, request bodies are parsed with their prompt.
    pub reads_prompt: bool,
}

impl Snapshot {
    pub fn model(&self, name: &str) -> Option<&Arc<ModelPool>> {
        self.models.get(name)
    }
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u32,
    endpoints: HashMap<SocketAddr, Arc<EndpointState>>,
    members: HashMap<(String, SocketAddr), Arc<MemberCounters>>,
    profile_decisions: HashMap<(String, SocketAddr, Arc<str>), Arc<AtomicU64>>,
}

#[derive(Debug)]
pub struct Pools {
    current: ArcSwap<Snapshot>,
    // Only the (rare) rebuild takes this lock; readers never do.
    registry: Mutex<Registry>,
    /// The generation of every new snapshot, for subscribers.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Pools {
    pub fn new(settings: Settings) -> Self {
        let mut registry = Registry::default();
        let snapshot = registry.build(settings, 1);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            registry: Mutex::new(registry),
            changes: tokio::sync::watch::Sender::new(1),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Wakes (`changed()`) on every new snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Replaces the snapshot; returns the ids of pods that left every pool.
    pub fn update(&self, settings: Settings) -> Vec<u32> {
        let mut registry = self.registry.lock();
        let generation = self.current.load().generation + 1;
        let snapshot = registry.build(settings, generation);
        let removed = registry.prune(&snapshot);
        self.current.store(Arc::new(snapshot));
        self.changes.send_replace(generation);
        removed
    }
}

impl Registry {
    fn build(&mut self, settings: Settings, generation: u64) -> Snapshot {
        let mut models = HashMap::new();
        let mut endpoints: Vec<Arc<EndpointState>> = Vec::new();
        for (name, model) in &settings.models {
            let mut members = Vec::new();
            for &addr in &model.endpoints {
                let endpoint = self.endpoint(addr);
                if members.iter().any(|m: &Member| m.endpoint.addr == addr) {
                    continue;
                }
                if !endpoints.iter().any(|e| e.addr == addr) {
                    endpoints.push(endpoint.clone());
                }
                let counters = self
                    .members
                    .entry((name.clone(), addr))
                    .or_default()
                    .clone();
                let profile_decisions = settings
                    .profiles
                    .iter()
                    .map(|p| {
                        let key = (name.clone(), addr, p.name.clone());
                        self.profile_decisions.entry(key).or_default().clone()
                    })
                    .collect();
                members.push(Member {
                    endpoint,
                    counters,
                    profile_decisions,
                });
            }
            let pool = ModelPool {
                name: name.as_str().into(),
                seed: xxhash_rust::xxh3::xxh3_64(name.as_bytes()),
                strategy: model.strategy,
                members,
                round_robin: AtomicU64::new(0),
                vip: model.vip,
                vip_choice: AtomicU32::new(0),
            };
            models.insert(name.clone(), Arc::new(pool));
        }
        let reads_prompt = std::iter::once(settings.default_strategy)
            .chain(settings.models.values().filter_map(|m| m.strategy))
            .any(|p| settings.reads_prompt(p));
        Snapshot {
            generation,
            settings,
            models,
            endpoints,
            reads_prompt,
        }
    }

    fn endpoint(&mut self, addr: SocketAddr) -> Arc<EndpointState> {
        let next_id = &mut self.next_id;
        self.endpoints
            .entry(addr)
            .or_insert_with(|| {
                *next_id += 1;
                Arc::new(EndpointState::new(*next_id, addr))
            })
            .clone()
    }

    fn prune(&mut self, snapshot: &Snapshot) -> Vec<u32> {
        let mut removed = Vec::new();
        self.endpoints.retain(|addr, ep| {
            let keep = snapshot.endpoints.iter().any(|e| e.addr == *addr);
            if !keep {
                removed.push(ep.id);
            }
            keep
        });
        let member = |model: &String, addr: &SocketAddr| {
            snapshot
                .models
                .get(model)
                .is_some_and(|m| m.members.iter().any(|e| e.endpoint.addr == *addr))
        };
        self.members.retain(|(model, addr), _| member(model, addr));
        let profiles = &snapshot.settings.profiles;
        self.profile_decisions.retain(|(model, addr, profile), _| {
            member(model, addr) && profiles.iter().any(|p| p.name == *profile)
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings_from_yaml as settings;

    #[test]
    fn pod_state_survives_reload_and_removed_pods_are_reported() {
        let pools = Pools::new(settings(
            "models:\n  a:\n    endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n  b:\n    endpoints: [\"127.0.0.1:2\"]\n",
        ));
        let snap = pools.snapshot();
        assert_eq!(
            snap.endpoints.len(),
            2,
            "a pod shared by two models is one pod"
        );
        let shared = snap.model("b").unwrap().members[0].endpoint.clone();
        let _guard = shared.start(0);
        let gone_id = snap.model("a").unwrap().members[0].endpoint.id;

        let removed = pools.update(settings(
            "models:\n  b:\n    endpoints: [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
        ));
        assert_eq!(removed, vec![gone_id]);
        let snap2 = pools.snapshot();
        assert_eq!(snap2.generation, 2);
        assert!(snap2.model("a").is_none());
        let same = &snap2.model("b").unwrap().members[0].endpoint;
        assert!(Arc::ptr_eq(same, &shared));
        assert_eq!(same.in_flight(), 1);
        // The old snapshot is untouched for readers still holding it.
        assert!(snap.model("a").is_some());
    }
}
