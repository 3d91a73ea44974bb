//! HTTP routes: OpenAI endpoints, health, metrics, and test-only fault injection.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine::{Engine, Prefill, sleep_us};
use crate::openai::{self, ApiError, Kind, Meta};
use crate::stream::{self, TokenStream};

/// Request headers echoed back as `x-echo-<name>` so tests can see what the router set.
const ECHOED: [&str; 6] = [
    "target-pod",
    "x-gateway-destination-endpoint",
    "x-gateway-model-name",
    "x-request-id",
    "routing-strategy",
    "x-session-id",
];

pub(crate) fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(crate::embed::handle))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .route("/admin/fail", post(fail))
        .route("/admin/recover", post(recover))
        .route("/admin/stats", get(stats))
        // Long-context prompts exceed axum's 2 MB default.
        .layer(DefaultBodyLimit::max(64 << 20))
        .layer(middleware::from_fn_with_state(Arc::clone(&engine), gate))
        .with_state(engine)
}

/// Applies an injected fault to every non-admin route and tags every response.
async fn gate(State(engine): State<Arc<Engine>>, req: Request, next: Next) -> Response {
    let fault = engine.fault.load(Relaxed);
    let mut resp = match StatusCode::from_u16(fault) {
        Ok(status) if !req.uri().path().starts_with("/admin/") => {
            ApiError::new(status, format!("mock-engine: injected fault {fault}")).into_response()
        }
        _ => next.run(req).await,
    };
    resp.headers_mut()
        .insert("x-mock-engine", engine.name.clone());
    resp
}

async fn chat(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(engine, &headers, &body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate(engine, &headers, &body, Kind::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn messages(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(engine, &headers, &body, Kind::Messages)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    engine: Arc<Engine>,
    headers: &HeaderMap,
    body: &[u8],
    kind: Kind,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let value = openai::parse_json(body)?;
    let req = openai::parse_gen(&value, kind, engine.args.default_max_tokens)?;
    if !engine.serves(&req.model) {
        return Err(ApiError::unknown_model(&req.model));
    }
    let prompt_estimate = crate::cache::token_count(&req.prompt);
    let slot = engine
        .admit(prompt_estimate + req.max_tokens)
        .await
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine shutting down"))?;
    let prefill = engine.prefill(&req.prompt, true).await;
    let meta = Meta {
        id: engine.next_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
            Kind::Messages => "msg",
        }),
        created: Engine::now_unix(),
        model: req.model.clone(),
    };
    let mut out_headers = result_headers(headers, prefill);
    if req.stream {
        let body = stream::body(TokenStream {
            engine: Arc::clone(&engine),
            _slot: slot,
            kind,
            meta,
            tokens: req.max_tokens,
            include_usage: req.include_usage,
            prefill,
            start,
        });
        let sse = HeaderValue::from_static("text/event-stream");
        out_headers.insert(header::CONTENT_TYPE, sse);
        out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok((out_headers, body).into_response());
    }
    let decode_us = engine.args.decode_us_per_token;
    sleep_us(decode_us).await;
    engine.metrics.observe_ttft(start.elapsed());
    sleep_us(decode_us.saturating_mul(req.max_tokens.saturating_sub(1))).await;
    engine.metrics.add_generated(req.max_tokens);
    drop(slot);
    let usage = if kind == Kind::Messages {
        crate::anthropic::usage(prefill.prompt_tokens, req.max_tokens, prefill.cached_tokens)
    } else {
        openai::usage(prefill.prompt_tokens, req.max_tokens, prefill.cached_tokens)
    };
    let json = openai::full_response(kind, &meta, req.max_tokens, usage);
    Ok((out_headers, Json(json)).into_response())
}

fn result_headers(req: &HeaderMap, prefill: Prefill) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert("x-prefix-cached-tokens", prefill.cached_tokens.into());
    out.insert("x-prompt-tokens", prefill.prompt_tokens.into());
    for name in ECHOED {
        if let Some(v) = req.get(name)
            && let Ok(echo) = HeaderName::try_from(format!("x-echo-{name}"))
        {
            out.insert(echo, v.clone());
        }
    }
    out
}

async fn models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let created = Engine::now_unix();
    let data: Vec<Value> = engine
        .args
        .served_models()
        .iter()
        .map(|m| {
            json!({"id": m, "object": "model", "created": created, "owned_by": "vllm",
                "root": m, "parent": null, "max_model_len": 131_072, "permission": []})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let args = &engine.args;
    let model = args.served_models().first().map_or("", String::as_str);
    let mut text = engine
        .metrics
        .render(args.metrics_flavor, model, args.kv_blocks_total);
    if args.max_lora > 0 && args.metrics_flavor != crate::metrics::Flavor::Sglang {
        crate::metrics::render_lora(&mut text, args.max_lora, &args.lora_running);
    }
    let ct = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, ct)], text).into_response()
}

async fn fail(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let status = openai::parse_json(&body).and_then(|v| {
        v.get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| ApiError::bad_request("`status` must be an HTTP status in 200..=599."))
    });
    match status {
        Ok(s) => {
            engine.fault.store(s, Relaxed);
            Json(json!({"status": "failing", "code": s})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn recover(State(engine): State<Arc<Engine>>) -> Json<Value> {
    engine.fault.store(0, Relaxed);
    Json(json!({"status": "ok"}))
}

async fn stats(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let m = &engine.metrics;
    Json(json!({
        "requests": m.requests.load(Relaxed),
        "prompt_tokens": m.prompt_tokens.load(Relaxed),
        "cached_tokens": m.prefix_hits.load(Relaxed),
        "running": m.running.load(Relaxed),
        "waiting": m.waiting.load(Relaxed),
    }))
}
