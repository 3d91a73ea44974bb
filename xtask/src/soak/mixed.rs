//! Phase 1: the mixed load through real Envoy for the run's duration, with
//! the agent and Envoy sampled throughout and the agent checked idle after.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use steer_e2e::{Client, Stack, StackOptions};

use super::load::{self, Tally};
use super::sample::{self, Buckets, ProcStats};

const WORKERS: usize = 16;
/// mock-engine: µs per uncached prompt token, µs per output token, batch.
const ENGINE: (u32, u32, u32) = (20, 2500, 16);

/// One reading of both processes and of the agent's metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub agent: ProcStats,
    pub envoy: ProcStats,
    /// Requests answered so far.
    pub done: u64,
    /// `steer_decision_duration_seconds_count`: decisions so far.
    pub decisions: f64,
    #[serde(skip)]
    pub decision: Buckets,
    #[serde(skip)]
    pub errors: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Mixed {
    pub duration_s: f64,
    pub workers: usize,
    pub engines: String,
    pub envoy_version: String,
    pub requests: Tally,
    pub sample_every_s: f64,
    pub samples: Vec<Sample>,
    /// `steer_errors_total` by reason: after the load (idle) minus before it.
    pub agent_errors_delta: BTreeMap<String, f64>,
    /// `steer_pod_in_flight` of every pod not back at 0 once idle.
    pub in_flight_after: BTreeMap<String, f64>,
    pub pods: usize,
}

pub async fn run(duration: Duration) -> Result<Mixed> {
    let (prefill, decode, batch) = ENGINE;
    let args = steer_e2e::engine_args(prefill, decode, batch);
    let served = [
        "qwen,llama,mini",
        "qwen,llama,mini",
        "qwen,llama",
        "qwen,llama",
    ];
    let stack = Stack::start(StackOptions {
        profile: "release",
        engines: served
            .iter()
            .map(|m| ((*m).to_owned(), args.clone()))
            .collect(),
        default_strategy: "prefix-cache".into(),
        ..Default::default()
    })
    .await?;
    let client = Client::default();
    let started = Instant::now();
    let baseline = read(&stack, &client, started, 0).await;
    let until = started + duration;
    let every = (duration / 20).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let done: load::Done = Arc::new(AtomicU64::new(0));
    // At most 2,000 requests per second on average: a bound, never reached here.
    let cap = (duration.as_secs_f64() * 2000.0) as u64 + 1000;
    let sampler = sampler(&stack, &client, started, until, every, done.clone());
    let (requests, mut samples) = tokio::join!(
        load::drive(stack.gateway(), WORKERS, until, cap, done.clone()),
        sampler
    );
    samples.push(read(&stack, &client, started, done.load(Ordering::Relaxed)).await);
    let (in_flight_after, pods) = wait_idle(&client, stack.metrics()).await;
    let after = read(&stack, &client, started, done.load(Ordering::Relaxed)).await;
    let agent_errors_delta = after
        .errors
        .iter()
        .map(|(reason, v)| {
            (
                reason.clone(),
                v - baseline.errors.get(reason).copied().unwrap_or(0.0),
            )
        })
        .collect();
    let result = Mixed {
        duration_s: started.elapsed().as_secs_f64(),
        workers: WORKERS,
        engines: format!(
            "4 mock engines ({}), prefill {prefill} µs/token, decode {decode} µs/token, {batch} running",
            served.join(" | ")
        ),
        envoy_version: stack.envoy.version.clone(),
        requests,
        sample_every_s: every.as_secs_f64(),
        samples,
        agent_errors_delta,
        in_flight_after,
        pods,
    };
    stack.shutdown().await;
    Ok(result)
}

/// Samples every `every` until `until`.
async fn sampler(
    stack: &Stack,
    client: &Client,
    started: Instant,
    until: Instant,
    every: Duration,
    done: load::Done,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while Instant::now() + every <= until {
        tick.tick().await;
        samples.push(read(stack, client, started, done.load(Ordering::Relaxed)).await);
    }
    samples
}

async fn read(stack: &Stack, client: &Client, started: Instant, done: u64) -> Sample {
    let text = client.metrics(stack.metrics()).await.unwrap_or_default();
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        agent: ProcStats::of(stack.agent.pid()),
        envoy: ProcStats::of(stack.envoy.proc.pid()),
        done,
        decisions: steer_e2e::metric_value(&text, "steer_decision_duration_seconds_count", &[])
            .unwrap_or(0.0),
        decision: sample::buckets(&text, "steer_decision_duration_seconds"),
        errors: sample::by_label(&text, "steer_errors_total", "reason"),
    }
}

/// Waits (at most 10 s) until every pod's `steer_pod_in_flight` is 0;
/// returns the pods still busy then, and how many pods the agent lists.
pub async fn wait_idle(client: &Client, metrics: SocketAddr) -> (BTreeMap<String, f64>, usize) {
    let mut busy = BTreeMap::new();
    let mut pods = 0;
    for _ in 0..100 {
        let text = client.metrics(metrics).await.unwrap_or_default();
        let all = sample::by_label(&text, "steer_pod_in_flight", "pod");
        pods = all.len();
        busy = all.into_iter().filter(|(_, v)| *v != 0.0).collect();
        if busy.is_empty() && pods > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (busy, pods)
}
