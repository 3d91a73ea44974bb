//! `mock-engine` — a TEST/DEMO tool, not an inference server.
//!
//! It imitates a vLLM OpenAI-compatible server closely enough for Steer's
//! integration tests, `cargo xtask demo` and `cargo xtask bench`: it generates
//! no real text, but it simulates a prefix (KV block) cache, a bounded batch
//! with a waiting queue, and prefill/decode delays, so a router that sends
//! requests to the engine holding their prefix shows up as lower latency.
//! It exports vLLM/SGLang-style Prometheus metrics and lets tests inject
//! faults through `/admin/*`.

mod anthropic;
mod cache;
mod embed;
mod engine;
mod metrics;
mod openai;
mod server;
mod stream;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use clap::Parser;
use tokio::net::TcpListener;

use crate::metrics::Flavor;

/// TEST/DEMO TOOL: a fake vLLM-like OpenAI server with a simulated prefix
/// cache and latency model. Not for production use.
#[derive(Parser, Debug, Clone)]
#[command(name = "mock-engine", version, about, long_about)]
pub(crate) struct Args {
    /// Listen address; port 0 picks a free port (printed on the ready line).
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub(crate) addr: SocketAddr,
    /// Served model name (repeatable); other models get a 404.
    #[arg(long = "model", default_value = "mock-model")]
    pub(crate) model: Vec<String>,
    /// Engine id for the `x-mock-engine` response header [default: the listen address].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Prefill time per uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 50)]
    pub(crate) prefill_us_per_token: u64,
    /// Decode time per generated token, in microseconds (0 = no delay).
    #[arg(long, default_value_t = 2000)]
    pub(crate) decode_us_per_token: u64,
    /// Tokens per KV block (the prefix cache granularity).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) block_tokens: u64,
    /// Prefix cache capacity in blocks (LRU).
    #[arg(long, default_value_t = 8192)]
    pub(crate) cache_blocks: u64,
    /// Requests served concurrently; the rest wait in a queue.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_running: u32,
    /// Total KV blocks, the denominator of the KV-cache usage gauge.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) kv_blocks_total: u64,
    /// Completion tokens when the request sets neither max_tokens nor max_completion_tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=131_072))]
    pub(crate) default_max_tokens: u64,
    /// Metric names exported on /metrics.
    #[arg(long, value_enum, default_value_t = Flavor::Vllm)]
    pub(crate) metrics_flavor: Flavor,
    /// LoRA slots reported in `vllm:lora_requests_info` (0: the metric is not exported).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_lora: u32,
    /// Adapters that metric reports as running (comma-separated).
    #[arg(long, default_value = "")]
    pub(crate) lora_running: String,
}

impl Args {
    pub(crate) fn served_models(&self) -> &[String] {
        &self.model
    }
}

/// Serves on `listener` until the process ends.
pub(crate) async fn run(listener: TcpListener, args: Args) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let name = args.name.clone().unwrap_or_else(|| addr.to_string());
    let app = server::router(engine::Engine::new(args, &name));
    // Without TCP_NODELAY, streamed tokens stall ~40 ms on Nagle + delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    // Harnesses wait for exactly this line.
    let mut out = std::io::stdout().lock();
    writeln!(out, "mock-engine listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, "serving");
    tokio::select! {
        r = run(listener, args) => r.context("serving")?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

/// Exits promptly on Ctrl-C or SIGTERM (open streams are simply dropped).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
