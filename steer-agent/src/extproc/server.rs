//! The tonic service: drives a [`StreamState`] per ext_proc stream without
//! spawning a task or a channel per request.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::{Stream, StreamExt, stream};
use tonic::{Request, Response, Status, Streaming};

use super::StreamState;
use crate::router::Router;
use crate::telemetry::Metrics;

/// What every stream shares.
#[derive(Debug)]
pub struct Shared {
    pub router: Router,
    pub metrics: Arc<Metrics>,
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
        let state = StreamState::new(self.shared.clone());
        let replies = stream::unfold(
            (inbound, state, false),
            |(mut inbound, mut state, replied)| async move {
                // Work deferred until the previous replies were handed to the
                // transport, so it never delays Envoy.
                if replied {
                    state.after_reply();
                }
                loop {
                    match inbound.message().await {
                        Ok(Some(message)) => {
                            let mut out = Vec::with_capacity(2);
                            state.on_message(message, &mut out);
                            if !out.is_empty() {
                                let batch = stream::iter(out.into_iter().map(Ok));
                                return Some((batch, (inbound, state, true)));
                            }
                        }
                        Ok(None) => return None,
                        Err(status) => {
                            tracing::debug!(%status, "ext_proc stream ended by peer");
                            return None;
                        }
                    }
                }
            },
        )
        .flatten();
        Ok(Response::new(Box::pin(replies)))
    }
}
