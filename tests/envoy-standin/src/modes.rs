//! The request phase: request_headers, then the request body in the configured mode, then
//! the upstream request - in the order and with the flags Envoy uses.

use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::common_response::ResponseStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{BodyMutation, HttpBody, HttpHeaders};

use crate::body::{AnyBody, ChunkSource, full, pipe};
use crate::duplex;
use crate::error::{Error, ExtProcError};
use crate::exchange::{Exchange, Stop};
use crate::mutation::{self, Rules};
use crate::pump::{self, Dir, PumpStop};
use crate::upstream::{self, Call, Reply};

/// Runs the request side and returns what the encoder filters will see: the upstream
/// response or a router local reply.
pub async fn request_phase(x: &mut Exchange, src: ChunkSource) -> Result<Reply, Stop> {
    let no_body = src.is_end_stream();
    let configured = x.modes.request;
    let headers = HttpHeaders {
        headers: Some(x.headers.to_proto()),
        end_of_stream: no_body,
        ..Default::default()
    };
    x.ep.send(Request::RequestHeaders(headers));
    // Envoy drops content-length once the message is on its way when the body may still change.
    let remove_content_length = matches!(
        configured,
        BodySendMode::Streamed | BodySendMode::FullDuplexStreamed
    );
    if remove_content_length {
        x.headers.remove("content-length");
    }
    if configured == BodySendMode::FullDuplexStreamed {
        return duplex::full_duplex(x, src, no_body).await;
    }
    if let Some(body) = headers_reply(x).await? {
        return Ok(forward(x, full(body)).await);
    }
    if no_body || !x.ep.is_active() {
        return Ok(forward(x, src.into_body()).await);
    }
    match x.modes.request {
        BodySendMode::Buffered | BodySendMode::BufferedPartial => buffered(x, src).await,
        BodySendMode::Streamed => streamed(x, src).await,
        _ => Ok(forward(x, src.into_body()).await),
    }
}

/// The reply to request_headers. Returns a replacement body for CONTINUE_AND_REPLACE.
async fn headers_reply(x: &mut Exchange) -> Result<Option<Bytes>, Stop> {
    let message = match x.recv().await {
        Ok(message) => message,
        Err(e) => return x.fail(e, true).map(|()| None),
    };
    x.override_modes(message.mode_override.as_ref());
    match message.response {
        Some(Response::RequestHeaders(reply)) => {
            let common = reply.response.unwrap_or_default();
            let replacing = common.status == ResponseStatus::ContinueAndReplace as i32;
            // The mode in force after any mode_override decides, as in Envoy.
            let rules = Rules {
                remove_content_length: x.modes.request == BodySendMode::Streamed,
                replacing,
            };
            mutation::apply(&mut x.headers, common.header_mutation.as_ref(), rules)
                .map_err(|e| x.reject(e))?;
            if !replacing {
                return Ok(None);
            }
            // Nothing more goes to the server for this request body.
            x.modes.request = BodySendMode::None;
            Ok(common.body_mutation.map(|m| {
                x.headers.remove("content-length");
                replacement(&m)
            }))
        }
        Some(Response::ImmediateResponse(ir)) => {
            x.ep.finish();
            Err(Stop::Immediate(Box::new(ir)))
        }
        _ => x
            .fail(
                ExtProcError::Spurious("expected a request_headers reply"),
                true,
            )
            .map(|()| None),
    }
}

fn replacement(m: &BodyMutation) -> Bytes {
    match &m.mutation {
        Some(Mutation::Body(b)) => Bytes::from(b.clone()),
        _ => Bytes::new(),
    }
}

