//! HeaderMutation semantics as Envoy's ext_proc filter applies them (mutation_utils.cc with the
//! default HeaderMutationRules).

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation;

use crate::error::ExtProcError;
use crate::headers::HeaderList;

/// Per-call switches Envoy passes to applyHeaderMutations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    /// Streamed and full-duplex modes drop content-length and refuse to set it: the body may
    /// still change after the headers have gone.
    pub remove_content_length: bool,
    /// CONTINUE_AND_REPLACE may change `:method`.
    pub replacing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

/// Applies removals, then sets, like Envoy. Headers the default rules protect are skipped
/// silently; malformed entries fail the whole message (Envoy answers those with a 500).
pub fn apply(
    headers: &mut HeaderList,
    mutation: Option<&HeaderMutation>,
    rules: Rules,
) -> Result<(), ExtProcError> {
    let Some(mutation) = mutation else {
        return Ok(());
    };
    for name in &mutation.remove_headers {
        if !name_is_valid(name) {
            return Err(ExtProcError::Invalid(
                "Invalid character in remove_headers mutation.".into(),
            ));
        }
        let name = name.to_ascii_lowercase();
        // System headers may never be removed, whatever the rules say.
        if name.starts_with(':') || name == "host" || !allowed(&name) {
            tracing::debug!(header = %name, "ignoring removal of a protected header");
            continue;
        }
        headers.remove(&name);
    }
    for option in &mutation.set_headers {
        set_one(headers, option, rules)?;
    }
    Ok(())
}

fn set_one(
    headers: &mut HeaderList,
    option: &HeaderValueOption,
    rules: Rules,
) -> Result<(), ExtProcError> {
    let Some(header) = &option.header else {
        return Ok(());
    };
    if rules.remove_content_length && header.key.eq_ignore_ascii_case("content-length") {
        return Ok(());
    }
    if !header.value.is_empty() && !header.raw_value.is_empty() {
        return Err(ExtProcError::Invalid(
            "Only one of value or raw_value in the HeaderValue message should be set.".into(),
        ));
    }
    if header.raw_value.is_empty() && !header.value.is_empty() {
        // Current Envoy reads only raw_value (send_header_raw_value), so this header ends up empty.
        tracing::warn!(header = %header.key, "set_headers entry uses `value`; Envoy ignores it and sets an empty value - use raw_value");
    }
    let value = Bytes::copy_from_slice(&header.raw_value);
    if !name_is_valid(&header.key) || http::HeaderValue::from_maybe_shared(value.clone()).is_err() {
        return Err(ExtProcError::Invalid(
            "Invalid character in set_headers mutation.".into(),
        ));
    }
    let name = header.key.to_ascii_lowercase();
    let action = action(option, &name)?;
    let method_replace = rules.replacing && name == ":method";
    if !method_replace && (!allowed(&name) || !value_allowed(&name, &value)) {
        tracing::debug!(header = %name, "ignoring mutation of a protected header");
        return Ok(());
    }
    let exists = headers.contains(&name);
    match action {
        Action::Append => headers.add(&name, value),
        Action::AddIfAbsent if !exists => headers.add(&name, value),
        Action::Overwrite => headers.set(&name, value),
        Action::OverwriteIfExists if exists => headers.set(&name, value),
        Action::AddIfAbsent | Action::OverwriteIfExists => {}
    }
    Ok(())
}

/// The deprecated `append` wins when present (Envoy's ext_proc default for it is false, i.e.
/// overwrite). APPEND_IF_EXISTS_OR_ADD is the proto3 zero value and so indistinguishable from
/// "unset": released Envoy overwrites then, so we do too.
fn action(option: &HeaderValueOption, name: &str) -> Result<Action, ExtProcError> {
    #[allow(deprecated)]
    if let Some(append) = &option.append {
        return Ok(if append.value {
            Action::Append
        } else {
            Action::Overwrite
        });
    }
    match HeaderAppendAction::try_from(option.append_action) {
        Ok(
            HeaderAppendAction::AppendIfExistsOrAdd | HeaderAppendAction::OverwriteIfExistsOrAdd,
        ) => Ok(Action::Overwrite),
        Ok(HeaderAppendAction::AddIfAbsent) => Ok(Action::AddIfAbsent),
        Ok(HeaderAppendAction::OverwriteIfExists) => Ok(Action::OverwriteIfExists),
        Err(_) => Err(ExtProcError::Invalid(format!(
            "Invalid append_action value {name}"
        ))),
    }
}

/// Default HeaderMutationRules: routing headers and Envoy's own x-envoy-* are off limits.
fn allowed(name: &str) -> bool {
    !matches!(name, "host" | ":authority" | ":method" | ":scheme") && !name.starts_with("x-envoy")
}

fn value_allowed(name: &str, value: &[u8]) -> bool {
    name != ":status"
        || std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|c| (200..600).contains(&c))
}

