//! The ext_proc state machine driven message by message, without I/O.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};

use super::headers::{header_map, value_of};
use super::{Shared, StreamState};
use crate::config::{FileConfig, Settings};
use crate::pool::Pools;
use crate::router::Router;
use crate::telemetry::Metrics;

fn shared() -> Arc<Shared> {
    shared_with("max_body_bytes: 1000\n")
}

fn shared_with(extra_yaml: &str) -> Arc<Shared> {
    let file: FileConfig = serde_yaml::from_str(&format!(
        "{extra_yaml}models:\n  m:\n    endpoints: [\"10.0.0.1:8000\", \"10.0.0.2:8000\"]\n"
    ))
    .unwrap();
    let pools = Arc::new(Pools::new(Settings::resolve(Some(file), &[]).unwrap()));
    Arc::new(Shared {
        router: Arc::new(Router::new(pools.clone())),
        metrics: Metrics::new(pools),
        body_budget: Default::default(),
        stream_idle: std::time::Duration::from_secs(600),
    })
}

fn headers(eos: bool, extra: &[(&str, &str)]) -> Request {
    let mut pairs = vec![(":method", "POST"), (":path", "/v1/chat/completions")];
    pairs.extend_from_slice(extra);
    Request::RequestHeaders(HttpHeaders {
        headers: Some(header_map(&pairs)),
        end_of_stream: eos,
        ..Default::default()
    })
}

fn body(data: &str, eos: bool) -> Request {
    Request::RequestBody(HttpBody {
        body: data.as_bytes().to_vec(),
        end_of_stream: eos,
        ..Default::default()
    })
}

fn send(
    state: &mut StreamState,
    request: Request,
    mode: Option<BodySendMode>,
) -> Vec<ProcessingResponse> {
    send_config(state, request, mode, false)
}

/// STREAMED with `send_body_without_waiting_for_header_response` (the shipped
/// one-wait mode) announced on this message.
fn send_held(state: &mut StreamState, request: Request) -> Vec<ProcessingResponse> {
    send_config(state, request, Some(BodySendMode::Streamed), true)
}

fn send_config(
    state: &mut StreamState,
    request: Request,
    mode: Option<BodySendMode>,
    without_waiting: bool,
) -> Vec<ProcessingResponse> {
    let mut out = Vec::new();
    let message = ProcessingRequest {
        request: Some(request),
        protocol_config: mode.map(|m| ProtocolConfiguration {
            request_body_mode: m as i32,
            response_body_mode: BodySendMode::Streamed as i32,
            send_body_without_waiting_for_header_response: without_waiting,
        }),
        ..Default::default()
    };
    state.on_message(message, &mut out);
    out
}

/// The `steer` metadata a routing reply sets, for `pod` of model `m`.
fn steer_metadata_for(pod: &str) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Metadata {
        filter_metadata: [(
            "steer".to_owned(),
            Struct {
                fields: [
                    ("pod".to_owned(), string(pod)),
                    ("model".to_owned(), string("m")),
                    ("strategy".to_owned(), string("least-request")),
                ]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// An observability-mode message carrying `steer` metadata for `pod`.
fn observe(
    state: &mut StreamState,
    request: Request,
    pod: Option<&str>,
) -> Vec<ProcessingResponse> {
    let mut out = Vec::new();
    let message = ProcessingRequest {
        request: Some(request),
        metadata_context: pod.map(steer_metadata_for),
        observability_mode: true,
        ..Default::default()
    };
    state.on_message(message, &mut out);
    out
}

fn response_headers(status: &str, content_type: &str, eos: bool) -> Request {
    Request::ResponseHeaders(HttpHeaders {
        headers: Some(header_map(&[
            (":status", status),
            ("content-type", content_type),
        ])),
        end_of_stream: eos,
        ..Default::default()
    })
}

fn response_body(data: &str, eos: bool) -> Request {
    Request::ResponseBody(HttpBody {
        body: data.as_bytes().to_vec(),
        end_of_stream: eos,
        ..Default::default()
    })
}

/// The `steer` metadata a routing reply carries.
fn steer_metadata<'a>(reply: &'a ProcessingResponse, key: &str) -> Option<&'a str> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let ns = reply.dynamic_metadata.as_ref()?.fields.get("steer")?;
    let Some(Kind::StructValue(fields)) = &ns.kind else {
        return None;
    };
    match fields.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

fn set_header<'a>(reply: &'a ProcessingResponse, key: &str) -> Option<&'a str> {
    let common = match reply.response.as_ref()? {
        Response::RequestHeaders(h) | Response::ResponseHeaders(h) => h.response.as_ref()?,
        Response::RequestBody(b) | Response::ResponseBody(b) => b.response.as_ref()?,
        _ => return None,
    };
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == key)
        .map(value_of)
}

