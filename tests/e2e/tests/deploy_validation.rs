//! Offline validation of `deploy/` (Kubernetes manifests, custom resources,
//! Envoy configs, dashboard, Dockerfile) by `tests/deploy/validate.py`, with the
//! freshly built agent for the checks that need it (flags, config parsing).

use std::path::PathBuf;
use std::process::Command;

/// What the validator imports; `cargo xtask setup` installs it into the venv.
const IMPORTS: &str =
    "import kubernetes_validate, yaml, jsonschema, envoy.config.bootstrap.v3.bootstrap_pb2";

#[test]
fn deploy_artifacts_validate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("STEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/steer-venv/bin/python"));
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let missing = if !python.exists() {
        Some(format!("Python venv missing at {}", python.display()))
    } else {
        let imports = Command::new(&python).args(["-c", IMPORTS]).output();
        match imports {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "{} lacks the validator's packages: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run {}: {e}", python.display())),
        }
    };
    if let Some(reason) = missing {
        let msg = format!("{reason} (run `cargo xtask setup`)");
        assert!(!ci, "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }

    steer_e2e::ensure_built("debug").expect("building the agent");
    let agent = steer_e2e::binary_dir("debug").join("steer-agent");
    let output = Command::new(&python)
        .arg(root.join("tests/deploy/validate.py"))
        .env("STEER_AGENT_BIN", &agent)
        .output()
        .expect("running tests/deploy/validate.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy/ validation failed:\n{stdout}\n{stderr}"
    );
    // The validator's summary (`N passed, 0 failed, 0 skipped`) in the test log.
    let summary = stdout.lines().last().unwrap_or_default();
    eprintln!("tests/deploy/validate.py: {summary}");
    assert!(
        summary.contains(" passed, 0 failed"),
        "unexpected summary: {summary}"
    );
}

/// Every shipped Envoy bootstrap, as shipped, passes `envoy --mode validate`
/// (full config load, every extension resolved) on every supported version.
#[test]
fn shipped_envoy_configs_validate_on_every_supported_envoy() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    for version in steer_e2e::ENVOY_VERSIONS {
        let bin = match steer_e2e::envoy::envoy_binary(version) {
            Ok(bin) => bin,
            Err(e) => {
                assert!(!ci, "{e}");
                eprintln!("skipping: {e}");
                return;
            }
        };
        for config in [
            steer_e2e::EnvoyConfig::OneWait,
            steer_e2e::EnvoyConfig::FullDuplex,
        ] {
            let output = Command::new(&bin)
                .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                .arg(config.path())
                .output()
                .expect("running envoy --mode validate");
            assert!(
                output.status.success(),
                "Envoy {version} rejects {}:\n{}",
                config.file_name(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
