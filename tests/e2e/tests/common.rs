// Shared by the e2e test files (each includes it with `mod common;`).
#![allow(dead_code)]

use steer_e2e::{Stack, StackOptions, fast_engine};

pub fn opts(models: &[&str], default_strategy: &str) -> StackOptions {
    StackOptions {
        profile: "debug",
        engines: models
            .iter()
            .map(|m| ((*m).to_owned(), fast_engine()))
            .collect(),
        default_strategy: default_strategy.to_owned(),
        ..Default::default()
    }
}

pub async fn stack(models: &[&str], default_strategy: &str) -> Stack {
    Stack::start(opts(models, default_strategy))
        .await
        .expect("stack starts")
}

/// Every request a test sent has ended: the agent's per-pod in-flight count
/// is back at 0 for every pod (checked before the stack goes away).
pub async fn assert_idle(stack: &Stack) {
    assert_idle_at(stack.metrics()).await;
}

/// [`assert_idle`] for an agent started without a `Stack`.
pub async fn assert_idle_at(metrics: std::net::SocketAddr) {
    let client = steer_e2e::Client::default();
    let mut busy = Vec::new();
    for _ in 0..200 {
        let text = client.metrics(metrics).await.unwrap_or_default();
        busy = text
            .lines()
            .filter(|l| l.starts_with("steer_pod_in_flight{"))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if busy.is_empty() && !text.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("steer_pod_in_flight did not return to 0: {busy:?}");
}

/// All pods' `steer_pod_in_flight` summed, and the metrics text.
pub async fn in_flight(metrics: std::net::SocketAddr) -> (f64, String) {
    let text = steer_e2e::Client::default()
        .metrics(metrics)
        .await
        .unwrap_or_default();
    (steer_e2e::metric_sum(&text, "steer_pod_in_flight"), text)
}

/// Engines that decode 20 ms per token (streams last long enough for a
/// signal or a fault to arrive while they run).
pub fn slow_opts(n: usize) -> steer_e2e::StackOptions {
    let mut opts = opts(&vec!["m"; n], "round-robin");
    for engine in &mut opts.engines {
        engine.1 = steer_e2e::engine_args(0, 20_000, 64);
    }
    opts
}

/// `n` round-robin chat streams of `tokens` tokens each, in the background.
pub fn spawn_streams(
    stack: &Stack,
    n: usize,
    tokens: u32,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<steer_e2e::Reply>>> {
    (0..n)
        .map(|_| {
            let (client, gw) = (steer_e2e::Client::default(), stack.gateway());
            tokio::spawn(async move {
                let body = steer_e2e::chat_body("m", "go", true, tokens);
                client
                    .post(
                        gw,
                        "/v1/chat/completions",
                        &[("routing-strategy", "round-robin")],
                        body,
                    )
                    .await
            })
        })
        .collect()
}

/// Polls `check` every 50 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// The agent's `name{labels}` once it equals `want` (bounded: 5 s), else its
/// last value. What the usage observer counts lands as the client reads the
/// response's end, not before: read it with this, never once.
pub async fn metric_reaching(
    metrics: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Option<f64> {
    let client = steer_e2e::Client::default();
    let mut seen = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let text = client.metrics(metrics).await.unwrap_or_default();
        seen = steer_e2e::metric_value(&text, name, labels);
        if seen == Some(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    seen
}