fn status(reply: &ProcessingResponse) -> Option<i32> {
    match reply.response.as_ref()? {
        Response::ImmediateResponse(i) => i.status.map(|s| s.code),
        _ => None,
    }
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn buffered_routes_in_the_body_reply_and_ignores_a_repeated_final_chunk() {
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &[]), Some(BodySendMode::Buffered));
    assert!(matches!(r[0].response, Some(Response::RequestHeaders(_))));
    assert!(set_header(&r[0], "target-pod").is_none());
    let r = send(&mut s, body(CHAT, true), None);
    assert_eq!(r.len(), 1);
    let target = set_header(&r[0], "target-pod").unwrap().to_owned();
    assert_eq!(
        set_header(&r[0], "x-gateway-destination-endpoint"),
        Some(target.as_str())
    );
    assert_eq!(set_header(&r[0], "x-gateway-model-name"), Some("m"));
    assert!(r[0].dynamic_metadata.is_some());
    assert_eq!(s.decision().unwrap().member.endpoint.in_flight(), 1);
    // Envoy 1.35+ may deliver the final chunk twice: answered, not re-routed.
    let r = send(&mut s, body(CHAT, true), None);
    assert_eq!(r.len(), 1);
    assert!(set_header(&r[0], "target-pod").is_none());
    let endpoint = s.decision().unwrap().member.endpoint.clone();
    assert_eq!(endpoint.in_flight(), 1);
    drop(s);
    assert_eq!(
        endpoint.in_flight(),
        0,
        "in-flight released when the stream ends"
    );
}

#[test]
fn full_duplex_holds_the_headers_reply_until_the_body_ends() {
    let mut s = StreamState::new(shared());
    let mode = Some(BodySendMode::FullDuplexStreamed);
    assert!(send(&mut s, headers(false, &[]), mode).is_empty());
    let (a, b) = CHAT.split_at(20);
    assert!(send(&mut s, body(a, false), mode).is_empty());
    let r = send(&mut s, body(b, true), mode);
    assert_eq!(r.len(), 2);
    assert!(matches!(r[0].response, Some(Response::RequestHeaders(_))));
    assert!(set_header(&r[0], "target-pod").is_some());
    let Some(Response::RequestBody(reply)) = &r[1].response else {
        panic!("body reply expected");
    };
    let mutation = reply
        .response
        .as_ref()
        .unwrap()
        .body_mutation
        .as_ref()
        .unwrap();
    let Some(
        envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation::StreamedResponse(
            streamed,
        ),
    ) = &mutation.mutation
    else {
        panic!("streamed body expected");
    };
    assert_eq!(streamed.body, CHAT.as_bytes());
    assert!(streamed.end_of_stream);
}

