//! One borrowed parse of an OpenAI-style request body (chat and text
//! completions, embeddings, responses) or an Anthropic Messages API body.
//!
//! The body is parsed exactly once with serde_json. A string without escapes
//! is borrowed from the body; one with an escape (`\n`, `\"`, which nearly
//! every real chat prompt has) is unescaped into its own allocation, once.
//! The prompt is exposed as pieces in prompt order, never concatenated.
//! When routing does not read the prompt, [`ParsedRequest::parse_without_prompt`]
//! checks the same shape but only scans the prompt's strings (no unescaping,
//! no allocation per string).

use std::borrow::Cow;

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;

use super::token_count::TokenCount;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body has no `model` field")]
    MissingModel,
}

/// Text that goes into prefix matching, in prompt order.
#[derive(Debug, Default)]
pub struct PromptPieces<'a> {
    pieces: Vec<Cow<'a, str>>,
}

impl<'a> PromptPieces<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().map(|p| p.as_ref())
    }

    pub fn byte_len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }

    fn push(&mut self, s: Cow<'a, str>) {
        if !s.is_empty() {
            self.pieces.push(s);
        }
    }

    fn extend(&mut self, pieces: Option<TextPieces<'a>>) {
        for piece in pieces.into_iter().flat_map(|p| p.0) {
            self.push(piece);
        }
    }
}

#[derive(Debug)]
pub struct ParsedRequest<'a> {
    pub model: Cow<'a, str>,
    pub user: Option<Cow<'a, str>>,
    pub prompt: PromptPieces<'a>,
    /// The completion bound the request sets (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`), if a number.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    /// Anthropic Messages API: the system prompt (a string or text blocks).
    #[serde(borrow, default)]
    system: Option<TextPieces<'a>>,
    #[serde(borrow, default)]
    instructions: Option<TextPieces<'a>>,
    #[serde(borrow, default)]
    prompt: Option<TextPieces<'a>>,
    #[serde(borrow, default)]
    input: Option<TextPieces<'a>>,
    #[serde(default)]
    max_tokens: TokenCount,
    #[serde(default)]
    max_completion_tokens: TokenCount,
    #[serde(default)]
    max_output_tokens: TokenCount,
}

/// The first completion bound a request sets.
fn max_tokens(bounds: [&TokenCount; 3]) -> Option<u64> {
    bounds.into_iter().find_map(|b| b.0)
}

/// [`Body`] with the prompt fields skipped (the bounds are listed in both:
/// `#[serde(flatten)]` would buffer every other field): the same shape (`TextPieces`
/// takes any JSON value), but skipped strings are not checked for valid
/// UTF-8 or paired surrogate escapes.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    /// Read only to check its shape.
    #[serde(borrow, default, rename = "messages")]
    _messages: Option<Vec<SkippedMessage<'a>>>,
    #[serde(default)]
    max_tokens: TokenCount,
    #[serde(default)]
    max_completion_tokens: TokenCount,
    #[serde(default)]
    max_output_tokens: TokenCount,
}

#[derive(Deserialize)]
struct SkippedMessage<'a> {
    #[serde(borrow, default, rename = "role")]
    _role: Option<Cow<'a, str>>,
    #[serde(default, rename = "content")]
    _content: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<TextPieces<'a>>,
}

impl<'a> ParsedRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let body: Body<'a> =
            serde_json::from_slice(body).map_err(|e| ParseError::InvalidJson(describe(&e)))?;
        let model = named(body.model)?;
        let mut prompt = PromptPieces::default();
        prompt.extend(body.system);
        prompt.extend(body.instructions);
        for message in body.messages.into_iter().flatten() {
            if let Some(role) = message.role {
                prompt.push(role);
                prompt.push(Cow::Borrowed("\n"));
            }
            prompt.extend(message.content);
            prompt.push(Cow::Borrowed("\n"));
        }
        prompt.extend(body.prompt);
        prompt.extend(body.input);
        Ok(Self {
            model,
            user: body.user,
            prompt,
            max_tokens: max_tokens([
                &body.max_completion_tokens,
                &body.max_tokens,
                &body.max_output_tokens,
            ]),
        })
    }

    /// [`ParsedRequest::parse`] with an empty prompt: accepts every body it
    /// accepts, with the same model and user, and rejects what it rejects
    /// except unreadable prompt text (invalid UTF-8, a lone surrogate
    /// escape), which is left to the engine.
    pub fn parse_without_prompt(body: &'a [u8]) -> Result<Self, ParseError> {
        let head: Head<'a> =
            serde_json::from_slice(body).map_err(|e| ParseError::InvalidJson(describe(&e)))?;
        Ok(Self {
            model: named(head.model)?,
            user: head.user,
            prompt: PromptPieces::default(),
            max_tokens: max_tokens([
                &head.max_completion_tokens,
                &head.max_tokens,
                &head.max_output_tokens,
            ]),
        })
    }
}

/// Completion tokens expected from a request that sets no bound.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 256;

/// Prompt + expected completion tokens of a request whose body has
/// `body_bytes` bytes: about 4 bytes a token, plus its completion bound (or
/// [`DEFAULT_COMPLETION_TOKENS`]).
pub fn expected_tokens(body_bytes: usize, max_tokens: Option<u64>) -> u64 {
    (body_bytes as u64 / 4).saturating_add(max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS))
}

fn named(model: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ParseError> {
    model
        .filter(|m| !m.trim().is_empty())
        .ok_or(ParseError::MissingModel)
}

// === impl TextPieces ===

/// Any OpenAI content shape (string, array of strings, content parts, nested
/// `content` arrays of the responses API, token ids) read in the same single
/// pass as the body, straight into borrowed text pieces.
struct TextPieces<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for TextPieces<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PiecesVisitor(PhantomData))
    }
}

struct PiecesVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PiecesVisitor<'a> {
    type Value = TextPieces<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prompt content")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(TextPieces(vec![Cow::Borrowed(v)]))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(TextPieces(vec![Cow::Owned(v.to_owned())]))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(TextPieces(vec![Cow::Owned(v)]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(TextPieces(pieces)) = seq.next_element()? {
            out.extend(pieces);
        }
        Ok(TextPieces(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Cow<'a, str>>()? {
            if key == "text" || key == "content" {
                let TextPieces(pieces) = map.next_value()?;
                out.extend(pieces);
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(TextPieces(out))
    }

    // Token ids, numbers, booleans and nulls carry no text.
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TextPieces(Vec::new()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TextPieces(Vec::new()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TextPieces(Vec::new()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TextPieces(Vec::new()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(TextPieces(Vec::new()))
    }
}

/// What is wrong with the JSON and where, without echoing any of it:
/// serde's own messages quote the offending value (prompt text included).
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "a field has the wrong type or shape",
        Category::Io => "unreadable input",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
