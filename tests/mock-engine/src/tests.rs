//! End-to-end tests against a server on port 0, using a hand-written HTTP/1.1 client.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Args;

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn start(extra: &[&str]) -> SocketAddr {
    let mut argv = vec!["mock-engine", "--addr", "127.0.0.1:0", "--name", "e1"];
    argv.extend_from_slice(extra);
    let args = Args::parse_from(argv);
    let listener = TcpListener::bind(args.addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::run(listener, args));
    addr
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[tokio::test]
async fn streamed_chat_with_usage() {
    let addr = start(&["--decode-us-per-token", "1000"]).await;
    let body = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}});
    let r = call(
        addr,
        "POST",
        "/v1/chat/completions",
        &body.to_string(),
        &[("x-request-id", "abc")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/event-stream"));
    assert_eq!(r.headers["x-mock-engine"], "e1");
    assert_eq!(r.headers["x-echo-x-request-id"], "abc");
    assert_eq!(r.headers["x-prompt-tokens"], "3"); // "user\nhello\n" = 11 bytes
    assert_eq!(r.headers["x-prefix-cached-tokens"], "0");
    let events: Vec<&str> = r.body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 5, "{}", r.body);
    assert_eq!(events[4], "data: [DONE]");
    let chunks: Vec<Value> = events[..4]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "tok0");
    assert!(chunks[1]["choices"][0]["finish_reason"].is_null());
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " tok2");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 3);
    assert_eq!(chunks[3]["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn unknown_model_and_bad_json() {
    let addr = start(&[]).await;
    let body = json!({"model": "x", "prompt": "hi"}).to_string();
    let r = call(addr, "POST", "/v1/completions", &body, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-mock-engine"], "e1");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["message"], "The model `x` does not exist.");
    assert_eq!(v["error"]["type"], "NotFoundError");
    assert_eq!(v["error"]["code"], 404);
    let r = call(addr, "POST", "/v1/completions", "{oops", &[]).await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "BadRequestError");
}

#[tokio::test]
async fn prefix_cache_hits_on_repeat_and_shows_in_metrics() {
    let addr = start(&["--decode-us-per-token", "0", "--prefill-us-per-token", "0"]).await;
    let prompt = "p".repeat(64 * 3 + 10); // 3 full blocks of 16 tokens
    let body = json!({"model": "mock-model", "prompt": prompt, "max_tokens": 2}).to_string();
    let r = call(addr, "POST", "/v1/completions", &body, &[]).await;
    assert_eq!(r.headers["x-prefix-cached-tokens"], "0");
    let r = call(addr, "POST", "/v1/completions", &body, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-prefix-cached-tokens"], "48");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "tok0 tok1");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
    let m = call(addr, "GET", "/metrics", "", &[]).await;
    assert!(
        m.body
            .contains("vllm:prefix_cache_hits_total{model_name=\"mock-model\"} 48\n"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("vllm:num_requests_running{model_name=\"mock-model\"} 0\n")
    );
    let s: Value =
        serde_json::from_str(&call(addr, "GET", "/admin/stats", "", &[]).await.body).unwrap();
    assert_eq!(s["requests"], 2);
    assert_eq!(s["cached_tokens"], 48);
}

#[tokio::test]
async fn fault_injection_and_recovery() {
    let addr = start(&[]).await;
    assert_eq!(call(addr, "GET", "/health", "", &[]).await.status, 200);
    let r = call(addr, "POST", "/admin/fail", r#"{"status": 503}"#, &[]).await;
    assert_eq!(r.status, 200);
    let r = call(addr, "GET", "/health", "", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-mock-engine"], "e1");
    assert_eq!(call(addr, "GET", "/metrics", "", &[]).await.status, 503);
    assert_eq!(
        call(addr, "POST", "/admin/recover", "", &[]).await.status,
        200
    );
    assert_eq!(call(addr, "GET", "/health", "", &[]).await.status, 200);
    let models: Value =
        serde_json::from_str(&call(addr, "GET", "/v1/models", "", &[]).await.body).unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");
}

#[tokio::test]
async fn anthropic_messages_json_and_stream() {
    let addr = start(&[]).await;
    let body = json!({"model": "mock-model", "max_tokens": 3, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
    let r = call(addr, "POST", "/v1/messages", &body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "tok0 tok1 tok2");
    let prompt: u64 = r.headers["x-prompt-tokens"].parse().unwrap();
    let usage = &v["usage"];
    assert_eq!(usage["output_tokens"], 3);
    assert_eq!(
        usage["input_tokens"].as_u64().unwrap()
            + usage["cache_read_input_tokens"].as_u64().unwrap(),
        prompt
    );
    // The same request streamed.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = call(addr, "POST", "/v1/messages", &stream.to_string(), &[]).await;
    assert!(r.headers["content-type"].starts_with("text/event-stream"));
    let events: Vec<(&str, Value)> = r
        .body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let data = data.strip_prefix("data: ").unwrap();
            (
                name.strip_prefix("event: ").unwrap(),
                serde_json::from_str(data).unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], *name);
    }
    let start_usage = &events[0].1["message"]["usage"];
    assert_eq!(
        start_usage["input_tokens"].as_u64().unwrap()
            + start_usage["cache_read_input_tokens"].as_u64().unwrap(),
        prompt
    );
    assert_eq!(events[6].1["usage"]["output_tokens"], 3);
}
