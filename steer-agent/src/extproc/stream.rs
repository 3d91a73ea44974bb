//! The per-request ext_proc state machine. Synchronous and I/O-free: it maps
//! each message Envoy sends to the replies Envoy waits for.
//!
//! Body modes (see shared/notes/protocols.md):
//! - BUFFERED: headers are answered at once; the one body message is answered
//!   with the routing headers (Envoy applies header mutations from a body
//!   reply only in this mode).
//! - FULL_DUPLEX_STREAMED (Inference Extension style): nothing is answered
//!   until the body ends; then the headers reply carries the routing headers
//!   and the body goes back whole as a streamed body response.
//! - STREAMED with `send_body_without_waiting_for_header_response` (the
//!   shipped default): Envoy sends the headers and then every body chunk
//!   without waiting; the agent holds its headers reply until the last chunk,
//!   then sends the routing headers reply and one reply per chunk. Envoy waits
//!   once per request.
//! - STREAMED without it: routing needs the body before headers go upstream,
//!   so the headers reply asks Envoy to switch to BUFFERED (`mode_override`).
//! - Observer streams (`observability_mode`): see [`super::observe`].
//!
//! Envoy announces its modes in `protocol_config` (Envoy >= 1.34). Without
//! it the agent assumes BUFFERED, offers `mode_override` to BUFFERED anyway
//! (honoured when `allow_mode_override` is set), and treats a non-final body
//! chunk as STREAMED rather than as an overflowing buffer.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};

use super::headers::{
    ROUTING_HEADERS, RequestMeta, content_type, set_headers, status_of, subset_hint,
};
use super::observe::{self, Observer};
use super::reply::{self, Phase, SteerMeta};
use super::{RequestError, Shared};
use crate::openai::{ParsedRequest, UsageScanner, expected_tokens};
use crate::router::{Decision, RouteRequest, next_random};
use crate::telemetry::ErrorKind;

#[derive(Debug)]
pub struct StreamState {
    shared: Arc<Shared>,
    request_mode: BodySendMode,
    response_mode: BodySendMode,
    /// Envoy sent `protocol_config`: the modes above are known, not assumed.
    modes_known: bool,
    /// STREAMED body sent without waiting for the headers reply: that reply
    /// is held until the body ends.
    hold_headers: bool,
    /// Body chunks received while the headers reply is held: each is
    /// answered once the body ends.
    held_chunks: usize,
    /// This is an observability-mode stream (the response side).
    observer: Option<Observer>,
    meta: RequestMeta,
    /// Inference Extension subset hint: allowed endpoints, if the gateway sent one.
    subset: Option<Vec<std::net::SocketAddr>>,
    request_id: String,
    body: Vec<u8>,
    /// Bytes of `body` taken from the shared [`super::BodyBudget`].
    charged: usize,
    body_done: bool,
    decision: Option<Decision>,
    usage: Option<UsageScanner>,
    /// An ImmediateResponse ended the request; Envoy sends nothing more that
    /// needs an answer.
    ended: bool,
}

impl StreamState {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            request_mode: BodySendMode::Buffered,
            response_mode: BodySendMode::Streamed,
            modes_known: false,
            hold_headers: false,
            held_chunks: 0,
            observer: None,
            meta: RequestMeta::default(),
            subset: None,
            request_id: String::new(),
            body: Vec::new(),
            charged: 0,
            body_done: false,
            decision: None,
            usage: None,
            ended: false,
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// Bytes allocated for the request body so far.
    #[cfg(test)]
    pub fn body_capacity(&self) -> usize {
        self.body.capacity()
    }

    /// An observer stream whose response has ended: the agent ends it.
    pub fn finished(&self) -> bool {
        self.observer.as_ref().is_some_and(Observer::done)
    }

