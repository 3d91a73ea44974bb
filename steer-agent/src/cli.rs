//! Command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{DatapathMode, PoolFlag};
use crate::listen::ListenAddr;

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
    Run(Box<RunArgs>),
    /// Print the pinned eBPF tables: VIPs and their chosen pod, per-pod kernel
    /// RTT and traffic, program counters.
    Maps {
        #[arg(long, default_value = steer_ebpf_abi::PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check what the eBPF datapath needs (kernel, BTF, bpffs, cgroup v2,
    /// privileges, embedded object) and say what is missing.
    Doctor {
        #[arg(long, default_value = steer_ebpf_abi::PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryMode {
    Static,
    Kubernetes,
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
    /// least-kv-cache, prefix-cache, session-affinity, least-latency,
    /// prefix-rendezvous (a `scheduler.profiles` name only in the config
    /// file's `default_strategy`).
    #[arg(long, value_name = "STRATEGY")]
    pub default_strategy: Option<String>,

    /// Where Envoy's ext_proc filter connects (gRPC): IP:PORT, or
    /// unix:/path for a Unix domain socket shared with a node-local Envoy.
    /// Loopback by default; an address other hosts can reach should come with
    /// mutual TLS (--ext-proc-tls-*).
    #[arg(long, default_value = "127.0.0.1:9002", env = "STEER_EXT_PROC_ADDR")]
    pub ext_proc_addr: ListenAddr,

    /// PEM certificate the ext_proc server presents (mutual TLS; needs
    /// --ext-proc-tls-key and --ext-proc-tls-client-ca too).
    #[arg(long, value_name = "PEM")]
    pub ext_proc_tls_cert: Option<PathBuf>,

    /// PEM private key of --ext-proc-tls-cert.
    #[arg(long, value_name = "PEM")]
    pub ext_proc_tls_key: Option<PathBuf>,

    /// PEM CA bundle: Envoy must present a client certificate signed by it.
    #[arg(long, value_name = "PEM")]
    pub ext_proc_tls_client_ca: Option<PathBuf>,

    /// Concurrent ext_proc streams (requests) one HTTP/2 connection may carry
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); Envoy opens more connections beyond it.
    #[arg(long, default_value_t = 8192, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// A stream Envoy sends nothing on for this long is ended: a decided
    /// request's pod in-flight count is released and Envoy carries on without
    /// the agent. Keep it above the longest response your routes allow.
    #[arg(long, default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_idle_timeout_seconds: u64,

    /// Prometheus /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9090", env = "STEER_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Runtime threads. 1 (default) runs everything on one event loop, like an
    /// Envoy worker; raise it only if one core is not enough.
    #[arg(long, default_value_t = 1, env = "STEER_THREADS")]
    pub threads: usize,

    /// eBPF datapath: auto (use it when possible), off (header-only),
    /// required (fail to start without it).
    #[arg(long, value_enum)]
    pub datapath: Option<DatapathMode>,

    /// Where maps and links are pinned (on bpffs).
    #[arg(long, value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,

    /// cgroup v2 directory whose processes get VIP steering and latency
    /// measurement (default: the cgroup v2 root).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,

    /// Interface whose per-pod traffic TC counts; repeatable.
    #[arg(long = "tc-interface", value_name = "IFACE")]
    pub tc_interfaces: Vec<String>,

    /// Redirect node-local socket pairs with sk_msg (off by default).
    #[arg(long)]
    pub sk_msg: bool,

    /// On clean shutdown, detach the eBPF programs and remove the pins
    /// (default: leave them so steering survives a restart).
    #[arg(long)]
    pub unpin: bool,

    /// Also route every model an engine lists at /v1/models (LoRA adapters,
    /// aliases) to that engine (also `discover_models: true` in the config).
    #[arg(long)]
    pub discover_models: bool,

    /// Where endpoints come from: static (config file and --pool) or
    /// kubernetes (pods by label and InferencePools, in-cluster or KUBECONFIG;
    /// the config file still gives per-model strategy and VIP).
    #[arg(long, value_enum, default_value_t = DiscoveryMode::Static, env = "STEER_DISCOVERY")]
    pub discovery: DiscoveryMode,

    /// Namespace to watch (default: all namespaces).
    #[arg(long, value_name = "NS", env = "STEER_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,

    /// Pod label naming the model a pod serves.
    #[arg(long, default_value = crate::discovery::DEFAULT_MODEL_LABEL)]
    pub k8s_model_label: String,

    /// Pod label holding the engine port.
    #[arg(long, default_value = crate::discovery::DEFAULT_PORT_LABEL)]
    pub k8s_port_label: String,

    /// Engine port for pods without the port label.
    #[arg(long, default_value_t = 8000)]
    pub k8s_default_port: u16,

    /// Also watch inference.networking.k8s.io/v1 InferencePools.
    #[arg(long)]
    pub k8s_inference_pools: bool,

    /// This node's name (downward API), to tell node-local pods apart.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// How often the config file is checked for changes, in milliseconds
    /// (SIGHUP checks at once).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub reload_interval_ms: u64,

    /// After SIGTERM: `/readyz` fails at once, the agent keeps serving this
    /// long (load balancers and Envoy move away), then stops accepting.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub shutdown_grace_seconds: u64,

    /// After the grace: how long open streams may finish before they are cut.
    /// Grace + drain must stay below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub drain_timeout_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_proc_listens_on_loopback_by_default() {
        let cli = Cli::try_parse_from(["steer-agent", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.ext_proc_addr, "127.0.0.1:9002".parse().unwrap());
        assert!(!args.ext_proc_addr.is_remote());
    }
}