#[test]
fn one_wait_mode_holds_the_headers_reply_and_answers_every_chunk_when_the_body_ends() {
    let mut s = StreamState::new(shared());
    assert!(send_held(&mut s, headers(false, &[])).is_empty());
    let (a, b) = CHAT.split_at(20);
    assert!(send_held(&mut s, body(a, false)).is_empty());
    assert!(send_held(&mut s, body("", false)).is_empty());
    let r = send_held(&mut s, body(b, true));
    assert_eq!(r.len(), 4, "the headers reply, then one reply per chunk");
    assert!(matches!(r[0].response, Some(Response::RequestHeaders(_))));
    let target = set_header(&r[0], "target-pod").unwrap().to_owned();
    let Some(Response::RequestHeaders(h)) = &r[0].response else {
        unreachable!()
    };
    assert!(h.response.as_ref().unwrap().clear_route_cache);
    assert_eq!(steer_metadata(&r[0], "pod"), Some(target.as_str()));
    assert_eq!(steer_metadata(&r[0], "model"), Some("m"));
    assert_eq!(steer_metadata(&r[0], "strategy"), Some("least-request"));
    for reply in &r[1..] {
        let Some(Response::RequestBody(b)) = &reply.response else {
            panic!("a body reply: {reply:?}")
        };
        let common = b.response.clone().unwrap_or_default();
        assert!(common.header_mutation.is_none() && common.body_mutation.is_none());
    }
    assert!(r[0].mode_override.is_none());
    assert_eq!(s.decision().unwrap().member.endpoint.in_flight(), 1);
    // A repeated final chunk is answered, not re-routed.
    let r = send_held(&mut s, body(b, true));
    assert_eq!(r.len(), 1);
    assert!(set_header(&r[0], "target-pod").is_none());
}

#[test]
fn one_wait_mode_answers_bad_input_with_one_immediate_response() {
    let mut s = StreamState::new(shared());
    assert!(send_held(&mut s, headers(false, &[])).is_empty());
    assert!(send_held(&mut s, body("{\"model\":", false)).is_empty());
    let r = send_held(&mut s, body("", true));
    assert_eq!(r.len(), 1);
    assert_eq!(status(&r[0]), Some(400));
    // A body that outgrows the limit mid-stream is refused at once.
    let mut s = StreamState::new(shared());
    assert!(send_held(&mut s, headers(false, &[])).is_empty());
    let r = send_held(&mut s, body(&"x".repeat(1001), false));
    assert_eq!(status(&r[0]), Some(413));
    assert!(
        send_held(&mut s, body("", true)).is_empty(),
        "the request has ended"
    );
}

#[test]
fn the_observer_counts_usage_for_the_routed_pod_and_is_never_answered() {
    let shared = shared();
    let mut route = StreamState::new(shared.clone());
    send_held(&mut route, headers(false, &[]));
    let r = send_held(&mut route, body(CHAT, true));
    let pod = set_header(&r[0], "target-pod").unwrap().to_owned();
    let member = route.decision().unwrap().member.clone();
    let mut obs = StreamState::new(shared.clone());
    assert!(
        observe(
            &mut obs,
            response_headers("200", "text/event-stream", false),
            Some(&pod)
        )
        .is_empty()
    );
    assert!(!obs.finished());
    let usage = "data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
    let (a, b) = usage.split_at(30);
    assert!(observe(&mut obs, response_body(a, false), Some(&pod)).is_empty());
    assert!(observe(&mut obs, response_body(b, true), Some(&pod)).is_empty());
    assert!(
        obs.finished(),
        "the agent ends the stream at the response's end"
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(member.counters.prompt_tokens.load(Relaxed), 7);
    assert_eq!(member.counters.completion_tokens.load(Relaxed), 3);
    assert_eq!(
        member.endpoint.in_flight(),
        1,
        "in-flight follows the routing stream"
    );
    drop(route);
    assert_eq!(member.endpoint.in_flight(), 0);

    // A JSON body, headers and body in one message each.
    let mut obs = StreamState::new(shared.clone());
    observe(
        &mut obs,
        response_headers("200", "application/json", false),
        Some(&pod),
    );
    observe(
        &mut obs,
        response_body(
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            true,
        ),
        Some(&pod),
    );
    assert_eq!(member.counters.completion_tokens.load(Relaxed), 5);

    // Envoy's own 503 for the pod takes it out of rotation.
    assert!(member.endpoint.is_ready());
    let mut obs = StreamState::new(shared.clone());
    observe(
        &mut obs,
        response_headers("503", "text/plain", true),
        Some(&pod),
    );
    assert!(obs.finished());
    assert!(!member.endpoint.is_ready());

    // Without metadata (a request the agent did not route), or for a pod that
    // is not in the model's pool, nothing is counted and nothing fails.
    for pod in [None, Some("10.9.9.9:1")] {
        let mut obs = StreamState::new(shared.clone());
        observe(
            &mut obs,
            response_headers("502", "application/json", false),
            pod,
        );
        observe(
            &mut obs,
            response_body(r#"{"usage":{"prompt_tokens":100}}"#, true),
            pod,
        );
        assert!(obs.finished());
    }
    assert_eq!(member.counters.prompt_tokens.load(Relaxed), 8);
}

#[test]
fn streamed_mode_asks_envoy_to_buffer() {
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &[]), Some(BodySendMode::Streamed));
    let mode = r[0].mode_override.as_ref().expect("mode_override");
    assert_eq!(mode.request_body_mode, BodySendMode::Buffered as i32);
}

