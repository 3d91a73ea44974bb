//! One ExternalProcessor/Process stream per client request: send, await a reply under Envoy's
//! message timeout, and close the way Envoy closes.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use crate::error::ExtProcError;

pub type Client = ExternalProcessorClient<Channel>;
type Call = JoinHandle<Result<tonic::Response<Streaming<ProcessingResponse>>, tonic::Status>>;

/// Envoy's remote_close_timeout: how long a half-closed stream may take to finish.
const REMOTE_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The stream. `Default` is a stream that is already over (Envoy's processing_complete_).
#[derive(Default)]
pub struct ExtProc {
    tx: Option<mpsc::UnboundedSender<ProcessingRequest>>,
    call: Option<Call>,
    rx: Option<Streaming<ProcessingResponse>>,
    protocol: Option<ProtocolConfiguration>,
    timeout: Duration,
    timer: bool,
    deadline: Option<Instant>,
    outstanding: usize,
}

impl ExtProc {
    /// Starts the call. `protocol` rides on the first message, as Envoy encodes it.
    pub fn start(
        client: &Client,
        protocol: ProtocolConfiguration,
        timeout: Duration,
        timer: bool,
    ) -> Self {
        // Unbounded like Envoy's send path: a send never waits, so the timer always starts.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = client.clone();
        // Spawned so messages flow even before the server sends response headers (some
        // servers only do so with their first reply).
        let call =
            tokio::spawn(async move { client.process(UnboundedReceiverStream::new(rx)).await });
        Self {
            tx: Some(tx),
            call: Some(call),
            rx: None,
            protocol: Some(protocol),
            timeout,
            timer,
            deadline: None,
            outstanding: 0,
        }
    }

    pub fn is_active(&self) -> bool {
        self.tx.is_some()
    }

    /// Turns the message timer on or off (Envoy arms none for a FULL_DUPLEX_STREAMED
    /// direction) and starts counting replies afresh.
    pub fn set_timer(&mut self, on: bool) {
        self.timer = on;
        self.outstanding = 0;
        self.deadline = None;
    }

    /// Sends a message that expects one reply and (re)arms the message timer.
    pub fn send(&mut self, request: Request) {
        let Some(tx) = &self.tx else { return };
        let message = ProcessingRequest {
            request: Some(request),
            metadata_context: Some(Metadata::default()),
            protocol_config: self.protocol.take(),
            ..Default::default()
        };
        // A closed channel means the call failed; recv() reports why.
        let _ = tx.send(message);
        self.outstanding += 1;
        if self.timer {
            self.deadline = Some(Instant::now() + self.timeout);
        }
    }

    /// The next reply. Cancel-safe, so it can sit in a `select!` next to a body read.
    pub async fn recv(&mut self) -> Result<ProcessingResponse, ExtProcError> {
        loop {
            let deadline = self.deadline;
            let next = self.next_message();
            let got = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, next)
                    .await
                    .map_err(|_| ExtProcError::Timeout)?,
                None => next.await,
            };
            let message = match got {
                Ok(Some(message)) => message,
                Ok(None) => return Err(ExtProcError::Closed),
                Err(status) => return Err(ExtProcError::Grpc(Box::new(status))),
            };
            if message.override_message_timeout.is_some() {
                // Envoy consumes such a message only as a timer extension, and ignores it unless
                // max_message_timeout is configured (it is not here).
                tracing::debug!("ignoring override_message_timeout");
                continue;
            }
            self.outstanding = self.outstanding.saturating_sub(1);
            self.deadline =
                (self.timer && self.outstanding > 0).then(|| Instant::now() + self.timeout);
            return Ok(message);
        }
    }

    async fn next_message(&mut self) -> Result<Option<ProcessingResponse>, tonic::Status> {
        if let Some(call) = self.call.as_mut() {
            let opened = call
                .await
                .map_err(|e| tonic::Status::internal(format!("ext_proc call task: {e}")));
            self.call = None;
            self.rx = Some(opened??.into_inner());
        }
        match self.rx.as_mut() {
            Some(rx) => rx.message().await,
            None => Ok(None),
        }
    }

    /// Normal end: half-close, then let the server finish on its own (Envoy's graceful close).
    pub fn finish(&mut self) {
        self.tx = None;
        let (call, rx) = (self.call.take(), self.rx.take());
        if call.is_none() && rx.is_none() {
            return;
        }
        tokio::spawn(async move {
            let drain = async move {
                let mut rx = match (rx, call) {
                    (Some(rx), _) => rx,
                    (None, Some(call)) => match call.await {
                        Ok(Ok(response)) => response.into_inner(),
                        _ => return,
                    },
                    (None, None) => return,
                };
                while let Ok(Some(_)) = rx.message().await {}
            };
            let _ = tokio::time::timeout(REMOTE_CLOSE_TIMEOUT, drain).await;
        });
    }

    /// Error end: reset the stream (Envoy's closeStream after a failure).
    pub fn abort(&mut self) {
        self.tx = None;
        if let Some(call) = self.call.take() {
            call.abort();
        }
        self.rx = None;
    }
}

