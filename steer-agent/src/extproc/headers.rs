//! Reading Envoy's HeaderMap and building header mutations.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation;

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
}

impl RequestMeta {
    pub fn from_headers(map: Option<&HeaderMap>) -> Self {
        let mut meta = Self::default();
        for h in map.into_iter().flat_map(|m| &m.headers) {
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
