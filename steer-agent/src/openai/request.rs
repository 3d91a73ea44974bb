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

/// A completion bound, read leniently: a value that is not a non-negative
/// whole number counts as absent (the engine judges it).
#[derive(Default)]
struct TokenCount(Option<u64>);

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenCount, E> {
                Ok(TokenCount(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TokenCount, E> {
                Ok(TokenCount(
                    (v >= 0.0 && v.fract() == 0.0).then_some(v as u64),
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenCount, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(TokenCount(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenCount, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(TokenCount(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// [`Body`] with the prompt fields skipped: the same shape (`TextPieces`
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
mod tests {
    use super::*;

    fn text(req: &ParsedRequest<'_>) -> String {
        req.prompt.iter().collect()
    }

    #[test]
    fn chat_with_string_and_parts_content() {
        let body = br#"{"model":"qwen","stream":true,"stream_options":{"include_usage":true},
            "user":"u1","messages":[{"role":"system","content":"You are \"helpful\"."},
            {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":" there"}]}]}"#;
        let req = ParsedRequest::parse(body).unwrap();
        assert_eq!(req.model, "qwen");
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert_eq!(text(&req), "system\nYou are \"helpful\".\nuser\nHi there\n");
    }

    #[test]
    fn completions_prompt_string_and_array() {
        let req = ParsedRequest::parse(br#"{"model":"m","prompt":"abc"}"#).unwrap();
        assert_eq!(text(&req), "abc");
        let req = ParsedRequest::parse(br#"{"model":"m","prompt":["ab","cd"]}"#).unwrap();
        assert_eq!(text(&req), "abcd");
        let req = ParsedRequest::parse(br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(text(&req), "");
    }

    #[test]
    fn embeddings_and_responses_input() {
        let req = ParsedRequest::parse(br#"{"model":"e","input":["x","y"]}"#).unwrap();
        assert_eq!(text(&req), "xy");
        let body = br#"{"model":"r","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hello"}]}]}"#;
        let req = ParsedRequest::parse(body).unwrap();
        assert_eq!(text(&req), "be briefhello");
        let req =
            ParsedRequest::parse(br#"{"model":"m","prompt":null,"input":[true,1.5]}"#).unwrap();
        assert_eq!(text(&req), "");
    }

    #[test]
    fn anthropic_messages_system_then_messages() {
        let body = br#"{"model":"claude","max_tokens":8,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image","source":{"type":"base64","data":"QUJD"}}]},
            {"role":"assistant","content":"Hello"}],"stream":true}"#;
        let req = ParsedRequest::parse(body).unwrap();
        assert_eq!(req.model, "claude");
        assert_eq!(text(&req), "Be brief.user\nHi\nassistant\nHello\n");
        let req = ParsedRequest::parse(br#"{"model":"c","system":"sys","messages":[]}"#).unwrap();
        assert_eq!(text(&req), "sys");
    }

    #[test]
    fn completion_bounds_are_read_leniently_in_both_parses() {
        let cases: [(&[u8], Option<u64>); 6] = [
            (br#"{"model":"m","max_tokens":64}"#, Some(64)),
            (
                br#"{"model":"m","max_tokens":9,"max_completion_tokens":32}"#,
                Some(32),
            ),
            (br#"{"model":"m","max_output_tokens":100.0}"#, Some(100)),
            (br#"{"model":"m","max_tokens":null}"#, None),
            (
                br#"{"model":"m","max_tokens":"lots","max_completion_tokens":-1}"#,
                None,
            ),
            (br#"{"model":"m","max_tokens":{"a":[1]}}"#, None),
        ];
        for (body, want) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(
                ParsedRequest::parse(body).unwrap().max_tokens,
                want,
                "{shown}"
            );
            let head = ParsedRequest::parse_without_prompt(body).unwrap();
            assert_eq!(head.max_tokens, want, "{shown}");
        }
        assert_eq!(expected_tokens(400, Some(50)), 150);
        assert_eq!(expected_tokens(0, None), DEFAULT_COMPLETION_TOKENS);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(
            ParsedRequest::parse(b"{not json"),
            Err(ParseError::InvalidJson(_))
        ));
        assert_eq!(
            ParsedRequest::parse(br#"{"messages":[]}"#).unwrap_err(),
            ParseError::MissingModel
        );
        assert_eq!(
            ParsedRequest::parse(br#"{"model":"  "}"#).unwrap_err(),
            ParseError::MissingModel
        );
        assert!(ParsedRequest::parse(br#"[1,2]"#).is_err());
        assert!(ParsedRequest::parse(br#"{"model":7}"#).is_err());
    }

    #[test]
    fn hostile_nesting_does_not_recurse_forever() {
        let mut body = String::from(r#"{"model":"m","input":"#);
        for _ in 0..40 {
            body.push_str(r#"[{"content":"#);
        }
        body.push_str("\"x\"");
        for _ in 0..40 {
            body.push_str("}]");
        }
        body.push('}');
        // serde_json's recursion limit (128) bounds the depth: no stack overflow.
        let req = ParsedRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(text(&req), "x");
        let too_deep = format!(
            r#"{{"model":"m","input":{}"x"{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            ParsedRequest::parse(too_deep.as_bytes()),
            Err(ParseError::InvalidJson(_))
        ));
    }

    #[test]
    fn json_errors_never_echo_the_body() {
        let secret = br#"{"model":"m","messages":"my secret prompt"}"#;
        let Err(ParseError::InvalidJson(message)) = ParsedRequest::parse(secret) else {
            panic!("a type error");
        };
        assert!(!message.contains("secret"), "{message}");
        assert!(
            message.contains("wrong type") && message.contains("column"),
            "{message}"
        );
    }

    #[test]
    fn without_prompt_accepts_what_the_full_parse_does_and_rejects_the_same_shapes() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"qwen","user":"u\"1","messages":[{"role":"user","content":"a\nb"},{"content":[{"type":"text","text":"x"}]}]}"#,
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true}"#,
            br#"{"model":"m","prompt":[1,2,3],"input":{"content":"x"},"instructions":null}"#,
            br#"{"model":"m","messages":[[]]}"#,
            br#"{"model":"m","messages":"my secret prompt"}"#,
            br#"{"model":"m","messages":[{"role":5}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"\x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"unterminated}]}"#,
            br#"{"model":"  ","messages":[]}"#,
            br#"{"messages":[]}"#,
            br#"{"model":7}"#,
            b"[1,2]",
            b"{not json",
        ];
        for body in bodies {
            let full = ParsedRequest::parse(body);
            let head = ParsedRequest::parse_without_prompt(body);
            let shown = String::from_utf8_lossy(body);
            match (full, head) {
                (Ok(full), Ok(head)) => {
                    assert_eq!(
                        (&full.model, &full.user),
                        (&head.model, &head.user),
                        "{shown}"
                    );
                    assert_eq!(head.prompt.byte_len(), 0, "{shown}");
                }
                (Err(full), Err(head)) => assert_eq!(full, head, "{shown}"),
                (full, head) => panic!(
                    "{shown}: full {:?}, without prompt {:?}",
                    full.err(),
                    head.err()
                ),
            }
        }
        // Prompt text the agent does not read is not checked.
        let lone_surrogate = br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#;
        let invalid_utf8 = b"{\"model\":\"m\",\"prompt\":\"\xff\"}";
        for body in [&lone_surrogate[..], &invalid_utf8[..]] {
            assert!(ParsedRequest::parse(body).is_err());
            assert_eq!(
                ParsedRequest::parse_without_prompt(body).unwrap().model,
                "m"
            );
        }
    }

    #[test]
    fn escape_free_strings_are_borrowed_escaped_ones_unescaped_once() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"plain"},{"role":"user","content":"line\nbreak"}]}"#;
        let req = ParsedRequest::parse(body).unwrap();
        let pieces: Vec<&Cow<'_, str>> = req.prompt.pieces.iter().collect();
        let plain = pieces.iter().find(|p| p.as_ref() == "plain").unwrap();
        assert!(matches!(plain, Cow::Borrowed(_)));
        let escaped = pieces.iter().find(|p| p.starts_with("line")).unwrap();
        assert!(matches!(escaped, Cow::Owned(_)));
        assert_eq!(escaped.as_ref(), "line\nbreak");
    }
}
