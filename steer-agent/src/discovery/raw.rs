//! A Kubernetes object that always decodes.
//!
//! kube decodes a whole list page at once: with a typed `Pod` (or even
//! `DynamicObject`, whose metadata is typed) one malformed item fails the
//! list, and the watcher would back off and relist forever. [`RawObject`]
//! keeps the JSON and decodes `metadata` leniently, so the decision about a
//! bad object is made per object, in `objects.rs`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub(crate) struct RawObject {
    /// Decoded metadata; with `meta_error` set only name, namespace,
    /// resourceVersion and uid are filled in (where they are strings).
    pub metadata: ObjectMeta,
    pub meta_error: Option<String>,
    /// The whole object as sent.
    pub body: Value,
}

impl RawObject {
    pub fn from_value(body: Value) -> Self {
        let meta = body.get("metadata").unwrap_or(&Value::Null);
        let (metadata, meta_error) = match ObjectMeta::deserialize(meta) {
            Ok(m) => (m, None),
            Err(e) => {
                let text = |field: &str| meta.get(field).and_then(Value::as_str).map(str::to_owned);
                let fallback = ObjectMeta {
                    name: text("name"),
                    namespace: text("namespace"),
                    resource_version: text("resourceVersion"),
                    uid: text("uid"),
                    ..ObjectMeta::default()
                };
                (fallback, Some(format!("metadata: {e}")))
            }
        };
        Self {
            metadata,
            meta_error,
            body,
        }
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::from_value)
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version,
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Core `v1` pods.
pub(crate) fn pods() -> ApiResource {
    resource("", "v1", "Pod", "pods")
}

/// Gateway API Inference Extension pools (GA `v1`).
pub(crate) fn inference_pools() -> ApiResource {
    resource(
        "inference.networking.k8s.io",
        "v1",
        "InferencePool",
        "inferencepools",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_metadata_keeps_identity_and_reports() {
        let obj: RawObject = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7", "labels": {"a": 5}},
            "status": {}
        }))
        .unwrap();
        assert_eq!(obj.metadata.name.as_deref(), Some("p"));
        assert_eq!(obj.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(obj.metadata.resource_version.as_deref(), Some("7"));
        assert!(obj.meta_error.as_deref().unwrap().contains("metadata"));

        let obj: RawObject = serde_json::from_value(json!(42)).unwrap();
        assert!(obj.metadata.name.is_none() && obj.meta_error.is_some());
    }

    #[test]
    fn a_list_with_a_bad_item_still_decodes() {
        let list: kube::core::ObjectList<RawObject> = serde_json::from_value(json!({
            "metadata": {"resourceVersion": "3"},
            "items": [{"metadata": {"name": "a"}}, {"metadata": "nonsense"}, null]
        }))
        .unwrap();
        assert_eq!(list.items.len(), 3);
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("a"));
        assert!(list.items[1].meta_error.is_some());
    }

    #[test]
    fn api_paths() {
        assert_eq!(RawObject::url_path(&pods(), None), "/api/v1/pods");
        let pools = RawObject::url_path(&inference_pools(), Some("ml"));
        assert_eq!(
            pools,
            "/apis/inference.networking.k8s.io/v1/namespaces/ml/inferencepools"
        );
    }
}