    pub fn on_message(&mut self, message: ProcessingRequest, out: &mut Vec<ProcessingResponse>) {
        if message.observability_mode {
            // Envoy waits for nothing here: never answered.
            let shared = self.shared.clone();
            return self
                .observer
                .get_or_insert_with(Observer::default)
                .on_message(&shared, message);
        }
        if let Some(config) = message.protocol_config {
            self.request_mode = mode(config.request_body_mode);
            self.response_mode = mode(config.response_body_mode);
            self.hold_headers = self.request_mode == BodySendMode::Streamed
                && config.send_body_without_waiting_for_header_response;
            self.modes_known = true;
        }
        if self.ended {
            return;
        }
        if let Some(subset) = subset_hint(message.metadata_context.as_ref()) {
            self.subset = Some(subset);
        }
        match message.request {
            Some(Request::RequestHeaders(h)) => {
                self.meta = RequestMeta::from_headers(h.headers.as_ref());
                self.request_id = self.meta.request_id.clone().unwrap_or_else(new_request_id);
                self.on_request_headers(h.end_of_stream, out);
            }
            Some(Request::RequestBody(b)) => self.on_request_body(b.body, b.end_of_stream, out),
            Some(Request::RequestTrailers(_)) => {
                // Trailers also end a full-duplex body.
                if self.request_mode == BodySendMode::FullDuplexStreamed && !self.body_done {
                    self.on_request_body(Vec::new(), true, out);
                }
                if !self.ended {
                    out.push(reply::trailers_request());
                }
            }
            Some(Request::ResponseHeaders(h)) => {
                if let Some(d) = &self.decision {
                    observe::upstream_status(
                        &self.shared,
                        &d.member,
                        status_of(h.headers.as_ref()),
                    );
                }
                self.usage = Some(UsageScanner::new(
                    content_type(h.headers.as_ref()).as_deref(),
                ));
                out.push(match &self.decision {
                    Some(d) => reply::with_headers(
                        Phase::ResponseHeaders,
                        set_headers([
                            ("target-pod", &*d.member.endpoint.addr_text),
                            ("x-request-id", self.request_id.as_str()),
                            ("x-steer-strategy", d.by.name()),
                        ]),
                    ),
                    None => reply::proceed(Phase::ResponseHeaders),
                });
                if h.end_of_stream {
                    self.finish_usage();
                }
            }
            Some(Request::ResponseBody(b)) => {
                if let Some(scanner) = &mut self.usage {
                    scanner.feed(&b.body);
                }
                let eos = b.end_of_stream;
                out.push(if self.response_mode == BodySendMode::FullDuplexStreamed {
                    reply::streamed_body(Phase::ResponseBody, b.body, eos)
                } else {
                    reply::proceed(Phase::ResponseBody)
                });
                if eos {
                    self.finish_usage();
                }
            }
            Some(Request::ResponseTrailers(_)) => {
                self.finish_usage();
                out.push(reply::trailers_response());
            }
            None => self.shared.metrics.error(ErrorKind::Protocol),
        }
    }

    /// The stream went idle and is being ended: gives back its body bytes and
    /// its decision (the pod's in-flight count), counted as `idle_stream`.
    /// Returns whether a routing decision had been made.
    pub fn release_idle(&mut self) -> bool {
        self.shared.metrics.error(ErrorKind::IdleStream);
        self.release_body();
        let decided = self.decision.take().is_some() || self.ended;
        tracing::debug!(request_id = %self.request_id, decided, "idle ext_proc stream ended");
        self.ended = true;
        decided
    }

    /// Deferred work after the replies left: prefix bookkeeping.
    pub fn after_reply(&mut self) {
        if let Some(decision) = &mut self.decision {
            self.shared.router.after_reply(decision);
        }
    }

    fn on_request_headers(&mut self, end_of_stream: bool, out: &mut Vec<ProcessingResponse>) {
        let limit = self
            .shared
            .router
            .pools()
            .load()
            .settings
            .max_request_headers;
        let added =
            ROUTING_HEADERS.len() - self.meta.routing_headers_present.min(ROUTING_HEADERS.len());
        if self.meta.header_count + added > limit {
            let count = self.meta.header_count;
            return self.fail(
                RequestError::TooManyHeaders {
                    count,
                    added,
                    limit,
                },
                out,
            );
        }
        if end_of_stream {
            return self.on_bodiless(out);
        }
        let limit = self.shared.router.pools().load().settings.max_body_bytes;
        if let Some(size) = self.meta.content_length {
            // The body grows with the bytes that arrive, never from this header.
            if size > limit {
                return self.fail(RequestError::BodyTooLarge { size, limit }, out);
            }
        }
        match self.request_mode {
            BodySendMode::FullDuplexStreamed => {}
            BodySendMode::Streamed if self.hold_headers => {}
            BodySendMode::Streamed => out.push(reply::buffer_request_body()),
            _ if !self.modes_known => out.push(reply::buffer_request_body()),
            _ => out.push(reply::proceed(Phase::RequestHeaders)),
        }
    }

