//! Server-sent-event streaming of generated tokens, one frame per token
//! (OpenAI chunks, or Anthropic events framed by [`crate::anthropic`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine::{Engine, Prefill, Running};
use crate::openai::{self, Kind, Meta};

/// Everything a stream needs; owns the running slot so the slot is freed
/// when the stream ends or the client disconnects.
pub(crate) struct TokenStream {
    pub(crate) engine: Arc<Engine>,
    pub(crate) _slot: Running,
    pub(crate) kind: Kind,
    pub(crate) meta: Meta,
    pub(crate) tokens: u64,
    pub(crate) include_usage: bool,
    pub(crate) prefill: Prefill,
    /// When the request arrived (for TTFT).
    pub(crate) start: Instant,
}

enum Step {
    /// Anthropic only: `message_start` before the first token.
    Start,
    Token(u64),
    Usage,
    Done,
    End,
}

struct State {
    s: TokenStream,
    step: Step,
    /// Absolute deadline of the next token: sleeping until it (rather than
    /// for a fixed time) keeps timer rounding from accumulating.
    next_at: Instant,
}

pub(crate) fn body(s: TokenStream) -> Body {
    let state = State {
        next_at: Instant::now(),
        step: if s.kind == Kind::Messages {
            Step::Start
        } else {
            Step::Token(0)
        },
        s,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let frame = next_frame(&mut st).await?;
        Some((Ok::<_, Infallible>(frame), st))
    });
    Body::from_stream(stream)
}

async fn next_frame(st: &mut State) -> Option<Bytes> {
    let s = &st.s;
    match st.step {
        Step::Start => {
            let p = s.prefill;
            st.step = Step::Token(0);
            let usage = crate::anthropic::usage(p.prompt_tokens, 0, p.cached_tokens);
            Some(crate::anthropic::start(&s.meta, usage))
        }
        Step::Token(i) => {
            let decode_us = s.engine.args.decode_us_per_token;
            if decode_us > 0 {
                st.next_at += Duration::from_micros(decode_us);
                tokio::time::sleep_until(st.next_at).await;
            }
            let m = &s.engine.metrics;
            m.add_generated(1);
            if i == 0 {
                m.observe_ttft(s.start.elapsed());
            }
            let last = i + 1 >= s.tokens;
            let anthropic = s.kind == Kind::Messages;
            let frame = if anthropic {
                crate::anthropic::token(i)
            } else {
                sse(&token_chunk(s, i, last))
            };
            // An Anthropic stream always reports usage (`message_delta`).
            st.step = match (last, s.include_usage || anthropic) {
                (false, _) => Step::Token(i + 1),
                (true, true) => Step::Usage,
                (true, false) => Step::Done,
            };
            Some(frame)
        }
        Step::Usage if s.kind == Kind::Messages => {
            st.step = Step::Done;
            Some(crate::anthropic::finish(s.tokens))
        }
        Step::Done if s.kind == Kind::Messages => {
            st.step = Step::End;
            Some(crate::anthropic::stop())
        }
        Step::Usage => {
            let p = s.prefill;
            let usage = openai::usage(p.prompt_tokens, s.tokens, p.cached_tokens);
            let mut chunk = envelope(s);
            chunk["choices"] = json!([]);
            chunk["usage"] = usage;
            st.step = Step::Done;
            Some(sse(&chunk))
        }
        Step::Done => {
            st.step = Step::End;
            Some(Bytes::from_static(b"data: [DONE]\n\n"))
        }
        Step::End => None,
    }
}

fn envelope(s: &TokenStream) -> Value {
    let object = match s.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion | Kind::Messages => "text_completion",
    };
    json!({"id": s.meta.id, "object": object, "created": s.meta.created, "model": s.meta.model})
}

fn token_chunk(s: &TokenStream, i: u64, last: bool) -> Value {
    let text = openai::token_text(i);
    let finish = if last { json!("length") } else { Value::Null };
    let choice = match s.kind {
        Kind::Chat => {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Kind::Completion | Kind::Messages => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        }
    };
    let mut chunk = envelope(s);
    chunk["choices"] = json!([choice]);
    chunk
}

fn sse(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, v);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
