//! The tonic service: drives a [`StreamState`] per ext_proc stream without
//! spawning a task or a channel per request.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::future::Either;
use futures::{Stream, StreamExt, stream};
use tonic::{Request, Response, Status, Streaming};

use super::StreamState;
use crate::router::Router;
use crate::telemetry::Metrics;

/// What every stream shares: the parts of the agent's state (built in
/// `run.rs`) that the ext_proc path needs.
#[derive(Debug)]
pub struct Shared {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// Body bytes all streams hold (bounded by `max_buffered_body_bytes`).
    pub body_budget: super::BodyBudget,
    /// A stream that sends nothing for this long is ended by the agent.
    pub stream_idle: Duration,
}

#[derive(Clone, Debug)]
pub struct ExtProcService {
    shared: Arc<Shared>,
}

impl ExtProcService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReplyStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let inbound = request.into_inner();
        let idle = self.shared.stream_idle;
        let state = StreamState::new(self.shared.clone());
        let replies = stream::unfold(
            (inbound, state, false, false),
            move |(mut inbound, mut state, replied, failed)| async move {
                if failed {
                    return None;
                }
                // The previous replies were handed to h2, whose connection task
                // (woken by them) runs before the prefix recorder task that
                // `after_reply` queues work for: the bookkeeping never sits
                // between a routing reply and its bytes leaving.
                if replied {
                    state.after_reply();
                }
                let status = loop {
                    let Ok(next) = tokio::time::timeout(idle, inbound.message()).await else {
                        // Nothing from Envoy for `idle`: a decided stream is
                        // released (Envoy carries on without the agent); an
                        // undecided one fails so Envoy applies its failure mode.
                        if state.release_idle() {
                            return None;
                        }
                        break Status::deadline_exceeded("ext_proc stream idle");
                    };
                    match next {
                        Ok(Some(message)) => {
                            let mut out = Vec::with_capacity(2);
                            state.on_message(message, &mut out);
                            if state.finished() {
                                // An observer whose response ended: closing the
                                // stream here frees Envoy from holding it open.
                                return None;
                            }
                            if !out.is_empty() {
                                let batch = Either::Left(stream::iter(out).map(Ok));
                                return Some((batch, (inbound, state, true, false)));
                            }
                        }
                        Ok(None) => return None,
                        // An undecodable message (or a broken stream) ends the
                        // stream with an error status, never OK: Envoy then applies
                        // its failure mode instead of forwarding the request unrouted.
                        Err(status) => {
                            tracing::debug!(%status, "ext_proc stream failed");
                            break status;
                        }
                    }
                };
                let batch = Either::Right(stream::once(async { Err(status) }));
                Some((batch, (inbound, state, false, true)))
            },
        )
        .flatten();
        Ok(Response::new(Box::pin(replies)))
    }
}
