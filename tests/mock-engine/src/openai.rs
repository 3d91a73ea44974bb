//! OpenAI wire format as vLLM speaks it: request parsing, response bodies, errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Largest completion accepted; keeps a hostile `max_tokens` from pinning a slot forever.
const MAX_COMPLETION_TOKENS: u64 = 1 << 17;

/// An OpenAI-style error (`{"error":{"message","type","code"}}`).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn unknown_model(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            400 => "BadRequestError",
            404 => "NotFoundError",
            429 => "TooManyRequestsError",
            503 => "ServiceUnavailableError",
            500..=599 => "InternalServerError",
            _ => "Error",
        };
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": null,
            "code": self.status.as_u16(),
        }});
        (self.status, Json(body)).into_response()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
    /// Anthropic Messages API (see [`crate::anthropic`]).
    Messages,
}

/// The parts of a chat/completions request the mock acts on.
#[derive(Debug)]
pub(crate) struct GenRequest {
    pub(crate) model: String,
    pub(crate) prompt: String,
    pub(crate) max_tokens: u64,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("Request body must be a JSON object."));
    }
    Ok(value)
}

pub(crate) fn model_of(body: &Value) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(m)) => Ok(m.clone()),
        _ => Err(ApiError::bad_request(
            "Field `model` is required and must be a string.",
        )),
    }
}

pub(crate) fn parse_gen(
    body: &Value,
    kind: Kind,
    default_max: u64,
) -> Result<GenRequest, ApiError> {
    let model = model_of(body)?;
    let prompt = match kind {
        Kind::Chat => chat_prompt(body.get("messages"))?,
        Kind::Completion => completion_prompt(body.get("prompt"))?,
        Kind::Messages => {
            crate::anthropic::system_prompt(body.get("system"))?
                + &chat_prompt(body.get("messages"))?
        }
    };
    let max = ["max_completion_tokens", "max_tokens"]
        .iter()
        .map(|k| body.get(*k).unwrap_or(&Value::Null))
        .find(|v| !v.is_null());
    let max_tokens = match max {
        None => default_max,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_COMPLETION_TOKENS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "max_tokens must be an integer in 1..={MAX_COMPLETION_TOKENS}, got {v}."
                )));
            }
        },
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(GenRequest {
        model,
        prompt,
        max_tokens,
        stream,
        include_usage,
    })
}

/// Chat prompt text: `role\ncontent\n` per message; content parts contribute their `text`.
pub(crate) fn chat_prompt(messages: Option<&Value>) -> Result<String, ApiError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(ApiError::bad_request(
            "Field `messages` is required and must be an array.",
        ));
    };
    let mut text = String::new();
    for m in messages {
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return Err(ApiError::bad_request("Each message needs a string `role`."));
        };
        text.push_str(role);
        text.push('\n');
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Message `content` must be a string or an array.",
                ));
            }
        }
        text.push('\n');
    }
    Ok(text)
}

/// Completion prompt text: a string, strings joined by newlines, or token ids as numbers.
pub(crate) fn completion_prompt(prompt: Option<&Value>) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "Field `prompt` must be a string, an array of strings or an array of token ids.",
        )
    };
    match prompt {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) if !items.is_empty() => {
            if let Some(strs) = items.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                return Ok(strs.join("\n"));
            }
            let ids = items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>();
            let ids = ids.ok_or_else(invalid)?;
            Ok(ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" "))
        }
        _ => Err(invalid()),
    }
}

/// Text of generated token `i` (deterministic: "tok0 tok1 ...").
pub(crate) fn token_text(i: u64) -> String {
    if i == 0 {
        "tok0".to_owned()
    } else {
        format!(" tok{i}")
    }
}

pub(crate) fn usage(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Identity shared by a response and all of its stream chunks.
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
}

pub(crate) fn full_response(kind: Kind, meta: &Meta, n: u64, usage: Value) -> Value {
    let text: String = (0..n).map(token_text).collect();
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": null,
            "finish_reason": "length",
            "stop_reason": null,
        }),
        Kind::Completion => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": "length", "stop_reason": null,
        }),
        Kind::Messages => return crate::anthropic::full_response(meta, n, usage),
    };
    json!({
        "id": meta.id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_shapes() {
        let msgs = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ]);
        let text = chat_prompt(Some(&msgs)).unwrap();
        assert_eq!(text, "system\nbe brief\nuser\nab\nassistant\n\n");
        assert!(chat_prompt(None).is_err());
        assert!(chat_prompt(Some(&json!([{"content": "x"}]))).is_err());
        assert!(chat_prompt(Some(&json!([{"role": "u", "content": 5}]))).is_err());
    }

    #[test]
    fn completion_prompt_shapes() {
        assert_eq!(completion_prompt(Some(&json!("hi"))).unwrap(), "hi");
        assert_eq!(completion_prompt(Some(&json!(["a", "b"]))).unwrap(), "a\nb");
        assert_eq!(
            completion_prompt(Some(&json!([1, 22, 333]))).unwrap(),
            "1 22 333"
        );
        assert!(completion_prompt(Some(&json!([]))).is_err());
        assert!(completion_prompt(Some(&json!([1, "a"]))).is_err());
        assert!(completion_prompt(None).is_err());
    }

    #[test]
    fn parse_max_tokens_and_stream_options() {
        let body = json!({"model": "m", "prompt": "x", "max_completion_tokens": 3, "max_tokens": 9,
            "stream": true, "stream_options": {"include_usage": true}});
        let r = parse_gen(&body, Kind::Completion, 16).unwrap();
        assert_eq!((r.max_tokens, r.stream, r.include_usage), (3, true, true));
        let r = parse_gen(&json!({"model": "m", "prompt": "x"}), Kind::Completion, 16).unwrap();
        assert_eq!(
            (r.max_tokens, r.stream, r.include_usage),
            (16, false, false)
        );
        let bad = json!({"model": "m", "prompt": "x", "max_tokens": 0});
        assert!(parse_gen(&bad, Kind::Completion, 16).is_err());
        assert!(parse_gen(&json!({"prompt": "x"}), Kind::Completion, 16).is_err());
        assert!(parse_json(b"{nope").is_err());
    }

    #[test]
    fn tokens_are_deterministic_words() {
        let t: String = (0..3).map(token_text).collect();
        assert_eq!(t, "tok0 tok1 tok2");
    }
}
