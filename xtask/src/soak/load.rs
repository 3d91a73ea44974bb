//! The mixed load: `workers` tasks send request after request through
//! Envoy until a deadline (or a request cap), each request bounded by a
//! timeout, and count what came back per kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use steer_e2e::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::kinds::{Kind, excerpt};

/// No request may take longer than this, whatever its kind.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Unexpected answers kept as examples, per kind.
const EXAMPLES: usize = 5;

#[derive(Clone, Debug, Default, Serialize)]
pub struct KindTally {
    pub sent: u64,
    pub unexpected: u64,
    pub examples: Vec<String>,
}

/// Per kind, what was sent and what went wrong.
pub type Tally = BTreeMap<Kind, KindTally>;

/// Requests answered so far (read by the sampler for req/s windows).
pub type Done = Arc<AtomicU64>;

pub async fn drive(
    gateway: SocketAddr,
    workers: usize,
    until: Instant,
    cap: u64,
    done: Done,
) -> Tally {
    let client = Client::default();
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, next, tally, done) =
            (client.clone(), next.clone(), tally.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cap || Instant::now() >= until {
                    break;
                }
                let kind = Kind::of(i);
                let outcome =
                    match tokio::time::timeout(REQUEST_TIMEOUT, one(&client, gateway, kind, i))
                        .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                    };
                done.fetch_add(1, Ordering::Relaxed);
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                let entry = tally.entry(kind).or_default();
                entry.sent += 1;
                if let Err(why) = outcome {
                    entry.unexpected += 1;
                    if entry.examples.len() < EXAMPLES {
                        entry.examples.push(format!("request {i}: {why}"));
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.clone()
}

/// Sends request `i` of `kind`; `Err` says why its answer was unexpected.
async fn one(client: &Client, gateway: SocketAddr, kind: Kind, i: u64) -> Result<(), String> {
    let (headers, body) = kind.request(i);
    if kind == Kind::Cancelled {
        // Drop after 1 or 2 chunks.
        let chunks = 1 + (i / 7 % 2) as usize;
        return cancel_after(gateway, &headers, &body, chunks)
            .await
            .map_err(|e| format!("{e:#}"));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match client
        .post(gateway, "/v1/chat/completions", &headers, body)
        .await
    {
        Ok(reply) => kind.check(&reply),
        Err(e) => Err(format!("transport: {e:#}")),
    }
}

/// Starts an SSE request on its own connection, reads until `chunks` SSE
/// events have arrived, then closes the connection mid-stream.
async fn cancel_after(
    gateway: SocketAddr,
    headers: &[(&str, String)],
    body: &str,
    chunks: usize,
) -> Result<()> {
    let mut conn = TcpStream::connect(gateway).await.context("connect")?;
    conn.set_nodelay(true)?;
    let mut head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {gateway}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            bail!(
                "connection closed before {chunks} chunk(s): {}",
                excerpt(&String::from_utf8_lossy(&seen))
            );
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if !text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n") {
            bail!("want 200, got {}", excerpt(&text));
        }
        if text.matches("data: ").count() >= chunks {
            return Ok(());
        }
    }
}
