//! FULL_DUPLEX_STREAMED request bodies.

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;

use crate::body::{BoxError, ChunkSource, Item, PipeTx, empty, pipe};
use crate::error::{Error, ExtProcError};
use crate::exchange::{Exchange, Stop};
use crate::modes::{forward, route};
use crate::mutation::{self, Rules};
use crate::pump::{self, Dir, PumpStop};
use crate::upstream::{self, Call, Reply};

enum Phase {
    Headers,
    Body(PipeTx),
    Done,
}

enum Event {
    Reply(Result<ProcessingResponse, ExtProcError>),
    Chunk(Result<Option<Item>, BoxError>),
}

/// FULL_DUPLEX_STREAMED: headers and every chunk go out without waiting. The server answers
/// the headers (possibly only after the whole body), then streams the body it wants upstream.
pub async fn full_duplex(
    x: &mut Exchange,
    mut src: ChunkSource,
    no_body: bool,
) -> Result<Reply, Stop> {
    let mut phase = Phase::Headers;
    let mut call: Option<Call> = None;
    let mut src_done = no_body;
    // Envoy refuses failure_mode_allow once body data has gone to the server in this mode.
    let mut body_sent = false;
    loop {
        if matches!(phase, Phase::Done) {
            break;
        }
        let event = tokio::select! {
            biased;
            reply = x.recv() => Event::Reply(reply),
            chunk = src.next(), if !src_done => Event::Chunk(chunk),
        };
        let message = match event {
            Event::Chunk(Ok(Some(Item::Data {
                data,
                end_of_stream,
            }))) => {
                x.ep.send(Dir::Request.body_message(&data, end_of_stream));
                body_sent = true;
                src_done = end_of_stream;
                continue;
            }
            Event::Chunk(Ok(_)) => {
                src_done = true;
                continue;
            }
            Event::Chunk(Err(e)) => return Err(Stop::Fail(Error::Downstream(e.to_string()))),
            Event::Reply(Err(e)) => {
                x.fail(e, !body_sent)?;
                return without_ext_proc(x, phase, call, src).await;
            }
            Event::Reply(Ok(message)) => message,
        };
        match (message.response, phase) {
            (Some(Response::RequestHeaders(reply)), Phase::Headers) => {
                let common = reply.response.unwrap_or_default();
                let rules = Rules {
                    remove_content_length: true,
                    replacing: false,
                };
                mutation::apply(&mut x.headers, common.header_mutation.as_ref(), rules)
                    .map_err(|e| x.reject(e))?;
                let Some(target) = route(x) else {
                    return Ok(Reply::local(&Error::NoHealthyUpstream));
                };
                let (tx, body) = if no_body {
                    (None, empty())
                } else {
                    let (tx, b) = pipe();
                    (Some(tx), b)
                };
                let request = upstream::request(target, &x.headers, body).map_err(Stop::Fail)?;
                call = Some(Call::spawn(&x.st.upstream, request));
                phase = tx.map_or(Phase::Done, Phase::Body);
            }
            (Some(Response::RequestBody(reply)), Phase::Body(tx)) => {
                let mutation = reply
                    .response
                    .and_then(|c| c.body_mutation)
                    .and_then(|m| m.mutation);
                let Some(Mutation::StreamedResponse(part)) = mutation else {
                    x.fail(
                        ExtProcError::Spurious(
                            "body reply without streamed_response in FULL_DUPLEX_STREAMED",
                        ),
                        !body_sent,
                    )?;
                    return without_ext_proc(x, Phase::Body(tx), call, src).await;
                };
                let sent = tx.data(Bytes::from(part.body)).await;
                phase = match (sent, part.end_of_stream) {
                    (Ok(()), false) => Phase::Body(tx),
                    (Ok(()), true) => {
                        let _ = tx.end(None).await;
                        Phase::Done
                    }
                    (Err(_), _) => Phase::Done,
                };
            }
            (Some(Response::ImmediateResponse(ir)), _) => {
                x.ep.finish();
                return Err(Stop::Immediate(Box::new(ir)));
            }
            (_, old) => {
                x.fail(
                    ExtProcError::Spurious("unexpected reply in FULL_DUPLEX_STREAMED"),
                    !body_sent,
                )?;
                return without_ext_proc(x, old, call, src).await;
            }
        }
    }
    match call {
        Some(call) => Ok(Reply::from_result(call.response().await)),
        None => Ok(Reply::local(&Error::NoHealthyUpstream)),
    }
}

/// Full-duplex failed open before any body reached the server: the original body goes on.
async fn without_ext_proc(
    x: &mut Exchange,
    phase: Phase,
    call: Option<Call>,
    mut src: ChunkSource,
) -> Result<Reply, Stop> {
    match (phase, call) {
        (Phase::Body(tx), Some(call)) => {
            match pump::passthrough(&mut src, &tx).await {
                Ok(_) => drop(tx.end(None).await),
                Err(PumpStop::Source(e)) => {
                    return Err(Stop::Fail(Error::Downstream(e.to_string())));
                }
                Err(_) => {}
            }
            Ok(Reply::from_result(call.response().await))
        }
        (_, Some(call)) => Ok(Reply::from_result(call.response().await)),
        (_, None) => Ok(forward(x, src.into_body()).await),
    }
}
