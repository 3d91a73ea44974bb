//! A pooled HTTP/1.1 client (TCP_NODELAY) that times the first body byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Body>,
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// Time to the response headers.
    pub headers_after: Duration,
    /// Time to the first body bytes (the first token for a stream).
    pub first_byte_after: Duration,
    pub total: Duration,
    /// Body frames as they arrived: proves streaming stayed streaming.
    pub frames: usize,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Default for Client {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(connector);
        Self { inner }
    }
}

impl Client {
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply> {
        self.send(method, addr, path, headers, body.into(), false)
            .await
    }

    /// `chunked`: send the body with `transfer-encoding: chunked` (1 MiB
    /// chunks, no content-length) instead of one sized body.
    async fn send(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        chunked: bool,
    ) -> Result<Reply> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        let body: Body = if chunked {
            let chunks: Vec<_> = (0..body.len())
                .step_by(1 << 20)
                .map(|at| {
                    let chunk = body.slice(at..body.len().min(at + (1 << 20)));
                    Ok(hyper::body::Frame::data(chunk))
                })
                .collect();
            StreamBody::new(futures::stream::iter(chunks)).boxed()
        } else {
            Full::new(body).boxed()
        };
        let request = builder.body(body)?;
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(60), self.inner.request(request))
            .await
            .context("request timed out")??;
        let headers_after = started.elapsed();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        let mut first_byte_after = None;
        let mut frames = 0;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .context("body timed out")?
        {
            if let Ok(data) = frame?.into_data() {
                if data.is_empty() {
                    continue;
                }
                first_byte_after.get_or_insert_with(|| started.elapsed());
                frames += 1;
                bytes.extend_from_slice(&data);
            }
        }
        let total = started.elapsed();
        Ok(Reply {
            status,
            headers,
            body: bytes.into(),
            headers_after,
            first_byte_after: first_byte_after.unwrap_or(total),
            total,
            frames,
        })
    }

    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply> {
        self.request("POST", addr, path, headers, body).await
    }

    /// [`Client::post`], optionally with a chunked body.
    pub async fn post_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        chunked: bool,
    ) -> Result<Reply> {
        self.send("POST", addr, path, headers, body.into(), chunked)
            .await
    }

    /// A one-token, non-streaming chat completion for `model`.
    pub async fn chat(
        &self,
        addr: SocketAddr,
        model: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let body = crate::chat_body(model, "x", false, 1);
        self.post(addr, "/v1/chat/completions", headers, body).await
    }

    /// The Prometheus text of an agent's `/metrics`.
    pub async fn metrics(&self, addr: SocketAddr) -> Result<String> {
        Ok(self.get(addr, "/metrics").await?.text())
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply> {
        self.request("GET", addr, path, &[], Bytes::new()).await
    }
}
