//! ProcessingResponse builders for each reply the agent sends.

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, StreamedBodyResponse, TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value};

use super::error::RequestError;
use super::headers::set_headers;

/// Which message a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

fn wrap(phase: Phase, common: CommonResponse) -> Response {
    match phase {
        Phase::RequestHeaders => Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        }),
        Phase::ResponseHeaders => Response::ResponseHeaders(HeadersResponse {
            response: Some(common),
        }),
        Phase::RequestBody => Response::RequestBody(BodyResponse {
            response: Some(common),
        }),
        Phase::ResponseBody => Response::ResponseBody(BodyResponse {
            response: Some(common),
        }),
    }
}

fn response(r: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

/// "Go on unchanged."
pub fn proceed(phase: Phase) -> ProcessingResponse {
    response(wrap(phase, CommonResponse::default()))
}

pub fn with_headers(phase: Phase, mutation: HeaderMutation) -> ProcessingResponse {
    response(wrap(
        phase,
        CommonResponse {
            header_mutation: Some(mutation),
            ..Default::default()
        },
    ))
}

/// Full-duplex mode: the server returns the body it was streamed.
pub fn streamed_body(phase: Phase, body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
    response(wrap(
        phase,
        CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body,
                        end_of_stream,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        },
    ))
}

/// The routing decision: destination headers, route cache cleared so the
/// route is re-picked on `X-Gateway-Model-Name`, the Inference Extension's
/// `envoy.lb` metadata, and the agent's own `steer` metadata (pod, model,
/// strategy), which the shipped Envoy configs echo on the response, log with
/// failed responses and forward to the usage observer.
pub fn route(phase: Phase, headers: &[(&str, &str)], steer: &SteerMeta<'_>) -> ProcessingResponse {
    let mut reply = response(wrap(
        phase,
        CommonResponse {
            header_mutation: Some(set_headers(headers.iter().copied())),
            clear_route_cache: true,
            ..Default::default()
        },
    ));
    reply.dynamic_metadata = Some(metadata(steer));
    reply
}

/// What the `steer` metadata namespace carries.
#[derive(Debug)]
pub struct SteerMeta<'a> {
    pub pod: &'a str,
    pub model: &'a str,
    pub strategy: &'a str,
}

/// The `steer` namespace, as the shipped configs reference it
/// (`%DYNAMIC_METADATA(steer:strategy)%`); its keys are [`SteerMeta`]'s fields.
pub const STEER_NAMESPACE: &str = "steer";

fn metadata(steer: &SteerMeta<'_>) -> Struct {
    let string = |s: &str| Value {
        kind: Some(value::Kind::StringValue(s.to_owned())),
    };
    let object = |fields: &[(&str, &str)]| Value {
        kind: Some(value::Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), string(v)))
                .collect(),
        })),
    };
    Struct {
        fields: [
            (
                "envoy.lb".to_owned(),
                object(&[("x-gateway-destination-endpoint", steer.pod)]),
            ),
            (
                STEER_NAMESPACE.to_owned(),
                object(&[
                    ("pod", steer.pod),
                    ("model", steer.model),
                    ("strategy", steer.strategy),
                ]),
            ),
        ]
        .into(),
    }
}

/// Asks Envoy (if `allow_mode_override`) to buffer the request body: routing
/// needs the whole body before the headers go upstream.
pub fn buffer_request_body() -> ProcessingResponse {
    let mut reply = proceed(Phase::RequestHeaders);
    reply.mode_override = Some(ProcessingMode {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Streamed as i32,
        ..Default::default()
    });
    reply
}

pub fn trailers_request() -> ProcessingResponse {
    response(Response::RequestTrailers(TrailersResponse::default()))
}

pub fn trailers_response() -> ProcessingResponse {
    response(Response::ResponseTrailers(TrailersResponse::default()))
}

pub fn immediate(
    status: u16,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    details: &str,
) -> ProcessingResponse {
    response(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers: Some(set_headers(headers.iter().copied())),
        body,
        grpc_status: None,
        details: details.to_owned(),
    }))
}

/// An OpenAI-style error (Anthropic-style for a request to `path` on the
/// Messages API). `x-steer-error: <code>` marks the reply as the agent's:
/// the shipped Envoy configs' `local_reply_config` leaves such replies
/// unchanged and rewrites Envoy's own errors into OpenAI's shape.
pub fn error(err: &RequestError, path: &str) -> ProcessingResponse {
    immediate(
        err.status(),
        &[
            ("content-type", "application/json"),
            (err.error_header(), "true"),
            ("x-steer-error", err.code()),
        ],
        err.json_for(path),
        err.kind().metric_label(),
    )
}
