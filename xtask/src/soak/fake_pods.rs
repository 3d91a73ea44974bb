//! Many idle "engines" in this process: one loopback listener each,
//! answering every HTTP/1.1 request (keep-alive) with a vLLM-style
//! `/metrics` text of vLLM's size, so the agent's scrapes find them ready and
//! its per-pod buffers are what a real engine makes them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The gauges the agent reads (steer-agent/src/pool/engine_metrics.rs).
const METRICS: &str = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"big\"} 0\n\
# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"big\"} 0\n\
# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"big\"} 0.1\n";

/// vLLM's answer is tens of KB, most of it latency histograms.
const METRICS_BYTES: usize = 48 << 10;

/// [`METRICS`] followed by histogram buckets up to [`METRICS_BYTES`].
fn metrics_text() -> String {
    use std::fmt::Write;
    let mut text = String::from(METRICS);
    let mut histogram = 0;
    while text.len() < METRICS_BYTES {
        let name = format!("vllm:request_latency_{histogram}_seconds");
        let _ = writeln!(text, "# TYPE {name} histogram");
        for le in [
            "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1.0", "5.0", "10.0", "+Inf",
        ] {
            let _ = writeln!(
                text,
                "{name}_bucket{{engine=\"0\",le=\"{le}\",model_name=\"big\"}} 0"
            );
        }
        histogram += 1;
    }
    text
}

/// The listeners; dropping this stops them and their connections.
pub struct FakePods {
    pub addrs: Vec<SocketAddr>,
    /// Per pod, requests answered.
    served: Arc<Vec<AtomicU64>>,
    _tasks: JoinSet<()>,
}

impl FakePods {
    pub async fn start(n: usize) -> Result<Self> {
        let served: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let reply: Arc<[u8]> = {
            let body = metrics_text();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
            .into()
        };
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let served = served.clone();
            let reply = reply.clone();
            tasks.spawn(async move {
                // Connections live in this task's set: aborted with it.
                let mut conns = JoinSet::new();
                while let Ok((conn, _)) = listener.accept().await {
                    let served = served.clone();
                    let reply = reply.clone();
                    conns.spawn(async move { serve(conn, &reply, &served[i]).await });
                    while conns.try_join_next().is_some() {}
                }
            });
        }
        Ok(Self {
            addrs,
            served,
            _tasks: tasks,
        })
    }

    /// How many pods have answered at least one request.
    pub fn scraped(&self) -> usize {
        self.served
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// Requests answered by all pods.
    pub fn requests(&self) -> u64 {
        self.served.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Answers each request head on `conn` with `reply` until it closes.
async fn serve(mut conn: TcpStream, reply: &[u8], served: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        while let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..at + 4);
            if conn.write_all(reply).await.is_err() {
                return;
            }
            served.fetch_add(1, Ordering::Relaxed);
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