    fn on_request_body(
        &mut self,
        chunk: Vec<u8>,
        end_of_stream: bool,
        out: &mut Vec<ProcessingResponse>,
    ) {
        if self.body_done {
            // A repeated final chunk (seen from Envoy 1.35+) must not be
            // appended twice or re-routed.
            if self.request_mode != BodySendMode::FullDuplexStreamed {
                out.push(reply::proceed(Phase::RequestBody));
            }
            return;
        }
        let settings = &self.shared.router.pools().load().settings;
        let (limit, budget) = (settings.max_body_bytes, settings.max_buffered_body_bytes);
        let size = self.body.len() + chunk.len();
        if size > limit {
            return self.fail(RequestError::BodyTooLarge { size, limit }, out);
        }
        if !self.shared.body_budget.try_take(chunk.len(), budget) {
            return self.fail(RequestError::Overloaded, out);
        }
        self.charged += chunk.len();
        if self.body.is_empty() {
            self.body = chunk;
        } else {
            self.body.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            if !self.modes_known && self.request_mode == BodySendMode::Buffered {
                // A BUFFERED body arrives whole: this Envoy is streaming it.
                self.request_mode = BodySendMode::Streamed;
            }
            match self.request_mode {
                BodySendMode::FullDuplexStreamed => {}
                BodySendMode::Streamed if self.hold_headers => self.held_chunks += 1,
                // BUFFERED_PARTIAL sends a partial body when Envoy's buffer
                // fills: routing on a truncated prompt would be wrong.
                BodySendMode::BufferedPartial | BodySendMode::Buffered => {
                    self.fail(RequestError::BodyTooLarge { size, limit: size }, out);
                }
                _ => out.push(reply::proceed(Phase::RequestBody)),
            }
            return;
        }
        self.body_done = true;
        let started = Instant::now();
        self.decide(out);
        self.observe_decision(started);
    }

