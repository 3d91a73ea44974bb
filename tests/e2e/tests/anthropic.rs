//! The Anthropic Messages API (`/v1/messages`) through real Envoy: routed on
//! its body like chat completions (the system prompt is part of the prefix),
//! usage counted from its JSON and its stream events, errors in Anthropic's
//! shape.

mod common;

use serde_json::json;
use steer_e2e::{Client, Stack};

async fn observed(stack: &Stack, name: &str, pod: &str, want: f64) -> f64 {
    let labels = [("model", "claude"), ("pod", pod)];
    common::metric_reaching(stack.metrics(), name, &labels, want)
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_routed_counted_and_answered_in_anthropics_shape() {
    let mut opts = common::opts(&["claude", "claude", "claude"], "least-request");
    opts.usage_observer = true;
    let stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    let system = "You are a careful assistant. ".repeat(40);
    let body = |stream: bool, question: &str| {
        json!({"model": "claude", "max_tokens": 4, "stream": stream,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}]})
        .to_string()
    };
    let prefix = [("routing-strategy", "prefix-cache")];

    let reply = client
        .post(
            stack.gateway(),
            "/v1/messages",
            &prefix,
            body(false, "one?"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let message = reply.json().unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], "tok0 tok1 tok2 tok3");
    let pod = reply.header("target-pod").unwrap().to_owned();
    let prompt: f64 = reply.header("x-prompt-tokens").unwrap().parse().unwrap();
    assert_eq!(
        observed(&stack, "steer_prompt_tokens_total", &pod, prompt).await,
        prompt,
        "input_tokens + cache_read_input_tokens of the JSON usage"
    );
    assert_eq!(
        observed(&stack, "steer_completion_tokens_total", &pod, 4.0).await,
        4.0
    );

    // Same system prompt, streamed: prefix-cache sends it to the same pod,
    // whose cache now holds the system prompt; usage comes from the events.
    let reply = client
        .post(stack.gateway(), "/v1/messages", &prefix, body(true, "two?"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(reply.header("target-pod"), Some(pod.as_str()));
    let cached: f64 = reply
        .header("x-prefix-cached-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(cached > 0.0, "the shared system prompt was a cache hit");
    let text = reply.text();
    assert!(
        text.contains("event: message_delta")
            && text.trim_end().ends_with("{\"type\":\"message_stop\"}")
    );
    let prompt2: f64 = reply.header("x-prompt-tokens").unwrap().parse().unwrap();
    assert_eq!(
        observed(&stack, "steer_prompt_tokens_total", &pod, prompt + prompt2).await,
        prompt + prompt2,
        "message_start's input_tokens + cache_read_input_tokens"
    );
    assert_eq!(
        observed(&stack, "steer_completion_tokens_total", &pod, 8.0).await,
        8.0,
        "message_delta's output_tokens"
    );

    // The agent's errors on this API are Anthropic's shape.
    let reply = client
        .post(
            stack.gateway(),
            "/v1/messages",
            &[],
            r#"{"model":"gpt-nope","max_tokens":1,"messages":[]}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    let error = reply.json().unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
    let reply = client
        .post(stack.gateway(), "/v1/messages", &[], "{\"model\":")
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json().unwrap()["error"]["type"],
        "invalid_request_error"
    );
    common::assert_idle(&stack).await;
}
