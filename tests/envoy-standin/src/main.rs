//! envoy-standin: a TEST/DEMO/BENCH TOOL standing in for Envoy (ext_proc HTTP filter plus an
//! ORIGINAL_DST cluster) where Envoy cannot be installed. Production uses real Envoy.
//!
//! It behaves like Envoy on the wire toward the ext_proc server - message order, end_of_stream
//! flags, body modes (buffered, streamed, full-duplex), header mutation rules, message timeout,
//! failure handling and local replies - so tests against it mean something. Envoy behaviours
//! that catch servers out are kept on purpose:
//! - header mutations read only `raw_value` (a `value`-only entry sets an empty header; both
//!   set is a 500), an unset append action overwrites, `:authority`/`host`/`:method`/`:scheme`
//!   and `x-envoy-*` cannot be changed;
//! - in BUFFERED mode a body mutation must agree with content-length (else 500); streamed and
//!   full-duplex modes drop content-length and ignore header mutations in body replies;
//! - a clean close of the stream continues without ext_proc, a gRPC error is a 500, a late
//!   reply a 504 (no timer in full-duplex); mode_override also resets the response body mode;
//! - router replies (413, 503) go through the response phase, so the server sees them.
//!
//! Not modelled: TLS, HTTP/2 clients, request trailers, attributes, observability mode.

mod body;
mod cli;
mod duplex;
mod error;
mod exchange;
mod extproc;
mod headers;
mod modes;
mod mutation;
mod pump;
mod response;
mod server;
mod upstream;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    // Like Envoy's --concurrency: 1 is a single event loop (no cross-thread wake-ups).
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: cli::Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let uri = if args.ext_proc.contains("://") {
        args.ext_proc.clone()
    } else {
        format!("http://{}", args.ext_proc)
    };
    let channel = Endpoint::from_shared(uri)
        .with_context(|| format!("bad --ext-proc address {}", args.ext_proc))?
        .tcp_nodelay(true)
        // Envoy's HTTP/2 windows are large; small ones would throttle big bodies artificially.
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .connect_lazy();
    let ext_proc = ExternalProcessorClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(exchange::State {
        args,
        ext_proc,
        upstream: upstream::client(),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "envoy-standin listening on {addr}")?;
        out.flush()?;
    }
    server::serve(listener, state).await;
    Ok(())
}
