//! The ORIGINAL_DST cluster: pick ip:port from a request header, forward over a pooled
//! keep-alive client, and turn failures into the router's local replies.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::body::{AnyBody, full};
use crate::error::Error;
use crate::headers::HeaderList;

pub type Client = HyperClient<HttpConnector, AnyBody>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    // Without it small streamed writes wait on delayed ACKs (~40 ms per SSE event).
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Envoy's ORIGINAL_DST `http_header_name`: only the first header value counts. A
/// comma-separated list is read as fallbacks and its first element used (the override_host
/// flavour of this header); Envoy's plain ORIGINAL_DST would reject the list.
pub fn target(headers: &HeaderList, header: &str) -> Option<SocketAddr> {
    let value = std::str::from_utf8(headers.get(header)?).ok()?;
    value.split(',').next()?.trim().parse().ok()
}

/// The upstream request: method, path and Host from the (possibly mutated) pseudo-headers.
pub fn request(
    target: SocketAddr,
    headers: &HeaderList,
    body: AnyBody,
) -> Result<Request<AnyBody>, Error> {
    let bad = |what: &str| Error::Downstream(format!("cannot forward request: invalid {what}"));
    let method = Method::from_bytes(headers.get(":method").map_or(&b"GET"[..], |m| m))
        .map_err(|_| bad(":method"))?;
    let path = headers
        .get(":path")
        .cloned()
        .unwrap_or_else(|| Bytes::from_static(b"/"));
    let path = PathAndQuery::from_maybe_shared(path).map_err(|_| bad(":path"))?;
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query(path)
        .build()
        .map_err(|_| bad(":path"))?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|_| bad("request"))?;
    // hyper frames the body itself: content-length when the size is known, chunked otherwise.
    *request.headers_mut() = headers.to_http(false);
    if let Some(authority) = headers
        .get(":authority")
        .and_then(|a| HeaderValue::from_maybe_shared(a.clone()).ok())
    {
        request.headers_mut().insert(HOST, authority);
    }
    Ok(request)
}

pub async fn send(client: &Client, request: Request<AnyBody>) -> Result<Response<Incoming>, Error> {
    client.request(request).await.map_err(classify)
}

fn classify(e: hyper_util::client::legacy::Error) -> Error {
    if e.is_connect() {
        Error::UpstreamConnect(e.to_string())
    } else {
        Error::UpstreamReset(e.to_string())
    }
}

/// An upstream request running on its own task while its body is still being fed.
/// Dropping it cancels the request.
pub struct Call(JoinHandle<Result<Response<Incoming>, Error>>);

impl Call {
    pub fn spawn(client: &Client, request: Request<AnyBody>) -> Self {
        let client = client.clone();
        Self(tokio::spawn(async move { send(&client, request).await }))
    }

    pub async fn response(mut self) -> Result<Response<Incoming>, Error> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) => Err(Error::UpstreamReset(e.to_string())),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response as the encoder filters see it: from the upstream, or a router/HCM local reply.
pub struct Reply {
    pub headers: HeaderList,
    pub body: AnyBody,
    /// Set for local replies: Envoy's response code details.
    pub details: Option<String>,
}

impl Reply {
    pub fn from_result(result: Result<Response<Incoming>, Error>) -> Self {
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                Self {
                    headers: HeaderList::from_response(parts.status, &parts.headers),
                    body: body.map_err(Into::into).boxed_unsync(),
                    details: None,
                }
            }
            Err(e) => Self::local(&e),
        }
    }

    /// Envoy's local reply: text/plain body with its length, or no body and no content headers.
    pub fn local(e: &Error) -> Self {
        tracing::debug!(error = %e, "local reply");
        Self::text(
            e.status(),
            e.body(),
            HeaderList::default(),
            Some(e.details()),
        )
    }

    /// Builds a local reply over `headers` (the ImmediateResponse mutation result, if any):
    /// content-type stays if the server chose one.
    pub fn text(
        status: StatusCode,
        text: impl Into<Bytes>,
        mut headers: HeaderList,
        details: Option<String>,
    ) -> Self {
        let text = text.into();
        headers.set(
            ":status",
            Bytes::copy_from_slice(status.as_str().as_bytes()),
        );
        if text.is_empty() {
            headers.remove("content-length");
            headers.remove("content-type");
        } else {
            headers.set("content-length", Bytes::from(text.len().to_string()));
            if !headers.contains("content-type") {
                headers.add("content-type", Bytes::from_static(b"text/plain"));
            }
        }
        Self {
            headers,
            body: full(text),
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> HeaderList {
        let mut h = HeaderList::default();
        h.add(":authority", "gw");
        for v in values {
            h.add("target-pod", v.to_string());
        }
        h
    }

    #[test]
    fn target_takes_the_first_value_and_first_element() {
        assert_eq!(
            target(&list(&["10.0.0.1:8000"]), "target-pod"),
            Some("10.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            target(&list(&["10.0.0.2:81, 10.0.0.3:82"]), "target-pod"),
            Some("10.0.0.2:81".parse().unwrap())
        );
        assert_eq!(
            target(&list(&["10.0.0.4:1", "10.0.0.5:2"]), "target-pod"),
            Some("10.0.0.4:1".parse().unwrap())
        );
        assert_eq!(
            target(&list(&["[::1]:8080"]), "target-pod"),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn target_rejects_missing_and_malformed() {
        assert_eq!(target(&list(&[]), "target-pod"), None);
        assert_eq!(target(&list(&["10.0.0.1"]), "target-pod"), None);
        assert_eq!(target(&list(&["pod-a:8000"]), "target-pod"), None);
        assert_eq!(target(&list(&[""]), "target-pod"), None);
        assert_eq!(target(&list(&["10.0.0.1:8000"]), "other"), None);
    }

    #[test]
    fn request_uses_pseudo_headers_and_sets_host() {
        let mut h = list(&["10.0.0.1:8000"]);
        h.add(":method", "POST");
        h.add(":path", "/v1/chat/completions");
        h.add("content-length", "5");
        let r = request("10.0.0.1:8000".parse().unwrap(), &h, crate::body::empty()).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "http://10.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(r.headers()[HOST], "gw");
        assert!(r.headers().get("content-length").is_none());
        assert_eq!(r.headers()["target-pod"], "10.0.0.1:8000");
    }

    #[test]
    fn local_replies_are_plain_text() {
        let r = Reply::local(&Error::NoHealthyUpstream);
        assert_eq!(r.headers.get(":status").unwrap(), "503");
        assert_eq!(r.headers.get("content-type").unwrap(), "text/plain");
        assert_eq!(r.headers.get("content-length").unwrap(), "19");
        let r = Reply::local(&Error::ExtProc(crate::error::ExtProcError::Timeout));
        assert_eq!(r.headers.get(":status").unwrap(), "504");
        assert!(!r.headers.contains("content-type"));
    }
}