/// What the server told "Envoy" beyond mutations, for the debug headers.
#[derive(Debug, Default)]
pub struct Meta {
    namespaces: HashMap<String, Struct>,
    pub route_cache_cleared: bool,
}

impl Meta {
    /// Records a reply: dynamic metadata from every message (merged per namespace, key by key,
    /// like StreamInfo::setDynamicMetadata), and clear_route_cache where Envoy honours it -
    /// request direction, and only with a header mutation in the same response.
    pub fn absorb(&mut self, message: &ProcessingResponse) {
        if let Some(metadata) = &message.dynamic_metadata {
            for (namespace, value) in &metadata.fields {
                match &value.kind {
                    Some(Kind::StructValue(s)) => {
                        let entry = self.namespaces.entry(namespace.clone()).or_default();
                        entry
                            .fields
                            .extend(s.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    _ => {
                        tracing::debug!(%namespace, "dynamic metadata namespace is not a struct; ignored")
                    }
                }
            }
        }
        let common = match &message.response {
            Some(Response::RequestHeaders(h)) => h.response.as_ref(),
            Some(Response::RequestBody(b)) => b.response.as_ref(),
            _ => None,
        };
        if common
            .is_some_and(|c: &CommonResponse| c.clear_route_cache && c.header_mutation.is_some())
        {
            self.route_cache_cleared = true;
        }
    }

    /// Compact JSON of the merged metadata, namespaces and keys sorted.
    pub fn metadata_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .namespaces
            .iter()
            .map(|(ns, s)| (ns.clone(), struct_json(s)))
            .collect();
        serde_json::Value::Object(object).to_string()
    }
}

fn struct_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
        }
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::ext_proc::v3::{HeaderMutation, HeadersResponse};

    use super::*;

    fn ns(fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect();
        Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        }
    }

    #[test]
    fn metadata_merges_per_key_and_route_cache_needs_a_mutation() {
        let mut meta = Meta::default();
        let mut message = ProcessingResponse {
            dynamic_metadata: Some(Struct {
                fields: [("envoy.lb".to_string(), ns(&[("a", "1"), ("b", "2")]))].into(),
            }),
            response: Some(Response::RequestHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    clear_route_cache: true,
                    ..Default::default()
                }),
            })),
            ..Default::default()
        };
        meta.absorb(&message);
        assert!(!meta.route_cache_cleared);
        message.dynamic_metadata = Some(Struct {
            fields: [("envoy.lb".to_string(), ns(&[("b", "3")]))].into(),
        });
        message.response = Some(Response::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                clear_route_cache: true,
                header_mutation: Some(HeaderMutation::default()),
                ..Default::default()
            }),
        }));
        meta.absorb(&message);
        assert!(meta.route_cache_cleared);
        assert_eq!(meta.metadata_json(), r#"{"envoy.lb":{"a":"1","b":"3"}}"#);
    }
}