#[test]
fn limits_and_errors_end_the_stream_with_one_immediate_response() {
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &[("content-length", "5000")]), None);
    assert_eq!(status(&r[0]), Some(413));
    assert!(
        send(&mut s, body(CHAT, true), None).is_empty(),
        "nothing after an immediate response"
    );

    let mut s = StreamState::new(shared());
    send(&mut s, headers(false, &[]), Some(BodySendMode::Streamed));
    let big = "x".repeat(600);
    assert_eq!(send(&mut s, body(&big, false), None).len(), 1);
    let r = send(&mut s, body(&big, true), None);
    assert_eq!(
        status(&r[0]),
        Some(413),
        "accumulated chunks count against the limit"
    );

    for (extra, text, code) in [
        (vec![], "{", 400),
        (vec![("routing-strategy", "nope")], CHAT, 400),
        (vec![], r#"{"model":"other"}"#, 404),
    ] {
        let mut s = StreamState::new(shared());
        send(&mut s, headers(false, &extra), None);
        let r = send(&mut s, body(text, true), None);
        assert_eq!(status(&r[0]), Some(code), "{text}");
    }
}

#[test]
fn bodiless_models_list_and_missing_model() {
    let mut s = StreamState::new(shared());
    let mut out = Vec::new();
    s.on_message(
        ProcessingRequest {
            request: Some(Request::RequestHeaders(HttpHeaders {
                headers: Some(header_map(&[(":method", "GET"), (":path", "/v1/models")])),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        },
        &mut out,
    );
    let Some(Response::ImmediateResponse(models)) = &out[0].response else {
        panic!("immediate response expected");
    };
    let json: serde_json::Value = serde_json::from_slice(&models.body).unwrap();
    assert_eq!(json["data"][0]["id"], "m");

    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(true, &[]), None);
    assert_eq!(status(&r[0]), Some(400));
}

#[test]
fn subset_hint_restricts_the_choice_to_the_gateways_pool() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let hint = |endpoints: &str| Metadata {
        filter_metadata: [(
            "envoy.lb.subset_hint".to_owned(),
            Struct {
                fields: [(
                    "x-gateway-destination-endpoint-subset".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(endpoints.to_owned())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    };
    for _ in 0..8 {
        let mut s = StreamState::new(shared());
        let mut out = Vec::new();
        s.on_message(
            ProcessingRequest {
                request: Some(headers(false, &[("routing-strategy", "random")])),
                metadata_context: Some(hint("10.0.0.2:8000")),
                ..Default::default()
            },
            &mut out,
        );
        let r = send(&mut s, body(CHAT, true), None);
        assert_eq!(set_header(&r[0], "target-pod"), Some("10.0.0.2:8000"));
    }
    // A subset naming no pod of the model: 503, never a pod outside it.
    let mut s = StreamState::new(shared());
    let mut out = Vec::new();
    s.on_message(
        ProcessingRequest {
            request: Some(headers(false, &[])),
            metadata_context: Some(hint("10.9.9.9:8000")),
            ..Default::default()
        },
        &mut out,
    );
    let r = send(&mut s, body(CHAT, true), None);
    assert_eq!(status(&r[0]), Some(503));
}

#[test]
fn arbitrary_message_sequences_never_panic() {
    use envoy_types::pb::envoy::service::ext_proc::v3::HttpTrailers;
    // Deterministic pseudo-random sequences: any order, any bytes, any mode.
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 27)
    };
    let bodies = [
        "",
        CHAT,
        "{",
        "\u{0}\u{ff}garbage",
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
        r#"{"model":"nope"}"#,
        "data: {\"usage\":{\"prompt_tokens\":1}}\n\n",
    ];
    let modes = [
        None,
        Some(BodySendMode::Buffered),
        Some(BodySendMode::Streamed),
        Some(BodySendMode::FullDuplexStreamed),
        Some(BodySendMode::BufferedPartial),
    ];
    let shared = shared();
    for _ in 0..2000 {
        let mut s = StreamState::new(shared.clone());
        for _ in 0..(next() % 8) {
            let body_text = bodies[(next() % bodies.len() as u64) as usize];
            let eos = next() % 2 == 0;
            let request = match next() % 7 {
                0 => headers(
                    eos,
                    &[
                        ("content-length", "12"),
                        ("routing-strategy", "prefix-cache"),
                    ],
                ),
                1 => body(body_text, eos),
                2 => Request::RequestTrailers(HttpTrailers::default()),
                3 => Request::ResponseHeaders(HttpHeaders {
                    headers: Some(header_map(&[
                        (":status", "200"),
                        ("content-type", "text/event-stream"),
                    ])),
                    end_of_stream: eos,
                    ..Default::default()
                }),
                4 => Request::ResponseBody(HttpBody {
                    body: body_text.as_bytes().to_vec(),
                    end_of_stream: eos,
                    ..Default::default()
                }),
                5 => Request::ResponseTrailers(HttpTrailers::default()),
                _ => headers(true, &[(":method", "GET"), (":path", "/v1/models")]),
            };
            let mode = modes[(next() % modes.len() as u64) as usize];
            let out = match next() % 4 {
                // One-wait mode: the held replies all leave with the last chunk.
                0 => {
                    let out = send_held(&mut s, request);
                    assert!(
                        out.len() <= 9,
                        "at most one reply per message sent, plus one"
                    );
                    out
                }
                1 => {
                    let out = observe(&mut s, request, Some("10.0.0.1:8000"));
                    assert!(out.is_empty(), "an observer is never answered");
                    out
                }
                _ => {
                    let out = send(&mut s, request, mode);
                    // Full-duplex trailers may complete headers, body and trailers at once.
                    assert!(out.len() <= 3, "at most three replies per message");
                    out
                }
            };
            drop(out);
        }
        s.after_reply();
    }
    // Every stream ended: no request is still counted in flight.
    let snapshot = shared.router.pools().snapshot();
    assert!(snapshot.endpoints.iter().all(|e| e.in_flight() == 0));
}

#[test]
fn body_memory_follows_arriving_bytes_and_is_bounded_across_streams() {
    let shared = shared_with("max_body_bytes: 1000\nmax_buffered_body_bytes: 1500\n");
    let duplex = Some(BodySendMode::FullDuplexStreamed);
    let chunk = "x".repeat(600);
    // A content-length near the limit reserves nothing.
    let mut a = StreamState::new(shared.clone());
    send(&mut a, headers(false, &[("content-length", "999")]), duplex);
    assert_eq!(a.body_capacity(), 0);
    assert_eq!(shared.body_budget.held(), 0);
    assert!(send(&mut a, body(&chunk, false), duplex).is_empty());
    let mut b = StreamState::new(shared.clone());
    send(&mut b, headers(false, &[]), duplex);
    assert!(send(&mut b, body(&chunk, false), duplex).is_empty());
    assert_eq!(shared.body_budget.held(), 1200);
    // A third stream's body would pass the shared bound: 503, not more memory.
    let mut c = StreamState::new(shared.clone());
    send(&mut c, headers(false, &[]), duplex);
    let r = send(&mut c, body(&chunk, false), duplex);
    assert_eq!(status(&r[0]), Some(503));
    assert_eq!(shared.body_budget.held(), 1200);
    // Abandoned and decided streams give their bytes back.
    drop(a);
    assert_eq!(shared.body_budget.held(), 600);
    let r = send(&mut b, body("", true), duplex);
    assert!(!r.is_empty());
    assert_eq!(shared.body_budget.held(), 0);
}

#[test]
fn user_input_in_errors_is_an_escaped_excerpt() {
    let mut s = StreamState::new(shared());
    send(&mut s, headers(false, &[]), Some(BodySendMode::Buffered));
    let model = format!("x\n2026-12-02 INFO forged\u{1b}[31m{}", "y".repeat(500));
    let chat = serde_json::json!({"model": model, "messages": []}).to_string();
    let r = send(&mut s, body(&chat, true), None);
    assert_eq!(status(&r[0]), Some(404));
    let Some(Response::ImmediateResponse(i)) = &r[0].response else {
        panic!("immediate response");
    };
    let json: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    let message = json["error"]["message"].as_str().unwrap();
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains("x\\n2026"), "{message}");
    assert!(message.len() < 200, "at most a short excerpt: {message}");
}

#[test]
fn an_idle_stream_gives_back_its_in_flight_count_and_its_body_bytes() {
    let shared = shared();
    let mut s = StreamState::new(shared.clone());
    send(&mut s, headers(false, &[]), Some(BodySendMode::Buffered));
    send(&mut s, body(CHAT, true), None);
    let endpoint = s.decision().unwrap().member.endpoint.clone();
    assert_eq!(endpoint.in_flight(), 1);
    assert!(s.release_idle(), "a decided stream");
    assert_eq!(endpoint.in_flight(), 0, "released while the stream lives");
    // Whatever Envoy sends afterwards gets no answer and no second release.
    assert!(send(&mut s, body(CHAT, true), None).is_empty());
    drop(s);
    assert_eq!(endpoint.in_flight(), 0);

    let mut waiting = StreamState::new(shared.clone());
    send(
        &mut waiting,
        headers(false, &[]),
        Some(BodySendMode::FullDuplexStreamed),
    );
    send(&mut waiting, body("{\"model\":", false), None);
    assert!(shared.body_budget.held() > 0);
    assert!(!waiting.release_idle(), "not decided");
    assert_eq!(shared.body_budget.held(), 0);
}

#[test]
fn headers_that_would_pass_envoys_limit_with_the_routing_headers_get_431() {
    let names: Vec<String> = (0..95).map(|i| format!("x-c-{i}")).collect();
    let mut pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    // 2 pseudo-headers + 95 = 97; 3 routing headers make 100: allowed.
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &pairs), Some(BodySendMode::Buffered));
    assert_eq!(status(&r[0]), None, "at the limit: proceeds");
    pairs.push(("x-one-more", "v"));
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &pairs), Some(BodySendMode::Buffered));
    assert_eq!(status(&r[0]), Some(431));
    // A routing header the client already sent is overwritten, not added.
    pairs.push(("target-pod", "1.2.3.4:5"));
    pairs.retain(|(k, _)| *k != "x-one-more");
    // 98 headers + 2 added = 100: allowed only because target-pod is not new.
    let mut s = StreamState::new(shared());
    let r = send(&mut s, headers(false, &pairs), Some(BodySendMode::Buffered));
    assert_eq!(status(&r[0]), None, "{pairs:?}");
}

