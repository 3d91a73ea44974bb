//! `/v1/embeddings`: small deterministic vectors, token-counted like prompts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::cache::token_count;
use crate::engine::Engine;
use crate::openai::{self, ApiError};

const DEFAULT_DIMS: u64 = 8;
const MAX_DIMS: u64 = 4096;

pub(crate) async fn handle(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    embed(engine, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn embed(engine: Arc<Engine>, body: &[u8]) -> Result<Response, ApiError> {
    let value = openai::parse_json(body)?;
    let model = openai::model_of(&value)?;
    let inputs = inputs(value.get("input"))?;
    if !engine.serves(&model) {
        return Err(ApiError::unknown_model(&model));
    }
    let dims = match value.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMS,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=MAX_DIMS).contains(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!("`dimensions` must be in 1..={MAX_DIMS}."))
            })?,
    };
    let base64 = value.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let total: u64 = inputs.iter().map(|t| token_count(t)).sum();
    let slot = engine
        .admit(total)
        .await
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine shutting down"))?;
    let mut prompt_tokens = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, text) in inputs.iter().enumerate() {
        prompt_tokens += engine.prefill(text, false).await.prompt_tokens;
        let v = vector(text, dims);
        // The openai SDK asks for base64 by default and decodes it itself.
        let embedding = if base64 {
            json!(encode_base64(&v))
        } else {
            json!(v)
        };
        data.push(json!({"index": index, "object": "embedding", "embedding": embedding}));
    }
    drop(slot);
    Ok(Json(json!({
        "id": engine.next_id("embd"),
        "object": "list",
        "created": Engine::now_unix(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
    }))
    .into_response())
}

/// Accepted shapes: a string, strings, token ids, or lists of token ids.
fn inputs(input: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let invalid =
        || ApiError::bad_request("Field `input` must be a string, strings, or token ids.");
    let ids = |items: &[Value]| -> Option<String> {
        let ids = items
            .iter()
            .map(Value::as_i64)
            .collect::<Option<Vec<_>>>()?;
        Some(ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" "))
    };
    match input {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if let Some(strs) = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect()
            {
                return Ok(strs);
            }
            if let Some(one) = ids(items) {
                return Ok(vec![one]);
            }
            items
                .iter()
                .map(|v| v.as_array().and_then(|a| ids(a)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)
        }
        _ => Err(invalid()),
    }
}

/// Unit-length vector seeded by the text, so equal inputs embed equally.
fn vector(text: &str, dims: u64) -> Vec<f32> {
    let raw: Vec<f32> = (0..dims)
        .map(|d| (xxh3_64_with_seed(text.as_bytes(), d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|x| x / norm).collect()
}

/// Standard base64 of the little-endian f32s (vLLM's `encoding_format: base64`).
fn encode_base64(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shapes() {
        assert_eq!(inputs(Some(&json!("a"))).unwrap(), ["a"]);
        assert_eq!(inputs(Some(&json!(["a", "b"]))).unwrap(), ["a", "b"]);
        assert_eq!(inputs(Some(&json!([1, 2]))).unwrap(), ["1 2"]);
        assert_eq!(inputs(Some(&json!([[1], [2, 3]]))).unwrap(), ["1", "2 3"]);
        assert!(inputs(Some(&json!([]))).is_err());
        assert!(inputs(None).is_err());
    }

    #[test]
    fn base64_matches_reference() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, 1.0]), "AACAPwAAgD8=");
    }

    #[test]
    fn vectors_are_unit_and_deterministic() {
        let v = vector("hello", 8);
        assert_eq!(v, vector("hello", 8));
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
