//! The smoke set (routing, streaming, errors, full duplex) on the oldest
//! supported Envoy, so a protocol change between versions shows up as a red
//! test named after the version. The full suite runs on the newest.

mod common;

use steer_e2e::{Client, EnvoyConfig, Stack, chat_body};

async fn stack_on(version: &'static str, config: EnvoyConfig) -> Stack {
    let mut opts = common::opts(&["qwen", "qwen"], "round-robin");
    opts.envoy_version = Some(version);
    opts.envoy_config = config;
    let stack = Stack::start(opts).await.expect("stack starts");
    assert_eq!(stack.envoy.version, version);
    stack
}

async fn routing(version: &'static str) {
    let stack = stack_on(version, EnvoyConfig::OneWait).await;
    let client = Client::default();
    for _ in 0..4 {
        let reply = client.chat(stack.gateway(), "qwen", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let target = reply.header("target-pod").unwrap();
        assert!(stack.engine_index(target).is_some());
        assert_eq!(reply.header("x-echo-target-pod"), Some(target));
        let id = reply.header("x-request-id").unwrap();
        let entry = stack.envoy.access_log_entry(id).await.unwrap();
        assert_eq!(entry["route"], "qwen", "{entry}");
        assert_eq!(entry["endpoint"], target, "{entry}");
    }
    common::assert_idle(&stack).await;
}

async fn streaming(version: &'static str) {
    let mut opts = common::opts(&["qwen", "qwen"], "round-robin");
    opts.envoy_version = Some(version);
    // The usage observer, turned on, works on every version.
    opts.usage_observer = true;
    let stack = Stack::start(opts).await.expect("stack starts");
    let reply = Client::default()
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("qwen", "count", true, 12),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().trim_end().ends_with("data: [DONE]"));
    let pod = reply.header("target-pod").unwrap();
    let completion = common::metric_reaching(
        stack.metrics(),
        "steer_completion_tokens_total",
        &[("model", "qwen"), ("pod", pod)],
        12.0,
    )
    .await;
    assert_eq!(completion, Some(12.0));
    common::assert_idle(&stack).await;
}

async fn errors(version: &'static str) {
    let mut stack = stack_on(version, EnvoyConfig::OneWait).await;
    let client = Client::default();
    let reply = client.chat(stack.gateway(), "nope", &[]).await.unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json().unwrap()["error"]["code"], "model_not_found");
    let big = chat_body("qwen", &"x".repeat(9 << 20), false, 1);
    let reply = client
        .post(stack.gateway(), "/v1/chat/completions", &[], big)
        .await
        .unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json().unwrap()["error"]["code"], "request_too_large");
    common::assert_idle(&stack).await;
    stack.agent.stop().await;
    let reply = client.chat(stack.gateway(), "qwen", &[]).await.unwrap();
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.json().unwrap()["error"]["code"],
        "routing_unavailable"
    );
}

async fn full_duplex(version: &'static str) {
    let stack = stack_on(version, EnvoyConfig::FullDuplex).await;
    let prompt = "lorem ipsum ".repeat(30_000);
    let reply = Client::default()
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("qwen", &prompt, false, 2),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let tokens: u64 = reply.header("x-prompt-tokens").unwrap().parse().unwrap();
    assert!(tokens > 80_000, "whole body reached the engine: {tokens}");
    common::assert_idle(&stack).await;
}

macro_rules! smoke {
    ($module:ident, $version:literal) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn routing() {
                super::routing($version).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn streaming() {
                super::streaming($version).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn errors() {
                super::errors($version).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full_duplex() {
                super::full_duplex($version).await;
            }
        }
    };
}

smoke!(envoy_1_36_4, "1.36.4");

#[test]
fn the_smoke_set_covers_the_oldest_supported_envoy() {
    assert_eq!(steer_e2e::ENVOY_VERSIONS.last(), Some(&"1.36.4"));
}
