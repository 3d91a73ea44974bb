//! The project's Python venv (`target/steer-venv`): the `openai` SDK, so
//! tests talk to Steer with the client users run; `setup_deploy` and
//! `setup_envoy` install into the same venv.

use std::path::PathBuf;

use anyhow::Result;

use crate::{root, sh};

/// The venv's Python.
pub fn venv_python() -> PathBuf {
    root().join("target/steer-venv/bin/python")
}

/// A private venv with the `openai` SDK: tests talk to Steer with the client
/// users actually run.
pub fn run() -> Result<()> {
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
