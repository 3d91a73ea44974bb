//! Reading Envoy's HeaderMap and building header mutations.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation;
use envoy_types::pb::google::protobuf::value::Kind;

/// Current Envoy sends values in `raw_value`; older ones in `value`.
pub fn value_of(h: &HeaderValue) -> &str {
    if h.raw_value.is_empty() {
        &h.value
    } else {
        std::str::from_utf8(&h.raw_value).unwrap_or("")
    }
}

/// The request headers routing looks at, read in one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub method: String,
    pub path: String,
    pub strategy: Option<String>,
    pub session: Option<String>,
    pub request_id: Option<String>,
    /// AIBrix's `model` header: used only for requests without a body.
    pub model: Option<String>,
    pub content_length: Option<usize>,
    /// Headers Envoy sent (pseudo-headers included, as Envoy counts them).
    pub header_count: usize,
    /// How many of [`ROUTING_HEADERS`] the request already carries (the
    /// agent overwrites those instead of adding them).
    pub routing_headers_present: usize,
}

/// The request headers the routing reply sets besides `x-request-id` (which
/// Envoy always adds before the ext_proc filter).
pub const ROUTING_HEADERS: [&str; 3] = [
    "target-pod",
    "x-gateway-destination-endpoint",
    "x-gateway-model-name",
];

impl RequestMeta {
    pub fn from_headers(map: Option<&HeaderMap>) -> Self {
        let mut meta = Self::default();
        for h in map.into_iter().flat_map(|m| &m.headers) {
            meta.header_count += 1;
            if ROUTING_HEADERS
                .iter()
                .any(|r| h.key.eq_ignore_ascii_case(r))
            {
                meta.routing_headers_present += 1;
            }
            let value = || value_of(h).trim().to_owned();
            let non_empty = || Some(value()).filter(|v| !v.is_empty());
            // Envoy lower-cases header keys; compare ignoring case anyway.
            let key = h.key.as_str();
            if key.eq_ignore_ascii_case(":method") {
                meta.method = value();
            } else if key.eq_ignore_ascii_case(":path") {
                meta.path = value();
            } else if key.eq_ignore_ascii_case("routing-strategy") {
                meta.strategy = non_empty();
            } else if key.eq_ignore_ascii_case("x-session-id") {
                meta.session = non_empty();
            } else if key.eq_ignore_ascii_case("x-request-id") {
                meta.request_id = non_empty();
            } else if key.eq_ignore_ascii_case("model") {
                meta.model = non_empty();
            } else if key.eq_ignore_ascii_case("content-length") {
                meta.content_length = value().parse().ok();
            }
        }
        meta
    }
}

/// The `:status` of a response header map.
pub fn status_of(map: Option<&HeaderMap>) -> Option<u16> {
    map?.headers
        .iter()
        .find(|h| h.key == ":status")
        .and_then(|h| value_of(h).parse().ok())
}

/// The Inference Extension's subset hint: the endpoints of the InferencePool
/// the gateway picked (filter metadata `envoy.lb.subset_hint`, key
/// `x-gateway-destination-endpoint-subset`, a list or a comma-separated
/// string of `ip:port`). Routing must stay inside it (canary splits).
pub fn subset_hint(metadata: Option<&Metadata>) -> Option<Vec<SocketAddr>> {
    let hint = metadata?.filter_metadata.get("envoy.lb.subset_hint")?;
    let value = hint.fields.get("x-gateway-destination-endpoint-subset")?;
    let mut out = Vec::new();
    let mut push = |s: &str| {
        out.extend(
            s.split(',')
                .filter_map(|p| p.trim().parse::<SocketAddr>().ok()),
        );
    };
    match value.kind.as_ref()? {
        Kind::StringValue(s) => push(s),
        Kind::ListValue(list) => {
            for v in &list.values {
                if let Some(Kind::StringValue(s)) = &v.kind {
                    push(s);
                }
            }
        }
        _ => {}
    }
    Some(out)
}

/// Response-side: the content type decides how usage is read.
pub fn content_type(map: Option<&HeaderMap>) -> Option<String> {
    map.into_iter()
        .flat_map(|m| &m.headers)
        .find(|h| h.key.eq_ignore_ascii_case("content-type"))
        .map(|h| value_of(h).to_ascii_lowercase())
}

/// A mutation that overwrites (or adds) each header.
pub fn set_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMutation {
    HeaderMutation {
        set_headers: pairs
            .into_iter()
            .map(|(key, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_owned(),
                    raw_value: value.as_bytes().to_vec(),
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect(),
        remove_headers: Vec::new(),
    }
}

#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).to_owned(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

    #[test]
    fn subset_hint_reads_lists_and_strings() {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let hint = |v: Value| Metadata {
            filter_metadata: [(
                "envoy.lb.subset_hint".to_owned(),
                Struct {
                    fields: [("x-gateway-destination-endpoint-subset".to_owned(), v)].into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let list = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![
                    string("10.0.0.1:8000"),
                    string("garbage"),
                    string("10.0.0.2:8000"),
                ],
            })),
        };
        assert_eq!(subset_hint(Some(&hint(list))).unwrap().len(), 2);
        let csv = hint(string("10.0.0.1:8000, 10.0.0.3:8000"));
        assert_eq!(
            subset_hint(Some(&csv)).unwrap()[1],
            "10.0.0.3:8000".parse().unwrap()
        );
        assert_eq!(subset_hint(None), None);
        assert_eq!(subset_hint(Some(&Metadata::default())), None);
    }

    #[test]
    fn meta_reads_raw_and_plain_values() {
        let mut map = header_map(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("Routing-Strategy", "prefix-cache"),
            ("x-session-id", "  "),
            ("content-length", "42"),
        ]);
        map.headers.push(HeaderValue {
            key: "x-request-id".into(),
            value: "abc".into(),
            ..Default::default()
        });
        let meta = RequestMeta::from_headers(Some(&map));
        assert_eq!(meta.method, "POST");
        assert_eq!(meta.path, "/v1/chat/completions");
        assert_eq!(meta.strategy.as_deref(), Some("prefix-cache"));
        assert_eq!(meta.session, None, "blank session ids are ignored");
        assert_eq!(meta.request_id.as_deref(), Some("abc"));
        assert_eq!(meta.content_length, Some(42));
    }
}
