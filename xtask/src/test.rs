//! The one test command (README, `.ci/run`).

use anyhow::Result;

use crate::{cargo, setup, sh};

pub fn run() -> Result<()> {
    setup::run()?;
    let cargo = cargo();
    sh(&cargo, &["fmt", "--all", "--", "--check"])?;
    sh(
        &cargo,
        &["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"],
    )?;
    sh(&cargo, &["build", "--bins", "--quiet"])?;
    // The SDK test finds the venv's Python through this variable.
    let python = setup::venv_python();
    eprintln!("+ STEER_PYTHON={} cargo test", python.display());
    let status = std::process::Command::new(&cargo)
        .args(["test", "--no-fail-fast"])
        .env("STEER_PYTHON", &python)
        .current_dir(crate::root())
        .status()?;
    anyhow::ensure!(status.success(), "tests failed: {status}");
    Ok(())
}
