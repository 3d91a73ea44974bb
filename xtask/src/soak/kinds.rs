//! The soak's request kinds: what each sends and what its answer must be.

use serde::Serialize;
use steer_e2e::Reply;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SSE chat completion, read to the end.
    Stream,
    /// Non-streaming chat completion.
    Unary,
    /// SSE stream dropped by the client after its first chunk or two.
    Cancelled,
    InvalidJson,
    UnknownModel,
    MissingModel,
}

/// Models the soak's engines serve (`mini` on two of the four).
pub const MODELS: [&str; 3] = ["qwen", "llama", "mini"];
const STRATEGIES: [&str; 6] = [
    "prefix-cache",
    "least-request",
    "round-robin",
    "random",
    "least-kv-cache",
    "session-affinity",
];

impl Kind {
    pub const ALL: [Kind; 6] = [
        Self::Stream,
        Self::Unary,
        Self::Cancelled,
        Self::InvalidJson,
        Self::UnknownModel,
        Self::MissingModel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "sse",
            Self::Unary => "non-streaming",
            Self::Cancelled => "cancelled",
            Self::InvalidJson => "invalid JSON",
            Self::UnknownModel => "unknown model",
            Self::MissingModel => "missing model",
        }
    }

    /// The kind of request number `i`: per 100, 50 SSE, 35 non-streaming,
    /// 7 cancelled, 8 bad input rotating over the three bad kinds. A
    /// multiplicative hash spreads the kinds so neighbours differ.
    pub fn of(i: u64) -> Self {
        let slot = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100;
        match slot {
            0..50 => Self::Stream,
            50..85 => Self::Unary,
            85..92 => Self::Cancelled,
            _ => [Self::InvalidJson, Self::UnknownModel, Self::MissingModel][(i % 3) as usize],
        }
    }

    /// Headers and body of request number `i`: a model, a routing strategy
    /// and a session rotated over, prompts sharing one of 16 tenant prefixes.
    pub fn request(self, i: u64) -> (Vec<(&'static str, String)>, String) {
        let model = MODELS[(i % 3) as usize];
        let tenant = i % 16;
        let headers = vec![
            (
                "routing-strategy",
                STRATEGIES[(i / 3 % 6) as usize].to_owned(),
            ),
            ("x-session-id", format!("session-{tenant}")),
        ];
        let prompt = format!(
            "{}Question {i}?",
            format!("Tenant {tenant} policy: answer briefly and politely. ").repeat(8)
        );
        let body = match self {
            Self::Stream => steer_e2e::chat_body(model, &prompt, true, 16),
            Self::Unary => steer_e2e::chat_body(model, &prompt, false, 8),
            Self::Cancelled => steer_e2e::chat_body(model, &prompt, true, 64),
            Self::InvalidJson => format!("{{\"model\":\"{model}\",\"messages\":[{{\"role\":"),
            Self::UnknownModel => steer_e2e::chat_body("no-such-model", &prompt, false, 8),
            Self::MissingModel => r#"{"messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
        };
        (headers, body)
    }

    /// Whether `reply` is what this kind must get; the reason when not.
    pub fn check(self, reply: &Reply) -> Result<(), String> {
        // `ok`, or why not: what was wanted and what came.
        let expect = |ok: bool, wanted: &str| -> Result<(), String> {
            ok.then_some(()).ok_or_else(|| {
                let got = excerpt(&reply.text());
                format!("want {wanted}, got {}: {got}", reply.status)
            })
        };
        let json = || reply.json().ok();
        let error = |status: u16, code: &str| {
            let json = json();
            let error = json.as_ref().map(|j| &j["error"]);
            let ok = reply.status == status
                && error.is_some_and(|e| e["code"] == code && e["message"].is_string());
            expect(ok, &format!("{status} {code}"))
        };
        match self {
            Self::Stream => {
                let done = reply.text().trim_end().ends_with("data: [DONE]");
                expect(reply.status == 200 && done, "200 ending in data: [DONE]")
            }
            Self::Unary => {
                let choices = json()
                    .as_ref()
                    .and_then(|j| j["choices"].as_array())
                    .is_some_and(|c| !c.is_empty());
                expect(reply.status == 200 && choices, "200 JSON with choices")
            }
            Self::Cancelled => Ok(()),
            Self::InvalidJson => error(400, "invalid_json"),
            Self::UnknownModel => error(404, "model_not_found"),
            Self::MissingModel => error(400, "missing_model"),
        }
    }
}

/// At most 300 characters of `text`, for examples in the report.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
