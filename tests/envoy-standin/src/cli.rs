//! Command line: the handful of Envoy settings that change what the ext_proc server sees.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;

const ABOUT: &str = "TEST/DEMO/BENCH TOOL - a stand-in for Envoy with the ext_proc HTTP filter and an \
ORIGINAL_DST cluster, for machines where Envoy cannot be installed. Production uses real Envoy.";

const LONG_ABOUT: &str = "TEST/DEMO/BENCH TOOL - a stand-in for Envoy with the ext_proc HTTP filter and an \
ORIGINAL_DST cluster, for machines where Envoy cannot be installed. Production uses real Envoy.

Every client request opens one ExternalProcessor/Process stream and is driven the way Envoy drives it \
(message order, end_of_stream flags, body modes, header mutation rules, timeouts, local replies), then \
forwarded to the ip:port named by --upstream-header. Once listening it prints exactly one line, \
`envoy-standin listening on <ip:port>`, to stdout. Logs go to stderr (RUST_LOG, default warn).";

#[derive(Parser, Debug, Clone)]
#[command(name = "envoy-standin", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Address for client HTTP/1.1 traffic (port 0 picks a free port; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: SocketAddr,

    /// The ext_proc gRPC server, host:port (one shared HTTP/2 channel).
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub ext_proc: String,

    /// processing_mode.request_body_mode (full-duplex = FULL_DUPLEX_STREAMED).
    #[arg(long, value_enum, default_value_t = RequestBodyMode::Buffered)]
    pub request_body_mode: RequestBodyMode,

    /// processing_mode.response_body_mode.
    #[arg(long, value_enum, default_value_t = ResponseBodyMode::Streamed)]
    pub response_body_mode: ResponseBodyMode,

    /// message_timeout: how long to wait for each reply (Envoy arms none in full-duplex mode).
    #[arg(long, default_value_t = 200)]
    pub message_timeout_ms: u64,

    /// failure_mode_allow: carry on without the ext_proc server when it fails.
    #[arg(long)]
    pub failure_mode_allow: bool,

    /// allow_mode_override: honour mode_override in replies to headers messages.
    #[arg(long)]
    pub allow_mode_override: bool,

    /// Envoy's request buffer limit: a buffered body larger than this gets a 413 local reply.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_bytes: usize,

    /// Largest body chunk sent per body message in streamed/full-duplex modes (Envoy's read chunks).
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_size: u64,

    /// ORIGINAL_DST http_header_name: the first value (ip:port) picks the upstream.
    #[arg(long, default_value = "target-pod")]
    pub upstream_header: String,

    /// Add x-standin-upstream, x-standin-route-cache-cleared, x-standin-dynamic-metadata and
    /// (on local replies) x-standin-details to every response, so tests can see what the
    /// ext_proc server told "Envoy".
    #[arg(long)]
    pub debug_headers: bool,

    /// Worker threads, like Envoy's --concurrency (1 = one event loop).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// Benchmark baseline: skip ext_proc entirely and forward every request to this ip:port
    /// (the same proxy path with the ext_proc filter removed).
    #[arg(long, value_name = "IP:PORT")]
    pub static_upstream: Option<SocketAddr>,
}

impl Args {
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }

    pub fn chunk_bytes(&self) -> usize {
        usize::try_from(self.chunk_size).unwrap_or(usize::MAX)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyMode {
    Buffered,
    Streamed,
    FullDuplex,
}

impl RequestBodyMode {
    pub fn envoy(self) -> BodySendMode {
        match self {
            Self::Buffered => BodySendMode::Buffered,
            Self::Streamed => BodySendMode::Streamed,
            Self::FullDuplex => BodySendMode::FullDuplexStreamed,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyMode {
    Streamed,
    None,
}

impl ResponseBodyMode {
    pub fn envoy(self) -> BodySendMode {
        match self {
            Self::Streamed => BodySendMode::Streamed,
            Self::None => BodySendMode::None,
        }
    }
}