#[test]
fn a_logged_failure_takes_the_routed_pod_out_and_other_entries_do_not() {
    use envoy_types::pb::envoy::data::accesslog::v3::{
        AccessLogCommon, HttpAccessLogEntry, HttpResponseProperties,
    };
    let shared = shared();
    let (_tx, draining) = tokio::sync::watch::channel(false);
    let log = super::FailureLog::new(shared.clone(), draining);
    let mut route = StreamState::new(shared.clone());
    send_held(&mut route, headers(false, &[]));
    let r = send_held(&mut route, body(CHAT, true));
    let pod = set_header(&r[0], "target-pod").unwrap().to_owned();
    let member = route.decision().unwrap().member.clone();
    let entry = |status: Option<u32>, pod: Option<&str>| HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            metadata: pod.map(steer_metadata_for),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: status
                .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Not failures, not routed, unknown pods, no status: the pod stays.
    for e in [
        entry(Some(200), Some(&pod)),
        entry(Some(500), Some(&pod)),
        entry(Some(505), Some(&pod)),
        entry(None, Some(&pod)),
        entry(Some(503), None),
        entry(Some(503), Some("10.9.9.9:1")),
        HttpAccessLogEntry::default(),
    ] {
        log.on_entry(&e);
        assert!(member.endpoint.is_ready(), "{e:?}");
    }
    log.on_entry(&entry(Some(503), Some(&pod)));
    assert!(!member.endpoint.is_ready());
    let other = shared
        .router
        .pools()
        .load()
        .model("m")
        .unwrap()
        .members
        .iter()
        .find(|m| *m.endpoint.addr_text != *pod)
        .unwrap()
        .clone();
    log.on_entry(&entry(Some(502), Some(&other.endpoint.addr_text)));
    assert!(!other.endpoint.is_ready(), "502 too");
}

