//! The response phase: response_headers, then (STREAMED) every body chunk on its way to the
//! client, then trailers - applied to upstream responses and router local replies alike.

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::common_response::ResponseStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, HttpTrailers};
use http_body::Body as _;

use crate::body::{AnyBody, ChunkSource, PipeTx, empty, full, pipe};
use crate::error::ExtProcError;
use crate::exchange::{Exchange, Stop};
use crate::extproc::{ExtProc, Meta};
use crate::headers::HeaderList;
use crate::mutation::{self, Rules};
use crate::pump::{self, Dir, PumpStop};
use crate::upstream::Reply;

pub async fn response_phase(
    x: &mut Exchange,
    mut reply: Reply,
) -> Result<http::Response<AnyBody>, Stop> {
    let details = reply.details.take();
    if !x.ep.is_active() || !x.modes.response_headers {
        x.ep.finish();
        return Ok(x.finish_response(&reply.headers, reply.body, details.as_deref()));
    }
    // The response direction is never full-duplex here, so the message timer applies.
    x.ep.set_timer(true);
    let no_body = reply.body.is_end_stream();
    let remove_content_length = x.modes.response == BodySendMode::Streamed;
    let headers = HttpHeaders {
        headers: Some(reply.headers.to_proto()),
        end_of_stream: no_body,
        ..Default::default()
    };
    x.ep.send(Request::ResponseHeaders(headers));
    if remove_content_length {
        // The client gets chunked encoding: the body may still change.
        reply.headers.remove("content-length");
    }
    let mut replacement = None;
    match x.recv().await {
        Ok(message) => {
            x.override_modes(message.mode_override.as_ref());
            match message.response {
                Some(Response::ResponseHeaders(h)) => {
                    let common = h.response.unwrap_or_default();
                    let replacing = common.status == ResponseStatus::ContinueAndReplace as i32;
                    let rules = Rules {
                        remove_content_length: x.modes.response == BodySendMode::Streamed,
                        replacing,
                    };
                    mutation::apply(&mut reply.headers, common.header_mutation.as_ref(), rules)
                        .map_err(|e| x.reject(e))?;
                    if replacing {
                        x.modes.response = BodySendMode::None;
                        if let Some(m) = common.body_mutation {
                            reply.headers.remove("content-length");
                            replacement = Some(match m.mutation {
                                Some(Mutation::Body(b)) => Bytes::from(b),
                                _ => Bytes::new(),
                            });
                        }
                    }
                }
                Some(Response::ImmediateResponse(ir)) => {
                    x.ep.finish();
                    return Err(Stop::Immediate(Box::new(ir)));
                }
                _ => x.fail(
                    ExtProcError::Spurious("expected a response_headers reply"),
                    true,
                )?,
            }
        }
        Err(e) => x.fail(e, true)?,
    }
    let streaming = x.ep.is_active()
        && replacement.is_none()
        && !no_body
        && x.modes.response == BodySendMode::Streamed;
    let body = if let Some(b) = replacement {
        full(b)
    } else if streaming {
        let (tx, client_body) = pipe();
        let src = ChunkSource::new(
            std::mem::replace(&mut reply.body, empty()),
            x.st.args.chunk_bytes(),
            true,
        );
        let ep = std::mem::take(&mut x.ep);
        tokio::spawn(pump_body(ep, src, tx, x.st.args.failure_mode_allow));
        client_body
    } else {
        reply.body
    };
    if !streaming {
        x.ep.finish();
    }
    Ok(x.finish_response(&reply.headers, body, details.as_deref()))
}

/// Runs after the client has the headers. Any failure that may not fail open resets the
/// client response (dropping `tx` unfinished), as Envoy resets a stream whose headers left.
async fn pump_body(mut ep: ExtProc, mut src: ChunkSource, tx: PipeTx, fail_open: bool) {
    // Metadata arriving now can no longer reach the (already sent) debug headers.
    let mut meta = Meta::default();
    let trailers =
        match pump::streamed(&mut ep, &mut meta, Dir::Response, &mut src, &tx, fail_open).await {
            Ok(trailers) => trailers,
            Err(stop) => {
                ep.abort();
                match stop {
                    PumpStop::Immediate(_) => {
                        tracing::warn!("immediate response after response headers: resetting")
                    }
                    PumpStop::Fail(e) => {
                        tracing::warn!(error = %e, "ext_proc failed mid-response: resetting")
                    }
                    PumpStop::SinkClosed => tracing::debug!("client went away mid-response"),
                    PumpStop::Source(e) => {
                        tracing::warn!(error = %e, "upstream body failed: resetting")
                    }
                }
                return;
            }
        };
    let trailers = match trailers {
        Some(t) if ep.is_active() => match trailers_exchange(&mut ep, t, fail_open).await {
            Some(t) => Some(t),
            None => return ep.abort(),
        },
        other => other,
    };
    ep.finish();
    let _ = tx.end(trailers).await;
}

/// response_trailers and its reply. `None` means reset the client response.
async fn trailers_exchange(
    ep: &mut ExtProc,
    trailers: http::HeaderMap,
    fail_open: bool,
) -> Option<http::HeaderMap> {
    let mut list = HeaderList::from_map(&trailers);
    ep.send(Request::ResponseTrailers(HttpTrailers {
        trailers: Some(list.to_proto()),
    }));
    let outcome = match ep.recv().await {
        Ok(message) => match message.response {
            Some(Response::ResponseTrailers(t)) => {
                return mutation::apply(&mut list, t.header_mutation.as_ref(), Rules::default())
                    .ok()
                    .map(|()| list.to_http(true));
            }
            Some(Response::ImmediateResponse(_)) => return None,
            _ => ExtProcError::Spurious("expected a response_trailers reply"),
        },
        Err(e) => e,
    };
    (outcome.is_clean_close() || fail_open).then_some(trailers)
}
