//! Token accounting from responses: `usage` in a JSON body, or in the SSE
//! events of a stream. OpenAI reports `prompt_tokens` / `completion_tokens`
//! (a stream only in its final chunk, with `stream_options.include_usage`);
//! the Responses and Anthropic Messages APIs report `input_tokens` /
//! `output_tokens`, and an Anthropic stream splits them: `message_start`
//! carries the input (under `message.usage`), each `message_delta` the
//! output so far. Fields found later replace earlier ones, one by one.
//!
//! Streams are scanned line by line as chunks pass; only an incomplete
//! trailing line is kept, so a long stream is never buffered whole.

use serde::Deserialize;

/// A JSON body larger than this is not kept for usage parsing.
const MAX_JSON_BODY: usize = 1 << 20;
/// An SSE line longer than this is skipped (usage chunks are small).
const MAX_SSE_LINE: usize = 64 << 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A `usage` object in any of the APIs' spellings.
#[derive(Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// Anthropic: the prompt tokens neither read from nor written to its
    /// prompt cache; the prompt is their sum.
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl RawUsage {
    fn prompt(&self) -> Option<u64> {
        self.prompt_tokens.or_else(|| {
            let cached = [
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ];
            self.input_tokens.map(|input| {
                cached
                    .into_iter()
                    .flatten()
                    .fold(input, u64::saturating_add)
            })
        })
    }

    fn completion(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
    /// Anthropic `message_start`: `{"message":{"usage":{...}}}`.
    #[serde(default)]
    message: Option<Nested>,
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<RawUsage>,
}

impl WithUsage {
    fn into_usage(self) -> Option<RawUsage> {
        self.usage.or(self.message.and_then(|m| m.usage))
    }
}

#[derive(Debug)]
enum Mode {
    Sse { line: Vec<u8>, overlong: bool },
    Json { body: Vec<u8>, overflow: bool },
}

#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    found: Found,
}

/// The counts seen so far (`None`: not reported yet).
#[derive(Debug, Default)]
struct Found {
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Found {
    fn merge(&mut self, raw: &RawUsage) {
        self.prompt = raw.prompt().or(self.prompt);
        self.completion = raw.completion().or(self.completion);
    }
}

impl UsageScanner {
    /// `content_type` is the response's; SSE when it is `text/event-stream`.
    pub fn new(content_type: Option<&str>) -> Self {
        let sse = content_type.is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mode = if sse {
            Mode::Sse {
                line: Vec::new(),
                overlong: false,
            }
        } else {
            Mode::Json {
                body: Vec::new(),
                overflow: false,
            }
        };
        Self {
            mode,
            found: Found::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Json { body, overflow } => {
                if *overflow || body.len() + chunk.len() > MAX_JSON_BODY {
                    *overflow = true;
                    body.clear();
                } else {
                    body.extend_from_slice(chunk);
                }
            }
            Mode::Sse { line, overlong } => {
                let mut rest = chunk;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    let (head, tail) = rest.split_at(nl);
                    rest = &tail[1..];
                    if *overlong {
                        *overlong = false;
                        line.clear();
                        continue;
                    }
                    let found = if line.is_empty() {
                        sse_usage(head)
                    } else {
                        line.extend_from_slice(head);
                        let found = sse_usage(line);
                        line.clear();
                        found
                    };
                    if let Some(found) = found {
                        self.found.merge(&found);
                    }
                }
                if !rest.is_empty() && !*overlong {
                    if line.len() + rest.len() > MAX_SSE_LINE {
                        *overlong = true;
                        line.clear();
                    } else {
                        line.extend_from_slice(rest);
                    }
                }
            }
        }
    }

    /// Called at end of stream; returns what was found (a count the
    /// response never reported is 0).
    pub fn finish(&mut self) -> Option<Usage> {
        if let Mode::Json { body, overflow } = &mut self.mode {
            if !*overflow
                && !body.is_empty()
                && let Ok(parsed) = serde_json::from_slice::<WithUsage>(body)
                && let Some(found) = parsed.into_usage()
            {
                self.found.merge(&found);
            }
            body.clear();
        }
        let Found { prompt, completion } = self.found;
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: prompt.unwrap_or(0),
            completion_tokens: completion.unwrap_or(0),
        })
    }
}

fn sse_usage(line: &[u8]) -> Option<RawUsage> {
    let data = line.strip_prefix(b"data:")?;
    // Cheap test first: most chunks carry no usage.
    if !contains(data, b"\"usage\"") {
        return None;
    }
    serde_json::from_slice::<WithUsage>(data.trim_ascii())
        .ok()?
        .into_usage()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn sse_usage_found_across_any_chunking() {
        for split in 1..STREAM.len() {
            let mut scanner = UsageScanner::new(Some("text/event-stream; charset=utf-8"));
            let (a, b) = STREAM.as_bytes().split_at(split);
            scanner.feed(a);
            scanner.feed(b);
            assert_eq!(
                scanner.finish(),
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn sse_without_usage_and_overlong_lines() {
        let mut scanner = UsageScanner::new(Some("text/event-stream"));
        scanner.feed(b"data: {\"choices\":[]}\n\n");
        scanner.feed(&vec![b'x'; MAX_SSE_LINE + 10]);
        scanner.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n");
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn anthropic_stream_input_from_message_start_output_from_the_last_delta() {
        let stream = "event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\n\
            data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":4}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
            event: message_stop\n\
            data: {\"type\":\"message_stop\"}\n\n";
        for split in (1..stream.len()).step_by(7) {
            let mut scanner = UsageScanner::new(Some("text/event-stream"));
            let (a, b) = stream.as_bytes().split_at(split);
            scanner.feed(a);
            scanner.feed(b);
            assert_eq!(
                scanner.finish(),
                Some(Usage {
                    prompt_tokens: 25,
                    completion_tokens: 9
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn anthropic_and_responses_json_usage() {
        let mut scanner = UsageScanner::new(Some("application/json"));
        scanner.feed(br#"{"type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":11,"cache_creation_input_tokens":null,"output_tokens":2}}"#);
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                prompt_tokens: 11,
                completion_tokens: 2
            })
        );
        let mut scanner = UsageScanner::new(Some("application/json"));
        scanner.feed(br#"{"object":"response","usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}"#);
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        let mut scanner = UsageScanner::new(Some("application/json"));
        scanner.feed(br#"{"usage":null}"#);
        assert_eq!(scanner.finish(), None);
    }

    #[test]
    fn json_body_usage() {
        let mut scanner = UsageScanner::new(Some("application/json"));
        scanner.feed(b"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":7,");
        scanner.feed(b"\"completion_tokens\":1}}");
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 1
            })
        );
        let mut scanner = UsageScanner::new(None);
        scanner.feed(b"not json");
        assert_eq!(scanner.finish(), None);
    }
}
