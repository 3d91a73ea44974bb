//! Command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::PoolFlag;

/// Steer: a node-local LLM traffic steerer for Envoy.
///
/// Envoy calls the agent through its ext_proc filter for every request; the
/// agent reads the OpenAI-style body (model, prompt, stream), picks the pod
/// with a routing strategy, and answers with the `target-pod` header (for an
/// ORIGINAL_DST cluster) and the Gateway API Inference Extension header and
/// `envoy.lb` metadata.
#[derive(Debug, Parser)]
#[command(name = "steer-agent", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_proc and metrics until SIGINT/SIGTERM.
    ///
    /// Example: steer-agent run --pool qwen=127.0.0.1:8001,127.0.0.1:8002
    Run(RunArgs),
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (.yaml, .yml, .toml or .json): models, endpoints,
    /// strategies, limits. Reloaded when it changes.
    #[arg(long, short = 'c', env = "STEER_CONFIG")]
    pub config: Option<PathBuf>,

    /// A model and its engine endpoints; repeatable. Overrides the config
    /// file's endpoints for that model.
    #[arg(long = "pool", value_name = "MODEL=IP:PORT[,IP:PORT...]")]
    pub pools: Vec<PoolFlag>,

    /// Routing strategy when neither the `routing-strategy` header nor the
    /// model's config names one: random, round-robin, least-request,
    /// least-kv-cache, prefix-cache, session-affinity.
    #[arg(long, value_name = "STRATEGY")]
    pub default_strategy: Option<String>,

    /// Where Envoy's ext_proc filter connects (gRPC).
    #[arg(long, default_value = "0.0.0.0:9002", env = "STEER_EXT_PROC_ADDR")]
    pub ext_proc_addr: SocketAddr,

    /// Prometheus /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9090", env = "STEER_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Runtime threads. 1 (default) runs everything on one event loop, like an
    /// Envoy worker; raise it only if one core is not enough.
    #[arg(long, default_value_t = 1, env = "STEER_THREADS")]
    pub threads: usize,

    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub reload_interval_ms: u64,
}
