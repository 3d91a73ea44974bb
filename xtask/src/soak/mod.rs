//! `cargo xtask soak [--minutes N]`: a mixed load through real Envoy (half
//! SSE, some cancelled, some bad input) with the agent's and Envoy's memory,
//! fds and decision p99 compared between start and end, then the agent's
//! memory with 1,000 ready pods and 1M prefix blocks. Writes
//! `target/soak/soak.json` and `soak.md`; fails if a check fails.

mod fake_pods;
mod kinds;
mod load;
mod markdown;
mod memory;
mod mixed;
mod report;
mod sample;

use std::time::Duration;

use anyhow::{Result, bail, ensure};

#[derive(Clone, Copy, Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the mixed load runs (fractions allowed, e.g. 0.5).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
}

pub fn run(args: SoakArgs) -> Result<()> {
    ensure!(
        args.minutes.is_finite() && (0.1..=24.0 * 60.0).contains(&args.minutes),
        "--minutes must be between 0.1 and 1440"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!("building release binaries...");
        steer_e2e::ensure_built("release")?;
        eprintln!("soak: mixed load for {} min...", args.minutes);
        let mixed = mixed::run(Duration::from_secs_f64(args.minutes * 60.0)).await?;
        eprintln!(
            "soak: memory with {} pods and {} blocks...",
            memory::PODS,
            memory::TARGET_BLOCKS
        );
        let memory = memory::run().await?;
        let report = report::Report::new(mixed, memory);
        report.write()?;
        if !report.passed() {
            bail!("soak failed: see the checks above");
        }
        Ok(())
    })
}
