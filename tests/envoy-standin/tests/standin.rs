//! Runs the real binary against a fake ext_proc server and a tiny upstream, both in-process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Req;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Resp;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::Stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

const TIMEOUT: Duration = Duration::from_secs(10);

type Log<T> = Arc<Mutex<Vec<T>>>;

#[derive(Debug)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A tiny engine: records requests; `/stream` answers with three SSE events 150 ms apart.
async fn start_upstream() -> (SocketAddr, Log<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Log<Seen> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let path = parts.uri.path().to_owned();
                        log.lock().unwrap().push(Seen {
                            path: path.clone(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, Infallible>(upstream_response(&path))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn upstream_response(path: &str) -> http::Response<UpBody> {
    if path != "/stream" {
        let body = Full::new(Bytes::from_static(br#"{"ok":true}"#)).boxed();
        return http::Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(format!("data: tok{i}\n\n")))))
                .await;
        }
    });
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// The fake ext_proc server. Routes everything to the upstream except `/deny` (immediate
/// 429), `/no-route` (no target-pod), `/dead` (a closed port), `/override` (switches to
/// BUFFERED via mode_override) and `/hang` (never answers). In full-duplex mode it holds the headers reply until
/// the whole body is in, then returns the body in two parts plus "#extra".
#[derive(Clone)]
struct Fake {
    target: String,
    full_duplex: bool,
    log: Log<ProcessingRequest>,
}

#[derive(Default)]
struct PerStream {
    path: String,
    body: Vec<u8>,
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn header(h: &HttpHeaders, key: &str) -> String {
    let v = h
        .headers
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .find(|v| v.key == key)
        .map(|v| v.raw_value.clone());
    String::from_utf8(v.unwrap_or_default()).unwrap()
}

fn message(response: Resp) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn common(set_headers: Vec<HeaderValueOption>) -> Option<CommonResponse> {
    let header_mutation = Some(HeaderMutation {
        set_headers,
        remove_headers: vec![],
    });
    Some(CommonResponse {
        header_mutation,
        clear_route_cache: true,
        ..Default::default()
    })
}

impl Fake {
    fn headers_reply(&self, st: &PerStream) -> ProcessingResponse {
        let mut sets = vec![set("x-added", "yes")];
        match st.path.as_str() {
            "/no-route" => {}
            "/dead" => sets.push(set("target-pod", "127.0.0.1:1")),
            _ => sets.push(set("target-pod", &self.target)),
        }
        let mut reply = message(Resp::RequestHeaders(HeadersResponse {
            response: common(sets),
        }));
        let endpoint = Value {
            kind: Some(Kind::StringValue(self.target.clone())),
        };
        let lb = Struct {
            fields: [("x-gateway-destination-endpoint".to_string(), endpoint)].into(),
        };
        let lb = Value {
            kind: Some(Kind::StructValue(lb)),
        };
        reply.dynamic_metadata = Some(Struct {
            fields: [("envoy.lb".to_string(), lb)].into(),
        });
        if st.path == "/override" {
            reply.mode_override = Some(ProcessingMode {
                request_body_mode: BodySendMode::Buffered as i32,
                response_body_mode: BodySendMode::Streamed as i32,
                ..Default::default()
            });
        }
        reply
    }

    fn respond(&self, request: &ProcessingRequest, st: &mut PerStream) -> Vec<ProcessingResponse> {
        match request.request.as_ref().unwrap() {
            Req::RequestHeaders(h) => {
                st.path = header(h, ":path");
                if st.path == "/hang" {
                    return vec![];
                }
                if st.path == "/deny" {
                    let ir = ImmediateResponse {
                        status: Some(HttpStatus { code: 429 }),
                        headers: Some(HeaderMutation {
                            set_headers: vec![set("x-reason", "quota")],
                            remove_headers: vec![],
                        }),
                        body: b"slow down".to_vec(),
                        ..Default::default()
                    };
                    return vec![message(Resp::ImmediateResponse(ir))];
                }
                if self.full_duplex && !h.end_of_stream {
                    return vec![];
                }
                vec![self.headers_reply(st)]
            }
            Req::RequestBody(b) if self.full_duplex => {
                st.body.extend_from_slice(&b.body);
                if !b.end_of_stream {
                    return vec![];
                }
                let half = st.body.len() / 2;
                let part = |body: Vec<u8>, end_of_stream| {
                    let mutation =
                        body_mutation::Mutation::StreamedResponse(StreamedBodyResponse {
                            body,
                            end_of_stream,
                            ..Default::default()
                        });
                    let response = CommonResponse {
                        body_mutation: Some(BodyMutation {
                            mutation: Some(mutation),
                        }),
                        ..Default::default()
                    };
                    message(Resp::RequestBody(BodyResponse {
                        response: Some(response),
                    }))
                };
                let mut second = st.body[half..].to_vec();
                second.extend_from_slice(b"#extra");
                vec![
                    self.headers_reply(st),
                    part(st.body[..half].to_vec(), false),
                    part(second, true),
                ]
            }
            Req::RequestBody(b) => {
                let len = b.body.len().to_string();
                vec![message(Resp::RequestBody(BodyResponse {
                    response: common(vec![set("x-body-len", &len)]),
                }))]
            }
            Req::ResponseHeaders(_) => {
                vec![message(Resp::ResponseHeaders(HeadersResponse {
                    response: common(vec![set("x-resp-mut", "1")]),
                }))]
            }
            Req::ResponseBody(_) => vec![message(Resp::ResponseBody(BodyResponse::default()))],
            Req::ResponseTrailers(_) | Req::RequestTrailers(_) => {
                vec![message(Resp::ResponseTrailers(TrailersResponse::default()))]
            }
        }
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Fake {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            let mut st = PerStream::default();
            while let Ok(Some(m)) = inbound.message().await {
                fake.log.lock().unwrap().push(m.clone());
                for reply in fake.respond(&m, &mut st) {
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Harness {
    addr: SocketAddr,
    upstream: SocketAddr,
    seen: Log<Seen>,
    log: Log<ProcessingRequest>,
    _child: Child,
}

async fn harness(mode: &str) -> Harness {
    harness_with(mode, &["--message-timeout-ms", "2000"]).await
}

async fn harness_with(mode: &str, extra: &[&str]) -> Harness {
    let (upstream, seen) = start_upstream().await;
    let log: Log<ProcessingRequest> = Arc::default();
    let fake = Fake {
        target: upstream.to_string(),
        full_duplex: mode == "full-duplex",
        log: Arc::clone(&log),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ext_proc = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(fake))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_envoy-standin"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ext-proc",
            &ext_proc.to_string(),
            "--debug-headers",
        ])
        .args(["--request-body-mode", mode])
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("envoy-standin listening on ")
        .expect(&line)
        .parse()
        .unwrap();
    Harness {
        addr,
        upstream,
        seen,
        log,
        _child: child,
    }
}

impl Harness {
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> http::Response<Incoming> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-client", "c")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        tokio::time::timeout(TIMEOUT, client().request(request))
            .await
            .expect("request hung")
            .unwrap()
    }

    fn messages(&self) -> Vec<ProcessingRequest> {
        self.log.lock().unwrap().clone()
    }
}

/// A plain client, with Nagle off like every socket in a latency-sensitive path.
fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn text(response: http::Response<Incoming>) -> String {
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

fn body_messages(messages: &[ProcessingRequest], response: bool) -> Vec<(usize, bool)> {
    messages
        .iter()
        .filter_map(|m| match (m.request.as_ref()?, response) {
            (Req::RequestBody(b), false) | (Req::ResponseBody(b), true) => {
                Some((b.body.len(), b.end_of_stream))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn buffered_mode_routes_to_the_target_and_applies_headers() {
    let h = harness("buffered").await;
    let body = br#"{"model":"m","messages":[]}"#;
    let response = h.call("POST", "/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let hd = response.headers().clone();
    assert_eq!(hd["x-resp-mut"], "1");
    assert_eq!(hd["x-standin-upstream"], h.upstream.to_string().as_str());
    assert_eq!(hd["x-standin-route-cache-cleared"], "true");
    let metadata = hd["x-standin-dynamic-metadata"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        metadata,
        format!(
            r#"{{"envoy.lb":{{"x-gateway-destination-endpoint":"{}"}}}}"#,
            h.upstream
        )
    );
    assert_eq!(text(response).await, r#"{"ok":true}"#);

    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(
        (up.path.as_str(), &up.body[..]),
        ("/v1/chat/completions", &body[..])
    );
    assert_eq!(up.headers["x-added"], "yes");
    assert_eq!(up.headers["x-body-len"], body.len().to_string().as_str());
    assert_eq!(up.headers["x-client"], "c");
    assert_eq!(up.headers["host"], h.addr.to_string().as_str());
    assert!(up.headers.contains_key("x-request-id"));

    let messages = h.messages();
    let config = messages[0]
        .protocol_config
        .expect("protocol_config on the first message");
    assert_eq!(
        (config.request_body_mode, config.response_body_mode),
        (2, 1)
    );
    assert!(messages[1..].iter().all(|m| m.protocol_config.is_none()));
    let Some(Req::RequestHeaders(first)) = &messages[0].request else {
        panic!("headers first")
    };
    assert!(!first.end_of_stream);
    assert_eq!(header(first, ":method"), "POST");
    assert_eq!(header(first, ":authority"), h.addr.to_string());
    assert_eq!(body_messages(&messages, false), [(body.len(), true)]);
    let Some(Req::ResponseHeaders(rh)) = &messages[2].request else {
        panic!("response headers third")
    };
    assert_eq!(header(rh, ":status"), "200");
    assert_eq!(body_messages(&messages, true).last(), Some(&(11, true)));
}

#[tokio::test]
async fn full_duplex_mode_streams_the_body_through_the_server() {
    let h = harness("full-duplex").await;
    let body: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let response = h.call("POST", "/v1/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-standin-upstream"],
        h.upstream.to_string().as_str()
    );
    assert_eq!(text(response).await, r#"{"ok":true}"#);

    let seen = h.seen.lock().unwrap();
    let mut expected = body.clone();
    expected.extend_from_slice(b"#extra");
    assert_eq!(&seen[0].body[..], &expected[..]);
    assert_eq!(seen[0].headers["x-added"], "yes");

    let messages = h.messages();
    assert_eq!(messages[0].protocol_config.unwrap().request_body_mode, 4);
    let chunks = body_messages(&messages, false);
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert!(chunks.iter().all(|(len, _)| *len <= 16384));
    assert_eq!(chunks.iter().map(|(len, _)| len).sum::<usize>(), body.len());
    assert_eq!(chunks.iter().filter(|(_, eos)| *eos).count(), 1);
    assert!(chunks.last().unwrap().1);
}

#[tokio::test]
async fn immediate_response_reaches_the_client() {
    let h = harness("buffered").await;
    let response = h.call("GET", "/deny", b"").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-reason"], "quota");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(text(response).await, "slow down");
    assert!(h.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn get_without_body_does_not_hang() {
    for mode in ["buffered", "streamed", "full-duplex"] {
        let h = harness(mode).await;
        let response = h.call("GET", "/v1/models", b"").await;
        assert_eq!(response.status(), 200, "{mode}");
        assert_eq!(text(response).await, r#"{"ok":true}"#);
        let messages = h.messages();
        let Some(Req::RequestHeaders(first)) = &messages[0].request else {
            panic!("headers first")
        };
        assert!(first.end_of_stream, "{mode}");
        assert!(body_messages(&messages, false).is_empty(), "{mode}");
        assert!(
            h.seen.lock().unwrap()[0]
                .headers
                .get("transfer-encoding")
                .is_none(),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn streamed_response_arrives_chunk_by_chunk() {
    let h = harness("buffered").await;
    let started = Instant::now();
    let response = h.call("GET", "/stream", b"").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = tokio::time::timeout(TIMEOUT, body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((started.elapsed(), data));
        }
    }
    let all: Vec<u8> = arrivals.iter().flat_map(|(_, d)| d.to_vec()).collect();
    assert_eq!(all, b"data: tok0\n\ndata: tok1\n\ndata: tok2\n\n");
    assert!(arrivals.len() >= 3, "{arrivals:?}");
    let (first, last) = (arrivals[0].0, arrivals.last().unwrap().0);
    assert!(
        last - first >= Duration::from_millis(250),
        "first token was held back: {arrivals:?}"
    );

    let chunks = body_messages(&h.messages(), true);
    assert!(chunks.len() >= 4, "{chunks:?}");
    assert_eq!(
        chunks.last(),
        Some(&(0, true)),
        "chunked upstream ends with an empty end_of_stream chunk"
    );
}

#[tokio::test]
async fn missing_target_is_a_503_the_server_sees() {
    let h = harness("buffered").await;
    let response = h.call("POST", "/no-route", b"{}").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-resp-mut"], "1");
    assert_eq!(text(response).await, "no healthy upstream");
    let messages = h.messages();
    let status = messages.iter().find_map(|m| match &m.request {
        Some(Req::ResponseHeaders(rh)) => Some(header(rh, ":status")),
        _ => None,
    });
    assert_eq!(status.as_deref(), Some("503"));
}

#[tokio::test]
async fn streamed_mode_ignores_header_mutations_in_body_replies() {
    let h = harness_with("streamed", &["--chunk-size", "1000"]).await;
    let body = vec![b'x'; 4500];
    let response = h.call("POST", "/v1/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, r#"{"ok":true}"#);
    let seen = h.seen.lock().unwrap();
    assert_eq!(&seen[0].body[..], &body[..]);
    assert_eq!(seen[0].headers["x-added"], "yes");
    assert!(
        seen[0].headers.get("x-body-len").is_none(),
        "header mutation from a STREAMED body reply applied"
    );
    assert!(
        seen[0].headers.get("content-length").is_none(),
        "content-length kept in STREAMED mode"
    );
    let chunks = body_messages(&h.messages(), false);
    assert!(
        chunks.len() >= 5 && chunks.iter().all(|(len, _)| *len <= 1000),
        "{chunks:?}"
    );
    assert_eq!(chunks.iter().filter(|(_, eos)| *eos).count(), 1);
}

#[tokio::test]
async fn unanswered_message_times_out_or_fails_open() {
    let h = harness_with("buffered", &["--message-timeout-ms", "100"]).await;
    let response = h.call("POST", "/hang", b"{}").await;
    assert_eq!(response.status(), 504);
    let details = response.headers()["x-standin-details"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(details, "ext_proc_error_per-message_timeout_exceeded");
    assert_eq!(text(response).await, "");

    // Failing open, the request goes on unmodified: no target-pod, so ORIGINAL_DST has no host.
    let h = harness_with(
        "buffered",
        &["--message-timeout-ms", "100", "--failure-mode-allow"],
    )
    .await;
    let response = h.call("POST", "/hang", b"{}").await;
    assert_eq!(response.status(), 503);
    assert_eq!(text(response).await, "no healthy upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients() {
    let h = Arc::new(harness("buffered").await);
    let calls = (0..256).map(|i| {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            let body = format!(r#"{{"n":{i}}}"#);
            let response = h
                .call("POST", "/v1/chat/completions", body.as_bytes())
                .await;
            (response.status(), text(response).await)
        })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(
            call.unwrap(),
            (http::StatusCode::OK, r#"{"ok":true}"#.to_owned())
        );
    }
    assert_eq!(h.seen.lock().unwrap().len(), 256);
}

#[tokio::test]
async fn mode_override_needs_allow_mode_override() {
    let body = vec![b'y'; 3000];
    for (allow, expect_buffered) in [(false, false), (true, true)] {
        let mut args = vec!["--chunk-size", "1000"];
        if allow {
            args.push("--allow-mode-override");
        }
        let h = harness_with("streamed", &args).await;
        let response = h.call("POST", "/override", &body).await;
        assert_eq!(response.status(), 200);
        let _ = text(response).await;
        let applied = h.seen.lock().unwrap()[0]
            .headers
            .get("x-body-len")
            .is_some();
        assert_eq!(applied, expect_buffered, "allow={allow}");
        let chunks = body_messages(&h.messages(), false);
        assert_eq!(
            chunks.len() == 1,
            expect_buffered,
            "allow={allow}: {chunks:?}"
        );
    }
}

#[tokio::test]
async fn upstream_and_ext_proc_failures_are_envoy_local_replies() {
    let h = harness("buffered").await;
    let response = h.call("POST", "/dead", b"{}").await;
    assert_eq!(response.status(), 503);
    let body = text(response).await;
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers"),
        "{body}"
    );

    // Nothing listens on the ext_proc port: a gRPC error before response headers is a 500.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_envoy-standin"))
        .args(["--listen", "127.0.0.1:0", "--ext-proc", &closed.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("envoy-standin listening on ").unwrap();
    let request = http::Request::get(format!("http://{addr}/v1/models"))
        .body(Full::default())
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, client().request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(text(response).await, "");
}
