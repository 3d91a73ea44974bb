//! Project automation: `cargo xtask setup | test | demo | bench`.

mod bench;
mod demo;
mod fuzz;
mod kernel_demo;
mod setup;
mod setup_deploy;
mod setup_ebpf;
mod setup_envoy;
mod setup_python;
mod soak;
mod stats;
mod test;
mod workload;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Steer project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what builds and tests need (idempotent).
    Setup,
    /// Setup, format and lint checks, then every test.
    Test,
    /// Start 4 mock engines + agent + real Envoy, route a mixed workload
    /// with every strategy, print a summary, stop.
    Demo {
        /// Keep everything running after the summary until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Measure decision overhead, agent CPU per decision, routing quality and
    /// (as root) the kernel datapath; writes target/bench/bench.json and bench.md.
    Bench(bench::BenchArgs),
    /// Run every libFuzzer target (cargo fuzz) for N seconds each, seeded from
    /// fuzz/corpus; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Mixed load through real Envoy for N minutes (errors, RSS, fds, decision
    /// p99 at start and end), then the agent's RSS with 1,000 pods and 1M
    /// prefix blocks; writes target/soak/soak.json and soak.md.
    Soak(soak::SoakArgs),
    /// Bench helper: N connect()+close to ADDR, per-connect ns as JSON.
    #[command(name = "__connect-loop", hide = true)]
    ConnectLoop {
        addr: std::net::SocketAddrV4,
        count: usize,
    },
    /// Bench helper: N handshakes + N GET /health to ADDR, ns as JSON.
    #[command(name = "__rtt-probe", hide = true)]
    RttProbe {
        addr: std::net::SocketAddr,
        count: usize,
    },
    /// Bench helper: connect-benchmark listener (prints `listening on ADDR`).
    #[command(name = "__listener", hide = true)]
    Listener { addr: std::net::SocketAddr },
    /// Bench helper: TCP echo server (prints `listening on ADDR`).
    #[command(name = "__echo-server", hide = true)]
    EchoServer { addr: std::net::SocketAddr },
    /// Bench helper: N request-response round trips to an echo server.
    #[command(name = "__ping-pong", hide = true)]
    PingPong {
        addr: std::net::SocketAddr,
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test => test::run(),
        Command::Demo { keep_running } => demo::run(keep_running),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Soak(args) => soak::run(args),
        Command::ConnectLoop { addr, count } => bench::probes::connect_loop(addr, count),
        Command::RttProbe { addr, count } => bench::probes::rtt_probe(addr, count),
        Command::Listener { addr } => bench::probes::listener(addr),
        Command::EchoServer { addr } => bench::probes::echo_server(addr),
        Command::PingPong { addr, count, size } => bench::probes::ping_pong(addr, count, size),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
