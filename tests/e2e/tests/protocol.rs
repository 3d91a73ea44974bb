//! ext_proc protocol behaviour: errors, streaming, body modes, bodiless requests.

mod common;

use steer_e2e::{Client, EnvoyConfig, Stack, chat_body, metric_value};

async fn error_of(
    stack: &Stack,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, serde_json::Value, steer_e2e::Reply) {
    let reply = Client::default()
        .post(stack.gateway(), "/v1/chat/completions", headers, body)
        .await
        .unwrap();
    let json = reply.json().unwrap_or_default();
    (reply.status, json, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_an_openai_error_with_the_right_status() {
    let mut opts = common::opts(&["m"], "least-request");
    opts.agent_args = vec!["--pool".into(), "dead=127.0.0.1:1".into()];
    let stack = Stack::start(opts).await.unwrap();
    // Shrink the body limit through a hot reload of the config file.
    let config = std::fs::read_to_string(&stack.config).unwrap();
    std::fs::write(&stack.config, format!("max_body_bytes: 4096\n{config}")).unwrap();

    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "invalid json",
            vec![],
            "{\"model\":".into(),
            400,
            "invalid_json",
        ),
        (
            "missing model",
            vec![],
            r#"{"messages":[]}"#.into(),
            400,
            "missing_model",
        ),
        (
            "unknown strategy",
            vec![("routing-strategy", "fastest")],
            chat_body("m", "x", false, 1),
            400,
            "invalid_routing_strategy",
        ),
        (
            "unknown model",
            vec![],
            chat_body("nope", "x", false, 1),
            404,
            "model_not_found",
        ),
        (
            "too large",
            vec![],
            chat_body("m", &"x".repeat(8000), false, 1),
            413,
            "request_too_large",
        ),
    ];
    let client = Client::default();
    assert!(
        common::eventually(10, || async {
            let r = client
                .post(
                    stack.gateway(),
                    "/v1/chat/completions",
                    &[],
                    chat_body("m", &"x".repeat(8000), false, 1),
                )
                .await
                .unwrap();
            r.status == 413
        })
        .await,
        "reloaded limit applies"
    );
    for (what, headers, body, status, code) in cases {
        let (got, json, reply) = error_of(&stack, &headers, body).await;
        assert_eq!(got, status, "{what}: {}", reply.text());
        assert_eq!(json["error"]["code"], code, "{what}");
        assert!(
            json["error"]["message"].as_str().unwrap().len() > 5,
            "{what}"
        );
        assert_eq!(json["error"]["type"], "invalid_request_error", "{what}");
        assert!(
            reply.header("x-mock-engine").is_none(),
            "{what}: never reached an engine"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{what}"
        );
    }
    // `dead` points at a closed port: after failed scrapes it has no ready pod.
    assert!(
        common::eventually(10, || async {
            let (status, json, _) = error_of(&stack, &[], chat_body("dead", "x", false, 1)).await;
            status == 503 && json["error"]["code"] == "no_ready_endpoint"
        })
        .await,
        "503 for a model without ready endpoints"
    );
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    for reason in [
        "invalid_json",
        "missing_model",
        "unknown_strategy",
        "unknown_model",
        "body_too_large",
        "no_ready_endpoint",
    ] {
        let n = metric_value(&metrics, "steer_errors_total", &[("reason", reason)]).unwrap();
        assert!(n >= 1.0, "{reason} counted");
    }
    // The agent survived all of it and still routes.
    let ok = client.chat(stack.gateway(), "m", &[]).await.unwrap();
    assert_eq!(ok.status, 200);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_passes_through_and_usage_is_counted() {
    let mut opts = common::opts(&["m"], "least-request");
    // Per-response usage needs the observer (off as shipped).
    opts.usage_observer = true;
    opts.engines[0].1 = [
        "--decode-us-per-token",
        "2000",
        "--prefill-us-per-token",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    let reply = client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("m", "count to ten", true, 20),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        reply.frames >= 10,
        "tokens arrive as they are produced: {} frames",
        reply.frames
    );
    let text = reply.text();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let target = reply.header("target-pod").unwrap().to_owned();
    let completion = common::metric_reaching(
        stack.metrics(),
        "steer_completion_tokens_total",
        &[("model", "m"), ("pod", &target)],
        20.0,
    )
    .await;
    assert_eq!(completion, Some(20.0), "usage from the final SSE chunk");
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    let prompt = metric_value(
        &metrics,
        "steer_prompt_tokens_total",
        &[("model", "m"), ("pod", &target)],
    )
    .unwrap();
    assert!(prompt > 0.0);
    // A JSON (non-stream) response is counted too.
    let reply = client
        .post(
            stack.gateway(),
            "/v1/completions",
            &[],
            r#"{"model":"m","prompt":"hello","max_tokens":3}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let completion = common::metric_reaching(
        stack.metrics(),
        "steer_completion_tokens_total",
        &[("model", "m"), ("pod", &target)],
        23.0,
    )
    .await;
    assert_eq!(completion, Some(23.0));
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    let decisions = metric_value(
        &metrics,
        "steer_decisions_total",
        &[("model", "m"), ("strategy", "least-request")],
    );
    assert_eq!(decisions, Some(2.0));
    assert!(metric_value(&metrics, "steer_decision_duration_seconds_count", &[]).unwrap() >= 2.0);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_and_bodiless_requests_do_not_hang() {
    let stack = common::stack(&["qwen", "llama"], "least-request").await;
    let client = Client::default();
    let reply = client.get(stack.gateway(), "/v1/models").await.unwrap();
    assert_eq!(reply.status, 200);
    let ids: Vec<String> = reply.json().unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["llama", "qwen"]);
    // A bodiless request naming its model in AIBrix's `model` header is routed.
    let reply = client
        .request(
            "GET",
            stack.gateway(),
            "/health",
            &[("model", "qwen")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-mock-engine"), Some("engine-0"));
    // Without one it is a clear 400, not a hang.
    let reply = client.get(stack.gateway(), "/health").await.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json().unwrap()["error"]["code"], "missing_model");
    common::assert_idle(&stack).await;
}

async fn body_mode_roundtrip(config: EnvoyConfig) {
    let mut opts = common::opts(&["m", "m"], "prefix-cache");
    opts.envoy_config = config;
    let stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    // Large enough that Envoy streams it in several chunks (full duplex).
    let prompt = "lorem ipsum ".repeat(10_000);
    for stream in [false, true] {
        let reply = client
            .post(
                stack.gateway(),
                "/v1/chat/completions",
                &[],
                chat_body("m", &prompt, stream, 4),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{config:?}: {}", reply.text());
        let prompt_tokens: u64 = reply.header("x-prompt-tokens").unwrap().parse().unwrap();
        assert!(
            prompt_tokens > 30_000,
            "the whole body reached the engine: {prompt_tokens}"
        );
        assert!(reply.header("target-pod").is_some());
    }
    long_prompts_and_body_limits(&stack).await;
    common::assert_idle(&stack).await;
}

/// A 2 MB prompt (a ~500k-token context) is served; a body over the agent's
/// `max_body_bytes` (8 MiB) gets the agent's 413, one over Envoy's buffer
/// (20 MiB) Envoy's 413 — both OpenAI-style JSON, with and without
/// content-length.
async fn long_prompts_and_body_limits(stack: &Stack) {
    let client = Client::default();
    let body = |bytes: usize| chat_body("m", &"word ".repeat(bytes / 5), false, 1);
    let reply = client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            body(2_000_000),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "2 MB prompt: {}", reply.text());
    for (bytes, by) in [(9_000_000, "agent"), (21_000_000, "envoy")] {
        for chunked in [false, true] {
            let reply = client
                .post_with(
                    stack.gateway(),
                    "/v1/chat/completions",
                    &[],
                    body(bytes),
                    chunked,
                )
                .await
                .unwrap();
            let what = format!("{bytes} bytes (chunked: {chunked})");
            assert_eq!(reply.status, 413, "{what}: {}", reply.text());
            let json = reply.json().unwrap();
            assert_eq!(json["error"]["code"], "request_too_large", "{what}: {json}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            // With content-length the agent refuses any size over its limit at
            // once (its header marks the reply); a chunked body over Envoy's
            // buffer is refused by Envoy (BUFFERED) and rewritten by
            // local_reply_config, or by the agent when the body streams to it.
            if by == "agent" || !chunked {
                assert_eq!(
                    reply.header("x-steer-error"),
                    Some("request_too_large"),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_mode_serves_long_prompts_and_limits() {
    body_mode_roundtrip(EnvoyConfig::OneWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_streamed_body_mode() {
    body_mode_roundtrip(EnvoyConfig::FullDuplex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_errors_are_openai_json_when_the_agent_is_down() {
    let mut stack = common::stack(&["m"], "least-request").await;
    let client = Client::default();
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    // The agent is down: Envoy's failure mode (fail closed) answers 500.
    stack.agent.stop().await;
    let reply = client.chat(stack.gateway(), "m", &[]).await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json().unwrap();
    assert_eq!(json["error"]["code"], "routing_unavailable", "{json}");
    assert_eq!(json["error"]["type"], "server_error");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ext_proc"),
        "{json}"
    );
    let failures = stack
        .envoy
        .stat("http.openai.ext_proc.streams_failed")
        .await
        .unwrap()
        + stack
            .envoy
            .stat("http.openai.ext_proc.streams_closed")
            .await
            .unwrap();
    assert!(failures >= 1, "Envoy counted the ext_proc failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_body_bytes_by_reload_takes_effect_at_once() {
    // Started with a 1 MB limit (the gRPC transport's limit used to be
    // frozen at the start-up value).
    let mut opts = common::opts(&["m"], "least-request");
    opts.extra_config = "max_body_bytes: 1000000\n".into();
    let stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    let config = std::fs::read_to_string(&stack.config).unwrap();
    let body = chat_body("m", &"word ".repeat(400_000), false, 1);
    let post = || async {
        client
            .post_with(
                stack.gateway(),
                "/v1/chat/completions",
                &[],
                body.clone(),
                true,
            )
            .await
            .unwrap()
    };
    // A 2 MB body is the agent's 413 (JSON), not a transport failure.
    let reply = post().await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.json().unwrap()["error"]["code"], "request_too_large");
    // Raised by reload: the same body is served.
    let raised = config.replace("max_body_bytes: 1000000", "max_body_bytes: 8388608");
    std::fs::write(&stack.config, raised).unwrap();
    assert!(
        common::eventually(10, || async { post().await.status == 200 }).await,
        "2 MB served after raising the limit"
    );
    common::assert_idle(&stack).await;
}