/// BUFFERED: the whole body in one message; header and body mutations both apply.
async fn buffered(x: &mut Exchange, mut src: ChunkSource) -> Result<Reply, Stop> {
    let body = match src.collect(x.st.args.max_request_bytes).await {
        Ok(body) => body,
        Err(None) => return Ok(Reply::local(&Error::PayloadTooLarge)),
        Err(Some(e)) => return Err(Stop::Fail(Error::Downstream(e.to_string()))),
    };
    x.ep.send(Request::RequestBody(HttpBody {
        body: body.to_vec(),
        end_of_stream: true,
        ..Default::default()
    }));
    let message = match x.recv().await {
        Ok(message) => message,
        Err(e) => {
            x.fail(e, true)?;
            return Ok(forward(x, full(body)).await);
        }
    };
    let body = match message.response {
        Some(Response::RequestBody(reply)) => {
            let common = reply.response.unwrap_or_default();
            let replacing = common.status == ResponseStatus::ContinueAndReplace as i32;
            let rules = Rules {
                remove_content_length: false,
                replacing,
            };
            mutation::apply(&mut x.headers, common.header_mutation.as_ref(), rules)
                .map_err(|e| x.reject(e))?;
            match common.body_mutation {
                Some(m) => mutated_body(x, &m, body)?,
                None => body,
            }
        }
        Some(Response::ImmediateResponse(ir)) => {
            x.ep.finish();
            return Err(Stop::Immediate(Box::new(ir)));
        }
        _ => {
            x.fail(
                ExtProcError::Spurious("expected a request_body reply"),
                true,
            )?;
            body
        }
    };
    Ok(forward(x, full(body)).await)
}

/// Envoy keeps content-length in BUFFERED mode and rejects a body mutation that disagrees
/// with it: the server must fix or remove the header itself.
fn mutated_body(x: &mut Exchange, m: &BodyMutation, body: Bytes) -> Result<Bytes, Stop> {
    let new_len = match &m.mutation {
        Some(Mutation::Body(b)) => b.len(),
        _ => 0,
    };
    let declared = x
        .headers
        .get("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n != new_len) {
        let e = ExtProcError::Invalid(
            "mismatch between content length and the length of the mutated body".into(),
        );
        return Err(x.reject(e));
    }
    Ok(match &m.mutation {
        Some(Mutation::Body(b)) => Bytes::from(b.clone()),
        Some(Mutation::ClearBody(true)) => Bytes::new(),
        _ => body,
    })
}

/// STREAMED: the headers went upstream with the headers reply; chunks follow as the server
/// answers them. Header mutations in body replies are ignored.
async fn streamed(x: &mut Exchange, mut src: ChunkSource) -> Result<Reply, Stop> {
    let Some(target) = route(x) else {
        return Ok(Reply::local(&Error::NoHealthyUpstream));
    };
    let (tx, body) = pipe();
    let request = upstream::request(target, &x.headers, body).map_err(Stop::Fail)?;
    let call = Call::spawn(&x.st.upstream, request);
    let fail_open = x.st.args.failure_mode_allow;
    match pump::streamed(
        &mut x.ep,
        &mut x.meta,
        Dir::Request,
        &mut src,
        &tx,
        fail_open,
    )
    .await
    {
        // Request trailers are not modelled: the body just ends.
        Ok(_) => drop(tx.end(None).await),
        // The upstream stopped reading; its response (or error) tells the rest.
        Err(PumpStop::SinkClosed) => {}
        Err(PumpStop::Immediate(ir)) => {
            x.ep.finish();
            return Err(Stop::Immediate(ir));
        }
        Err(PumpStop::Fail(e)) => return Err(Stop::Fail(e.into())),
        Err(PumpStop::Source(e)) => return Err(Stop::Fail(Error::Downstream(e.to_string()))),
    }
    Ok(Reply::from_result(call.response().await))
}

/// ORIGINAL_DST host selection, remembered for the debug header.
pub(crate) fn route(x: &mut Exchange) -> Option<SocketAddr> {
    x.upstream = upstream::target(&x.headers, &x.st.args.upstream_header);
    x.upstream
}

/// Sends the request upstream with a body that needs no more ext_proc work.
pub(crate) async fn forward(x: &mut Exchange, body: AnyBody) -> Reply {
    let Some(target) = route(x) else {
        return Reply::local(&Error::NoHealthyUpstream);
    };
    let result = match upstream::request(target, &x.headers, body) {
        Ok(request) => upstream::send(&x.st.upstream, request).await,
        Err(e) => Err(e),
    };
    Reply::from_result(result)
}