#[test]
fn the_prompt_is_read_only_when_the_strategy_routes_on_it() {
    let limit = "max_body_bytes: 100000\n";
    // Two and a half default (256-byte) prefix blocks of prompt.
    let chat = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        r#"a \"quoted\" line\n"#.repeat(40)
    );
    let prefix_blocks = |shared: Arc<Shared>, extra: &[(&str, &str)]| {
        let mut s = StreamState::new(shared);
        send(&mut s, headers(false, extra), Some(BodySendMode::Buffered));
        let r = send(&mut s, body(&chat, true), None);
        assert!(set_header(&r[0], "target-pod").is_some());
        s.decision().unwrap().prefix_blocks.len()
    };
    let prefix = [("routing-strategy", "prefix-cache")];
    // Default least-request, no model on prefix-cache: the prompt is skipped
    // unless the header asks for prefix-cache.
    assert_eq!(prefix_blocks(shared_with(limit), &[]), 0);
    assert_eq!(prefix_blocks(shared_with(limit), &prefix), 2);
    assert_eq!(
        prefix_blocks(shared_with(limit), &[("routing-strategy", "round-robin")]),
        0
    );
    let default_prefix = || shared_with(&format!("{limit}default_strategy: prefix-cache\n"));
    assert_eq!(prefix_blocks(default_prefix(), &[]), 2);
    assert_eq!(
        prefix_blocks(default_prefix(), &[("routing-strategy", "least-request")]),
        0
    );
    // One model on prefix-cache: bodies without the header keep their prompt.
    let file: FileConfig = serde_yaml::from_str(
        "models:\n  m:\n    endpoints: [\"10.0.0.1:8000\"]\n    strategy: prefix-cache\n  other:\n    endpoints: [\"10.0.0.2:8000\"]\n",
    )
    .unwrap();
    let pools = Arc::new(Pools::new(Settings::resolve(Some(file), &[]).unwrap()));
    let router = Router::new(pools);
    assert!(router.reads_prompt(None));
    assert!(!router.reads_prompt(Some("least-request")));
    assert!(!router.reads_prompt(Some("no-such-strategy")));
}

