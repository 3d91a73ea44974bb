//! Idempotent installs: a second run only checks and costs well under a second.

use anyhow::Result;

use crate::sh;

pub fn run() -> Result<()> {
    rust_components()?;
    crate::setup_ebpf::run()?;
    crate::setup_python::run()?;
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
