//! Token accounting from responses: `usage` in a JSON body, or in the final
//! SSE chunk of a stream (`stream_options.include_usage`).
//!
//! Streams are scanned line by line as chunks pass; only an incomplete
//! trailing line is kept, so a long stream is never buffered whole.

use serde::Deserialize;

/// A JSON body larger than this is not kept for usage parsing.
const MAX_JSON_BODY: usize = 1 << 20;
/// An SSE line longer than this is skipped (usage chunks are small).
const MAX_SSE_LINE: usize = 64 << 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug)]
enum Mode {
    Sse { line: Vec<u8>, overlong: bool },
    Json { body: Vec<u8>, overflow: bool },
}

#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    usage: Option<Usage>,
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
        Self { mode, usage: None }
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
                    if found.is_some() {
                        self.usage = found;
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

    /// Called at end of stream; returns what was found.
    pub fn finish(&mut self) -> Option<Usage> {
        if let Mode::Json { body, overflow } = &mut self.mode {
            if !*overflow
                && !body.is_empty()
                && let Ok(parsed) = serde_json::from_slice::<WithUsage>(body)
            {
                self.usage = parsed.usage;
            }
            body.clear();
        }
        self.usage
    }
}

fn sse_usage(line: &[u8]) -> Option<Usage> {
    let data = line.strip_prefix(b"data:")?;
    // Cheap test first: most chunks carry no usage.
    if !contains(data, b"\"usage\"") {
        return None;
    }
    serde_json::from_slice::<WithUsage>(data.trim_ascii())
        .ok()?
        .usage
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
