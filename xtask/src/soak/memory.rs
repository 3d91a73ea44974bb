//! Phase 2: the agent's memory with 1,000 ready pods and 1M prefix blocks.
//! The pods are listeners of this process; requests go straight to the
//! agent's ext_proc port, each a unique prompt of exactly
//! `MAX_BLOCKS` × `BLOCK_BYTES` bytes, so each records `MAX_BLOCKS` blocks
//! that no other request shares (the chain hash starts from a unique first
//! block).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use steer_e2e::extproc_client::{ExtProcClient, Routed};
use steer_e2e::{Client, Proc, binary_dir};

use super::fake_pods::FakePods;
use super::sample::{self, ProcStats};

pub const PODS: usize = 1000;
pub const TARGET_BLOCKS: usize = 1_000_000;
const BLOCK_BYTES: usize = 256;
const MAX_BLOCKS: usize = 4096;
/// The shipped default (1 << 20): 16,384 slots per shard of 64, where 1M
/// blocks put 15,625 ± 125 (95 % full; at that fill the index loses almost
/// nothing, `prefix_table::tests::filling_to_95_percent_loses_almost_nothing`).
const CAPACITY: usize = 1 << 20;
pub const SCRAPE_MS: u64 = 1000;
const CONCURRENCY: usize = 4;
/// Early prompts sent again at the end: each must go back to its pod.
const RESENT: usize = 10;

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    pub pods: usize,
    pub pods_ready: f64,
    pub scrape_interval_ms: u64,
    pub scrapes_answered: u64,
    pub scrape_failures: f64,
    pub block_bytes: usize,
    pub max_blocks_per_request: usize,
    pub index_capacity_blocks: usize,
    pub requests: usize,
    /// `steer_decisions_total{strategy="prefix-cache"}` summed over pods.
    pub decisions: f64,
    /// decisions × `max_blocks_per_request` (every prompt fills it).
    pub blocks_recorded: f64,
    /// Early prompts resent that went back to their first pod.
    pub resent_same_pod: usize,
    pub resent: usize,
    pub before: ProcStats,
    pub after: ProcStats,
    pub seconds: f64,
}

pub async fn run() -> Result<Memory> {
    let started = Instant::now();
    let pods = FakePods::start(PODS).await?;
    let dir = TempDir::new()?;
    let config = dir.0.join("steer.yaml");
    let endpoints: Vec<String> = pods.addrs.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "default_strategy: prefix-cache\nscrape:\n  interval_ms: {SCRAPE_MS}\n  unhealthy_after: 3\n\
             prefix_cache:\n  block_bytes: {BLOCK_BYTES}\n  max_blocks_per_request: {MAX_BLOCKS}\n  index_capacity_blocks: {CAPACITY}\n\
             models:\n  big:\n    endpoints: [{}]\n",
            endpoints.join(", ")
        ),
    )?;
    let args = steer_e2e::standalone_agent_args(&config);
    let agent = Proc::spawn(
        &binary_dir("release").join("steer-agent"),
        &args,
        "steer-agent listening",
    )
    .await?;
    let (ext_proc, metrics) = (agent.addrs[0], agent.addrs[1]);
    let http = Client::default();
    wait_ready(&pods, &http, metrics).await?;
    // Two more scrape rounds at rest before the first reading.
    tokio::time::sleep(Duration::from_millis(2 * SCRAPE_MS)).await;
    let before = ProcStats::of(agent.pid());
    let requests = TARGET_BLOCKS.div_ceil(MAX_BLOCKS);
    let client = ExtProcClient::connect(ext_proc).await?;
    let first_pods = send_all(&client, requests).await?;
    // Let the recorder task drain and scrapes go on.
    tokio::time::sleep(Duration::from_millis(2 * SCRAPE_MS)).await;
    let after = ProcStats::of(agent.pid());
    let text = http.metrics(metrics).await?;
    let decisions: f64 = sample::series(&text, "steer_decisions_total")
        .iter()
        .filter(|(labels, _)| sample::label(labels, "strategy") == Some("prefix-cache"))
        .map(|(_, v)| v)
        .sum();
    let mut resent_same_pod = 0;
    for (i, pod) in first_pods.iter().enumerate().take(RESENT) {
        if &client.route(body(i)).await? == pod {
            resent_same_pod += 1;
        }
    }
    let (busy, _) = super::mixed::wait_idle(&http, metrics).await;
    ensure!(
        busy.is_empty(),
        "memory phase: pods still in flight: {busy:?}"
    );
    let ready = sample::series(&text, "steer_pod_ready")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let failures = sample::by_label(&text, "steer_errors_total", "reason")
        .get("scrape_failed")
        .copied()
        .unwrap_or(0.0);
    agent.kill().await;
    Ok(Memory {
        pods: PODS,
        pods_ready: ready,
        scrape_interval_ms: SCRAPE_MS,
        scrapes_answered: pods.requests(),
        scrape_failures: failures,
        block_bytes: BLOCK_BYTES,
        max_blocks_per_request: MAX_BLOCKS,
        index_capacity_blocks: CAPACITY,
        requests,
        decisions,
        blocks_recorded: decisions * MAX_BLOCKS as f64,
        resent_same_pod,
        resent: RESENT.min(first_pods.len()),
        before,
        after,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every pod scraped and `steer_pod_ready` 1 for all of them (at most 30 s).
async fn wait_ready(pods: &FakePods, http: &Client, metrics: std::net::SocketAddr) -> Result<()> {
    for _ in 0..300 {
        let text = http.metrics(metrics).await.unwrap_or_default();
        let ready: f64 = sample::series(&text, "steer_pod_ready")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if pods.scraped() == PODS && ready == PODS as f64 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "memory phase: {} of {PODS} pods scraped within 30 s",
        pods.scraped()
    )
}

/// Sends requests 0..n, `CONCURRENCY` at a time; the pod each went to.
async fn send_all(client: &ExtProcClient, n: usize) -> Result<Vec<Routed>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut routed = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(routed);
                }
                let answer = client
                    .route(body(i))
                    .await
                    .with_context(|| format!("request {i}"))?;
                ensure!(matches!(answer, Routed::Pod(_)), "request {i}: {answer:?}");
                routed.push((i, answer));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Request `i`: a prompt of `MAX_BLOCKS` × `BLOCK_BYTES` bytes whose first
/// block is unique to `i` (the run's pid keeps runs apart too).
fn body(i: usize) -> Vec<u8> {
    let tag = format!("[soak {} prompt {i}] ", std::process::id());
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    let len = MAX_BLOCKS * BLOCK_BYTES;
    let mut prompt = tag;
    while prompt.len() < len {
        prompt.push_str(filler);
    }
    prompt.truncate(len);
    steer_e2e::chat_body("big", &prompt, false, 1).into_bytes()
}

/// A scratch directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("steer-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
