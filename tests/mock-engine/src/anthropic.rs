//! Anthropic Messages API (`/v1/messages`) as vLLM serves it: the system
//! prompt, the response body and the stream's events. Usage reports the
//! uncached prompt tokens as `input_tokens` and the prefix-cache hits as
//! `cache_read_input_tokens`, as Anthropic does.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::openai::{ApiError, Meta, token_text};

/// `system`: a string or an array of text blocks.
pub(crate) fn system_prompt(system: Option<&Value>) -> Result<String, ApiError> {
    match system {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => Ok(blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect()),
        Some(_) => Err(ApiError::bad_request(
            "Field `system` must be a string or an array of text blocks.",
        )),
    }
}

pub(crate) fn usage(prompt: u64, output: u64, cached: u64) -> Value {
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "output_tokens": output,
    })
}

pub(crate) fn full_response(meta: &Meta, n: u64, usage: Value) -> Value {
    let text: String = (0..n).map(token_text).collect();
    json!({
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens",
        "stop_sequence": null,
        "usage": usage,
    })
}

/// `message_start` and `content_block_start`, before the first token.
pub(crate) fn start(meta: &Meta, usage: Value) -> Bytes {
    let message = json!({
        "id": meta.id, "type": "message", "role": "assistant", "model": meta.model,
        "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
    });
    let mut out = event(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    );
    out.extend_from_slice(&event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    Bytes::from(out)
}

pub(crate) fn token(i: u64) -> Bytes {
    Bytes::from(event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token_text(i)}}),
    ))
}

/// `content_block_stop` and `message_delta` (stop reason, output tokens).
pub(crate) fn finish(output_tokens: u64) -> Bytes {
    let mut out = event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    );
    out.extend_from_slice(&event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    ));
    Bytes::from(out)
}

pub(crate) fn stop() -> Bytes {
    Bytes::from(event("message_stop", &json!({"type": "message_stop"})))
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    let mut out = format!("event: {name}\ndata: ").into_bytes();
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, data);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prompt_shapes() {
        assert_eq!(system_prompt(None).unwrap(), "");
        assert_eq!(system_prompt(Some(&json!("be brief"))).unwrap(), "be brief");
        let blocks = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(system_prompt(Some(&blocks)).unwrap(), "ab");
        assert!(system_prompt(Some(&json!(5))).is_err());
    }

    #[test]
    fn stream_events_are_named_sse_frames() {
        let frame = String::from_utf8(token(1).to_vec()).unwrap();
        assert!(frame.starts_with("event: content_block_delta\ndata: {"));
        assert!(frame.ends_with("}\n\n") && frame.contains("\" tok1\""));
        let end = String::from_utf8(finish(7).to_vec()).unwrap();
        assert!(end.contains("event: message_delta") && end.contains("\"output_tokens\":7"));
    }
}
