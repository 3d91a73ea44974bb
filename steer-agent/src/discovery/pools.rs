//! InferencePools (`inference.networking.k8s.io/v1`) → selector, target
//! ports and the models they serve.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::runtime::reflector::Lookup;
use serde::Deserialize;

use super::POOL_MODELS_ANNOTATION;
use super::objects::{Ignored, Key, checked, lookup};
use super::raw::RawObject;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolInfo {
    pub key: Key,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub models: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolBody {
    spec: PoolSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    selector: Selector,
    target_ports: Vec<TargetPort>,
    // `endpointPickerRef` names the pool's EPP; Steer is the picker here,
    // so it is not read.
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TargetPort {
    number: u16,
}

pub(crate) fn parse_pool(raw: &RawObject) -> Result<PoolInfo, Ignored> {
    let key = checked(raw)?;
    let fail = |reason: String| Ignored {
        key: Some(key.clone()),
        reason,
        label_only: false,
    };
    let body =
        PoolBody::deserialize(&raw.body).map_err(|e| fail(format!("inference pool: {e}")))?;
    let spec = body.spec;
    if spec.selector.match_labels.is_empty() {
        return Err(fail("spec.selector.matchLabels is empty".into()));
    }
    let mut ports: Vec<u16> = spec.target_ports.iter().map(|p| p.number).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() || ports.contains(&0) {
        return Err(fail(format!(
            "spec.targetPorts {ports:?} has no valid port"
        )));
    }
    let annotated = raw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POOL_MODELS_ANNOTATION));
    let mut models: Vec<String> = annotated
        .map(|list| list.split(',').map(str::trim).filter(|m| !m.is_empty()))
        .into_iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    if models.is_empty() {
        models.push(key.name.clone());
    }
    models.sort();
    models.dedup();
    Ok(PoolInfo {
        key,
        selector: spec.selector.match_labels,
        ports,
        models,
    })
}

lookup!(
    PoolInfo,
    "InferencePool",
    "inference.networking.k8s.io",
    "v1",
    "inferencepools"
);

impl PoolInfo {
    pub fn tombstone(key: Key) -> Self {
        Self {
            key,
            selector: BTreeMap::new(),
            ports: Vec::new(),
            models: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn pool(spec: Value, annotations: Value) -> RawObject {
        serde_json::from_value::<RawObject>(json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "pool-a", "namespace": "ml", "resourceVersion": "4", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn pools_decode_ports_selector_and_models() {
        let spec = json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8001}, {"number": 8000}],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        });
        let info = parse_pool(&pool(spec.clone(), json!({}))).unwrap();
        assert_eq!(info.ports, [8000, 8001]);
        assert_eq!(info.models, ["pool-a"]);
        assert_eq!(info.selector["app"], "vllm");
        let info = parse_pool(&pool(spec.clone(), json!({"steer.ai/models": " b, a ,,"}))).unwrap();
        assert_eq!(info.models, ["a", "b"]);
        let info = parse_pool(&pool(spec, json!({"steer.ai/models": " , "}))).unwrap();
        assert_eq!(
            info.models,
            ["pool-a"],
            "an empty list falls back to the name"
        );
    }

    #[test]
    fn malformed_pools_are_reported() {
        for spec in [
            json!({"selector": {"matchLabels": {"app": "x"}}}),
            json!({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": []}),
            json!({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": "8000"}]}),
            json!({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 0}]}),
            json!({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 8000}]}),
            json!({"selector": {"matchLabels": {"app": 1}}, "targetPorts": [{"number": 8000}]}),
            json!({"targetPorts": [{"number": 8000}]}),
            Value::Null,
        ] {
            let bad = parse_pool(&pool(spec.clone(), json!({}))).unwrap_err();
            assert!(!bad.label_only, "{spec}");
            assert_eq!(bad.key.unwrap().name, "pool-a");
        }
    }
}
