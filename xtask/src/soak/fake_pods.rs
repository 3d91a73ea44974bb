//! Many idle "engines" in this process: one loopback listener each,
//! answering every HTTP/1.1 request (keep-alive) with a small vLLM-style
//! `/metrics` text, so the agent's scrapes find them ready.

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
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let served = served.clone();
            tasks.spawn(async move {
                // Connections live in this task's set: aborted with it.
                let mut conns = JoinSet::new();
                while let Ok((conn, _)) = listener.accept().await {
                    let served = served.clone();
                    conns.spawn(async move { serve(conn, &served[i]).await });
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

/// Answers each request head on `conn` with [`METRICS`] until it closes.
async fn serve(mut conn: TcpStream, served: &AtomicU64) {
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{METRICS}",
        METRICS.len()
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        while let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..at + 4);
            if conn.write_all(reply.as_bytes()).await.is_err() {
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
