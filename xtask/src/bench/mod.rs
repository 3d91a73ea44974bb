//! `cargo xtask bench`: latency, throughput and CPU per request through real
//! Envoy (plain, with a no-op ext_proc, with Steer on each shipped config),
//! routing quality on a shared-prefix workload, and (as root) the kernel
//! datapath: connect() cost, kernel vs userspace RTT, sk_msg on/off. Writes
//! JSON, markdown and a chart to `target/bench/` and prints the tables. Every loop is bounded
//! in count and time; targets are reported, never asserted (this machine is
//! shared).

mod kernel;
mod overhead;
mod overhead_report;
mod paths;
mod peers;
pub mod probes;
mod quality;
mod report;

use anyhow::Result;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Fewer requests per case (a quick look, noisier numbers).
    #[arg(long)]
    pub quick: bool,
    /// Only the kernel datapath benchmarks (root); writes bench-kernel.json/.md.
    #[arg(long)]
    pub kernel_only: bool,
    /// Interleaved rounds per overhead case (at least 3).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Only the overhead cases whose name contains this (e.g. `c64`); skips
    /// the quality and kernel benchmarks and writes bench-partial.json/.md.
    #[arg(long)]
    pub case: Option<String>,
    /// With `--case`: only these paths (comma-separated, e.g.
    /// `floor-one-wait,steer`).
    #[arg(long, value_delimiter = ',', requires = "case")]
    pub path: Vec<String>,
}

impl BenchArgs {
    fn partial(&self) -> bool {
        self.case.is_some()
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if !args.kernel_only && !args.partial() {
            eprintln!("installing the peer routers (vllm-router, sglang-router)...");
            peers::install()?;
        }
        eprintln!("building release binaries...");
        steer_e2e::ensure_built("release")?;
        let mut report = report::Report::default();
        if args.partial() {
            overhead::run(&args, &mut report).await?;
            // A partial run must not overwrite the full report.
            return report.write("bench-partial");
        }
        if !args.kernel_only {
            overhead::run(&args, &mut report).await?;
            quality::run(&args, &mut report).await?;
        }
        kernel::run(&args, &mut report).await?;
        report.write(if args.kernel_only {
            "bench-kernel"
        } else {
            "bench"
        })
    })
}
