//! The ext_proc gRPC server on its listener (TCP or Unix socket, plain or
//! mutual TLS), with per-connection stream and liveness bounds.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use futures::StreamExt;
use tonic::transport::{Server, ServerTlsConfig};

use crate::batched_io::BatchedWrites;
use crate::extproc::{ExtProcService, FailureLog};
use crate::listen::{ListenAddr, ListenError, bind_unix};

/// A bound ext_proc listener.
#[derive(Debug)]
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    /// The socket file is removed when the server stops.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Bound {
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ListenError> {
        let bind_error = |source| ListenError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Tcp(tcp) => Ok(Self::Tcp(
                tokio::net::TcpListener::bind(tcp)
                    .await
                    .map_err(bind_error)?,
            )),
            ListenAddr::Unix(path) => Ok(Self::Unix(bind_unix(path)?, path.clone())),
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Self::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

#[derive(Debug)]
pub struct ServeOptions {
    pub tls: Option<ServerTlsConfig>,
    pub max_streams_per_connection: u32,
}

/// HTTP/2 PING interval: a peer that vanished without closing (host crash,
/// cut network) has its connection and streams released within
/// interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves ext_proc (`service`) and the failure access log (`failures`) on
/// `bound` until `signal`, then lets open streams finish.
pub async fn serve(
    bound: Bound,
    service: ExternalProcessorServer<ExtProcService>,
    failures: AccessLogServiceServer<FailureLog>,
    options: ServeOptions,
    signal: impl Future<Output = ()>,
) -> Result<(), ListenError> {
    // Every connection's socket is wrapped in `BatchedWrites` (replies
    // batched into few writes, see there). Flow-control windows: Envoy sends a request body without waiting for
    // the agent, so a stream window of 4 MiB lets any ordinary prompt arrive
    // without a WINDOW_UPDATE round trip, and 16 MiB per connection covers
    // 256 concurrent streams of 64 KiB bodies (larger bodies still flow, one
    // window update at a time). max_concurrent_streams matches the shipped
    // Envoy clusters (see --max-streams-per-connection).
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_concurrent_streams(Some(options.max_streams_per_connection))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder.add_service(service).add_service(failures);
    match bound {
        Bound::Tcp(listener) => {
            // tonic's own tcp_nodelay applies only to listeners it binds itself.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    BatchedWrites(tcp)
                })
            });
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        }
        Bound::Unix(listener, path) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
                .map(|conn| conn.map(BatchedWrites));
            let result = router.serve_with_incoming_shutdown(incoming, signal).await;
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    Ok(())
}
