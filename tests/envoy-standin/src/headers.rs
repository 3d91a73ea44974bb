//! Envoy's view of a header map: an ordered list with pseudo-headers, converted to and from
//! the ext_proc protobuf HeaderMap and `http::HeaderMap`.

use std::cell::RefCell;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as ProtoHeaderMap, HeaderValue as ProtoHeaderValue,
};
use http::header::{HOST, HeaderName, HeaderValue};
use http::{StatusCode, request};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Connection-level headers: Envoy's codecs consume them and never hand them to filters or
/// forward them.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Lower-case names, values as raw bytes, in Envoy's iteration order (pseudo-headers first).
/// Duplicate names are separate entries, as in Envoy's HeaderMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList(Vec<(String, Bytes)>);

impl HeaderList {
    /// The request headers as Envoy's filter chain sees an HTTP/1.1 request: Host becomes
    /// `:authority`, and the connection manager has added x-forwarded-proto and x-request-id.
    pub fn from_request(parts: &request::Parts) -> Self {
        let authority = parts
            .headers
            .get(HOST)
            .map(|h| Bytes::copy_from_slice(h.as_bytes()))
            .or_else(|| {
                parts
                    .uri
                    .authority()
                    .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()))
            })
            .unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut list = Self::default();
        list.add(":authority", authority);
        list.add(":path", Bytes::copy_from_slice(path.as_bytes()));
        list.add(
            ":method",
            Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        );
        list.add(":scheme", Bytes::from_static(b"http"));
        for (name, value) in &parts.headers {
            if name != HOST && !is_hop_by_hop(name.as_str()) {
                list.add(name.as_str(), Bytes::copy_from_slice(value.as_bytes()));
            }
        }
        if list.get("x-forwarded-proto").is_none() {
            list.add("x-forwarded-proto", Bytes::from_static(b"http"));
        }
        if list.get("x-request-id").is_none() {
            list.add("x-request-id", Bytes::from(request_id()));
        }
        list
    }

    /// Response headers with the `:status` pseudo-header first.
    pub fn from_response(status: StatusCode, headers: &http::HeaderMap) -> Self {
        let mut list = Self::default();
        list.add(
            ":status",
            Bytes::copy_from_slice(status.as_str().as_bytes()),
        );
        for (name, value) in headers {
            if !is_hop_by_hop(name.as_str()) {
                list.add(name.as_str(), Bytes::copy_from_slice(value.as_bytes()));
            }
        }
        list
    }

    /// Trailers (no pseudo-headers).
    pub fn from_map(headers: &http::HeaderMap) -> Self {
        let mut list = Self::default();
        for (name, value) in headers {
            list.add(name.as_str(), Bytes::copy_from_slice(value.as_bytes()));
        }
        list
    }

    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Adds another entry, keeping existing ones (Envoy's addCopy).
    pub fn add(&mut self, name: &str, value: impl Into<Bytes>) {
        self.0.push((name.to_owned(), value.into()));
    }

    /// Replaces every entry of `name` with one (Envoy's setCopy), in the first one's place.
    pub fn set(&mut self, name: &str, value: impl Into<Bytes>) {
        let value = value.into();
        match self.0.iter().position(|(n, _)| n == name) {
            Some(first) => {
                self.0[first].1 = value;
                let mut i = 0;
                self.0.retain(|(n, _)| {
                    i += 1;
                    i - 1 == first || n != name
                });
            }
            None => self.add(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The status a response list carries, if `:status` holds a valid code.
    pub fn status(&self) -> Option<StatusCode> {
        self.get(":status")
            .and_then(|v| StatusCode::from_bytes(v).ok())
    }

    /// The ext_proc wire form. Values go in `raw_value`, as current Envoy sends them
    /// (runtime flag send_header_raw_value, on by default).
    pub fn to_proto(&self) -> ProtoHeaderMap {
        ProtoHeaderMap {
            headers: self
                .0
                .iter()
                .map(|(k, v)| ProtoHeaderValue {
                    key: k.clone(),
                    value: String::new(),
                    raw_value: v.to_vec(),
                })
                .collect(),
        }
    }

    /// Regular headers for the wire: no pseudo-headers, no hop-by-hop headers (hyper frames the
    /// message), and content-length only when asked for.
    pub fn to_http(&self, keep_content_length: bool) -> http::HeaderMap {
        let mut out = http::HeaderMap::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            if name.starts_with(':') || is_hop_by_hop(name) {
                continue;
            }
            if !keep_content_length && name == "content-length" {
                continue;
            }
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value.clone()),
            ) {
                (Ok(n), Ok(v)) => {
                    out.append(n, v);
                }
                _ => {
                    tracing::warn!(header = %name, "dropping header that is not valid on the wire")
                }
            }
        }
        out
    }
}

/// A UUID v4, as Envoy's connection manager generates for x-request-id.
fn request_id() -> String {
    thread_local!(static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng()));
    let raw: u128 = RNG.with(|r| r.borrow_mut().random());
    let v = (raw & !(0xf_u128 << 76) | (0x4_u128 << 76)) & !(0x3_u128 << 62) | (0x2_u128 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_view_matches_envoy() {
        let req = http::Request::post("/v1/chat?x=1")
            .header("Host", "gw.local")
            .header("Connection", "keep-alive")
            .header("X-A", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let h = HeaderList::from_request(&parts);
        let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(
            &names[..6],
            [":authority", ":path", ":method", ":scheme", "x-a", "x-a"]
        );
        assert_eq!(h.get(":authority").unwrap(), "gw.local");
        assert_eq!(h.get(":path").unwrap(), "/v1/chat?x=1");
        assert!(!h.contains("connection") && !h.contains("host"));
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        let id = std::str::from_utf8(h.get("x-request-id").unwrap())
            .unwrap()
            .to_owned();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
        let proto = h.to_proto();
        assert!(proto.headers.iter().all(|v| v.value.is_empty()));
        assert_eq!(proto.headers[4].raw_value, b"1");
    }

    #[test]
    fn set_replaces_all_entries_in_place() {
        let mut h = HeaderList::default();
        h.add("a", "1");
        h.add("b", "x");
        h.add("a", "2");
        h.set("a", "3");
        assert_eq!(
            h.iter().map(|(n, v)| (n, v.as_ref())).collect::<Vec<_>>(),
            [("a", &b"3"[..]), ("b", &b"x"[..])]
        );
        let wire = h.to_http(false);
        assert_eq!(wire.len(), 2);
    }
}
