//! Unit tests of pod decoding.

use serde_json::{Value, json};

use super::*;

fn raw(v: Value) -> RawObject {
    serde_json::from_value(v).unwrap()
}

fn pod(labels: Value, status: Value) -> RawObject {
    raw(json!({
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1", "labels": labels},
        "spec": {"nodeName": "node-a"},
        "status": status,
    }))
}

fn ready(ip: &str) -> Value {
    json!({"phase": "Running", "podIP": ip,
           "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]})
}

#[test]
fn ready_pod_with_model_and_port_labels() {
    let opts = KubeOptions::default();
    let info = parse_pod(
        &pod(
            json!({"model.aibrix.ai/name": "qwen", "model.aibrix.ai/port": "9000"}),
            ready("10.1.2.3"),
        ),
        &opts,
    )
    .unwrap();
    assert_eq!(info.labelled, Some(("qwen".into(), 9000)));
    assert_eq!(info.serving_ip, Some("10.1.2.3".parse().unwrap()));
    assert_eq!(info.node.as_deref(), Some("node-a"));
    assert_eq!(info.key.to_string(), "ns/p");

    let v6 = parse_pod(
        &pod(json!({"model.aibrix.ai/name": "q"}), ready("fd00::7")),
        &opts,
    )
    .unwrap();
    assert_eq!(v6.labelled, Some(("q".into(), 8000)), "default port");
    assert!(v6.serving_ip.unwrap().is_ipv6());
}

#[test]
fn not_running_not_ready_or_no_ip_is_kept_but_not_serving() {
    let opts = KubeOptions::default();
    let labels = json!({"model.aibrix.ai/name": "q"});
    for status in [
        json!({"phase": "Pending", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}),
        json!({"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "False"}]}),
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
        json!({"phase": "Running", "podIP": "", "conditions": [{"type": "Ready", "status": "True"}]}),
        json!({"phase": "Running", "podIP": "10.0.0.1"}),
        Value::Null,
    ] {
        let info = parse_pod(&pod(labels.clone(), status.clone()), &opts).unwrap();
        assert_eq!(info.serving_ip, None, "{status}");
    }
}

#[test]
fn bad_port_label_is_a_label_problem() {
    let opts = KubeOptions::default();
    for port in ["http", "70000", "0", "-1"] {
        let bad = parse_pod(
            &pod(
                json!({"model.aibrix.ai/name": "q", "model.aibrix.ai/port": port}),
                ready("10.0.0.1"),
            ),
            &opts,
        )
        .unwrap_err();
        assert!(
            bad.label_only && bad.reason.contains("not a port"),
            "{bad:?}"
        );
        assert_eq!(bad.key.unwrap().name, "p");
    }
    // Without the model label the port label does not matter.
    let info = parse_pod(
        &pod(json!({"model.aibrix.ai/port": "x"}), ready("10.0.0.1")),
        &opts,
    )
    .unwrap();
    assert_eq!(info.labelled, None);
}

#[test]
fn malformed_pods_are_reported_not_panicked_on() {
    let opts = KubeOptions::default();
    let labels = json!({"model.aibrix.ai/name": "q"});
    let cases = [
        pod(labels.clone(), json!({"phase": "Running", "podIP": 42})),
        pod(
            labels.clone(),
            json!({"phase": "Running", "podIP": "10.0.0.300"}),
        ),
        pod(
            labels.clone(),
            json!({"phase": "Running", "conditions": "yes"}),
        ),
        pod(labels.clone(), json!({"phase": ["Running"]})),
        pod(json!({"model.aibrix.ai/name": 5}), ready("10.0.0.1")),
        pod(json!({"model.aibrix.ai/name": ""}), ready("10.0.0.1")),
        raw(json!({"metadata": {"namespace": "ns"}, "status": {}})),
        raw(json!({"metadata": {"name": "p"}, "spec": "nonsense"})),
        raw(json!("just a string")),
    ];
    for case in &cases {
        let bad = parse_pod(case, &opts).unwrap_err();
        assert!(!bad.reason.is_empty());
    }
}
