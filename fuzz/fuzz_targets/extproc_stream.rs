//! Arbitrary ext_proc message sequences (any order, any modes, any bodies)
//! against the agent's per-stream state machine: never a panic, and once the
//! stream is gone no pod keeps an in-flight count and no body bytes stay
//! charged to the shared budget.
#![no_main]

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProtocolConfiguration,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use steer_agent::config::{FileConfig, Settings};
use steer_agent::extproc::{Shared, StreamState};
use steer_agent::pool::Pools;
use steer_agent::router::Router;
use steer_agent::telemetry::Metrics;

const CHAT: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi \"there\"\n"}],"stream":true}"#;

#[derive(Arbitrary, Debug)]
enum Op {
    Headers {
        eos: bool,
        model_header: bool,
        content_length: Option<u16>,
        models_list: bool,
    },
    Body {
        data: Vec<u8>,
        eos: bool,
    },
    ChatBody {
        split: u8,
        eos: bool,
    },
    Trailers,
    ResponseHeaders {
        sse: bool,
        eos: bool,
    },
    ResponseBody {
        data: Vec<u8>,
        eos: bool,
    },
    ResponseTrailers,
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// None: an Envoy without `protocol_config`.
    mode: Option<u8>,
    /// `send_body_without_waiting_for_header_response` (one-wait mode).
    without_waiting: bool,
    /// An observability-mode stream (the usage observer), with or without
    /// the routing reply's `steer` metadata.
    observer: Option<bool>,
    ops: Vec<Op>,
}

fn shared() -> &'static (Arc<Shared>, Arc<Pools>) {
    static SHARED: OnceLock<(Arc<Shared>, Arc<Pools>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let file: FileConfig = serde_yaml::from_str(
            "max_body_bytes: 4096\nmax_buffered_body_bytes: 65536\nmodels:\n  m:\n    endpoints: [\"10.0.0.1:8000\", \"10.0.0.2:8000\"]\n    strategy: prefix-cache\n",
        )
        .expect("fuzz config");
        let pools = Arc::new(Pools::new(Settings::resolve(Some(file), &[]).expect("settings")));
        let shared = Arc::new(Shared {
            router: Arc::new(Router::new(pools.clone())),
            metrics: Metrics::new(pools.clone()),
            body_budget: Default::default(),
            stream_idle: std::time::Duration::from_secs(600),
        });
        (shared, pools)
    })
}

fn headers(pairs: &[(&str, String)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.clone().into_bytes(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    }
}

/// The `steer` metadata a routing reply for 10.0.0.1:8000 carries.
fn steer_metadata() -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [(
            "steer".to_owned(),
            Struct {
                fields: [
                    ("pod".to_owned(), string("10.0.0.1:8000")),
                    ("model".to_owned(), string("m")),
                ]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn body(data: &[u8], end_of_stream: bool) -> HttpBody {
    HttpBody {
        body: data.to_vec(),
        end_of_stream,
        ..Default::default()
    }
}

fuzz_target!(|input: Input| {
    let (shared, pools) = shared();
    let modes = [
        BodySendMode::None,
        BodySendMode::Streamed,
        BodySendMode::Buffered,
        BodySendMode::BufferedPartial,
        BodySendMode::FullDuplexStreamed,
    ];
    let config = input.mode.map(|m| ProtocolConfiguration {
        request_body_mode: modes[usize::from(m) % modes.len()] as i32,
        response_body_mode: BodySendMode::Streamed as i32,
        send_body_without_waiting_for_header_response: input.without_waiting,
    });
    let metadata = input.observer.filter(|&m| m).map(|_| steer_metadata());
    let mut state = StreamState::new(shared.clone());
    let mut out = Vec::new();
    for op in input.ops.into_iter().take(64) {
        let request = match op {
            Op::Headers {
                eos,
                model_header,
                content_length,
                models_list,
            } => {
                let mut pairs = vec![
                    (
                        ":method",
                        if models_list { "GET" } else { "POST" }.to_owned(),
                    ),
                    (
                        ":path",
                        if models_list {
                            "/v1/models"
                        } else {
                            "/v1/chat/completions"
                        }
                        .to_owned(),
                    ),
                ];
                if model_header {
                    pairs.push(("model", "m".to_owned()));
                }
                if let Some(n) = content_length {
                    pairs.push(("content-length", n.to_string()));
                }
                Some(Request::RequestHeaders(headers(&pairs, eos)))
            }
            Op::Body { data, eos } => Some(Request::RequestBody(body(&data, eos))),
            Op::ChatBody { split, eos } => {
                let at = usize::from(split) % (CHAT.len() + 1);
                let part = if eos {
                    &CHAT.as_bytes()[at..]
                } else {
                    &CHAT.as_bytes()[..at]
                };
                Some(Request::RequestBody(body(part, eos)))
            }
            Op::Trailers => Some(Request::RequestTrailers(HttpTrailers::default())),
            Op::ResponseHeaders { sse, eos } => {
                let ct = if sse {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                Some(Request::ResponseHeaders(headers(
                    &[("content-type", ct.to_owned())],
                    eos,
                )))
            }
            Op::ResponseBody { data, eos } => Some(Request::ResponseBody(body(&data, eos))),
            Op::ResponseTrailers => Some(Request::ResponseTrailers(HttpTrailers::default())),
            Op::Empty => None,
        };
        let message = ProcessingRequest {
            request,
            protocol_config: config,
            metadata_context: metadata.clone(),
            observability_mode: input.observer.is_some(),
            ..Default::default()
        };
        out.clear();
        state.on_message(message, &mut out);
        assert!(
            input.observer.is_none() || out.is_empty(),
            "an observer is never answered"
        );
        state.after_reply();
    }
    drop(state);
    let snapshot = pools.snapshot();
    for endpoint in &snapshot.endpoints {
        assert_eq!(
            endpoint.in_flight(),
            0,
            "in-flight leaked on {}",
            endpoint.addr
        );
    }
    assert_eq!(shared.body_budget.held(), 0, "body bytes left charged");
});
