//! TEST/BENCH TOOL: the ext_proc protocol floor. Answers what Envoy waits
//! for as soon as it can, names the next pod round-robin (`target-pod`, route
//! cache cleared), parses nothing and keeps no state beyond a counter and a
//! chunk count: what Envoy + ext_proc costs with a server that does nothing.
//! Modes follow Envoy's `protocol_config`:
//! - BUFFERED body: headers → continue, body → route;
//! - STREAMED body sent without waiting (one wait): the headers reply is held
//!   until the body's last chunk, then route + one continue per chunk;
//! - body NONE, or a bodiless request: the headers reply routes.
//!
//! Response phases and trailers, if sent, are answered with continue;
//! observability-mode messages are never answered.
//! With `--pod-header NAME`, a request carrying NAME goes to the pod it
//! names (the bench's prefix oracle through the same Envoy).
//!
//! `noop-extproc --listen 127.0.0.1:0 --pod 127.0.0.1:8001 --pod ...`

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

struct Noop {
    pods: Vec<String>,
    next: AtomicUsize,
    /// `--pod-header NAME`: a request carrying NAME goes to the pod it names
    /// (the bench's oracle), others round-robin.
    pod_header: Option<String>,
}

impl Noop {
    fn route(&self, pinned: Option<&str>) -> CommonResponse {
        let pod = pinned.unwrap_or_else(|| {
            &self.pods[self.next.fetch_add(1, Ordering::Relaxed) % self.pods.len()]
        });
        CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "target-pod".into(),
                        raw_value: pod.as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            clear_route_cache: true,
            ..Default::default()
        }
    }

    fn answer(
        &self,
        stream: &mut StreamMode,
        message: ProcessingRequest,
    ) -> Vec<ProcessingResponse> {
        if let Some(config) = &message.protocol_config {
            stream.hold = config.request_body_mode == BodySendMode::Streamed as i32
                && config.send_body_without_waiting_for_header_response;
            stream.no_body = config.request_body_mode == BodySendMode::None as i32;
        }
        let headers = |common| HeadersResponse {
            response: Some(common),
        };
        let body = |common| BodyResponse {
            response: Some(common),
        };
        let reply = |r| ProcessingResponse {
            response: Some(r),
            ..Default::default()
        };
        let Some(request) = message.request else {
            return Vec::new();
        };
        if message.observability_mode {
            // Envoy waits for nothing from an observer: never answered.
            return Vec::new();
        }
        if let (Msg::RequestHeaders(h), Some(name)) = (&request, &self.pod_header) {
            stream.pinned = h
                .headers
                .iter()
                .flat_map(|m| &m.headers)
                .find(|v| v.key == *name)
                .map(|v| String::from_utf8_lossy(&v.raw_value).into_owned());
        }
        let pinned = stream.pinned.clone();
        let route = || self.route(pinned.as_deref());
        let one = match request {
            Msg::RequestHeaders(h) if h.end_of_stream || stream.no_body => {
                Reply::RequestHeaders(headers(route()))
            }
            Msg::RequestHeaders(_) if stream.hold => return Vec::new(),
            Msg::RequestHeaders(_) => Reply::RequestHeaders(headers(CommonResponse::default())),
            Msg::RequestBody(b) if stream.hold => {
                stream.chunks += 1;
                if !b.end_of_stream {
                    return Vec::new();
                }
                let mut out = vec![reply(Reply::RequestHeaders(headers(route())))];
                out.extend(
                    (0..std::mem::take(&mut stream.chunks))
                        .map(|_| reply(Reply::RequestBody(body(CommonResponse::default())))),
                );
                stream.hold = false;
                return out;
            }
            Msg::RequestBody(b) if b.end_of_stream => Reply::RequestBody(body(route())),
            Msg::RequestBody(_) => Reply::RequestBody(body(CommonResponse::default())),
            Msg::ResponseHeaders(_) => Reply::ResponseHeaders(headers(CommonResponse::default())),
            Msg::ResponseBody(_) => Reply::ResponseBody(body(CommonResponse::default())),
            Msg::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
            Msg::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
        };
        vec![reply(one)]
    }
}

/// What one stream's replies depend on.
#[derive(Default)]
struct StreamMode {
    hold: bool,
    no_body: bool,
    chunks: usize,
    pinned: Option<String>,
}

#[derive(Clone)]
struct Service(Arc<Noop>);

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Service {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let noop = self.0.clone();
        let replies = request
            .into_inner()
            .scan(StreamMode::default(), move |mode, m| {
                let out: Vec<Result<ProcessingResponse, Status>> = match m {
                    Ok(m) => noop.answer(mode, m).into_iter().map(Ok).collect(),
                    Err(status) => vec![Err(status)],
                };
                std::future::ready(Some(futures::stream::iter(out)))
            })
            .flatten();
        Ok(Response::new(Box::pin(replies)))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: noop-extproc --listen ADDR --pod IP:PORT [--pod IP:PORT ...] [--pod-header NAME]"
    );
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut pods = Vec::new();
    let mut pod_header = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => listen = value.parse()?,
            "--pod" => pods.push(value.parse::<SocketAddr>()?.to_string()),
            "--pod-header" => pod_header = Some(value.to_ascii_lowercase()),
            _ => usage(),
        }
    }
    if pods.is_empty() {
        usage();
    }
    // One event loop, like the agent's default.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("noop-extproc listening on {}", listener.local_addr()?);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        });
        let service = Service(Arc::new(Noop {
            pods,
            next: AtomicUsize::new(0),
            pod_header,
        }));
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(
                ExternalProcessorServer::new(service)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
