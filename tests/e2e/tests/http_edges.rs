//! HTTP/1 behaviour at Envoy's listener that the agent's replies influence:
//! error replies keep the connection (pipelined requests behind them are
//! served), and requests at Envoy's header-count limit get a clear answer.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on one connection and reads until `responses` complete HTTP/1
/// responses (content-length bodies) arrived or the peer closed.
async fn exchange(
    addr: std::net::SocketAddr,
    raw: &[u8],
    responses: usize,
) -> Vec<(u16, String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < responses {
        if let Some((parsed, used)) = parse_one(&buf) {
            out.push(parsed);
            buf.drain(..used);
            continue;
        }
        let mut chunk = [0u8; 65536];
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => break,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

/// (status, lower-cased head, body) of the first response in `buf`, and its
/// length (content-length or chunked bodies).
fn parse_one(buf: &[u8]) -> Option<((u16, String, String), usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut at = head_end + 4;
    if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            let data = line_end + 2;
            if buf.len() < data + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[data..data + size]);
            at = data + size + 2;
            if size == 0 {
                return Some((
                    (status, head, String::from_utf8_lossy(&body).into_owned()),
                    at,
                ));
            }
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let end = at + length;
    (buf.len() >= end).then(|| {
        let body = String::from_utf8_lossy(&buf[at..end]).into_owned();
        ((status, head, body), end)
    })
}

fn post(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: steer\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_keep_the_connection_for_pipelined_requests() {
    let stack = common::stack(&["m", "m"], "round-robin").await;
    let good = steer_e2e::chat_body("m", "hi", false, 1);
    let unknown = steer_e2e::chat_body("nope", "hi", false, 1);
    let raw = [
        post("{not json", ""),
        post(&good, ""),
        post(&unknown, ""),
        post("{\"messages\":[]}", ""),
        post(&good, ""),
    ]
    .concat();
    let replies = exchange(stack.gateway(), raw.as_bytes(), 5).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [400, 200, 404, 400, 200], "{replies:#?}");
    for (status, head, body) in &replies {
        assert!(!head.contains("connection: close"), "{status}: {head}");
        if *status >= 400 {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(json["error"]["code"].is_string(), "{body}");
        }
    }
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_at_envoys_header_limit_get_a_json_error_not_an_empty_500() {
    let stack = common::stack(&["m", "m"], "round-robin").await;
    let good = steer_e2e::chat_body("m", "hi", false, 1);
    let mut seen = Vec::new();
    // Above 97 client headers Envoy's own codec limit (100 with host and
    // framing headers) refuses the request before any filter runs.
    for n in 85..=97 {
        let extra: String = (0..n).map(|i| format!("x-client-{i}: v\r\n")).collect();
        let replies = exchange(stack.gateway(), post(&good, &extra).as_bytes(), 1).await;
        let (status, head, body) = replies
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("{n} headers: no reply; so far {seen:?}"));
        seen.push((n, status));
        if status == 200 {
            continue;
        }
        assert_eq!(status, 431, "{n} client headers: {status}\n{head}\n{body}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{n} headers: not JSON ({e}): {body:?}"));
        assert!(json["error"]["code"].is_string(), "{body}");
    }
    // Below the limit requests pass; from the limit on each gets 431 JSON.
    assert_eq!(seen[0].1, 200, "{seen:?}");
    let first_refused = seen
        .iter()
        .position(|(_, s)| *s == 431)
        .expect("some refused");
    assert!(
        seen[first_refused..].iter().all(|(_, s)| *s == 431),
        "{seen:?}"
    );
    common::assert_idle(&stack).await;
}