    /// `steer_decision_duration_seconds`: parse + route + reply built, for
    /// every decision (with a body or without).
    fn observe_decision(&self, started: Instant) {
        self.shared
            .metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    fn decide(&mut self, out: &mut Vec<ProcessingResponse>) {
        let body = std::mem::take(&mut self.body);
        // Parsed once below, then dropped or handed back to Envoy with the reply.
        self.release_body();
        let strategy = self.meta.strategy.as_deref();
        let parsed = if self.shared.router.reads_prompt(strategy) {
            ParsedRequest::parse(&body)
        } else {
            ParsedRequest::parse_without_prompt(&body)
        };
        let result = parsed.map_err(RequestError::from).and_then(|parsed| {
            let session = self.meta.session.as_deref().or(parsed.user.as_deref());
            self.shared
                .router
                .decide(&RouteRequest {
                    model: &parsed.model,
                    strategy,
                    session,
                    prompt: Some(&parsed.prompt),
                    subset: self.subset.as_deref(),
                    tokens: expected_tokens(body.len(), parsed.max_tokens),
                })
                .map_err(RequestError::from)
        });
        match result {
            Err(err) => self.fail(err, out),
            Ok(decision) => {
                let duplex = self.request_mode == BodySendMode::FullDuplexStreamed;
                if self.hold_headers {
                    // The held headers reply routes; then one reply per chunk.
                    out.push(self.route_reply(Phase::RequestHeaders, &decision));
                    let chunks = std::mem::take(&mut self.held_chunks) + 1;
                    out.extend((0..chunks).map(|_| reply::proceed(Phase::RequestBody)));
                    self.decision = Some(decision);
                    return;
                }
                if self.request_mode == BodySendMode::Streamed {
                    // Envoy ignored our mode_override: the headers are gone.
                    self.shared.metrics.error(ErrorKind::UnsupportedBodyMode);
                    tracing::warn!(
                        "request body mode STREAMED without allow_mode_override: routing headers cannot apply; configure BUFFERED or FULL_DUPLEX_STREAMED"
                    );
                }
                let phase = if duplex {
                    Phase::RequestHeaders
                } else {
                    Phase::RequestBody
                };
                out.push(self.route_reply(phase, &decision));
                if duplex {
                    out.push(reply::streamed_body(Phase::RequestBody, body, true));
                }
                self.decision = Some(decision);
            }
        }
    }

    fn on_bodiless(&mut self, out: &mut Vec<ProcessingResponse>) {
        let path = self.meta.path.split('?').next().unwrap_or("");
        if self.meta.method == "GET" && path.trim_end_matches('/') == "/v1/models" {
            out.push(self.models_reply());
            self.ended = true;
            return;
        }
        let Some(model) = self.meta.model.clone() else {
            return self.fail(RequestError::NoBody, out);
        };
        let started = Instant::now();
        let result = self.shared.router.decide(&RouteRequest {
            model: &model,
            strategy: self.meta.strategy.as_deref(),
            session: self.meta.session.as_deref(),
            prompt: None,
            subset: self.subset.as_deref(),
            tokens: expected_tokens(0, None),
        });
        match result {
            Ok(decision) => {
                out.push(self.route_reply(Phase::RequestHeaders, &decision));
                self.decision = Some(decision);
            }
            Err(err) => self.fail(err.into(), out),
        }
        self.observe_decision(started);
    }

    fn route_reply(&self, phase: Phase, d: &Decision) -> ProcessingResponse {
        let endpoint = &*d.member.endpoint.addr_text;
        let headers = [
            ("target-pod", endpoint),
            ("x-gateway-destination-endpoint", endpoint),
            ("x-gateway-model-name", &d.pool.name),
            ("x-request-id", &self.request_id),
        ];
        // Envoy adds `x-request-id` before the filter runs: the agent sets it
        // only on a request that arrived without one.
        let set = if self.meta.request_id.is_some() { 3 } else { 4 };
        reply::route(
            phase,
            &headers[..set],
            &SteerMeta {
                pod: endpoint,
                model: &d.pool.name,
                strategy: d.by.name(),
            },
        )
    }

    fn models_reply(&self) -> ProcessingResponse {
        let snapshot = self.shared.router.pools().load();
        let mut names: Vec<&String> = snapshot.models.keys().collect();
        names.sort();
        let data: Vec<_> = names
            .iter()
            .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "steer"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        reply::immediate(
            200,
            &[
                ("content-type", "application/json"),
                ("x-request-id", &self.request_id),
            ],
            body.into_bytes(),
            "models_list",
        )
    }

    fn fail(&mut self, err: RequestError, out: &mut Vec<ProcessingResponse>) {
        self.shared.metrics.error(err.kind());
        tracing::debug!(request_id = %self.request_id, error = %err, "request rejected");
        out.push(reply::error(&err, &self.meta.path));
        self.ended = true;
        self.body = Vec::new();
        self.release_body();
    }

    fn release_body(&mut self) {
        // Streams that hold no body bytes never touch the shared counter.
        let charged = std::mem::take(&mut self.charged);
        if charged > 0 {
            self.shared.body_budget.give_back(charged);
        }
    }

    fn finish_usage(&mut self) {
        if let (Some(scanner), Some(decision)) = (self.usage.take(), &self.decision) {
            observe::count_usage(&decision.member, scanner);
        }
    }
}

fn mode(raw: i32) -> BodySendMode {
    BodySendMode::try_from(raw).unwrap_or(BodySendMode::Buffered)
}

fn new_request_id() -> String {
    format!("{:016x}{:016x}", next_random(), next_random())
}

impl Drop for StreamState {
    /// An abandoned stream gives its body bytes back.
    fn drop(&mut self) {
        self.release_body();
    }
}
