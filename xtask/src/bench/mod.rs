//! `cargo xtask bench`: decision overhead, agent CPU per decision, and
//! routing quality on a shared-prefix workload. Writes JSON + markdown to
//! `target/bench/` and prints the table. Every loop is bounded in count and
//! time; targets are reported, never asserted (this machine is shared).

mod overhead;
mod quality;
mod report;

use anyhow::Result;

#[derive(Clone, Copy, Debug, clap::Args)]
pub struct BenchArgs {
    /// Fewer requests per case (a quick look, noisier numbers).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!("building release binaries...");
        steer_e2e::ensure_built("release")?;
        let mut report = report::Report::default();
        overhead::run(args, &mut report).await?;
        quality::run(args, &mut report).await?;
        report.write()
    })
}
