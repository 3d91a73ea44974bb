//! Raw objects → the few fields discovery needs, or a reason to ignore
//! the object; pods here, pools in `pools.rs`. The reflector stores these
//! compact forms, not the full objects.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use kube::runtime::reflector::Lookup;
use serde::Deserialize;

use super::KubeOptions;
use super::raw::RawObject;

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodInfo {
    pub key: Key,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    /// Set only when the pod is Running, Ready=True and has an IP.
    pub serving_ip: Option<IpAddr>,
    /// Model and port from the pod's labels, when it has the model label.
    pub labelled: Option<(String, u16)>,
}

/// Why an object is not used. `key` is known when the object has a name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ignored {
    pub key: Option<Key>,
    pub reason: String,
    /// A well-formed object with an unusable label (logged at debug), as
    /// opposed to a malformed one (logged as a warning).
    pub label_only: bool,
}

/// The object's identity, if its metadata names it (even when malformed).
pub(crate) fn key_of(raw: &RawObject) -> Option<Key> {
    let name = raw.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some(Key {
        namespace: raw.metadata.namespace.clone().unwrap_or_default(),
        name,
    })
}

pub(crate) fn checked(raw: &RawObject) -> Result<Key, Ignored> {
    let key = key_of(raw);
    let fail = |reason: String| Ignored {
        key: key.clone(),
        reason,
        label_only: false,
    };
    if let Some(e) = &raw.meta_error {
        return Err(fail(e.clone()));
    }
    key.clone()
        .ok_or_else(|| fail("metadata.name is missing".into()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodBody {
    spec: Option<PodSpec>,
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize)]
struct PodStatus {
    phase: Option<String>,
    conditions: Option<Vec<Condition>>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

pub(crate) fn parse_pod(raw: &RawObject, opts: &KubeOptions) -> Result<PodInfo, Ignored> {
    let key = checked(raw)?;
    let fail = |reason: String| Ignored {
        key: Some(key.clone()),
        reason,
        label_only: false,
    };
    let body = PodBody::deserialize(&raw.body).map_err(|e| fail(format!("pod: {e}")))?;
    let labels = raw.metadata.labels.clone().unwrap_or_default();
    let labelled = match labels.get(&opts.model_label) {
        None => None,
        Some(model) if model.is_empty() => {
            return Err(Ignored {
                label_only: true,
                ..fail(format!("label {} is empty", opts.model_label))
            });
        }
        Some(model) => {
            let port = match labels.get(&opts.port_label) {
                None => opts.default_port,
                Some(text) => match text.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(Ignored {
                            label_only: true,
                            ..fail(format!("label {}={text:?} is not a port", opts.port_label))
                        });
                    }
                },
            };
            Some((model.clone(), port))
        }
    };
    let status = body.status;
    let running = status
        .as_ref()
        .is_some_and(|s| s.phase.as_deref() == Some("Running"));
    let ready = status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.kind == "Ready" && c.status == "True"));
    let ip = match status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|_| fail(format!("status.podIP {text:?} is not an IP address")))?,
        ),
    };
    Ok(PodInfo {
        key,
        labels,
        node: body.spec.and_then(|s| s.node_name),
        serving_ip: ip.filter(|_| running && ready),
        labelled,
    })
}

/// Stored without their API metadata: the reflector only needs identity.
macro_rules! lookup {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl Lookup for $ty {
            type DynamicType = ();
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn name(&self) -> Option<Cow<'_, str>> {
                Some(self.key.name.as_str().into())
            }
            fn namespace(&self) -> Option<Cow<'_, str>> {
                Some(self.key.namespace.as_str().into())
            }
            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }
            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

pub(crate) use lookup;

lookup!(PodInfo, "Pod", "", "v1", "pods");
impl PodInfo {
    /// A stand-in carrying only the key, for deleting from the store.
    pub fn tombstone(key: Key) -> Self {
        Self {
            key,
            labels: BTreeMap::new(),
            node: None,
            serving_ip: None,
            labelled: None,
        }
    }
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
