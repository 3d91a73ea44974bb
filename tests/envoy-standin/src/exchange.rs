//! Per-request state shared by the request and response phases.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ImmediateResponse, ProcessingResponse};
use http::{HeaderValue, Response, StatusCode};

use crate::body::AnyBody;
use crate::cli::Args;
use crate::error::{Error, ExtProcError};
use crate::extproc::{self, ExtProc, Meta};
use crate::headers::HeaderList;
use crate::mutation::{self, Rules};
use crate::upstream::{self, Reply};

/// Process-wide: configuration and the two shared clients.
pub struct State {
    pub args: Args,
    pub ext_proc: extproc::Client,
    pub upstream: upstream::Client,
}

/// The body and header modes in force for this request (mode_override may change them).
#[derive(Clone, Copy, Debug)]
pub struct Modes {
    pub request: BodySendMode,
    pub response: BodySendMode,
    pub response_headers: bool,
}

/// Why a phase stopped early.
pub enum Stop {
    /// The server answered with an ImmediateResponse.
    Immediate(Box<ImmediateResponse>),
    /// A local reply from the ext_proc filter itself (never shown to the server).
    Fail(Error),
}

pub struct Exchange {
    pub st: Arc<State>,
    pub ep: ExtProc,
    pub meta: Meta,
    pub headers: HeaderList,
    pub modes: Modes,
    pub upstream: Option<SocketAddr>,
}

impl Exchange {
    pub fn new(st: Arc<State>, ep: ExtProc, headers: HeaderList) -> Self {
        let modes = Modes {
            request: st.args.request_body_mode.envoy(),
            response: st.args.response_body_mode.envoy(),
            response_headers: true,
        };
        Self {
            st,
            ep,
            meta: Meta::default(),
            headers,
            modes,
            upstream: None,
        }
    }

    /// Next reply, recorded for the debug headers.
    pub async fn recv(&mut self) -> Result<ProcessingResponse, ExtProcError> {
        let message = self.ep.recv().await?;
        self.meta.absorb(&message);
        Ok(message)
    }

    /// Envoy's reaction to a broken exchange: carry on without the server (clean close, or
    /// failure_mode_allow when `may_fail_open`), or end the request with a local reply.
    pub fn fail(&mut self, e: ExtProcError, may_fail_open: bool) -> Result<(), Stop> {
        self.ep.abort();
        let carry_on = may_fail_open
            && e.may_fail_open()
            && (e.is_clean_close() || self.st.args.failure_mode_allow);
        if carry_on {
            tracing::warn!(error = %e, "continuing without ext_proc");
            Ok(())
        } else {
            tracing::warn!(error = %e, "ext_proc failure: local reply");
            Err(Stop::Fail(e.into()))
        }
    }

    /// A reply Envoy rejects outright: reset the stream and answer with the error's local reply.
    pub fn reject(&mut self, e: ExtProcError) -> Stop {
        self.ep.abort();
        tracing::warn!(error = %e, "rejected ext_proc reply: local reply");
        Stop::Fail(e.into())
    }

    /// mode_override, honoured only with allow_mode_override, never in full-duplex
    /// configurations, and only in replies to headers messages (the caller's job).
    /// Header modes left DEFAULT keep their value; body modes are always taken as given.
    pub fn override_modes(&mut self, mode: Option<&ProcessingMode>) {
        let Some(mode) = mode else { return };
        let args = &self.st.args;
        if !args.allow_mode_override
            || self.st.args.request_body_mode.envoy() == BodySendMode::FullDuplexStreamed
        {
            return;
        }
        match HeaderSendMode::try_from(mode.response_header_mode) {
            Ok(HeaderSendMode::Send) => self.modes.response_headers = true,
            Ok(HeaderSendMode::Skip) => self.modes.response_headers = false,
            _ => {}
        }
        match BodySendMode::try_from(mode.request_body_mode) {
            Ok(m @ (BodySendMode::None | BodySendMode::Streamed | BodySendMode::Buffered)) => {
                self.modes.request = m
            }
            Ok(BodySendMode::BufferedPartial) => self.modes.request = BodySendMode::Buffered,
            _ => tracing::warn!(
                mode = mode.request_body_mode,
                "unsupported request body mode override ignored"
            ),
        }
        match BodySendMode::try_from(mode.response_body_mode) {
            Ok(m @ (BodySendMode::None | BodySendMode::Streamed)) => self.modes.response = m,
            _ => tracing::warn!(
                mode = mode.response_body_mode,
                "unsupported response body mode override ignored"
            ),
        }
        tracing::debug!(modes = ?self.modes, "processing mode overridden by the server");
    }

    /// The final client response, with the debug headers when asked for.
    pub fn finish_response(
        &self,
        reply_headers: &HeaderList,
        body: AnyBody,
        details: Option<&str>,
    ) -> Response<AnyBody> {
        let status = reply_headers.status().unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = reply_headers.to_http(true);
        if self.st.args.debug_headers {
            let h = response.headers_mut();
            if let Some(addr) = self.upstream {
                h.insert("x-standin-upstream", header_value(addr.to_string()));
            }
            h.insert(
                "x-standin-route-cache-cleared",
                header_value(self.meta.route_cache_cleared.to_string()),
            );
            h.insert(
                "x-standin-dynamic-metadata",
                header_value(self.meta.metadata_json()),
            );
            if let Some(details) = details {
                h.insert("x-standin-details", header_value(details.to_owned()));
            }
        }
        response
    }

    /// A local reply the server never sees (ext_proc's own errors, immediate responses).
    pub fn stopped(&mut self, stop: Stop) -> Response<AnyBody> {
        self.ep.abort();
        let reply = match stop {
            Stop::Fail(e) => Reply::local(&e),
            Stop::Immediate(ir) => immediate(&ir),
        };
        self.finish_response(&reply.headers, reply.body, reply.details.as_deref())
    }
}

/// ImmediateResponse → local reply: status (200 when missing or not a final code), the
/// mutation applied to the local reply's headers (failures only logged), and the body.
pub fn immediate(ir: &ImmediateResponse) -> Reply {
    let code = ir.status.as_ref().map_or(200, |s| s.code);
    let status = u16::try_from(code)
        .ok()
        .filter(|c| *c >= 200)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderList::default();
    headers.add(
        ":status",
        Bytes::copy_from_slice(status.as_str().as_bytes()),
    );
    if let Err(e) = mutation::apply(&mut headers, ir.headers.as_ref(), Rules::default()) {
        tracing::error!(error = %e, "Immediate response mutations failed");
    }
    let status = headers.status().unwrap_or(status);
    let details = (!ir.details.is_empty()).then(|| ir.details.clone());
    Reply::text(status, Bytes::from(ir.body.clone()), headers, details)
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("<not representable>"))
}
