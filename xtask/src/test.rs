//! The one test command (README, `.ci/run`).

use std::process::Command;

use anyhow::Result;

use crate::{cargo, root, setup, setup_python};

pub fn run() -> Result<()> {
    setup::run()?;
    let cargo = cargo();
    let python = setup_python::venv_python();
    let step = |args: &[&str]| -> Result<()> {
        eprintln!("+ cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(args)
            .current_dir(root())
            // Prove the eBPF object builds: never a silent header-only build here.
            .env("STEER_REQUIRE_EBPF", "1")
            // The openai SDK test finds the venv's Python through this.
            .env("STEER_PYTHON", &python)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cargo {} failed: {status}",
            args.join(" ")
        );
        Ok(())
    };
    step(&["fmt", "--all", "--", "--check"])?;
    step(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
    step(&["build", "--bins", "--quiet"])?;
    // Fuzz smoke: every target briefly, from the committed corpus.
    crate::fuzz::run(&crate::fuzz::FuzzArgs {
        seconds: 10,
        target: Vec::new(),
    })?;
    step(&["test", "--no-fail-fast"])
}
