//! STREAMED body mode, shared by both directions. Pipelined like Envoy: each chunk goes to the
//! server as soon as it is read, and each BodyResponse releases the oldest unanswered chunk
//! (mutated if asked) to its destination.

use std::collections::VecDeque;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{BodyResponse, HttpBody, ImmediateResponse};

use crate::body::{BoxError, ChunkSource, Item, PipeTx};
use crate::error::ExtProcError;
use crate::extproc::{ExtProc, Meta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

impl Dir {
    pub fn body_message(self, data: &[u8], end_of_stream: bool) -> Request {
        let body = HttpBody {
            body: data.to_vec(),
            end_of_stream,
            ..Default::default()
        };
        match self {
            Dir::Request => Request::RequestBody(body),
            Dir::Response => Request::ResponseBody(body),
        }
    }

    fn body_reply(self, response: Option<Response>) -> Result<BodyResponse, Option<Response>> {
        match (self, response) {
            (Dir::Request, Some(Response::RequestBody(b)))
            | (Dir::Response, Some(Response::ResponseBody(b))) => Ok(b),
            (_, other) => Err(other),
        }
    }
}

pub enum PumpStop {
    Immediate(Box<ImmediateResponse>),
    /// The ext_proc exchange failed and may not fail open.
    Fail(ExtProcError),
    /// The destination went away.
    SinkClosed,
    /// The source body broke.
    Source(BoxError),
}

enum Event {
    Reply(Result<envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse, ExtProcError>),
    Chunk(Result<Option<Item>, BoxError>),
}

/// Streams `src` through the server into `sink`. Returns the source's trailers, for the caller
/// to handle. If the stream fails and Envoy would fail open (clean close, or `fail_open`),
/// unanswered chunks go on unmodified, like Envoy's clearAsyncState.
pub async fn streamed(
    ep: &mut ExtProc,
    meta: &mut Meta,
    dir: Dir,
    src: &mut ChunkSource,
    sink: &PipeTx,
    fail_open: bool,
) -> Result<Option<http::HeaderMap>, PumpStop> {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut src_done = false;
    let mut trailers = None;
    loop {
        if src_done && pending.is_empty() {
            return Ok(trailers);
        }
        if !ep.is_active() {
            return rest(pending, src, sink, trailers).await;
        }
        let event = tokio::select! {
            biased;
            reply = ep.recv(), if !pending.is_empty() => Event::Reply(reply),
            chunk = src.next(), if !src_done => Event::Chunk(chunk),
        };
        match event {
            Event::Chunk(Err(e)) => return Err(PumpStop::Source(e)),
            Event::Chunk(Ok(None)) => src_done = true,
            Event::Chunk(Ok(Some(Item::Trailers(t)))) => {
                trailers = Some(t);
                src_done = true;
            }
            Event::Chunk(Ok(Some(Item::Data {
                data,
                end_of_stream,
            }))) => {
                ep.send(dir.body_message(&data, end_of_stream));
                pending.push_back(data);
                src_done = end_of_stream;
            }
            Event::Reply(Err(e)) => fail(ep, e, fail_open)?,
            Event::Reply(Ok(message)) => {
                meta.absorb(&message);
                match dir.body_reply(message.response) {
                    Ok(reply) => {
                        let mut data = pending.pop_front().unwrap_or_default();
                        // Header mutations are ignored here: the headers already left.
                        let mutation = reply
                            .response
                            .and_then(|c| c.body_mutation)
                            .and_then(|m| m.mutation);
                        match mutation {
                            Some(Mutation::Body(body)) => data = Bytes::from(body),
                            Some(Mutation::ClearBody(true)) => data = Bytes::new(),
                            Some(Mutation::StreamedResponse(_)) => {
                                let e = ExtProcError::Spurious(
                                    "streamed_response while body mode is not FULL_DUPLEX_STREAMED",
                                );
                                fail(ep, e, fail_open)?;
                                pending.push_front(data);
                                continue;
                            }
                            Some(Mutation::ClearBody(false)) | None => {}
                        }
                        sink.data(data).await.map_err(|_| PumpStop::SinkClosed)?;
                    }
                    Err(Some(Response::ImmediateResponse(ir))) => {
                        return Err(PumpStop::Immediate(Box::new(ir)));
                    }
                    Err(_) => fail(
                        ep,
                        ExtProcError::Spurious("unexpected reply to a body chunk"),
                        fail_open,
                    )?,
                }
            }
        }
    }
}

fn fail(ep: &mut ExtProc, e: ExtProcError, fail_open: bool) -> Result<(), PumpStop> {
    ep.abort();
    if e.may_fail_open() && (e.is_clean_close() || fail_open) {
        tracing::warn!(error = %e, "continuing body without ext_proc");
        Ok(())
    } else {
        tracing::warn!(error = %e, "ext_proc failed while streaming a body");
        Err(PumpStop::Fail(e))
    }
}

/// The whole remaining body, without the server.
pub async fn passthrough(
    src: &mut ChunkSource,
    sink: &PipeTx,
) -> Result<Option<http::HeaderMap>, PumpStop> {
    rest(VecDeque::new(), src, sink, None).await
}

/// The rest of the body without the server: unanswered chunks first, then the source as is.
async fn rest(
    pending: VecDeque<Bytes>,
    src: &mut ChunkSource,
    sink: &PipeTx,
    mut trailers: Option<http::HeaderMap>,
) -> Result<Option<http::HeaderMap>, PumpStop> {
    for data in pending {
        sink.data(data).await.map_err(|_| PumpStop::SinkClosed)?;
    }
    while let Some(item) = src.next().await.map_err(PumpStop::Source)? {
        match item {
            Item::Data { data, .. } => sink.data(data).await.map_err(|_| PumpStop::SinkClosed)?,
            Item::Trailers(t) => trailers = Some(t),
        }
    }
    Ok(trailers)
}
