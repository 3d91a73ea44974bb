//! A tonic ext_proc client that plays Envoy's BUFFERED request path against
//! an agent: request headers, then the whole body in one message; the reply
//! to the body names the pod. Used where Envoy is not needed (xtask soak's
//! memory phase).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What the agent answered to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// The `target-pod` the body reply set.
    Pod(String),
    /// An immediate response (an error reply) with this HTTP status.
    Immediate(u16),
}

/// One HTTP/2 connection to the agent; each request is its own gRPC stream.
#[derive(Clone, Debug)]
pub struct ExtProcClient {
    inner: ExternalProcessorClient<Channel>,
}

impl ExtProcClient {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let inner = ExternalProcessorClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connecting to ext_proc at {addr}"))?;
        Ok(Self { inner })
    }

    /// Sends a `POST /v1/chat/completions` with `body` and returns how the
    /// agent routed it; the stream is then closed, as when Envoy's request
    /// ends (the agent's in-flight count for the pod drops back).
    pub async fn route(&self, body: Vec<u8>) -> Result<Routed> {
        let (tx, rx) = mpsc::channel(4);
        let mut replies = self
            .inner
            .clone()
            .process(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mode = ProtocolConfiguration {
            request_body_mode: BodySendMode::Buffered as i32,
            response_body_mode: BodySendMode::Streamed as i32,
            ..Default::default()
        };
        tx.send(message(headers(), Some(mode))).await?;
        if let Some(routed) = routed(next(&mut replies).await?) {
            return Ok(routed);
        }
        let body = Request::RequestBody(HttpBody {
            body,
            end_of_stream: true,
            ..Default::default()
        });
        tx.send(message(body, None)).await?;
        routed(next(&mut replies).await?).context("the body reply routed nowhere")
    }
}

fn message(request: Request, protocol_config: Option<ProtocolConfiguration>) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        protocol_config,
        ..Default::default()
    }
}

fn headers() -> Request {
    let pairs = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
    ];
    Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream: false,
        ..Default::default()
    })
}

/// The next reply on the stream (at most 10 s).
async fn next(replies: &mut tonic::Streaming<ProcessingResponse>) -> Result<Response> {
    match tokio::time::timeout(Duration::from_secs(10), replies.message()).await {
        Err(_) => bail!("no ext_proc reply within 10 s"),
        Ok(Err(status)) => bail!("ext_proc stream failed: {status}"),
        Ok(Ok(None)) => bail!("the agent ended the stream without a reply"),
        Ok(Ok(Some(reply))) => reply.response.context("a reply without a response"),
    }
}

/// The routing outcome a reply carries: a `target-pod` header mutation or an
/// immediate response; `None` for a plain "continue".
fn routed(reply: Response) -> Option<Routed> {
    let common = match reply {
        Response::ImmediateResponse(immediate) => {
            let status = immediate.status.map_or(0, |s| s.code as u16);
            return Some(Routed::Immediate(status));
        }
        Response::RequestHeaders(h) => h.response?,
        Response::RequestBody(b) => b.response?,
        _ => return None,
    };
    common
        .header_mutation?
        .set_headers
        .into_iter()
        .filter_map(|h| h.header)
        .find(|h| h.key == "target-pod")
        .map(|h| Routed::Pod(String::from_utf8_lossy(&h.raw_value).into_owned()))
}
