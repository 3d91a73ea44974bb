//! Idempotent installs: a second run only checks and costs well under a second.

use std::path::PathBuf;

use anyhow::Result;

use crate::{root, sh};

/// The Python used for the OpenAI SDK client test.
pub fn venv_python() -> PathBuf {
    root().join("target/steer-venv/bin/python")
}

pub fn run() -> Result<()> {
    rust_components()?;
    crate::setup_ebpf::run()?;
    python_sdk()?;
    crate::setup_deploy::run()?;
    crate::setup_envoy::run()?;
    Ok(())
}

fn rust_components() -> Result<()> {
    for component in ["rustfmt", "clippy"] {
        let present = std::process::Command::new("cargo")
            .args([component_cmd(component), "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            sh("rustup", &["component", "add", component])?;
        }
    }
    Ok(())
}

fn component_cmd(component: &str) -> &'static str {
    if component == "rustfmt" {
        "fmt"
    } else {
        "clippy"
    }
}

/// A private venv with the `openai` SDK: tests talk to Steer with the client
/// users actually run.
fn python_sdk() -> Result<()> {
    let python = venv_python();
    let ready = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    let venv = root().join("target/steer-venv");
    let venv = venv.to_string_lossy();
    sh("python3", &["-m", "venv", &venv])?;
    let pip = format!("{venv}/bin/pip");
    sh(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai>=1.40,<3",
        ],
    )?;
    Ok(())
}
