//! Failed responses, reported by Envoy's gRPC access log.
//!
//! The shipped `envoy.yaml` logs every request answered 502–504 (by the pod,
//! or by Envoy when it could not reach the pod) to the agent over
//! `envoy.access_loggers.http_grpc`. Envoy never waits on an access log: it
//! sends the entry after the response and expects no reply. Each entry
//! carries the request's dynamic metadata, whose `steer` namespace names the
//! pod and model the routing reply chose; that pod leaves rotation until a
//! scrape succeeds.

use std::sync::Arc;

use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::observe::{routed_member, upstream_status};

#[derive(Clone, Debug)]
pub struct FailureLog {
    shared: Arc<Shared>,
    /// Turns true when the agent drains: Envoy keeps an access-log stream
    /// open forever, so the agent ends it instead of waiting out the drain.
    draining: watch::Receiver<bool>,
}

impl FailureLog {
    pub fn new(shared: Arc<Shared>, draining: watch::Receiver<bool>) -> Self {
        Self { shared, draining }
    }

    /// One logged request: a 502–504 takes its routed pod out of rotation.
    /// Requests the agent did not route (no `steer` metadata) and other
    /// statuses (the filter in Envoy's config decides what is sent) are
    /// ignored.
    pub fn on_entry(&self, entry: &HttpAccessLogEntry) {
        let metadata = entry
            .common_properties
            .as_ref()
            .and_then(|c| c.metadata.as_ref());
        let status = entry
            .response
            .as_ref()
            .and_then(|r| r.response_code)
            .and_then(|code| u16::try_from(code.value).ok());
        if let Some(member) = routed_member(&self.shared, metadata) {
            upstream_status(&self.shared, &member, status);
        }
    }

    fn on_message(&self, message: StreamAccessLogsMessage) {
        if let Some(LogEntries::HttpLogs(logs)) = message.log_entries {
            logs.log_entry.iter().for_each(|e| self.on_entry(e));
        }
    }
}

#[tonic::async_trait]
impl AccessLogService for FailureLog {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        let mut draining = self.draining.clone();
        loop {
            tokio::select! {
                biased;
                _ = draining.wait_for(|d| *d) => break,
                next = inbound.message() => match next {
                    Ok(Some(message)) => self.on_message(message),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "access log stream failed");
                        break;
                    }
                },
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}