#[test]
fn the_request_id_is_set_only_when_the_request_has_none() {
    let routed = |extra: &[(&str, &str)]| {
        let mut s = StreamState::new(shared());
        send(&mut s, headers(false, extra), Some(BodySendMode::Buffered));
        let r = send(&mut s, body(CHAT, true), None);
        set_header(&r[0], "x-request-id").map(str::to_owned)
    };
    assert_eq!(routed(&[("x-request-id", "from-envoy")]), None);
    assert!(routed(&[]).is_some_and(|id| id.len() == 32));
}

#[test]
fn messages_api_requests_are_routed_and_their_errors_are_anthropic_shaped() {
    let messages = |body_text: &str| {
        let mut s = StreamState::new(shared());
        let request = Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&[
                (":method", "POST"),
                (":path", "/v1/messages"),
            ])),
            ..Default::default()
        });
        send(&mut s, request, Some(BodySendMode::Buffered));
        send(&mut s, body(body_text, true), None)
    };
    let r = messages(
        r#"{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
    );
    assert!(set_header(&r[0], "target-pod").is_some());
    let r = messages(r#"{"model":"nope","max_tokens":5,"messages":[]}"#);
    assert_eq!(status(&r[0]), Some(404));
    let Some(Response::ImmediateResponse(i)) = &r[0].response else {
        panic!("an immediate response");
    };
    let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn weighted_routing_strategy_header_scores_and_is_counted_as_weighted() {
    let shared = shared_with("max_body_bytes: 100000\n");
    let chat = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "shared system prompt ".repeat(40)
    );
    let weighted = [("routing-strategy", "prefix-cache:3, least-request:1")];
    let route = |extra: &[(&str, &str)]| {
        let mut s = StreamState::new(shared.clone());
        send(&mut s, headers(false, extra), Some(BodySendMode::Buffered));
        let r = send(&mut s, body(&chat, true), None);
        s.after_reply();
        (r, s)
    };
    let (r, first) = route(&weighted);
    let pod = set_header(&r[0], "target-pod").unwrap().to_owned();
    assert_eq!(steer_metadata(&r[0], "strategy"), Some("weighted"));
    // The first pod still holds one request: queue prefers the other pod, but
    // prefix (3×) keeps the prompt on the pod that holds its blocks.
    let (r, _second) = route(&weighted);
    assert_eq!(set_header(&r[0], "target-pod"), Some(pod.as_str()));
    let member = &first.decision().unwrap().member;
    assert_eq!(
        member.counters.decisions[crate::routing::DecidedBy::Weighted.slot().unwrap()]
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // Queue alone sends the next one to the idle pod.
    let (r, _third) = route(&[("routing-strategy", "least-request:1,least-kv-cache:1")]);
    assert_ne!(set_header(&r[0], "target-pod"), Some(pod.as_str()));
    // A bad weighted value is a 400 naming the culprit.
    for bad in ["prefix-cache:x", "random:1,queue:1", "queue,queue"] {
        let mut s = StreamState::new(shared.clone());
        send(
            &mut s,
            headers(false, &[("routing-strategy", bad)]),
            Some(BodySendMode::Buffered),
        );
        let r = send(&mut s, body(&chat, true), None);
        assert_eq!(status(&r[0]), Some(400), "{bad}");
        let Some(Response::ImmediateResponse(i)) = &r[0].response else {
            panic!("an immediate response");
        };
        let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_routing_strategy", "{bad}");
        let culprit = ["`x`", "`random`", "`queue` is weighted twice"];
        assert!(
            culprit
                .iter()
                .any(|c| v["error"]["message"].as_str().unwrap().contains(c)),
            "{v}"
        );
    }
}

#[test]
fn token_load_counts_expected_tokens_until_the_stream_ends() {
    let shared = shared();
    let token_load = [("routing-strategy", "token-load")];
    let open = |max_tokens: u32| {
        let mut s = StreamState::new(shared.clone());
        send(
            &mut s,
            headers(false, &token_load),
            Some(BodySendMode::Buffered),
        );
        let chat = format!(r#"{{"model":"m","max_tokens":{max_tokens},"messages":[]}}"#);
        let r = send(&mut s, body(&chat, true), None);
        let pod = set_header(&r[0], "target-pod").unwrap().to_owned();
        (s, pod, chat.len() as u64 / 4 + u64::from(max_tokens))
    };
    let (big, big_pod, big_tokens) = open(5000);
    let (small, small_pod, small_tokens) = open(10);
    assert_ne!(
        big_pod, small_pod,
        "the second goes to the pod without tokens"
    );
    let endpoint = big.decision().unwrap().member.endpoint.clone();
    assert_eq!(endpoint.tokens_in_flight(), big_tokens);
    // One request on each pod: queue would tie, token-load avoids the big one.
    let (_third, third_pod, _) = open(10);
    assert_eq!(third_pod, small_pod);
    drop(big);
    assert_eq!(endpoint.tokens_in_flight(), 0, "released with the stream");
    let other = small.decision().unwrap().member.endpoint.clone();
    assert!(other.tokens_in_flight() >= small_tokens);
}
