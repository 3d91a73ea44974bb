//! What `tests/deploy/validate.py` needs, in the shared venv (`target/steer-venv`,
//! created by `setup_python`): Kubernetes schemas, Envoy's protobuf API and
//! a YAML parser, at pinned versions. One `python -c` checks imports and pins,
//! so a second run costs a single process spawn.

use std::process::Command;

use anyhow::Result;

use crate::{setup_python::venv_python, sh};

/// (pip name, distribution name for importlib.metadata, version).
const PACKAGES: [(&str, &str, &str); 3] = [
    // Kubernetes OpenAPI schemas (1.25 .. 1.37) for core kinds; brings jsonschema.
    ("kubernetes-validate", "kubernetes-validate", "1.37.0"),
    // Envoy's API (envoyproxy/data-plane-api) as Python protobuf; brings protobuf.
    ("xds-protos", "xds-protos", "1.85.0"),
    ("pyyaml", "PyYAML", "6.0.3"),
];

pub fn run() -> Result<()> {
    let python = venv_python();
    let pins = PACKAGES
        .iter()
        .map(|(_, dist, version)| format!("v('{dist}') == '{version}'"))
        .collect::<Vec<_>>()
        .join(" and ");
    let check = format!(
        "import kubernetes_validate, yaml, jsonschema, envoy.config.bootstrap.v3.bootstrap_pb2; \
         from importlib.metadata import version as v; assert {pins}"
    );
    let ready = Command::new(&python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    let python = python.to_string_lossy();
    let specs: Vec<String> = PACKAGES
        .iter()
        .map(|(name, _, version)| format!("{name}=={version}"))
        .collect();
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    args.extend(specs.iter().map(String::as_str));
    sh(&python, &args)
}
