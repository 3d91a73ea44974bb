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
        standin_args: vec!["--debug-headers".into()],
        agent_args: Vec::new(),
        agent_ports: None,
        ..Default::default()
    }
}

pub async fn stack(models: &[&str], default_strategy: &str) -> Stack {
    Stack::start(opts(models, default_strategy))
        .await
        .expect("stack starts")
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
