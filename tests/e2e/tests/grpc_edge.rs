//! Protocol edge cases Envoy does not produce on demand, sent straight to the
//! agent's gRPC endpoint with a tonic client: an Envoy without
//! `protocol_config`, STREAMED bodies, repeated final chunks, messages out of
//! order, abandoned streams and undecodable frames.

mod common;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use steer_e2e::{Client, Stack, chat_body, metric_value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One ext_proc stream, driven message by message.
struct GrpcStream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl GrpcStream {
    async fn open(stack: &Stack) -> Self {
        let mut client = ExternalProcessorClient::connect(format!("http://{}", stack.ext_proc()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let replies = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx: replies }
    }

    async fn send(&self, request: Request, mode: Option<BodySendMode>) {
        let message = ProcessingRequest {
            request: Some(request),
            protocol_config: mode.map(|m| ProtocolConfiguration {
                request_body_mode: m as i32,
                response_body_mode: BodySendMode::Streamed as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(message).await.unwrap();
    }

    /// The next reply (bounded wait).
    async fn reply(&mut self) -> Response {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a reply within 5 s")
            .expect("stream ok")
            .expect("a reply, not the end of the stream")
            .response
            .expect("a response kind")
    }

    /// A BUFFERED stream routed to a pod (headers, then the whole body):
    /// the stream (still open, in flight) and the pod.
    async fn routed(stack: &Stack, body_text: &str) -> (Self, String) {
        let mut s = Self::open(stack).await;
        let mode = Some(BodySendMode::Buffered);
        s.send(headers(&[], false), mode).await;
        s.reply().await;
        s.send(body(body_text.as_bytes(), true), mode).await;
        let reply = s.reply().await;
        let pod = target_pod(&reply).unwrap_or_else(|| panic!("routed: {reply:?}"));
        (s, pod)
    }

    /// No reply arrives within `ms`.
    async fn silent_for(&mut self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.message())
            .await
            .is_err()
    }
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> Request {
    let mut all = vec![(":method", "POST"), (":path", "/v1/chat/completions")];
    all.extend_from_slice(pairs);
    Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: all
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    })
}

fn body(data: &[u8], end_of_stream: bool) -> Request {
    Request::RequestBody(HttpBody {
        body: data.to_vec(),
        end_of_stream,
        ..Default::default()
    })
}

async fn in_flight(stack: &Stack) -> (f64, String) {
    common::in_flight(stack.metrics()).await
}

/// The `target-pod` a reply sets, if any.
fn target_pod(reply: &Response) -> Option<String> {
    let common = match reply {
        Response::RequestHeaders(h) => h.response.as_ref()?,
        Response::RequestBody(b) => b.response.as_ref()?,
        _ => return None,
    };
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "target-pod")
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_without_protocol_config_streaming_a_body_is_routed_not_refused() {
    let stack = common::stack(&["m", "m"], "round-robin").await;
    let body_text = chat_body("m", &"a long prompt ".repeat(2000), false, 1);
    let (first, rest) = body_text.as_bytes().split_at(body_text.len() / 2);
    let mut s = GrpcStream::open(&stack).await;
    // No protocol_config (Envoy before it existed): the agent offers BUFFERED.
    s.send(headers(&[], false), None).await;
    match s.reply().await {
        Response::RequestHeaders(_) => {}
        other => panic!("headers reply expected: {other:?}"),
    }
    // ...but this Envoy streams the body in chunks anyway: routed, not a 413.
    s.send(body(first, false), None).await;
    assert!(matches!(s.reply().await, Response::RequestBody(_)));
    s.send(body(rest, true), None).await;
    let routed = s.reply().await;
    let pod = target_pod(&routed).unwrap_or_else(|| panic!("routed: {routed:?}"));
    assert!(stack.engine_index(&pod).is_some(), "{pod}");
    drop(s);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_mode_asks_for_buffered_and_headers_reply_carries_mode_override() {
    let stack = common::stack(&["m"], "round-robin").await;
    for mode in [None, Some(BodySendMode::Streamed)] {
        let mut s = GrpcStream::open(&stack).await;
        s.send(headers(&[], false), mode).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let over = reply.mode_override.expect("mode_override offered");
        assert_eq!(
            over.request_body_mode,
            BodySendMode::Buffered as i32,
            "{mode:?}"
        );
        // Envoy honoured it: the body arrives whole and is routed in the body reply.
        let text = chat_body("m", "hi", false, 1);
        s.send(body(text.as_bytes(), true), mode).await;
        assert!(target_pod(&s.reply().await).is_some(), "{mode:?}");
    }
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_final_chunk_is_answered_once_and_not_routed_twice() {
    let stack = common::stack(&["m"], "round-robin").await;
    let mode = Some(BodySendMode::Buffered);
    let text = chat_body("m", "hi", false, 1);
    let (mut s, _) = GrpcStream::routed(&stack, &text).await;
    // Envoy 1.35+ may deliver the last chunk twice.
    s.send(body(text.as_bytes(), true), mode).await;
    let again = s.reply().await;
    assert!(matches!(again, Response::RequestBody(_)));
    assert_eq!(target_pod(&again), None, "not routed again");
    let metrics = Client::default().metrics(stack.metrics()).await.unwrap();
    assert_eq!(
        metric_value(&metrics, "steer_decisions_total", &[("model", "m")]),
        Some(1.0)
    );
    drop(s);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_out_of_order_never_break_the_agent() {
    let stack = common::stack(&["m"], "round-robin").await;
    let text = chat_body("m", "hi", false, 1);
    let response_headers = Request::ResponseHeaders(HttpHeaders::default());
    let orders: Vec<Vec<Request>> = vec![
        // A body before any headers.
        vec![body(text.as_bytes(), true), headers(&[], false)],
        // Response phases before the request.
        vec![response_headers.clone(), headers(&[], false)],
        // Headers twice.
        vec![headers(&[], false), headers(&[], false)],
        // An empty message.
        vec![],
    ];
    for order in orders {
        let mut s = GrpcStream::open(&stack).await;
        if order.is_empty() {
            s.tx.send(ProcessingRequest::default()).await.unwrap();
        }
        for request in order {
            s.send(request, Some(BodySendMode::Buffered)).await;
        }
        // Whatever the agent answers, it answers promptly or not at all, and
        // closing the stream cleans up.
        let _ = s.silent_for(200).await;
        drop(s);
    }
    // The agent still routes a well-formed stream.
    drop(GrpcStream::routed(&stack, &text).await);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_decided_streams_release_their_in_flight_counts() {
    let stack = common::stack(&["m", "m"], "least-request").await;
    let text = chat_body("m", "hi", false, 1);
    let mut open = Vec::new();
    for _ in 0..200 {
        open.push(GrpcStream::routed(&stack, &text).await.0);
    }
    assert_eq!(
        in_flight(&stack).await.0,
        200.0,
        "decided streams count as in flight"
    );
    // Envoy went away without a response phase: every stream is dropped.
    drop(open);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_frame_ends_the_stream_with_an_error_status() {
    use http_body_util::{BodyExt, Full};
    let stack = common::stack(&["m"], "round-robin").await;
    let tcp = tokio::net::TcpStream::connect(stack.ext_proc())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A gRPC frame whose payload is not a ProcessingRequest (field 1 with an
    // invalid wire type).
    let garbage = [0x0f_u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(&garbage);
    let request = hyper::Request::post(format!(
        "http://{}/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        stack.ext_proc()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(bytes::Bytes::from(frame)))
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let header_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let status = header_status.or_else(|| {
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
    });
    let status = status.expect("a grpc-status");
    assert_ne!(status, "0", "never OK: Envoy must apply its failure mode");
    // And the agent still serves.
    let mut s = GrpcStream::open(&stack).await;
    s.send(
        headers(&[("model", "m")], true),
        Some(BodySendMode::Buffered),
    )
    .await;
    assert!(target_pod(&s.reply().await).is_some());
    drop(s);
    common::assert_idle(&stack).await;
}

/// Defect: streams that are decided and then left open (a client of the
/// ext_proc port that never closes them) kept their pod "busy" for ever.
/// Now a stream idle for `--stream-idle-timeout-seconds` is ended and its
/// in-flight count released, while a stream Envoy keeps talking on stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_decided_streams_are_ended_and_release_their_in_flight_counts() {
    let mut opts = common::opts(&["m", "m"], "session-affinity");
    opts.agent_args = vec!["--stream-idle-timeout-seconds".into(), "2".into()];
    let stack = Stack::start(opts).await.unwrap();
    let text = chat_body("m", "hi", false, 1);
    let mode = Some(BodySendMode::Buffered);
    let mut phantoms = Vec::new();
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let mut s = GrpcStream::open(&stack).await;
        s.send(headers(&[("x-session-id", "victim")], false), mode)
            .await;
        s.reply().await;
        s.send(body(text.as_bytes(), true), mode).await;
        pods.insert(target_pod(&s.reply().await).expect("routed"));
        phantoms.push(s);
    }
    assert_eq!(pods.len(), 1, "one session, one pod");
    let (mut live, _) = GrpcStream::routed(&stack, &text).await;
    assert_eq!(in_flight(&stack).await.0, 101.0);
    // The live stream's response arrives in chunks, 0.5 s apart, for 3.5 s.
    live.send(
        Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap::default()),
            ..Default::default()
        }),
        None,
    )
    .await;
    live.reply().await;
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        live.send(
            Request::ResponseBody(HttpBody {
                body: b"data: {}\n\n".to_vec(),
                ..Default::default()
            }),
            None,
        )
        .await;
        live.reply().await;
    }
    let (sum, metrics) = in_flight(&stack).await;
    assert_eq!(sum, 1.0, "only the live stream is in flight:\n{metrics}");
    assert_eq!(
        metric_value(&metrics, "steer_errors_total", &[("reason", "idle_stream")]),
        Some(100.0)
    );
    for s in &mut phantoms {
        let end = tokio::time::timeout(Duration::from_secs(1), s.rx.message()).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "an idle decided stream ends with OK (Envoy carries on): {end:?}"
        );
    }
    drop(live);
    common::assert_idle(&stack).await;
}
