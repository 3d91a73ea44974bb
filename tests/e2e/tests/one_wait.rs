//! The shipped `envoy.yaml` makes Envoy wait on the agent once per request
//! and never on the response, while in-flight counts stay exact and usage is
//! still counted per pod and model (issue #10). Everything is read from real
//! Envoy's counters and the agent's metrics.

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

/// A JSON chat (5 tokens) and an SSE chat (30 tokens, one chunk each), and
/// the pods they went to.
async fn json_and_sse(stack: &Stack) -> (String, String) {
    let client = Client::default();
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
    let json_pod = reply.header("target-pod").unwrap().to_owned();
    assert_eq!(reply.header("x-steer-strategy"), Some("least-request"));
    assert!(stack.engine_index(&json_pod).is_some());
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
    assert!(sse.text().trim_end().ends_with("data: [DONE]"));
    (json_pod, sse.header("target-pod").unwrap().to_owned())
}

/// The routing filter: one stream per request; headers and the body chunks
/// (one or two each here), all answered. The headers reply waited for the
/// body's end: had Envoy waited on it before sending the body, the request
/// would have timed out. None of the 30+ response chunks reached it.
fn assert_one_wait_each(before: &Counters, after: &Counters, requests: u64) {
    let sent = after.decision_sent - before.decision_sent;
    assert_eq!(after.decision_streams - before.decision_streams, requests);
    assert!(
        (2 * requests..=4 * requests).contains(&sent),
        "{sent} messages for {requests} requests"
    );
    assert_eq!(after.decision_received - before.decision_received, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_waits_once_per_request_and_never_on_the_response() {
    // 2 ms per token: SSE chunks leave the engine one by one.
    let stack = Stack::start(stack_opts(2, 2_000)).await.unwrap();
    let before = counters(&stack).await;
    let (json_pod, sse_pod) = json_and_sse(&stack).await;
    let after = counters(&stack).await;
    assert_one_wait_each(&before, &after, 2);
    assert_eq!(
        (after.usage_streams, after.usage_sent),
        (0, 0),
        "the usage observer is off as shipped"
    );
    // Usage per pod and model, from the engines' own counters: exact for
    // JSON and SSE responses alike, at the next scrape.
    let want =
        |pod: &str| f64::from(5 * u32::from(pod == json_pod) + 30 * u32::from(pod == sse_pod));
    let pods: Vec<String> = stack.engines.iter().map(|e| e.addr().to_string()).collect();
    let client = Client::default();
    let counted = common::eventually(5, || async {
        let text = client.metrics(stack.metrics()).await.unwrap_or_default();
        pods.iter().all(|pod| {
            let generated = metric_value(
                &text,
                "steer_pod_engine_generation_tokens_total",
                &[("model", "m"), ("pod", pod)],
            );
            let prompt = metric_value(
                &text,
                "steer_pod_engine_prompt_tokens_total",
                &[("model", "m"), ("pod", pod)],
            );
            generated == Some(want(pod)) && (want(pod) == 0.0 || prompt > Some(0.0))
        })
    })
    .await;
    let text = client.metrics(stack.metrics()).await.unwrap();
    assert!(counted, "engine token counters per pod: {text}");
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_observer_when_turned_on_is_never_waited_on() {
    let mut opts = stack_opts(2, 2_000);
    opts.usage_observer = true;
    let stack = Stack::start(opts).await.unwrap();
    let before = counters(&stack).await;
    let (json_pod, sse_pod) = json_and_sse(&stack).await;
    let usage_ready = common::eventually(5, || async {
        counters(&stack).await.usage_sent >= before.usage_sent + 2 + 2
    })
    .await;
    assert!(usage_ready, "the observer saw both responses");
    let after = counters(&stack).await;
    assert_one_wait_each(&before, &after, 2);
    // The observer sees response headers and every chunk and answers none,
    // so Envoy never waits for it.
    assert_eq!(after.usage_streams - before.usage_streams, 2);
    assert!(
        after.usage_sent - before.usage_sent >= 2 + 10,
        "headers and chunks of both responses"
    );
    assert_eq!(after.usage_received, before.usage_received);
    // It credits each response's own usage to the pod and model it went to
    // (counted as the client reads each response's end: waited for).
    let credited = |text: &str, pod: &str| {
        metric_value(
            text,
            "steer_completion_tokens_total",
            &[("model", "m"), ("pod", pod)],
        )
        .unwrap_or(0.0)
    };
    let metrics = stack.metrics();
    let mut text = String::new();
    for _ in 0..250 {
        text = Client::default().metrics(metrics).await.unwrap();
        let other = if sse_pod == json_pod {
            0.0
        } else {
            credited(&text, &sse_pod)
        };
        if credited(&text, &json_pod) + other == 35.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let completion = |pod: &str| credited(&text, pod);
    if json_pod == sse_pod {
        assert_eq!(completion(&json_pod), 35.0, "{text}");
    } else {
        assert_eq!(
            (completion(&json_pod), completion(&sse_pod)),
            (5.0, 30.0),
            "{text}"
        );
    }
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
}
