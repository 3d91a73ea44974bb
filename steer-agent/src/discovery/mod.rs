//! Kubernetes endpoint discovery: which pods serve which model.
//!
//! Two sources, each a kube-runtime pipeline in the style of kube's
//! `pod_reflector` example (`watcher` → `default_backoff` → our parse step →
//! `reflector` store), merged and turned into one [`Discovered`] view:
//!
//! * **Pods labelled with the model**: a pod carrying `model_label`
//!   (default `model.aibrix.ai/name`) serves the model named by the label's
//!   value on the port in `port_label` (default `model.aibrix.ai/port`) or
//!   on `default_port`.
//! * **InferencePools** (`inference.networking.k8s.io/v1`, optional): every
//!   pod in the pool's namespace matching `spec.selector.matchLabels` serves
//!   the pool's models on each of `spec.targetPorts[].number`. The models are
//!   the pool's name, or the comma-separated list in the pool's
//!   `steer.ai/models` annotation. With pools enabled the pod watch has no
//!   label selector (a pool may select any pod), so the agent needs
//!   list/watch on all pods of its namespace (or cluster).
//!
//! Only pods in phase `Running` with condition `Ready=True` and a `podIP`
//! become endpoints. `node_local` marks pods whose `spec.nodeName` is the
//! agent's own node (`NODE_NAME` from the downward API).
//!
//! Objects are decoded leniently: a malformed pod or pool (wrong types,
//! missing fields, a port label that is not a port) is logged once and
//! counted in `steer_discovery_ignored_objects_total`; it never stops or
//! restarts the watch. Watch errors back off (kube's default: 0.8 s doubling
//! to 30 s, with jitter) and resume or relist; an ERROR event with code 410
//! (Gone) makes kube's watcher relist. During a relist the reflector keeps
//! the previous objects until the new list is complete, so the last good
//! view keeps serving.
//!
//! A third source, [`EngineModels`], holds what each engine lists at
//! `/v1/models` (with `discover_models`); the applier merges all of them.

mod engine_models;
mod ignored;
mod objects;
mod pools;
mod raw;
mod stats;
mod view;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use engine_models::EngineModels;
pub use stats::DiscoveryStats;
pub use watch::run;

/// Default label naming a pod's model (AIBrix convention).
pub const DEFAULT_MODEL_LABEL: &str = "model.aibrix.ai/name";
/// Default label giving the engine's port.
pub const DEFAULT_PORT_LABEL: &str = "model.aibrix.ai/port";
/// Pool annotation listing the models a pool serves (`"a,b"`).
pub const POOL_MODELS_ANNOTATION: &str = "steer.ai/models";

/// What to watch and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// Namespace to watch; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Label whose presence selects a pod and whose value is its model.
    pub model_label: String,
    /// Label holding the engine port.
    pub port_label: String,
    /// Port used when a pod has no port label.
    pub default_port: u16,
    /// Also watch `inference.networking.k8s.io/v1` InferencePools.
    pub inference_pools: bool,
    /// This agent's node (downward API `NODE_NAME`), for `node_local`.
    pub node_name: Option<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            model_label: DEFAULT_MODEL_LABEL.to_owned(),
            port_label: DEFAULT_PORT_LABEL.to_owned(),
            default_port: 8000,
            inference_pools: false,
            node_name: None,
        }
    }
}

/// Model name → its endpoints (sorted by address, no duplicates).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub models: BTreeMap<String, Vec<DiscoveredEndpoint>>,
}

impl Discovered {
    /// The addresses of one model's endpoints (empty if unknown).
    pub fn addrs(&self, model: &str) -> Vec<SocketAddr> {
        self.models
            .get(model)
            .map(|eps| eps.iter().map(|e| e.addr).collect())
            .unwrap_or_default()
    }

    /// Total endpoints over all models.
    pub fn endpoint_count(&self) -> usize {
        self.models.values().map(Vec::len).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiscoveredEndpoint {
    pub addr: SocketAddr,
    /// The pod runs on this agent's node.
    pub node_local: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from the kubeconfig (`KUBECONFIG` or `~/.kube/config`) when there
/// is one, else the in-cluster service account.
pub async fn client_from_env() -> Result<kube::Client, DiscoveryError> {
    let config = kube::Config::infer().await?;
    Ok(kube::Client::try_from(config)?)
}