/// An RFC 9110 token, optionally after the ':' of a pseudo-header.
fn name_is_valid(name: &str) -> bool {
    let body = name.strip_prefix(':').unwrap_or(name);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::google::protobuf::BoolValue;

    use super::*;

    fn opt(key: &str, raw: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: String::new(),
                raw_value: raw.as_bytes().to_vec(),
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    fn set(options: Vec<HeaderValueOption>) -> HeaderMutation {
        HeaderMutation {
            set_headers: options,
            remove_headers: vec![],
        }
    }

    fn base() -> HeaderList {
        let mut h = HeaderList::default();
        h.add(":authority", "gw");
        h.add(":path", "/a");
        h.add("x-a", "1");
        h
    }

    fn values(h: &HeaderList, name: &str) -> Vec<String> {
        h.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn append_actions() {
        use HeaderAppendAction::*;
        let mut h = base();
        let m = set(vec![
            opt("x-a", "2", AddIfAbsent),
            opt("x-b", "3", AddIfAbsent),
            opt("x-c", "4", OverwriteIfExists),
            opt("x-b", "5", OverwriteIfExistsOrAdd),
            opt("X-New", "6", OverwriteIfExists),
        ]);
        apply(&mut h, Some(&m), Rules::default()).unwrap();
        assert_eq!(values(&h, "x-a"), ["1"]);
        assert_eq!(values(&h, "x-b"), ["5"]);
        assert!(values(&h, "x-c").is_empty() && values(&h, "x-new").is_empty());
    }

    #[test]
    fn unset_action_overwrites_and_append_bool_wins() {
        let mut h = base();
        apply(
            &mut h,
            Some(&set(vec![opt(
                "x-a",
                "2",
                HeaderAppendAction::AppendIfExistsOrAdd,
            )])),
            Rules::default(),
        )
        .unwrap();
        assert_eq!(values(&h, "x-a"), ["2"]);
        let mut appended = opt("x-a", "3", HeaderAppendAction::OverwriteIfExistsOrAdd);
        #[allow(deprecated)]
        {
            appended.append = Some(BoolValue { value: true });
        }
        apply(&mut h, Some(&set(vec![appended])), Rules::default()).unwrap();
        assert_eq!(values(&h, "x-a"), ["2", "3"]);
    }

    #[test]
    fn protected_headers_are_skipped() {
        let mut h = base();
        let mut m = set(vec![
            opt(
                ":authority",
                "evil",
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ),
            opt("host", "evil", HeaderAppendAction::OverwriteIfExistsOrAdd),
            opt(
                "x-envoy-original-path",
                "/x",
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ),
            opt(":path", "/b", HeaderAppendAction::OverwriteIfExistsOrAdd),
        ]);
        m.remove_headers = vec![":path".into(), "host".into(), "X-A".into()];
        apply(&mut h, Some(&m), Rules::default()).unwrap();
        assert_eq!(values(&h, ":authority"), ["gw"]);
        assert_eq!(values(&h, ":path"), ["/b"]);
        assert!(values(&h, "host").is_empty() && values(&h, "x-envoy-original-path").is_empty());
        assert!(values(&h, "x-a").is_empty());
    }

    #[test]
    fn value_field_is_ignored_and_both_fields_fail() {
        let mut h = base();
        let mut o = opt("x-v", "", HeaderAppendAction::OverwriteIfExistsOrAdd);
        o.header.as_mut().unwrap().value = "text".into();
        apply(&mut h, Some(&set(vec![o.clone()])), Rules::default()).unwrap();
        assert_eq!(values(&h, "x-v"), [""]);
        o.header.as_mut().unwrap().raw_value = b"raw".to_vec();
        assert!(matches!(
            apply(&mut h, Some(&set(vec![o])), Rules::default()),
            Err(ExtProcError::Invalid(_))
        ));
    }

    #[test]
    fn invalid_entries_fail_and_content_length_is_guarded() {
        let mut h = base();
        let bad_name = set(vec![opt(
            "bad name",
            "1",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )]);
        assert!(apply(&mut h, Some(&bad_name), Rules::default()).is_err());
        let bad_value = set(vec![opt(
            "x-b",
            "a\r\nb",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )]);
        assert!(apply(&mut h, Some(&bad_value), Rules::default()).is_err());
        let cl = set(vec![opt(
            "content-length",
            "9",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )]);
        let streamed = Rules {
            remove_content_length: true,
            replacing: false,
        };
        apply(&mut h, Some(&cl), streamed).unwrap();
        assert!(values(&h, "content-length").is_empty());
        apply(&mut h, Some(&cl), Rules::default()).unwrap();
        assert_eq!(values(&h, "content-length"), ["9"]);
    }

    #[test]
    fn status_must_be_a_final_code() {
        let mut h = HeaderList::default();
        h.add(":status", "200");
        let m = |v| {
            set(vec![opt(
                ":status",
                v,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )])
        };
        apply(&mut h, Some(&m("101")), Rules::default()).unwrap();
        assert_eq!(values(&h, ":status"), ["200"]);
        apply(&mut h, Some(&m("429")), Rules::default()).unwrap();
        assert_eq!(values(&h, ":status"), ["429"]);
    }
}
