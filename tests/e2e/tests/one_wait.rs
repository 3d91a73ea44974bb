//! The shipped `envoy.yaml` makes Envoy wait on the agent once per request
//! and never on the response, while in-flight counts stay exact and usage is
//! still counted (issue #10). Everything is read from real Envoy's counters
//! and the agent's metrics.

mod common;

use std::time::Duration;

use steer_e2e::{Client, Stack, chat_body, metric_value};

/// `n` engines that decode `decode_us` per token.
fn stack_opts(n: usize, decode_us: u32) -> steer_e2e::StackOptions {
    let mut opts = common::opts(&vec!["m"; n], "least-request");
    for engine in &mut opts.engines {
        engine.1 = steer_e2e::engine_args(0, decode_us, 16);
    }
    opts
}

/// Envoy's counters for the routing filter and the usage observer.
struct Counters {
    decision_sent: u64,
    decision_received: u64,
    decision_streams: u64,
    usage_sent: u64,
    usage_received: u64,
    usage_streams: u64,
}

async fn counters(stack: &Stack) -> Counters {
    let stats = stack.envoy.stats().await.unwrap();
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    Counters {
        decision_sent: stat("http.openai.ext_proc.stream_msgs_sent"),
        decision_received: stat("http.openai.ext_proc.stream_msgs_received"),
        decision_streams: stat("http.openai.ext_proc.streams_started"),
        usage_sent: stat("http.openai.ext_proc.usage.stream_msgs_sent"),
        usage_received: stat("http.openai.ext_proc.usage.stream_msgs_received"),
        usage_streams: stat("http.openai.ext_proc.usage.streams_started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_waits_once_per_request_and_never_on_the_response() {
    // 2 ms per token: SSE chunks leave the engine one by one.
    let stack = Stack::start(stack_opts(2, 2_000)).await.unwrap();
    let client = Client::default();
    let before = counters(&stack).await;
    // Non-streaming: the body fits one chunk on this loopback connection.
    let reply = client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("m", "hello there", false, 5),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let target = reply.header("target-pod").unwrap().to_owned();
    assert_eq!(reply.header("x-steer-strategy"), Some("least-request"));
    assert!(stack.engine_index(&target).is_some());
    // SSE: 30 response chunks.
    let sse = client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("m", "count", true, 30),
        )
        .await
        .unwrap();
    assert_eq!(sse.status, 200);
    assert!(sse.frames >= 10, "{} frames", sse.frames);
    let usage_ready = common::eventually(5, || async {
        counters(&stack).await.usage_sent >= before.usage_sent + 2 + 2
    })
    .await;
    assert!(usage_ready, "the observer saw both responses");
    let after = counters(&stack).await;
    // Routing filter: one stream per request; headers and the body chunks
    // (one or two each here), all answered. The headers reply waited for the
    // body's end: had Envoy waited on it before sending the body, the request
    // would have timed out. None of the 30+ response chunks reached it.
    let sent = after.decision_sent - before.decision_sent;
    assert_eq!(after.decision_streams - before.decision_streams, 2);
    assert!((4..=8).contains(&sent), "{sent} messages for 2 requests");
    assert_eq!(after.decision_received - before.decision_received, sent);
    // Usage observer: sees response headers and every chunk, answers none,
    // so Envoy never waits for it.
    assert_eq!(after.usage_streams - before.usage_streams, 2);
    assert!(
        after.usage_sent - before.usage_sent >= 2 + 10,
        "headers and chunks of both responses"
    );
    assert_eq!(after.usage_received, before.usage_received);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_lasts_until_the_response_ends_or_the_client_leaves() {
    // 20 ms per token: a 100-token stream lasts ~2 s.
    let stack = Stack::start(stack_opts(1, 20_000)).await.unwrap();
    let (gw, client) = (stack.gateway(), Client::default());
    // A 100-token chat stream in the background.
    let spawn_stream = |prompt: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            let body = chat_body("m", prompt, true, 100);
            client.post(gw, "/v1/chat/completions", &[], body).await
        })
    };
    // A ~2 s stream that runs to its end.
    let full = spawn_stream("a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::in_flight(stack.metrics()).await.0,
        1.0,
        "counted while the response streams"
    );
    // A second stream whose client hangs up after 500 ms.
    let left = spawn_stream("b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::in_flight(stack.metrics()).await.0, 2.0);
    left.abort();
    let released = common::eventually(2, || async {
        common::in_flight(stack.metrics()).await.0 == 1.0
    })
    .await;
    assert!(
        released,
        "the client that left is released, the other is not"
    );
    let reply = full.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().trim_end().ends_with("data: [DONE]"));
    common::assert_idle(&stack).await;
    // Usage of the completed stream was counted for its pod and model.
    let target = reply.header("target-pod").unwrap().to_owned();
    let counted = common::eventually(2, || async {
        let text = client.metrics(stack.metrics()).await.unwrap_or_default();
        metric_value(
            &text,
            "steer_completion_tokens_total",
            &[("model", "m"), ("pod", &target)],
        ) == Some(100.0)
    })
    .await;
    assert!(counted, "100 completion tokens counted");
}
