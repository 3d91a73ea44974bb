//! The client side: HTTP/1.1 accept loop and the per-request driver.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::ProtocolConfiguration;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{AnyBody, ChunkSource};
use crate::cli::RequestBodyMode;
use crate::exchange::{Exchange, State, Stop};
use crate::extproc::ExtProc;
use crate::headers::HeaderList;
use crate::{modes, response, upstream};

pub async fn serve(listener: TcpListener, st: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Usually fd exhaustion; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let st = Arc::clone(&st);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&st), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<AnyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let headers = HeaderList::from_request(&parts);
    let args = &st.args;
    if let Some(target) = args.static_upstream {
        return Ok(forward_only(&st, target, &headers, body).await);
    }
    let protocol = ProtocolConfiguration {
        request_body_mode: args.request_body_mode.envoy() as i32,
        response_body_mode: args.response_body_mode.envoy() as i32,
        send_body_without_waiting_for_header_response: false,
    };
    let full_duplex = args.request_body_mode == RequestBodyMode::FullDuplex;
    let ep = ExtProc::start(&st.ext_proc, protocol, args.message_timeout(), !full_duplex);
    let src = ChunkSource::new(
        body.map_err(Into::into).boxed_unsync(),
        args.chunk_bytes(),
        false,
    );
    let mut x = Exchange::new(Arc::clone(&st), ep, headers);
    let response = match run(&mut x, src).await {
        Ok(response) => response,
        Err(stop) => x.stopped(stop),
    };
    Ok(response)
}

async fn run(x: &mut Exchange, src: ChunkSource) -> Result<Response<AnyBody>, Stop> {
    let reply = modes::request_phase(x, src).await?;
    response::response_phase(x, reply).await
}

/// The `--static-upstream` baseline: the proxy hop alone, no ext_proc.
async fn forward_only(
    st: &State,
    target: std::net::SocketAddr,
    headers: &HeaderList,
    body: Incoming,
) -> Response<AnyBody> {
    let reply = match upstream::request(target, headers, body.map_err(Into::into).boxed_unsync()) {
        Ok(request) => upstream::Reply::from_result(upstream::send(&st.upstream, request).await),
        Err(e) => upstream::Reply::local(&e),
    };
    let mut response = Response::new(reply.body);
    *response.status_mut() = reply
        .headers
        .status()
        .unwrap_or(http::StatusCode::BAD_GATEWAY);
    *response.headers_mut() = reply.headers.to_http(true);
    response
}
