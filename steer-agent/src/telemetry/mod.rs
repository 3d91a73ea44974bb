//! Prometheus metrics, the `/metrics` `/healthz` `/readyz` server, and logs.

mod collector;
mod discovery_collector;
mod http;
mod kernel_collector;
mod metrics;
mod pool_collector;

pub use discovery_collector::DiscoveryCollector;
pub use http::{AdminState, serve_admin};
pub use metrics::{ErrorKind, Metrics};

/// Structured logs on stderr; `RUST_LOG` filters, `STEER_LOG_FORMAT=json`
/// switches to JSON lines for log shippers.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var("STEER_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    drop(result);
}
