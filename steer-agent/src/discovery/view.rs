//! The cached pods and pools → model name → endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::objects::PodInfo;
use super::pools::PoolInfo;
use super::{Discovered, DiscoveredEndpoint};

/// Builds the full view. Deterministic: models and endpoints are sorted and
/// an endpoint reached twice (label and pool) appears once.
pub(crate) fn build(
    pods: &[Arc<PodInfo>],
    pools: &[Arc<PoolInfo>],
    node_name: Option<&str>,
) -> Discovered {
    let mut models: BTreeMap<String, BTreeSet<DiscoveredEndpoint>> = BTreeMap::new();
    let node_local = |pod: &PodInfo| node_name.is_some() && pod.node.as_deref() == node_name;
    let mut add = |model: &str, pod: &PodInfo, port: u16| {
        if let Some(ip) = pod.serving_ip {
            models
                .entry(model.to_owned())
                .or_default()
                .insert(DiscoveredEndpoint {
                    addr: SocketAddr::new(ip, port),
                    node_local: node_local(pod),
                });
        }
    };
    for pod in pods {
        if let Some((model, port)) = &pod.labelled {
            add(model, pod, *port);
        }
    }
    for pool in pools {
        for pod in pods.iter().filter(|pod| selects(pool, pod)) {
            for &port in &pool.ports {
                for model in &pool.models {
                    add(model, pod, port);
                }
            }
        }
    }
    Discovered {
        models: models
            .into_iter()
            .map(|(model, eps)| (model, eps.into_iter().collect()))
            .collect(),
    }
}

/// Same namespace and every `matchLabels` pair present on the pod.
fn selects(pool: &PoolInfo, pod: &PodInfo) -> bool {
    pool.key.namespace == pod.key.namespace
        && pool
            .selector
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::objects::Key;

    fn pod(ns: &str, name: &str, ip: Option<&str>, labels: &[(&str, &str)]) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: Key {
                namespace: ns.into(),
                name: name.into(),
            },
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            node: Some(format!("node-{name}")),
            serving_ip: ip.map(|ip| ip.parse().unwrap()),
            labelled: None,
        })
    }

    fn pool(ns: &str, name: &str, sel: &[(&str, &str)], ports: &[u16]) -> Arc<PoolInfo> {
        Arc::new(PoolInfo {
            key: Key {
                namespace: ns.into(),
                name: name.into(),
            },
            selector: sel
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ports: ports.to_vec(),
            models: vec![name.into()],
        })
    }

    #[test]
    fn labels_and_pools_merge_without_duplicates() {
        let mut a = (*pod("ns", "a", Some("10.0.0.1"), &[("app", "x")])).clone();
        a.labelled = Some(("p".into(), 8000));
        let pods = vec![
            Arc::new(a),
            pod("ns", "b", Some("fd00::2"), &[("app", "x"), ("extra", "1")]),
            pod("ns", "c", None, &[("app", "x")]),
            pod("other", "d", Some("10.0.0.4"), &[("app", "x")]),
            pod("ns", "e", Some("10.0.0.5"), &[("app", "y")]),
        ];
        let pools = vec![pool("ns", "p", &[("app", "x")], &[8000, 8001])];
        let view = build(&pods, &pools, Some("node-a"));
        let addrs: Vec<String> = view.addrs("p").iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "10.0.0.1:8000",
                "10.0.0.1:8001",
                "[fd00::2]:8000",
                "[fd00::2]:8001"
            ]
        );
        let local: Vec<bool> = view.models["p"].iter().map(|e| e.node_local).collect();
        assert_eq!(local, [true, true, false, false]);
        assert_eq!(view.models.len(), 1);
    }

    #[test]
    fn no_node_name_means_nothing_is_local() {
        let mut a = (*pod("ns", "a", Some("10.0.0.1"), &[])).clone();
        a.labelled = Some(("m".into(), 9000));
        a.node = None;
        let view = build(&[Arc::new(a)], &[], None);
        assert!(!view.models["m"][0].node_local);
        assert_eq!(view.endpoint_count(), 1);
    }
}
